"""Rebuild a project's manifest from its files (``magicapture projects repair NAME``).

For when neither ``manifest.json`` nor ``manifest.prev.json`` parses, or to bring a manifest back in
step with the files. Each record is rebuilt from what its writer left on disk: a photo from
``photos/<role>/<id>/`` (``face.json`` holds the face placement intake records), a training from
``trainings/<run>/`` (``events.jsonl``, checkpoints, ``final.safetensors``), a portrait from
``outputs/<id>.png`` (AUTOMATIC1111 ``parameters`` text). Records of the best readable manifest
(the current one, the previous one, or the current one read past its bad bytes) are kept while
their files exist. What only a manifest knew (upload names, identity scores, a published client
gallery) comes back only from such a manifest.

Two modules: `rebuild` (records from files, one kind each) and `manifest` (`repair_manifest`: the
merge, the save, the summary).
"""

from engine.repair.manifest import DAMAGED, repair_manifest

__all__ = ["DAMAGED", "repair_manifest"]
