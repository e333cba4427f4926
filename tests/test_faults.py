"""Faults injected for real between the pipeline and Label Studio: a fault-injecting reverse proxy
(tools/fault_proxy.py) in front of the stack's Label Studio answers 503 or 429 with Retry-After, resets the
connection before or after the server applied the request, delays an answer past the client's timeout, or is
slow. Each case imports one queue through the proxy with the dispatch's Importer (its own retries, then Airflow's:
the run is started again from the ledger while it fails, up to three runs), then counts the tasks on Label Studio
directly: no key twice, none missing. The same for the agreement pull, for ingest's S3 traffic, for a DVC push that
fails half-way, for workers killed with SIGKILL, and for the alert email through a fault-injecting SMTP proxy
(server down, 421, the message taken but its 250 lost or late, slow replies). The tables are printed
(`pytest -s`, `make chaos`)."""

from __future__ import annotations

import json
import time

import pytest
from label_studio_sdk.client import LabelStudio

from conftest import print_table
from fault_proxy import FaultProxy
from labelops.dispatch.label_studio import KEY_FIELD, Importer, MemoryLedger
from test_dispatch_label_studio import project_tasks, verify_queue

pytestmark = pytest.mark.stack
IMPORT = r"^/api/projects/\d+/import"

# name -> (method, path, action, options): the first import request of the queue gets the fault
CASES = {
    "503 on the import": ("POST", IMPORT, "status", {"status": 503}),
    "429 with Retry-After": ("POST", IMPORT, "status", {"status": 429, "retry_after": 1}),
    "reset before the server saw it": ("POST", IMPORT, "reset", {}),
    "reset after the server applied it": ("POST", IMPORT, "reset_after", {}),
    "answer after the client timeout": ("POST", IMPORT, "late", {"seconds": 7.0}),
    "slow answer within the timeout": ("POST", IMPORT, "slow", {"seconds": 1.0}),
    "502 on the reconcile's listing": ("GET", r"^/api/tasks", "status", {"status": 502, "times": 2}),
    "two faults in a row": ("POST", IMPORT, "reset_after", {"times": 2}),
}
N_TASKS, CHUNK = 120, 50


def with_retries(step, runs: int = 3):
    """Airflow's retries of a failed task: (runs taken, "success" or "failed: <error>", the step's result)."""
    outcome = "failed"
    for n in range(1, runs + 1):
        try:
            return n, "success", step()
        except Exception as exc:  # noqa: BLE001  (the run failed; the next one retries)
            outcome = f"failed: {type(exc).__name__}"
    return runs, outcome, None


def kill_repeatedly(args: list[str], delays, *, ready: str | None = None, finished=lambda: False) -> list[float]:
    """Start `args` again and again, killing its whole process group (SIGKILL) `delay` seconds after it started
    (after it printed `ready`, when given); stop early once `finished()`. The delays it was killed at."""
    import os
    import signal
    import subprocess

    killed_at = []
    for delay in delays:
        child = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        if ready is not None:
            assert child.stdout.readline().strip() == ready
        time.sleep(delay)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            killed_at.append(delay)
        child.wait(timeout=60)
        if finished():
            break
    return killed_at


def pull_leftovers(label_studio, pid: int) -> tuple[int, int]:
    """(export snapshots of any title, temporary views of the agreement pull) left in a Label Studio project."""
    exports = list(label_studio.projects.exports.list(id=pid))
    views = [v for v in label_studio.views.list(project=pid) if "labelops pull" in (v.data or {}).get("title", "")]
    return len(exports), len(views)


def import_annotated(label_studio, pid: int, names, tasks) -> int:
    """The tasks imported with their annotations (every task one, every other task a second, disagreeing one),
    200 per request; returns how many annotations."""
    user = label_studio.users.whoami().id

    def result(label):
        return [{"from_name": names.choices, "to_name": names.object_name, "type": "choices",
                 "value": {"choices": [label]}}]

    for start in range(0, len(tasks), 200):
        label_studio.projects.import_tasks(id=pid, request=[
            {"data": {"text": t.text, KEY_FIELD: t.key, "record_id": t.record_id},
             "annotations": [{"result": result("card_arrival"), "completed_by": user}]
             + ([{"result": result("lost_or_stolen_card"), "completed_by": user}] if (start + i) % 2 == 0 else [])}
            for i, t in enumerate(tasks[start:start + 200])])
    return len(tasks) + (len(tasks) + 1) // 2


