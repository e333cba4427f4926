"""The local stack of real servers: it starts, every service answers on loopback, the factory's DAGs run in
the real scheduler when triggered through the REST API of `airflow standalone`, and it stops leaving nothing."""

from __future__ import annotations

import email
import io
import json
import os
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests
from label_studio_sdk.client import LabelStudio

from airflow_api import AirflowAPI
from demo import manifests
from stack import LOOPBACK, Service, Stack, StackError

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def api(stack):
    return AirflowAPI(stack.url("airflow"), "admin", stack.secrets()["airflow_admin_password"])


def test_every_service_is_ready_on_loopback_only(stack):
    status = stack.status()
    assert set(status) == {"s3", "smtp", "scale", "label_studio", "airflow"}
    assert all(s["ready"] for s in status.values()), status
    for name in status:
        listeners = stack._listeners(stack.ports[name])
        assert listeners, name
        assert {ip for ip, _ in listeners} <= LOOPBACK, (name, listeners)


def test_buckets_of_every_project_exist(stack):
    names = {b["Name"] for b in stack.s3_client().list_buckets()["Buckets"]}
    assert "labelops" in names


def test_label_studio_accepts_the_token_through_the_sdk(stack):
    from label_studio_sdk.client import LabelStudio

    client = LabelStudio(base_url=stack.url("label_studio"), api_key=stack.secrets()["label_studio_token"])
    me = client.users.whoami()
    assert me.email == stack.secrets()["label_studio_email"]
    bad = requests.get(stack.url("label_studio") + "/api/projects", timeout=10,
                       headers={"Authorization": "Token 0000000000000000000000000000000000000000"})
    assert bad.status_code == 401


def test_label_studio_runs_several_workers_on_wal_without_error_reports(stack):
    """tools/ls_serve.py: gunicorn worker processes (a nightly pull's snapshots are built in parallel), SQLite in
    WAL mode (a snapshot's long read does not block annotators' saves), Sentry off."""
    import sqlite3

    import psutil

    from ls_serve import workers

    pgid = next(g for g, name in stack.process_groups().items() if name == "label_studio")
    members = stack.group_members(pgid)
    serving = [p for p in members if "ls_serve.py" in " ".join(p.info["cmdline"] or [])]
    assert len(serving) == 1 + workers(), [p.info for p in members]
    db = stack.state / "label-studio" / "label_studio.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    env = psutil.Process(serving[0].pid).environ()
    assert env.get("SENTRY_DSN") == "" and env.get("FRONTEND_SENTRY_DSN") == ""


def test_smtp_catcher_keeps_every_message(stack):
    before = set(stack.mail_dir.glob("*.eml"))
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "labelops@localhost", "lead@example.com", "kappa dropped ünïcode"
    msg.set_content("<b>escaped?</b>")
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=10) as smtp:
        smtp.send_message(msg, to_addrs=["lead@example.com", "other@example.com"])
    new = set(stack.mail_dir.glob("*.eml")) - before
    assert len(new) == 1
    kept = email.message_from_bytes(new.pop().read_bytes())
    assert str(email.header.make_header(email.header.decode_header(kept["Subject"]))) == "kappa dropped ünïcode"
    assert kept["X-Labelops-Envelope-To"] == "lead@example.com, other@example.com"


def test_fake_scale_speaks_to_the_real_client(stack):
    import scaleapi
    from scaleapi.exceptions import ScaleDuplicateResource, ScaleUnauthorized

    client = scaleapi.ScaleClient(stack.secrets()["scale_api_key"], api_instance_url=stack.url("scale") + "/v1")
    client.create_project("intents_test", scaleapi.TaskType.TextCollection, params={"instruction": "label it"})
    assert "intents_test" in [p.name for p in client.get_projects()]
    with pytest.raises(ScaleDuplicateResource):
        client.create_project("intents_test", scaleapi.TaskType.TextCollection)
    with pytest.raises(ScaleUnauthorized):
        scaleapi.ScaleClient("live_wrong", api_instance_url=stack.url("scale") + "/v1").get_projects()


