"""The real `<project>__export` DAG with `dag.test()`: annotations landed by the agreement stage's pull (the rows a
Label Studio pull yields, fed through `agreement.pipeline.pull`), the real git (a bare repository as the remote),
the real DVC (its own venv) and the local S3 as DVC remote. A version is created, pulled back byte for byte from
a fresh clone by its tag, its card's figures match the data; a re-run creates nothing; a night without new labels
creates no version and no Asset event."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import write_dagtest_project
from labelops.agreement import pipeline as agreement
from labelops.export import pipeline as export
from labelops.storage import S3Store
from test_agreement_dag import banking_rows
from test_ingest_pipeline import ingest, jsonl, put

pytestmark = pytest.mark.stack


class Rows:
    """A source of annotation rows for `agreement.pipeline.pull` (as a platform pull yields them)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.watermark = rows, max(r["updated_at"] for r in rows) if rows else None

    def annotations(self, since):
        return iter([r for r in self.rows if since is None or r["updated_at"] > since])


def row(record_id: str, text: str, annotator: str, label: str, n: int, minute: int) -> dict:
    return {"platform": "label_studio", "queue": "overlap", "project_id": "7", "task_id": str(1000 + n),
            "task_key": f"p:{record_id}", "record_id": record_id, "annotation_id": str(n), "annotator": annotator,
            "label": label, "spans": "[]", "created_at": f"2026-11-20T10:{minute:02d}:00+00:00",
            "updated_at": f"2026-11-20T10:{minute:02d}:00+00:00", "lead_time_s": 5.0, "cancelled": False,
            "text": text}


@pytest.fixture
def datasets_repo(tmp_path, monkeypatch):
    bare = tmp_path / "datasets.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(bare)], check=True)
    monkeypatch.setenv("LABELOPS_DATASETS_REPO", str(bare))
    return bare


def test_export_dag_versions_the_consolidated_labels_once(s3, airflow_db, aws_connection, datasets_repo, tmp_path,
                                                          monkeypatch):
    from hooks.dvc import DvcHook
    from labelops_dags import build_export

    from labelops.ingest.dedup import normalise_text, record_id

    (tmp_path / "projects").mkdir()
    project = write_dagtest_project(tmp_path / "projects", monkeypatch, export={"weighting": "none"})
    store = S3Store(s3, "labelops")
    source = banking_rows(12)
    put(s3, project, "batch.jsonl", jsonl([{"text": r["text"]} for r in source]))
    ingest(s3, project, "ingest1")
    opts = project.spec.ingest.normalisation.model_dump()
    rows, n = [], 0
    for i, r in enumerate(source):
        rid = record_id(normalise_text(r["text"], **opts))
        answers = {"ann": r["intent"], "bob": r["intent"]}
        if i == 0:
            answers = {"ann": r["intent"], "bob": "card_linking" if r["intent"] != "card_linking" else "top_up"}
        for who, label in answers.items():
            n += 1
            rows.append(row(rid, normalise_text(r["text"], **opts), f"{who}@sim.labelops.local", label, n, i))
    agreement.pull(store, project, "night1", Rows(rows))

    dag = build_export(project)
    run = dag.test(logical_date=None)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success" and states == dict.fromkeys(("consolidate", "create_version", "publish"),
                                                              "success"), states
    manifest = store.get_json(export.Paths(project, run.run_id).manifest)
    assert manifest["created"] and manifest["tag"] == f"{project.name}/v1"
    assert manifest["items"] == 11 and manifest["held_back"] == 1  # the tie of item 0 is held back, not guessed
    assert manifest["by_decision"] == {"unanimous": 11}

    # pulled back by its tag from a fresh clone, byte for byte the staged files
    repo = DvcHook().dataset_repo(project, workdir=tmp_path / "work")
    got = repo.checkout(manifest["tag"], tmp_path / "checkout")
    data = got / "data"
    for name in ("dataset.jsonl", "dataset.parquet", "annotations.parquet", "held_back.jsonl"):
        staged = s3.get_object(Bucket="labelops", Key=export.Paths(project, run.run_id).files + name)["Body"].read()
        assert (data / name).read_bytes() == staged, name
    items = [json.loads(line) for line in (data / "dataset.jsonl").read_text().splitlines()]
    assert len(items) == 11 and {i["split"] for i in items} <= {"train", "validation", "test"}
    truth = {record_id(normalise_text(r["text"], **opts)): r["intent"] for r in source}
    assert all(i["label"] == truth[i["item_id"]] for i in items)
    card = (got / "card.md").read_text()
    assert "| items | 11 |" in card and "| held back: tie | 1 |" in card and "| annotations | 24 |" in card
    assert project.name.replace("_", "\\_") in card and f"/v1" in card

    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.asset.uri == project.asset_uri("export")]
    assert len(events) == 1 and events[0].extra["tag"] == manifest["tag"]

    # the same run again (a cleared task): nothing new
    again = export.version(store, project, run.run_id, repo)
    assert not again["created"] and again["tag"] == manifest["tag"]
    # a crash between the atomic push and the state write: the retry finds its tag and records it as the latest
    s3.delete_object(Bucket="labelops", Key=export.Paths(project, run.run_id).latest)
    export.version(store, project, run.run_id, repo)
    assert store.get_json(export.Paths(project, run.run_id).latest)["tag"] == manifest["tag"]
    # the next run, no new label: no version, no Asset event
    second = dag.test(logical_date=None)
    states = {ti.task_id: ti.state for ti in second.get_task_instances()}
    assert states["create_version"] == "success" and states["publish"] == "skipped", states
    m2 = store.get_json(export.Paths(project, second.run_id).manifest)
    assert not m2["created"] and "no change" in m2["reason"]
    tags = subprocess.run(["git", "--git-dir", str(datasets_repo), "tag", "--list"], capture_output=True, text=True,
                          check=True).stdout.split()
    assert tags == [f"{project.name}/v1"]
