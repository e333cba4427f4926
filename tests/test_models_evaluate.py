"""Evaluation: intent accuracy / macro-F1 as scikit-learn computes them, calibration against hand-computed bins,
exact-span entity F1 (an overlap is not a match), and the champion / challenger decision."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, precision_recall_fscore_support

from labelops.dispatch.tasks import Span
from labelops.models.evaluate import (ECE_BINS, compare, entity_metrics, intent_metrics, metric_value,
                                      span_calibration)


# ------------------------------------------------------------------------------------------------- intents
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intent_metrics_match_scikit_learn(seed):
    rng = random.Random(seed)
    classes = [f"c{k}" for k in range(7)]
    y_true = [rng.choice(classes[:6]) for _ in range(300)]  # c6: predicted sometimes, never true
    y_pred = [t if rng.random() < 0.6 else rng.choice(classes) for t in y_true]
    y_pred[:3] = ["unseen"] * 3  # a label in neither the true labels nor the classes
    m = intent_metrics(y_true, y_pred)
    assert m["n"] == 300 and m["calibration"] is None
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    labels = sorted(set(y_true) | set(y_pred))
    assert sorted(m["per_label"]) == labels
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for k, lab in enumerate(labels):
        row = m["per_label"][lab]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[k], r[k], f[k]))
        assert row["support"] == s[k]
    assert m["per_label"]["unseen"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    json.dumps(m)


def test_a_class_neither_true_nor_predicted_does_not_lower_macro_f1():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    m = intent_metrics(["a", "b"], ["a", "b"], probs, ["a", "b", "never"])
    assert m["macro_f1"] == 1.0 and "never" not in m["per_label"]
    with pytest.raises(ValueError, match="predictions"):
        intent_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="classes"):
        intent_metrics(["a"], ["a"], np.array([[1.0]]))
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        intent_metrics(["a"], ["a"], np.array([[1.0, 0.0, 0.0]]), ["a", "b"])


def test_calibration_by_hand():
    classes = ["a", "b", "c", "d"]
    probs = np.array([
        [0.95, 0.05, 0.0, 0.0],   # top a, true a: right   -> bin 14 (0.933, 1]
        [0.95, 0.0, 0.05, 0.0],   # top a, true b: wrong   -> bin 14
        [0.5, 0.5, 0.0, 0.0],     # top a (first of a tie), true a: right -> bin 7 (0.467, 0.533]
        [0.3, 0.25, 0.25, 0.2],   # top a, true d: wrong   -> bin 4 (0.267, 0.333]
        [0.2, 0.4, 0.2, 0.2],     # top b, true b: right; 0.4 is the upper edge of bin 5 (0.333, 0.4]
    ])
    y_true = ["a", "b", "a", "d", "b"]
    m = intent_metrics(y_true, ["a", "a", "a", "a", "b"], probs, classes)
    cal = m["calibration"]
    # ECE = 2/5 |0.5 - 0.95| + 1/5 |1 - 0.5| + 1/5 |0 - 0.3| + 1/5 |1 - 0.4| = 0.18 + 0.1 + 0.06 + 0.12
    assert cal["ece"] == pytest.approx(0.46)
    assert cal["mean_confidence"] == pytest.approx((0.95 + 0.95 + 0.5 + 0.3 + 0.4) / 5)
    assert cal["accuracy"] == pytest.approx(3 / 5) and cal["n"] == 5
    # Brier: sum over classes of (p - onehot)^2, averaged over rows
    by_hand = np.mean([0.05 ** 2 * 2, 0.95 ** 2 + 1 + 0.05 ** 2, 0.5 ** 2 * 2, 0.3 ** 2 + 0.25 ** 2 * 2 + 0.8 ** 2,
                       0.2 ** 2 * 3 + 0.6 ** 2])
    assert cal["brier"] == pytest.approx(by_hand)
    assert cal["brier"] == pytest.approx(brier_score_loss(y_true, probs, labels=classes))
    bins = cal["bins"]
    assert len(bins) == ECE_BINS and bins[0]["lo"] == 0 and bins[-1]["hi"] == 1
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 2]
    assert bins[14]["accuracy"] == 0.5 and bins[14]["confidence"] == pytest.approx(0.95)
    assert bins[5]["lo"] == pytest.approx(1 / 3) and bins[5]["hi"] == 0.4 and bins[5]["accuracy"] == 1.0
    assert bins[0]["accuracy"] is None and bins[0]["confidence"] is None
    json.dumps(m)


def test_perfectly_calibrated_and_overconfident_models():
    rng = np.random.default_rng(0)
    n = 20_000
    conf = rng.uniform(0.5, 1.0, n)
    right = rng.uniform(0, 1, n) < conf  # right with exactly the stated probability
    probs = np.column_stack([conf, 1 - conf])
    y_true = np.where(right, "a", "b").tolist()
    good = intent_metrics(y_true, ["a"] * n, probs, ["a", "b"])["calibration"]
    assert good["ece"] < 0.02
    sharp = np.column_stack([np.full(n, 0.99), np.full(n, 0.01)])  # same answers, always 99 % sure
    bad = intent_metrics(y_true, ["a"] * n, sharp, ["a", "b"])["calibration"]
    assert bad["ece"] == pytest.approx(0.99 - np.mean(right)) and bad["ece"] > 0.2
    assert bad["brier"] > good["brier"]
    empty = intent_metrics([], [], np.zeros((0, 2)), ["a", "b"])
    assert empty["calibration"]["ece"] is None and empty["accuracy"] == 0.0


# ------------------------------------------------------------------------------------------------ entities
def test_entity_metrics_exact_spans_only():
    gold = [
        [{"start": 5, "end": 14, "label": "artist"}, {"start": 18, "end": 25, "label": "playlist"}],
        [{"start": 0, "end": 8, "label": "city"}],
        [],
    ]
    pred = [
        [Span(5, 14, "artist", "daft punk", 0.9),          # exact: counts
         Span(18, 24, "playlist", "workou", 0.8)],          # overlaps the gold playlist: does NOT count
        [{"start": 0, "end": 8, "label": "state"},          # right offsets, wrong label: does not count
         {"start": 0, "end": 8, "label": "state"}],         # a duplicate counts once
        [{"start": 1, "end": 3, "label": "city"}],          # a span where there is none
    ]
    m = entity_metrics(gold, pred)
    assert m["n_texts"] == 3
    assert m["micro"] == {"precision": pytest.approx(1 / 4), "recall": pytest.approx(1 / 3),
                          "f1": pytest.approx(2 / 7), "tp": 1, "fp": 3, "fn": 2}
    pt = m["per_type"]
    assert pt["artist"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "predicted": 1, "tp": 1}
    assert pt["playlist"]["f1"] == 0.0 and pt["playlist"]["support"] == 1 and pt["playlist"]["predicted"] == 1
    assert pt["state"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1, "tp": 0}
    assert pt["city"]["support"] == 1 and pt["city"]["predicted"] == 1 and pt["city"]["tp"] == 0
    assert m["macro_f1"] == pytest.approx(1 / 4)
    assert entity_metrics([[]], [[]])["micro"]["f1"] == 0.0
    with pytest.raises(ValueError, match="gold span lists"):
        entity_metrics([[]], [])
    json.dumps(m)


def test_entity_metrics_agree_with_the_seed_tool():
    from seed_model import snips, span_metrics

    from labelops.models.entities import EntityModel

    train, validate = random.Random(0).sample(snips("*/train_*_full.json"), 1500), snips("*/validate_*.json")
    model = EntityModel().fit([u["text"] for u in train], [u["spans"] for u in train])
    m = entity_metrics([u["spans"] for u in validate], model.predict([u["text"] for u in validate]))
    seed = span_metrics(model, validate)
    assert 0.5 < m["micro"]["f1"] < 1 and m["micro"]["fp"] > 0 and m["micro"]["fn"] > 0
    for k in ("precision", "recall", "f1"):
        assert round(m["micro"][k], 4) == seed[k]
    assert sum(v["support"] for v in m["per_type"].values()) == sum(len(u["spans"]) for u in validate)


# ------------------------------------------------------------------------------------------------- compare
CHAMPION = {"accuracy": 0.80, "macro_f1": 0.78, "calibration": {"ece": 0.05, "brier": 0.30}}


def test_span_calibration_by_hand():
    gold = [[{"start": 0, "end": 4, "label": "city"}], [{"start": 5, "end": 9, "label": "artist"}], []]
    pred = [[Span(0, 4, "city", "Rome", 0.9), Span(5, 8, "city", "xyz", 0.9)],  # right, wrong offsets
            [{"start": 5, "end": 9, "label": "artist", "score": 0.3}],  # right, low score
            [{"start": 0, "end": 2, "label": "artist", "score": 0.32}, {"start": 3, "end": 4, "label": "x"}]]
    c = span_calibration(gold, pred, n_bins=10)
    # scored spans: 0.9 right, 0.9 wrong (bin 0.8-0.9), 0.3 right, 0.32 wrong (bin 0.3-0.4 holds 0.32; 0.3 is
    # in 0.2-0.3); the span without a score is not counted
    assert c["n"] == 4 and c["precision"] == pytest.approx(0.5) and c["mean_score"] == pytest.approx(0.605)
    by_bin = {(round(b["lo"], 1)): b for b in c["bins"] if b["count"]}
    assert by_bin[0.8]["count"] == 2 and by_bin[0.8]["accuracy"] == 0.5
    assert by_bin[0.2]["accuracy"] == 1.0 and by_bin[0.3]["accuracy"] == 0.0
    assert c["ece"] == pytest.approx(2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.3) + 1 / 4 * abs(0 - 0.32))
    assert span_calibration(gold, [[{"start": 0, "end": 4, "label": "city"}], [], []]) is None  # no scores


def test_entity_ece_is_lower_is_better_in_the_comparison():
    champion = {"entity_f1": 0.80, "entity_precision": 0.80, "entity_ece": 0.05}
    worse_calibrated = {"entity_f1": 0.85, "entity_precision": 0.80, "entity_ece": 0.20}
    out = compare(champion, worse_calibrated, "entity_f1", guarded=("entity_precision", "entity_ece"),
                  tolerance=0.01)
    assert not out["promote"] and "entity_ece" in out["reason"]
    better = dict(worse_calibrated, entity_ece=0.04)
    assert compare(champion, better, "entity_f1", guarded=("entity_precision", "entity_ece"), tolerance=0.01)[
        "promote"]


def test_compare_promotes_only_a_strict_improvement():
    assert compare(None, CHAMPION, "macro_f1", ["accuracy"], 0.01)["promote"] is True
    assert compare({}, CHAMPION, "macro_f1")["reason"] == "no champion"
    better = {**CHAMPION, "macro_f1": 0.79}
    out = compare(CHAMPION, better, "macro_f1", ["accuracy", "calibration.ece"], 0.01)
    assert out["promote"] is True and out["deltas"]["macro_f1"] == pytest.approx(0.01)
    assert out["deltas"]["accuracy"] == 0.0 and out["deltas"]["calibration.ece"] == 0.0
    same = compare(CHAMPION, dict(CHAMPION), "macro_f1", [], 0.01)
    assert same["promote"] is False and "does not beat" in same["reason"]
    worse = compare(CHAMPION, {**CHAMPION, "macro_f1": 0.70}, "macro_f1", [], 0.5)
    assert worse["promote"] is False and worse["deltas"]["macro_f1"] == pytest.approx(-0.08)


def test_compare_guards_with_direction_and_tolerance():
    base = {**CHAMPION, "macro_f1": 0.85}
    # accuracy falls by 0.01: within a 0.01 tolerance (0.80 - 0.79 is 0.010000000000000009 in floats)...
    ok = compare(CHAMPION, {**base, "accuracy": 0.79}, "macro_f1", ["accuracy"], 0.01)
    assert ok["promote"] is True, ok
    # ...by 0.02: not
    fell = compare(CHAMPION, {**base, "accuracy": 0.78}, "macro_f1", ["accuracy"], 0.01)
    assert fell["promote"] is False and "accuracy" in fell["reason"]
    # ECE is lower-is-better: rising by 0.03 is a fall, dropping by 0.03 is fine
    rose = compare(CHAMPION, {**base, "calibration": {"ece": 0.08, "brier": 0.30}}, "macro_f1",
                   ["calibration.ece", "calibration.brier"], 0.02)
    assert rose["promote"] is False and "calibration.ece" in rose["reason"]
    assert rose["deltas"]["calibration.ece"] == pytest.approx(0.03)
    dropped = compare(CHAMPION, {**base, "calibration": {"ece": 0.02, "brier": 0.30}}, "macro_f1",
                      ["calibration.ece"], 0.0)
    assert dropped["promote"] is True
    # ... and as the metric itself, lower wins
    assert compare(CHAMPION, {**CHAMPION, "calibration": {"ece": 0.04, "brier": 0.3}}, "calibration.ece")["promote"]
    assert not compare(CHAMPION, {**CHAMPION, "calibration": {"ece": 0.06, "brier": 0.3}}, "calibration.ece")[
        "promote"]
    # entity metrics by path
    champ_e, chall_e = {"micro": {"f1": 0.75}}, {"micro": {"f1": 0.94}}
    assert compare(champ_e, chall_e, "micro.f1")["promote"] and not compare(chall_e, champ_e, "micro.f1")["promote"]


def test_compare_with_missing_metrics():
    better = {"macro_f1": 0.9, "accuracy": 0.9}
    missing = compare(CHAMPION, {"accuracy": 0.99}, "macro_f1", [], 0.0)
    assert missing["promote"] is False and "challenger has no macro_f1" in missing["reason"]
    assert missing["deltas"]["macro_f1"] is None
    assert compare({"accuracy": 0.8}, better, "macro_f1")["promote"] is False  # cannot compare: by hand
    no_guard = compare(CHAMPION, better, "macro_f1", ["calibration.ece"], 0.01)
    assert no_guard["promote"] is False and "calibration.ece" in no_guard["reason"]
    not_checked = compare({"macro_f1": 0.5}, better, "macro_f1", ["calibration.ece"], 0.01)
    assert not_checked["promote"] is True and "not checked" in not_checked["reason"]
    assert metric_value({"a": {"b": float("nan")}}, "a.b") is None and metric_value({"a": True}, "a") is None
    assert metric_value({"a": np.float32(0.5)}, "a") == 0.5
    with pytest.raises(ValueError, match="tolerance"):
        compare(CHAMPION, better, "macro_f1", [], -0.1)
