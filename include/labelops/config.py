"""Project configuration: one YAML file per annotation project, validated at load.

Pure logic (no Airflow import): the DAG factory, the tools and the tests all read projects through
:func:`load_project` / :func:`load_all_projects`. A config with a mistake raises :class:`ConfigError`, whose
message names the file and the field, and :func:`load_all_projects` keeps going with the other files.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

INCLUDE_DIR = Path(__file__).resolve().parents[1]
CONFIG_ROOT = INCLUDE_DIR / "configs"
DEFAULT_PROJECTS_DIR = CONFIG_ROOT / "projects"

# The five pipeline stages, in the order data flows through them. A stage's DAG id is "<project>__<stage>".
STAGES = ("ingest", "dispatch", "agreement", "export", "retrain")
NAME_RE = r"^[a-z][a-z0-9_]{1,48}[a-z0-9]$"
PREFIX_RE = r"^[A-Za-z0-9_\-][A-Za-z0-9_\-./]*/$"
BUCKET_RE = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
# A plain address check (the SMTP server has the last word); email-validator costs 30 ms of DAG parse time.
Email = Annotated[str, Field(pattern=r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+$")]


class ConfigError(ValueError):
    """A project config that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Storage(_Strict):
    """Where the project's data lives. Every prefix the pipeline writes is derived from `project_prefix`."""

    bucket: str = Field(pattern=BUCKET_RE)
    source_prefix: str = Field(pattern=PREFIX_RE, description="raw objects to ingest, e.g. banking_support/raw/")
    project_prefix: str = Field(pattern=PREFIX_RE, description="everything the pipeline writes, e.g. banking_support/")

    @field_validator("source_prefix", "project_prefix")
    @classmethod
    def _no_dot_segments(cls, v: str) -> str:
        if any(part in (".", "..") for part in v.split("/")) or "//" in v:
            raise ValueError(f"{v!r} must not contain '.', '..' or empty path segments")
        return v

    @model_validator(mode="after")
    def _source_outside_outputs(self) -> "Storage":
        derived = [self.project_prefix + p for p in OUTPUT_FOLDERS]
        if any(self.source_prefix.startswith(d) or d.startswith(self.source_prefix) for d in derived):
            raise ValueError("source_prefix must not overlap the prefixes the pipeline writes under project_prefix "
                             f"({', '.join(OUTPUT_FOLDERS)})")
        return self

    def prefixes(self) -> tuple[str, ...]:
        """Every prefix of the bucket this project reads or writes."""
        return (self.project_prefix, self.source_prefix)


# The folders the pipeline writes (or keeps its own inputs in) under a project's project_prefix.
OUTPUT_FOLDERS = ("staged/", "quarantine/", "duplicates/", "manifests/", "state/", "annotations/", "reports/",
                  "exports/", "models/", "dvc/", "gold/")


class Taxonomy(_Strict):
    """The label set: inline `labels`, or a JSON list in `file` (relative to include/configs/)."""

    labels: tuple[str, ...] | None = None
    entities: tuple[str, ...] | None = Field(default=None, description="entity span labels (intent_entities)")
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "Taxonomy":
        if (self.labels is None) == (self.file is None):
            raise ValueError("give exactly one of 'labels' or 'file'")
        return self


class LabelStudioSettings(_Strict):
    connection_id: str = "label_studio_default"
    label_config: str = Field(description="Label Studio labeling XML, relative to include/configs/")
    project_title: str | None = None
    maximum_annotations: int = Field(default=1, ge=1, le=10)
    # image projects: tasks hold s3:// URIs that Label Studio resolves through an S3 storage of each queue project
    # (on the AWS connection's keys and endpoint): "presign" redirects the browser to a presigned URL (it must
    # reach the S3 endpoint), "proxy" makes Label Studio stream the bytes (only Label Studio must reach it)
    image_urls: Literal["presign", "proxy"] = "presign"
    presign_ttl_minutes: int = Field(default=15, ge=1, le=1440)


