"""Tests of labelops.agreement (stats, spans, the command line).

Reference values are published ones; each test names its source. Where a library's own test suite is the source,
the file is named (statsmodels, krippendorff, NLTK, scikit-learn); none of statsmodels / krippendorff / nltk is
installed: their data and expected values are copied here as data. scikit-learn is installed and is also used as a
live oracle on random data.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from labelops.agreement import spans as sp
from labelops.agreement import stats
from labelops.agreement.stats import (
    DuplicateRatingError,
    Ratings,
    agreement_report,
    alpha_from_coincidences,
    annotator_summary,
    cohen_kappa,
    cohen_kappa_pairwise,
    fleiss_kappa,
    fleiss_kappa_table,
    gold_accuracy,
    krippendorff_alpha,
    label_agreement,
    label_values,
    percent_agreement,
)

REPO = Path(__file__).resolve().parents[1]


def from_matrix(rows, missing=None) -> Ratings:
    """Ratings from a coders x units matrix (Krippendorff's layout); `missing` marks a missing rating."""
    it, an, lab = [], [], []
    for c, row in enumerate(rows):
        for u, v in enumerate(row):
            if v is not missing and v != missing:
                it.append(f"u{u}")
                an.append(f"c{c}")
                lab.append(v)
    return Ratings.from_records(it, an, lab)


def from_columns(*cols) -> Ratings:
    """Ratings from per-rater columns over the same items (units x raters layout)."""
    it, an, lab = [], [], []
    for c, col in enumerate(cols):
        for u, v in enumerate(col):
            it.append(u)
            an.append(f"r{c}")
            lab.append(v)
    return Ratings.from_records(it, an, lab)


# ---------------------------------------------------------------------------------------------------------------
# Cohen's kappa

def test_cohen_kappa_wikipedia_worked_example():
    # Wikipedia, "Cohen's kappa", simple example: 50 grant proposals, readers A and B; Yes/Yes 20, A Yes/B No 5,
    # A No/B Yes 10, No/No 15 -> p_o = 0.7, p_e = 0.5, kappa = 0.4.
    res = cohen_kappa([[20, 5], [10, 15]])
    assert res.p_observed == pytest.approx(0.7)
    assert res.p_expected == pytest.approx(0.5)
    assert res.kappa == pytest.approx(0.4)
    # the same through the ratings path (labels as strings, one row per rating)
    a = ["Yes"] * 25 + ["No"] * 25
    b = ["Yes"] * 20 + ["No"] * 5 + ["Yes"] * 10 + ["No"] * 15
    (pair,) = cohen_kappa_pairwise(from_columns(a, b))
    assert (pair.n_items, pair.kappa) == (50, pytest.approx(0.4))


def test_cohen_kappa_se_and_ci_against_sas_printout():
    # statsmodels statsmodels/stats/tests/test_inter_rater.py, class UnweightedCohens: table10 against a SAS PROC
    # FREQ printout: Kappa 0.4842, ASE 0.1380, 95% limits 0.2137 .. 0.7547; under H0: ASE 0.1484, Z 3.2626.
    # SAS's ASE is the Fleiss-Cohen-Everitt (1969) large-sample standard error we implement.
    res = cohen_kappa([[0, 4, 1], [0, 8, 0], [0, 1, 5]])
    assert res.kappa == pytest.approx(0.4842, abs=5e-5)
    assert res.se == pytest.approx(0.1380, abs=5e-5)
    assert res.ci_low == pytest.approx(0.2137, abs=5e-5)
    assert res.ci_high == pytest.approx(0.7547, abs=5e-5)
    assert res.se0 == pytest.approx(0.1484, abs=5e-5)
    assert res.z == pytest.approx(3.2626, abs=5e-5)


def test_cohen_kappa_r_irr_anxiety():
    # statsmodels test_inter_rater.py, test_cohens_kappa_irr: R irr::kappa2(anxiety[, 2:3]) (unweighted)
    # value -0.006289308, z -0.0604067. `anxiety` is the 20 x 3 table of that test (order='F': rater columns).
    anxiety = np.array([
        3, 3, 3, 4, 5, 5, 2, 3, 5, 2, 2, 6, 1, 5, 2, 2, 1, 2, 4, 3, 3, 6, 4,
        6, 2, 4, 2, 4, 3, 3, 2, 3, 3, 3, 2, 2, 1, 3, 3, 4, 2, 1, 4, 4, 3, 2,
        1, 6, 1, 1, 1, 2, 3, 3, 1, 1, 3, 3, 2, 2]).reshape(20, 3, order="F")
    (pair,) = cohen_kappa_pairwise(from_columns(anxiety[:, 1], anxiety[:, 2]))
    assert pair.kappa == pytest.approx(-0.006289308, abs=1e-8)
    table = np.zeros((6, 6))
    np.add.at(table, (anxiety[:, 1] - 1, anxiety[:, 2] - 1), 1)
    assert cohen_kappa(table).z == pytest.approx(-0.0604067, abs=1e-6)


def test_cohen_kappa_sklearn_published_values():
    # scikit-learn sklearn/metrics/tests/test_classification.py, test_cohen_kappa: 0.348 (2 classes), 0.8013 and
    # 0.9315 (3 classes).
    y1 = [0] * 40 + [1] * 60
    y2 = [0] * 20 + [1] * 20 + [0] * 10 + [1] * 50
    assert cohen_kappa_pairwise(from_columns(y1, y2))[0].kappa == pytest.approx(0.348, abs=5e-4)
    y1 = [0] * 46 + [1] * 44 + [2] * 10
    assert cohen_kappa_pairwise(from_columns(y1, [0] * 52 + [1] * 32 + [2] * 16))[0].kappa == pytest.approx(
        0.8013, abs=5e-5)
    assert cohen_kappa_pairwise(from_columns(y1, [0] * 50 + [1] * 40 + [2] * 10))[0].kappa == pytest.approx(
        0.9315, abs=5e-5)


def random_ratings(rng, n_items=400, n_ann=5, labels=("cat", "dog", "eel", "fox"), p_rate=0.6, p_true=0.6):
    truth = rng.integers(0, len(labels), n_items)
    rows = []
    for u in range(n_items):
        for a in range(n_ann):
            if rng.random() < p_rate:
                v = truth[u] if rng.random() < p_true else rng.integers(0, len(labels))
                rows.append((f"item{u}", f"ann{a}", labels[v]))
    return rows


def test_cohen_kappa_pairwise_matches_sklearn_on_random_data():
    # Oracle: sklearn.metrics.cohen_kappa_score on the items both annotators rated.
    rng = np.random.default_rng(7)
    rows = random_ratings(rng)
    rows += [("lonely1", "ann5", "cat"), ("lonely2", "ann6", "dog")]  # annotators sharing no item with anybody
    r = Ratings.from_records(*zip(*rows))
    by = {}
    for it, an, lab in rows:
        by.setdefault(an, {})[it] = lab
    pairs = {(p.annotator_a, p.annotator_b): p for p in cohen_kappa_pairwise(r)}
    expected_pairs = 0
    for a, b in combinations(sorted(by), 2):
        shared = sorted(set(by[a]) & set(by[b]))
        if not shared:
            assert (a, b) not in pairs  # no shared item: not listed
            continue
        expected_pairs += 1
        p = pairs[(a, b)]
        assert p.n_items == len(shared)
        ref = cohen_kappa_score([by[a][i] for i in shared], [by[b][i] for i in shared])
        assert p.kappa == pytest.approx(ref, abs=1e-12)
        assert p.ci_low <= p.kappa <= p.ci_high
    assert len(pairs) == expected_pairs == 10


def test_kappa_ci_covers_estimate_and_shrinks_with_n():
    base = np.array([[0, 4, 1], [0, 8, 0], [0, 1, 5]])
    widths = []
    for f in (1, 4, 16, 64):
        res = cohen_kappa(base * f)
        assert res.kappa == pytest.approx(0.4842, abs=5e-5)  # same proportions, same kappa
        assert res.ci_low < res.kappa < res.ci_high
        widths.append(res.ci_high - res.ci_low)
    # the large-sample variance is proportional to 1/n: 4x the items halves the width (until clipping at +-1)
    for w0, w1 in zip(widths, widths[1:]):
        assert w1 == pytest.approx(w0 / 2, rel=1e-9)
    # on simulated ratings, the interval narrows as the number of shared items grows
    rng = np.random.default_rng(3)
    prev = None
    for n in (50, 200, 800, 3200):
        (p,) = cohen_kappa_pairwise(Ratings.from_records(*zip(*random_ratings(rng, n_items=n, n_ann=2, p_rate=1))))
        assert p.ci_low < p.kappa < p.ci_high
        if prev is not None:
            assert p.ci_high - p.ci_low < prev
        prev = p.ci_high - p.ci_low
    # a 99% interval is wider than the 95% one
    assert cohen_kappa(base, 0.99).ci_high > cohen_kappa(base, 0.95).ci_high


# ---------------------------------------------------------------------------------------------------------------
# Fleiss' kappa

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories; P-bar = 0.378,
# P-bar_e = 0.213, kappa = 0.210 (also statsmodels test_inter_rater.py, test_fleiss_kappa: kappa_wp = 0.210).
WIKI_FLEISS = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
               [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]

# Fleiss (1971) psychiatric diagnoses, 30 patients x 6 raters (statsmodels test_inter_rater.py `diagnoses`, as in
# R irr's `diagnoses`); R irr::kappam.fleiss(diagnoses) = 0.4302445 (statsmodels test_fleiss_kappa_irr).
DIAGNOSES = [[4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5], [2, 2, 2, 4, 4, 4],
             [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4], [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5],
             [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4], [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5],
             [3, 3, 3, 3, 3, 5], [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
             [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4], [1, 4, 4, 4, 4, 5],
             [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4], [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5]]


def test_fleiss_kappa_wikipedia_worked_example():
    res = fleiss_kappa_table(WIKI_FLEISS)
    assert round(res.p_bar, 3) == 0.378
    assert round(res.p_e, 3) == 0.213
    assert round(res.kappa, 3) == 0.210
    # the same from one row per rating (14 raters, categories as strings)
    rows = [(f"s{i}", f"r{k}", f"cat{j}") for i, row in enumerate(WIKI_FLEISS)
            for j, n in enumerate(row) for k in range(sum(row[:j]), sum(row[:j]) + n)]
    res2 = fleiss_kappa(Ratings.from_records(*zip(*rows)))
    assert (res2.n_items, res2.n_raters) == (10, 14)
    assert res2.kappa == pytest.approx(res.kappa, abs=1e-12)


def test_fleiss_kappa_diagnoses_r_irr_and_missing_ratings():
    r = from_columns(*np.array(DIAGNOSES).T)
    res = fleiss_kappa(r)
    assert res.kappa == pytest.approx(0.4302445, abs=1e-7)
    assert (res.n_items, res.n_raters) == (30, 6)
    # With missing ratings: items with fewer raters (not the modal number) are left out of Fleiss' kappa, counted
    # in the report, and do not change the value.
    rows = [(u, f"r{c}", v) for u, row in enumerate(DIAGNOSES) for c, v in enumerate(row)]
    rows += [(100, "r0", 1), (100, "r1", 2), (101, "r2", 3), (101, "r3", 3), (101, "r4", 4), (102, "r5", 5)]
    r2 = Ratings.from_records(*zip(*rows))
    res2 = fleiss_kappa(r2)
    assert res2.kappa == pytest.approx(0.4302445, abs=1e-7)
    assert (res2.n_items, res2.n_raters) == (30, 6)
    rep = agreement_report(r2)
    assert (rep["fleiss_n_items"], rep["fleiss_n_raters"], rep["n_items_single_rating"]) == (30, 6, 1)
    with pytest.raises(ValueError, match="same number of ratings"):
        fleiss_kappa_table([[1, 1], [2, 1]])


# ---------------------------------------------------------------------------------------------------------------
# Krippendorff's alpha

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 observers x 12 units with missing
# values. Published: nominal 0.743, ordinal 0.815, interval 0.849, ratio 0.797. The same data and values are in
# the `krippendorff` package's tests (tests/test_krippendorff.py: ordinal 0.815, ratio 0.797) and NLTK's
# (nltk/test/unit/test_disagreement.py, test_advanced: nominal 0.743421052632).
K2011 = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
         [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]

# Wikipedia, "Krippendorff's alpha", computational example: 3 coders x 15 units; the `krippendorff` package's tests
# (test_nominal_metric_reliability_data 0.691358, test_interval_metric 0.810845).
WIKI_ALPHA = ["*    *    *    *    *    3    4    1    2    1    1    3    3    *    3",
              "1    *    2    1    3    3    4    3    *    *    *    *    *    *    *",
              "*    *    2    1    3    4    4    *    2    1    1    3    3    *    4"]


def test_krippendorff_alpha_2011_example_all_levels():
    r = from_matrix(K2011)
    assert krippendorff_alpha(r, "nominal").alpha == pytest.approx(0.743421052632, abs=1e-12)
    assert round(krippendorff_alpha(r, "ordinal").alpha, 3) == 0.815
    assert round(krippendorff_alpha(r, "interval").alpha, 3) == 0.849
    assert round(krippendorff_alpha(r, "ratio").alpha, 3) == 0.797
    res = krippendorff_alpha(r)
    assert (res.n_items, res.n_values) == (11, 40)  # unit 12 has one value: not pairable


def test_krippendorff_alpha_wikipedia_example():
    r = from_matrix([[None if v == "*" else int(v) for v in row.split()] for row in WIKI_ALPHA])
    assert round(krippendorff_alpha(r, "nominal").alpha, 6) == 0.691358
    assert round(krippendorff_alpha(r, "interval").alpha, 6) == 0.810845


def test_krippendorff_alpha_string_labels():
    # NLTK nltk/test/unit/test_disagreement.py, test_easy (from foolswood/krippendorffs_alpha): -0.3333333; the
    # unit rated once (dress3) is not pairable and must not matter (test_easy2).
    rows = [("coder1", "dress1", "YES"), ("coder2", "dress1", "NO"), ("coder3", "dress1", "NO"),
            ("coder1", "dress2", "YES"), ("coder2", "dress2", "NO"), ("coder3", "dress3", "NO")]
    r = Ratings.from_records([x[1] for x in rows], [x[0] for x in rows], [x[2] for x in rows])
    assert krippendorff_alpha(r).alpha == pytest.approx(-1 / 3, abs=1e-7)
    assert r.n_items_single == 1
    # krippendorff package tests/test_krippendorff.py, test_string_labels_nominal: 0.722222
    r = from_matrix([["pos", "neg", "neu", None], ["pos", "neg", "neu", "pos"], ["pos", "neg", "pos", "pos"]])
    assert round(krippendorff_alpha(r).alpha, 6) == 0.722222
    # ... test_string_labels_ordinal_with_domain: the 2011 data with ordered text labels, ordinal 0.815
    words = {1: "very low", 2: "low", 3: "mid", 4: "high", 5: "very high"}
    r = from_matrix([[words.get(v) for v in row] for row in K2011])
    vals = label_values(r.labels, ["very low", "low", "mid", "high", "very high"])
    assert round(krippendorff_alpha(r, "ordinal", vals).alpha, 3) == 0.815
    with pytest.raises(ValueError, match="not a number"):
        krippendorff_alpha(r, "interval")
    with pytest.raises(ValueError, match="not in the given order"):
        label_values(r.labels, ["low", "mid"])


def naive_alpha(units: list[list[float]], level: str) -> float:
    """Textbook alpha (Krippendorff 2011): explicit loops over the pairs of values within each unit."""
    vals = sorted({v for u in units for v in u})
    idx = {v: i for i, v in enumerate(vals)}
    o = np.zeros((len(vals), len(vals)))
    for u in units:
        m = len(u)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[idx[u[i]], idx[u[j]]] += 1.0 / (m - 1)
    n_c = o.sum(1)
    n = n_c.sum()

    def d(c, k):
        a, b = vals[c], vals[k]
        if level == "nominal":
            return float(a != b)
        if level == "interval":
            return (a - b) ** 2
        if level == "ratio":
            return ((a - b) / (a + b)) ** 2 if a + b else 0.0
        lo, hi = min(c, k), max(c, k)
        return (sum(n_c[g] for g in range(lo, hi + 1)) - (n_c[c] + n_c[k]) / 2) ** 2 if c != k else 0.0

    V = len(vals)
    do = sum(o[c, k] * d(c, k) for c in range(V) for k in range(V))
    de = sum(n_c[c] * n_c[k] * d(c, k) for c in range(V) for k in range(V))
    return 1 - (n - 1) * do / de


def test_krippendorff_alpha_matches_textbook_loops_across_chunks(monkeypatch):
    rng = np.random.default_rng(11)
    rows, units = [], []
    for u in range(300):
        m = int(rng.integers(1, 7))  # 1..6 raters of 8, some items single-rated
        raters = rng.choice(8, size=m, replace=False)
        base = rng.integers(1, 9)
        vals = [int(np.clip(base + rng.integers(-1, 2), 1, 8)) for _ in raters]
        units.append([float(v) for v in vals])
        rows += [(u, int(a), v) for a, v in zip(raters, vals)]
    r = Ratings.from_records(*zip(*rows))
    monkeypatch.setattr(stats, "PAIR_CHUNK", 7)  # many small chunks: chunk boundaries must not matter
    for level in stats.LEVELS:
        r._cache.clear()
        assert krippendorff_alpha(r, level).alpha == pytest.approx(naive_alpha(units, level), abs=1e-12), level
    monkeypatch.setattr(stats, "PAIR_CHUNK", 1 << 19)
    r._cache.clear()
    assert krippendorff_alpha(r, "ordinal").alpha == pytest.approx(naive_alpha(units, "ordinal"), abs=1e-12)


def test_krippendorff_alpha_1m_items_150_values_bounded_memory():
    """1,000,000 items x 150 values x ~3 raters (10% of ratings missing). An items x values x values array would be
    1e6 * 150**2 * 8 bytes = 180 GB, and even a dense items x values one 1.2 GB: the traced peak must stay far
    below the latter."""
    N, V, R = 1_000_000, 150, 3
    rng = np.random.default_rng(0)
    truth = rng.integers(0, V, N)
    item = np.repeat(np.arange(N), R)
    ann = (np.repeat(rng.integers(0, 10, N), R) + np.tile(np.arange(R), N) * 3) % 10  # 3 of 10 annotators
    val = np.where(rng.random(N * R) < 0.7, np.repeat(truth, R), rng.integers(0, V, N * R))
    keep = rng.random(N * R) > 0.1
    r = Ratings.from_codes(item[keep], ann[keep], val[keep], n_values=V)
    del item, ann, val, keep, truth
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    try:
        res = krippendorff_alpha(r, "nominal")
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nalpha 1M x {V} values: {r.n_ratings} ratings, {seconds:.2f} s, traced peak {peak / 2**20:.0f} MiB")
    assert peak < 400 * 2**20  # the time is measured by `make bench` (bench_agreement), not asserted
    # Independent check without pair generation: for the nominal level, o_cc = sum_u n_uc (n_uc - 1) / (m_u - 1)
    # and n_c = pairable ratings of value c; alpha = 1 - (n - 1)(n - sum_c o_cc) / (n^2 - sum_c n_c^2).
    m = np.bincount(r.item)
    sel = m[r.item] >= 2
    keys, cnt = np.unique(r.item[sel] * V + r.value[sel], return_counts=True)
    o_diag = np.bincount(keys % V, weights=cnt * (cnt - 1.0) / (m[keys // V] - 1.0), minlength=V)
    n_c = np.bincount(r.value[sel], minlength=V).astype(float)
    n = n_c.sum()
    expected = 1 - (n - 1) * (n - o_diag.sum()) / (n * n - (n_c * n_c).sum())
    assert res.alpha == pytest.approx(expected, abs=1e-9)
    _, o = r.pair_tables()
    assert np.allclose(o.sum(1), n_c) and np.allclose(o, o.T) and np.allclose(np.diag(o), o_diag)
    assert res.n_items == int(np.count_nonzero(m >= 2))


# ---------------------------------------------------------------------------------------------------------------
# Percent agreement, per-label agreement, degenerate cases

SMALL = [("i1", "a", "pos"), ("i1", "b", "pos"), ("i1", "c", "neg"), ("i2", "a", "neg"), ("i2", "b", "neg"),
         ("i3", "a", "pos"), ("i3", "c", "pos"), ("i4", "b", "neu"),
         ("i5", "a", "neu"), ("i5", "b", "neu"), ("i5", "c", "neu")]


def test_percent_and_per_label_agreement_hand_computed():
    r = Ratings.from_records(*zip(*SMALL))
    # pairs of ratings within items: i1 3 pairs (1 agrees), i2 1 (1), i3 1 (1), i5 3 (3); i4 is single-rated
    pa, n_pairs = percent_agreement(r)
    assert (pa, n_pairs) == (6 / 8, 8)
    la = label_agreement(r)
    per = {row["label"]: row for row in la.per_label()}
    # neg: pairs involving a 'neg' rating: i1 (neg,pos) x2, i2 (neg,neg) -> 2*1 / (2*1 + 2) = 0.5
    assert per["neg"]["specific_agreement"] == pytest.approx(0.5)
    # pos: i1 (pos,pos) + i1 2 disagreements + i3 (pos,pos) -> 2*2 / (2*2 + 2) = 2/3
    assert per["pos"]["specific_agreement"] == pytest.approx(2 / 3)
    assert per["neu"]["specific_agreement"] == pytest.approx(1.0)
    assert per["neu"]["n_ratings"] == 4  # the single rating of i4 counts in volume, not in pairs
    assert la.confusions() == [{"label_a": "neg", "label_b": "pos", "n_pairs": 2}]
    assert r.n_items_single == 1 and r.n_items_pairable == 4
    # Fleiss: 2 items with 3 ratings (i1, i5) and 2 with 2 (i2, i3): a tie, the larger number of raters wins.
    # On i1, i5: P_i = 1/3, 1 -> P-bar 2/3; p = (neg 1, neu 3, pos 2) / 6 -> P_e = 14/36; kappa = 10/22 = 5/11.
    fl = fleiss_kappa(r)
    assert (fl.n_items, fl.n_raters) == (2, 3)
    assert fl.kappa == pytest.approx(5 / 11)


def test_specific_agreement_two_raters_wikipedia_table():
    # Positive / negative specific agreement of a 2 x 2 table (Cicchetti & Feinstein 1990): PSA = 2a / (2a + b + c),
    # NSA = 2d / (2d + b + c); on Wikipedia's Cohen's kappa example (a=20, b=5, c=10, d=15): 40/55 and 30/45.
    a = ["Yes"] * 25 + ["No"] * 25
    b = ["Yes"] * 20 + ["No"] * 5 + ["Yes"] * 10 + ["No"] * 15
    la = label_agreement(from_columns(a, b))
    per = {row["label"]: row["specific_agreement"] for row in la.per_label()}
    assert per["Yes"] == pytest.approx(40 / 55)
    assert per["No"] == pytest.approx(30 / 45)
    assert la.confusions() == [{"label_a": "No", "label_b": "Yes", "n_pairs": 15}]


def test_all_annotators_agree_on_one_label_gives_null_with_reason_never_nan():
    rows = [(f"i{u}", a, "spam") for u in range(5) for a in ("x", "y", "z")]
    rep = agreement_report(Ratings.from_records(*zip(*rows)), levels=["interval"], values=[1.0])
    text = json.dumps(rep, allow_nan=False)  # raises on NaN / inf
    assert "NaN" not in text
    assert rep["percent_agreement"] == 1.0
    assert all(p["kappa"] is None and "undefined" in p["reason"] and "'spam'" in p["reason"]
               for p in rep["cohen_kappa_pairwise"])
    assert rep["cohen_kappa_mean"] is None and rep["cohen_kappa_mean_reason"]
    assert rep["fleiss_kappa"] is None and "undefined" in rep["fleiss_kappa_reason"]
    assert rep["krippendorff_alpha_nominal"] is None and rep["krippendorff_alpha_nominal_reason"]
    assert rep["krippendorff_alpha_interval"] is None
    assert rep["annotators"][0]["mean_pairwise_kappa"] is None


def test_no_pairable_items():
    r = Ratings.from_records(["i1", "i2"], ["a", "b"], ["x", "y"])
    rep = agreement_report(r)
    json.dumps(rep, allow_nan=False)
    assert rep["n_items_single_rating"] == 2 and rep["n_items_pairable"] == 0
    assert rep["percent_agreement"] is None and rep["percent_agreement_reason"]
    assert rep["cohen_kappa_pairwise"] == [] and rep["cohen_kappa_mean"] is None
    assert rep["fleiss_kappa"] is None and rep["krippendorff_alpha_nominal"] is None
    assert alpha_from_coincidences(np.zeros((2, 2))).reason


def test_duplicate_rating_is_an_error_or_keeps_last():
    items, anns, labs = ["i1", "i1", "i2", "i1"], ["a", "b", "a", "a"], ["x", "y", "x", "y"]
    with pytest.raises(DuplicateRatingError) as exc:
        Ratings.from_records(items, anns, labs)
    assert (exc.value.position, exc.value.first_position) == (3, 0)
    assert (exc.value.item_id, exc.value.annotator_id) == ("i1", "a")
    r = Ratings.from_records(items, anns, labs, duplicates="last")
    assert r.n_duplicates_dropped == 1 and r.n_ratings == 3
    (pair,) = cohen_kappa_pairwise(r)
    assert pair.p_observed == 1.0  # a's kept rating of i1 is the last one, 'y', as b's


def test_gold_accuracy_and_annotator_summary():
    r = Ratings.from_records(*zip(*SMALL))
    gold = {"i1": "pos", "i2": "pos", "i4": "neu", "i9": "neg"}  # i9: a gold item nobody rated
    g = gold_accuracy(r, gold)
    # a: i1 pos (ok), i2 neg (wrong) -> 1/2; b: i1 pos ok, i2 neg wrong, i4 neu ok -> 2/3; c: i1 neg wrong -> 0/1
    assert g["per_annotator"]["a"] == {"n_gold_rated": 2, "n_correct": 1, "accuracy": 0.5}
    assert g["per_annotator"]["b"] == {"n_gold_rated": 3, "n_correct": 2, "accuracy": pytest.approx(2 / 3)}
    assert g["per_annotator"]["c"] == {"n_gold_rated": 1, "n_correct": 0, "accuracy": 0.0}
    assert (g["n_gold_items"], g["n_gold_items_rated"], g["n_gold_ratings"], g["n_correct"]) == (4, 3, 6, 3)
    pairs = cohen_kappa_pairwise(r)
    kap = {(p.annotator_a, p.annotator_b): p.kappa for p in pairs}
    # b-c share i1 (pos/neg) and i5 (neu/neu): p_o 1/2, p_e 1/4 -> kappa 1/3 (hand computed)
    assert kap[("b", "c")] == pytest.approx(1 / 3)
    summ = {row["annotator_id"]: row for row in annotator_summary(r, pairs, gold,
                                                                 lead_time=np.arange(len(SMALL), dtype=float))}
    assert summ["c"]["mean_pairwise_kappa"] == pytest.approx((kap[("a", "c")] + kap[("b", "c")]) / 2)
    assert (summ["b"]["n_ratings"], summ["b"]["n_items_shared"], summ["b"]["gold_accuracy"]) == (
        4, 3, pytest.approx(2 / 3))
    assert summ["a"]["lead_time_median_s"] == pytest.approx(np.median([0, 3, 5, 8]))


# ---------------------------------------------------------------------------------------------------------------
# Spans

def test_span_f1_exact_vs_overlap_and_per_type():
    a = [(0, 5, "PER"), (10, 20, "LOC"), (30, 35, "ORG")]
    b = [(0, 5, "PER"), (12, 22, "LOC"), (30, 35, "PER"), (40, 45, "ORG")]
    # exact: only (0,5,PER) -> M=1, F1 = 2/7
    e = sp.span_f1(a, b, "exact")
    assert (e["matched"], e["n_spans_a"], e["n_spans_b"]) == (1, 3, 4)
    assert e["f1"] == pytest.approx(2 / 7)
    assert (e["precision"], e["recall"]) == (pytest.approx(1 / 4), pytest.approx(1 / 3))
    # overlap: PER and LOC overlap with the same label; (30,35) differs in type; (40,45,ORG) overlaps nothing
    o = sp.span_f1(a, b, "overlap")
    assert o["matched"] == 2 and o["f1"] == pytest.approx(4 / 7)
    # per type
    assert sp.span_f1(a, b, "overlap", label="LOC")["f1"] == 1.0
    assert sp.span_f1(a, b, "exact", label="LOC")["f1"] == 0.0
    assert sp.span_f1(a, b, "exact", label="ORG")["f1"] == 0.0  # ORG (30,35) vs ORG (40,45)
    assert sp.span_f1(a, b, "exact", label="PER")["f1"] == pytest.approx(2 / 3)  # 2*1 / (1 + 2)
    # adjacent spans do not overlap (end is exclusive)
    assert sp.span_f1([(0, 5, "X")], [(5, 9, "X")], "overlap")["matched"] == 0
    # nothing on either side: F1 undefined (None), not 0 or NaN
    assert sp.span_f1([], [], "exact")["f1"] is None


def test_span_overlap_matching_is_one_to_one():
    # one long span over two short ones: a single match, not two
    o = sp.span_f1([(0, 20, "X")], [(0, 5, "X"), (10, 15, "X")], "overlap")
    assert (o["matched"], o["f1"]) == (1, pytest.approx(2 / 3))
    # greedy matching would pair a0 with b0 and leave a1 unmatched; the maximum matching pairs both
    a = [(0, 10, "X"), (8, 12, "X")]
    b = [(9, 11, "X"), (0, 3, "X")]
    assert sp.span_f1(a, b, "overlap")["matched"] == 2
    # duplicates count as often as both sides have them
    assert sp.span_f1([(0, 2, "X")] * 2, [(0, 2, "X")], "exact")["matched"] == 1


def test_span_agreement_aggregates_over_items_and_pairs():
    from labelops.dispatch.tasks import Span  # the project's span type works as is

    ann = {
        "t1": {"a": [(0, 4, "PER"), (5, 9, "LOC")], "b": [(0, 4, "PER"), (5, 8, "LOC")],
               "c": [Span(0, 4, "PER", "John")]},
        "t2": {"a": [], "b": []},  # both saw no entity
        "t3": {"a": [{"start": 1, "end": 3, "label": "LOC"}], "c": []},
        "t4": {"b": [(0, 1, "PER")]},  # a single annotator: not pairable
    }
    res = sp.span_agreement(ann)
    assert (res["n_items"], res["n_items_single_annotator"], res["n_item_pairs"],
            res["n_item_pairs_both_empty"]) == (4, 1, 5, 1)
    # exact, by pair: a-b on t1: 1 match of 2+2; a-c on t1: 1 of 2+1, on t3: 0 of 1+0; b-c on t1: 1 of 2+1
    ex = res["exact"]
    assert ex["overall"]["matched"] == 3
    assert ex["overall"]["f1"] == pytest.approx(2 * 3 / (4 + 3 + 1 + 3))
    pp = {(p["annotator_a"], p["annotator_b"]): p for p in ex["per_pair"]}
    assert pp[("a", "b")]["f1"] == pytest.approx(0.5) and pp[("a", "b")]["n_items"] == 2
    assert pp[("a", "c")]["f1"] == pytest.approx(2 / 4) and pp[("a", "c")]["n_items"] == 2
    # overlap additionally matches LOC (5,9)~(5,8) for a-b
    ov = res["overlap"]
    assert ov["overall"]["matched"] == 4
    # LOC spans: a-b t1 1+1 (matched), a-c t1 1+0, a-c t3 1+0, b-c t1 1+0 -> F1 = 2*1 / 5
    assert ov["per_type"]["LOC"]["f1"] == pytest.approx(2 * 1 / 5)
    assert ov["per_type"]["PER"]["f1"] == 1.0
    assert ex["per_type"]["LOC"]["f1"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Command line (end to end, in a subprocess)

def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    return subprocess.run([sys.executable, "-m", "labelops.agreement", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_cli_end_to_end(tmp_path):
    # BOM, extra column, string labels; i3 lacks annotator b, i4 has only b (single-rated), one blank label.
    csv = "item_id,annotator_id,label,lead_time\n" + "\n".join(
        f"{i},{a},{lab},{n}" for n, (i, a, lab) in enumerate(SMALL)) + "\ni6,a,,1\n"
    f = write(tmp_path / "ratings.csv", csv, bom=True)
    g = write(tmp_path / "gold.csv", "item_id,label\ni1,pos\ni2,pos\ni4,neu\n")
    out = run_cli(f, "--gold", g, "--level", "ordinal", "--order", "neg,neu,pos")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    lib = agreement_report(Ratings.from_records(*zip(*SMALL)))
    assert (rep["n_items"], rep["n_annotators"], rep["n_items_single_rating"], rep["n_rows_blank_label"]) == (
        5, 3, 1, 1)
    assert rep["percent_agreement"] == pytest.approx(0.75)
    assert rep["cohen_kappa_pairwise"] == lib["cohen_kappa_pairwise"]
    first = rep["cohen_kappa_pairwise"][0]
    assert set(first) >= {"annotator_a", "annotator_b", "n_items", "kappa", "ci_low", "ci_high"}
    assert rep["cohen_kappa_mean"] == pytest.approx(lib["cohen_kappa_mean"])
    assert rep["fleiss_kappa"] == pytest.approx(lib["fleiss_kappa"]) and rep["fleiss_n_items"] == 2
    assert rep["krippendorff_alpha_nominal"] == pytest.approx(lib["krippendorff_alpha_nominal"])
    r = Ratings.from_records(*zip(*SMALL))
    assert rep["krippendorff_alpha_ordinal"] == pytest.approx(
        krippendorff_alpha(r, "ordinal", label_values(r.labels, ["neg", "neu", "pos"])).alpha)
    ann = {row["annotator_id"]: row for row in rep["annotators"]}
    assert ann["b"]["gold_accuracy"] == pytest.approx(2 / 3) and ann["c"]["gold_accuracy"] == 0.0
    assert ann["a"]["lead_time_median_s"] == pytest.approx(4.0)  # rows 0, 3, 5, 8
    assert rep["gold"]["n_gold_items"] == 3


def test_cli_numeric_levels_and_duplicates(tmp_path):
    rows = [(u, f"c{c}", v) for c, row in enumerate(K2011) for u, v in enumerate(row) if v is not None]
    f = write(tmp_path / "k.csv", "item_id,annotator_id,label\n" + "\n".join(f"{u},{a},{v}" for u, a, v in rows))
    out = run_cli(f, "--level", "interval", "--level", "ordinal")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    # Krippendorff (2011) example C, as in test_krippendorff_alpha_2011_example_all_levels
    assert round(rep["krippendorff_alpha_nominal"], 3) == 0.743
    assert round(rep["krippendorff_alpha_interval"], 3) == 0.849
    assert round(rep["krippendorff_alpha_ordinal"], 3) == 0.815
    # a duplicate rating: an error naming both lines, or the later row kept with --duplicates last
    dup = write(tmp_path / "dup.csv", "item_id,annotator_id,label\n1,a,x\n1,b,x\n2,a,y\n1,a,y\n2,b,y\n")
    out = run_cli(dup)
    assert out.returncode == 1 and out.stdout == ""
    assert "dup.csv:5" in out.stderr and "line 2" in out.stderr and "'a'" in out.stderr and "'1'" in out.stderr
    out = run_cli(dup, "--duplicates", "last")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["n_duplicate_ratings_dropped"] == 1 and rep["percent_agreement"] == 0.5


@pytest.mark.parametrize("content, args, message", [
    ("item_id,annotator,label\n1,a,x\n", [], "missing column(s) annotator_id"),
    ("", [], "is empty"),
    ("\n  \n", [], "is empty"),
    ("item_id,annotator_id,label\n", [], "no ratings"),
    ("item_id,annotator_id,label\n1,a,x\n2,a,y\n", [], "only one annotator ('a')"),
    ("item_id,annotator_id,label\n1,a,x\n,b,y\n", [], "r.csv:3: blank item_id"),
    ("item_id,annotator_id,label\n1,a,x\n1,b,y\n", ["--level", "interval"], "not a number"),
    ("item_id,annotator_id,label\n1,a,x\n1,b,y\n", ["--level", "ordinal", "--order", "x"], "not in the given order"),
])
def test_cli_errors(tmp_path, content, args, message):
    f = write(tmp_path / "r.csv", content)
    out = run_cli(f, *args)
    assert out.returncode == 1, out.stdout
    assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_cli_missing_file_and_degenerate_labels(tmp_path):
    out = run_cli(tmp_path / "nope.csv")
    assert out.returncode == 1 and "no such file" in out.stderr
    (tmp_path / "latin1.csv").write_bytes(b"item_id,annotator_id,label\n1,a,caf\xe9\n1,b,x\n")
    out = run_cli(tmp_path / "latin1.csv")
    assert out.returncode == 1 and "not UTF-8" in out.stderr and "Traceback" not in out.stderr
    f = write(tmp_path / "same.csv", "item_id,annotator_id,label\n1,a,ok\n1,b,ok\n2,a,ok\n2,b,ok\n")
    out = run_cli(f)
    assert out.returncode == 0, out.stderr
    assert "NaN" not in out.stdout
    rep = json.loads(out.stdout)
    assert rep["cohen_kappa_pairwise"][0]["kappa"] is None and rep["cohen_kappa_pairwise"][0]["reason"]
    assert rep["fleiss_kappa"] is None and rep["krippendorff_alpha_nominal"] is None
    assert rep["percent_agreement"] == 1.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in rep.values())
