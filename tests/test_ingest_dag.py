"""The real `<project>__ingest` DAG, run with `dag.test()` against moto's S3 server: a run stages the batch,
emits the Asset event naming the manifest, and a second run with nothing new skips cleanly."""

from __future__ import annotations

import json

from labelops.ingest.pipeline import safe_run_id
from test_ingest_pipeline import UTTERANCES, all_keys, jsonl, put, reconcile


def test_ingest_dag_stages_publishes_and_then_skips(s3, airflow_db, aws_connection, dagtest_project):
    from labelops_dags import build_ingest

    project = dagtest_project
    put(s3, project, "batch.jsonl", jsonl([{"text": t} for t in UTTERANCES]))
    dag = build_ingest(project)
    run = dag.test(logical_date=None)  # as a run triggered from the UI: no logical date
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states == {"plan_objects": "success", "ingest": "success", "publish": "success"}
    assert dag.dag_id == f"{project.name}__ingest"
    manifest_key = f"{project.spec.storage.project_prefix}manifests/ingest/{safe_run_id(run.run_id)}.json"
    manifest = json.loads(s3.get_object(Bucket="labelops", Key=manifest_key)["Body"].read())
    reconcile(manifest)
    assert manifest["records_staged"] == len(UTTERANCES)

    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        all_events = session.query(AssetEvent).all()
        events = [e for e in all_events if e.asset.uri == project.asset_uri("ingest")]
    assert len(events) == 1
    assert events[0].extra["manifest_uri"] == f"s3://labelops/{manifest_key}"
    assert events[0].extra["records_staged"] == len(UTTERANCES)

    before = all_keys(s3, project.spec.storage.project_prefix)
    second = dag.test(logical_date=None)
    assert second.run_id != run.run_id
    states = {ti.task_id: ti.state for ti in second.get_task_instances()}
    assert states == {"plan_objects": "skipped", "ingest": "skipped", "publish": "skipped"}
    new_keys = set(all_keys(s3, project.spec.storage.project_prefix)) - set(before)
    assert [k for k in new_keys if not k.endswith(".plan.json")] == []
