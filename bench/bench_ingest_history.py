"""Does an ingest run cost more when the project has a long history? The same last 10% of the corpus is
ingested twice: on an empty history (baseline) and after the first 90% was ingested by an earlier run (ours).
Reports the time and peak RSS of that one run; the difference is what the history (the ledger and the exact and
near-duplicate indexes loaded from S3) costs. LABELOPS_BENCH_N sets the corpus size (default 1,000,000)."""

from __future__ import annotations

import json
import subprocess
import sys

from bench_ingest import N, Setup
from harness import Benchmark

RESULTS: dict[str, dict] = {}
_setup: Setup | None = None


def _get() -> Setup:
    global _setup
    if _setup is None:
        _setup = Setup()
    return _setup


def _run(setup: Setup, prefix: str, objects, run_id: str) -> dict:
    from bench_ingest import _client

    client = _client(setup.endpoint)
    for name, body in objects:
        client.put_object(Bucket="labelops", Key=f"{prefix}raw/{name}", Body=body)
    out = subprocess.run([sys.executable, str(__import__("bench_ingest").__file__), "--side", "ours", "--endpoint",
                          setup.endpoint, "--prefix", prefix, "--run-id", run_id], capture_output=True, text=True,
                         timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    if out.returncode or not lines:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(lines[-1][6:])


def _side(which: str) -> float:
    setup = _get()
    cut = int(len(setup.objects) * 0.9)
    head, tail = setup.objects[:cut], setup.objects[cut:]
    prefix = f"history_{which}/"
    if which == "ours":
        RESULTS["history_run"] = _run(setup, prefix, head, "history")
    RESULTS[which] = _run(setup, prefix, tail, "new")
    return RESULTS[which]["seconds"]


BENCHMARKS = [Benchmark(f"ingest of the last 10% of {N:,} records: after the first 90% vs on an empty history",
                        "empty history", lambda: _side("baseline"), lambda: _side("ours"), repeat=1, unit="s",
                        scale=1.0)]


def report() -> str:
    rows = ["| history | records in this run | seconds | peak RSS | staged |", "|---|---|---|---|---|"]
    for label, key in (("empty", "baseline"), ("after 90% ingested", "ours")):
        r = RESULTS.get(key)
        if r:
            rows.append(f"| {label} | {r['manifest']['records_read']:,} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} MB "
                        f"| {r['manifest']['records_staged']:,} |")
    if "history_run" in RESULTS:
        h = RESULTS["history_run"]
        rows.append(f"| (the history run itself) | {h['manifest']['records_read']:,} | {h['seconds']:.1f} | "
                    f"{h['peak_mb']:,.0f} MB | {h['manifest']['records_staged']:,} |")
    if _setup:
        _setup.close()
    return "\n".join(rows)
