"""Inter-annotator agreement for categorical labels: Cohen's kappa per annotator pair (with a 95% CI), Fleiss'
kappa, Krippendorff's alpha (nominal, ordinal, interval, ratio), percent agreement, per-label (specific) agreement
and the label confusions between annotators, gold accuracy and per-annotator summaries.

Pure Python + numpy; no Airflow, no I/O (the command line in ``__main__`` reads the CSV files).

Input: :class:`Ratings`
-----------------------
One rating is (item, annotator, label). ``Ratings.from_records`` takes ids of any hashable type (the CSV gives
strings) and codes them: items in first-seen order, annotators and labels sorted. Labels are compared exactly
(the CLI strips surrounding whitespace). An annotator rating the same item twice is an error by default
(:class:`DuplicateRatingError` names both positions); ``duplicates="last"`` keeps the last rating instead and
counts the dropped ones. Items rated by a single annotator are kept and counted (``n_items_single``), but they are
not *pairable*: they take no part in any agreement coefficient or in percent agreement (there is nothing to agree
with), only in volumes and gold accuracy.

Definitions (n_uc = number of ratings of item u with label c, m_u = sum_c n_uc, only items with m_u >= 2)
-----------------------------------------------------------------------------------------------------------
* **Percent agreement**: over all pairs of ratings of the same item by two different annotators, the share that
  agree: sum_u sum_c n_uc (n_uc - 1) / sum_u m_u (m_u - 1) (every pair counted once per order; the ratio is the
  same). Items with more raters weigh more, as they hold more pairs.
* **Pairwise label table** ``T`` (labels x labels): T[c, k] = number of ordered pairs of ratings (r, s) of the
  same item by different annotators with label(r) = c and label(s) = k; symmetric; T[c, k] for c != k is the number
  of times two annotators disagreed with one saying c and the other k ("which labels annotators confuse").
  **Specific agreement** of label c (Fleiss 1971 / Uebersax's "specific agreement"; for two raters and two labels
  it is the positive specific agreement 2a / (2a + b + c) of Cicchetti & Feinstein 1990):
  T[c, c] / sum_k T[c, k] = 2 n_cc / (row_c + col_c): of the pairs in which one rating is c, the share where the
  other is c too.
* **Cohen's kappa** (Cohen 1960) for every pair of annotators on the items both rated: kappa = (p_o - p_e) /
  (1 - p_e). Its standard error is the large-sample one of Fleiss, Cohen & Everitt (1969), as printed by SAS PROC
  FREQ (``ASE``); the CI is kappa +- z * ASE (normal approximation, clipped to [-1, 1]); ``se0`` is the standard
  error under H0: kappa = 0 for the z test. Pairs with no shared item are not listed. ``cohen_kappa_mean`` is the
  unweighted mean over the pairs whose kappa is defined.
* **Fleiss' kappa** (Fleiss 1971) needs the same number of ratings on every item. With missing ratings it is
  computed on the items that have the *modal* number of ratings m among the pairable items (ties: the larger m),
  with the formula of the paper unchanged; ``fleiss_n_items`` and ``fleiss_n_raters`` say which. (The other items
  still count in Krippendorff's alpha, which is defined for missing data.)
* **Krippendorff's alpha** (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"): the coincidence
  matrix o[c, k] = sum_u (number of ordered pairs of ratings of u with values c, k by different annotators) /
  (m_u - 1), n_c = sum_k o[c, k], n = sum_c n_c, and alpha = 1 - (n - 1) sum o[c,k] d2(c,k) / sum n_c n_k d2(c,k)
  with d2 the level's difference function: nominal (c != k), ordinal ((sum_{g=c..k} n_g - (n_c + n_k) / 2)^2,
  values ranked by their numeric value), interval ((c - k)^2), ratio (((c - k) / (c + k))^2).
  **Memory**: o is built without any items x values x values array: the (item, value) counts are found with one
  sort (``np.unique``), and the pairs of distinct values within each pairable item (at most min(m_u, V)^2 per
  item) are generated in chunks of about ``PAIR_CHUNK`` pairs and summed into the V x V matrix with
  ``np.bincount``. Memory is O(number of ratings + V^2 + PAIR_CHUNK), whatever the number of values.

Undefined statistics (e.g. everybody used one label: chance agreement is 1 and kappa is 0/0) are ``None`` with a
``reason`` string, never NaN; :func:`agreement_report` returns a dict that ``json.dumps(..., allow_nan=False)``
accepts.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

LEVELS = ("nominal", "ordinal", "interval", "ratio")
PAIR_CHUNK = 1 << 19  # pairs generated at once when building the pair tables (bounds the working memory)


class DuplicateRatingError(ValueError):
    """An annotator rated the same item twice (``duplicates="error"``). Positions are 0-based input positions."""

    def __init__(self, position: int, first_position: int, item_id: Any, annotator_id: Any):
        self.position, self.first_position = position, first_position
        self.item_id, self.annotator_id = item_id, annotator_id
        super().__init__(f"annotator {annotator_id!r} rated item {item_id!r} twice (positions {first_position} "
                         f"and {position})")


def _factorize(values: Iterable[Hashable], sort: bool) -> tuple[np.ndarray, list]:
    """Integer codes and the distinct values (sorted when possible and asked for, else in first-seen order)."""
    index: dict = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.intp)
    uniques = list(index)
    return _sorted_codes(codes, uniques) if sort else (codes, uniques)


def _sorted_codes(codes: np.ndarray, uniques: list) -> tuple[np.ndarray, list]:
    """Recode so that the distinct values are in natural order (unchanged if they cannot be ordered)."""
    if len(uniques) < 2:
        return codes, uniques
    try:
        order = sorted(range(len(uniques)), key=lambda i: _natural_key(uniques[i]))
    except TypeError:
        return codes, uniques
    remap = np.empty(len(uniques), dtype=np.intp)
    remap[np.asarray(order, dtype=np.intp)] = np.arange(len(uniques), dtype=np.intp)
    return remap[codes], [uniques[i] for i in order]


def _natural_key(v: Any) -> tuple:
    """Numbers (and numeric strings) by value before other strings, so labels '2' < '10'."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    if isinstance(v, str):
        try:
            x = float(v)
            if math.isfinite(x):
                return (0, x, v)
        except ValueError:
            pass
    return (1, 0.0, str(v))


