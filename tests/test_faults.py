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
