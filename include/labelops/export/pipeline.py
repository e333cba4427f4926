"""The export stage as two steps the `<project>__export` DAG calls: `prepare` and `version`. No Airflow.

prepare: every annotation's latest version (the agreement stage's snapshots) -> one final label per item
  (`consolidate`: adjudicated answer, else gold, else a vote weighted by each annotator's gold accuracy; ties and
  low-agreement items held back) -> a fixed, seeded split -> the dataset files, the card's figures and the diff
  against the last version, staged in S3 under `<p>exports/run=<run>/` (deterministic: a retry writes the same).
version: the staged files as one DVC dataset version in the project's git repository (`dvc_repo.DatasetRepo`:
  fresh clone, dvc add + push, verified, commit and annotated tag `<project>/v<N>` pushed atomically), then the
  manifest and the last version's item -> label map (for the next diff). A re-run of the run creates nothing; no
  change since the last version creates nothing and says so.

Layout under the project's prefix (`<p>/`):
  <p>exports/run=<run>/files/...          dataset.jsonl, dataset.parquet, annotations.parquet, held_back.jsonl,
                                          entities.conll (entity projects), classification.csv (image projects)
  <p>exports/run=<run>/prepared.json      counts, file hashes, the card's figures (written last)
  <p>manifests/export/<run>.json          the manifest: tag, commit, version, created, reason, counts
  <p>state/export/latest.json             the newest version: tag, run, item -> label
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

from labelops.agreement.pipeline import now
from labelops.config import ProjectConfig
from labelops.ingest.pipeline import safe_run_id
from labelops.storage import S3Store

MANIFEST_KEYS = ("created", "tag", "commit", "version", "reason", "items", "held_back", "by_split",
                 "by_decision", "annotations")
DATA_ATTRIBUTION = {
    "banking_support": ["Banking77 (PolyAI), CC BY 4.0: https://github.com/PolyAI-LDN/task-specific-datasets"],
    "snips_assistant": ["SNIPS NLU benchmark (Snips), CC0: https://github.com/sonos/nlu-benchmark"],
    "digits": ["UCI Optical Recognition of Handwritten Digits (Alpaydin and Kaynak, 1998), CC BY 4.0: "
               "https://doi.org/10.24432/C50P49"],
}


class Paths:
    def __init__(self, project: ProjectConfig, run_id: str) -> None:
        self.base = project.spec.storage.project_prefix
        self.run = safe_run_id(run_id)

    files = property(lambda self: f"{self.base}exports/run={self.run}/files/")
    prepared = property(lambda self: f"{self.base}exports/run={self.run}/prepared.json")
    manifest = property(lambda self: f"{self.base}manifests/export/{self.run}.json")
    latest = property(lambda self: f"{self.base}state/export/latest.json")


def expand(value: str) -> str:
    """${VAR} from the environment; a variable that is not set is an error naming it (never an empty path)."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise KeyError(f"environment variable {m.group(1)} (used in the export config) is not set")
        return os.environ[m.group(1)]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, value)


def repo_settings(project: ProjectConfig) -> dict:
    ex, st = project.spec.export, project.spec.storage
    return {"repo_url": expand(ex.repo), "branch": ex.branch, "path": ex.path or f"datasets/{project.name}",
            "remote_url": ex.remote or f"s3://{st.bucket}/{st.project_prefix}dvc/"}


# -- prepare ------------------------------------------------------------------------------------------------------


def annotator_gold_accuracy(rows: list[dict], gold: dict[str, dict]) -> dict[str, float]:
    """Each annotator's accuracy on the gold items they answered (their latest answer per item)."""
    from labelops.agreement.pull import iso

    latest: dict[tuple[str, str], dict] = {}
    for r in sorted(rows, key=lambda r: iso(r["updated_at"]) or ""):
        if r["record_id"] in gold and gold[r["record_id"]].get("label") is not None:
            latest[(r["annotator"], r["record_id"])] = r
    right: Counter = Counter()
    total: Counter = Counter()
    for (annotator, rid), r in latest.items():
        total[annotator] += 1
        right[annotator] += r["label"] == gold[rid]["label"]
    return {a: right[a] / n for a, n in total.items()}