class Ratings:
    """Coded ratings: ``item``, ``annotator``, ``value`` are equal-length integer arrays (one entry per rating, at
    most one rating per (item, annotator)); ``item_ids``, ``annotator_ids``, ``labels`` map the codes back;
    ``source_index`` is each kept rating's position in the input."""

    def __init__(self, item: np.ndarray, annotator: np.ndarray, value: np.ndarray, *, item_ids: Sequence | None,
                 annotator_ids: Sequence, labels: Sequence, source_index: np.ndarray, n_duplicates_dropped: int = 0):
        self.item, self.annotator, self.value = item, annotator, value
        self.item_ids, self.annotator_ids, self.labels = item_ids, list(annotator_ids), list(labels)
        self.source_index = source_index
        self.n_duplicates_dropped = n_duplicates_dropped
        self._cache: dict[str, Any] = {}

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_records(cls, item_ids: Iterable[Hashable], annotator_ids: Iterable[Hashable],
                     labels: Iterable[Hashable], *, duplicates: str = "error") -> Ratings:
        """From three parallel sequences of ids / labels. ``duplicates``: "error" (raise
        :class:`DuplicateRatingError`) or "last" (keep the last rating of an (item, annotator))."""
        item, items = _factorize(item_ids, sort=False)
        annotator, annotators = _factorize(annotator_ids, sort=True)
        value, label_list = _factorize(labels, sort=True)
        if not (len(item) == len(annotator) == len(value)):
            raise ValueError("item_ids, annotator_ids and labels must have the same length")
        return cls._build(item, annotator, value, items, annotators, label_list, duplicates)

    @classmethod
    def from_codes(cls, item: np.ndarray, annotator: np.ndarray, value: np.ndarray, *, n_values: int | None = None,
                   labels: Sequence | None = None, annotator_ids: Sequence | None = None,
                   item_ids: Sequence | None = None, sort_ids: bool = False, duplicates: str = "error") -> Ratings:
        """From integer codes (0-based). Labels default to the codes themselves, annotator ids to the codes as
        strings, item ids to the codes. ``sort_ids``: recode annotators and labels into sorted order (as
        ``from_records`` does)."""
        item = np.asarray(item, dtype=np.intp)
        annotator = np.asarray(annotator, dtype=np.intp)
        value = np.asarray(value, dtype=np.intp)
        if not (item.shape == annotator.shape == value.shape) or item.ndim != 1:
            raise ValueError("item, annotator and value must be 1-d arrays of the same length")
        for name, a in (("item", item), ("annotator", annotator), ("value", value)):
            if a.size and a.min() < 0:
                raise ValueError(f"{name} codes must be >= 0")
        nv = int(value.max()) + 1 if value.size else 0
        if labels is None:
            labels = list(range(max(nv, n_values or 0)))
        if len(labels) < nv:
            raise ValueError("a value code is >= the number of labels")
        na = int(annotator.max()) + 1 if annotator.size else 0
        if annotator_ids is None:
            annotator_ids = [str(a) for a in range(na)]
        if len(annotator_ids) < na:
            raise ValueError("an annotator code is >= the number of annotator ids")
        if item_ids is not None and item.size and int(item.max()) >= len(item_ids):
            raise ValueError("an item code is >= the number of item ids")
        if sort_ids:
            annotator, annotator_ids = _sorted_codes(annotator, list(annotator_ids))
            value, labels = _sorted_codes(value, list(labels))
        return cls._build(item, annotator, value, None if item_ids is None else list(item_ids), annotator_ids,
                          labels, duplicates)

    @classmethod
    def _build(cls, item, annotator, value, items, annotators, label_list, duplicates) -> Ratings:
        if duplicates not in ("error", "last"):
            raise ValueError("duplicates must be 'error' or 'last'")
        n = item.size
        n_ann = max(len(annotators), int(annotator.max()) + 1 if n else 0)
        key = item.astype(np.int64) * n_ann + annotator
        order = np.argsort(key, kind="stable")
        ks = key[order]
        dup = np.flatnonzero(ks[1:] == ks[:-1])  # order[dup + 1] repeats order[dup] (stable: later position)
        src = np.arange(n, dtype=np.intp)
        dropped = 0
        if dup.size:
            if duplicates == "error":
                later = order[dup + 1]
                j = int(np.argmin(later))  # the first repeated rating in input order
                pos = int(later[j])
                # the first occurrence of that key: the start of its run in the sorted order
                start = int(np.searchsorted(ks, ks[dup[j]], side="left"))
                first = int(order[start])
                it = items[item[pos]] if items is not None else int(item[pos])
                raise DuplicateRatingError(pos, first, it, annotators[annotator[pos]])
            # keep the last of each run of equal keys
            last = np.r_[ks[1:] != ks[:-1], True]
            keep = np.sort(order[last])
            dropped = n - keep.size
            item, annotator, value, src = item[keep], annotator[keep], value[keep], src[keep]
        return cls(item, annotator, value, item_ids=items, annotator_ids=annotators, labels=label_list,
                   source_index=src, n_duplicates_dropped=dropped)

    # -- sizes --------------------------------------------------------------------------------------------------
    @property
    def n_ratings(self) -> int:
        return int(self.item.size)

    @property
    def n_values(self) -> int:
        return len(self.labels)

    @property
    def n_annotators(self) -> int:
        return len(self.annotator_ids)

    def ratings_per_item(self) -> np.ndarray:
        """m_u for every item code (0 for a code without ratings)."""
        if "m" not in self._cache:
            self._cache["m"] = np.bincount(self.item, minlength=len(self.item_ids) if self.item_ids else 0)
        return self._cache["m"]

    @property
    def n_items(self) -> int:
        return int(np.count_nonzero(self.ratings_per_item()))

    @property
    def n_items_pairable(self) -> int:
        return int(np.count_nonzero(self.ratings_per_item() >= 2))

    @property
    def n_items_single(self) -> int:
        return int(np.count_nonzero(self.ratings_per_item() == 1))

    def item_id(self, code: int) -> Any:
        return self.item_ids[code] if self.item_ids is not None else int(code)

    # -- the two pair tables, built once --------------------------------------------------------------------------
    def pair_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, o): the pairwise label table and Krippendorff's coincidence matrix (both values x values)."""
        if "tables" not in self._cache:
            self._cache["tables"] = _pair_tables(self.item, self.value, self.n_values)
        return self._cache["tables"]