def test_healthcheck_runs_in_the_real_scheduler(api):
    dag_id = "banking_support__healthcheck"
    api.wait_for_dag(dag_id, timeout=180)
    api.set_paused(dag_id, False)
    run = api.trigger(dag_id)  # as the UI does: no logical date
    assert run["logical_date"] is None
    final = api.wait_for_run(dag_id, run["dag_run_id"], timeout=300)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(dag_id, run["dag_run_id"])}
    assert final["state"] == "success", states
    assert states == {"check_s3": "success", "check_smtp": "success", "check_label_studio": "success"}
    log = api.task_log(dag_id, run["dag_run_id"], "check_label_studio")
    assert "token accepted" in log


def test_healthcheck_names_the_broken_connection(api, stack):
    dag_id = "wrong_token__healthcheck"
    api.wait_for_dag(dag_id, timeout=180)
    api.set_paused(dag_id, False)
    run = api.trigger(dag_id)
    final = api.wait_for_run(dag_id, run["dag_run_id"], timeout=300)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(dag_id, run["dag_run_id"])}
    assert final["state"] == "failed"
    assert states == {"check_s3": "success", "check_smtp": "success", "check_scale": "success",
                      "check_label_studio": "failed"}
    log = api.task_log(dag_id, run["dag_run_id"], "check_label_studio")
    assert "label_studio (connection 'label_studio_wrong_token') is broken" in log
    assert "rejected the API token" in log
    for secret in ("not-the-token", stack.secrets()["label_studio_token"]):
        assert secret not in log
    assert "key accepted" in api.task_log(dag_id, run["dag_run_id"], "check_scale")


def test_params_form_selects_the_services(api):
    dag_id = "banking_support__healthcheck"
    run = api.trigger(dag_id, conf={"services": ["s3"]})
    final = api.wait_for_run(dag_id, run["dag_run_id"], timeout=300)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(dag_id, run["dag_run_id"])}
    assert final["state"] == "success"
    assert states == {"check_s3": "success", "check_smtp": "skipped", "check_label_studio": "skipped"}


