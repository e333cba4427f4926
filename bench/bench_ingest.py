"""Ingest end to end on the local S3: 1,000,000 short utterances (bench/corpus.py: real Banking77 and SNIPS
utterances with variations and planted exact and near duplicates) in JSONL objects on a moto server, through
read -> normalise -> validate (Great Expectations) -> exact and near dedup -> stage (Parquet) -> manifest.

Ours and the baseline run the same pipeline; the baseline's near-duplicate step is datasketch's MinHashLSH with
default settings (threshold from the config, 128 permutations, MinHash.bulk over word tokens). Each side runs in
its own process, whose peak RSS is reported. LABELOPS_BENCH_N sets the size (default 1,000,000).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from harness import Benchmark, s3_client, start_moto

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "include"))
N = int(os.environ.get("LABELOPS_BENCH_N", "1000000"))
RESULTS: dict[str, dict] = {}


class DatasketchNearIndex:
    """The baseline: datasketch MinHashLSH, default settings, one MinHash per record (MinHash.bulk)."""

    def __init__(self, threshold: float) -> None:
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=128)

    def check_and_add(self, ids: list[str], texts: list[str]) -> list[str | None]:
        from datasketch import MinHash

        out: list[str | None] = []
        chunk = 20_000
        for lo in range(0, len(texts), chunk):
            sets = [[w.encode() for w in t.lower().split()] or [b""] for t in texts[lo:lo + chunk]]
            for rid, mh in zip(ids[lo:lo + chunk], MinHash.bulk(sets, num_perm=128)):
                found = self.lsh.query(mh)
                if found:
                    out.append(found[0])
                else:
                    self.lsh.insert(rid, mh)
                    out.append(None)
        return out

    def to_bytes(self) -> bytes:
        return b""


def _project(prefix: str):
    sys.path.insert(0, str(REPO / "include"))
    from labelops.config import ProjectConfig, Storage, load_project

    base = load_project(REPO / "include" / "configs" / "projects" / "banking_support.yaml")
    storage = Storage(bucket="labelops", source_prefix=prefix + "raw/", project_prefix=prefix)
    return ProjectConfig(spec=base.spec.model_copy(update={"storage": storage, "name": prefix.strip("/")}),
                         labels=base.labels, source_file=base.source_file, label_config_xml=base.label_config_xml)


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's VmHWM belongs to the address space, so it starts afresh at exec;
    ru_maxrss does not: it keeps the parent's RSS at fork time (here the benchmark's ~1 GB corpus), which would
    hide any child peak below that. ru_maxrss only where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(side: str, endpoint: str, prefix: str, run_id: str = "bench") -> None:
    """One side, in its own process: plan + run, then print the figures as JSON."""
    sys.path.insert(0, str(REPO / "include"))
    from labelops.ingest.pipeline import plan, run
    from labelops.storage import S3Store

    project = _project(prefix)
    store = S3Store(s3_client(endpoint), "labelops")
    near = DatasketchNearIndex(project.spec.thresholds.near_duplicate_jaccard) if side == "baseline" else None
    started = time.perf_counter()
    plan(store, project, run_id)
    manifest = run(store, project, run_id, near_index=near)
    seconds = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    print("RESULT" + json.dumps({"seconds": seconds, "peak_mb": peak_mb, "manifest": {
        k: manifest[k] for k in ("records_read", "records_staged", "duplicates_exact", "duplicates_near",
                                 "quarantined", "duplicates_uri")}}))


class Setup:
    """Starts a moto server, builds the corpus and uploads it once per side (each side its own prefix)."""

    def __init__(self) -> None:
        from corpus import build_corpus, write_jsonl_objects

        self.endpoint, self.server = start_moto()
        records, self.truth = build_corpus(N)
        self.text_of = {r["source_id"]: r["text"] for r in records}
        self.objects = write_jsonl_objects(records, max(10, N // 50_000))
        self.where: dict[tuple[str, int], str] = {}
        for name, body in self.objects:
            for line_no, line in enumerate(body.splitlines(), 1):
                self.where[(name, line_no)] = json.loads(line)["source_id"]
        self.runs = {"ours": 0, "baseline": 0}

    def upload(self, prefix: str, objects: list[tuple[str, bytes]] | None = None) -> None:
        client = s3_client(self.endpoint)
        for name, body in self.objects if objects is None else objects:
            client.put_object(Bucket="labelops", Key=f"{prefix}raw/{name}", Body=body)

    def run_child(self, side: str, prefix: str, run_id: str = "bench") -> dict:
        """One ingest run of what is under prefix, in its own process (so its peak RSS is its own)."""
        out = subprocess.run([sys.executable, __file__, "--side", side, "--endpoint", self.endpoint,
                              "--prefix", prefix, "--run-id", run_id], capture_output=True, text=True, timeout=3600)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
        if out.returncode or not lines:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(lines[-1][6:])

    def side(self, which: str) -> float:
        self.runs[which] += 1
        prefix = f"bench_{which}_{self.runs[which]}/"
        self.upload(prefix)
        result = self.run_child(which, prefix)
        result["recall_near"], result["flagged_distinct"] = self.recall(prefix, result["manifest"]["duplicates_uri"])
        RESULTS[which] = result
        return result["seconds"]

    def recall(self, prefix: str, uri: str) -> tuple[float, int]:
        client = s3_client(self.endpoint)
        body = client.get_object(Bucket="labelops", Key=uri.split("/", 3)[3])["Body"].read()
        flagged = set()
        for line in body.splitlines():
            d = json.loads(line)
            flagged.add(self.where[(d["source_key"][len(prefix) + len("raw/"):], d["source_line"])])
        near = self.truth["near_pairs"]
        planted = {dup for dup, _ in near} | {dup for dup, _ in self.truth["exact_pairs"]}
        if not hasattr(self, "similar"):  # planted pairs that really are near duplicates (exact Jaccard >= threshold)
            from labelops.ingest.dedup import NearDuplicateIndex, normalise_text

            project = _project("x/")
            index = NearDuplicateIndex(threshold=project.spec.thresholds.near_duplicate_jaccard)
            sims = index.similarities([normalise_text(self.text_of[d]) for d, _ in near],
                                      [normalise_text(self.text_of[o]) for _, o in near])
            self.similar = [pair for pair, j in zip(near, sims) if j >= index.threshold]
        recall_all = sum(dup in flagged for dup, _ in near) / max(1, len(near))
        recall_similar = sum(dup in flagged for dup, _ in self.similar) / max(1, len(self.similar))
        return (recall_all, recall_similar), len(flagged - planted)

    def close(self) -> None:
        if self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=30)


_setup: Setup | None = None


def shared_setup() -> Setup:
    """One corpus and one moto server for every benchmark module of a `make bench` run (closed at exit)."""
    global _setup
    if _setup is None:
        _setup = Setup()
    return _setup


BENCHMARKS = [
    Benchmark(f"ingest end to end, {N:,} records (read, validate, dedup, stage)", "datasketch MinHashLSH near-dup",
              lambda: shared_setup().side("baseline"), lambda: shared_setup().side("ours"), repeat=1, unit="s", scale=1.0),
]


def report() -> str:
    rows = ["| ingest side | records/s | seconds | peak RSS | staged | exact dups | near dups | recall, planted near "
            "pairs with J >= threshold | recall, all planted near pairs | flagged but not planted |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for side in ("baseline", "ours"):
        r = RESULTS.get(side)
        if r:
            m = r["manifest"]
            rows.append(f"| {side} | {m['records_read'] / r['seconds']:,.0f} | {r['seconds']:.1f} | "
                        f"{r['peak_mb']:,.0f} MB | {m['records_staged']:,} | {m['duplicates_exact']:,} | "
                        f"{m['duplicates_near']:,} | {r['recall_near'][1]:.3f} | {r['recall_near'][0]:.3f} | "
                        f"{r['flagged_distinct']:,} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--side", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--run-id", default="bench")
    a = parser.parse_args()
    sys.path.insert(0, str(HERE))
    child(a.side, a.endpoint, a.prefix, a.run_id)