# ------------------------------------------------------------------------------------------------------------------
# Pair generation without items x values x values arrays


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of equal values in a sorted array."""
    if sorted_keys.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.r_[starts, sorted_keys.size])
    return starts, lengths


def _group_pairs(lengths: np.ndarray, max_pairs: int | None = None):
    """For consecutive groups of the given lengths (group g occupies positions sum(lengths[:g]) ...), yield arrays
    (first, second) of positions: every ordered pair within a group, self-pairs included, a chunk of whole groups
    (about ``max_pairs`` pairs) at a time."""
    lengths = lengths.astype(np.int64)
    if lengths.size == 0:
        return
    max_pairs = max_pairs or PAIR_CHUNK
    starts = np.cumsum(lengths) - lengths
    cum = np.cumsum(lengths * lengths)
    g, n_groups = 0, lengths.size
    while g < n_groups:
        base = int(cum[g - 1]) if g else 0
        g_end = max(int(np.searchsorted(cum, base + max_pairs, side="right")), g + 1)
        L, S = lengths[g:g_end], starts[g:g_end]
        pos = np.arange(S[0], S[-1] + L[-1], dtype=np.int64)  # positions of these groups (contiguous)
        reps = np.repeat(L, L)  # for each position: the length of its group
        first = np.repeat(pos, reps)
        block = np.repeat(np.cumsum(reps) - reps, reps)  # where each position's block of partners starts
        second = np.repeat(np.repeat(S, L), reps) + (np.arange(first.size, dtype=np.int64) - block)
        yield first, second
        g = g_end


def _item_value_counts(item: np.ndarray, value: np.ndarray, n_values: int):
    """Sparse (item, value, count) triples, sorted by item, for the pairable items (>= 2 ratings) only."""
    key = item.astype(np.int64) * max(n_values, 1) + value
    uniq, counts = np.unique(key, return_counts=True)
    it = uniq // max(n_values, 1)
    val = (uniq - it * max(n_values, 1)).astype(np.intp)
    starts, lengths = _runs(it)
    m = np.add.reduceat(counts, starts) if starts.size else np.zeros(0, dtype=counts.dtype)
    keep_group = m >= 2
    keep = np.repeat(keep_group, lengths)
    return it[keep], val[keep], counts[keep].astype(np.float64), lengths[keep_group], m[keep_group]


def _pair_tables(item: np.ndarray, value: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    V = max(n_values, 1)
    _, val, cnt, lengths, m = _item_value_counts(item, value, n_values)
    T = np.zeros(V * V, dtype=np.float64)
    O = np.zeros(V * V, dtype=np.float64)
    if lengths.size:
        inv_m1 = np.repeat(1.0 / (m - 1.0), lengths)  # per entry: 1 / (m_u - 1)
        for first, second in _group_pairs(lengths):
            w = cnt[first] * (cnt[second] - (first == second))  # ordered rating pairs by different annotators
            key = val[first] * V + val[second]
            T += np.bincount(key, weights=w, minlength=V * V)
            O += np.bincount(key, weights=w * inv_m1[first], minlength=V * V)
    return T.reshape(V, V)[:n_values, :n_values], O.reshape(V, V)[:n_values, :n_values]


def coincidence_matrix(item: np.ndarray, value: np.ndarray, n_values: int) -> np.ndarray:
    """Krippendorff's coincidence matrix (values x values) of coded ratings (one per (item, annotator))."""
    return _pair_tables(np.asarray(item), np.asarray(value), n_values)[1]