@pytest.fixture(scope="module")
def results(label_studio, label_studio_endpoint):
    url, token = label_studio_endpoint
    out = {}
    for name, (method, path, action, opts) in CASES.items():
        pid, names, tasks = verify_queue(label_studio, N_TASKS)
        with FaultProxy(url) as proxy:
            opts = dict(opts)
            proxy.add(method, path, action, times=opts.pop("times", 1), **opts)
            client = LabelStudio(base_url=proxy.url, api_key=token, timeout=3.5)
            ledger = MemoryLedger()  # the task runs again from the same ledger
            runs, outcome, _ = with_retries(
                lambda: Importer(client, names, ledger, chunk_size=CHUNK, backoff=0.2).run("verify", pid, tasks))
            fired = len(proxy.fired())
        keys = [t.data[KEY_FIELD] for t in project_tasks(label_studio, pid)]
        wanted = {t.key for t in tasks}
        out[name] = {"runs": runs, "outcome": outcome, "fired": fired, "tasks": len(keys),
                     "duplicates": len(keys) - len(set(keys)), "missing": len(wanted - set(keys))}
    print_table("fault (dispatch import)", {"fired": "injected", "runs": "runs", "outcome": "outcome",
                                            "tasks": "tasks", "duplicates": "duplicates", "missing": "losses"}, out)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_a_fault_ends_in_success_with_every_task_exactly_once(results, name):
    r = results[name]
    assert r["fired"] >= 1, "the fault was never injected: the case tests nothing"
    assert r["outcome"] == "success", r
    assert (r["tasks"], r["duplicates"], r["missing"]) == (N_TASKS, 0, 0), r


# -- the agreement pull through the proxy ---------------------------------------------------------------------------
EXPORTS = r"^/api/projects/\d+/exports/?(\?.*)?$"
PULL_CASES = {
    "503 on the snapshot create": ("POST", EXPORTS, "status", {"status": 503}),
    "reset after the snapshot was made": ("POST", EXPORTS, "reset_after", {}),
    "reset on the snapshot download": ("GET", r"^/api/projects/\d+/exports/\d+/download", "reset", {}),
    "502 on the temporary view": ("POST", r"^/api/dm/views", "status", {"status": 502}),
    "reset after the view was made": ("POST", r"^/api/dm/views", "reset_after", {}),
    "slow snapshot download": ("GET", r"^/api/projects/\d+/exports/\d+/download", "slow", {"seconds": 1.0}),
}


@pytest.fixture(scope="module")
def annotated_queue(label_studio):
    """A queue of 60 tasks with 90 annotations (every other task twice), imported with their annotations."""
    pid, names, tasks = verify_queue(label_studio, 60)
    assert import_annotated(label_studio, pid, names, tasks) == 90
    return pid, names


@pytest.fixture(scope="module")
def pull_results(label_studio, label_studio_endpoint, annotated_queue):
    from labelops.agreement.pull import LabelStudioPull

    url, token = label_studio_endpoint
    pid, names = annotated_queue

    def pull(client) -> list[tuple]:
        reader = LabelStudioPull(client, choices=names.choices, labels=names.labels, text_field=names.data_key)
        return sorted((r["annotation_id"], r["task_key"], r["label"]) for r in reader.annotations("verify", pid))

    truth = pull(label_studio)
    out = {}
    for name, (method, path, action, opts) in PULL_CASES.items():
        with FaultProxy(url) as proxy:
            proxy.add(method, path, action, **opts)
            client = LabelStudio(base_url=proxy.url, api_key=token, timeout=5.0)
            runs, outcome, rows = with_retries(lambda: pull(client))
            fired = len(proxy.fired())
        left, views = pull_leftovers(label_studio, pid)  # after the last run
        ids = [r[0] for r in rows or []]
        out[name] = {"fired": fired, "runs": runs, "outcome": outcome, "rows": len(ids),
                     "duplicates": len(ids) - len(set(ids)), "missing": len({r[0] for r in truth} - set(ids)),
                     "same": rows == truth, "exports_left": left, "views_left": views}
        for e in label_studio.projects.exports.list(id=pid):  # the next case starts clean
            label_studio.projects.exports.delete(id=pid, export_pk=e.id)
    print_table("fault (agreement pull)", {"fired": "injected", "runs": "runs", "outcome": "outcome", "rows": "rows",
                                           "duplicates": "duplicates", "missing": "losses",
                                           "exports_left": "snapshots left"}, out)
    return truth, out


