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
