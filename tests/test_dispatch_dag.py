"""The real `<project>__dispatch` DAG with `dag.test()`: moto's S3, the stack's Label Studio, a run with no
logical date (as from the UI); then a repeat of the run's work creates nothing."""

from __future__ import annotations

import json

import pytest

from labelops.dispatch.label_studio import KEY_FIELD
from labelops.dispatch.pipeline import Paths
from test_ingest_pipeline import UTTERANCES, banking77_texts, ingest, jsonl, put

pytestmark = pytest.mark.stack


@pytest.fixture
def ls_connection(label_studio_endpoint, monkeypatch):
    url, token = label_studio_endpoint
    host, port = url.rsplit(":", 1)
    monkeypatch.setenv("AIRFLOW_CONN_LABEL_STUDIO_DEFAULT", json.dumps({
        "conn_type": "http", "host": host.split("://", 1)[1], "port": int(port), "schema": "http",
        "password": token}))


def test_dispatch_dag_creates_the_tasks_and_names_its_manifest_in_the_asset_event(
        s3, airflow_db, aws_connection, ls_connection, dagtest_project, label_studio):
    from labelops_dags import build_dispatch

    project = dagtest_project
    put(s3, project, "batch.jsonl", jsonl([{"text": t} for t in UTTERANCES + banking77_texts(40)]))
    staged = ingest(s3, project, "ingest1")
    dag = build_dispatch(project)
    run = dag.test(logical_date=None)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success" and states == dict.fromkeys(("plan_tasks", "create_tasks", "publish"), "success")
    paths = Paths(project, run.run_id)
    manifest = json.loads(s3.get_object(Bucket="labelops", Key=paths.manifest)["Body"].read())
    assert manifest["records_considered"] == staged["records_staged"] and manifest["tasks_created"] == 20
    ids = json.loads(s3.get_object(Bucket="labelops", Key=paths.label_studio)["Body"].read())
    keys = [t.data[KEY_FIELD] for pid in ids.values()
            for t in label_studio.tasks.list(project=pid, page_size=100, fields="task_only")]
    assert len(keys) == len(set(keys)) == 20

    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.asset.uri == project.asset_uri("dispatch")]
    assert len(events) == 1 and events[0].extra["manifest_uri"] == manifest["manifest_uri"]
    assert events[0].extra["tasks_created"] == 20
    # a second manual run dispatches the next 20 of the pool, never a record twice
    second = dag.test(logical_date=None)
    assert second.state == "success"
    keys = [t.data[KEY_FIELD] for pid in ids.values()
            for t in label_studio.tasks.list(project=pid, page_size=100, fields="task_only")]
    assert len(keys) == len(set(keys)) == 40


def test_dispatch_dag_on_scale_creates_each_task_once(s3, airflow_db, aws_connection, tmp_path, monkeypatch):
    """The same DAG, driven by a project whose platform is Scale: the real scaleapi client on the
    `scale_default` connection against the fake of Scale's v1 API."""
    import scaleapi

    from conftest import write_dagtest_project
    from labelops.dispatch import pipeline
    from labelops_dags import _platform, build_dispatch
    from labelops.storage import S3Store
    from test_scale_dispatch import Fake

    (tmp_path / "projects").mkdir()
    project = write_dagtest_project(tmp_path / "projects", monkeypatch, platform="scale",
                                    scale={"connection_id": "scale_default", "project": "dagtest-scale"})
    fake = Fake(tmp_path / "scale").start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SCALE_DEFAULT", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": fake.port, "schema": "http", "password": fake.key}))
        put(s3, project, "batch.jsonl", jsonl([{"text": t} for t in UTTERANCES + banking77_texts(40)]))
        ingest(s3, project, "ingest1")
        run = build_dispatch(project).test(logical_date=None)
        assert run.state == "success"
        store = S3Store(s3, "labelops")
        manifest = store.get_json(pipeline.Paths(project, run.run_id).manifest)
        copies = manifest["by_route"].get("overlap", 0) * (project.spec.dispatch.overlap_annotators - 1)
        assert manifest["platform"] == "scale" and manifest["tasks"] == 20 and copies > 0
        assert manifest["tasks_created"] == 20 + copies  # on Scale an overlap task is one task per annotator
        client = scaleapi.ScaleClient(fake.key, api_instance_url=fake.url)
        ids = [t.as_dict()["unique_id"] for q in manifest["per_queue"]
               for t in client.get_tasks(project_name=f"dagtest-scale-{q}")]
        assert len(ids) == len(set(ids)) == 20 + copies
        # the create step again (a cleared task): nothing new
        again = pipeline.run(store, project, run.run_id, _platform(project, store, run.run_id))
        assert again == manifest
    finally:
        fake.stop()