def test_the_pull_without_faults_reads_every_annotation(pull_results):
    truth, _ = pull_results
    assert len(truth) == 90 and len({r[0] for r in truth}) == 90


@pytest.mark.parametrize("name", list(PULL_CASES))
def test_a_fault_in_the_pull_loses_and_duplicates_nothing(pull_results, name):
    _, out = pull_results
    r = out[name]
    assert r["fired"] >= 1, "the fault was never injected: the case tests nothing"
    assert r["outcome"] == "success" and r["same"], r
    assert (r["duplicates"], r["missing"]) == (0, 0), r
    # a snapshot or view whose create answer was lost is deleted by the next pull: nothing is left behind
    assert (r["views_left"], r["exports_left"]) == (0, 0), r


# -- ingest against S3 through the proxy ----------------------------------------------------------------------------
S3_CASES = {
    "503 on the staged batch PUT": ("PUT", r"/staged/run(=|%3D)[^/]+/records\.parquet", "status", {"status": 503}),
    "reset after the manifest PUT": ("PUT", r"/manifests/ingest/[^/]+\.json", "reset_after", {}),
    "500 on reading the ledger": ("GET", r"/state/ingest/current\.json", "status", {"status": 500}),
    "reset before the index segment PUT": ("PUT", r"/state/ingest/run(=|%3D)[^/]+/near\.seg", "reset", {}),
    "slow raw object GET": ("GET", r"/raw/", "slow", {"seconds": 1.0}),
    # boto3 tries a request 3 times: the first run fails, the task's retry finishes it
    "503 until the client's retries are spent": ("PUT", r"/staged/run(=|%3D)[^/]+/records\.parquet", "status",
                                                 {"status": 503, "times": 4}),
}


@pytest.fixture(scope="module")
def s3_results(s3):
    import boto3

    from labelops.ingest.pipeline import plan, run
    from labelops.storage import S3Store
    from test_ingest_pipeline import GOOD_ROWS_FOR_FAULTS, project_at, put, jsonl, reconcile, staged_rows

    out = {}
    for n, (name, (method, path, action, opts)) in enumerate(S3_CASES.items()):
        project = project_at()
        put(s3, project, "batch.jsonl", jsonl({"text": t} for t in GOOD_ROWS_FOR_FAULTS))
        with FaultProxy(s3.meta.endpoint_url) as proxy:
            opts = dict(opts)
            proxy.add(method, path, action, times=opts.pop("times", 1), **opts)
            client = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                                  aws_access_key_id="test", aws_secret_access_key="test")
            store = S3Store(client, "labelops")

            def ingest_run(run_id=f"faulty{n}"):  # the same run id again on every retry
                plan(store, project, run_id)
                return run(store, project, run_id)

            runs, outcome, manifest = with_retries(ingest_run)
            fired = len(proxy.fired())
        staged = [r["record_id"] for r in staged_rows(s3, manifest)] if manifest else []
        if manifest:
            reconcile(manifest)
        again = run(S3Store(s3, "labelops"), project, f"faulty{n}") if manifest else None  # a cleared task
        out[name] = {"fired": fired, "runs": runs, "outcome": outcome,
                     "read": manifest["records_read"] if manifest else 0, "staged": len(staged),
                     "duplicates": len(staged) - len(set(staged)), "same_again": again == manifest}
    print_table("fault (ingest, S3)", {"fired": "injected", "runs": "runs", "outcome": "outcome", "read": "read",
                                       "staged": "staged", "duplicates": "duplicates"}, out)
    return out