class ScaleSettings(_Strict):
    connection_id: str = "scale_default"
    project: str
    # image projects: the attachment Scale fetches. "presign": an HTTPS URL presigned on the AWS connection, valid
    # presign_ttl_hours (SigV4 allows 7 days at most); "s3": the s3:// URI as is, for Scale's own S3 integration
    image_urls: Literal["presign", "s3"] = "presign"
    presign_ttl_hours: int = Field(default=168, ge=1, le=168)


class Normalisation(_Strict):
    unicode_form: Literal["NFC", "NFKC"] = "NFC"
    collapse_whitespace: bool = True
    strip_control: bool = True
    lowercase: bool = False


class Ingest(_Strict):
    """How raw objects become staged records; the contract file lives in data_contracts/."""

    contract: str = Field(pattern=r"^[A-Za-z0-9_.\-]+\.ya?ml$")
    normalisation: Normalisation = Normalisation()
    max_record_bytes: int = Field(default=64 * 1024, ge=256, le=64 * 2**20)
    max_image_pixels: int = Field(default=40_000_000, ge=64, le=400_000_000)
    # a compressed object inflating beyond this is quarantined whole (oversized_record): a gzip bomb must not
    # take the worker's memory (the readers' own default, 2 GB, is far above an ingest worker's share)
    max_decompressed_bytes: int = Field(default=1 << 30, ge=1024, le=16 << 30)
    image_near_duplicate_distance: int = Field(default=6, ge=0, le=32)
    # a run takes new objects (in key order) up to this many bytes, at least one: a backlog is drained over runs
    # instead of one run holding all of it in memory (peak RSS: ~2.3 KB per short text record read)
    max_bytes_per_run: int = Field(default=512 * 2**20, ge=1)


class Dispatch(_Strict):
    """How staged records become annotation tasks (the `<project>__dispatch` DAG)."""

    batch_size: int = Field(default=200, ge=1, le=1_000_000, description="records selected per dispatch run")
    strategy: Literal["least_confidence", "margin", "entropy"] = "least_confidence"
    random_share: float = Field(default=0.15, ge=0, le=1, description="share of the batch picked at random")
    diversity: bool = Field(default=True, description="cluster candidates so a batch is not near-copies")
    stratify: bool = Field(default=True, description="every predicted class represented in the batch")
    routing: bool = Field(default=True, description="verify / expert / overlap queues by model confidence")
    overlap_share: float = Field(default=0.10, ge=0, le=1, description="share of tasks labelled by several")
    overlap_annotators: int = Field(default=2, ge=2, le=10)
    gold_share: float = Field(default=0.05, ge=0, le=0.5, description="gold tasks mixed in, per batch")
    gold_prefix: str = Field(default="gold/", description="under the project prefix: JSONL of known answers")
    chunk_size: int = Field(default=2000, ge=1, le=20_000, description="tasks per import request")
    seed: int = 0
    # the retrain's Asset event (a model was promoted) also schedules a dispatch: the next batch is chosen from
    # the waiting pool with the new champion's uncertainty, which closes the active-learning loop at once
    after_promotion: bool = Field(default=True, description="dispatch from the pool when a model is promoted")


class Thresholds(_Strict):
    near_duplicate_jaccard: float = Field(default=0.85, gt=0, le=1)
    # also a near duplicate: one word inserted, removed, swapped with its neighbour or misspelt (see
    # labelops.ingest.dedup); fixed by a project's first ingest, like the threshold (the history's keys)
    near_duplicate_word_edits: bool = True
    high_confidence: float = Field(default=0.9, gt=0, le=1)
    low_confidence: float = Field(default=0.5, ge=0, lt=1)
    min_cohen_kappa: float = Field(default=0.6, ge=-1, le=1)
    min_gold_accuracy: float = Field(default=0.8, ge=0, le=1)
    retrain_min_new_labels: int = Field(default=200, ge=1)
    # an annotator whose mean pairwise kappa is this far below the team's mean triggers an alert
    annotator_kappa_margin: float = Field(default=0.15, gt=0, le=2)

    @model_validator(mode="after")
    def _ordered(self) -> "Thresholds":
        if self.low_confidence >= self.high_confidence:
            raise ValueError("low_confidence must be below high_confidence")
        return self


