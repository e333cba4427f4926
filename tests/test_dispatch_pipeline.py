"""The dispatch stage end to end on real servers: records staged by the real ingest (moto S3), a champion model
from the registry, selection and routing, gold tasks, and the tasks created on the real Label Studio."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest

from labelops.config import ProjectConfig, Storage, load_project
from labelops.dispatch import pipeline
from labelops.dispatch.label_studio import KEY_FIELD, LabelStudioPlatform
from labelops.models import registry
from labelops.models.intent import IntentModel
from labelops.storage import S3Store

from seed_model import banking77  # the one reader of data/banking77: {"text", "intent"} rows
from test_ingest_pipeline import PROJECTS, REPO, ingest, jsonl, put

pytestmark = pytest.mark.stack


def fresh_project(**dispatch) -> ProjectConfig:
    base = load_project(PROJECTS / "banking_support.yaml")
    name = f"d{uuid.uuid4().hex[:8]}_banking"
    storage = Storage(bucket="labelops", source_prefix=f"{name}/raw/", project_prefix=f"{name}/")
    spec = base.spec.model_copy(update={
        "name": name, "storage": storage,
        "dispatch": base.spec.dispatch.model_copy(update={"chunk_size": 40, **dispatch})})
    return ProjectConfig(spec=spec, labels=base.labels, source_file=base.source_file,
                         label_config_xml=base.label_config_xml)


def stage(s3, project: ProjectConfig, n: int, run: str = "ingest1", offset: int = 0) -> dict:
    rows = banking77("test")[offset: offset + n]
    put(s3, project, f"{run}.jsonl", jsonl({"text": r["text"]} for r in rows))
    return ingest(s3, project, run)


def put_gold(s3, project: ProjectConfig, n: int = 30) -> list[dict]:
    rows = [{"text": r["text"], "label": r["intent"]} for r in banking77("train")[-n:]]
    s3.put_object(Bucket="labelops", Key=f"{project.spec.storage.project_prefix}gold/gold.jsonl", Body=jsonl(rows))
    return rows


def seed_model(store: S3Store, project: ProjectConfig) -> str:
    rows = banking77("train")[:2500]
    model = IntentModel().fit([r["text"] for r in rows], [r["intent"] for r in rows])
    meta = registry.save(store, project.spec.storage.project_prefix, model, metrics={}, dataset_tag=None,
                         kind="intent")
    registry.promote(store, project.spec.storage.project_prefix, meta["version"], "test seed")
    return meta["version"]


def dispatch(store, project, label_studio, run_id: str, triggers=None) -> dict:
    planned = pipeline.plan(store, project, run_id, triggers=triggers)
    platform = LabelStudioPlatform(label_studio, project, store, pipeline.Paths(project, run_id))
    return pipeline.run(store, project, run_id, platform) if planned["tasks"] else planned


def ls_tasks(label_studio, pid: int) -> list:
    return list(label_studio.tasks.list(project=pid, page_size=1000, fields="all"))


def test_dispatch_with_a_champion_model_creates_routed_pre_annotated_tasks_once(s3, label_studio):
    project = fresh_project(batch_size=120, overlap_share=0.1, gold_share=0.1)
    store = S3Store(s3, "labelops")
    staged = stage(s3, project, 400)
    gold = put_gold(s3, project)
    version = seed_model(store, project)
    m = dispatch(store, project, label_studio, "dispatch1", triggers=[staged["manifest_uri"]])
    # the manifest: what was considered, selected, how, where it went, with which model
    assert set(pipeline.MANIFEST_KEYS) <= set(m)
    assert m["records_considered"] == staged["records_staged"] and m["records_selected"] == 120
    assert m["model_version"] == f"intent:{version}"
    assert sum(m["by_strategy"].values()) == 120 and m["by_strategy"].get("random", 0) == 18  # 15% at random
    assert m["gold_tasks"] == round(0.1 * 120 / 0.9) and m["tasks"] == 120 + m["gold_tasks"]
    assert m["tasks_created"] == m["tasks"] and m["tasks_already_present"] == 0
    assert 0 <= m["drift"]["low_confidence_share"] <= 1 and m["drift"]["records"] == m["records_considered"]
    plan = store.get_json(pipeline.Paths(project, "dispatch1").plan)
    by_route = Counter(t["route"] for t in plan["tasks"])
    assert by_route["overlap"] >= round(0.1 * 120) and set(by_route) <= {"verify", "expert", "overlap"}
    # every task is on Label Studio once, in its queue's project, with the model's prediction
    ids = store.get_json(pipeline.Paths(project, "dispatch1").label_studio)
    assert set(ids) == set(by_route)
    gold_texts = {g["text"] for g in gold}
    for queue, count in by_route.items():
        tasks = ls_tasks(label_studio, ids[queue])
        assert len(tasks) == count and len({t.data[KEY_FIELD] for t in tasks}) == count
        for t in tasks:
            assert "label" not in t.data and "gold" not in json.dumps(t.data)  # a gold answer is never sent
            preds = t.predictions
            assert len(preds) == 1 and preds[0].model_version == f"intent:{version}"
            assert preds[0].result[0]["value"]["choices"][0] in project.labels
        settings = label_studio.projects.get(id=ids[queue])
        assert settings.maximum_annotations == (2 if queue == "overlap" else 1)
        assert settings.model_version == f"intent:{version}"
    on_ls = [t for q in ids.values() for t in ls_tasks(label_studio, q)]
    assert sum(t.data["text"] in gold_texts for t in on_ls) == m["gold_tasks"]
    dispatched = [json.loads(x) for x in store.get(pipeline.Paths(project, "dispatch1").dispatched).splitlines()]
    assert len(dispatched) == m["tasks"] and all(isinstance(d["task_id"], int) for d in dispatched)
    assert sum(1 for d in dispatched if d.get("gold")) == m["gold_tasks"]
    # the same run again: nothing new; a repeated Asset event for the same ingest batch: skipped
    assert pipeline.run(store, project, "dispatch1", None) == m
    again = dispatch(store, project, label_studio, "dispatch2", triggers=[staged["manifest_uri"]])
    assert "skip" in again and again["tasks"] == []
    # a later batch: only records never dispatched are considered
    later = stage(s3, project, 50, "ingest2", offset=400)
    m3 = dispatch(store, project, label_studio, "dispatch3", triggers=[later["manifest_uri"]])
    assert m3["records_considered"] == staged["records_staged"] - 120 + later["records_staged"]
    keys = [t.data[KEY_FIELD] for q in store.get_json(pipeline.Paths(project, "x").label_studio).values()
            for t in ls_tasks(label_studio, q)]
    assert len(keys) == len(set(keys)) == m["tasks"] + m3["tasks"]


def test_cold_start_dispatch_has_no_predictions_and_goes_to_the_expert_and_overlap_queues(s3, label_studio):
    project = fresh_project(batch_size=40, gold_share=0.0, overlap_share=0.25)
    store = S3Store(s3, "labelops")
    stage(s3, project, 100)
    m = dispatch(store, project, label_studio, "cold")
    assert m["model_version"] is None and m["drift"]["low_confidence_share"] is None
    assert set(m["by_strategy"]) <= {"cold_start", "random"} and m["records_selected"] == 40
    assert m["by_route"] == {"expert": 30, "overlap": 10}
    ids = store.get_json(pipeline.Paths(project, "cold").label_studio)
    assert all(not t.predictions for q in ids.values() for t in ls_tasks(label_studio, q))


class Crash(BaseException):  # a killed worker runs no except-Exception handler
    pass


def test_a_dispatch_killed_between_chunks_is_finished_by_the_next_run_without_duplicates(s3, label_studio):
    project = fresh_project(batch_size=100, gold_share=0.0, overlap_share=0.0, routing=False)
    store = S3Store(s3, "labelops")
    staged = stage(s3, project, 150)["records_staged"]
    pipeline.plan(store, project, "first")
    platform = LabelStudioPlatform(label_studio, project, store, pipeline.Paths(project, "first"))
    real_post = None

    def crash_after_two_chunks(importer_self, pid, tasks):
        ids = real_post(importer_self, pid, tasks)
        crash_after_two_chunks.calls += 1
        if crash_after_two_chunks.calls == 2:
            raise Crash("worker killed after the POST, before the ledger")
        return ids

    crash_after_two_chunks.calls = 0
    from labelops.dispatch import label_studio as ls_mod

    real_post = ls_mod.Importer._post
    ls_mod.Importer._post = crash_after_two_chunks
    try:
        with pytest.raises(Crash):
            pipeline.run(store, project, "first", platform)
    finally:
        ls_mod.Importer._post = real_post
    assert store.get_json(pipeline.Paths(project, "first").manifest) is None
    # the next run finishes the unfinished one first (its own ledger), then plans from what is left
    assert pipeline.unfinished_runs(store, project, "second") == ["first"]
    first = pipeline.run(store, project, "first", platform)
    assert (first["tasks_created"], first["tasks_already_present"]) == (20, 80)
    second = dispatch(store, project, label_studio, "second")
    assert second["records_considered"] == staged - 100
    pid = store.get_json(pipeline.Paths(project, "x").label_studio)["main"]
    keys = [t.data[KEY_FIELD] for t in ls_tasks(label_studio, pid)]
    assert len(keys) == len(set(keys)) == staged


CHILD = """
import sys
from pathlib import Path
sys.path[:0] = [{include!r}]
import boto3
from label_studio_sdk.client import LabelStudio
from labelops.config import load_project
from labelops.dispatch import pipeline
from labelops.dispatch.label_studio import LabelStudioPlatform
from labelops.storage import S3Store
project = load_project({path!r}, config_root=Path({configs!r}))
store = S3Store(boto3.client("s3", endpoint_url={endpoint!r}, region_name="us-east-1", aws_access_key_id="test",
                             aws_secret_access_key="test"), "labelops")
