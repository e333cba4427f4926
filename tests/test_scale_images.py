"""An image project on Scale from ingest to export: real UCI digit scans listed by an image manifest on moto,
dispatched to the fake Scale (tools/fake_scale.py, through the real `scaleapi` client) as Categorization tasks
with presigned attachments, answered there, pulled back by the agreement stage and exported: the dataset names
each image by its s3:// URI and content hash, never by the presigned URL Scale was given."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys

import pytest

from labelops.agreement import pipeline as agreement
from labelops.agreement.scale_pull import ScaleSource
from labelops.dispatch import pipeline as dispatch
from labelops.dispatch.scale import ScalePlatform
from labelops.export import pipeline as export
from labelops.storage import S3Store
from test_ingest_pipeline import REPO, ingest, jsonl
from test_scale_dispatch import Fake, scale_image_project, tasks_in
from test_scale_pull import complete

sys.path.insert(0, str(REPO / "tools"))
import digits_data  # noqa: E402


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    f = Fake(tmp_path_factory.mktemp("fake-scale-images") / "state").start()
    yield f
    f.stop()


def test_an_image_project_on_scale_goes_from_manifest_to_dataset_version_files(fake, s3):
    project = scale_image_project("presign")
    project = dataclasses.replace(project, spec=project.spec.model_copy(update={
        "dispatch": project.spec.dispatch.model_copy(update={"batch_size": 12, "overlap_share": 0.25})}))
    scans = digits_data.objects(range(12))
    images = f"{project.name}/images/"
    for fname, body, _ in scans:
        s3.put_object(Bucket="labelops", Key=images + fname, Body=body)
    s3.put_object(Bucket="labelops", Key=f"{project.spec.storage.source_prefix}manifest.jsonl",
                  Body=jsonl({"key": images + f, "source": f"UCI digits #{i}"} for i, (f, _, _) in enumerate(scans)))
    assert ingest(s3, project, "ingest1")["records_staged"] == 12
    store = S3Store(s3, "labelops")
    client = fake.client()
    dispatch.plan(store, project, "dispatch1")
    made = dispatch.run(store, project, "dispatch1", ScalePlatform(client, project, "dispatch1", s3_client=s3))
    assert made["tasks_created"] > 12 and made["gold_tasks"] == 0  # 12 scans, some of them as overlap copies
    truth = digits_data.truth()
    docs = [d for q in made["per_queue"] for d in tasks_in(client, f"{project.spec.scale.project}-{q}")]
    assert len(docs) == made["tasks_created"]  # overlap tasks are one Scale task per annotator
    for doc in docs:
        assert doc["params"]["attachment"].startswith("http") and "Signature" in doc["params"]["attachment"]
        complete(fake, doc["task_id"], {"category": truth[doc["metadata"]["record_id"]]["label"]})
    pulled = agreement.pull(store, project, "night1", ScaleSource(client, project, store))
    assert pulled["rows"] == len(docs)
    agreement.compute(store, project, "night1")
    prepared = export.prepare(store, project, "night1")
    assert (prepared["items"], prepared["held_back"]) == (12, 0)
    files = export.Paths(project, "night1").files
    items = [json.loads(line) for line in store.get(files + "dataset.jsonl").splitlines()]
    by_key = {images + f: (hashlib.sha256(b).hexdigest(), label) for f, b, label in scans}
    for item in items:
        sha, label = by_key[item["image_key"]]
        assert item["image"] == f"s3://labelops/{item['image_key']}" and item["sha256"] == sha
        assert item["label"] == label and item["source_key"].endswith("manifest.jsonl")
    assert sorted(store.get(files + "classification.csv").decode().splitlines()) == sorted(
        f"{'TRAINING' if i['split'] == 'train' else 'VALIDATION' if i['split'] == 'validation' else 'TEST'},"
        f"{i['image']},{i['label']}" for i in items)
