"""Inter-annotator agreement at scale: our whole categorical suite (``Ratings.from_codes`` + ``agreement_report``
with gold accuracy: Cohen's kappa with CI for every annotator pair, Fleiss' kappa, Krippendorff's alpha, percent
and per-label agreement, confusions, annotator rows) against the usual package calls for the same figures.

Data (seeded numpy, generated once per run into a temporary .npz that every child process loads, outside the
timed part): LABELOPS_AGREE_N ratings (default 1,000,000) on the 77 Banking77 labels of the banking_support
project, a pool of 12 annotators with uneven workloads, 3 / 4 / 5 annotators per item (probabilities 0.3 / 0.4 /
0.3) and 4% of the assigned ratings missing (so some items end with 2, 1 or 0 ratings). Every item has a true
label (skewed, Zipf-like label frequencies); each annotator is right with their own probability (0.68 .. 0.94),
and a wrong label is one of 4 confusable neighbours of the true label 80% of the time, any other label otherwise.
At 3-5 ratings per item, 1M ratings is ~260k items (the issue's "100,000 items" would hold only 300k-500k
ratings at 3-5 annotators each; the size here is set by the number of ratings, the unit of the targets). ~2% of
the items are gold (their true label).

Rows (each side of each row runs in its own child process, so its peak memory is its own VmHWM; both sides get an
address-space limit of LABELOPS_AGREE_MEM_GIB, default 8 GiB, and a 300 s timeout):

1. the suite on all ratings. Ours: ``Ratings.from_codes`` + ``agreement_report(r, gold=...)`` (nominal). Baseline:
   the long ratings into an items x annotators matrix, scikit-learn's ``cohen_kappa_score`` for every annotator
   pair on the items both rated, statsmodels' ``aggregate_raters`` + ``fleiss_kappa`` on the items with the modal
   number of ratings (Fleiss needs a complete table; the same rule as ours), scikit-learn's ``accuracy_score`` per
   annotator on the gold items, and the ``krippendorff`` package's ``alpha`` (annotators x items, NaN = missing,
   nominal) on the first LABELOPS_AGREE_ALPHA_ITEMS items only (default 20,000): the package builds several
   items x values x values float64 arrays (77 x 77 x 8 B = 46 KiB per item each), which for all items is far
   beyond the memory limit; report() shows the package's own MemoryError on all items (a probe run).
   So the baseline does *less* than ours in row 1 (alpha on a subset; no percent / per-label agreement, no CIs).
2. Krippendorff's alpha (nominal) alone on that subset: the package against ``Ratings.from_codes`` +
   ``krippendorff_alpha`` on the same ratings.

report(): per-component times, peak memory against the issue's targets (< 5 s and < 1 GiB for 1M ratings), the
probe, and the agreement check: kappa per pair, Fleiss (same items), gold accuracy and alpha (subset) must match the
packages to 1e-9. ``python bench/bench_agreement.py`` runs the same without run.py.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO / "include")):
    if p not in sys.path:
        sys.path.insert(0, p)

from harness import Benchmark  # noqa: E402

N = int(os.environ.get("LABELOPS_AGREE_N", "1000000"))
ALPHA_ITEMS = int(os.environ.get("LABELOPS_AGREE_ALPHA_ITEMS", "20000"))
REPEAT = int(os.environ.get("LABELOPS_AGREE_REPEAT", "3"))
MEM_GIB = float(os.environ.get("LABELOPS_AGREE_MEM_GIB", "8"))
SEED = int(os.environ.get("LABELOPS_BENCH_SEED", "7"))
N_ANNOTATORS = 12
GOLD_SHARE = 0.02
TOL = 1e-9
TIMEOUT_S = 300
TARGET_S, TARGET_MB = 5.0, 1024.0


# ---------------------------------------------------------------------------------------------------------------
# data


def _labels() -> list[str]:
    from labelops.config import load_project

    labels = sorted(load_project(REPO / "include" / "configs" / "projects" / "banking_support.yaml").labels)
    assert len(labels) == 77
    return labels


def generate(n_ratings: int, seed: int, n_labels: int = 77, n_annotators: int = N_ANNOTATORS,
             p_missing: float = 0.04) -> dict:
    """Long-format ratings (item, annotator, value codes, in shuffled order), the true label of every item and the
    gold items; see the module docstring."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k_vals, k_p = np.array([3, 4, 5]), np.array([0.3, 0.4, 0.3])
    n_items = int(np.ceil(n_ratings / (float(k_vals @ k_p) * (1 - p_missing)) * 1.02)) + 10
    k = rng.choice(k_vals, size=n_items, p=k_p)
    # k distinct annotators per item, weighted by workload (Gumbel top-k)
    workload = rng.uniform(0.5, 1.5, n_annotators)
    keys = np.log(workload)[None, :] + rng.gumbel(size=(n_items, n_annotators))
    rank = np.argsort(-keys, axis=1)
    take = np.arange(n_annotators)[None, :] < k[:, None]
    item = np.broadcast_to(np.arange(n_items)[:, None], (n_items, n_annotators))[take]
    annotator = rank[take]
    prior = 1.0 / np.arange(1, n_labels + 1) ** 0.8
    prior = rng.permutation(prior / prior.sum())
    true = rng.choice(n_labels, size=n_items, p=prior)
    accuracy = rng.uniform(0.68, 0.94, n_annotators)
    right = rng.random(item.size) < accuracy[annotator]
    neighbour = (true[item] + rng.choice(np.array([-2, -1, 1, 2]), size=item.size)) % n_labels
    anywhere = (true[item] + rng.integers(1, n_labels, size=item.size)) % n_labels
    value = np.where(right, true[item], np.where(rng.random(item.size) < 0.8, neighbour, anywhere))
    keep = rng.random(item.size) >= p_missing
    item, annotator, value = item[keep][:n_ratings], annotator[keep][:n_ratings], value[keep][:n_ratings]
    if item.size < n_ratings:
        raise RuntimeError("generated too few ratings")
    n_items = int(item[-1]) + 1  # the last item may have lost some ratings to the cut
    perm = rng.permutation(item.size)
    gold_items = np.sort(rng.choice(n_items, size=max(1, int(round(GOLD_SHARE * n_items))), replace=False))
    return {"item": item[perm].astype(np.int32), "annotator": annotator[perm].astype(np.int32),
            "value": value[perm].astype(np.int32), "true": true[:n_items].astype(np.int32),
            "gold_items": gold_items.astype(np.int32), "n_items": np.int64(n_items),
            "n_labels": np.int64(n_labels), "n_annotators": np.int64(n_annotators)}


