"""The real `<project>__agreement` DAG with `dag.test()` (runs with no logical date, as from the UI): moto's S3, the
stack's Label Studio with simulated annotators of known noise, the SMTP catcher. Checks the pull, the figures,
the report (escaped), the alert email as received, the adjudication tasks, and that the same night again sends
nothing new; and the failure email of a failed stage run."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest

from conftest import free_port, mailcatcher, smtp_connection, write_dagtest_project
from labelops.agreement import pipeline
from labelops.dispatch import pipeline as dispatch
from labelops.dispatch.label_studio import LabelStudioPlatform
from labelops.ingest.dedup import normalise_text, record_id
from labelops.storage import S3Store
from test_dispatch_dag import ls_connection  # noqa: F401  (fixture)
from test_ingest_pipeline import ingest, jsonl, put

pytestmark = pytest.mark.stack

HOSTILE = "<script>alert('x')</script> & my card?"


@pytest.fixture
def mail(tmp_path, monkeypatch):
    """The SMTP catcher on its own port; `smtp_default` points at it. Yields the folder of received .eml files."""
    folder = tmp_path / "mail"
    folder.mkdir()
    with mailcatcher(folder) as (host, port):
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_connection(host, port))
        yield folder


def received(folder: Path) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in sorted(folder.glob("*.eml"))]


def disagreeing_rows() -> list[dict]:
    """Annotation rows of 12 items on which ann and bob disagree every time: kappa far below any threshold."""
    from test_export_dag import row

    return [row(f"r{i:02d}", f"text {i}", who, label, 2 * i + k, i)
            for i in range(12) for k, (who, label) in enumerate(
                [("ann@sim.labelops.local", "card_arrival" if i % 2 else "top_up"),
                 ("bob@sim.labelops.local", "top_up" if i % 2 else "card_arrival")])]


def banking_rows(n: int) -> list[dict]:
    from seed_model import banking77

    rows, seen = [], set()
    for r in banking77("test"):
        if r["intent"] not in seen or len(rows) < n // 2:  # many intents, some repeated
            seen.add(r["intent"])
            rows.append(r)
        if len(rows) == n:
            break
    return rows


def truth_of(project, rows: list[dict]) -> dict[str, dict]:
    opts = project.spec.ingest.normalisation.model_dump()
    return {record_id(normalise_text(r["text"], **opts)): {"label": r["intent"], "spans": []} for r in rows}


# Two careful annotators and one who always answers wrong: kappa(a, b) = 1, the third far below the team.
PROFILE = [
    {"name": "Ann Careful", "email": "ann@sim.labelops.local", "accuracy": 1.0, "lead_time_s": 8},
    {"name": "Bob Careful", "email": "bob@sim.labelops.local", "accuracy": 1.0, "lead_time_s": 12},
    {"name": "Eve <b>Wrong</b>", "email": "eve@sim.labelops.local", "accuracy": 0.0, "lead_time_s": 3},
]


def test_agreement_dag_pulls_reports_alerts_once_and_sends_disputes_to_adjudication(
        s3, airflow_db, aws_connection, ls_connection, label_studio, mail, tmp_path, monkeypatch):  # noqa: F811
    from annotator_sim import simulate
    from labelops_dags import build_agreement

    (tmp_path / "projects").mkdir()
    project = write_dagtest_project(tmp_path / "projects", monkeypatch, dispatch={
        "batch_size": 30, "gold_share": 0.0, "routing": False, "overlap_share": 1.0, "overlap_annotators": 3},
        agreement={"worst_items": 30})
    store = S3Store(s3, "labelops")
    rows = banking_rows(30)
    rows[0] = {**rows[0], "text": HOSTILE}
    put(s3, project, "batch.jsonl", jsonl([{"text": r["text"]} for r in rows]))
    staged = ingest(s3, project, "ingest1")
    assert staged["records_staged"] == 30
    plan = dispatch.plan(store, project, "dispatch1")
    assert plan["by_route"] == {"overlap": 30}, plan["by_route"]
    dispatch.run(store, project, "dispatch1",
                 LabelStudioPlatform(label_studio, project, store, dispatch.Paths(project, "dispatch1")))
    truth = truth_of(project, rows)
    made = simulate(label_studio, project, truth, PROFILE, seed=1)
    assert made["annotations"] == 90 and made["no_truth"] == 0

    dag = build_agreement(project)
    run = dag.test(logical_date=None)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states == dict.fromkeys(("pull_annotations", "compute_agreement", "alert_leads", "adjudicate",
                                    "publish"), "success")
    paths = pipeline.Paths(project, run.run_id)
    manifest = store.get_json(paths.manifest)
    assert manifest["annotations_pulled"] == 90 and manifest["items_in_window"] == 30
    # the same queue read in id ranges of 7 tasks (5 snapshots, 5 temporary views), one snapshot at a time and
    # up to 2 or 3 built at once: every annotation exactly once, the same rows in the same order (id ranges in
    # order) as the one-snapshot pull, and no snapshot or view left behind
    from labelops.agreement.pull import LabelStudioPull
    from labelops.dispatch.label_studio import label_config_names

    names = label_config_names(project.label_config_xml)
    overlap = store.get_json(dispatch.Paths(project, "x").label_studio)["overlap"]
    by_chunk = {}
    for chunk, workers in ((7, 1), (7, 2), (7, 3), (10_000, 1)):
        reader = LabelStudioPull(label_studio, choices=names.choices, labels=names.labels, text_field=names.data_key,
                                 chunk_tasks=chunk, workers=workers)
        rows = list(reader.annotations("overlap", overlap))
        assert reader.snapshots == (5 if chunk == 7 else 1) and reader.ignored == 0
        by_chunk[chunk, workers] = [(r["task_id"], r["annotation_id"], r["task_key"], r["label"]) for r in rows]
    one = by_chunk[7, 1]
    assert len(one) == len({r[1] for r in one}) == 90 and one == sorted(one, key=lambda r: int(r[0]))
    assert by_chunk[7, 2] == by_chunk[7, 3] == one and sorted(by_chunk[10_000, 1]) == sorted(one)
    from test_faults import pull_leftovers

    assert pull_leftovers(label_studio, overlap) == (0, 0)
    summary = store.get_json(paths.summary)
    pairs = {(p["annotator_a"], p["annotator_b"]): p for p in summary["stats"]["cohen_kappa_pairwise"]}
    assert pairs[("ann@sim.labelops.local", "bob@sim.labelops.local")]["kappa"] == pytest.approx(1.0)
    assert pairs[("ann@sim.labelops.local", "bob@sim.labelops.local")]["n_items"] == 30
    for (a, b), p in pairs.items():
        if "eve@" in a + b:
            assert p["kappa"] <= 0.0 and p["n_items"] == 30
    rules = {(a["rule"], a["annotator"]) for a in summary["alerts"]}
    assert ("min_cohen_kappa", None) in rules and ("annotator_below_team", "eve@sim.labelops.local") in rules
    lead = {a["annotator_id"]: a["lead_time_median_s"] for a in summary["stats"]["annotators"]}
    assert lead["eve@sim.labelops.local"] < lead["bob@sim.labelops.local"]

    # the report: escaped text, no live script
    html = s3.get_object(Bucket="labelops", Key=paths.report)["Body"].read().decode()
    assert "<script>alert" not in html and "&lt;script&gt;alert(" in html

    # the email, as the SMTP server received it
    mails = received(mail)
    assert len(mails) == 1
    msg = mails[0]
    assert project.name in msg["Subject"] and "\n" not in msg["Subject"]
    assert msg["X-Labelops-Envelope-To"] and "annotation-leads@labelops.example.com" in msg["To"]
    body = msg.get_body(("html",)).get_content()
    assert f"{manifest['cohen_kappa_mean']:.2f}" in body and paths.report.split("/")[-1] in body
    assert "cid:trend.png" in body and "<b>Wrong</b>" not in body
    pngs = [p for p in msg.iter_attachments() if p.get_filename() == "trend.png"]
    assert len(pngs) == 1 and pngs[0].get_content().startswith(b"\x89PNG")

    # adjudication: every item is disputed (eve disagrees), each sent once to the expert queue
    queues = store.get_json(dispatch.Paths(project, "x").label_studio)
    expert = [t for t in label_studio.tasks.list(project=queues["expert"], page_size=100, fields="all")]
    assert len(expert) == manifest["adjudication_candidates"] == 30
    assert all(pipeline.ADJUDICATION_MARK in t.data["labelops_key"] for t in expert)
    assert all(len(t.predictions) == 2 for t in expert)  # the two competing answers

    # the same night again (a cleared run): no new email, no new adjudication task, same snapshot
    assert pipeline.pull(store, project, run.run_id, source=None) == store.get_json(paths.pull)
    assert pipeline.pending_alert(store, project, run.run_id) is None
    again = pipeline.adjudicate(store, project, run.run_id, platform=None)
    assert again["sent"] == 0 and again["already_sent"] == 30
    assert len(received(mail)) == 1
    assert len(list(label_studio.tasks.list(project=queues["expert"], page_size=100, fields="task_only"))) == 30

    # the next night, nothing new: an incremental pull of nothing, no email, no Asset event
    second = dag.test(logical_date=None)
    states = {ti.task_id: ti.state for ti in second.get_task_instances()}
    assert states["pull_annotations"] == "success" and states["publish"] == "skipped", states
    m2 = store.get_json(pipeline.Paths(project, second.run_id).manifest)
    assert m2["annotations_pulled"] == 0 and m2["since"] is not None
    assert len(received(mail)) == 1


def test_a_failed_stage_run_emails_the_project_leads(s3, airflow_db, aws_connection, mail, tmp_path, monkeypatch):
    from labelops_dags import build_ingest

    (tmp_path / "projects").mkdir()
    project = write_dagtest_project(tmp_path / "projects", monkeypatch)
    run = build_ingest(project).test(logical_date=None, run_conf={"prefix": "somewhere-else/"})
    assert run.state == "failed"
    mails = received(mail)
    assert len(mails) == 1
    assert project.dag_id("ingest") in mails[0]["Subject"] and "failed" in mails[0]["Subject"]
    assert "annotation-leads@labelops.example.com" in mails[0]["To"]
    assert "plan_objects" in mails[0].get_body(("html",)).get_content()


def test_agreement_dag_on_scale_pulls_the_completed_tasks(s3, airflow_db, aws_connection, mail, tmp_path,
                                                          monkeypatch):
    """The same DAG for a Scale project: the real scaleapi client on `scale_default` against the fake of Scale's
    v1 API; the worker's answers are played through the fake's /_sim endpoint (not Scale's API)."""
    import requests

    from labelops.dispatch.scale import ScalePlatform
    from labelops_dags import build_agreement
    from test_scale_dispatch import Fake

    (tmp_path / "projects").mkdir()
    project = write_dagtest_project(tmp_path / "projects", monkeypatch, platform="scale",
                                    scale={"connection_id": "scale_default", "project": "agree-scale"},
                                    dispatch={"batch_size": 20, "gold_share": 0.0, "routing": False,
                                              "overlap_share": 1.0, "overlap_annotators": 2})
    fake = Fake(tmp_path / "scale").start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SCALE_DEFAULT", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": fake.port, "schema": "http", "password": fake.key}))
        store = S3Store(s3, "labelops")
        rows = banking_rows(20)
        put(s3, project, "batch.jsonl", jsonl([{"text": r["text"]} for r in rows]))
        ingest(s3, project, "ingest1")
        dispatch.plan(store, project, "dispatch1")
        manifest = dispatch.run(store, project, "dispatch1", ScalePlatform(fake.client(), project, "dispatch1"))
        assert manifest["tasks_created"] == 40  # 20 items x 2 copies
        truth = truth_of(project, rows)
        labels = sorted(project.labels)
        dispatched = [json.loads(line) for line in store.get(manifest["dispatched_uri"].split("/", 3)[3]).splitlines()]
        wrong = 0
        for n, row in enumerate(dispatched):
            right = truth[row["record_id"]]["label"]
            for copy, task_id in enumerate(row["task_id"], 1):
                label = right if copy == 1 or n % 4 else labels[(labels.index(right) + 1) % len(labels)]
                wrong += label != right
                r = requests.post(f"{fake.url[:-3]}/_sim/task/{task_id}/complete",
                                  json={"response": {"category": label}}, auth=(fake.key, ""), timeout=10)
                assert r.status_code == 200, r.text
        run = build_agreement(project).test(logical_date=None)
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == "success", states
        m = store.get_json(pipeline.Paths(project, run.run_id).manifest)
        assert m["annotations_pulled"] == 40 and m["items_in_window"] == 20 and m["annotators"] == 2
        summary = store.get_json(pipeline.Paths(project, run.run_id).summary)
        assert wrong == 5 and summary["stats"]["percent_agreement"] == pytest.approx(15 / 20)
        assert summary["adjudication"]["candidates"] == 5 and m["adjudication_candidates"] == 5
    finally:
        fake.stop()


