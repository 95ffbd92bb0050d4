"""Photo intake: decode an upload, check it has one usable face, crop it, and store it in the project.

`add_photo` accepts source (selfie) and reference (style) photos alike. It decodes JPEG, PNG,
WebP and HEIC (EXIF orientation applied, any colour mode to 8-bit sRGB), refuses what training
cannot use, each refusal with a reason code and a full-sentence message, crops a 512x512 portrait
around the one dominant face, parses it, embeds it, and writes everything into
``photos/<role>/<id>/`` before adding the manifest entry. Nothing is written for a refused file.
`read_photo` reads an upload from a path, refusing folders, devices, pipes and files over the size
limit without reading them. `check_upload` runs the checks that need no face model (readable, format,
size) and `add_checked` the rest, so that a caller can refuse such files before it loads the models.

Stored per photo: ``original.<ext>`` (the uploaded bytes), ``crop.png``, ``mask.png`` (face region,
255 = face, for both roles: training uses ``1 - mask`` for references), ``labels.png`` (CelebAMask-HQ
class per pixel), ``preview.png`` (crop with the mask tinted), ``face.json`` and ``embedding.npy``.

One module a job: `decode` (reading a photo file, decoding the upload, `check_upload`), `checks` (the
face, the crop, duplicates), `storing` (`add_photo`, `add_checked`, `remove_photo`), `outcome` (`Accepted`, `Refused`).
"""

from engine.intake.decode import (
    MAX_BYTES,
    CheckedUpload,
    PhotoFileError,
    check_photo_file,
    check_upload,
    decode_image,
    read_photo,
)
from engine.intake.outcome import Accepted, Refused
from engine.intake.storing import ROLES, Role, add_checked, add_photo, remove_photo

__all__ = [
    "MAX_BYTES",
    "ROLES",
    "Accepted",
    "CheckedUpload",
    "PhotoFileError",
    "Refused",
    "Role",
    "add_checked",
    "add_photo",
    "check_photo_file",
    "check_upload",
    "decode_image",
    "read_photo",
    "remove_photo",
]