@pytest.mark.parametrize("name", list(S3_CASES))
def test_a_fault_between_ingest_and_s3_ends_with_every_record_staged_once(s3_results, name):
    from test_ingest_pipeline import GOOD_ROWS_FOR_FAULTS

    r = s3_results[name]
    assert r["fired"] >= 1, "the fault was never injected: the case tests nothing"
    assert r["outcome"] == "success", r
    assert r["runs"] == (2 if "spent" in name else 1), r
    assert r["read"] == r["staged"] == len(GOOD_ROWS_FOR_FAULTS) and r["duplicates"] == 0, r
    assert r["same_again"], "running the finished run again must change nothing"


# -- a DVC push that fails half-way -----------------------------------------------------------------------------------
def test_a_dvc_push_failing_half_way_leaves_no_version_and_the_retry_makes_it(s3, tmp_path):
    """The dataset files go to S3 through the proxy; after the first object is uploaded, S3 refuses the rest
    (403, as when credentials expire mid-push). No tag, no commit; the retry (no fault) makes v1, verified by a
    clean pull, and its files come back byte for byte."""
    import shutil

    from labelops.export.dvc_repo import DatasetRepo, DatasetRepoError, dvc_binary

    if shutil.which(dvc_binary()) is None:
        pytest.skip("no DVC CLI: `make setup` builds .venv-dvc")
    from test_export_dvc import V1, bare_repo, make_repo, read_files, refs, s3_env, write_files

    bare = bare_repo(tmp_path / "datasets.git")
    with FaultProxy(s3.meta.endpoint_url) as proxy:
        proxy.add("PUT", r"^/labelops/halfway/dvc/", "status", status=403, after=1, times=1000)
        repo = DatasetRepo(str(bare), path="datasets/halfway", s3_env={**s3_env(s3), "AWS_ENDPOINT_URL": proxy.url},
                           workdir=tmp_path / "work", remote_url="s3://labelops/halfway/dvc/")
        files = write_files(tmp_path / "files", V1)
        with pytest.raises(DatasetRepoError, match="dvc push"):
            repo.publish(files, project="halfway", run_id="scheduled__1", message="x")
        uploaded = [e for e in proxy.log if e[0] == "PUT" and e[2] == "forward"]
        refused = proxy.fired("status")
    assert uploaded and refused, "the push must have stopped half-way: some objects in, the rest refused"
    assert refs(bare) == {}  # no tag, no commit
    print(f"\nDVC push half-way: {len(uploaded)} object(s) uploaded, {len(refused)} refused; no tag, no commit")
    again = make_repo(bare, s3, tmp_path / "retry", project="halfway")
    result = again.publish(files, project="halfway", run_id="scheduled__1", message="x")
    assert result["created"] and result["tag"] == "halfway/v1"
    assert read_files(again.checkout("halfway/v1", tmp_path / "co") / "data") == V1


# -- the export's worker killed (kill -9 of its process group) at points through the publish -------------------------
KILL_CHILD = r"""
import json, sys
from pathlib import Path
from labelops.export.dvc_repo import DatasetRepo
a = json.loads(sys.argv[1])
repo = DatasetRepo(a["bare"], path="datasets/killed", s3_env=a["env"], workdir=Path(a["work"]),
                   remote_url="s3://labelops/killed/dvc/")
print(json.dumps(repo.publish(Path(a["files"]), project="killed", run_id="scheduled__1", message="x")))
"""


