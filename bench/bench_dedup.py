"""Near-duplicate detection on the synthetic ingest corpus (bench/corpus.py): ours (NearDuplicateIndex, with word
edits as the projects' default config has it) against datasketch's MinHashLSH with its default settings (threshold
0.85, num_perm 128, MinHash.bulk). The extra table also has ours with the Jaccard rule alone (word_edits off).

Both sides see the same records: the corpus is normalised and exact duplicates are removed first (ExactIndex, not
timed in the near-dup rows), then each record is checked in arrival order against the records kept so far and
kept if it has no near duplicate (datasketch: ``query`` then ``insert``; ours: one ``check_and_add`` call). Both
use the same features (char 3-grams of the case-folded, punctuation-free text); the baseline's time includes its
Python shingling, ours includes its own. datasketch at ~8.5k records/s would need minutes for 1M records, so:

* row 1: baseline and ours on the first LABELOPS_BENCH_SUB records of the stream (default 100,000);
* row 2: ours on all LABELOPS_BENCH_N records (default 1,000,000); its baseline figure is the row-1 datasketch
  time scaled linearly to N (labelled as such, not measured);
* an extra table: throughput; recall on the planted near-duplicate pairs: those whose exact Jaccard reaches the
  threshold and whose original was kept (is in the index: what the index must find), then all pairs with
  J >= threshold, then all planted pairs whatever their Jaccard (the issue's target: >= 0.95); flags that are
  not planted copies (chance near duplicates among the base records, the price of a looser rule); false
  positives (a flag none of whose reported matches passes the side's own rule: J >= threshold, or one word edit
  for ours with word edits); peak memory of the step; and for ours the whole dedup (normalise + digest + exact +
  near) and the persisted index size.

Each measurement runs in a fresh subprocess (``--worker``), so peak RSS is the step's own: the growth of the
process's peak RSS (VmHWM) over its RSS just before the step. LABELOPS_BENCH_REPEAT (default 1) sets the
harness repeats. ``python bench/bench_dedup.py`` prints the same without the harness.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO / "include")):
    if p not in sys.path:
        sys.path.insert(0, p)

from harness import Benchmark  # noqa: E402

N = int(os.environ.get("LABELOPS_BENCH_N", "1000000"))
SUB = min(N, int(os.environ.get("LABELOPS_BENCH_SUB", "100000")))
SEED = int(os.environ.get("LABELOPS_BENCH_SEED", "7"))
REPEAT = int(os.environ.get("LABELOPS_BENCH_REPEAT", "1"))
THRESHOLD, NUM_PERM = 0.85, 128


# ---------------------------------------------------------------------------------------------------------------
# worker side


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    from bench_ingest import peak_rss_mb  # VmHWM: ru_maxrss would keep the parent's RSS at fork time

    return peak_rss_mb()


def _features(text: str) -> str:
    """The baseline's features, in plain Python: the same canonical form as NearDuplicateIndex's."""
    out = []
    for ch in text.casefold():
        cat = unicodedata.category(ch)
        if ch in "'\u2019\u2018\u02bc`\u00b4" or cat == "Cf":
            continue
        out.append(" " if ch.isspace() or cat[0] == "P" or cat == "Cc" else ch)
    return " ".join("".join(out).split())


def _char3(text: str) -> list[str]:
    s = _features(text)
    if not s:
        return []
    k = min(3, len(s))
    return list({s[i:i + k] for i in range(len(s) - k + 1)})


def _prepare(n: int, seed: int):
    """Corpus prefix of n records, normalised, exact duplicates removed (ours). Returns the near-step input
    (ids, texts), the planted near pairs and the time the exact stage took."""
    from corpus import build_corpus

    from labelops.ingest.dedup import ExactIndex, content_digest, normalise_text

    records, truth = build_corpus(max(n, 1), seed)
    records = records[:n]
    t0 = time.perf_counter()
    texts = [normalise_text(r["text"]) for r in records]
    dup = ExactIndex().check_and_add([content_digest(t) for t in texts])
    exact_s = time.perf_counter() - t0
    ids = [r["source_id"] for r, d in zip(records, dup) if not d]
    texts = [t for t, d in zip(texts, dup) if not d]
    present = set(ids)
    near = [(d, o) for d, o in truth["near_pairs"] if d in present and o in present]
    return ids, texts, near, exact_s, len(records)


def _score(ids, texts, matches: list[list[str]], near, word_edits: bool) -> dict:
    """Recall on planted pairs and false positives; matches[i] = the ids reported for record i ([] = none)."""
    from labelops.ingest.dedup import NearDuplicateIndex

    rule = NearDuplicateIndex(THRESHOLD, NUM_PERM, word_edits=word_edits).near_duplicates
    sim = NearDuplicateIndex(THRESHOLD, NUM_PERM).similarities
    pos = {s: i for i, s in enumerate(ids)}
    pair_j = sim([texts[pos[o]] for _, o in near], [texts[pos[d]] for d, _ in near])
    found = [bool(matches[pos[d]]) for d, _ in near]
    to_orig = [o in matches[pos[d]] for d, o in near]
    high = [k for k, j in enumerate(pair_j) if j >= THRESHOLD - 1e-9]
    # pairs whose original was kept (is in the index): the ones the index must find; when the original was
    # itself flagged, the planted copy only has to be near a kept record, which it may not be (J is not
    # transitive)
    high_kept = [k for k in high if not matches[pos[near[k][1]]]]
    flagged = [i for i, m in enumerate(matches) if m]
    # a flag is a false positive when none of its reported matches passes the rule
    a, b, owner = [], [], []
    for i in flagged:
        for m in matches[i][:20]:
            a.append(texts[i])
            b.append(texts[pos[m]])
            owner.append(i)
    passes = {i for i, ok in zip(owner, rule(a, b)) if ok}
    fp = sum(1 for i in flagged if i not in passes)
    planted = {pos[d] for d, _ in near}
    return {
        "planted_pairs": len(near), "planted_pairs_j_ge_t": len(high),
        "recall": sum(found) / max(1, len(near)),
        "recall_j_ge_t": sum(found[k] for k in high) / max(1, len(high)),
        "planted_pairs_j_ge_t_kept": len(high_kept),
        "recall_j_ge_t_kept": sum(found[k] for k in high_kept) / max(1, len(high_kept)),
        "matched_original": sum(to_orig) / max(1, len(near)),
        "flagged": len(flagged), "false_positives": fp, "fp_rate_of_flagged": fp / max(1, len(flagged)),
        "fp_rate_of_checked": fp / max(1, len(ids)),
        "unplanted_flags": sum(1 for i in flagged if i not in planted),
    }


def _run_ours(ids, texts, word_edits: bool = True):
    from labelops.ingest.dedup import NearDuplicateIndex

    idx = NearDuplicateIndex(THRESHOLD, NUM_PERM, word_edits=word_edits)
    t0 = time.perf_counter()
    res = idx.check_and_add(ids, texts)
    secs = time.perf_counter() - t0
    return secs, [[r] if r is not None else [] for r in res], idx


def _run_baseline(ids, texts):
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    shingles = [[s.encode("utf-8", "surrogatepass") for s in _char3(t)] for t in texts]
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    nonempty = [i for i, s in enumerate(shingles) if s]
    mhs = MinHash.bulk([shingles[i] for i in nonempty], num_perm=NUM_PERM)
    matches: list[list[str]] = [[] for _ in ids]
    for i, m in zip(nonempty, mhs):
        found = lsh.query(m)
        if found:
            matches[i] = found
        else:
            lsh.insert(ids[i], m)
    return time.perf_counter() - t0, matches, lsh


def worker(which: str, n: int, seed: int) -> dict:
    ids, texts, near, exact_s, n_records = _prepare(n, seed)
    rss0 = _rss_mb()
    if which == "baseline":
        secs, matches, index = _run_baseline(ids, texts)
    else:
        secs, matches, index = _run_ours(ids, texts, word_edits=which == "ours")
    peak = _peak_mb() - rss0
    out = {"which": which, "records": n_records, "checked": len(ids), "seconds": secs,
           "records_per_s": len(ids) / secs, "peak_mb": max(0.0, peak), "exact_stage_s": exact_s}
    if which != "baseline":
        out["kept"] = len(index)
        out["index_bytes"] = len(index.to_bytes())
        out["bands_rows"] = [index.bands, index.rows]
    else:
        out["bands_rows"] = [index.b, index.r]
    out.update(_score(ids, texts, matches, near, word_edits=which == "ours"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# parent side

RESULTS: dict[tuple[str, int], list[dict]] = {}


def measure(which: str, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(HERE)])}
    out = subprocess.run([sys.executable, __file__, "--worker", which, str(n), str(SEED)], env=env,
                         capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(out.stderr[-3000:])
    res = json.loads(lines[-1][7:])
    RESULTS.setdefault((which, n), []).append(res)
    return res


def _fmt_k(n: int) -> str:
    return f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:g}M"


def table() -> str:
    rows = ["| near-dup step | records checked | time (s) | records/s | recall: J>=t & original kept / J>=t / all "
            "planted | to original | flagged | not planted | false positives | peak mem (MiB) | b x r |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (which, n), runs in sorted(RESULTS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        r = min(runs, key=lambda x: x["seconds"])
        label = {"ours": "ours (NearDuplicateIndex, word edits)", "ours-jaccard": "ours, Jaccard rule only",
                 "baseline": "datasketch MinHashLSH (defaults)"}[which]
        rows.append(
            f"| {label}, {_fmt_k(n)} | {r['checked']:,} | {r['seconds']:.1f} | {r['records_per_s']:,.0f} | "
            f"**{r['recall_j_ge_t_kept']:.3f}** / {r['recall_j_ge_t']:.3f} / {r['recall']:.3f} "
            f"({r['planted_pairs_j_ge_t_kept']:,} / {r['planted_pairs_j_ge_t']:,} / {r['planted_pairs']:,} pairs) | "
            f"{r['matched_original']:.3f} | {r['flagged']:,} | {r['unplanted_flags']:,} | {r['false_positives']:,} "
            f"({100 * r['fp_rate_of_flagged']:.2f}% of flagged) | {r['peak_mb']:.0f} | "
            f"{r['bands_rows'][0]} x {r['bands_rows'][1]} |")
    extra = []
    for (which, n), runs in sorted(RESULTS.items()):
        if which != "baseline":
            r = min(runs, key=lambda x: x["seconds"])
            extra.append(f"{which} at {_fmt_k(n)}: whole dedup (normalise + digest + exact + near) "
                         f"{r['exact_stage_s'] + r['seconds']:.1f} s for {r['records']:,} records; "
                         f"index {r['kept']:,} records, {r['index_bytes'] / 2**20:.0f} MiB persisted "
                         f"({r['index_bytes'] / max(1, r['kept']):.0f} B/record)")
    return "\n".join(rows + [""] + extra)


_printed = False


def _print_table() -> None:
    global _printed
    if RESULTS and not _printed:
        _printed = True
        print("\n" + table(), flush=True)


atexit.register(_print_table)


def _ours_full() -> float:
    r = measure("ours", N)
    BENCHMARKS[-1].name = (f"near-dup, {_fmt_k(N)} records (ours: recall {r['recall_j_ge_t_kept']:.3f} / all planted "
                           f"{r['recall']:.3f}, {r['false_positives']} FP, {r['peak_mb']:.0f} MiB)")
    if ("ours-jaccard", N) not in RESULTS:
        measure("ours-jaccard", N)  # the extra table's row without word edits
    return r["seconds"]


def _baseline_scaled() -> float:
    runs = RESULTS.get(("baseline", SUB)) or [measure("baseline", SUB)]
    return min(x["seconds"] for x in runs) * N / SUB


def _sub(which: str) -> float:
    r = measure(which, SUB)
    if which == "ours":
        b = min(RESULTS[("baseline", SUB)], key=lambda x: x["seconds"]) if ("baseline", SUB) in RESULTS else None
        BENCHMARKS[0].name = (f"near-dup, {_fmt_k(SUB)} records (recall: ours {r['recall_j_ge_t_kept']:.3f} / all "
                              f"planted {r['recall']:.3f}" + (f", datasketch {b['recall_j_ge_t_kept']:.3f} / "
                                                             f"{b['recall']:.3f}" if b else "") + ")")
    return r["seconds"]


BENCHMARKS = [
    Benchmark(f"near-dup, {_fmt_k(SUB)} records", "datasketch MinHashLSH", lambda: _sub("baseline"),
              lambda: _sub("ours"), repeat=REPEAT, unit="s", scale=1.0),
]
if N > SUB:
    BENCHMARKS.append(Benchmark(f"near-dup, {_fmt_k(N)} records", f"datasketch, {_fmt_k(SUB)} time x {N / SUB:g} "
                                f"(estimate)", _baseline_scaled, _ours_full, repeat=REPEAT, unit="s", scale=1.0))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print("RESULT " + json.dumps(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))), flush=True)
        sys.exit(0)
    from harness import HEADER, run

    print(HEADER)
    for bench in BENCHMARKS:
        print(run(bench).row(), flush=True)