class AgreementSettings(_Strict):
    """The nightly `<project>__agreement` stage: pull, statistics, report, alerts, adjudication."""

    min_annotator_gold: int = Field(default=5, ge=1, description="gold ratings before an annotator's gold "
                                    "accuracy can raise an alert")
    min_items_for_alert: int = Field(default=10, ge=1, description="items rated by two or more annotators in "
                                     "the window before its figures can raise an alert")
    adjudicate: bool = Field(default=True, description="send items whose annotators disagree to adjudication")
    adjudicate_below: float = Field(default=1.0, gt=0, le=1, description="adjudicate an item when the share of "
                                    "its majority label is below this (1.0: any disagreement)")
    max_adjudications_per_run: int = Field(default=1000, ge=0)
    history_runs: int = Field(default=30, ge=1, le=365, description="earlier nights shown in the trend")
    worst_items: int = Field(default=20, ge=0, le=500)
    pull_chunk_tasks: int = Field(default=5_000, ge=100, le=100_000, description="tasks per export snapshot")
    pull_workers: int = Field(default=2, ge=1, le=16, description="export snapshots built at once (Label Studio "
                              "serves them in parallel when it runs several worker processes)")


class Export(_Strict):
    """The `<project>__export` stage: consolidated labels as a DVC dataset version in a git repository."""

    repo: str = Field(default="${LABELOPS_DATASETS_REPO}", description="git URL or path of the dataset "
                      "repository; ${VAR} is read from the environment at run time")
    branch: str = Field(default="main", pattern=r"^[A-Za-z0-9._/\-]+$")
    path: str | None = Field(default=None, description="folder of this project in the repository "
                             "(default datasets/<project>)")
    remote: str | None = Field(default=None, description="DVC remote (default s3://<bucket>/<project_prefix>dvc/)")
    min_share: float = Field(default=0.5, gt=0, le=1, description="hold an item back when its winning answer has "
                             "less than this share of the (weighted) votes; ties are always held back")
    weighting: Literal["none", "gold_accuracy"] = "gold_accuracy"
    split: tuple[float, float, float] = Field(default=(0.8, 0.1, 0.1), description="train, validation, test")
    seed: int = 0

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x < 0 for x in v) or abs(sum(v) - 1) > 1e-9:
            raise ValueError("split must be three non-negative shares summing to 1")
        return v


class Retrain(_Strict):
    """The `<project>__retrain` stage: when to retrain (thresholds.retrain_min_new_labels and the kappa gate),
    and what a challenger must show to replace the champion."""

    metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    guarded: tuple[Literal["accuracy", "macro_f1", "ece", "brier"], ...] = ("accuracy", "ece")
    entity_metric: Literal["entity_f1"] = "entity_f1"
    # entity_ece: calibration of the span scores (dispatch routes entity tasks on them)
    entity_guarded: tuple[Literal["entity_precision", "entity_recall", "entity_ece"], ...] = (
        "entity_precision", "entity_ece")
    tolerance: float = Field(default=0.01, ge=0, le=1, description="how far a guarded metric may fall")


class Alerts(_Strict):
    connection_id: str = "smtp_default"
    emails: tuple[Email, ...] = Field(min_length=1, description="project leads who receive quality alerts")


class Schedules(_Strict):
    """Cron expressions or presets ("@daily"); null means the stage runs only when triggered or by Assets."""

    ingest: str | None = "@hourly"
    agreement: str | None = "0 2 * * *"

    @field_validator("ingest", "agreement")
    @classmethod
    def _cron_or_preset(cls, v: str | None) -> str | None:
        if v is None or v.startswith("@") or len(v.split()) == 5:
            return v
        raise ValueError(f"{v!r} is neither a 5-field cron expression nor a preset such as @daily")