_data_path: Path | None = None


def data_path() -> Path:
    """The generated ratings, written once per run to a temporary .npz (removed at exit)."""
    global _data_path
    if _data_path is None:
        import numpy as np

        tmp = Path(tempfile.mkdtemp(prefix="labelops_bench_agreement_"))
        atexit.register(shutil.rmtree, tmp, True)
        np.savez(tmp / "ratings.npz", **generate(N, SEED))
        _data_path = tmp / "ratings.npz"
    return _data_path


def _load(path: str) -> dict:
    import numpy as np

    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    for k in ("n_items", "n_labels", "n_annotators"):
        d[k] = int(d[k])
    return d


def _ann_ids(n: int) -> list[str]:
    return [f"ann{a:02d}" for a in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# child side: one side of one row per process


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    from bench_ingest import peak_rss_mb  # VmHWM: ru_maxrss would keep the parent's RSS at fork time

    return peak_rss_mb()


def _modal_m(m):
    """The modal number of ratings among the pairable items (ties: the larger), as our fleiss_kappa."""
    import numpy as np

    freq = np.bincount(m[m >= 2])
    return int(np.flatnonzero(freq == freq.max())[-1])


def child_suite_ours(d: dict) -> dict:
    from labelops.agreement import Ratings, agreement_report

    labels, ann_ids = _labels(), _ann_ids(d["n_annotators"])
    gold = {int(i): labels[int(d["true"][i])] for i in d["gold_items"]}
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    r = Ratings.from_codes(d["item"], d["annotator"], d["value"], labels=labels, annotator_ids=ann_ids,
                           item_ids=range(d["n_items"]))
    t1 = time.perf_counter()
    rep = agreement_report(r, gold=gold)
    t2 = time.perf_counter()
    peak = _peak_mb()
    return {
        "seconds": t2 - t0, "components": {"Ratings.from_codes": t1 - t0, "agreement_report": t2 - t1},
        "peak_mb": peak, "rss_before_mb": rss0,
        "kappa": {f"{p['annotator_a']}|{p['annotator_b']}": p["kappa"] for p in rep["cohen_kappa_pairwise"]},
        "kappa_n": {f"{p['annotator_a']}|{p['annotator_b']}": p["n_items"] for p in rep["cohen_kappa_pairwise"]},
        "fleiss": rep["fleiss_kappa"], "fleiss_n_items": rep["fleiss_n_items"], "fleiss_m": rep["fleiss_n_raters"],
        "gold": {a["annotator_id"]: a.get("gold_accuracy") for a in rep["annotators"]},
        "alpha_all": rep["krippendorff_alpha_nominal"], "kappa_mean": rep["cohen_kappa_mean"],
        "percent_agreement": rep["percent_agreement"], "n_ratings": rep["n_ratings"], "n_items": rep["n_items"],
        "n_items_pairable": rep["n_items_pairable"], "n_gold_items": rep["gold"]["n_gold_items"],
    }


def _dense(d: dict):
    """The baseline's layout: items x annotators label codes, -1 = missing."""
    import numpy as np

    dense = np.full((d["n_items"], d["n_annotators"]), -1, dtype=np.int16)
    dense[d["item"], d["annotator"]] = d["value"]
    return dense


def _reliability(dense, n_items: int):
    """krippendorff's layout: annotators x items, NaN = missing, for the first n_items items."""
    import numpy as np

    sub = dense[:n_items].T.astype(np.float64)
    sub[sub < 0] = np.nan
    return sub


def child_suite_baseline(d: dict) -> dict:
    import krippendorff
    import numpy as np
    from sklearn.metrics import accuracy_score, cohen_kappa_score
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    ann_ids = _ann_ids(d["n_annotators"])
    rss0 = _rss_mb()
    comp: dict[str, float] = {}
    t = t0 = time.perf_counter()
    dense = _dense(d)
    rated = dense >= 0
    comp["items x annotators matrix"] = time.perf_counter() - t

    t = time.perf_counter()
    kappa, kappa_n = {}, {}
    R = d["n_annotators"]
    for a in range(R):
        for b in range(a + 1, R):
            both = rated[:, a] & rated[:, b]
            if both.any():
                key = f"{ann_ids[a]}|{ann_ids[b]}"
                kappa[key] = float(cohen_kappa_score(dense[both, a], dense[both, b]))
                kappa_n[key] = int(both.sum())
    comp["sklearn cohen_kappa_score x pairs"] = time.perf_counter() - t

    t = time.perf_counter()
    m = rated.sum(1)
    M = _modal_m(m)
    rows = dense[m == M]
    data = rows[rows >= 0].reshape(-1, M)  # each item's M ratings (row-major keeps them together)
    table, _ = aggregate_raters(data, n_cat=d["n_labels"])
    fleiss = float(fleiss_kappa(table, method="fleiss"))
    comp["statsmodels aggregate_raters + fleiss_kappa"] = time.perf_counter() - t

    t = time.perf_counter()
    g = d["gold_items"]
    gold = {}
    for a in range(R):
        sel = rated[g, a]
        gold[ann_ids[a]] = float(accuracy_score(d["true"][g][sel], dense[g, a][sel])) if sel.any() else None
    comp["sklearn accuracy_score x annotators (gold)"] = time.perf_counter() - t

    t = time.perf_counter()
    n_sub = min(ALPHA_ITEMS, d["n_items"])
    alpha = float(krippendorff.alpha(reliability_data=_reliability(dense, n_sub), level_of_measurement="nominal"))
    comp[f"krippendorff.alpha ({n_sub:,} items only)"] = time.perf_counter() - t
    t2 = time.perf_counter()
    peak = _peak_mb()
    return {"seconds": t2 - t0, "components": comp, "peak_mb": peak, "rss_before_mb": rss0, "kappa": kappa,
            "kappa_n": kappa_n, "fleiss": fleiss, "fleiss_n_items": int(table.shape[0]), "fleiss_m": M,
            "gold": gold, "alpha_subset": alpha, "alpha_items": n_sub}


def _subset(d: dict, n_items: int):
    sel = d["item"] < n_items
    return d["item"][sel], d["annotator"][sel], d["value"][sel]


def child_alpha_ours(d: dict) -> dict:
    from labelops.agreement import Ratings, krippendorff_alpha

    n_sub = min(ALPHA_ITEMS, d["n_items"])
    item, annotator, value = _subset(d, n_sub)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    r = Ratings.from_codes(item, annotator, value, n_values=d["n_labels"])
    res = krippendorff_alpha(r, "nominal")
    secs = time.perf_counter() - t0
    return {"seconds": secs, "peak_mb": _peak_mb(), "rss_before_mb": rss0, "alpha": res.alpha,
            "alpha_items": n_sub, "alpha_ratings": int(item.size)}


def child_alpha_baseline(d: dict) -> dict:
    import krippendorff

    n_sub = min(ALPHA_ITEMS, d["n_items"])
    item, annotator, value = _subset(d, n_sub)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    dense = _dense({**d, "item": item, "annotator": annotator, "value": value, "n_items": n_sub})
    alpha = float(krippendorff.alpha(reliability_data=_reliability(dense, n_sub), level_of_measurement="nominal"))
    secs = time.perf_counter() - t0
    return {"seconds": secs, "peak_mb": _peak_mb(), "rss_before_mb": rss0, "alpha": alpha, "alpha_items": n_sub,
            "alpha_ratings": int(item.size)}


def child_alpha_probe(d: dict) -> dict:
    """The krippendorff package on all items, under the address-space limit: does it fit?"""
    import krippendorff

    dense = _dense(d)
    t0 = time.perf_counter()
    try:
        alpha = float(krippendorff.alpha(reliability_data=_reliability(dense, d["n_items"]),
                                          level_of_measurement="nominal"))
        return {"ok": True, "alpha": alpha, "seconds": time.perf_counter() - t0, "peak_mb": _peak_mb()}
    except MemoryError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0,
                "peak_mb": _peak_mb()}


