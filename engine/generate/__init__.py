"""Sampling portraits from a trained artefact.

`generate` loads the artefact of a training run (`engine.runs.resolve_artefact`) onto the base
model it was trained on: the two placeholder embeddings go into a copy of the tokenizer and into the text encoder's table, the LoRA
into the UNet and the text encoder through diffusers (one adapter, scaled per component with
``set_adapters`` and fused into the weights while those scales are in use). The prompt is the
training wording (the first source template plus " in the style of <style>") followed by the
user's extra words. Image ``i`` of a batch uses seed
``seed + i`` on a CPU generator, so an image is reproduced by its seed alone, on any device.

Each image is saved as an output (`engine.outputs`: PNG with AUTOMATIC1111's ``parameters`` text,
manifest entry) with its identity score (`engine.identity`).

The loaded base model is kept (one at a time, in a `engine.model_cache.ModelCache`) so that
repeated generations do not reload it; a base passed in by the caller is restored to its original
state after each call.

One module a job: `settings` (`GenerationSettings`, `GenerationError`), `loading` (the artefact in
a base model, the kept base), `prompts` (composing and fitting the prompt), `sampling` (`generate`,
`sample_image`).
"""

from engine.generate.loading import ADAPTER, loaded, plain_base
from engine.generate.prompts import compose_prompt, fit_prompt
from engine.generate.sampling import generate, sample_image
from engine.generate.settings import DEFAULT_NEGATIVE_PROMPT, GenerationError, GenerationSettings

__all__ = [
    "ADAPTER",
    "DEFAULT_NEGATIVE_PROMPT",
    "GenerationError",
    "GenerationSettings",
    "compose_prompt",
    "fit_prompt",
    "generate",
    "loaded",
    "plain_base",
    "sample_image",
]
