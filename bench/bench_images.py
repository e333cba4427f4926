"""Image projects: the image-manifest ingest and the image model, on the real UCI digits.

Rows (timed, ours against a baseline, alternating):
1. Ingest of the `digits` demo's image manifest (1,687 rows, 64x64 PNGs) on a moto server, the whole `run` step
   (read, decode, verify, pHash, contract, dedup, stage). Ours fetches the manifest's images 8 at a time
   (`ingest.pipeline.MANIFEST_WORKERS`); baseline: one at a time, otherwise the same code. Each run a fresh
   project prefix (an empty history).
2. The image model, fit on three quarters of the 1,797 scans and predicting the last quarter: ours
   (`ImageModel`: 8x8 area-averaged grey levels, multinomial logistic regression); baseline: scikit-learn's
   LogisticRegression on all 4,096 grey levels of the 64x64 PNG (standardised, default settings).

report(): both models' accuracy on that held-out quarter.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from harness import Benchmark, s3_client, start_moto

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "tools"))

_state: dict = {}


def _moto() -> str:
    if "endpoint" not in _state:
        import demo  # the demo's own upload: images under digits/images/, the manifest, gold

        endpoint, _ = start_moto()
        client = s3_client(endpoint)
        raw, _ = demo.digits_objects()
        for key, body in raw.items():
            client.put_object(Bucket="labelops", Key=key, Body=body)
        _state.update(endpoint=endpoint, client=client, runs=0,
                      manifest=next(k for k in raw if k.startswith("digits/raw/")))
    return _state["endpoint"]


def _ingest(workers: int) -> float:
    from labelops.config import ProjectConfig, Storage, load_project
    from labelops.ingest import pipeline
    from labelops.storage import S3Store

    _moto()
    client = _state["client"]
    _state["runs"] += 1
    name = f"bench{_state['runs']:03d}"
    base = load_project(REPO / "include" / "configs" / "projects" / "digits.yaml")
    storage = Storage(bucket="labelops", source_prefix=f"{name}/raw/", project_prefix=f"{name}/")
    project = ProjectConfig(spec=base.spec.model_copy(update={"storage": storage, "name": name}), labels=base.labels,
                            source_file=base.source_file, label_config_xml=base.label_config_xml)
    client.copy_object(Bucket="labelops", Key=f"{name}/raw/manifest.jsonl",
                       CopySource={"Bucket": "labelops", "Key": _state["manifest"]})
    store = S3Store(client, "labelops")
    pipeline.plan(store, project, "bench")
    old, pipeline.MANIFEST_WORKERS = pipeline.MANIFEST_WORKERS, workers
    try:
        t0 = time.perf_counter()
        manifest = pipeline.run(store, project, "bench")
        seconds = time.perf_counter() - t0
    finally:
        pipeline.MANIFEST_WORKERS = old
    _state["ingest"] = {k: manifest[k] for k in ("records_read", "records_staged", "duplicates_near")}
    return seconds


def _digits():
    if "digits" not in _state:
        import digits_data

        scans = digits_data.objects()
        cut = len(scans) * 3 // 4
        order = list(range(len(scans)))
        import random

        random.Random(0).shuffle(order)
        train, test = [scans[i] for i in order[:cut]], [scans[i] for i in order[cut:]]
        _state["digits"] = ([b for _, b, _ in train], [y for _, _, y in train], [b for _, b, _ in test],
                            [y for _, _, y in test])
    return _state["digits"]


def _ours_model() -> float:
    from labelops.models.image import ImageModel

    xtr, ytr, xte, yte = _digits()
    t0 = time.perf_counter()
    pred = [p.label for p in ImageModel().fit(xtr, ytr).predict(xte)]
    seconds = time.perf_counter() - t0
    _state["ours_acc"] = sum(p == y for p, y in zip(pred, yte)) / len(yte)
    return seconds


def _baseline_model() -> float:
    import numpy as np
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, yte = _digits()
    t0 = time.perf_counter()

    def pixels(images):
        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L"), float).ravel() / 255 for b in images])

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(pixels(xtr), ytr)
    pred = model.predict(pixels(xte))
    seconds = time.perf_counter() - t0
    _state["baseline_acc"] = float(np.mean(pred == np.asarray(yte)))
    return seconds


BENCHMARKS = [
    Benchmark("image manifest ingest, 1,687 UCI digits PNGs on moto", "one image fetched at a time",
              lambda: _ingest(1), lambda: _ingest(8), repeat=3, unit="s", scale=1.0),
    Benchmark("image model fit 1,347 + predict 450 UCI digits", "sklearn LogisticRegression on 4,096 pixels",
              _baseline_model, _ours_model, repeat=3, unit="s", scale=1.0),
]


def report() -> str:
    ing = _state.get("ingest") or {}
    return ("### Image projects (bench_images)\n\n"
            f"- manifest ingest: {ing.get('records_read')} rows read, {ing.get('records_staged')} staged, "
            f"{ing.get('duplicates_near')} near duplicates (pHash distance 2)\n"
            f"- held-out accuracy (450 scans): ours {_state.get('ours_acc', float('nan')):.3f}, baseline "
            f"{_state.get('baseline_acc', float('nan')):.3f}")
