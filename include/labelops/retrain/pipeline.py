"""The retrain stage as three steps the `<project>__retrain` DAG's operators call: `decide`, `train`, `promote`.
No Airflow.

decide: retrain when the newest dataset version holds at least `thresholds.retrain_min_new_labels` more items
  than the champion was trained on and the period's agreement passes the quality gate
  (`thresholds.min_cohen_kappa`), or when a person asks with a reason (a manual run); otherwise say why not.
train: the challengers (the intent model; for entity projects also the entity model; for image projects the image
  model, fed the images the version names by s3:// URI) trained on the dataset
  version's `train` split (checked out by its tag with DVC), evaluated on its fixed `test` split, saved in the
  registry (not promoted).
promote: the champion evaluated on the same test split; a challenger is promoted only if it beats the champion
  on `retrain.metric` without falling on a `retrain.guarded` metric by more than `retrain.tolerance`; the
  comparison is kept next to the challenger in the registry (`models/<version>/comparison.json`) and in the
  manifest. The next dispatch loads the promoted champion: the loop is closed.

Each step keeps its result in `<p>state/retrain/run=<run>/<step>.json` and returns it when run again.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from labelops.agreement.pipeline import now
from labelops.config import ProjectConfig
from labelops.ingest.pipeline import safe_run_id
from labelops.storage import S3Store


class Paths:
    def __init__(self, project: ProjectConfig, run_id: str) -> None:
        self.base = project.spec.storage.project_prefix
        self.run = safe_run_id(run_id)

    def step(self, name: str) -> str:
        return f"{self.base}state/retrain/run={self.run}/{name}.json"

    manifest = property(lambda self: f"{self.base}manifests/retrain/{self.run}.json")


def _once(store: S3Store, key: str, fn):
    done = store.get_json(key)
    if done is not None:
        return done
    result = fn()
    store.put_json(key, result)
    return result


# -- decide -------------------------------------------------------------------------------------------------------


def latest_agreement(store: S3Store, project: ProjectConfig) -> dict | None:
    prefix = f"{project.spec.storage.project_prefix}manifests/agreement/"
    newest = None
    for obj in store.list(prefix):
        m = store.get_json(obj["key"])
        if m and m.get("annotations_in_window") and (newest is None or m["created_at"] > newest["created_at"]):
            newest = m
    return newest


def decide(store: S3Store, project: ProjectConfig, run_id: str, *, dataset_tag: str | None = None,
           manual_reason: str | None = None) -> dict:
    """Whether this run retrains, and why (see the module doc)."""
    from labelops.export.pipeline import Paths as ExportPaths
    from labelops.models import registry

    def run() -> dict:
        latest = store.get_json(ExportPaths(project, run_id).latest)
        if latest is None:
            return {"retrain": False, "why": "no dataset version exists yet (the export stage makes them)",
                    "dataset_tag": None}
        tag = dataset_tag or latest["tag"]
        items = len(latest["labels"])
        champion = registry.champion(store, project.spec.storage.project_prefix, project.model_kinds()[0])
        # the items of the dataset version the champion was trained on; a champion not trained on a version of
        # this dataset (the seed model) has seen none of its labels
        trained_on = int((champion or {}).get("metrics", {}).get("dataset_items") or 0) \
            if champion and champion.get("dataset_tag") else 0
        new = items - trained_on
        th = project.spec.thresholds
        agreement = latest_agreement(store, project)
        kappa = (agreement or {}).get("cohen_kappa_mean")
        base = {"dataset_tag": tag, "dataset_items": items, "champion": champion["version"] if champion else None,
                "champion_trained_on": trained_on, "new_items": new, "cohen_kappa_mean": kappa,
                "manual_reason": manual_reason, "decided_at": now()}
        if manual_reason:
            return {**base, "retrain": True, "why": f"manual run: {manual_reason}"}
        if new < th.retrain_min_new_labels:
            return {**base, "retrain": False, "why": f"{new} new labelled items since the champion's training set "
                                                     f"(needs {th.retrain_min_new_labels})"}
        if kappa is not None and kappa < th.min_cohen_kappa:
            return {**base, "retrain": False, "why": f"the period's mean kappa {kappa:.2f} is below the quality "
                                                     f"gate {th.min_cohen_kappa:.2f}: labels not trusted yet"}
        return {**base, "retrain": True, "why": f"{new} new labelled items since the champion's training set"
                + ("" if kappa is not None else " (no agreement figure for the period: gate not applied)")}

    return _once(store, Paths(project, run_id).step("decision"), run)


# -- the dataset ----------------------------------------------------------------------------------------------------


def load_dataset(repo, tag: str) -> list[dict]:
    """The items of a dataset version (checked out by its tag, DVC-pulled)."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        folder = repo.checkout(tag, Path(tmp) / "ds")
        return pq.read_table(io.BytesIO((folder / "data" / "dataset.parquet").read_bytes())).to_pylist()