CHILDREN = {"suite-ours": child_suite_ours, "suite-baseline": child_suite_baseline,
            "alpha-ours": child_alpha_ours, "alpha-baseline": child_alpha_baseline, "alpha-probe": child_alpha_probe}


# ---------------------------------------------------------------------------------------------------------------
# parent side

RESULTS: dict[str, list[dict]] = {}


def _limit_memory() -> None:
    import resource

    limit = int(MEM_GIB * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def measure(mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(HERE)])}
    try:
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(data_path())], env=env,
                             capture_output=True, text=True, timeout=TIMEOUT_S, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{mode}: no result within {TIMEOUT_S} s") from None
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{mode} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    res = json.loads(lines[-1][7:])
    RESULTS.setdefault(mode, []).append(res)
    return res


def _fmt_n(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n // 1000}k" if n >= 1000 else str(n)


def _median(mode: str, key: str = "seconds") -> float | None:
    runs = RESULTS.get(mode)
    return statistics.median(r[key] for r in runs) if runs else None


def _suite(side: str) -> float:
    r = measure(f"suite-{side}")
    if side == "ours":
        o, b = _median("suite-ours", "peak_mb"), _median("suite-baseline", "peak_mb")
        BENCHMARKS[0].name = (f"agreement suite, {_fmt_n(N)} ratings (peak RSS: ours {o:,.0f} MiB"
                              + (f", baseline {b:,.0f} MiB" if b is not None else "") + ")")
    return r["seconds"]


def _alpha(side: str) -> float:
    r = measure(f"alpha-{side}")
    if side == "ours":
        o, b = _median("alpha-ours", "peak_mb"), _median("alpha-baseline", "peak_mb")
        BENCHMARKS[1].name = (f"Krippendorff's alpha nominal, first {_fmt_n(r['alpha_items'])} items "
                              f"({r['alpha_ratings']:,} ratings; peak RSS: ours {o:,.0f} MiB"
                              + (f", package {b:,.0f} MiB" if b is not None else "") + ")")
    return r["seconds"]


BENCHMARKS = [
    Benchmark(f"agreement suite, {_fmt_n(N)} ratings", f"sklearn kappa/pair + statsmodels Fleiss + gold; "
              f"krippendorff alpha on {_fmt_n(ALPHA_ITEMS)} items only", lambda: _suite("baseline"),
              lambda: _suite("ours"), repeat=REPEAT, unit="s", scale=1.0),
    Benchmark(f"Krippendorff's alpha nominal, first {_fmt_n(ALPHA_ITEMS)} items", "krippendorff.alpha",
              lambda: _alpha("baseline"), lambda: _alpha("ours"), repeat=REPEAT, unit="ms", scale=1000.0),
]


def _check_rows() -> list[str]:
    rows = ["| check (ours vs package) | compared | max abs difference | result |", "|---|---|---|---|"]
    ours, base = RESULTS.get("suite-ours"), RESULTS.get("suite-baseline")
    if ours and base:
        o, b = ours[-1], base[-1]
        same_pairs = (set(o["kappa"]) == set(b["kappa"])
                      and all(o["kappa_n"][k] == b["kappa_n"][k] for k in b["kappa_n"]))
        diffs = [abs(o["kappa"][k] - b["kappa"][k]) for k in b["kappa"] if k in o["kappa"]
                 and o["kappa"][k] is not None]
        ok = same_pairs and len(diffs) == len(b["kappa"]) and max(diffs) <= TOL
        rows.append(f"| Cohen's kappa per annotator pair (sklearn cohen_kappa_score) | {len(b['kappa'])} pairs, "
                    f"{sum(b['kappa_n'].values()):,} shared items, same pairs and item counts: {same_pairs} | "
                    f"{max(diffs):.1e} | {'PASS' if ok else 'FAIL'} |")
        fd = abs(o["fleiss"] - b["fleiss"]) if o["fleiss"] is not None else float("inf")
        same = o["fleiss_n_items"] == b["fleiss_n_items"] and o["fleiss_m"] == b["fleiss_m"]
        rows.append(f"| Fleiss' kappa (statsmodels fleiss_kappa) | the {b['fleiss_n_items']:,} items with the modal "
                    f"{b['fleiss_m']} ratings (ours: {o['fleiss_n_items']:,} x {o['fleiss_m']}) | {fd:.1e} | "
                    f"{'PASS' if same and fd <= TOL else 'FAIL'} |")
        gd = [abs(o["gold"][k] - v) for k, v in b["gold"].items() if v is not None and o["gold"].get(k) is not None]
        gok = len(gd) == sum(v is not None for v in b["gold"].values()) and max(gd) <= TOL
        rows.append(f"| gold accuracy per annotator (sklearn accuracy_score) | {len(gd)} annotators on "
                    f"{o['n_gold_items']:,} gold items | {max(gd):.1e} | {'PASS' if gok else 'FAIL'} |")
    ao, ab = RESULTS.get("alpha-ours"), RESULTS.get("alpha-baseline")
    if ao and ab:
        d = abs(ao[-1]["alpha"] - ab[-1]["alpha"])
        rows.append(f"| Krippendorff's alpha, nominal (krippendorff.alpha) | first {ab[-1]['alpha_items']:,} items, "
                    f"{ab[-1]['alpha_ratings']:,} ratings | {d:.1e} | {'PASS' if d <= TOL else 'FAIL'} |")
    if base and ao:
        d = abs(ao[-1]["alpha"] - base[-1]["alpha_subset"])
        rows.append(f"| the same alpha, from the row-1 baseline run | first {base[-1]['alpha_items']:,} items | "
                    f"{d:.1e} | {'PASS' if d <= TOL else 'FAIL'} |")
    return rows


_probe: dict | None = None


def report() -> str:
    global _probe
    out = []
    ours, base = RESULTS.get("suite-ours"), RESULTS.get("suite-baseline")
    if ours:
        o = ours[-1]
        out.append(f"Agreement data: {o['n_ratings']:,} ratings, {o['n_items']:,} items ({o['n_items_pairable']:,} "
                   f"with >= 2 ratings), {N_ANNOTATORS} annotators, 77 labels, {o['n_gold_items']:,} gold items; "
                   f"ours: mean pairwise kappa {o['kappa_mean']:.4f}, Fleiss {o['fleiss']:.4f}, alpha (all items) "
                   f"{o['alpha_all']:.4f}, percent agreement {o['percent_agreement']:.4f}.")
        out.append("")
    rows = ["| agreement side, component | median s | peak RSS (VmHWM, whole process) | RSS before timing |",
            "|---|---|---|---|"]
    for mode, label in (("suite-baseline", "baseline suite"), ("suite-ours", "ours suite"),
                        ("alpha-baseline", "krippendorff.alpha, subset"), ("alpha-ours", "ours alpha, subset")):
        runs = RESULTS.get(mode)
        if not runs:
            continue
        rows.append(f"| **{label}, total** | {_median(mode):.3f} | {max(r['peak_mb'] for r in runs):,.0f} MiB | "
                    f"{statistics.median(r['rss_before_mb'] for r in runs):,.0f} MiB |")
        for name in runs[0].get("components", {}):
            rows.append(f"| {label}: {name} | {statistics.median(r['components'][name] for r in runs):.3f} | | |")
    out += rows
    if ours:
        s, mb = _median("suite-ours"), max(r["peak_mb"] for r in ours)
        out.append("")
        out.append(f"Targets for {_fmt_n(N)} ratings: ours {s:.2f} s (target < {TARGET_S:g} s: "
                   f"{'met' if s < TARGET_S else 'MISSED'}), peak {mb:,.0f} MiB (target < {TARGET_MB:,.0f} MiB: "
                   f"{'met' if mb < TARGET_MB else 'MISSED'}).")
    if _probe is None and RESULTS:
        try:
            _probe = measure("alpha-probe")
        except RuntimeError as exc:
            _probe = {"ok": False, "error": str(exc).splitlines()[-1], "seconds": float("nan"), "peak_mb": float("nan")}
    if _probe is not None:
        if _probe["ok"]:
            out.append(f"krippendorff.alpha on all items fits in {MEM_GIB:g} GiB: {_probe['seconds']:.1f} s, peak "
                       f"{_probe['peak_mb']:,.0f} MiB, alpha {_probe['alpha']:.12f} (ours "
                       + (f"{ours[-1]['alpha_all']:.12f}" if ours else "n/a") + ").")
        else:
            out.append(f"krippendorff.alpha on all items (probe, address space limited to {MEM_GIB:g} GiB): "
                       f"{_probe['error']} (after {_probe['seconds']:.1f} s). Hence the subset.")
    if base and RESULTS.get("alpha-baseline"):
        a = RESULTS["alpha-baseline"]
        n_all = ours[-1]["n_items"] if ours else None
        if n_all:
            est_s = _median("alpha-baseline") * n_all / a[-1]["alpha_items"]
            est_gib = max(r["peak_mb"] for r in a) * n_all / a[-1]["alpha_items"] / 1024
            out.append(f"Scaled linearly to all {n_all:,} items (an estimate, not measured), the package would take "
                       f"~{est_s:.0f} s and ~{est_gib:.0f} GiB.")
    out.append("")
    out += _check_rows()
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(CHILDREN[sys.argv[2]](_load(sys.argv[3]))), flush=True)
        sys.exit(0)
    from harness import HEADER, run

    print(HEADER)
    for bench in BENCHMARKS:
        print(run(bench).row(), flush=True)
    print("\n" + report())