def test_an_export_killed_mid_publish_makes_exactly_one_version_on_retry(s3, tmp_path):
    """The worker running the export dies (SIGKILL to its process group, DVC and git included) after 1, 2, 3, 4
    and 5 s of the publish: clone, dvc add, dvc push, the verifying pull, the atomic git push. Then the task's
    retry runs to the end. Exactly one tag and one commit reach the dataset repository, and the version pulls back
    byte for byte."""
    import shutil
    import subprocess
    import sys

    from labelops.export.dvc_repo import dvc_binary

    if shutil.which(dvc_binary()) is None:
        pytest.skip("no DVC CLI: `make setup` builds .venv-dvc")
    from test_export_dvc import V1, bare_repo, git, make_repo, read_files, refs, s3_env, write_files

    bare = bare_repo(tmp_path / "datasets.git")
    arg = json.dumps({"bare": str(bare), "env": s3_env(s3), "work": str(tmp_path / "work"),
                      "files": str(write_files(tmp_path / "files", V1))})
    killed_at = kill_repeatedly([sys.executable, "-c", KILL_CHILD, arg], (1.0, 2.0, 3.0, 4.0, 5.0))
    final = subprocess.run([sys.executable, "-c", KILL_CHILD, arg], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    result = json.loads(final.stdout.strip().splitlines()[-1])
    print(f"\nexport killed after {killed_at} s; the retry: {result['reason'] or 'created ' + result['tag']}")
    assert killed_at, "no run was killed mid-publish: the case tests nothing"
    tags = [r for r in refs(bare) if r.startswith("refs/tags/")]
    assert tags == ["refs/tags/killed/v1"], refs(bare)
    assert result["tag"] == "killed/v1"
    subjects = git(bare, "log", "--all", "--format=%s").splitlines()
    assert subjects.count("x") == 1, subjects  # the export's commit (message "x"), once
    repo = make_repo(bare, s3, tmp_path / "check", project="killed")
    assert read_files(repo.checkout("killed/v1", tmp_path / "co") / "data") == V1


# -- the agreement pull's worker killed mid-pull --------------------------------------------------------------------
PULL_CHILD = r"""
import json, sys
import boto3
from label_studio_sdk.client import LabelStudio
from labelops.agreement import pipeline
from labelops.agreement.pull import LabelStudioSource
from labelops.config import load_project
from labelops.dispatch.label_studio import label_config_names
from labelops.storage import S3Store
a = json.loads(sys.argv[1])
project = load_project(a["config"])
store = S3Store(boto3.client("s3", endpoint_url=a["s3"], region_name="us-east-1", aws_access_key_id="test",
                             aws_secret_access_key="test"), "labelops")
source = LabelStudioSource(LabelStudio(base_url=a["ls"], api_key=a["token"]), {"verify": a["pid"]},
                           label_config_names(project.label_config_xml), chunk_tasks=100)
print("pulling", flush=True)
print(json.dumps(pipeline.pull(store, project, "night1", source)))
"""


def test_an_agreement_pull_killed_mid_pull_lands_every_annotation_once_on_retry(
        s3, label_studio, label_studio_endpoint, tmp_path, monkeypatch):
    """600 annotated tasks read in 6 snapshots; the worker is killed (SIGKILL, process group) 0.3-1.8 s into
    the pull, then the task's retry (the same run) runs to the end: the run's snapshot holds every annotation
    exactly once, and no snapshot or temporary view is left in Label Studio."""
    import subprocess
    import sys

    from conftest import write_dagtest_project
    from labelops.agreement import pipeline
    from labelops.dispatch.label_studio import label_config_names
    from labelops.dispatch.pipeline import Paths as DispatchPaths
    from labelops.storage import S3Store

    project = write_dagtest_project(tmp_path, monkeypatch)
    pid, _, tasks = verify_queue(label_studio, 600)
    assert import_annotated(label_studio, pid, label_config_names(project.label_config_xml), tasks) == 900
    store = S3Store(s3, "labelops")
    store.put_json(DispatchPaths(project, "x").label_studio, {"verify": pid})
    url, token = label_studio_endpoint
    arg = json.dumps({"config": str(project.source_file), "s3": s3.meta.endpoint_url, "ls": url, "token": token,
                      "pid": pid})
    # seconds into the pull itself (the child says when its imports are done); stop once an attempt finished
    killed_at = kill_repeatedly([sys.executable, "-c", PULL_CHILD, arg], (0.3, 0.8, 1.3, 1.8), ready="pulling",
                                finished=lambda: store.get_json(pipeline.Paths(project, "night1").pull) is not None)
    orphans = pull_leftovers(label_studio, pid)[0]  # snapshots the killed attempts left
    t0 = time.monotonic()
    final = subprocess.run([sys.executable, "-c", PULL_CHILD, arg], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    record = json.loads(final.stdout.strip().splitlines()[-1])
    print(f"\nagreement pull killed after {killed_at} s ({orphans} snapshot(s) left behind by the kills); the "
          f"retry took {time.monotonic() - t0:.1f} s and landed {record['rows']} rows")
    assert killed_at, "no pull was killed mid-way: the case tests nothing"
    rows = pipeline.read_rows(store, pipeline.snapshot_keys(store, pipeline.Paths(project, "night1")))
    ids = [r["annotation_id"] for r in rows]
    assert record["rows"] == len(ids) == len(set(ids)) == 900
    assert sorted({r["task_key"] for r in rows}) == sorted(t.key for t in tasks)
    assert pull_leftovers(label_studio, pid) == (0, 0)


# -- the alert email through a fault-injecting SMTP proxy -------------------------------------------------------------
# name -> (action, options). The client's timeout is 3 s.
SMTP_CASES = {
    "SMTP server down for one run": ("down", {"times": 1}),
    "SMTP server down for two runs": ("down", {"times": 2}),
    "421 at the greeting": ("reply", {}),
    "reset after the server took the message": ("reset_after_data", {}),
    "250 after the client timeout": ("late", {"seconds": 5.0}),
    "slow replies within the timeout": ("slow", {"seconds": 0.3}),
}
# delivered but not heard: the retry sends the same message again (same Message-ID, shown once by mail clients)
SMTP_AMBIGUOUS = {"reset after the server took the message", "250 after the client timeout"}


@pytest.fixture(scope="module")
def smtp_results(s3, airflow_db, tmp_path_factory):
    """Each case: a night of a project whose kappa is far below its threshold, its alert task (`alert_once`) run
    through the proxy with Airflow's retries (three runs), then the same task once more (a cleared run)."""
    from conftest import mailcatcher, smtp_connection, write_dagtest_project
    from fault_proxy import SmtpFaultProxy
    from labelops.agreement import pipeline
    from labelops.storage import S3Store
    from labelops_dags import alert_once
    from test_agreement_dag import disagreeing_rows, received
    from test_export_dag import Rows

    base = tmp_path_factory.mktemp("smtp_faults")
    (base / "projects").mkdir()
    (base / "mail").mkdir()
    store = S3Store(s3, "labelops")
    out = {}
    with pytest.MonkeyPatch.context() as mp, mailcatcher(base / "mail") as upstream:
        project = write_dagtest_project(base / "projects", mp)
        for n, (name, (action, opts)) in enumerate(SMTP_CASES.items()):
            night = f"manual__night{n}"
            pipeline.pull(store, project, night, Rows(disagreeing_rows()), full=True)
            assert pipeline.compute(store, project, night)["alerts"] >= 1
            message_id = pipeline.pending_alert(store, project, night)["message_id"]
            before = len(received(base / "mail"))
            with SmtpFaultProxy(upstream) as proxy:
                proxy.add(action, **opts)
                mp.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_connection(*proxy.address, timeout=3))
                runs, outcome, _ = with_retries(lambda: alert_once(project, store, night))
                again = alert_once(project, store, night)  # the run cleared and run once more
                fired = len(proxy.fired())
            # the catcher writes a message before it answers 250: every copy of this case is on disk by now
            delivered = received(base / "mail")[before:]
            out[name] = {"fired": fired, "runs": runs, "outcome": outcome, "copies": len(delivered),
                         "emails": len({m["Message-ID"] for m in delivered}),
                         "same_id": all(m["Message-ID"] == message_id for m in delivered), "again": again["sent"],
                         "marked": pipeline.pending_alert(store, project, night) is None}
    print_table("fault (alert email, SMTP)", {"fired": "injected", "runs": "runs", "outcome": "outcome",
                                              "emails": "emails (Message-IDs)", "copies": "copies delivered",
                                              "again": "sent by a re-run"}, out)
    return out


@pytest.mark.parametrize("name", list(SMTP_CASES))
def test_an_smtp_fault_ends_with_the_alert_sent_and_marked_once(smtp_results, name):
    r = smtp_results[name]
    assert r["fired"] >= 1, "the fault was never injected: the case tests nothing"
    assert r["outcome"] == "success" and r["marked"], r
    assert r["emails"] == 1 and r["same_id"], "lost" if r["emails"] == 0 else r  # never lost, one Message-ID
    assert r["again"] is False, "a re-run after success must send nothing"
    faulty_runs = SMTP_CASES[name][1].get("times", 1) if SMTP_CASES[name][0] != "slow" else 0
    assert r["runs"] == 1 + faulty_runs, r
    # a message the server took but whose answer was lost is sent again by the retry: two copies, one Message-ID;
    # every other fault delivers exactly one copy
    assert r["copies"] == (2 if name in SMTP_AMBIGUOUS else 1), r
