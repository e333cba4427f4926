"""Does an ingest run cost more when the project has a long history? The same last 10% of the corpus is
ingested twice: on an empty history (baseline) and after the first 90% was ingested by an earlier run (ours).
Reports the time and peak RSS of that one run; the difference is what the history (the ledger and the exact and
near-duplicate indexes loaded from S3) costs. LABELOPS_BENCH_N sets the corpus size (default 1,000,000)."""

from __future__ import annotations

from bench_ingest import N, shared_setup
from harness import Benchmark

RESULTS: dict[str, dict] = {}


def _side(which: str) -> float:
    setup = shared_setup()
    cut = int(len(setup.objects) * 0.9)
    head, tail = setup.objects[:cut], setup.objects[cut:]
    prefix = f"history_{which}/"
    if which == "ours":
        setup.upload(prefix, head)
        RESULTS["history_run"] = setup.run_child("ours", prefix, "history")
    setup.upload(prefix, tail)
    RESULTS[which] = setup.run_child("ours", prefix, "new")
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
    return "\n".join(rows)