@pytest.mark.timeout(3600)  # two whole demos: ingest to retrain for both projects, annotators included
def test_demo_runs_against_the_stack_and_is_safe_to_rerun(stack, api):
    env = {**os.environ, "LABELOPS_STATE": str(stack.state), "LABELOPS_PORT_BASE": str(stack.ports["airflow"])}
    client = stack.s3_client()
    etags, outputs = [], []
    for _ in range(2):
        out = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py")], env=env, capture_output=True,
                             text=True, timeout=1500)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "demo: OK" in out.stdout and "banking_support__healthcheck: success" in out.stdout
        listing = client.list_objects_v2(Bucket="labelops", Prefix="banking_support/raw/")["Contents"]
        etags.append(sorted((o["Key"], o["ETag"]) for o in listing))
        outputs.append(out.stdout)
    assert len(etags[0]) == 2 and etags[0] == etags[1]
    # the ingest's Asset event scheduled each project's dispatch on the real scheduler, once
    ls = LabelStudio(base_url=stack.url("label_studio"), api_key=stack.secrets()["label_studio_token"])
    for project in ("banking_support", "snips_assistant", "digits"):
        assert f"{project}__dispatch: success" in outputs[0] and "scheduled by the ingest Asset event" in outputs[0]
        assert f"{project}__dispatch: not scheduled (no new batch staged)" in outputs[1]
        dispatches = manifests(client, project, "dispatch")
        by_ingest = [m for m in dispatches if m["triggers"][0].startswith(f"s3://labelops/{project}/manifests/ingest/")]
        assert len(by_ingest) == 1, dispatches
        m = by_ingest[0]
        assert m["model_version"] and m["tasks_created"] == m["tasks"] > 0 and m["gold_tasks"] > 0
        # the run read the ingest manifest from the triggering Asset event's extra
        assert len(m["triggers"]) == 1
        assert json.loads(client.get_object(Bucket="labelops", Key=m["triggers"][0].split("/", 3)[3])["Body"].read())[
            "records_staged"] > 0
        # every other dispatch was scheduled by a retrain that promoted a model (the closed loop), one dispatch per
        # promotion, and pre-annotated with the promoted champion: in its manifest and in Label Studio's predictions
        promotions = [r for r in manifests(client, project, "retrain") if r["promoted"]]
        by_retrain = [d for d in dispatches if d not in by_ingest]
        assert sorted(d["triggers"][0] for d in by_retrain) == sorted(r["manifest_uri"] for r in promotions)
        for d in by_retrain:
            promoted = next(r["promoted"] for r in promotions if r["manifest_uri"] == d["triggers"][0])
            for kind, version in promoted.items():
                assert f"{kind}:{version}" in d["model_version"].split("+"), (d["model_version"], promoted)
            ledger = client.get_object(Bucket="labelops", Key=d["dispatched_uri"].split("/", 3)[3])["Body"].read()
            task_ids = [json.loads(line)["task_id"] for line in ledger.decode().splitlines()[:5]]
            assert task_ids and all(
                [p.model_version for p in ls.predictions.list(task=t)] == [d["model_version"]] for t in task_ids)
        on_ls = [t.data["labelops_key"] for q in m["per_queue"].values()
                 for t in ls.tasks.list(project=q["project_id"], page_size=1000, fields="task_only")]
        dispatched = [k for k in on_ls if ":adjudicate:" not in k]  # the expert queue also gets adjudications
        assert len(dispatched) == len(set(dispatched)) == sum(d["tasks"] for d in dispatches)
        assert len(set(on_ls)) == len(on_ls)
        # the simulated annotators' work went through the agreement stage: pulled, measured, reported
        assert f"{project}__agreement: success" in outputs[0] and f"{project}__agreement: success" in outputs[1]
        every = sorted(manifests(client, project, "agreement"), key=lambda m: m["created_at"])
        # unpausing the nightly DAG also starts its latest scheduled run (at once, before any annotation)
        runs = [m for m in every if m["run_id"].startswith("demo__")]
        assert all(m["annotations_pulled"] == 0 for m in every if m not in runs), every
        assert len(runs) == 2 and runs[0]["annotations_pulled"] > 0
        # the second night pulled only what was answered since the first: the adjudication tasks, and the tasks
        # of the dispatch a promotion scheduled; nothing pulled the first night came again
        first, second = (snapshot_keys(client, r) for r in runs)  # one key per annotation row
        assert len(second) == runs[1]["annotations_pulled"] and not set(first) & set(second)
        new_round = {json.loads(line)["key"] for d in by_retrain if d["created_at"] < runs[1]["created_at"]
                     for line in client.get_object(Bucket="labelops", Key=d["dispatched_uri"].split("/", 3)[3])[
                         "Body"].read().decode().splitlines()}
        assert all(":adjudicate:" in k or k.split("#")[0] in new_round for k in second), sorted(second)[:5]
        assert runs[0]["items_in_window"] > 0 and runs[0]["annotators"] >= 2
        report = client.get_object(Bucket="labelops", Key=runs[0]["report_uri"].split("/", 3)[3])["Body"].read()
        assert report.startswith(b"<!DOCTYPE html>") and b"data:image/png;base64," in report
        mails = [email.message_from_bytes(p.read_bytes()) for p in stack.mail_dir.glob("*.eml")]
        alerts = [m for m in mails if m["X-Labelops-Project"] == project and "agreement" in m["Subject"]]
        assert len(alerts) == sum(1 for r in runs if r["alerts"]), [m["Subject"] for m in alerts]
        # the agreement Asset event scheduled the export: a dataset version tagged in the stack's dataset repo
        assert f"{project}__export: success" in outputs[0] and f"dataset version {project}/v1 " in outputs[0]
        tags = subprocess.run(["git", "--git-dir", str(stack.datasets_repo), "tag", "--list", f"{project}/v*"],
                              capture_output=True, text=True, check=True).stdout.split()
        created = [e for e in manifests(client, project, "export") if e.get("created")]
        assert sorted(tags) == sorted(e["tag"] for e in created) and f"{project}/v1" in tags, tags
        # the version scheduled the retrain: it decided (and, with the seed champion trained elsewhere, trained
        # and compared); the champion pointer names a model either way
        assert f"{project}__retrain: success" in outputs[0]
        assert ("image" if project == "digits" else "intent") in json.loads(client.get_object(
            Bucket="labelops", Key=f"{project}/models/champion.json")["Body"].read())
    # the banking demo is sized so that its first round of labels beats the small seed model: the loop closes
    assert 'promoted: {"intent": ' in outputs[0].split("DAGs of snips_assistant")[0]
    assert "banking_support__dispatch: success" in outputs[0] and "scheduled by the retrain Asset event" in outputs[0]
    digits_went_through_every_stage(client, outputs[0])
    # no secret the stack handed the pipeline in any artefact of the two demos
    leaks = secrets_in_artefacts(stack)
    assert leaks == [], leaks
    two_dispatch_runs_at_once(api, client, ls)


