"""The real `<project>__retrain` DAG with `dag.test()`: a dataset version made by the export stage (real git, DVC,
local S3) from real Banking77 labels; the first retrain promotes its challenger (no champion yet) and the next
dispatch pre-annotates with it; a version without enough new labels skips, saying why; a challenger trained on
corrupted labels loses to the champion and is not promoted; the comparison is kept in the registry."""

from __future__ import annotations

import random

import pytest

from conftest import write_dagtest_project
from labelops.agreement import pipeline as agreement
from labelops.dispatch import pipeline as dispatch
from labelops.export import pipeline as export
from labelops.ingest.dedup import normalise_text, record_id
from labelops.models import registry
from labelops.retrain import pipeline as retrain
from labelops.storage import S3Store
from test_export_dag import Rows, datasets_repo, row  # noqa: F401  (fixture)

pytestmark = pytest.mark.stack


def banking(n: int, seed: int = 0) -> list[dict]:
    from seed_model import banking77

    rows = banking77("train")
    return random.Random(seed).sample(rows, n)


def version_of(store, project, s3_rows, night: str, repo, label_of) -> dict:
    """Annotations for `s3_rows` (two annotators agreeing on `label_of(row)`) landed as night `night`, then
    exported as a dataset version."""
    opts = project.spec.ingest.normalisation.model_dump()
    rows = []
    stamp = f"2026-11-2{night[-1]}T10:00:00+00:00"  # a later night answers later: its answers are the latest
    for i, r in enumerate(s3_rows):
        text = normalise_text(r["text"], **opts)
        for j, who in enumerate(("ann", "bob")):
            rows.append(row(record_id(text), text, f"{who}@sim.labelops.local", label_of(r, record_id(text)),
                            2 * i + j + 1, 0) | {"annotation_id": f"{night}-{2 * i + j}", "created_at": stamp,
                                                 "updated_at": stamp})
    agreement.pull(store, project, night, Rows(rows))
    export.prepare(store, project, night)
    return export.version(store, project, night, repo)


def test_retrain_promotes_a_better_challenger_only_and_dispatch_uses_it(s3, airflow_db, aws_connection, datasets_repo,
                                                                       label_studio, tmp_path,
                                                                       monkeypatch):  # noqa: F811
    from hooks.dvc import DvcHook
    from labelops_dags import build_retrain

    (tmp_path / "projects").mkdir()
    project = write_dagtest_project(tmp_path / "projects", monkeypatch, export={"weighting": "none"},
                                    thresholds={"retrain_min_new_labels": 300})
    store = S3Store(s3, "labelops")
    prefix = project.spec.storage.project_prefix
    repo = DvcHook().dataset_repo(project, workdir=tmp_path / "work")
    data = banking(1200)
    v1 = version_of(store, project, data[:900], "night1", repo, lambda r, rid: r["intent"])
    assert v1["created"] and v1["items"] == 900

    dag = build_retrain(project)
    run = dag.test(logical_date=None)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success" and states == dict.fromkeys(("decide", "train", "champion_challenger", "publish"),
                                                              "success"), states
    manifest = store.get_json(retrain.Paths(project, run.run_id).manifest)
    first = manifest["promoted"]["intent"]
    assert manifest["dataset_tag"] == v1["tag"] and manifest["comparisons"]["intent"]["champion"] is None
    champion = registry.champion(store, prefix, "intent")
    assert champion["version"] == first and champion["dataset_tag"] == v1["tag"]
    assert champion["metrics"]["accuracy"] > 0.5  # 77 classes, ~700 training items
    comparison = store.get_json(registry.meta_key(prefix, first).rsplit("/", 1)[0] + "/comparison.json")
    assert comparison["promote"] and comparison["dataset_tag"] == v1["tag"]
    # the loop is closed: the next dispatch pre-annotates with the promoted champion
    assert dispatch.model_version(dispatch.load_models(store, project)) == f"intent:{first}"
    # and the promotion's Asset event (it schedules that dispatch) names the retrain manifest
    events = retrain_events(project)
    assert len(events) == 1 and events[0]["promoted"] == {"intent": first}
    assert events[0]["manifest_uri"] == manifest["manifest_uri"]
    # the dispatch that event schedules chooses from the waiting pool with the new champion, once: a repeated
    # event (a cleared publish) dispatches nothing
    from test_dispatch_pipeline import dispatch as dispatch_on, stage

    assert stage(s3, project, 300)["records_staged"] > 250  # a few of the 300 are near duplicates
    planned = dispatch.plan(store, project, "after_promotion", triggers=[events[0]["manifest_uri"]])
    assert planned["model_version"] == f"intent:{first}" and planned["records_selected"] > 0
    assert {t["prediction"]["model_version"] for t in planned["tasks"]} == {f"intent:{first}"}
    made = dispatch_on(store, project, label_studio, "after_promotion", triggers=[events[0]["manifest_uri"]])
    assert made["tasks_created"] == len(planned["tasks"]) and made["model_version"] == f"intent:{first}"
    again = dispatch_on(store, project, label_studio, "same_event_again", triggers=[events[0]["manifest_uri"]])
    assert again["tasks"] == [] and "dispatched already" in again["skip"]

    # the same run again (cleared tasks): nothing trained or promoted twice
    n_versions = len(registry.versions(store, prefix))
    assert retrain.promote(store, project, run.run_id, repo)["promoted"] == manifest["promoted"]
    assert len(registry.versions(store, prefix)) == n_versions

    # not enough new labels: the next run skips, saying why
    skipped = dag.test(logical_date=None)
    states = {ti.task_id: ti.state for ti in skipped.get_task_instances()}
    assert states == {"decide": "skipped", "train": "skipped", "champion_challenger": "skipped",
                      "publish": "skipped"}, states
    why = store.get_json(retrain.Paths(project, skipped.run_id).step("decision"))["why"]
    assert "new labelled items" in why and "needs 300" in why

    # a version whose training labels are corrupted (the test split's are right), retrained by hand: the
    # challenger loses on the same test split and is not promoted
    from labelops.export.consolidate import split_of

    labels = sorted(project.labels)
    ex = project.spec.export

    def corrupted(r, rid):
        if split_of(rid, ex.seed, ex.split) != "train":
            return r["intent"]
        return random.Random(rid).choice(labels)

    v2 = version_of(store, project, data, "night2", repo, corrupted)
    assert v2["created"] and v2["tag"].endswith("/v2")
    bad = dag.test(logical_date=None, run_conf={"reason": "test a corrupted version"})
    assert bad.state == "success"
    m = store.get_json(retrain.Paths(project, bad.run_id).manifest)
    c = m["comparisons"]["intent"]
    assert m["promoted"] == {} and not c["promote"] and c["champion"] == first
    assert c["challenger_metrics"]["macro_f1"] < c["champion_metrics"]["macro_f1"]
    assert registry.champion(store, prefix, "intent")["version"] == first
    # no promotion, no Asset event: no dispatch is scheduled for it
    assert {t.task_id: t.state for t in bad.get_task_instances()}["publish"] == "skipped"
    assert len(retrain_events(project)) == 1


def retrain_events(project) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return [e.extra for e in session.query(AssetEvent).order_by(AssetEvent.id).all()
                if e.asset.uri == project.asset_uri("retrain")]