def staged_columns(store: S3Store, project: ProjectConfig, columns: tuple[str, ...]) -> dict[str, dict]:
    """record id -> {column: value} of every staged record, for the columns its batch has (one read each)."""
    import io

    import pyarrow.parquet as pq

    out: dict[str, dict] = {}
    for obj in store.list(f"{project.spec.storage.project_prefix}staged/"):
        if obj["key"].endswith(".parquet"):
            f = pq.ParquetFile(io.BytesIO(store.get(obj["key"])))
            have = [c for c in columns if c in f.schema_arrow.names]
            for row in f.read(columns=["record_id", *have]).to_pylist():
                out[row.pop("record_id")] = row
    return out


def source_keys(store: S3Store, project: ProjectConfig) -> dict[str, str]:
    return {rid: v.get("source_key") for rid, v in staged_columns(store, project, ("source_key",)).items()}


def image_sizes(store: S3Store, project: ProjectConfig) -> dict[str, tuple[int, int]]:
    """record id -> (width, height) in pixels of every staged image."""
    return {rid: (int(v["width"]), int(v["height"]))
            for rid, v in staged_columns(store, project, ("width", "height")).items()
            if v.get("width") and v.get("height")}


def model_versions(store: S3Store, project: ProjectConfig) -> list[str]:
    from labelops.dispatch.pipeline import finished_manifests

    return sorted({m["model_version"] for m in finished_manifests(store, project) if m.get("model_version")})


def period_agreement(store: S3Store, project: ProjectConfig, since: str | None) -> dict:
    """The agreement figures of the nights since the last version (their count, and the newest night's)."""
    from labelops.agreement.pipeline import history

    entries = history(store, project)
    if since is not None:
        entries = [e for e in entries if e["generated_at"] > since] or entries[-1:]
    newest = entries[-1] if entries else {}
    return {"nights": len(entries), **{k: newest.get(k) for k in ("cohen_kappa_mean", "fleiss_kappa",
                                                                  "krippendorff_alpha_nominal", "gold_accuracy",
                                                                  "percent_agreement")}}


def prepare(store: S3Store, project: ProjectConfig, run_id: str) -> dict:
    """Consolidate, split and stage the dataset files of this run; returns the prepared record."""
    from labelops.agreement.pipeline import Paths as AgreementPaths
    from labelops.agreement.pipeline import box_project, current_annotations, dispatched_images, gold_answers
    from labelops.export.consolidate import consolidate, diff, reliability_weights, write_files

    paths = Paths(project, run_id)
    done = store.get_json(paths.prepared)
    if done is not None:
        return done
    spec = project.spec.export
    entity = project.spec.task == "intent_entities"
    rows = current_annotations(store, AgreementPaths(project, run_id))
    gold = gold_answers(store, project)
    images = None
    if project.spec.modality == "image":  # an image item's "text" is its s3:// URI, whatever the platform showed
        images = dispatched_images(store, project)
        rows = [{**r, "text": images[r["record_id"]]["image"]} if r.get("record_id") in images else r for r in rows]
    boxes, rotated, categories, sizes = None, 0, (), None
    if images is not None and box_project(project):  # consolidated boxes and the COCO file
        from labelops.export.detection import box_labels, consolidate_boxes, latest_boxes

        answers, rotated = latest_boxes(rows)
        boxes = {rid: consolidate_boxes(by) for rid, by in answers.items()}
        categories, sizes = box_labels(project.label_config_xml), image_sizes(store, project)
    weights = None
    if spec.weighting == "gold_accuracy":
        acc = annotator_gold_accuracy([r for r in rows if not r["cancelled"]], gold)
        weights = reliability_weights(acc, len(project.labels)) if acc else None
    items, held = consolidate(rows, gold=gold, entity=entity, weights=weights, min_share=spec.min_share,
                              source_keys=source_keys(store, project), seed=spec.seed, ratios=spec.split)
    previous = store.get_json(paths.latest)
    changes = diff(previous["labels"] if previous else {}, items) if previous else None
    with tempfile.TemporaryDirectory() as tmp:
        hashes = write_files(Path(tmp), items, held, rows, entity=entity, images=images, boxes=boxes,
                             box_categories=categories, sizes=sizes)
        for name in sorted(hashes):
            store.put(paths.files + name, (Path(tmp) / name).read_bytes())
    record = {
        "run_id": run_id, "prepared_at": now(), "files": hashes, "files_uri": store.uri(paths.files),
        "items": len(items), "held_back": len(held),
        "held_back_by_reason": dict(Counter(h["reason"] for h in held)),
        "by_split": dict(Counter(i["split"] for i in items)),
        "by_decision": dict(Counter(i["decided_by"] for i in items)),
        "annotations": sum(1 for r in rows if not r["cancelled"]),
        "annotators": len({r["annotator"] for r in rows if not r["cancelled"]}),
        "labels": dict(Counter(i["label"] for i in items if i.get("label") is not None).most_common()),
        "entity_types": dict(Counter(e["label"] for i in items for e in i.get("entities") or []).most_common()),
        **({"boxes": sum(len(boxes.get(i["item_id"]) or []) for i in items), "rotated_boxes_left_out": rotated}
           if boxes is not None else {}),
        "source_prefixes": dict(Counter((i.get("source_key") or "?").rsplit("/", 1)[0] + "/"
                                        for i in items).most_common(20)),
        "model_versions": model_versions(store, project),
        "agreement": period_agreement(store, project, previous["created_at"] if previous else None),
        "weights": weights, "changes": changes, "previous_tag": previous["tag"] if previous else None,
        "item_labels": {i["item_id"]: i.get("label") for i in items},
    }
    store.put_json(paths.prepared, record)  # last: a retry before this line prepares again
    return record