def digits_went_through_every_stage(client, output: str) -> None:
    """The image project of the demo: its manifest's rows were each counted, its dataset version names the images
    by s3:// URI and content hash (the bytes in S3 have that hash) with labels mostly right (simulated annotators,
    about 10% noise), in JSONL and the AutoML CSV; the retrain promoted an image model trained on it."""
    import hashlib

    sys.path.insert(0, str(REPO / "tools"))
    import digits_data

    ingest = [m for m in manifests(client, "digits", "ingest") if m["records_read"]]
    assert len(ingest) == 1 and ingest[0]["records_read"] == len(digits_data.demo_split()["input"])
    assert ingest[0]["sources"][0]["format"].startswith("image_manifest")
    export = next(e for e in manifests(client, "digits", "export") if e.get("tag") == "digits/v1")
    files = export["files_uri"].split("/", 3)[3]
    items = [json.loads(line) for line in client.get_object(Bucket="labelops", Key=files + "dataset.jsonl")[
        "Body"].read().splitlines()]
    truth = digits_data.truth()
    assert items and sum(truth[i["item_id"]]["label"] == i["label"] for i in items) / len(items) >= 0.8
    for i in items[:20]:
        body = client.get_object(Bucket="labelops", Key=i["image_key"])["Body"].read()
        assert i["image"] == f"s3://labelops/{i['image_key']}" and hashlib.sha256(body).hexdigest() == i["sha256"]
    csv_rows = client.get_object(Bucket="labelops", Key=files + "classification.csv")["Body"].read().decode()
    assert len(csv_rows.splitlines()) == len(items) and csv_rows.startswith(("TRAINING,s3://", "TEST,s3://"))
    promoted = [r for r in manifests(client, "digits", "retrain") if r["promoted"]]
    assert promoted and set(promoted[0]["promoted"]) == {"image"}, promoted
    assert 'promoted: {"image": ' in output.split("DAGs of digits")[1]


def two_dispatch_runs_at_once(api, client, ls) -> None:
    """Two manual runs of one dispatch DAG triggered together (SNIPS: thousands of records still wait): Airflow
    runs them one after the other, both succeed, and they dispatch different records, each once on Label Studio."""
    dag_id = "snips_assistant__dispatch"
    runs = [api.trigger(dag_id, conf={"batch_size": 5}, run_id=f"together__{n}_{time.time_ns()}") for n in (1, 2)]
    done = [api.wait_for_run(dag_id, r["dag_run_id"], timeout=900) for r in runs]
    assert [d["state"] for d in done] == ["success", "success"], done
    first, second = sorted(done, key=lambda d: d["start_date"])
    assert second["start_date"] >= first["end_date"], (first, second)  # queued, not concurrent
    made = [m for m in manifests(client, "snips_assistant", "dispatch") if m["run_id"].startswith("together__")]
    keys = [{json.loads(line)["key"] for line in client.get_object(Bucket="labelops", Key=m["dispatched_uri"].split(
        "/", 3)[3])["Body"].read().decode().splitlines() if '"gold"' not in line} for m in made]
    assert len(made) == 2 and all(len(k) == 5 for k in keys) and not keys[0] & keys[1], keys
    every = [t.data["labelops_key"] for q in made[0]["per_queue"].values()
             for t in ls.tasks.list(project=q["project_id"], page_size=1000, fields="task_only")]
    assert len(every) == len(set(every))


