"""Evaluation of a model on a dataset version's fixed test split, and the champion / challenger decision.

- `intent_metrics`: accuracy, macro-F1 and per-label precision / recall / F1 / support (as scikit-learn computes
  them, zero where a ratio is 0/0), and, given the probabilities, their calibration: ECE of the top-class
  probability over 15 equal-width bins, the multi-class Brier score and the mean top-class probability.
- `entity_metrics`: exact-span precision / recall / F1 (a predicted span counts only when label, start and end
  all equal a gold span's), micro over all spans and per entity type.
- `compare`: promote the challenger only if it beats the champion on one metric without falling on guarded ones.

Pure: numpy only (no scikit-learn, no Airflow). Every returned number is a plain float / int (JSON-ready).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

ECE_BINS = 15
# Metrics where lower is better, by their last name component (``calibration.ece`` -> ``ece``). Any other metric
# is higher-is-better (accuracy, macro_f1, f1, precision, recall, ...).
LOWER_IS_BETTER = frozenset({"ece", "entity_ece", "brier", "log_loss", "loss", "error_rate", "mean_absolute_error"})


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


# ---------------------------------------------------------------------------------------------------- intents
def calibration(y_true: Sequence[str], probs: Any, classes: Sequence[str], *, n_bins: int = ECE_BINS) -> dict:
    """Calibration of the top-class probability.

    Bins are equal-width over [0, 1], bin b holding the confidences in (b/n, (b+1)/n] (a confidence of 0 goes to
    the first bin). ``ece = sum_b |b| / n * |accuracy(b) - confidence(b)|`` where accuracy(b) is the share of
    rows of bin b whose top class is the true class. ``brier`` is the multi-class Brier score,
    ``mean_i sum_k (p_ik - [y_i == k])^2`` (0 is perfect, 2 the worst; a true label that is none of the classes
    counts as an all-zero row). ``bins`` lists every bin: lo, hi, count and, when not empty, its accuracy and
    mean confidence (None when empty)."""
    p = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    if p.ndim != 2 or p.shape != (len(y_true), len(classes)):
        raise ValueError(f"probs must be (n_rows, n_classes) = ({len(y_true)}, {len(classes)}), got {p.shape}")
    n = len(y_true)
    edges = [b / n_bins for b in range(n_bins + 1)]  # b / n: exact at 0.2, 0.4, ... (not accumulated steps)
    if n == 0:
        return {"ece": None, "brier": None, "mean_confidence": None, "accuracy": None, "n": 0,
                "bins": [{"lo": edges[b], "hi": edges[b + 1], "count": 0, "accuracy": None, "confidence": None}
                         for b in range(n_bins)]}
    index = {c: k for k, c in enumerate(classes)}
    top = p.argmax(axis=1)
    conf = p[np.arange(n), top]
    correct = np.array([classes[t] == y for t, y in zip(top, y_true)], dtype=np.float64)
    onehot = np.zeros_like(p)
    for i, y in enumerate(y_true):
        if y in index:
            onehot[i, index[y]] = 1.0
    brier = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    ece, bins = _binned(conf, correct, n_bins)
    return {"ece": ece, "brier": brier, "mean_confidence": float(conf.mean()),
            "accuracy": float(correct.mean()), "n": n, "bins": bins}


def _binned(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[float, list[dict]]:
    """(ECE, bins) of confidences against 0/1 outcomes, with the bins `calibration` describes."""
    n = len(conf)
    edges = [b / n_bins for b in range(n_bins + 1)]
    which = np.searchsorted(np.array(edges[1:-1]), conf, side="left")  # edges[b] < conf <= edges[b + 1]
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else None
        c = float(conf[mask].mean()) if count else None
        if count:
            ece += count / n * abs(acc - c)
        bins.append({"lo": edges[b], "hi": edges[b + 1], "count": count, "accuracy": acc, "confidence": c})
    return float(ece), bins


def span_calibration(true_spans_per_text: Sequence[Iterable[Any]], pred_spans_per_text: Sequence[Iterable[Any]],
                     *, n_bins: int = ECE_BINS) -> dict | None:
    """Calibration of the predicted spans' scores (dispatch routes on them): each scored span is right when a
    gold span of its text has the same label, start and end. ``ece`` over the bins of `calibration`,
    ``mean_score`` against ``precision`` (the share of scored spans that are right). None when no predicted span
    has a score (a model without span scores)."""
    conf, correct = [], []
    for gold_spans, pred_spans in zip(true_spans_per_text, pred_spans_per_text):
        gold = {_span_key(s) for s in gold_spans or ()}
        for s in pred_spans or ():
            score = s.get("score") if isinstance(s, Mapping) else getattr(s, "score", None)
            if score is not None:
                conf.append(min(max(float(score), 0.0), 1.0))
                correct.append(float(_span_key(s) in gold))
    if not conf:
        return None
    c, r = np.asarray(conf), np.asarray(correct)
    ece, bins = _binned(c, r, n_bins)
    return {"ece": ece, "mean_score": float(c.mean()), "precision": float(r.mean()), "n": len(conf), "bins": bins}


def intent_metrics(y_true: Sequence[str], y_pred: Sequence[str], probs: Any = None,
                   classes: Sequence[str] | None = None) -> dict:
    """{accuracy, macro_f1, n, per_label: {label: {precision, recall, f1, support}}, calibration}.

    The labels of per_label and of the macro average are those found in y_true or y_pred (scikit-learn's
    default), so a class the model knows but the test split lacks and the model never predicts does not count
    as an F1 of 0. ``calibration`` (see `calibration`) needs probs, one column per entry of classes (the
    model's class order); None without probs."""
    y_true, y_pred = [str(y) for y in y_true], [str(y) for y in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    n = len(y_true)
    labels = sorted(set(y_true) | set(y_pred))
    tp, fp, fn = Counter(), Counter(), Counter()
    for t, p in zip(y_true, y_pred):
        if t == p:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    support = Counter(y_true)
    per_label = {lab: {**_prf(tp[lab], fp[lab], fn[lab]), "support": support[lab]} for lab in labels}
    out = {
        "accuracy": (sum(tp.values()) / n) if n else 0.0,
        "macro_f1": float(np.mean([v["f1"] for v in per_label.values()])) if labels else 0.0,
        "n": n,
        "per_label": per_label,
        "calibration": None,
    }
    if probs is not None:
        if classes is None:
            raise ValueError("probs needs classes (the label of each column)")
        out["calibration"] = calibration(y_true, probs, classes)
    return out


# --------------------------------------------------------------------------------------------------- entities
def _span_key(s: Any) -> tuple[str, int, int]:
    if isinstance(s, Mapping):
        return str(s["label"]), int(s["start"]), int(s["end"])
    return str(s.label), int(s.start), int(s.end)


def entity_metrics(true_spans_per_text: Sequence[Iterable[Any]], pred_spans_per_text: Sequence[Iterable[Any]]) \
        -> dict:
    """Exact-span scores: a predicted span is a true positive only when a gold span of the same text has the
    same label, start and end (an overlap, or the right text with the wrong label, is a false positive and a
    false negative). Spans are dicts {start, end, label} or `Span`s; duplicates within a text count once.

    {micro: {precision, recall, f1, tp, fp, fn}, per_type: {label: {precision, recall, f1, support, predicted,
    tp}}, macro_f1 (mean F1 over the types in gold or predictions), n_texts}."""
    if len(true_spans_per_text) != len(pred_spans_per_text):
        raise ValueError(f"{len(true_spans_per_text)} gold span lists but {len(pred_spans_per_text)} predicted")
    tp, fp, fn = Counter(), Counter(), Counter()
    for gold_spans, pred_spans in zip(true_spans_per_text, pred_spans_per_text):
        gold = {_span_key(s) for s in gold_spans or ()}
        pred = {_span_key(s) for s in pred_spans or ()}
        for label, _, _ in gold & pred:
            tp[label] += 1
        for label, _, _ in pred - gold:
            fp[label] += 1
        for label, _, _ in gold - pred:
            fn[label] += 1
    types = sorted(set(tp) | set(fp) | set(fn))
    per_type = {t: {**_prf(tp[t], fp[t], fn[t]), "support": tp[t] + fn[t], "predicted": tp[t] + fp[t],
                    "tp": tp[t]} for t in types}
    TP, FP, FN = sum(tp.values()), sum(fp.values()), sum(fn.values())
    return {
        "micro": {**_prf(TP, FP, FN), "tp": TP, "fp": FP, "fn": FN},
        "per_type": per_type,
        "macro_f1": float(np.mean([v["f1"] for v in per_type.values()])) if types else 0.0,
        "n_texts": len(true_spans_per_text),
    }


# ---------------------------------------------------------------------------------------------------- compare
def metric_value(metrics: Mapping | None, name: str) -> float | None:
    """A metric by dotted path ("accuracy", "calibration.ece", "micro.f1"); None when missing or not a number
    (or NaN)."""
    node: Any = metrics
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float, np.integer, np.floating)):
        return None
    value = float(node)
    return None if math.isnan(value) else value