class Project(_Strict):
    name: str = Field(pattern=NAME_RE)
    description: str = Field(min_length=1)
    owner: str = Field(min_length=1)
    modality: Literal["text", "image"] = "text"
    task: Literal["intent_classification", "intent_entities", "image_classification"]
    platform: Literal["label_studio", "scale"] = "label_studio"
    storage: Storage
    taxonomy: Taxonomy
    ingest: Ingest
    label_studio: LabelStudioSettings | None = None
    scale: ScaleSettings | None = None
    thresholds: Thresholds = Thresholds()
    dispatch: Dispatch = Dispatch()
    agreement: AgreementSettings = AgreementSettings()
    export: Export = Export()
    retrain: Retrain = Retrain()
    alerts: Alerts
    schedules: Schedules = Schedules()
    aws_connection_id: str = "aws_default"
    tags: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _platform_configured(self) -> "Project":
        if self.platform == "label_studio" and self.label_studio is None:
            raise ValueError("platform is label_studio but the 'label_studio' section is missing")
        if self.platform == "scale" and self.scale is None:
            raise ValueError("platform is scale but the 'scale' section is missing")
        if (self.modality == "image") != (self.task == "image_classification"):
            raise ValueError(f"task {self.task!r} does not fit modality {self.modality!r}")
        return self


@dataclass(frozen=True)
class ProjectConfig:
    """A validated project with its resolved taxonomy and file of origin."""

    spec: Project
    labels: tuple[str, ...]
    source_file: Path
    label_config_xml: str | None
    entities: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    def dag_id(self, stage: str) -> str:
        return f"{self.spec.name}__{stage}"

    def s3_uri(self, suffix: str = "") -> str:
        return f"s3://{self.spec.storage.bucket}/{self.spec.storage.project_prefix}{suffix}"

    def asset_uri(self, stage: str) -> str:
        """URI of the Asset a stage produces; the next stage is scheduled on it."""
        if stage not in STAGES:
            raise KeyError(stage)
        return self.s3_uri(f"assets/{stage}")

    def model_kinds(self) -> list[str]:
        """The registry kinds of the models this project pre-annotates with and retrains: ["image"] (image
        projects), ["intent", "entities"] (intent_entities) or ["intent"]."""
        if self.spec.modality == "image":
            return ["image"]
        return ["intent", "entities"] if self.spec.task == "intent_entities" else ["intent"]

    def connection_ids(self) -> dict[str, str]:
        """Every Airflow connection this project uses, by role."""
        spec = self.spec
        ids = {"s3": spec.aws_connection_id, "smtp": spec.alerts.connection_id}
        if spec.label_studio is not None:
            ids["label_studio"] = spec.label_studio.connection_id
        if spec.scale is not None:
            ids["scale"] = spec.scale.connection_id
        return ids


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _format_validation(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid project config"]
    for err in exc.errors():
        lines.append(f"  - field '{_field_path(err['loc'])}': {err['msg']}")
    return "\n".join(lines)


def _read_under_config_root(rel: str, path: Path, field: str, config_root: Path) -> str:
    target = (config_root / rel).resolve()
    if config_root.resolve() not in target.parents:
        raise ConfigError(f"{path}: field '{field}': {rel!r} points outside {config_root}")
    if not target.is_file():
        raise ConfigError(f"{path}: field '{field}': file {target} does not exist")
    return target.read_text(encoding="utf-8")


def label_config_choices(xml: str) -> list[str]:
    """The `value`s of every <Choice> in a Label Studio labeling config, in order."""
    root = ET.fromstring(xml)
    return [el.attrib["value"] for el in root.iter("Choice") if "value" in el.attrib]


def load_project(path: str | os.PathLike, config_root: Path | None = None) -> ProjectConfig:
    """Load and validate one project file; raise ConfigError naming the file and the field."""
    path = Path(path)
    config_root = config_root or CONFIG_ROOT
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: field '(top level)': expected a mapping, got {type(raw).__name__}")
    try:
        spec = Project.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc)) from None
    if spec.name != path.stem:
        raise ConfigError(f"{path}: field 'name': {spec.name!r} must equal the file name {path.stem!r}")

    entities: list[str] = list(spec.taxonomy.entities or ())
    if spec.taxonomy.file is not None:
        text = _read_under_config_root(spec.taxonomy.file, path, "taxonomy.file", config_root)
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: field 'taxonomy.file': not valid JSON: {exc}") from None
        if isinstance(labels, dict):  # {"intents": [...], "entities": [...]}
            entities = labels.get("entities") or []
            labels = labels.get("intents")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in [*labels, *entities]):
            raise ConfigError(f"{path}: field 'taxonomy.file': expected a JSON list of label names, or an object "
                              "with the lists 'intents' and 'entities'")
        labels = tuple(labels)
    else:
        labels = tuple(spec.taxonomy.labels or ())
    if len(labels) < 2:
        raise ConfigError(f"{path}: field 'taxonomy': a taxonomy needs at least 2 labels, got {len(labels)}")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"{path}: field 'taxonomy': duplicate labels {dupes}")

    xml = None
    if spec.label_studio is not None:
        xml = _read_under_config_root(spec.label_studio.label_config, path, "label_studio.label_config", config_root)
        try:
            choices = label_config_choices(xml)
        except ET.ParseError as exc:
            raise ConfigError(f"{path}: field 'label_studio.label_config': not valid XML: {exc}") from None
        # entity labels: the <Label>s of <Labels> controls (a <RectangleLabels>' <Label>s name box labels)
        spans = [el.attrib["value"] for control in ET.fromstring(xml).iter("Labels") for el in control.iter("Label")
                 if "value" in el.attrib]
        if set(spans) != set(entities):
            raise ConfigError(
                f"{path}: field 'label_studio.label_config': its <Label> values differ from the taxonomy's "
                f"entities (missing from XML: {sorted(set(entities) - set(spans))[:5]}, "
                f"not in taxonomy: {sorted(set(spans) - set(entities))[:5]})"
            )
        if spec.modality == "image" and not choices:
            raise ConfigError(
                f"{path}: field 'label_studio.label_config': an image project needs a <Choices> control with the "
                f"taxonomy's classes (a config with <RectangleLabels> only is not supported yet: its items would "
                f"have no class to export)")
        if choices and set(choices) != set(labels):
            missing, extra = sorted(set(labels) - set(choices)), sorted(set(choices) - set(labels))
            raise ConfigError(
                f"{path}: field 'label_studio.label_config': its <Choice> values differ from the taxonomy "
                f"(missing from XML: {missing[:5]}, not in taxonomy: {extra[:5]})"
            )
    if spec.task == "intent_entities" and not entities:
        raise ConfigError(f"{path}: field 'taxonomy': task intent_entities needs entity labels")
    return ProjectConfig(spec=spec, labels=labels, source_file=path, label_config_xml=xml, entities=tuple(entities))


