"""Active-learning selection, confidence routing, overlap and gold mixing: which staged records to annotate next,
and in which queue. Pure logic (numpy, scipy, scikit-learn; no Airflow, no S3, no I/O), so an offline
active-learning simulation can import it as it is.

The functions take the `Dispatch` config values (`batch_size`, `strategy`, `random_share`, `diversity`,
`stratify`, `routing`, `overlap_share`, `gold_share`, `seed`) and the `Thresholds` values (`high_confidence`,
`low_confidence`) as plain arguments with the same names.

Uncertainty (`uncertainty`), for a row of class probabilities p over k classes; higher = more uncertain, in [0, 1]:

- ``least_confidence``: 1 - max p (at most 1 - 1/k);
- ``margin``: 1 - (p_top1 - p_top2);
- ``entropy``: -sum p ln p / ln k (0 ln 0 = 0; 0 when k = 1).

`select(n, batch_size=..., probs=..., features=...)` picks from n candidates (positions 0..n-1):

- It returns exactly min(batch_size, n) `Pick`s, never the same index twice, in the order they were picked
  (random, then stratified, then diversity, then uncertainty; cold start: random, then cold_start). The same
  inputs and seed give the same picks.
- **Random share first**: round(min(batch_size, n) * random_share) candidates (0.5 rounds up) drawn uniformly
  from *all* candidates, reason ``random``. Drawn before anything else, they are an unbiased sample of the pool
  (exploration, and an honest estimate of the model's accuracy on it).
- **With probs** (n, k), ranked by `strategy` (ties: lower index first):
  - ``stratify``: every predicted class (argmax) among the candidates that the random picks did not already
    cover gets one pick, its most uncertain candidate, reason ``stratified``. When the budget cannot cover them
    all, the rarest predicted classes (fewest candidates) go first (ties: lower class index).
  - ``diversity`` with `features` (a dense array or a scipy.sparse matrix (n, d), e.g. TF-IDF rows): a pool of
    the most uncertain remaining candidates, 4x the remaining budget m, is clustered with k-means (k = m,
    seeded) and the most uncertain candidate of each cluster is taken, reason ``diversity`` (clusters in order
    of their pick's uncertainty). A run of near-copies lands in one cluster, so it costs one pick, not many.
    Clustering runs in a low-dimensional space: sparse rows keep only the columns the pool uses, and features
    wider than 64 columns are projected on their top 64 singular directions (truncated SVD, seeded; for TF-IDF
    this is LSA). Above 10,000 points MiniBatchKMeans (random init) replaces KMeans. Features are used as given
    (Euclidean): TfidfVectorizer rows are L2-normalised, so for them this is cosine geometry.
  - Any budget left (no diversity, no features, an empty cluster, a pool no bigger than the budget, a budget
    of one) is filled by plain uncertainty, reason ``uncertainty``.
  - `Pick.score` is the candidate's uncertainty, for every reason (random included).
- **Cold start** (probs None; `Pick.score` None): the random share as above, then with `features` the other
  candidates are clustered with k-means (k = the rest of the budget, seeded, same clustering space as above)
  and the candidate nearest each centroid is taken, biggest clusters first, reason ``cold_start``. Beyond
  max(5,000, 4 x k) candidates, a seeded uniform sample of that many is clustered instead of all of them: it has
  the same clusters up to noise, and it keeps 100,000 candidates to seconds. Without features (or for an empty
  cluster) the rest is drawn uniformly at random, reason ``cold_start``.
  `diversity` and `stratify` do not apply to cold start.

Routing (`route`) by the model's top probability: routing off -> ``main``; no model -> ``expert``;
``>= high`` -> ``verify``; ``< low`` -> ``expert``; otherwise (ambiguous) -> ``overlap``.
`assign_overlap` then caps or tops up the overlap queue to exactly `overlap_share` of the tasks, and `pick_gold`
/ `gold_routes` mix gold items in so they are `gold_share` of the final batch and spread over the queues like
the real tasks. Every random choice is seeded; everything is deterministic.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from labelops.dispatch.tasks import ROUTES

Reason = Literal["uncertainty", "diversity", "stratified", "random", "cold_start"]
STRATEGIES: tuple[str, ...] = ("least_confidence", "margin", "entropy")
REASONS: tuple[str, ...] = ("uncertainty", "diversity", "stratified", "random", "cold_start")

SUM_TOLERANCE = 1e-3  # how far a probability row's sum may be from 1
POOL_FACTOR = 4  # diversity: pool of the POOL_FACTOR * budget most uncertain candidates
EMBED_DIMS = 64  # clustering space: wider features are projected on their top singular directions
COLD_SAMPLE = 5_000  # cold start: cluster a uniform sample of max(COLD_SAMPLE, POOL_FACTOR * budget) candidates
MINIBATCH_ABOVE = 10_000  # cluster more points than this with MiniBatchKMeans instead of KMeans
# BLAS / OpenMP threads for the SVD and k-means: these are many small products, for which extra threads mostly
# add synchronisation (on a busy 2-core machine, 2 threads were 4-7x slower than 1).
THREADS = 1


@dataclass(frozen=True)
class Pick:
    index: int  # position in the candidate list
    reason: str  # "uncertainty" | "diversity" | "stratified" | "random" | "cold_start"
    score: float | None  # uncertainty score (None for cold start)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's round() rounds 2.5 to 2); the tiny epsilon absorbs
    float noise such as 0.15 * 10 = 1.4999999999999998."""
    return int(math.floor(x + 0.5 + 1e-9))


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _check_share(name: str, value, *, below_one: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0) or (below_one and v >= 1.0):
        raise ValueError(f"{name} must be in [0, {'1)' if below_one else '1]'}, got {value!r}")
    return v


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