def split(items: list[dict], name: str) -> list[dict]:
    return [i for i in items if i["split"] == name]


def image_bytes(store: S3Store, items: list[dict]) -> list[bytes]:
    """The bytes of the images the items name by s3:// URI (``image``; in the project's bucket), fetched in
    parallel, in item order. An image that is gone is an error naming it (a dataset version must stay
    trainable: its images are kept)."""
    from labelops.storage import split_s3_uri

    keys = []
    for item in items:
        bucket, key = split_s3_uri(item["image"])
        if bucket != store.bucket:
            raise RuntimeError(f"the dataset names {item['image']}, outside the project's bucket {store.bucket}")
        keys.append(key)
    bodies = store.get_many(keys, missing_ok=True)
    gone = [store.uri(k) for k, b in zip(keys, bodies) if b is None]
    if gone:
        raise RuntimeError(f"the dataset names {len(gone)} images that do not exist, e.g. {gone[0]}")
    return bodies


def _inputs(kind: str, rows: list[dict], store: S3Store | None) -> list:
    if kind == "image":
        if store is None:
            raise ValueError("an image model is evaluated on images: pass the store")
        return image_bytes(store, rows)
    return [i["text"] for i in rows]


def evaluate(model, kind: str, test: list[dict], store: S3Store | None = None) -> dict:
    from labelops.models.evaluate import entity_metrics, intent_metrics, span_calibration

    texts = [i.get("text") for i in test]
    if kind in ("intent", "image"):
        rows = [i for i in test if i.get("label") is not None]
        classes, probs = model.predict_proba(_inputs(kind, rows, store))
        pred = [classes[j] for j in probs.argmax(axis=1)]
        return intent_metrics([i["label"] for i in rows], pred, probs=probs, classes=classes)
    spans = model.predict(texts)
    truth = [[{"start": e["start"], "end": e["end"], "label": e["label"]} for e in (i.get("entities") or [])]
             for i in test]
    pred = [[{"start": s.start, "end": s.end, "label": s.label, "score": s.score} for s in sp] for sp in spans]
    return {**entity_metrics(truth, pred), "calibration": span_calibration(truth, pred)}


def headline(metrics: dict, kind: str) -> dict:
    """The flat figures the comparison reads."""
    if kind in ("intent", "image"):
        cal = metrics.get("calibration") or {}
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "ece": cal.get("ece"),
                "brier": cal.get("brier")}
    return {"entity_f1": metrics["micro"]["f1"], "entity_precision": metrics["micro"]["precision"],
            "entity_recall": metrics["micro"]["recall"], "entity_ece": (metrics.get("calibration") or {}).get("ece")}


# -- train ----------------------------------------------------------------------------------------------------------