client = LabelStudio(base_url={url!r}, api_key=sys.stdin.readline().strip())
pipeline.run(store, project, "killed", LabelStudioPlatform(client, project, store, pipeline.Paths(project, "killed")))
"""


def test_a_worker_killed_with_sigkill_mid_dispatch_then_retried_leaves_one_task_per_key(
        s3, label_studio, label_studio_endpoint, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    project = fresh_project(batch_size=2500, gold_share=0.0, overlap_share=0.0, routing=False, chunk_size=100)
    store = S3Store(s3, "labelops")
    staged = stage(s3, project, 2600)["records_staged"]
    assert staged >= 2500
    pipeline.plan(store, project, "killed")
    path = tmp_path / f"{project.name}.yaml"
    path.write_text(yaml.safe_dump(project.spec.model_dump(mode="json")))
    url, token = label_studio_endpoint
    code = CHILD.format(include=str(REPO / "include"), path=str(path), configs=str(REPO / "include" / "configs"),
                        endpoint=s3.meta.endpoint_url, url=url)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdin.write(token + "\n")
    child.stdin.close()
    ledger = f"{project.spec.storage.project_prefix}state/dispatch/run=killed/ledger/main/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        done = [k for k in S3Store(s3, "labelops").list(ledger) if k["key"].endswith(".done.json")]
        if len(done) >= 4:
            break
        time.sleep(0.02)
    assert child.poll() is None, "the child finished before it could be killed: " + child.stderr.read()[-2000:]
    os.kill(child.pid, signal.SIGKILL)  # in the middle of the import: maybe mid-POST, maybe between chunks
    child.wait()
    assert store.get_json(pipeline.Paths(project, "killed").manifest) is None
    m = pipeline.run(store, project, "killed",
                     LabelStudioPlatform(label_studio, project, store, pipeline.Paths(project, "killed")))
    assert m["tasks"] == 2500 and m["tasks_created"] + m["tasks_already_present"] == 2500
    assert m["tasks_already_present"] >= 400  # what the killed worker recorded was not created again
    pid = store.get_json(pipeline.Paths(project, "x").label_studio)["main"]
    keys = [t.data[KEY_FIELD] for t in label_studio.tasks.list(project=pid, page_size=1000, fields="task_only")]
    assert len(keys) == len(set(keys)) == 2500


def test_an_empty_pool_plans_no_task_and_says_so(s3):
    project = fresh_project()
    store = S3Store(s3, "labelops")
    put_gold(s3, project, 5)
    planned = pipeline.plan(store, project, "empty", models={})
    assert planned["tasks"] == [] and planned["records_considered"] == 0 and planned["gold_tasks"] == 0
    manifest = pipeline.run(store, project, "empty", platform=None)  # nothing to create: the platform is not used
    assert (manifest["tasks"], manifest["tasks_created"]) == (0, 0) and manifest["dispatched_uri"] is None