def _check_probs(probs, n: int | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (n, k), got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"probs has {p.shape[0]} rows but there are n={n} candidates")
    if p.shape[1] < 1:
        raise ValueError("probs must have at least one class column")
    if p.size == 0:
        return p
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    if p.min() < -SUM_TOLERANCE or p.max() > 1 + SUM_TOLERANCE:
        raise ValueError("probs values must lie in [0, 1]")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"probs rows must sum to 1 (±{SUM_TOLERANCE}); {bad.size} do not, e.g. row {i} sums to {sums[i]:.6g}"
        )
    return np.clip(p, 0.0, 1.0)


def _check_features(features, n: int):
    if features is None:
        return None
    # no dtype conversion here: 100,000 dense float32 embeddings need not be copied; _embed converts the rows used
    x = sp.csr_matrix(features) if sp.issparse(features) else np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array or sparse matrix (n, d), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"features must be numeric, got dtype {x.dtype}")
    if x.shape[0] != n:
        raise ValueError(f"features has {x.shape[0]} rows but there are n={n} candidates")
    data = x.data if sp.issparse(x) else x
    if data.size and not np.isfinite(data).all():
        raise ValueError("features contains NaN or infinite values")
    return x


def _embed(x, seed: int) -> np.ndarray:
    """Rows of `x` in a small dense space for clustering: sparse rows keep only the columns they use; wider than
    EMBED_DIMS, they are projected on the top singular directions (an orthogonal projection: the main distance
    structure survives, near-copies stay near-copies). Dense k-means centroids over 2**18 columns would not fit."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64, copy=True)
        x.sum_duplicates()
        used = np.unique(x.indices)
        x = x[:, used]
    else:
        x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    dims = min(EMBED_DIMS, n - 1, d - 1)
    if d > EMBED_DIMS and dims >= 2:
        from sklearn.decomposition import TruncatedSVD

        with threadpool_limits(limits=THREADS):
            out = TruncatedSVD(n_components=dims, n_iter=4, random_state=seed).fit_transform(x)
    else:
        out = x.toarray() if sp.issparse(x) else x
    if out.shape[1] == 0:  # all-zero sparse rows: every point is the same point
        out = np.zeros((n, 1))
    return np.ascontiguousarray(out, dtype=np.float64)


def _kmeans(points: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids) of k-means with k clusters, seeded; MiniBatchKMeans for many points."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    with warnings.catch_warnings(), threadpool_limits(limits=THREADS):
        # fewer distinct points than k (near-copies) is expected here: some clusters then stay empty
        warnings.simplefilter("ignore")
        if points.shape[0] > MINIBATCH_ABOVE:
            # random init: k-means++ costs O(k * init_size) distance rows, 10 s of 20 s for k = 4,000
            km = MiniBatchKMeans(
                n_clusters=k, init="random", random_state=seed, n_init=1, batch_size=max(2048, 2 * k), max_iter=20,
                init_size=min(points.shape[0], max(3 * k, 3 * 2048)),
            )
        else:
            km = KMeans(n_clusters=k, random_state=seed, n_init=1)
        labels = km.fit_predict(points)
    return labels, km.cluster_centers_


def _ranking(u: np.ndarray) -> np.ndarray:
    """Candidate positions, most uncertain first; ties by lower index (stable sort)."""
    return np.argsort(-u, kind="stable")


# ---------------------------------------------------------------------------------------------------------------
# uncertainty and selection


def uncertainty(probs: np.ndarray, strategy: str) -> np.ndarray:
    """Uncertainty of each row of `probs` (n, k), rows summing to 1: higher = more uncertain, all in [0, 1].

    least_confidence = 1 - max p; margin = 1 - (p_top1 - p_top2); entropy = -sum p ln p / ln k."""
    _check_strategy(strategy)
    p = _check_probs(probs)
    n, k = p.shape
    if n == 0:
        return np.zeros(0)
    if strategy == "least_confidence":
        u = 1.0 - p.max(axis=1)
    elif strategy == "margin":
        if k == 1:
            u = np.zeros(n)
        else:
            top2 = np.partition(p, k - 2, axis=1)[:, k - 2 :]
            u = 1.0 - (top2[:, 1] - top2[:, 0])
    else:
        if k == 1:
            u = np.zeros(n)
        else:
            logp = np.log(np.where(p > 0, p, 1.0))
            u = -(p * logp).sum(axis=1) / math.log(k)
    return np.clip(u, 0.0, 1.0)


def select(
    n: int,
    *,
    batch_size: int,
    probs: np.ndarray | None = None,
    features=None,
    strategy: str = "least_confidence",
    random_share: float = 0.15,
    diversity: bool = True,
    stratify: bool = True,
    seed: int = 0,
) -> list[Pick]:
    """Pick min(batch_size, n) of n candidates to annotate next; see the module docstring for the rules."""
    n = _check_size("n", n)
    batch_size = _check_size("batch_size", batch_size)
    random_share = _check_share("random_share", random_share)
    _check_strategy(strategy)
    p = None if probs is None else _check_probs(probs, n)
    x = _check_features(features, n)

    budget = min(batch_size, n)
    if budget == 0:
        return []
    rng = np.random.default_rng(seed)
    u = None if p is None else uncertainty(p, strategy)
    taken = np.zeros(n, dtype=bool)
    picks: list[Pick] = []

    def take(indices, reason: str) -> None:
        for i in indices:
            i = int(i)
            taken[i] = True
            picks.append(Pick(i, reason, None if u is None else float(u[i])))

    # 1. random share, uniform over all candidates
    n_random = min(budget, _round_half_up(budget * random_share))
    if n_random:
        take(rng.choice(n, size=n_random, replace=False), "random")

    if u is None:  # cold start
        _cold_start(x, budget - len(picks), taken, rng, seed, take)
        return picks

    order = _ranking(u)

    # 2. stratification: one pick for each predicted class not yet covered, rarest classes first
    if stratify and len(picks) < budget:
        pred = p.argmax(axis=1)
        counts = np.bincount(pred, minlength=p.shape[1])
        covered = np.zeros(p.shape[1], dtype=bool)
        covered[pred[taken]] = True
        free = order[~taken[order]]
        classes, first = np.unique(pred[free], return_index=True)  # first = most uncertain position in `free`
        keep = ~covered[classes]
        classes, first = classes[keep], first[keep]
        by_rarity = np.lexsort((classes, counts[classes]))[: budget - len(picks)]
        take(free[first[by_rarity]], "stratified")

    # 3. diversity: cluster a pool of the most uncertain, take the most uncertain per cluster
    remaining = budget - len(picks)
    if diversity and x is not None and remaining > 1:
        free = order[~taken[order]]
        pool = free[: POOL_FACTOR * remaining]
        if pool.size > remaining:
            labels, _ = _kmeans(_embed(x[pool], seed), remaining, seed)
            _, first = np.unique(labels, return_index=True)  # pool is in uncertainty order
            take(pool[np.sort(first)], "diversity")

    # 4. fill by uncertainty
    remaining = budget - len(picks)
    if remaining:
        take(order[~taken[order]][:remaining], "uncertainty")
    return picks


def _cold_start(x, remaining: int, taken: np.ndarray, rng, seed: int, take) -> None:
    """No model yet: the candidate nearest each k-means centroid (biggest clusters first), else random."""
    if remaining <= 0:
        return
    free = np.flatnonzero(~taken)
    if x is not None and free.size > remaining:
        sample = max(COLD_SAMPLE, POOL_FACTOR * remaining)
        if free.size > sample:  # a uniform sample has the same clusters (up to noise) at a bounded cost
            free = np.sort(rng.choice(free, size=sample, replace=False))
        pts = _embed(x[free], seed)
        labels, centers = _kmeans(pts, remaining, seed)
        dist = ((pts - centers[labels]) ** 2).sum(axis=1)
        order = np.lexsort((np.arange(free.size), dist, labels))  # by cluster, then nearest, then position
        clusters, first, sizes = np.unique(labels[order], return_index=True, return_counts=True)
        nearest = order[first]
        by_size = np.lexsort((nearest, -sizes))
        take(free[nearest[by_size]], "cold_start")
        remaining -= len(clusters)
        free = np.flatnonzero(~taken)
    if remaining > 0:
        take(rng.choice(free, size=min(remaining, free.size), replace=False), "cold_start")


# ---------------------------------------------------------------------------------------------------------------
# routing, overlap and gold


def route(max_prob: float | None, *, high: float, low: float, routing: bool = True) -> str:
    """The queue of a task from its model's top probability (`thresholds.high_confidence` / `low_confidence`):
    routing off -> "main"; no model (None) -> "expert"; >= high -> "verify"; < low -> "expert"; else "overlap"."""
    if not (0.0 <= low <= high <= 1.0):
        raise ValueError(f"thresholds must satisfy 0 <= low <= high <= 1, got low={low!r}, high={high!r}")
    if not routing:
        return "main"
    if max_prob is None:
        return "expert"
    mp = float(max_prob)
    if not (0.0 <= mp <= 1.0):  # NaN fails too
        raise ValueError(f"max_prob must be in [0, 1] or None, got {max_prob!r}")
    if mp >= high:
        return "verify"
    if mp < low:
        return "expert"
    return "overlap"


def _check_routes(routes) -> list[str]:
    routes = list(routes)
    bad = sorted({r for r in routes if r not in ROUTES})
    if bad:
        raise ValueError(f"unknown route(s) {bad}; expected one of {', '.join(ROUTES)}")
    return routes


def assign_overlap(
    routes: list[str],
    scores: list[float | None],
    share: float,
    seed: int = 0,
    *,
    routing: bool | None = None,
) -> list[str]:
    """New routes in which exactly round(share * len(routes)) tasks (halves up) are in "overlap".

    The ambiguous tasks (routed "overlap") keep the overlap slots first, most uncertain (highest score) first,
    ties and None scores last by position; ambiguous tasks over the budget go to "expert", or to "main" when
    routing is off. If too few are ambiguous, other tasks, drawn uniformly at random (seeded), are moved to
    "overlap". `routing` None infers it from the routes: off when some task is in "main" and none in "verify"
    or "expert" (with routing on `route` never answers "main", with it off always)."""
    routes = _check_routes(routes)
    scores = list(scores)
    if len(scores) != len(routes):
        raise ValueError(f"routes ({len(routes)}) and scores ({len(scores)}) differ in length")
    share = _check_share("share", share)
    for s in scores:
        if s is not None and not math.isfinite(float(s)):
            raise ValueError(f"scores must be finite numbers or None, got {s!r}")
    if routing is None:
        routing = not ("main" in routes and not any(r in ("verify", "expert") for r in routes))
    fallback = "expert" if routing else "main"

    n = len(routes)
    budget = min(n, _round_half_up(share * n))
    out = list(routes)
    ambiguous = [i for i, r in enumerate(routes) if r == "overlap"]
    ambiguous.sort(key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
    for i in ambiguous[budget:]:
        out[i] = fallback
    short = budget - len(ambiguous)
    if short > 0:
        others = np.array([i for i, r in enumerate(routes) if r != "overlap"], dtype=int)
        for i in np.random.default_rng(seed).choice(others, size=short, replace=False):
            out[int(i)] = "overlap"
    return out


def pick_gold(n_tasks: int, n_gold_items: int, share: float, seed: int = 0) -> list[int]:
    """Indices (into the gold items) to mix into a batch of n_tasks real tasks so that gold is `share` of the
    final batch: k = round(share * n_tasks / (1 - share)) (halves up), capped by n_gold_items; sampled without
    replacement, seeded, in sampled order."""
    n_tasks = _check_size("n_tasks", n_tasks)
    n_gold_items = _check_size("n_gold_items", n_gold_items)
    share = _check_share("share", share, below_one=True)
    k = min(n_gold_items, _round_half_up(share * n_tasks / (1.0 - share)))
    if k == 0:
        return []
    return [int(i) for i in np.random.default_rng(seed).choice(n_gold_items, size=k, replace=False)]


def gold_routes(k: int, routes: list[str], seed: int = 0) -> list[str]:
    """A queue for each of k gold tasks, in proportion to the real tasks' queues (largest-remainder rounding;
    remainder ties to the bigger queue, then ROUTES order), in a seeded shuffled order so gold is spread like
    the real tasks and annotators cannot tell it apart. Deterministic."""
    k = _check_size("k", k)
    routes = _check_routes(routes)
    if k == 0:
        return []
    if not routes:
        raise ValueError("no real tasks to spread gold tasks over (routes is empty)")
    n = len(routes)
    counts = {q: routes.count(q) for q in ROUTES if q in routes}
    alloc = {q: k * c // n for q, c in counts.items()}  # exact integer arithmetic: quota = k * c / n
    rest = k - sum(alloc.values())
    by_remainder = sorted(counts, key=lambda q: (-((k * counts[q]) % n), -counts[q], ROUTES.index(q)))
    for q in by_remainder[:rest]:
        alloc[q] += 1
    out = [q for q in ROUTES if q in alloc for _ in range(alloc[q])]
    np.random.default_rng(seed).shuffle(out)
    return out