def test_an_alert_the_smtp_server_refuses_fails_and_is_sent_once_on_retry(s3, airflow_db, mail, tmp_path,
                                                                         monkeypatch):
    """The alert task (`alert_once`) with the SMTP server down (a closed port): it raises (Airflow retries the
    task) and marks nothing; the retry, with the server back, sends the email once; a further retry sends nothing."""
    from labelops_dags import alert_once
    from test_export_dag import Rows

    (tmp_path / "projects").mkdir()
    project = write_dagtest_project(tmp_path / "projects", monkeypatch)
    store = S3Store(s3, "labelops")
    pipeline.pull(store, project, "night1", Rows(disagreeing_rows()))
    assert pipeline.compute(store, project, "night1")["alerts"] >= 1
    alert = pipeline.pending_alert(store, project, "night1")
    working = json.loads(__import__("os").environ["AIRFLOW_CONN_SMTP_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({**working, "port": free_port()}))  # nobody there
    with pytest.raises(Exception):
        alert_once(project, store, "night1")
    assert pipeline.pending_alert(store, project, "night1") is not None and received(mail) == []
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(working))  # the server is back: the retry
    assert alert_once(project, store, "night1") == {"sent": True, "alerts": alert["alerts"]}
    assert alert_once(project, store, "night1") == {"sent": False, "reason": "sent already for this run"}
    mails = received(mail)
    assert len(mails) == 1 and mails[0]["Message-ID"] == alert["message_id"]