def train(store: S3Store, project: ProjectConfig, run_id: str, repo) -> dict:
    """Train, evaluate and save the challengers of this run (not promoted): {kind: meta summary}."""
    from labelops.models import registry
    from labelops.models.crf import CrfEntityModel
    from labelops.models.image import ImageModel
    from labelops.models.intent import IntentModel

    paths = Paths(project, run_id)
    decision = store.get_json(paths.step("decision"))
    if not decision or not decision["retrain"]:
        raise RuntimeError(f"run {run_id} decided not to retrain ({(decision or {}).get('why')}): nothing to train")

    def run() -> dict:
        items = load_dataset(repo, decision["dataset_tag"])
        train_items, test = split(items, "train"), split(items, "test")
        out = {"dataset_tag": decision["dataset_tag"], "n_train": len(train_items), "n_test": len(test)}
        for kind in project.model_kinds():
            if kind in ("intent", "image"):
                rows = [i for i in train_items if i.get("label") is not None]
                if len({i["label"] for i in rows}) < 2:
                    out["skipped"] = {**out.get("skipped", {}), kind: "fewer than two classes in the train split"}
                    continue
                model = (ImageModel() if kind == "image" else IntentModel()).fit(
                    _inputs(kind, rows, store), [i["label"] for i in rows])
            else:
                if not any(i.get("entities") for i in train_items):
                    out["skipped"] = {**out.get("skipped", {}), kind: "no entity span in the train split"}
                    continue
                model = CrfEntityModel().fit([i["text"] for i in train_items],
                                             [i.get("entities") or [] for i in train_items])
            metrics = evaluate(model, kind, test, store)
            meta = registry.save(store, project.spec.storage.project_prefix, model, kind=kind,
                                 dataset_tag=decision["dataset_tag"],
                                 metrics={**headline(metrics, kind), "test": metrics, "n_test": len(test),
                                          "dataset_items": len(items)})
            out[kind] = {"version": meta["version"], "metrics": headline(metrics, kind)}
        return out

    return _once(store, paths.step("trained"), run)


# -- champion / challenger ------------------------------------------------------------------------------------------


def promote(store: S3Store, project: ProjectConfig, run_id: str, repo) -> dict:
    """Champion against challenger on the same test split, per kind; promote the better one. The manifest."""
    from labelops.models import registry
    from labelops.models.evaluate import compare

    paths = Paths(project, run_id)
    trained = store.get_json(paths.step("trained"))
    if trained is None:
        raise RuntimeError(f"run {run_id} has no trained challenger: train first")
    prefix = project.spec.storage.project_prefix
    rt = project.spec.retrain

    def run() -> dict:
        test = None
        results = {}
        for kind in [k for k in project.model_kinds() if k in trained]:
            challenger = trained[kind]
            champion_meta = registry.champion(store, prefix, kind)
            champion_metrics = None
            if champion_meta is not None:
                if test is None:
                    test = split(load_dataset(repo, trained["dataset_tag"]), "test")
                champion_metrics = headline(evaluate(registry.load(store, prefix, champion_meta["version"]), kind,
                                                     test, store), kind)
            metric = rt.metric if kind != "entities" else rt.entity_metric
            guarded = list(rt.guarded if kind != "entities" else rt.entity_guarded)
            verdict = compare(champion_metrics, challenger["metrics"], metric, guarded, rt.tolerance)
            comparison = {"kind": kind, "challenger": challenger["version"],
                          "champion": champion_meta["version"] if champion_meta else None,
                          "dataset_tag": trained["dataset_tag"], "metric": metric, "guarded": guarded,
                          "tolerance": rt.tolerance, "champion_metrics": champion_metrics,
                          "challenger_metrics": challenger["metrics"], **verdict, "run_id": run_id,
                          "compared_at": now()}
            base = registry.meta_key(prefix, challenger["version"]).rsplit("/", 1)[0]
            store.put_json(f"{base}/comparison.json", comparison)  # kept in the registry, next to the challenger
            if verdict["promote"]:
                registry.promote(store, prefix, challenger["version"],
                                 f"run {run_id}: {verdict['reason']} (dataset {trained['dataset_tag']})")
            results[kind] = comparison
        return results

    results = _once(store, paths.step("promoted"), run)
    manifest = {"project": project.name, "run_id": run_id, "created_at": now(),
                "dataset_tag": trained["dataset_tag"], "n_train": trained["n_train"], "n_test": trained["n_test"],
                "promoted": {k: v["challenger"] for k, v in results.items() if v["promote"]},
                "comparisons": results, "manifest_uri": store.uri(paths.manifest)}
    store.put_json(paths.manifest, manifest)
    return manifest
