"""The two placeholder tokens: added to the tokenizer, initialised, and trained as their own rows.

`PlaceholderEmbedding` replaces the text encoder's input embedding (through
``set_input_embeddings``): it looks tokens up in the frozen original table and swaps in the
placeholder rows, which are one small trainable parameter. So only those two rows can change,
in both phases, and weight decay or Adam state never touch the rest of the vocabulary.
`add_placeholder_tokens_to_base` does this for every text encoder of a base model (SDXL: both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.errors import UserError

if TYPE_CHECKING:
    from engine.config import TrainingConfig
    from engine.models import BaseModel

TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
"""The `BaseModel` tokenizer that feeds each text encoder."""


class TokenError(UserError, ValueError):
    """A placeholder token or its initialisation word cannot be used with this tokenizer."""


class PlaceholderEmbedding(nn.Module):
    """Token embedding whose placeholder rows live in the trainable ``rows`` parameter ``[n, hidden]``."""

    def __init__(self, base: nn.Embedding, token_ids: list[int], rows: torch.Tensor):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.token_ids = list(token_ids)
        self.rows = nn.Parameter(rows.detach().to(base.weight.device, torch.float32).clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)
        for index, token_id in enumerate(self.token_ids):
            hit = (input_ids == token_id).unsqueeze(-1)
            embeds = torch.where(hit, self.rows[index].to(embeds.dtype), embeds)
        return embeds

    def merged_weight(self) -> torch.Tensor:
        """The full embedding table with the current placeholder rows written in."""
        weight = self.base.weight.detach().clone()
        weight[self.token_ids] = self.rows.detach().to(weight.dtype)
        return weight


def add_placeholder_tokens_to_base(
    base: BaseModel, config: TrainingConfig
) -> dict[str, PlaceholderEmbedding]:
    """`add_placeholder_tokens` for each of the base's text encoders (``family.text_encoders``) with
    its tokenizer; the style rows come from one generator seeded by ``config.seed``, in that order.

    The tokens get the same ids in every tokenizer, as the family encodes the first tokenizer's
    ids with every encoder. Returns the embeddings by text-encoder name.
    """
    generator = torch.Generator().manual_seed(config.seed)
    embeddings = {
        name: add_placeholder_tokens(
            getattr(base, TOKENIZER_OF[name]), getattr(base, name), config, generator=generator
        )
        for name in base.family.text_encoders
    }
    ids = {name: tuple(embedding.token_ids) for name, embedding in embeddings.items()}
    if len(set(ids.values())) > 1:
        raise TokenError(
            f"The base model's tokenizers give the placeholder tokens different ids ({ids}); "
            "its tokenizers do not share one vocabulary."
        )
    return embeddings


def add_placeholder_tokens(
    tokenizer, text_encoder, config: TrainingConfig, generator: torch.Generator | None = None
) -> PlaceholderEmbedding:
    """Add the identity and style tokens and install a `PlaceholderEmbedding` in ``text_encoder``.

    The identity row starts as the embedding of ``config.identity_init_word`` ("person"), the style
    row as N(0, ``style_init_std``^2) per dimension, drawn from ``generator`` (by default one
    seeded by ``config.seed``).
    """
    tokens = [config.identity_token, config.style_token]
    for token in tokens:
        if tokenizer.add_tokens([token]) == 0:
            raise TokenError(
                f"The token {token!r} is already in the base model's vocabulary; choose another placeholder name."
            )
    token_ids = tokenizer.convert_tokens_to_ids(tokens)
    init_ids = tokenizer.encode(config.identity_init_word, add_special_tokens=False)
    if len(init_ids) != 1:
        raise TokenError(
            f"The initialisation word {config.identity_init_word!r} is {len(init_ids)} tokens for this "
            "tokenizer; choose a word that is a single token (like 'person')."
        )
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    base = text_encoder.get_input_embeddings()
    generator = generator or torch.Generator().manual_seed(config.seed)
    style = torch.randn(base.embedding_dim, generator=generator) * config.style_init_std
    rows = torch.stack([base.weight[init_ids[0]].detach().float().cpu(), style])
    with torch.no_grad():
        base.weight[token_ids] = rows.to(base.weight)
    module = PlaceholderEmbedding(base, token_ids, rows)
    text_encoder.set_input_embeddings(module)
    return module


@torch.no_grad()
def norm_targets(
    base: BaseModel, config: TrainingConfig, embeddings: dict[str, PlaceholderEmbedding]
) -> dict[str, float]:
    """The phase-1 norm pull's target per text encoder of ``embeddings`` (`add_placeholder_tokens_to_base`).

    ``config.embedding_norm_target`` is tuned to the first encoder (CLIP-L); every other encoder
    (SDXL's bigG, whose rows are longer) aims at the same multiple of its own
    ``identity_init_word`` row's norm.
    """
    names = list(embeddings)
    person = {}
    for name in names:
        tokenizer = getattr(base, TOKENIZER_OF[name])
        (init_id,) = tokenizer.encode(config.identity_init_word, add_special_tokens=False)
        person[name] = embeddings[name].base.weight[init_id].float().norm().item()
    target = config.embedding_norm_target
    return {name: target if name == names[0] else target * person[name] / person[names[0]] for name in names}


@torch.no_grad()
def pull_norms(rows: torch.Tensor, target: float, strength: float) -> None:
    """Move each row's norm a fraction ``strength`` of the way to ``target``, keeping its direction."""
    norms = rows.norm(dim=-1, keepdim=True)
    rows.copy_(rows / norms.clamp_min(1e-12) * (norms + strength * (target - norms)))
