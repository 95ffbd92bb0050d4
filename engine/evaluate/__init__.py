"""`magicapture eval`: score a project's generated images with the paper's metrics, per training run.

Every output image (`engine.outputs.output_records`) is scored against the project's photos: CSIM against
the source photos, style against the reference photos, and the aesthetic score on its own (see
`engine.metrics` for the definitions). Scores are averaged per training run, so runs trained with
different settings (a preset, Attention Refocusing on or off) sit side by side in one table whose
extra columns are the settings in which the runs differ (read from each run's artefact).
Post-processed outputs (restored, upscaled: entries with a ``parent``) are averaged apart from the
raw ones, as in the paper's "MagiCapture + post-processing" row. Each evaluation is saved as
``<project>/evaluations/<timestamp>.json``.

Identity is measured twice, each in its own labelled column: by the recogniser the identity loss
trains against (ArcFace; SFace in commercial mode), whose score training pushes up directly and so
flatters the run, and by a second, independent recogniser (the other of the two). A recogniser
whose weights are missing or refused (commercial mode refuses ArcFace's licence) leaves its column
marked unavailable, with the reason among the report's notes. Artefacts do not record which
recogniser their run trained against, so the kit's mode says it: evaluate runs trained with
``--commercial`` with ``--commercial`` too.

Protocol details: only the largest face of an image counts. A generated image in which no face
is detected scores CSIM 0 (its identity is not recognisable) and counts against the ``faces``
column; its style embedding is then taken with nothing masked. Source identities come from the
faces intake found in the stored crops, and reference faces are masked with intake's stored face
mask, so the photos are scored exactly as training saw them.
"""

from engine.evaluate.protocol import EVALUATIONS, evaluate_project, last_method_reports, run_settings
from engine.evaluate.report import (
    INDEPENDENT,
    NO_RUN,
    TRAINED,
    UNAVAILABLE,
    EvalReport,
    EvaluationError,
    IdentityColumn,
    ImageScore,
    RunScore,
    training_summary,
)

__all__ = [
    "EVALUATIONS",
    "INDEPENDENT",
    "NO_RUN",
    "TRAINED",
    "UNAVAILABLE",
    "EvalReport",
    "EvaluationError",
    "IdentityColumn",
    "ImageScore",
    "RunScore",
    "evaluate_project",
    "last_method_reports",
    "run_settings",
    "training_summary",
]