# ------------------------------------------------------------------------------------------------------------------
# Results


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _f(x: float | None) -> float | None:
    """A finite Python float, or None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class KappaResult:
    """Cohen's kappa of one 2-rater table. ``kappa`` None => ``reason`` says why."""

    kappa: float | None
    n: int
    p_observed: float | None
    p_expected: float | None
    se: float | None = None  # Fleiss-Cohen-Everitt (1969) large-sample standard error (SAS "ASE")
    ci_low: float | None = None
    ci_high: float | None = None
    se0: float | None = None  # standard error under H0: kappa = 0
    z: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def cohen_kappa(table: Any, confidence: float = 0.95, labels: Sequence | None = None) -> KappaResult:
    """Cohen's kappa of a k x k contingency table (rows: rater A's label, columns: rater B's), with the
    Fleiss-Cohen-Everitt (1969) asymptotic standard error and a normal-approximation confidence interval.
    ``labels`` (one per row) only serve the messages."""
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError("the table must be square")
    n = float(t.sum())
    if n <= 0:
        return KappaResult(None, 0, None, None, reason="no shared items")
    p = t / n
    row, col = p.sum(1), p.sum(0)
    p_o = float(np.trace(p))
    p_e = float(row @ col)
    if 1.0 - p_e <= 1e-12:
        used = int(np.flatnonzero(row + col)[0])
        name = repr(labels[used]) if labels is not None else f"code {used}"
        return KappaResult(None, int(n), p_o, p_e, reason=(
            f"both annotators gave all {int(n)} shared items the same single label ({name}): chance "
            f"agreement is 1 and kappa is undefined (0/0)"))
    kappa = (p_o - p_e) / (1.0 - p_e)
    # Fleiss, Cohen & Everitt (1969): var = (A + B - C) / (n (1 - p_e)^2)
    diag = np.diag(p)
    A = float(np.sum(diag * (1.0 - (row + col) * (1.0 - kappa)) ** 2))
    off = p.copy()
    np.fill_diagonal(off, 0.0)
    B = (1.0 - kappa) ** 2 * float(np.sum(off * (col[:, None] + row[None, :]) ** 2))
    C = (kappa - p_e * (1.0 - kappa)) ** 2
    var = max(A + B - C, 0.0) / (n * (1.0 - p_e) ** 2)
    var0 = max(p_e + p_e ** 2 - float(np.sum(row * col * (row + col))), 0.0) / (n * (1.0 - p_e) ** 2)
    se, se0 = math.sqrt(var), math.sqrt(var0)
    z = _z(confidence)
    return KappaResult(kappa=kappa, n=int(n), p_observed=p_o, p_expected=p_e, se=se,
                       ci_low=max(-1.0, kappa - z * se), ci_high=min(1.0, kappa + z * se), se0=se0,
                       z=(kappa / se0) if se0 > 0 else None)


