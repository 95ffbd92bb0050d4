"""Post-processing: background upscaling, face restoration pasted back through the parsing mask, presets.

Order (METHOD.md section 7): faces are detected on the original image, and each is aligned to the
512x512 FFHQ crop the restorers were trained on, taken from the original, and restored (GFPGAN
v1.4 or CodeFormer with its fidelity weight): the restorer sees the generated face, never Real-
ESRGAN's rendering of it. The whole image is upscaled with Real-ESRGAN as the background (x2 or
x4, in overlapping tiles, so a 2048 px result fits in 8 GB), and each restored face is pasted into
it through the face-parsing mask of the restored crop with a feathered edge, at its landmarks
scaled to the upscaled frame. An output preset (passport, headshot) frames the result last. Every
step is optional, and the original is kept: the result is a new output that names its parent.
`suggested_postprocess` says what to offer first for a family's outputs (SDXL's 1024 px ones:
restoration without upscaling).

Weights are assets of the registry, loaded by spandrel's `ModelLoader` (``weights_only``-style
restricted unpickling for ``.pth``); CodeFormer's architecture comes from spandrel_extra_arches.
"""

from engine.postprocess.faces import (
    CROP_BOX,
    FACE_SIZE,
    FFHQ_TEMPLATE,
    align_face,
    alignment_matrix,
    feather_mask,
    paste_face,
    restore_faces,
)
from engine.postprocess.models import (
    FIDELITY,
    RESTORER_LABELS,
    RESTORERS,
    UPSCALERS,
    PostprocessError,
    load_model,
    restore_crop,
    upscale_image,
)
from engine.postprocess.output import Suggested, postprocess_output, suggested_postprocess

__all__ = [
    "CROP_BOX",
    "FACE_SIZE",
    "FFHQ_TEMPLATE",
    "FIDELITY",
    "RESTORERS",
    "RESTORER_LABELS",
    "UPSCALERS",
    "PostprocessError",
    "Suggested",
    "align_face",
    "alignment_matrix",
    "feather_mask",
    "load_model",
    "paste_face",
    "postprocess_output",
    "restore_crop",
    "restore_faces",
    "suggested_postprocess",
    "upscale_image",
]
