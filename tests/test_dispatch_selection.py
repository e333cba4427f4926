"""Active-learning selection, routing, overlap and gold mixing (labelops.dispatch.selection): pure logic, fast."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer

from labelops.dispatch import selection as S
from labelops.dispatch.selection import Pick, assign_overlap, gold_routes, pick_gold, route, select, uncertainty
from labelops.dispatch.tasks import ROUTES

BANKING77 = Path(__file__).resolve().parents[1] / "data" / "banking77" / "train.csv"


@pytest.fixture(scope="module")
def banking77() -> list[tuple[str, str]]:
    with BANKING77.open(newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def _dirichlet_probs(n: int, k: int, seed: int, alpha: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(k, alpha), size=n)


def _indices(picks: list[Pick]) -> list[int]:
    return [p.index for p in picks]


def _reasons(picks: list[Pick]) -> Counter:
    return Counter(p.reason for p in picks)


# ---------------------------------------------------------------------------------------------------------------
# uncertainty

PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [1 / 3, 1 / 3, 1 / 3],
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.2, 0.6, 0.2],
    ]
)


def test_least_confidence_hand_computed():
    assert uncertainty(PROBS, "least_confidence") == pytest.approx([0.3, 2 / 3, 0.0, 0.5, 0.4])


def test_margin_hand_computed():
    # 1 - (top1 - top2): 1-(0.7-0.2), 1-0, 1-(1-0), 1-(0.5-0.5), 1-(0.6-0.2)
    assert uncertainty(PROBS, "margin") == pytest.approx([0.5, 1.0, 0.0, 1.0, 0.6])


def test_entropy_hand_computed():
    # -(0.7 ln .7 + .2 ln .2 + .1 ln .1) / ln 3 = 0.80182 / 1.09861; uniform = 1; one-hot = 0; ln2/ln3;
    # -(2 * .2 ln .2 + .6 ln .6) / ln 3 = (0.64378 + 0.30650) / 1.09861
    assert uncertainty(PROBS, "entropy") == pytest.approx([0.72985, 1.0, 0.0, 0.63093, 0.86498], abs=1e-4)


@pytest.mark.parametrize("strategy", S.STRATEGIES)
def test_uncertainty_in_unit_interval_and_orders_confident_last(strategy):
    p = _dirichlet_probs(500, 77, seed=3)
    u = uncertainty(p, strategy)
    assert u.shape == (500,)
    assert (u >= 0).all() and (u <= 1).all()
    one_hot = np.eye(77)[:3]
    assert uncertainty(one_hot, strategy) == pytest.approx([0, 0, 0])
    assert uncertainty(np.full((1, 77), 1 / 77), strategy)[0] >= u.max()


@pytest.mark.parametrize(
    "probs, strategy, match",
    [
        (PROBS, "smallest_margin", "unknown strategy"),
        (np.array([0.5, 0.5]), "margin", "2-D"),
        (np.array([[0.5, 0.4]]), "margin", "sum to 1"),
        (np.array([[0.9, 0.3, -0.2]]), "entropy", "in \\[0, 1\\]"),
        (np.array([[np.nan, 1.0]]), "entropy", "NaN"),
    ],
)
def test_uncertainty_rejects_bad_input(probs, strategy, match):
    with pytest.raises(ValueError, match=match):
        uncertainty(probs, strategy)


# ---------------------------------------------------------------------------------------------------------------
# select: counts, determinism, random share


@pytest.fixture(scope="module")
def tfidf_500(banking77):
    rows = banking77[::20][:500]
    return TfidfVectorizer().fit_transform([t for t, _ in rows])


@pytest.mark.parametrize("with_features", [False, True])
@pytest.mark.parametrize("n, batch_size", [(500, 40), (30, 40), (40, 40), (500, 0)])
def test_select_counts_no_duplicates_deterministic(tfidf_500, n, batch_size, with_features):
    p = _dirichlet_probs(n, 8, seed=1)
    x = tfidf_500[:n] if with_features else None
    picks = select(n, batch_size=batch_size, probs=p, features=x, seed=7)
    assert len(picks) == min(batch_size, n)
    assert len(set(_indices(picks))) == len(picks)
    assert all(0 <= i < n for i in _indices(picks))
    assert all(p.reason in S.REASONS for p in picks)
    assert select(n, batch_size=batch_size, probs=p, features=x, seed=7) == picks


def test_select_seed_changes_the_random_part(tfidf_500):
    p = _dirichlet_probs(500, 8, seed=1)
    a = select(500, batch_size=40, probs=p, features=tfidf_500, seed=1)
    b = select(500, batch_size=40, probs=p, features=tfidf_500, seed=2)
    assert {q.index for q in a if q.reason == "random"} != {q.index for q in b if q.reason == "random"}


@pytest.mark.parametrize(
    "batch_size, share, expected",
    [(40, 0.25, 10), (40, 0.0, 0), (40, 1.0, 40), (200, 0.15, 30), (10, 0.15, 2), (10, 0.05, 1)],
)
def test_random_share_size(batch_size, share, expected):
    # round(batch * share), halves up: 10 * 0.15 = 1.5 -> 2, 10 * 0.05 = 0.5 -> 1
    p = _dirichlet_probs(1000, 5, seed=2)
    picks = select(1000, batch_size=batch_size, probs=p, random_share=share, stratify=False, seed=3)
    assert _reasons(picks)["random"] == expected
    assert len(picks) == batch_size


def test_random_picks_come_first_and_carry_their_uncertainty():
    p = _dirichlet_probs(1000, 5, seed=2)
    u = uncertainty(p, "least_confidence")
    picks = select(1000, batch_size=20, probs=p, random_share=0.25, seed=3)
    assert [q.reason for q in picks[:5]] == ["random"] * 5
    assert "random" not in {q.reason for q in picks[5:]}
    assert all(q.score == pytest.approx(u[q.index]) for q in picks)


def test_random_share_is_uniform_not_uncertain():
    # the random picks are not biased towards uncertain items: their mean uncertainty is the pool's, roughly
    p = _dirichlet_probs(5000, 5, seed=4)
    u = uncertainty(p, "least_confidence")
    picks = select(5000, batch_size=400, probs=p, random_share=1.0, seed=0)
    assert abs(np.mean([q.score for q in picks]) - u.mean()) < 0.03
    top = select(5000, batch_size=400, probs=p, random_share=0.0, stratify=False, seed=0)
    assert np.mean([q.score for q in top]) > u.mean() + 0.1


@pytest.mark.parametrize("strategy", S.STRATEGIES)
def test_plain_uncertainty_is_the_top_of_the_ranking(strategy):
    p = _dirichlet_probs(300, 6, seed=5)
    u = uncertainty(p, strategy)
    picks = select(300, batch_size=25, probs=p, strategy=strategy, random_share=0, stratify=False, seed=0)
    assert _indices(picks) == list(np.argsort(-u, kind="stable")[:25])
    assert {q.reason for q in picks} == {"uncertainty"}
    assert [q.score for q in picks] == sorted((q.score for q in picks), reverse=True)


def test_strategy_changes_the_ranking():
    # row 0: least confident but a clear margin; row 1: confident top class but a close runner-up
    p = np.array([[0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], [0.5, 0.49, 0.01, 0, 0, 0, 0]] + [[1, 0, 0, 0, 0, 0, 0]] * 5)

    def pick(strategy: str) -> int:
        return select(7, batch_size=1, probs=p, strategy=strategy, random_share=0, stratify=False)[0].index

    assert pick("least_confidence") == 0
    assert pick("margin") == 1
    assert pick("entropy") == 0


# ---------------------------------------------------------------------------------------------------------------
# stratification


def _confident(n: int, k: int, classes, p_max: float, seed: int) -> np.ndarray:
    """Rows predicting `classes[i]` with probability p_max, the rest spread at random."""
    rng = np.random.default_rng(seed)
    rest = rng.dirichlet(np.ones(k - 1), size=n) * (1 - p_max)
    out = np.empty((n, k))
    for i, c in enumerate(classes):
        out[i] = np.insert(rest[i], c, p_max)
    return out


def test_stratify_covers_every_predicted_class_including_a_rare_confident_one():
    rng = np.random.default_rng(0)
    k, n = 10, 300
    classes = rng.integers(0, 9, n)  # classes 0..8 ...
    p_max = rng.uniform(0.3, 0.8, n)
    rows = [_confident(1, k, [c], m, seed=i)[0] for i, (c, m) in enumerate(zip(classes, p_max))]
    probs = np.array(rows)
    probs[123] = _confident(1, k, [9], 0.99, seed=99)[0]  # ... and class 9, predicted once, very confidently
    pred = probs.argmax(axis=1)
    assert Counter(pred)[9] == 1

    picks = select(n, batch_size=20, probs=probs, random_share=0.15, stratify=True, diversity=False, seed=1)
    assert set(pred[_indices(picks)]) == set(range(k))
    assert next(q for q in picks if q.index == 123).reason == "stratified"
    # each stratified pick is its class's most uncertain candidate
    u = uncertainty(probs, "least_confidence")
    random_picks = {q.index for q in picks if q.reason == "random"}
    for q in picks:
        if q.reason == "stratified":
            same = [i for i in range(n) if pred[i] == pred[q.index] and i not in random_picks]
            assert u[q.index] == pytest.approx(u[same].max())
    # classes the random picks already cover get no stratified pick of their own
    covered = {pred[i] for i in random_picks}
    assert _reasons(picks)["stratified"] == k - len(covered)

    plain = select(n, batch_size=20, probs=probs, random_share=0, stratify=False, diversity=False, seed=1)
    assert 123 not in _indices(plain)


def test_stratify_rarest_classes_first_when_budget_is_short():
    counts = {0: 50, 1: 30, 2: 5, 3: 1, 4: 2}
    classes = [c for c, m in counts.items() for _ in range(m)]
    probs = _confident(len(classes), 5, classes, 0.6, seed=2)
    picks = select(len(classes), batch_size=3, probs=probs, random_share=0, diversity=False, seed=0)
    assert [q.reason for q in picks] == ["stratified"] * 3
    assert [classes[q.index] for q in picks] == [3, 4, 2]


def test_stratify_on_banking77_covers_all_predicted_intents(banking77):
    # a nearest-centroid "model" over TF-IDF: probabilities from similarities to each intent's centroid
    train, pool = banking77[0::7][:1200], banking77[3::7][:1200]
    vec = TfidfVectorizer(sublinear_tf=True)
    xt = vec.fit_transform([t for t, _ in train])
    xp = vec.transform([t for t, _ in pool])
    labels = sorted({c for _, c in train})
    y = np.array([labels.index(c) for _, c in train])
    centroids = np.vstack([np.asarray(xt[y == j].mean(axis=0)) for j in range(len(labels))])
    logits = 12 * np.asarray(xp @ centroids.T)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    assert len(set(pred)) > 60

    picks = select(len(pool), batch_size=100, probs=probs, features=xp, seed=0)
    assert len(picks) == 100 and len(set(_indices(picks))) == 100
    assert set(pred[_indices(picks)]) == set(pred)
    r = _reasons(picks)
    assert r["random"] == 15 and r["stratified"] > 0 and r["diversity"] > 0
    assert select(len(pool), batch_size=100, probs=probs, features=xp, seed=0) == picks


# ---------------------------------------------------------------------------------------------------------------
# diversity


@pytest.fixture(scope="module")
def copies_case(banking77):
    """20 near-identical, very uncertain utterances plus 180 varied, less uncertain ones."""
    rng = np.random.default_rng(0)
    base = "I still have not received my new card, what should I do"
    fillers = ["", " please", " now", " thanks", " today", " asap", "?", " please help"]
    copies = [base + fillers[i % len(fillers)] + ("!" if i >= len(fillers) else "") for i in range(20)]
    varied = [t for t, _ in banking77[5::50][:180]]
    texts = copies + varied
    x = TfidfVectorizer().fit_transform(texts)
    k = 10
    uncertain = rng.dirichlet(np.full(k, 50.0), size=20)  # near-uniform: max p about 0.15
    varied = np.array([_confident(1, k, [int(c)], m, seed=i)[0]
                       for i, (c, m) in enumerate(zip(rng.integers(0, k, 180), rng.uniform(0.3, 0.8, 180)))])
    probs = np.vstack([uncertain, varied])
    return x, probs


def test_diversity_avoids_near_copies(copies_case):
    x, probs = copies_case
    u = uncertainty(probs, "least_confidence")
    assert set(np.argsort(-u)[:20]) == set(range(20))  # the copies are the 20 most uncertain
    kw = dict(batch_size=20, probs=probs, random_share=0, stratify=False, seed=0)

    diverse = select(200, features=x, diversity=True, **kw)
    assert sum(i < 20 for i in _indices(diverse)) <= 2
    assert _reasons(diverse)["diversity"] >= 15

    plain = select(200, features=x, diversity=False, **kw)
    assert sum(i < 20 for i in _indices(plain)) == 20
    no_features = select(200, features=None, diversity=True, **kw)
    assert _indices(no_features) == _indices(plain)


def test_diversity_with_dense_features_and_hashed_sparse_features(copies_case, banking77):
    x, probs = copies_case
    dense = x.toarray()
    picks = select(200, batch_size=20, probs=probs, features=dense, random_share=0, stratify=False, seed=0)
    assert sum(i < 20 for i in _indices(picks)) <= 2

    # 2**18 hashed columns: only the columns the pool uses are clustered
    texts = [t for t, _ in banking77[:200]]
    hashed = HashingVectorizer(n_features=2**18, alternate_sign=False).transform(texts)
    p = _dirichlet_probs(200, 10, seed=3)
    picks = select(200, batch_size=30, probs=p, features=hashed, seed=0)
    assert len(picks) == 30 and len(set(_indices(picks))) == 30
    assert select(200, batch_size=30, probs=p, features=sp.csc_matrix(hashed), seed=0) == picks


def test_diversity_picks_most_uncertain_in_pool_order(copies_case):
    x, probs = copies_case
    picks = select(200, batch_size=20, probs=probs, features=x, random_share=0, stratify=False, seed=0)
    div = [q.score for q in picks if q.reason == "diversity"]
    assert div == sorted(div, reverse=True)
    # only candidates from the pool (the 4 x 20 most uncertain) can be diversity picks
    u = uncertainty(probs, "least_confidence")
    pool = set(np.argsort(-u, kind="stable")[: S.POOL_FACTOR * 20])
    assert {q.index for q in picks if q.reason == "diversity"} <= pool


def test_minibatch_path_is_deterministic(monkeypatch, tfidf_500):
    monkeypatch.setattr(S, "MINIBATCH_ABOVE", 50)
    p = _dirichlet_probs(500, 8, seed=1)
    picks = select(500, batch_size=30, probs=p, features=tfidf_500, seed=0)
    assert len(set(_indices(picks))) == 30 and _reasons(picks)["diversity"] > 0
    assert select(500, batch_size=30, probs=p, features=tfidf_500, seed=0) == picks


def test_all_zero_features_still_fill_the_batch():
    p = _dirichlet_probs(100, 4, seed=1)
    picks = select(100, batch_size=10, probs=p, features=sp.csr_matrix((100, 2**18)), random_share=0, seed=0)
    assert len(set(_indices(picks))) == 10


# ---------------------------------------------------------------------------------------------------------------
# cold start


def test_cold_start_without_features_is_random():
    picks = select(1000, batch_size=50, seed=4)
    assert len(set(_indices(picks))) == 50
    assert _reasons(picks) == Counter({"cold_start": 42, "random": 8})
    assert all(q.score is None for q in picks)
    assert select(1000, batch_size=50, seed=4) == picks
    assert _indices(select(1000, batch_size=50, seed=5)) != _indices(picks)
    # the "uncertainty" args are irrelevant without probs
    assert select(1000, batch_size=50, seed=4, strategy="entropy", stratify=False) == picks


def test_cold_start_with_features_takes_the_most_central_item_of_each_cluster():
    rng = np.random.default_rng(0)
    sizes = [60, 40, 25, 15, 10]
    centers = np.eye(5) * 20
    blobs = [centers[b] + rng.normal(size=(m, 5)) for b, m in enumerate(sizes)]
    x = np.vstack(blobs)
    blob = np.repeat(np.arange(5), sizes)

    picks = select(len(x), batch_size=5, features=x, random_share=0, seed=0)
    assert [q.reason for q in picks] == ["cold_start"] * 5
    assert all(q.score is None for q in picks)
    assert [blob[q.index] for q in picks] == [0, 1, 2, 3, 4]  # one per blob, biggest first
    for q in picks:
        members = np.flatnonzero(blob == blob[q.index])
        mean = x[members].mean(axis=0)
        assert q.index == members[np.argmin(((x[members] - mean) ** 2).sum(axis=1))]
    # random would rarely hit the 10-item blob: it is the cluster structure that is used
    assert select(len(x), batch_size=5, features=x, random_share=0, seed=0) == picks


def test_cold_start_with_sparse_topics_one_pick_per_topic():
    # three "topics" with disjoint vocabularies scattered over 2**18 hashed columns, 50 / 30 / 15 documents
    rng = np.random.default_rng(1)
    sizes = [50, 30, 15]
    vocab = rng.choice(2**18, size=(3, 40), replace=False)
    rows, cols = [], []
    for doc, topic in enumerate(np.repeat(np.arange(3), sizes)):
        words = rng.choice(vocab[topic], size=6, replace=False)
        rows += [doc] * 6
        cols += list(words)
    x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(sum(sizes), 2**18))
    x = sp.diags(1 / np.sqrt(x.multiply(x).sum(axis=1)).A1) @ x  # L2-normalised rows, like TF-IDF
    topic = np.repeat(np.arange(3), sizes)
    picks = select(sum(sizes), batch_size=3, features=x, random_share=0, seed=0)
    assert [topic[q.index] for q in picks] == [0, 1, 2]


def test_cold_start_with_tfidf_features(banking77, monkeypatch):
    intents = ["card_arrival", "exchange_rate", "lost_or_stolen_phone"]
    rows = [(t, c) for t, c in banking77 if c in intents]
    rows = [r for c in intents for r in [r for r in rows if r[1] == c][:40]]
    x = TfidfVectorizer(stop_words="english").fit_transform([t for t, _ in rows])
    picks = select(len(rows), batch_size=12, features=x, random_share=0.25, seed=0)
    assert len(set(_indices(picks))) == 12
    assert _reasons(picks) == Counter({"cold_start": 9, "random": 3})
    assert select(len(rows), batch_size=12, features=x, random_share=0.25, seed=0) == picks
    # beyond COLD_SAMPLE candidates a uniform sample is clustered: same counts, still deterministic
    monkeypatch.setattr(S, "COLD_SAMPLE", 30)
    sampled = select(len(rows), batch_size=6, features=x, random_share=0, seed=0)
    assert len(set(_indices(sampled))) == 6 and {q.reason for q in sampled} == {"cold_start"}
    assert select(len(rows), batch_size=6, features=x, random_share=0, seed=0) == sampled


# ---------------------------------------------------------------------------------------------------------------
# select: validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=10, batch_size=-1), "batch_size"),
        (dict(n=-1, batch_size=5), "n must be"),
        (dict(n=10, batch_size=5, probs=np.full((9, 2), 0.5)), "9 rows"),
        (dict(n=10, batch_size=5, probs=np.full((10, 2), 0.4)), "sum to 1"),
        (dict(n=10, batch_size=5, probs=np.full((10, 2), 0.5), strategy="bald"), "unknown strategy"),
        (dict(n=10, batch_size=5, strategy="bald"), "unknown strategy"),
        (dict(n=10, batch_size=5, features=np.zeros((11, 3))), "11 rows"),
        (dict(n=10, batch_size=5, features=sp.csr_matrix((9, 2**18))), "9 rows"),
        (dict(n=10, batch_size=5, features=np.zeros(10)), "2-D"),
        (dict(n=10, batch_size=5, random_share=1.5), "random_share"),
        (dict(n=10, batch_size=5, random_share=-0.1), "random_share"),
    ],
)
def test_select_rejects_bad_input(kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=match):
        select(n, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# route


@pytest.mark.parametrize(
    "max_prob, expected",
    [(1.0, "verify"), (0.9, "verify"), (0.8999, "overlap"), (0.7, "overlap"), (0.5, "overlap"),
     (0.4999, "expert"), (0.0, "expert"), (None, "expert")],
)
def test_route_thresholds(max_prob, expected):
    assert route(max_prob, high=0.9, low=0.5) == expected


@pytest.mark.parametrize("max_prob", [None, 0.1, 0.7, 0.95])
def test_route_off_is_main(max_prob):
    assert route(max_prob, high=0.9, low=0.5, routing=False) == "main"


@pytest.mark.parametrize("max_prob, high, low", [(0.5, 0.4, 0.6), (1.2, 0.9, 0.5), (math.nan, 0.9, 0.5)])
def test_route_rejects_bad_input(max_prob, high, low):
    with pytest.raises(ValueError):
        route(max_prob, high=high, low=low)


# ---------------------------------------------------------------------------------------------------------------
# assign_overlap

ROUTES_10 = ["verify", "overlap", "expert", "overlap", "verify", "overlap", "verify", "verify", "expert", "verify"]
SCORES_10 = [0.05, 0.30, 0.70, 0.45, 0.02, 0.40, 0.08, 0.01, 0.60, 0.03]


def test_assign_overlap_keeps_the_most_uncertain_ambiguous_ones():
    out = assign_overlap(ROUTES_10, SCORES_10, share=0.2)
    assert out.count("overlap") == 2
    assert [i for i, r in enumerate(out) if r == "overlap"] == [3, 5]  # scores 0.45 and 0.40
    assert out[1] == "expert"  # the least uncertain ambiguous one is over budget
    assert [r for i, r in enumerate(out) if i not in (1, 3, 5)] == [r for i, r in enumerate(ROUTES_10)
                                                                     if i not in (1, 3, 5)]
    assert assign_overlap(ROUTES_10, SCORES_10, share=0.0) == [
        "expert" if r == "overlap" else r for r in ROUTES_10
    ]


def test_assign_overlap_tops_up_at_random():
    out = assign_overlap(ROUTES_10, SCORES_10, share=0.5, seed=1)
    assert out.count("overlap") == 5
    assert all(out[i] == "overlap" for i in (1, 3, 5))
    added = [i for i, r in enumerate(out) if r == "overlap" and ROUTES_10[i] != "overlap"]
    assert len(added) == 2
    assert all(out[i] == ROUTES_10[i] for i in range(10) if i not in added and i not in (1, 3, 5))
    assert assign_overlap(ROUTES_10, SCORES_10, share=0.5, seed=1) == out
    others = {tuple(assign_overlap(ROUTES_10, SCORES_10, share=0.5, seed=s)) for s in range(10)}
    assert len(others) > 1  # the top-up is random


def test_assign_overlap_routing_off_and_rounding():
    main = ["main"] * 7
    out = assign_overlap(main, [None] * 7, share=0.1, seed=0)  # 0.7 -> 1
    assert out.count("overlap") == 1 and out.count("main") == 6
    assert assign_overlap(main, [None] * 7, share=0.5).count("overlap") == 4  # 3.5 -> 4
    # routing off (tasks in main, none in verify / expert): ambiguous ones over budget go to main
    mixed = ["main", "overlap", "overlap", "main"]
    assert assign_overlap(mixed, [None, 0.2, 0.3, None], share=0.25) == ["main", "main", "overlap", "main"]


def test_assign_overlap_all_ambiguous_with_routing_on_goes_to_expert():
    out = assign_overlap(["overlap"] * 4, [0.1, 0.4, None, 0.3], share=0.5)
    assert out == ["expert", "overlap", "expert", "overlap"]  # None scores rank last
    assert assign_overlap(["overlap"] * 4, [0.1, 0.4, None, 0.3], share=0.5, routing=False) == [
        "main", "overlap", "main", "overlap"]


@pytest.mark.parametrize(
    "routes, scores, share, match",
    [(["verify"], [0.1, 0.2], 0.1, "length"), (["queue"], [0.1], 0.1, "unknown route"),
     (["verify"], [0.1], 1.5, "share"), (["overlap"], [math.nan], 0.5, "finite")],
)
def test_assign_overlap_rejects_bad_input(routes, scores, share, match):
    with pytest.raises(ValueError, match=match):
        assign_overlap(routes, scores, share)


# ---------------------------------------------------------------------------------------------------------------
# gold


@pytest.mark.parametrize(
    "n_tasks, share, k", [(190, 0.05, 10), (100, 0.2, 25), (10, 0.2, 3), (95, 0.05, 5), (0, 0.05, 0), (50, 0.0, 0)]
)
def test_pick_gold_share_arithmetic(n_tasks, share, k):
    gold = pick_gold(n_tasks, 1000, share, seed=0)
    assert len(gold) == k  # 10 * 0.2 / 0.8 = 2.5 rounds up to 3
    assert len(set(gold)) == k and all(0 <= g < 1000 for g in gold)
    if n_tasks and k:
        assert k / (n_tasks + k) == pytest.approx(share, abs=0.5 / (n_tasks + k))


def test_pick_gold_cap_and_determinism():
    assert sorted(pick_gold(190, 3, 0.05)) == [0, 1, 2]
    assert pick_gold(190, 0, 0.05) == []
    assert pick_gold(190, 100, 0.05, seed=3) == pick_gold(190, 100, 0.05, seed=3)
    assert pick_gold(190, 100, 0.05, seed=3) != pick_gold(190, 100, 0.05, seed=4)
    assert all(isinstance(g, int) for g in pick_gold(190, 100, 0.05))


@pytest.mark.parametrize("args", [(10, 5, 1.0), (10, 5, -0.1), (-1, 5, 0.1), (10, -5, 0.1)])
def test_pick_gold_rejects_bad_input(args):
    with pytest.raises(ValueError):
        pick_gold(*args)


def test_gold_routes_proportions():
    routes = ["verify"] * 60 + ["overlap"] * 30 + ["expert"] * 10
    assert Counter(gold_routes(10, routes)) == {"verify": 6, "overlap": 3, "expert": 1}
    # quotas 3.5 / 2.1 / 1.4: floors 3 / 2 / 1, the one left goes to the largest remainder
    routes = ["verify"] * 50 + ["overlap"] * 30 + ["expert"] * 20
    assert Counter(gold_routes(7, routes)) == {"verify": 4, "overlap": 2, "expert": 1}
    # quotas 1.5 / 3.5: equal remainders, the one left goes to the bigger queue
    assert Counter(gold_routes(5, ["verify"] * 3 + ["expert"] * 7)) == {"verify": 1, "expert": 4}
    # equal remainders and equal queues: ROUTES order (verify before expert)
    assert Counter(gold_routes(1, ["expert"] * 2 + ["verify"] * 2)) == {"verify": 1}
    assert gold_routes(3, ["main"] * 9) == ["main"] * 3
    assert "main" not in gold_routes(5, routes)


def test_gold_routes_deterministic_and_spread():
    routes = ["verify"] * 60 + ["overlap"] * 30 + ["expert"] * 10
    assert gold_routes(10, routes, seed=2) == gold_routes(10, routes, seed=2)
    orders = {tuple(gold_routes(10, routes, seed=s)) for s in range(5)}
    assert len(orders) > 1 and all(Counter(o) == Counter(orders.pop()) for o in list(orders))
    assert set(gold_routes(10, routes)) <= set(ROUTES)


def test_gold_routes_edge_cases():
    assert gold_routes(0, []) == []
    with pytest.raises(ValueError, match="no real tasks"):
        gold_routes(2, [])
    with pytest.raises(ValueError, match="unknown route"):
        gold_routes(2, ["verify", "vip"])
    with pytest.raises(ValueError):
        gold_routes(-1, ["verify"])