def lower_is_better(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in LOWER_IS_BETTER


def compare(champion: Mapping | None, challenger: Mapping, metric: str, guarded: Sequence[str] = (),
            tolerance: float = 0.0) -> dict:
    """Whether the challenger replaces the champion: {"promote", "reason", "deltas"}.

    Promote when there is no champion (None or empty metrics); otherwise only when the challenger is strictly
    better on ``metric`` (higher, or lower for `LOWER_IS_BETTER` metrics) and no guarded metric got worse by
    more than ``tolerance`` (in the metric's own units; "worse" is lower, or higher for lower-is-better
    metrics). ``deltas`` is challenger minus champion per metric (None when either side lacks it). A challenger
    without ``metric`` or without a guarded metric the champion has is never promoted; a guarded metric the
    champion lacks is not checked (said in the reason)."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    names = [metric] + [g for g in guarded if g != metric]
    if not champion:
        return {"promote": True, "reason": "no champion", "deltas": {k: None for k in names}}
    deltas: dict[str, float | None] = {}
    for k in names:
        a, b = metric_value(champion, k), metric_value(challenger, k)
        deltas[k] = None if a is None or b is None else b - a

    def gain(k: str) -> float:  # > 0: the challenger is better on k
        return -deltas[k] if lower_is_better(k) else deltas[k]

    def no(reason: str) -> dict:
        return {"promote": False, "reason": reason, "deltas": deltas}

    if metric_value(challenger, metric) is None:
        return no(f"challenger has no {metric}")
    if metric_value(champion, metric) is None:
        return no(f"champion has no {metric}: cannot compare (promote by hand)")
    direction = "lower" if lower_is_better(metric) else "higher"
    champ_v, chall_v = metric_value(champion, metric), metric_value(challenger, metric)
    if not gain(metric) > 0:
        return no(f"{metric} {chall_v:.4f} does not beat the champion's {champ_v:.4f} ({direction} is better)")
    notes, falls = [], []
    for g in guarded:
        if g == metric:
            continue
        if metric_value(champion, g) is None:
            notes.append(f"{g} not checked (champion has none)")
            continue
        if metric_value(challenger, g) is None:
            return no(f"challenger has no {g} (guarded)")
        if -gain(g) > tolerance + 1e-12:  # 1e-12: 0.80 - 0.79 is 0.010000000000000009
            falls.append(f"{g} {metric_value(challenger, g):.4f} vs {metric_value(champion, g):.4f} "
                         f"({'lower' if lower_is_better(g) else 'higher'} is better, tolerance {tolerance})")
    if falls:
        return no(f"{metric} improved by {abs(deltas[metric]):.4f} but guarded metrics fell: " + "; ".join(falls))
    reason = f"{metric} {chall_v:.4f} beats the champion's {champ_v:.4f}"
    if guarded:
        reason += f"; guarded metrics within {tolerance}"
    if notes:
        reason += "; " + "; ".join(notes)
    return {"promote": True, "reason": reason, "deltas": deltas}