def projects_dir() -> Path:
    return Path(os.environ.get("LABELOPS_PROJECTS_DIR", DEFAULT_PROJECTS_DIR))


def load_all_projects(directory: Path | None = None) -> tuple[list[ProjectConfig], dict[Path, str]]:
    """Every valid project in `directory` (sorted by file name) and, separately, the error of every broken one."""
    directory = directory or projects_dir()
    good: list[ProjectConfig] = []
    errors: dict[Path, str] = {}
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        try:
            cfg = load_project(path)
        except ConfigError as exc:
            errors[path] = str(exc)
            continue
        clash = _overlap(cfg, good)
        if clash:
            errors[path] = f"{path}: {clash}"
            continue
        good.append(cfg)
    return good, errors


def _overlap(cfg: ProjectConfig, others: list[ProjectConfig]) -> str | None:
    """Why `cfg` may not run beside `others`: one of its prefixes (project or source) equals, contains or lies
    inside a prefix of another project in the same bucket, so one project could read or overwrite the other's
    data. None when it is alone in its prefixes."""
    st = cfg.spec.storage
    for other in others:
        ost = other.spec.storage
        if ost.bucket != st.bucket:
            continue
        mine_all = (("project_prefix", st.project_prefix), ("source_prefix", st.source_prefix))
        for field, mine in mine_all:
            if mine in ost.prefixes():
                return f"field 'storage.{field}': s3://{st.bucket}/{mine} is already used by {other.source_file}"
        for field, mine in mine_all:
            for theirs in ost.prefixes():
                if mine.startswith(theirs) or theirs.startswith(mine):
                    return (f"field 'storage.{field}': s3://{st.bucket}/{mine} overlaps s3://{ost.bucket}/{theirs} "
                            f"of {other.source_file}: each project reads and writes only its own prefixes")
    return None
