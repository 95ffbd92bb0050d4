"""The prompt of a generation: the training wording with the user's words, cut to what CLIP reads."""

from __future__ import annotations

from typing import Any


def compose_prompt(tokens: dict[str, str], extra: str = "") -> str:
    """The training wording with ``extra`` words after a comma; ``extra`` with a placeholder token is the whole prompt."""
    from engine.data import composed_prompt

    extra = " ".join(extra.split())
    if any(token in extra for token in tokens.values()):
        return extra
    prompt = composed_prompt(tokens["identity"], tokens["style"])
    return f"{prompt}, {extra}" if extra else prompt


def fit_prompt(tokenizer: Any, text: str, what: str = "prompt") -> tuple[str, str | None]:
    """``text`` cut at a word boundary to CLIP's 77 tokens (75 plus start and end), and a warning if cut."""
    limit = tokenizer.model_max_length - 2

    def length(words: list[str]) -> int:
        return len(tokenizer(" ".join(words), add_special_tokens=False).input_ids)

    words = text.split()
    total = length(words)
    if total <= limit:
        return text, None
    low, high = 0, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if length(words[:middle]) <= limit else (low, middle - 1)
    kept = " ".join(words[:low]).rstrip(" ,;")
    return kept, (
        f"The {what} is {total} CLIP tokens and the text encoder reads only {limit}; it was cut to: {kept!r}."
    )
