"""Faults injected for real between the pipeline and Label Studio: a fault-injecting reverse proxy
(tools/fault_proxy.py) in front of the stack's Label Studio answers 503 or 429 with Retry-After, resets the
connection before or after the server applied the request, delays an answer past the client's timeout, or is
slow. Each case imports one queue through the proxy with the dispatch's Importer (its own retries, then Airflow's:
the run is started again from the ledger while it fails, up to three runs), then counts the tasks on Label Studio
directly: no key twice, none missing. The table is printed (`pytest -s`)."""

from __future__ import annotations

import pytest
from label_studio_sdk.client import LabelStudio

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
    "answer after the client timeout": ("POST", IMPORT, "late", {"seconds": 4.0}),
    "slow answer within the timeout": ("POST", IMPORT, "slow", {"seconds": 1.0}),
    "502 on the reconcile's listing": ("GET", r"^/api/tasks", "status", {"status": 502, "times": 2}),
    "two faults in a row": ("POST", IMPORT, "reset_after", {"times": 2}),
}
N_TASKS, CHUNK = 120, 50


@pytest.fixture(scope="module")
def results(label_studio, label_studio_endpoint):
    url, token = label_studio_endpoint
    out = {}
    for name, (method, path, action, opts) in CASES.items():
        pid, names, tasks = verify_queue(label_studio, N_TASKS)
        with FaultProxy(url) as proxy:
            opts = dict(opts)
            proxy.add(method, path, action, times=opts.pop("times", 1), **opts)
            client = LabelStudio(base_url=proxy.url, api_key=token, timeout=2.0)
            ledger, runs, outcome = MemoryLedger(), 0, "failed"
            while runs < 3:  # Airflow's retries: the task runs again, from the same ledger
                runs += 1
                try:
                    Importer(client, names, ledger, chunk_size=CHUNK, backoff=0.2).run("verify", pid, tasks)
                    outcome = "success"
                    break
                except Exception as exc:  # noqa: BLE001  (the run failed; the next one retries)
                    outcome = f"failed: {type(exc).__name__}"
            fired = len(proxy.fired())
        keys = [t.data[KEY_FIELD] for t in project_tasks(label_studio, pid)]
        wanted = {t.key for t in tasks}
        out[name] = {"runs": runs, "outcome": outcome, "fired": fired, "tasks": len(keys),
                     "duplicates": len(keys) - len(set(keys)), "missing": len(wanted - set(keys))}
    rows = ["| fault | injected | runs | outcome | tasks | duplicates | losses |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {n} | {r['fired']} | {r['runs']} | {r['outcome']} | {r['tasks']} | {r['duplicates']} | "
             f"{r['missing']} |" for n, r in out.items()]
    print("\n" + "\n".join(rows))
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
    user = label_studio.users.whoami().id

    def result(label):
        return [{"from_name": names.choices, "to_name": names.object_name, "type": "choices",
                 "value": {"choices": [label]}}]

    label_studio.projects.import_tasks(id=pid, request=[
        {"data": {"text": t.text, KEY_FIELD: t.key, "record_id": t.record_id},
         "annotations": [{"result": result("card_arrival"), "completed_by": user}]
         + ([{"result": result("lost_or_stolen_card"), "completed_by": user}] if i % 2 == 0 else [])}
        for i, t in enumerate(tasks)])
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
            runs, rows, outcome = 0, None, "failed"
            while runs < 3:
                runs += 1
                try:
                    rows = pull(client)
                    outcome = "success"
                    break
                except Exception as exc:  # noqa: BLE001
                    outcome = f"failed: {type(exc).__name__}"
            fired = len(proxy.fired())
        left = len(list(label_studio.projects.exports.list(id=pid)))  # after the last run
        views = len([v for v in label_studio.views.list(project=pid)
                     if "labelops pull" in (v.data or {}).get("title", "")])
        ids = [r[0] for r in rows or []]
        out[name] = {"fired": fired, "runs": runs, "outcome": outcome, "rows": len(ids),
                     "duplicates": len(ids) - len(set(ids)), "missing": len({r[0] for r in truth} - set(ids)),
                     "same": rows == truth, "exports_left": left, "views_left": views}
        for e in label_studio.projects.exports.list(id=pid):  # the next case starts clean
            label_studio.projects.exports.delete(id=pid, export_pk=e.id)
    rows = ["| fault (agreement pull) | injected | runs | outcome | rows | duplicates | losses | snapshots left |",
            "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {n} | {r['fired']} | {r['runs']} | {r['outcome']} | {r['rows']} | {r['duplicates']} | {r['missing']} "
             f"| {r['exports_left']} |" for n, r in out.items()]
    print("\n" + "\n".join(rows))
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
