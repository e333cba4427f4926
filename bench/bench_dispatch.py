"""Dispatch throughput into a real Label Studio: LABELOPS_BENCH_DISPATCH_N tasks (default 100,000) with
predictions, created by our exactly-once importer (chunks of `dispatch.chunk_size`, SDK retries off, the run
ledger in S3 on a moto server: one `started` and one `done` object per chunk) against a bare bulk
`import_tasks` of the same payload in one request (the physical limit: no ledger, no idempotency), each into a
fresh project of the same Label Studio. A third figure: one task at a time (`tasks.create` + `predictions.create`,
what a naive script does), timed on a sample (LABELOPS_BENCH_DISPATCH_NAIVE, default 500) and reported as tasks/s.

Label Studio runs in its own venv as in the local stack (SQLite), started for the benchmark on free ports and
stopped at the end.
"""

from __future__ import annotations

import atexit
import csv
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from harness import Benchmark

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "tools"))
N = int(os.environ.get("LABELOPS_BENCH_DISPATCH_N", "100000"))
NAIVE = int(os.environ.get("LABELOPS_BENCH_DISPATCH_NAIVE", "500"))
RESULTS: dict[str, float] = {}


def _free_base() -> int:
    for base in range(21000, 30000, 10):
        ok = True
        for port in range(base, base + 7):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


class LocalServices:
    """Some services of the local stack (Label Studio in its venv, S3 ...) on free ports in a temporary folder,
    stopped and removed at exit; `client` is an SDK client on its Label Studio."""

    def __init__(self, prefix: str, services: tuple[str, ...] = ("s3", "label_studio")) -> None:
        from label_studio_sdk.client import LabelStudio
        from stack import Stack

        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.stack = Stack(state=self.tmp, port_base=_free_base())
        for d in (self.stack.state, self.stack.logs, self.stack.mail_dir):
            d.mkdir(parents=True, exist_ok=True)
        atexit.register(self.close)
        for svc in self.stack.services():
            if svc.name in services:
                self.stack.start(svc)
        if "s3" in services:
            self.stack.create_buckets()
        self.client = LabelStudio(base_url=self.stack.url("label_studio"),
                                  api_key=self.stack.secrets()["label_studio_token"], timeout=3600)

    def close(self) -> None:
        self.stack.down()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Setup(LocalServices):
    def __init__(self) -> None:
        from labelops.config import load_project
        from labelops.dispatch.label_studio import label_config_names
        from labelops.dispatch.tasks import DispatchTask, Prediction, task_key

        super().__init__("labelops-bench-dispatch-")  # self.client: an SDK client with a long timeout
        self.project = load_project(REPO / "include" / "configs" / "projects" / "banking_support.yaml")
        self.names = label_config_names(self.project.label_config_xml)
        with open(REPO / "data" / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        self.tasks = [DispatchTask(key=task_key("bench", f"r{i:07d}"), record_id=f"r{i:07d}",
                                   text=f"{rows[i % len(rows)]['text']} (#{i})", route="verify",
                                   prediction=Prediction("intent:bench", rows[i % len(rows)]["category"],
                                                         0.5 + (i % 50) / 100))
                      for i in range(N)]
        self.runs = 0

    def fresh_project(self, what: str) -> int:
        self.runs += 1
        return self.client.projects.create(title=f"bench {what} {self.runs}",
                                           label_config=self.project.label_config_xml).id

    def bulk(self) -> float:
        from labelops.dispatch.label_studio import task_payload

        pid = self.fresh_project("bulk")
        payload = [task_payload(t, self.names) for t in self.tasks]
        t0 = time.perf_counter()
        self.client.projects.import_tasks(id=pid, request=payload, request_options={"max_retries": 0})
        seconds = time.perf_counter() - t0
        assert self.client.projects.get(id=pid).task_number == N
        RESULTS["bulk"] = seconds
        return seconds

    def ours(self) -> float:
        from labelops.dispatch.label_studio import Importer
        from labelops.dispatch.pipeline import S3Ledger
        from labelops.storage import S3Store

        pid = self.fresh_project("ours")
        ledger = S3Ledger(S3Store(self.stack.s3_client(), "labelops"), f"bench/run-{self.runs}/ledger/")
        importer = Importer(self.client, self.names, ledger, chunk_size=self.project.spec.dispatch.chunk_size)
        t0 = time.perf_counter()
        result = importer.run("verify", pid, self.tasks)
        seconds = time.perf_counter() - t0
        assert result["created"] == N and self.client.projects.get(id=pid).task_number == N
        RESULTS["ours"] = seconds
        return seconds

    def naive(self) -> float:
        from labelops.dispatch.label_studio import prediction_payload, task_payload

        pid = self.fresh_project("naive")
        sample = self.tasks[:NAIVE]
        t0 = time.perf_counter()
        for t in sample:
            body = task_payload(t, self.names)
            created = self.client.tasks.create(project=pid, data=body["data"])
            pred = prediction_payload(t.prediction, self.names)
            self.client.predictions.create(task=created.id, result=pred["result"], score=pred["score"],
                                           model_version=pred["model_version"])
        RESULTS["naive"] = time.perf_counter() - t0
        return RESULTS["naive"]

_setup: Setup | None = None


def setup() -> Setup:
    global _setup
    if _setup is None:
        _setup = Setup()
    return _setup


BENCHMARKS = [Benchmark(f"dispatch {N:,} pre-annotated tasks to Label Studio (chunked, ledgered, exactly once)",
                        "one bare bulk import_tasks", lambda: setup().bulk(), lambda: setup().ours(), repeat=1,
                        unit="s", scale=1.0)]


def report() -> str:
    s = setup()
    s.naive()
    chunk = s.project.spec.dispatch.chunk_size
    rows = ["| dispatch side | tasks | seconds | tasks/s |", "|---|---|---|---|"]
    for label, key, n in ((f"ours (chunks of {chunk}, S3 ledger)", "ours", N), ("bare bulk import, one request",
                                                                               "bulk", N),
                          ("one task at a time (naive script)", "naive", NAIVE)):
        if key in RESULTS:
            rows.append(f"| {label} | {n:,} | {RESULTS[key]:.1f} | {n / RESULTS[key]:,.0f} |")
    return "\n".join(rows)
