"""The dispatch stage as two pure steps the `<project>__dispatch` DAG calls: `plan` and `run`.

plan: the pool (every staged record not yet dispatched) -> the champion model's pre-annotations (none at cold
start) -> active-learning selection -> routing (verify / expert / overlap, or main) -> gold tasks mixed in ->
the run's task list, written once (a retry dispatches exactly the same tasks in the same chunks).
run: the tasks created on the platform exactly once (see label_studio.Importer / scale.ScaleDispatcher), then
the dispatched ledger and the manifest.

Layout under the project's prefix (`<p>/`):
  <p>manifests/dispatch/<run>.plan.json       the tasks of the run (with predictions and why each was selected)
  <p>manifests/dispatch/<run>.json            the manifest (MANIFEST_KEYS)
  <p>state/dispatch/run=<run>/ledger/...      the import ledger (baselines, chunk marks, task ids)
  <p>state/dispatch/dispatched/run=<run>.jsonl  each task of the run: key, record id, queue, platform task id,
                                               and for gold tasks the known answer (never sent to the platform)
  <p>state/dispatch/triggers/<hash>.json      which dispatch run handled an ingest manifest or a promoting
                                               retrain's manifest (a repeated Asset event dispatches nothing)
  <p>state/dispatch/label_studio.json         queue -> Label Studio project id
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from labelops.config import ProjectConfig
from labelops.dispatch.tasks import DispatchTask, Gold, Prediction, Span, task_key
from labelops.ingest.pipeline import safe_run_id
from labelops.storage import S3Store

MANIFEST_KEYS = ("records_considered", "records_selected", "by_strategy", "by_route", "gold_tasks",
                 "tasks_created", "tasks_already_present", "model_version", "platform", "drift")


class Paths:
    def __init__(self, project: ProjectConfig, run_id: str) -> None:
        self.base = project.spec.storage.project_prefix
        self.run = safe_run_id(run_id)

    @property
    def plan(self) -> str:
        return f"{self.base}manifests/dispatch/{self.run}.plan.json"

    @property
    def manifest(self) -> str:
        return f"{self.base}manifests/dispatch/{self.run}.json"

    @property
    def ledger(self) -> str:
        return f"{self.base}state/dispatch/run={self.run}/ledger/"

    @property
    def dispatched_prefix(self) -> str:
        return f"{self.base}state/dispatch/dispatched/"

    @property
    def dispatched(self) -> str:
        return f"{self.dispatched_prefix}run={self.run}.jsonl"

    def trigger(self, manifest_uri: str) -> str:
        return f"{self.base}state/dispatch/triggers/{hashlib.sha256(manifest_uri.encode()).hexdigest()[:32]}.json"

    @property
    def label_studio(self) -> str:
        return f"{self.base}state/dispatch/label_studio.json"

    @property
    def staged_prefix(self) -> str:
        return f"{self.base}staged/"

    @property
    def manifests_prefix(self) -> str:
        return f"{self.base}manifests/dispatch/"


class S3Ledger:
    """The import ledger of one run, one small JSON object per entry. The entries present are listed once (one
    LIST, not a GET per chunk); one process writes a run's ledger at a time (max_active_runs=1)."""

    def __init__(self, store: S3Store, prefix: str) -> None:
        self.store, self.prefix = store, prefix
        self._names: set[str] | None = None

    def get(self, name: str) -> Any:
        if self._names is None:
            self._names = {o["key"] for o in self.store.list(self.prefix)}
        key = self.prefix + name + ".json"
        return self.store.get_json(key) if key in self._names else None

    def put(self, name: str, value: Any) -> None:
        key = self.prefix + name + ".json"
        self.store.put_json(key, value)
        if self._names is not None:
            self._names.add(key)


# -- the pool -------------------------------------------------------------------------------------------------


def dispatched_records(store: S3Store, paths: Paths) -> set[str]:
    done: set[str] = set()
    for obj in store.list(paths.dispatched_prefix):
        for line in store.get(obj["key"]).splitlines():
            row = json.loads(line)
            if not row.get("gold"):
                done.add(row["record_id"])
    return done


