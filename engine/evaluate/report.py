"""The records of an evaluation: per-image and per-run scores, the identity columns, the report and its table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.events import MethodReport

NO_RUN = "none"
"""Run label of outputs that do not come from a training run."""
METRIC_COLUMNS = ("n", "faces", "csim", "style", "aesthetic")
"""The metrics of a run, in table order; "csim" stands for the identity columns (`IdentityColumn`)."""
TRAINED = "trained against"
INDEPENDENT = "independent"
UNAVAILABLE = "unavailable"


class EvaluationError(UserError):
    """The project cannot be evaluated; the message says why and what to do."""


@dataclass(frozen=True)
class IdentityColumn:
    """One CSIM column: the recogniser that measured it, its role, and why it was not measured if it was not."""

    recogniser: str
    """`engine.faces.identity.Scorer.name`: "arcface" or "sface"."""
    role: str
    """`TRAINED` (the identity loss's own network) or `INDEPENDENT`."""
    field: str
    """The attribute of `ImageScore` and `RunScore` holding its numbers: "csim" or "csim_independent"."""
    unavailable: str | None = None

    @property
    def label(self) -> str:
        from engine.faces import RECOGNISER_LABELS

        return f"CSIM ({RECOGNISER_LABELS[self.recogniser]}, {self.role})"


@dataclass(frozen=True)
class ImageScore:
    output: str
    run: str
    post: bool
    """Whether the image is a post-processed version of another output (restored, upscaled)."""
    face: bool
    """Whether a face was detected in the generated image."""
    csim: float | None
    """Mean cosine to the source faces (0 without a detected face); None when identity is not measured.

    Measured by the recogniser the identity loss trains against."""
    style: float
    aesthetic: float
    csim_independent: float | None = None
    """The same, measured by the independent recogniser."""


@dataclass(frozen=True)
class RunScore:
    """The mean scores of one run's outputs, the raw ones or the post-processed ones."""

    run: str
    post: bool
    settings: dict[str, Any]
    """The run's training configuration (``{"preset": "paper", "ar_weight": 2.5, ...}``)."""
    n: int
    faces: int
    csim: float | None
    style: float
    aesthetic: float
    csim_independent: float | None = None


@dataclass(frozen=True)
class EvalReport:
    project: str
    created: str
    models: dict[str, str]
    """Which CLIP, aesthetic head and face models produced the numbers."""
    runs: list[RunScore]
    images: list[ImageScore]
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    identity: tuple[IdentityColumn, ...] = ()
    """The CSIM columns: the trained-against recogniser's, then the independent one's."""
    training: dict[str, MethodReport] = field(default_factory=dict)
    """Run -> the last report of what its method did (`engine.training.monitor`), for runs that have one."""

    def compared_settings(self) -> list[str]:
        """Settings whose values differ between the runs (``preset`` first when present).

        Memory and speed options (`engine.config.MEMORY_FIELDS`) are left out: they do not change what
        a run learns.
        """
        from engine.config import MEMORY_FIELDS

        keys = sorted({key for run in self.runs for key in run.settings} - set(MEMORY_FIELDS))
        differing = [k for k in keys if len({repr(run.settings.get(k)) for run in self.runs}) > 1]
        if any("preset" in run.settings for run in self.runs):
            differing = ["preset", *(k for k in differing if k != "preset")]
        return differing

    def metric_columns(self) -> dict[str, str]:
        """The metric columns of the table, label -> `RunScore` attribute (one column per recogniser for CSIM)."""
        columns = {}
        for metric in METRIC_COLUMNS:
            if metric == "csim" and self.identity:
                columns |= {column.label: column.field for column in self.identity}
            else:
                columns[metric] = metric
        return columns

    def table(self) -> list[dict[str, Any]]:
        """One row per run (and per raw/post-processed): run, [post,] the compared settings, the metrics."""
        settings = self.compared_settings()
        post = any(run.post for run in self.runs)
        metrics = self.metric_columns()
        return [
            {
                "run": run.run,
                **({"post": "yes" if run.post else "no"} if post else {}),
                **{key: run.settings.get(key) for key in settings},
                **{label: getattr(run, attribute) for label, attribute in metrics.items()},
            }
            for run in self.runs
        ]

    def markdown(self) -> str:
        rows = self.table()
        columns = list(rows[0])
        metrics = self.metric_columns()
        unavailable = {column.label for column in self.identity if column.unavailable}
        lines = [
            f"Evaluation of {self.project} ({self.created}); CLIP: {self.models['clip']}, faces: {self.models['faces']}",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        lines += [
            "| "
            + " | ".join(
                UNAVAILABLE if column in unavailable else _cell(column in metrics, row[column])
                for column in columns
            )
            + " |"
            for row in rows
        ]
        if self.training:
            lines += ["", "How each run's method went (its last report):"]
            lines += [f"- {run}: {training_summary(report)}" for run, report in self.training.items()]
        lines += ["", *(f"- {note}" for note in self.notes)] if self.notes else []
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "created": self.created,
            "models": self.models,
            "identity": [asdict(column) | {"label": column.label} for column in self.identity],
            "table": self.table(),
            "runs": [asdict(run) for run in self.runs],
            "images": [asdict(image) for image in self.images],
            "notes": self.notes,
            "training": {run: report.to_dict() for run, report in self.training.items()},
        }


def training_summary(report: MethodReport) -> str:
    """Each token's attention at the end against the start of phase 2 and its share outside; faces found; skips."""
    parts = []
    for token, level in sorted(report.attention.items()):
        start = report.attention_start.get(token)
        kept = f" ({level / start:.0%} of its phase-2 start {start:.2e})" if start else ""
        share = report.outside_share.get(token)
        outside = f", {share:.0%} of it outside its region" if share is not None else ""
        parts.append(f"{token} attention {level:.2e}{kept}{outside}")
    if report.detection_rate is not None:
        tried = sum(tries for _, tries in report.face_found.values())
        parts.append(f"faces found in {report.detection_rate:.0%} of {tried} identity estimates")
    if report.skipped_steps:
        parts.append(f"{report.skipped_steps} of {report.steps} steps skipped by the fp16 scaler")
    return "; ".join(parts) or "no attention or identity figures (phase 2 did not run)"


def _cell(metric: bool, value: Any) -> str:
    """Metrics with three decimals, settings as short as they read (2.5, 0.0001), missing as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if metric else f"{value:g}"
    return str(value)
