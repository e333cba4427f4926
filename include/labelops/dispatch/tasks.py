"""What dispatch hands to an annotation platform: one `DispatchTask` per task to create, platform-neutral.

Every task carries a stable `key` (the idempotency key): the same staged record in the same queue always has the
same key, so a re-run, a retry after a timeout or a crash between chunks finds the task already there instead of
creating it twice. Label Studio keeps the key in the task's `data` (`labelops_key`); Scale uses it as `unique_id`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Literal

Route = Literal["verify", "expert", "overlap", "main"]
ROUTES: tuple[str, ...] = ("verify", "expert", "overlap", "main")


@dataclass(frozen=True)
class Span:
    """An entity span: character offsets into the task's text (end exclusive)."""

    start: int
    end: int
    label: str
    text: str
    score: float | None = None


@dataclass(frozen=True)
class Prediction:
    """A model's pre-annotation of one record."""

    model_version: str
    label: str | None  # the predicted class (intent / image class); None when the model predicts only spans
    score: float  # the model's confidence: the probability of `label` (for spans only: their mean score)
    spans: tuple[Span, ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)  # top classes, for the manifest and drift


@dataclass(frozen=True)
class Gold:
    """The known answer of a gold task (never shown as such to annotators)."""

    label: str | None
    spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class DispatchTask:
    key: str  # stable idempotency key, unique in the project (see task_key)
    record_id: str  # the staged record's id (or the gold item's id)
    text: str | None  # the text to annotate (None for image tasks)
    route: Route
    annotators: int = 1  # how many distinct annotators should label it (overlap: >= 2)
    prediction: Prediction | None = None
    gold: Gold | None = None
    image_url: str | None = None  # image tasks: the image's s3:// URI (each platform makes it fetchable)
    image_sha256: str | None = None  # image tasks: the image's content hash (kept in the dispatched ledger)
    source_key: str | None = None
    ingest_run_id: str | None = None
    selection: str = ""  # why it was selected: uncertainty / random / stratified / diversity / cold_start / gold
    selection_score: float | None = None
    # adjudication tasks: the competing answers, shown as extra predictions, and a note shown in the task data
    alternatives: tuple[Prediction, ...] = ()
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def task_key(project: str, record_id: str, *, gold_run: str | None = None) -> str:
    """The idempotency key of a record's task. A record is dispatched once per project, so its key is the
    project and record id. A gold item is mixed into many batches, so its key also depends on the dispatch run,
    and it is opaque (32 hex digits, like a record id): annotators who can see task data must not be able to
    tell a gold task from the others."""
    if gold_run is not None:
        digest = hashlib.sha256(f"gold\x00{gold_run}\x00{record_id}".encode()).hexdigest()[:32]
        return f"{project}:{digest}"
    return f"{project}:{record_id}"