def load_pool(store: S3Store, project: ProjectConfig, paths: Paths) -> list[dict]:
    """Every staged record of the project not yet dispatched, oldest batch first."""
    import pyarrow.parquet as pq

    done = dispatched_records(store, paths)
    pool: list[dict] = []
    seen: set[str] = set()
    for obj in sorted(store.list(paths.staged_prefix), key=lambda o: o["key"]):
        if not obj["key"].endswith(".parquet"):
            continue
        table = pq.read_table(io.BytesIO(store.get(obj["key"])))
        cols = [c for c in ("record_id", "text", "source_key", "ingest_run_id", "image_key", "sha256")
                if c in table.column_names]
        for row in table.select(cols).to_pylist():
            if row["record_id"] not in done and row["record_id"] not in seen:
                seen.add(row["record_id"])
                pool.append(row)
    return pool


def load_gold(store: S3Store, project: ProjectConfig) -> list[dict]:
    """Gold items: JSON Lines under <p><dispatch.gold_prefix> with text, label and optionally entities
    ([{start, end, label}]); for image projects image_key (an object of the project's bucket) and label. Their
    record id is the id ingest would give them (of the normalised text; of the image's bytes)."""
    from labelops.ingest.dedup import normalise_text, record_id
    from labelops.ingest.pipeline import remap_spans

    opts = project.spec.ingest.normalisation.model_dump()
    prefix = project.spec.storage.project_prefix + project.spec.dispatch.gold_prefix
    items, seen = [], set()
    for obj in sorted(store.list(prefix), key=lambda o: o["key"]):
        for n, line in enumerate(store.get(obj["key"]).decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if project.spec.modality == "image":
                item = _image_gold(store, project, row, f"{obj['key']}:{n}")
                if item["record_id"] not in seen:
                    seen.add(item["record_id"])
                    items.append(item)
                continue
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise ValueError(f"gold item {obj['key']}:{n} has no text")
            if row.get("label") is not None and project.labels and row["label"] not in project.labels:
                raise ValueError(f"gold item {obj['key']}:{n}: label {row['label']!r} is not in the taxonomy")
            text = normalise_text(row["text"], **opts)
            rid = record_id(text)
            if rid not in seen:
                seen.add(rid)
                ents = remap_spans(row["text"], text, list(row.get("entities") or []),
                                    lambda t: normalise_text(t, **opts))
                if isinstance(ents, str):
                    raise ValueError(f"gold item {obj['key']}:{n}: {ents}")
                spans = tuple(Span(e["start"], e["end"], e["label"], e["text"]) for e in ents)
                items.append({"record_id": rid, "text": text, "gold": Gold(row.get("label"), spans),
                              "source_key": obj["key"]})
    return items


def _image_gold(store: S3Store, project: ProjectConfig, row: dict, where: str) -> dict:
    key = row.get("image_key")
    if not isinstance(key, str) or not key:
        raise ValueError(f"gold item {where} has no image_key")
    if row.get("label") is None or (project.labels and str(row["label"]) not in project.labels):
        raise ValueError(f"gold item {where}: label {row.get('label')!r} is not in the taxonomy")
    body = store.get_or_none(key)
    if body is None:
        raise ValueError(f"gold item {where}: image {store.uri(key)} does not exist")
    from labelops.ingest.dedup import image_record_id

    sha256 = hashlib.sha256(body).hexdigest()
    return {"record_id": image_record_id(sha256), "text": None, "image_key": key, "sha256": sha256,
            "gold": Gold(str(row["label"]), ()), "source_key": key}


# -- models ---------------------------------------------------------------------------------------------------


def load_models(store: S3Store, project: ProjectConfig) -> dict:
    """The champion models of the project ({"intent": model, "entities": model} or {"image": model}, missing ones
    left out)."""
    from labelops.models import registry

    prefix = project.spec.storage.project_prefix
    models = {}
    for kind in project.model_kinds():
        model = registry.load_champion(store, prefix, kind=kind)
        if model is not None:
            models[kind] = model
    return models


def model_version(models: dict) -> str | None:
    if not models:
        return None
    return "+".join(f"{k}:{m.version}" for k, m in sorted(models.items()))


def predict(models: dict, texts: list[str], version: str | None):
    """(predictions per text or None, probabilities matrix or None, features or None)."""
    if not models or not texts:
        return None, None, None
    from labelops.models.intent import top_predictions

    probs = feats = None
    preds: list[Prediction] = []
    intent = models.get("intent")
    if intent is not None:
        classes, probs = intent.predict_proba(texts)
        feats = intent.features(texts)
        preds = top_predictions(classes, probs, version, ndigits=4)
    entities = models.get("entities")
    if entities is not None:
        spans = entities.predict(texts)
        if not preds:
            preds = [Prediction(version, None, 1.0) for _ in texts]
        preds = [Prediction(p.model_version, p.label, p.score if p.label is not None else
                            (sum(s.score or 0 for s in sp) / len(sp) if sp else 1.0), tuple(sp), p.probabilities)
                 for p, sp in zip(preds, spans)]
    return preds, probs, feats


def predict_images(models: dict, store: S3Store, keys: list[str], version: str | None, chunk: int = 500):
    """`predict` for image projects: the images are read from S3 `chunk` at a time (never all held at once)."""
    import numpy as np

    from labelops.models.intent import top_predictions

    model = models.get("image")
    if model is None or not keys:
        return None, None, None
    probs, feats, classes = [], [], []
    for s in range(0, len(keys), chunk):
        x = model.features(store.get_many(keys[s: s + chunk]))  # each image decoded once
        classes, p = model.proba_of_features(x)
        probs.append(p)
        feats.append(x)
    probs = np.vstack(probs)
    return top_predictions(classes, probs, version, ndigits=4), probs, np.vstack(feats)


# -- plan ---------------------------------------------------------------------------------------------------


def handled_triggers(store: S3Store, paths: Paths, manifest_uris: list[str]) -> dict[str, str]:
    """The triggering manifests (ingest batches, promoting retrain runs) that an earlier dispatch run already
    handled: uri -> that run."""
    out = {}
    for uri in manifest_uris:
        done = store.get_json(paths.trigger(uri))
        if done is not None and done["dispatch_run"] != paths.run:
            out[uri] = done["dispatch_run"]
    return out


def plan(store: S3Store, project: ProjectConfig, run_id: str, *, triggers: list[str] | None = None,
         models: dict | None = None, batch_size: int | None = None) -> dict:
    """Select and route this run's tasks; written once per run. With `triggers` (the manifests of the Asset
    events that scheduled the run: ingest batches, or a retrain that promoted a model) all handled by earlier
    runs, the plan says skip and holds no task. `batch_size` replaces the config's dispatch.batch_size for this
    run."""
    from labelops.dispatch import selection

    paths = Paths(project, run_id)
    existing = store.get_json(paths.plan)
    if existing is not None:
        return existing
    cfg, th = project.spec.dispatch, project.spec.thresholds
    triggers = sorted(set(triggers or []))
    handled = handled_triggers(store, paths, triggers)
    base = {"run_id": run_id, "plan_uri": store.uri(paths.plan), "triggers": triggers, "platform": project.spec.platform}
    if triggers and len(handled) == len(triggers):
        result = {**base, "skip": f"every triggering event (ingest batch or promoted model) was dispatched "
                                 f"already ({handled})", "tasks": []}
        store.put_json(paths.plan, result)
        run(store, project, run_id, platform=None)  # nothing to create: the run is finished here
        return result
    if models is None:
        models = load_models(store, project)
    version = model_version(models)
    pool = load_pool(store, project, paths)
    image = project.spec.modality == "image"
    t0 = time.time()
    if image:
        preds, probs, feats = predict_images(models, store, [r["image_key"] for r in pool], version)
    else:
        preds, probs, feats = predict(models, [r.get("text") or "" for r in pool], version)
    predict_seconds = time.time() - t0
    picks = selection.select(len(pool), batch_size=batch_size or cfg.batch_size, probs=probs, features=feats,
                             strategy=cfg.strategy, random_share=cfg.random_share, diversity=cfg.diversity,
                             stratify=cfg.stratify, seed=cfg.seed)
    scores = [p.score for p in picks]
    routes = [selection.route(preds[p.index].score if preds else None, high=th.high_confidence,
                              low=th.low_confidence, routing=cfg.routing) for p in picks]
    routes = selection.assign_overlap(routes, scores, cfg.overlap_share, seed=cfg.seed)
    tasks = []
    for pick, queue in zip(picks, routes):
        rec = pool[pick.index]
        tasks.append(DispatchTask(
            key=task_key(project.name, rec["record_id"]), record_id=rec["record_id"], text=rec.get("text"),
            image_url=store.uri(rec["image_key"]) if rec.get("image_key") else None,
            image_sha256=rec.get("sha256") if rec.get("image_key") else None, route=queue,
            annotators=cfg.overlap_annotators if queue == "overlap" else 1,
            prediction=preds[pick.index] if preds else None, source_key=rec.get("source_key"),
            ingest_run_id=rec.get("ingest_run_id"), selection=pick.reason, selection_score=pick.score))
    gold_items = load_gold(store, project) if tasks else []
    chosen = selection.pick_gold(len(tasks), len(gold_items), cfg.gold_share, seed=cfg.seed)
    if image:
        gold_preds, _, _ = predict_images(models, store, [gold_items[i]["image_key"] for i in chosen], version)
    else:
        gold_preds, _, _ = predict(models, [gold_items[i]["text"] for i in chosen], version)
    for n, (i, queue) in enumerate(zip(chosen, selection.gold_routes(len(chosen), routes, seed=cfg.seed))):
        item = gold_items[i]
        tasks.append(DispatchTask(
            key=task_key(project.name, item["record_id"], gold_run=paths.run), record_id=item["record_id"],
            text=item["text"], route=queue, annotators=cfg.overlap_annotators if queue == "overlap" else 1,
            image_url=store.uri(item["image_key"]) if item.get("image_key") else None,
            image_sha256=item.get("sha256"), prediction=gold_preds[n] if gold_preds else None, gold=item["gold"],
            source_key=item["source_key"],
            selection="gold"))
    tasks = _interleave_gold(tasks, cfg.seed)
    maxp = [p.score for p in preds] if preds else []
    drift = {"low_confidence_share": round(sum(s < th.low_confidence for s in maxp) / len(maxp), 4) if maxp else None,
             "mean_max_probability": round(sum(maxp) / len(maxp), 4) if maxp else None,
             "threshold": th.low_confidence, "records": len(maxp)}
    result = {**base, "created_at": datetime.now(timezone.utc).isoformat(), "model_version": version,
              "records_considered": len(pool), "records_selected": len(picks),
              "by_strategy": dict(Counter(p.reason for p in picks)), "by_route": dict(Counter(t.route for t in tasks)),
              "gold_tasks": len(chosen), "gold_available": len(gold_items), "drift": drift,
              "predict_seconds": round(predict_seconds, 3), "tasks": [t.to_dict() for t in tasks]}
    store.put_json(paths.plan, result)
    if not tasks:
        run(store, project, run_id, platform=None)  # nothing to create: the run is finished here
    return result


def _interleave_gold(tasks: list[DispatchTask], seed: int) -> list[DispatchTask]:
    """Gold tasks spread through their queue at seeded positions, not appended at the end (annotators must not
    be able to tell them by position)."""
    import random

    rng = random.Random(seed)
    out = [t for t in tasks if t.gold is None]
    for t in (t for t in tasks if t.gold is not None):
        out.insert(rng.randrange(len(out) + 1), t)
    return out


def tasks_of(plan_: dict) -> list[DispatchTask]:
    def span(d):
        return Span(**d)

    def prediction(p):
        return Prediction(**{**p, "spans": tuple(map(span, p["spans"]))})

    out = []
    for d in plan_["tasks"]:
        pred = d.get("prediction")
        gold = d.get("gold")
        out.append(DispatchTask(**{
            **d,
            "prediction": None if pred is None else prediction(pred),
            "gold": None if gold is None else Gold(gold["label"], tuple(map(span, gold["spans"]))),
            "alternatives": tuple(map(prediction, d.get("alternatives") or ())),
        }))
    return out


def finished_manifests(store: S3Store, project: ProjectConfig) -> list[dict]:
    """Every finished dispatch run's manifest, oldest first (the agreement, Scale pull and export stages read
    model versions, drift and queues from them)."""
    prefix = Paths(project, "x").manifests_prefix
    found = [store.get_json(o["key"]) for o in store.list(prefix)
             if o["key"].endswith(".json") and not o["key"].endswith(".plan.json")]
    return sorted((m for m in found if m), key=lambda m: m["created_at"])


def unfinished_runs(store: S3Store, project: ProjectConfig, run_id: str) -> list[str]:
    """Earlier dispatch runs with a plan but no manifest (failed for good, or cleared): their tasks may be partly
    created, so they are finished (with their own ledgers) before a new run plans; otherwise the new run could
    select the same records again. (A plan without tasks gets its manifest at once, so it is never unfinished.)"""
    paths = Paths(project, run_id)
    keys = {o["key"] for o in store.list(paths.manifests_prefix)}
    out = []
    for key in sorted(keys):
        if key.endswith(".plan.json") and key[: -len(".plan.json")] + ".json" not in keys:
            run = key[len(paths.manifests_prefix): -len(".plan.json")]
            if run != paths.run:
                out.append(store.get_json(key)["run_id"])
    return out


# -- run ----------------------------------------------------------------------------------------------------


def run(store: S3Store, project: ProjectConfig, run_id: str, platform) -> dict:
    """Create the plan's tasks on the platform (`platform.dispatch(tasks, ledger, model_version)` returns
    created / already_present / per_queue / task_ids); write the dispatched ledger, the manifest and the trigger
    marks. A finished run returns its manifest and creates nothing."""
    paths = Paths(project, run_id)
    done = store.get_json(paths.manifest)
    if done is not None:  # finished; a crash may have come before the trigger marks: (re)write the missing ones
        _mark_triggers(store, paths, done.get("triggers") or [], done["manifest_uri"])
        return done
    the_plan = store.get_json(paths.plan)
    if the_plan is None:
        raise RuntimeError(f"no plan at {store.uri(paths.plan)}: run plan() first")
    tasks = tasks_of(the_plan)
    started = time.time()
    result = platform.dispatch(tasks, S3Ledger(store, paths.ledger), the_plan.get("model_version")) if tasks else {
        "created": 0, "already_present": 0, "per_queue": {}, "task_ids": {}}
    ids = result.get("task_ids", {})
    def platform_ids(t: DispatchTask):  # Scale makes an overlap task one task per annotator: key#1, key#2 ...
        if t.key in ids:
            return ids[t.key]
        copies = [ids[f"{t.key}#{i}"] for i in range(1, t.annotators + 1) if f"{t.key}#{i}" in ids]
        return copies or None

    rows = [{"key": t.key, "record_id": t.record_id, "queue": t.route, "task_id": platform_ids(t),
             "annotators": t.annotators, "selection": t.selection,
             **({"image": t.image_url, "sha256": t.image_sha256} if t.image_url else {}),
             **({"gold": {"label": t.gold.label, "spans": [s.__dict__ for s in t.gold.spans]}} if t.gold else {})}
            for t in tasks]
    if rows:
        store.put(paths.dispatched, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(),
                  "application/x-ndjson")
    manifest = {
        "project": project.name, "run_id": run_id, "created_at": datetime.now(timezone.utc).isoformat(),
        **{k: the_plan.get(k) for k in ("records_considered", "records_selected", "by_strategy", "by_route",
                                        "gold_tasks", "model_version", "platform", "drift", "triggers", "skip")},
        "tasks": len(tasks),
        "tasks_created": result["created"], "tasks_already_present": result["already_present"],
        "duplicates_removed": result.get("duplicates_removed", 0),
        "per_queue": result.get("per_queue", {}),
        "plan_uri": the_plan["plan_uri"], "manifest_uri": store.uri(paths.manifest),
        "dispatched_uri": store.uri(paths.dispatched) if rows else None,
        "seconds": round(time.time() - started, 3),
    }
    store.put_json(paths.manifest, manifest)
    _mark_triggers(store, paths, the_plan.get("triggers", []), manifest["manifest_uri"])
    return manifest


def _mark_triggers(store: S3Store, paths: Paths, triggers: list[str], manifest_uri: str) -> None:
    """Remember which dispatch run handled each triggering ingest manifest (the first mark stays)."""
    for uri in triggers:
        if store.get_json(paths.trigger(uri)) is None:
            store.put_json(paths.trigger(uri), {"dispatch_run": paths.run, "manifest_uri": manifest_uri})