def secrets_in_artefacts(stack) -> list[str]:
    """Where a secret of the stack (Label Studio token and password, S3 secret key, Scale key, Airflow admin
    password) occurs in what the pipeline wrote: every S3 object of every bucket (gzip opened), the task logs,
    Airflow's metadata database (XCom, rendered templates; connections are Fernet-encrypted), the captured
    emails and every object of the dataset repository. Not searched: secrets.json, the Airflow auth manager's
    password file and Label Studio's own database, which are where the stack keeps them."""
    import gzip

    s = stack.secrets()
    secrets = {k: s[k].encode() for k in ("label_studio_token", "label_studio_password", "aws_secret_access_key",
                                          "scale_api_key", "airflow_admin_password")}
    found: list[str] = []

    def check(where: str, body: bytes) -> None:
        if body[:2] == b"\x1f\x8b":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                pass
        found.extend(f"{name} in {where}" for name, value in secrets.items() if value in body)

    client = stack.s3_client()
    n_objects = 0
    for bucket in client.list_buckets()["Buckets"]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                check(f"s3://{bucket['Name']}/{obj['Key']}",
                      client.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read())
                n_objects += 1
    files = [p for p in (stack.state / "airflow" / "logs").rglob("*") if p.is_file()]
    files += [p for p in (stack.state / "airflow").glob("airflow.db*") if p.is_file()]
    files += [p for p in stack.mail_dir.glob("*.eml")]
    for path in files:
        check(str(path), path.read_bytes())
    repo = subprocess.run(["git", "--git-dir", str(stack.datasets_repo), "cat-file", "--batch-all-objects",
                           "--batch"], capture_output=True, check=True).stdout
    check(str(stack.datasets_repo), repo)
    # the search covered something: the demos wrote objects, logs and a repository
    assert n_objects > 100 and len(files) > 20 and len(repo) > 1000, (n_objects, len(files), len(repo))
    return found


def snapshot_keys(client, agreement_manifest: dict) -> list[str]:
    """The task keys of the annotation rows an agreement run landed (its Parquet snapshot)."""
    import pyarrow.parquet as pq

    prefix = agreement_manifest["snapshot_uri"].split("/", 3)[3]
    parts = [o["Key"] for o in client.list_objects_v2(Bucket="labelops", Prefix=prefix).get("Contents", [])]
    return [k for part in parts for k in pq.read_table(io.BytesIO(client.get_object(
        Bucket="labelops", Key=part)["Body"].read())).column("task_key").to_pylist()]


def test_a_busy_port_is_refused(tmp_path):
    other = Stack(state=tmp_path / "s", port_base=int(os.environ.get("LABELOPS_TEST_PORT_BASE", "18780")) + 20)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", other.ports["s3"]))
        sock.listen()
        s3 = next(s for s in other.services() if s.name == "s3")
        with pytest.raises(StackError, match="is busy"):
            other.start(s3)


def test_a_service_on_the_wrong_port_or_owner_is_detected(tmp_path):
    """A listener that is not in the process group we started (as when Label Studio silently moves to the
    next free port and something else answers on ours) must fail the start."""
    stranger = subprocess.Popen([sys.executable, "-c", "import socket,time;s=socket.socket();"
                                 "s.bind(('127.0.0.1',0));s.listen();print(s.getsockname()[1],flush=True);"
                                 "time.sleep(60)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = int(stranger.stdout.readline())
        st = Stack(state=tmp_path / "s", port_base=port)
        svc = Service("label_studio", port, ["true"], ready=lambda: True)
        with pytest.raises(StackError, match="not by the service we started"):
            st.verify_binding(svc, pgid=os.getpgid(0))
        free = Service("label_studio", port + 1 if port < 65000 else port - 1, ["true"], ready=lambda: True)
        with pytest.raises(StackError, match="nothing listens"):
            st.verify_binding(free, pgid=os.getpgid(0))
    finally:
        stranger.kill()


@pytest.mark.stack_teardown
def test_stack_stops_cleanly_with_nothing_left_running(stack):
    """Runs last in the session (see conftest): stops the session's stack and checks that no process or port is left."""
    stack.down()
    deadline = time.monotonic() + 10
    while stack.stray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.stray_processes() == []
    assert not any(s["running"] for s in stack.status().values())
    for name in ("s3", "smtp", "scale", "label_studio", "airflow"):
        assert stack._port_free(stack.ports[name]), f"{name} port {stack.ports[name]} still bound"
