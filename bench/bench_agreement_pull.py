"""The nightly pull from a real Label Studio: LABELOPS_BENCH_PULL_N annotated tasks (default 50,000; each with a
prediction and one or two annotations by different users, Banking77 texts), read back into annotation rows.

- ours: `labelops.agreement.pull.LabelStudioPull`, export snapshots cut into task-id ranges
  (`agreement.pull_chunk_tasks`, default 5,000; `agreement.pull_workers`, default 2, built at once), predictions
  as ids only;
- baseline: the SDK's page-by-page listing `tasks.list(fields="all", page_size=1000)`, what a script does first.
- a third figure: ours incremental, after 1% of the tasks got a new annotation (the nightly case).

The issue's target: the full pull of 50,000 annotated tasks under 60 s. Label Studio runs in its own venv as in
the local stack (SQLite), on free ports, stopped at the end. The tasks are created with their annotations in the
import payload (fast), not through the annotator simulator.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

from bench_dispatch import LocalServices
from harness import Benchmark

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "tools"))
N = int(os.environ.get("LABELOPS_BENCH_PULL_N", "50000"))
RESULTS: dict[str, float] = {}


class Setup(LocalServices):
    def __init__(self) -> None:
        from labelops.config import load_project
        from labelops.dispatch.label_studio import label_config_names

        super().__init__("labelops-bench-pull-", ("label_studio",))
        project = load_project(REPO / "include" / "configs" / "projects" / "banking_support.yaml")
        self.names = label_config_names(project.label_config_xml)
        users = [self.client.users.create(username=f"bench{i}", email=f"bench{i}@sim.labelops.local").id
                 for i in range(3)]
        with open(REPO / "data" / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        labels = sorted({r["category"] for r in rows})
        self.pid = self.client.projects.create(title="bench pull", label_config=project.label_config_xml).id
        t0 = time.time()
        chunk = []
        for i in range(N):
            row = rows[i % len(rows)]

            def result(label):
                return [{"from_name": self.names.choices, "to_name": self.names.object_name, "type": "choices",
                         "value": {"choices": [label]}}]

            anns = [{"result": result(row["category"]), "completed_by": users[i % 3], "lead_time": 5.0 + i % 7}]
            if i % 2 == 0:  # half of the tasks have a second annotator, sometimes disagreeing
                other = row["category"] if i % 10 else labels[(labels.index(row["category"]) + 1) % len(labels)]
                anns.append({"result": result(other), "completed_by": users[(i + 1) % 3], "lead_time": 7.0})
            chunk.append({"data": {"text": f"{row['text']} (#{i})", "labelops_key": f"bench:r{i:07d}",
                                   "record_id": f"r{i:07d}"},
                          "annotations": anns,
                          "predictions": [{"model_version": "intent:bench", "score": 0.7,
                                           "result": [{**result(row["category"])[0], "score": 0.7}]}]})
            if len(chunk) == 5000:
                self.client.projects.import_tasks(id=self.pid, request=chunk)
                chunk = []
        if chunk:
            self.client.projects.import_tasks(id=self.pid, request=chunk)
        self.n_annotations = N + (N + 1) // 2
        RESULTS["seed_seconds"] = time.time() - t0

    def ours(self, since: str | None = None) -> tuple[float, int]:
        from labelops.agreement.pull import LabelStudioPull

        t = time.perf_counter()
        puller = LabelStudioPull(self.client, choices=self.names.choices, labels=self.names.labels)
        n = sum(1 for _ in puller.annotations("main", self.pid, since))
        self.watermark = puller.watermark
        return time.perf_counter() - t, n

    def baseline(self) -> tuple[float, int]:
        t = time.perf_counter()
        n = sum(len(task.annotations or []) for task in
                self.client.tasks.list(project=self.pid, page_size=1000, fields="all"))
        return time.perf_counter() - t, n


_setup: Setup | None = None


def setup() -> Setup:
    global _setup
    if _setup is None:
        _setup = Setup()
    return _setup


def _ours() -> float:
    s = setup()
    seconds, n = s.ours()
    assert n == s.n_annotations, (n, s.n_annotations)
    RESULTS.setdefault("ours", []).append(seconds)  # type: ignore[union-attr]
    return seconds


def _baseline() -> float:
    s = setup()
    seconds, n = s.baseline()
    assert n == s.n_annotations, (n, s.n_annotations)
    RESULTS.setdefault("baseline", []).append(seconds)  # type: ignore[union-attr]
    return seconds


BENCHMARKS = [Benchmark(f"Label Studio pull, {N:,} annotated tasks", "SDK tasks.list(fields=all)", _baseline,
                        _ours, repeat=1, unit="s", scale=1.0)]


def report() -> str:
    from labelops.agreement.pull import iso

    s = setup()
    # the nightly case: 1% of the tasks get one more annotation, then an incremental pull from the watermark
    since = s.watermark
    time.sleep(1.1)
    user = s.client.users.create(username="bench-night", email="night@sim.labelops.local").id
    tasks = list(s.client.tasks.list(project=s.pid, page_size=max(1, N // 100), fields="task_only").items)
    for t in tasks:
        s.client.annotations.create(id=t.id, completed_by=user, result=[
            {"from_name": s.names.choices, "to_name": s.names.object_name, "type": "choices",
             "value": {"choices": ["card_arrival"]}}])
    seconds, n = s.ours(iso(since))
    ours = min(RESULTS["ours"])
    lines = [
        f"Label Studio pull ({N:,} tasks, {s.n_annotations:,} annotations; seeding took "
        f"{RESULTS['seed_seconds']:.0f} s):",
        f"- full pull, ours: {ours:.1f} s = {N / ours:,.0f} tasks/s (target for 50,000 tasks: < 60 s: "
        f"{'met' if ours * 50_000 / N < 60 else 'MISSED'}); SDK listing: {min(RESULTS['baseline']):.1f} s = "
        f"{N / min(RESULTS['baseline']):,.0f} tasks/s",
        f"- nightly incremental pull after {len(tasks):,} new annotations: {seconds:.1f} s, {n:,} rows "
        f"(every annotation of the {len(tasks):,} touched tasks)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps({"ours": _ours(), "baseline": _baseline()}))
    print(report())