# -- version ------------------------------------------------------------------------------------------------------


def card_meta(project: ProjectConfig, prepared: dict, tag: str) -> dict:
    return {
        "project": project.name, "description": project.spec.description, "tag": tag, "run_id": prepared["run_id"],
        "created_at": prepared["prepared_at"],
        "counts": {k: prepared[k] for k in ("items", "held_back", "held_back_by_reason", "by_split", "by_decision",
                                            "annotations", "annotators")},
        "labels": prepared["labels"], "entity_types": prepared["entity_types"], "agreement": prepared["agreement"],
        "source_prefixes": prepared["source_prefixes"], "model_versions": prepared["model_versions"],
        "changes": prepared["changes"], "previous_tag": prepared["previous_tag"],
        "license": DATA_ATTRIBUTION.get(project.name, []),
        "split": {"seed": project.spec.export.seed, "ratios": list(project.spec.export.split)},
    }


def version(store: S3Store, project: ProjectConfig, run_id: str, repo) -> dict:
    """The prepared files as a DVC dataset version (see the module doc); returns the manifest."""
    from labelops.export.card import render_card

    paths = Paths(project, run_id)
    prepared = store.get_json(paths.prepared)
    if prepared is None:
        raise RuntimeError(f"run {run_id} has nothing prepared at {store.uri(paths.prepared)}: prepare first")
    latest = repo.latest(project.name)
    tag = f"{project.name}/v{(latest['version'] if latest else 0) + 1}"
    version_info = {k: prepared[k] for k in ("run_id", "files", "items", "held_back", "by_split", "by_decision",
                                             "annotations", "model_versions", "agreement")}
    extra = {"card.md": render_card(card_meta(project, prepared, tag)).encode(),
             "version.json": (json.dumps(version_info, indent=2, sort_keys=True) + "\n").encode()}
    if not prepared["items"]:
        result = {"created": False, "tag": latest["tag"] if latest else None, "commit": None,
                  "version": latest["version"] if latest else None, "reason": "no consolidated item to export"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for name in prepared["files"]:
                (Path(tmp) / name).write_bytes(store.get(paths.files + name))
            result = repo.publish(Path(tmp), project=project.name, run_id=run_id, extra_git_files=extra,
                                  message=f"{project.name}: {prepared['items']} items "
                                          f"({prepared['held_back']} held back), run {run_id}")
    # also when a retry finds the version this run pushed before it crashed: latest.json must name it
    if result.get("created") or (result.get("reason") or "").startswith("this run created"):
        store.put_json(paths.latest, {"tag": result["tag"], "version": result["version"], "run_id": run_id,
                                      "commit": result["commit"], "created_at": prepared["prepared_at"],
                                      "labels": prepared["item_labels"]})
    manifest = {
        "project": project.name, "run_id": run_id, "created_at": now(),
        **{k: result.get(k) for k in ("created", "tag", "commit", "version", "reason")},
        **{k: prepared[k] for k in ("items", "held_back", "held_back_by_reason", "by_split", "by_decision",
                                    "annotations", "files_uri")},
        "repo_path": repo_settings(project)["path"], "manifest_uri": store.uri(paths.manifest),
    }
    store.put_json(paths.manifest, manifest)
    return manifest