@dataclass
class PairKappa:
    annotator_a: Any
    annotator_b: Any
    n_items: int
    kappa: float | None
    ci_low: float | None
    ci_high: float | None
    se: float | None
    p_observed: float | None
    p_expected: float | None
    reason: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _rating_pair_counts(r: Ratings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every annotator pair (a < b) and label pair: the number of items where a said la and b said lb.
    Returns parallel arrays (a, b, la, lb, count), sorted by (a, b). Pairs of ratings are generated per item in
    bounded chunks and reduced with np.unique per chunk, so memory is O(distinct (a, b, la, lb) + chunk)."""
    R, V = max(r.n_annotators, 1), max(r.n_values, 1)
    order = np.lexsort((r.annotator, r.item))
    it, an, va = r.item[order], r.annotator[order], r.value[order]
    starts, lengths = _runs(it)
    keep = np.repeat(lengths >= 2, lengths)
    an, va, lengths = an[keep], va[keep], lengths[lengths >= 2]
    keys, counts = [], []
    for first, second in _group_pairs(lengths):
        sel = first < second  # within an item annotators are sorted and distinct: a < b
        f, s = first[sel], second[sel]
        key = ((an[f].astype(np.int64) * R + an[s]) * V + va[f]) * V + va[s]
        u, c = np.unique(key, return_counts=True)
        keys.append(u)
        counts.append(c)
    if not keys:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, z, z
    allk = np.concatenate(keys)
    u, inv = np.unique(allk, return_inverse=True)
    c = np.bincount(inv, weights=np.concatenate(counts)).astype(np.int64)
    lb = u % V
    rest = u // V
    la = rest % V
    pair = rest // V
    return pair // R, pair % R, la, lb, c


def cohen_kappa_pairwise(r: Ratings, confidence: float = 0.95) -> list[PairKappa]:
    """Cohen's kappa for every pair of annotators that share at least one item, on the items both rated."""
    if "pairwise" in r._cache and r._cache["pairwise"][0] == confidence:
        return r._cache["pairwise"][1]
    a, b, la, lb, c = _rating_pair_counts(r)
    out: list[PairKappa] = []
    if a.size:
        pid = a * max(r.n_annotators, 1) + b
        starts, lengths = _runs(pid)
        for s, L in zip(starts.tolist(), lengths.tolist()):
            sl = slice(s, s + L)
            used, local = np.unique(np.r_[la[sl], lb[sl]], return_inverse=True)
            k = used.size
            table = np.zeros((k, k))
            np.add.at(table, (local[:L], local[L:]), c[sl])
            res = cohen_kappa(table, confidence, labels=[r.labels[int(v)] for v in used])
            out.append(PairKappa(r.annotator_ids[int(a[s])], r.annotator_ids[int(b[s])], res.n, res.kappa,
                                 res.ci_low, res.ci_high, res.se, res.p_observed, res.p_expected, res.reason))
    r._cache["pairwise"] = (confidence, out)
    return out


def mean_kappa(pairs: Sequence[PairKappa]) -> tuple[float | None, str | None]:
    """Unweighted mean of the defined pairwise kappas, or (None, reason)."""
    vals = [p.kappa for p in pairs if p.kappa is not None]
    if vals:
        return float(np.mean(vals)), None
    if not pairs:
        return None, "no two annotators rated a common item"
    return None, f"kappa is undefined for all {len(pairs)} annotator pairs (see cohen_kappa_pairwise)"


# ------------------------------------------------------------------------------------------------------------------
# Fleiss


@dataclass
class FleissResult:
    kappa: float | None
    n_items: int
    n_raters: int | None
    p_bar: float | None = None  # mean per-item agreement P-bar
    p_e: float | None = None  # chance agreement P-bar_e
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _fleiss(sum_sq: np.ndarray, totals: np.ndarray, m: int) -> FleissResult:
    """From each item's sum over categories of n_ij^2 and each category's total count (N items, m ratings each)."""
    N = sum_sq.size
    p_bar = float(np.mean((sum_sq - m) / (m * (m - 1.0))))
    p_j = totals / (N * m)
    p_e = float(np.sum(p_j * p_j))
    if 1.0 - p_e <= 1e-12:
        return FleissResult(None, N, m, p_bar, p_e, reason="all ratings have the same label: chance agreement is 1 "
                                                          "and Fleiss' kappa is undefined (0/0)")
    return FleissResult((p_bar - p_e) / (1.0 - p_e), N, m, p_bar, p_e)


def fleiss_kappa_table(table: Any) -> FleissResult:
    """Fleiss' kappa of an items x categories count table with the same number of ratings (>= 2) in every row."""
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError("the table must be 2-d with at least one row")
    m = t.sum(1)
    if not np.all(m == m[0]):
        raise ValueError("Fleiss' kappa needs the same number of ratings on every item")
    if m[0] < 2:
        raise ValueError("Fleiss' kappa needs at least 2 ratings per item")
    return _fleiss(np.sum(t * t, axis=1), t.sum(0), int(m[0]))


def fleiss_kappa(r: Ratings) -> FleissResult:
    """Fleiss' kappa on the items that have the modal number of ratings among the pairable items (ties: the larger
    number); see the module docstring. Sparse: no items x categories array."""
    m_all = r.ratings_per_item()
    pm = m_all[m_all >= 2]
    if pm.size == 0:
        return FleissResult(None, 0, None, reason="no item has ratings from two annotators")
    freq = np.bincount(pm)
    M = int(np.flatnonzero(freq == freq.max())[-1])
    sel = m_all[r.item] == M
    V = max(r.n_values, 1)
    keys, cnt = np.unique(r.item[sel].astype(np.int64) * V + r.value[sel], return_counts=True)
    _, item_of_key = np.unique(keys // V, return_inverse=True)
    sum_sq = np.bincount(item_of_key, weights=cnt.astype(np.float64) ** 2)  # sum_j n_ij^2 per item
    totals = np.bincount(r.value[sel], minlength=V).astype(np.float64)
    return _fleiss(sum_sq, totals, M)


# ------------------------------------------------------------------------------------------------------------------
# Krippendorff


@dataclass
class AlphaResult:
    alpha: float | None
    level: str
    n_items: int  # pairable items
    n_values: float  # n: pairable values (ratings in pairable items)
    d_observed: float | None = None
    d_expected: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _difference(level: str, n_c: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    V = n_c.size
    if level == "nominal":
        return 1.0 - np.eye(V)
    if values is None:
        raise ValueError(f"the {level} level needs a numeric value for every label")
    x = np.asarray(values, dtype=np.float64)
    if x.shape != (V,) or not np.all(np.isfinite(x)):
        raise ValueError(f"the {level} level needs a finite numeric value for each of the {V} labels")
    if level == "interval":
        return (x[:, None] - x[None, :]) ** 2
    if level == "ratio":
        s = x[:, None] + x[None, :]
        d = x[:, None] - x[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(s != 0, (d / np.where(s != 0, s, 1.0)) ** 2, 0.0)
        return out
    if level == "ordinal":
        order = np.argsort(x, kind="stable")
        xs, ns = x[order], n_c[order]
        if np.any(xs[1:] == xs[:-1]):
            raise ValueError("the ordinal level needs distinct values for distinct labels")
        cum = np.cumsum(ns)
        lo = np.minimum.outer(np.arange(V), np.arange(V))
        hi = np.maximum.outer(np.arange(V), np.arange(V))
        between = cum[hi] - cum[lo] + ns[lo]  # sum_{g = lo..hi} n_g
        d_sorted = (between - (ns[:, None] + ns[None, :]) / 2.0) ** 2
        np.fill_diagonal(d_sorted, 0.0)
        d = np.empty_like(d_sorted)
        d[np.ix_(order, order)] = d_sorted
        return d
    raise ValueError(f"level must be one of {LEVELS}")


def alpha_from_coincidences(o: Any, level: str = "nominal", values: Any = None, n_items: int = 0) -> AlphaResult:
    """Krippendorff's alpha from a coincidence matrix (values x values; ``values`` gives each row's numeric
    value for the ordinal / interval / ratio levels)."""
    o = np.asarray(o, dtype=np.float64)
    n_c = o.sum(1)
    n = float(n_c.sum())
    if n <= 1.0:  # no pairable item
        return AlphaResult(None, level, n_items, n, reason="no item has ratings from two annotators")
    d = _difference(level, n_c, None if values is None else np.asarray(values, dtype=np.float64))
    do = float(np.sum(o * d)) / n
    de = float(n_c @ d @ n_c) / (n * (n - 1.0))
    if de <= 0.0:
        return AlphaResult(None, level, n_items, n, do, de, reason=(
            "every pairable rating has the same value: expected disagreement is 0 and alpha is undefined (0/0)"))
    return AlphaResult(1.0 - do / de, level, n_items, n, do, de)


def label_values(labels: Sequence, order: Sequence | None = None) -> np.ndarray:
    """Numeric values of the labels for the ordinal / interval / ratio levels: the labels' own numeric values, or
    (when ``order`` is given) their 0-based rank in ``order`` (equal spacing). ValueError names the offender."""
    if order is not None:
        rank = {str(v): i for i, v in enumerate(order)}
        if len(rank) != len(list(order)):
            raise ValueError("the label order lists a label twice")
        missing = [lab for lab in labels if str(lab) not in rank]
        if missing:
            raise ValueError(f"label(s) not in the given order: {', '.join(map(repr, missing[:10]))}")
        return np.array([rank[str(lab)] for lab in labels], dtype=np.float64)
    out = []
    for lab in labels:
        try:
            x = float(lab)
        except (TypeError, ValueError):
            raise ValueError(f"label {lab!r} is not a number: give the label order for this level") from None
        if not math.isfinite(x):
            raise ValueError(f"label {lab!r} is not a finite number")
        out.append(x)
    return np.array(out, dtype=np.float64)


def krippendorff_alpha(r: Ratings, level: str = "nominal", values: Any = None) -> AlphaResult:
    """Krippendorff's alpha of coded ratings (missing ratings allowed). For ordinal / interval / ratio, ``values``
    is the numeric value of each label code (default: the labels parsed as numbers)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
    if level != "nominal" and values is None:
        values = label_values(r.labels)
    _, o = r.pair_tables()
    return alpha_from_coincidences(o, level, values, n_items=r.n_items_pairable)


# ------------------------------------------------------------------------------------------------------------------
# Percent agreement, per-label agreement


def percent_agreement(r: Ratings) -> tuple[float | None, int]:
    """(share of agreeing pairs of ratings within items, number of unordered pairs); see the module docstring."""
    T, _ = r.pair_tables()
    total = float(T.sum())
    if total <= 0:
        return None, 0
    return float(np.trace(T)) / total, int(round(total / 2))


@dataclass
class LabelAgreement:
    labels: list
    table: np.ndarray  # T: ordered pairs of ratings of the same item by different annotators, labels x labels
    n_ratings: np.ndarray  # ratings per label (all items)
    specific_agreement: list[float | None] = field(default_factory=list)

    def confusions(self, top: int | None = None) -> list[dict]:
        """Disagreements by unordered label pair, most frequent first: {label_a, label_b, n_pairs}."""
        iu = np.triu_indices(len(self.labels), k=1)
        cnt = self.table[iu]
        nz = np.flatnonzero(cnt > 0)
        order = nz[np.lexsort((iu[1][nz], iu[0][nz], -cnt[nz]))]
        if top is not None:
            order = order[:top]
        return [{"label_a": self.labels[int(iu[0][i])], "label_b": self.labels[int(iu[1][i])],
                 "n_pairs": int(round(cnt[i]))} for i in order]

    def per_label(self) -> list[dict]:
        row = self.table.sum(1)
        return [{"label": lab, "n_ratings": int(self.n_ratings[i]), "n_pairs": int(round(row[i])),
                 "n_agreeing_pairs": int(round(self.table[i, i] / 2)),
                 "specific_agreement": self.specific_agreement[i]} for i, lab in enumerate(self.labels)]


def label_agreement(r: Ratings) -> LabelAgreement:
    T, _ = r.pair_tables()
    row = T.sum(1)
    col = T.sum(0)
    sa = [(float(2 * T[i, i] / (row[i] + col[i])) if row[i] + col[i] > 0 else None) for i in range(r.n_values)]
    return LabelAgreement(list(r.labels), T, np.bincount(r.value, minlength=r.n_values), sa)


# ------------------------------------------------------------------------------------------------------------------
# Gold, annotators


def gold_accuracy(r: Ratings, gold: Mapping[Any, Any]) -> dict:
    """Accuracy of each annotator on the gold items they rated. ``gold`` maps item id -> correct label (compared
    with ``==`` to the rating's label). Returns {"n_gold_items", "n_gold_items_rated", "per_annotator": {id: {...}}}.
    """
    if r.item_ids is None:
        raise ValueError("gold accuracy needs item ids (Ratings.from_records)")
    is_gold = np.zeros(len(r.item_ids), dtype=bool)
    gold_code = np.full(len(r.item_ids), -1, dtype=np.intp)
    label_code = {lab: i for i, lab in enumerate(r.labels)}
    for code, iid in enumerate(r.item_ids):
        if iid in gold:
            is_gold[code] = True
            gold_code[code] = label_code.get(gold[iid], -2)  # -2: a gold label nobody used: never matched
    sel = is_gold[r.item]
    correct = sel & (r.value == gold_code[r.item])
    n = np.bincount(r.annotator[sel], minlength=r.n_annotators)
    k = np.bincount(r.annotator[correct], minlength=r.n_annotators)
    per = {}
    for a, aid in enumerate(r.annotator_ids):
        per[aid] = {"n_gold_rated": int(n[a]), "n_correct": int(k[a]),
                    "accuracy": (float(k[a] / n[a]) if n[a] else None)}
    rated = int(np.count_nonzero(is_gold & (r.ratings_per_item() > 0)))
    return {"n_gold_items": len(gold), "n_gold_items_rated": rated,
            "n_gold_ratings": int(sel.sum()), "n_correct": int(correct.sum()),
            "accuracy": (float(correct.sum() / sel.sum()) if sel.sum() else None), "per_annotator": per}


def annotator_summary(r: Ratings, pairs: Sequence[PairKappa] | None = None, gold: Mapping | None = None,
                      lead_time: np.ndarray | None = None) -> list[dict]:
    """Per annotator: volume (ratings), items rated together with someone else, the mean pairwise kappa involving
    the annotator (over pairs with a defined kappa), optional gold accuracy and lead time (seconds per rating:
    ``lead_time`` aligned with the *input* positions, NaN for unknown)."""
    pairs = cohen_kappa_pairwise(r) if pairs is None else pairs
    vol = np.bincount(r.annotator, minlength=r.n_annotators)
    shared = np.bincount(r.annotator[r.ratings_per_item()[r.item] >= 2], minlength=r.n_annotators)
    kappas: dict[Any, list[float]] = {aid: [] for aid in r.annotator_ids}
    n_pairs: dict[Any, int] = {aid: 0 for aid in r.annotator_ids}
    for p in pairs:
        for aid in (p.annotator_a, p.annotator_b):
            n_pairs[aid] += 1
            if p.kappa is not None:
                kappas[aid].append(p.kappa)
    ga = gold_accuracy(r, gold)["per_annotator"] if gold is not None else None
    lt = None
    if lead_time is not None:
        lt = np.asarray(lead_time, dtype=np.float64)[r.source_index]
    out = []
    for a, aid in enumerate(r.annotator_ids):
        row: dict[str, Any] = {"annotator_id": aid, "n_ratings": int(vol[a]), "n_items_shared": int(shared[a]),
                               "n_pairs": n_pairs[aid],
                               "mean_pairwise_kappa": (float(np.mean(kappas[aid])) if kappas[aid] else None)}
        if ga is not None:
            row.update({"gold_n": ga[aid]["n_gold_rated"], "gold_correct": ga[aid]["n_correct"],
                        "gold_accuracy": ga[aid]["accuracy"]})
        if lt is not None:
            x = lt[r.annotator == a]
            x = x[np.isfinite(x)]
            row.update({"lead_time_n": int(x.size),
                        "lead_time_median_s": (float(np.median(x)) if x.size else None),
                        "lead_time_mean_s": (float(np.mean(x)) if x.size else None)})
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------------------------
# The report


def _json_clean(x: Any) -> Any:
    """numpy scalars -> Python, non-finite floats -> None, recursively."""
    if isinstance(x, dict):
        return {str(k): _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _f(x)
    return x


def agreement_report(r: Ratings, *, levels: Sequence[str] = (), values: Any = None, gold: Mapping | None = None,
                     lead_time: np.ndarray | None = None, confidence: float = 0.95,
                     top_confusions: int = 20) -> dict:
    """Everything above as one JSON-ready dict (no NaN: undefined values are None with a ``*_reason``).
    ``levels``: extra Krippendorff levels (nominal is always there); ``values``: numeric value per label code for
    them (default: labels parsed as numbers)."""
    if r.n_annotators < 2:
        raise ValueError(f"only one annotator ({r.annotator_ids[0]!r}): agreement needs at least two"
                         if r.n_annotators else "no ratings")
    pairs = cohen_kappa_pairwise(r, confidence)
    kmean, kmean_reason = mean_kappa(pairs)
    pa, pa_pairs = percent_agreement(r)
    fl = fleiss_kappa(r)
    la = label_agreement(r)
    out: dict[str, Any] = {
        "n_ratings": r.n_ratings,
        "n_items": r.n_items,
        "n_annotators": r.n_annotators,
        "n_labels": r.n_values,
        "n_items_pairable": r.n_items_pairable,
        "n_items_single_rating": r.n_items_single,
        "n_duplicate_ratings_dropped": r.n_duplicates_dropped,
        "percent_agreement": pa,
        "percent_agreement_n_pairs": pa_pairs,
        "cohen_kappa_pairwise": [p.to_dict() for p in pairs],
        "cohen_kappa_mean": kmean,
        "cohen_kappa_mean_reason": kmean_reason,
        "cohen_kappa_confidence": confidence,
        "fleiss_kappa": fl.kappa,
        "fleiss_kappa_reason": fl.reason,
        "fleiss_n_items": fl.n_items,
        "fleiss_n_raters": fl.n_raters,
    }
    out["percent_agreement_reason"] = None if pa is not None else "no item has ratings from two annotators"
    for level in ["nominal", *[lv for lv in levels if lv != "nominal"]]:
        res = krippendorff_alpha(r, level, None if level == "nominal" else values)
        out[f"krippendorff_alpha_{level}"] = res.alpha
        out[f"krippendorff_alpha_{level}_reason"] = res.reason
    out["krippendorff_n_pairable_values"] = int(round(r.pair_tables()[1].sum()))
    out["per_label"] = la.per_label()
    out["confusions"] = la.confusions(top_confusions)
    out["annotators"] = annotator_summary(r, pairs, gold, lead_time)
    if gold is not None:
        g = gold_accuracy(r, gold)
        out["gold"] = {k: v for k, v in g.items() if k != "per_annotator"}
    return _json_clean(out)
