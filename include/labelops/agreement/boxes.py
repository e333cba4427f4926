"""Agreement on bounding boxes between annotators, by IoU matching (pure Python + scipy; no Airflow, no I/O).

A box is (x, y, width, height, label) with (x, y) its top-left corner, in any one unit per item (Label Studio's
rectangles use percent of the image width and height): a tuple, or a mapping with ``x``, ``y``, ``width``,
``height`` and ``label`` or Label Studio's ``rectanglelabels`` (a list with one label), i.e. the ``value`` of a
Label Studio rectangle result. Rotated rectangles (``rotation`` other than 0) are refused: the IoU below is for
axis-aligned boxes.

IoU (intersection over union) of two boxes is the area of their intersection over the area of their union; two
boxes of zero area have IoU 1 when they are identical, else 0.

Between two annotators' boxes on one item, boxes are matched **one to one**, only to a box of the **same label**,
and only when their IoU reaches the threshold (0.5 by default, as in PASCAL VOC; 0.75 is the strict COCO one).
Among the matchings the one with the most matches is taken and, among those, the one with the largest total IoU
(an assignment problem, solved with scipy's ``linear_sum_assignment`` on weights ``K + IoU`` with K larger than
any total IoU, so one more match always outweighs better overlaps).

With M matches and n_a, n_b boxes, agreement is F1 = 2M / (n_a + n_b) (precision of b against a M / n_b, recall
M / n_a), micro-averaged over items, annotator pairs and labels like span agreement (`labelops.agreement.spans`,
whose reasons apply: there are no negatives for kappa), plus the mean IoU of the matched pairs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from labelops.agreement.spans import pairwise_micro

BoxT = tuple[float, float, float, float, str]
THRESHOLDS = (0.5, 0.75)


def as_box(b: Any) -> BoxT:
    """(x, y, width, height, label) of a tuple / mapping box; ValueError if it is not one."""
    if isinstance(b, Mapping):
        if b.get("rotation") not in (None, 0, 0.0):
            raise ValueError(f"rotated boxes are not supported (rotation {b.get('rotation')!r}): {b!r}")
        label = b.get("label")
        if label is None:
            labels = b.get("rectanglelabels")
            if not isinstance(labels, list) or len(labels) != 1:
                raise ValueError(f"a box needs one label (label, or rectanglelabels with one entry): {b!r}")
            label = labels[0]
        nums = (b.get("x"), b.get("y"), b.get("width"), b.get("height"))
    elif isinstance(b, (tuple, list)) and len(b) == 5:
        nums, label = tuple(b[:4]), b[4]
    else:
        raise ValueError(f"a box is (x, y, width, height, label) or a mapping with those keys: {b!r}")
    for v in nums:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"box coordinates must be finite numbers: {b!r}")
    x, y, w, h = (float(v) for v in nums)
    if w < 0 or h < 0:
        raise ValueError(f"box width and height must not be negative: {b!r}")
    if label is None:
        raise ValueError(f"box has no label: {b!r}")
    return x, y, w, h, str(label)


def iou(a: Any, b: Any) -> float:
    """Intersection over union of two boxes (labels ignored)."""
    ax, ay, aw, ah, _ = as_box(a)
    bx, by, bw, bh, _ = as_box(b)
    return _iou(ax, ay, aw, ah, bx, by, bw, bh)


def _iou(ax, ay, aw, ah, bx, by, bw, bh) -> float:
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = aw * ah + bw * bh - inter
    if union <= 0:  # both boxes have zero area
        return 1.0 if (ax, ay, aw, ah) == (bx, by, bw, bh) else 0.0
    return inter / union


def match_boxes(a: Iterable[Any], b: Iterable[Any], threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """The matched pairs (index in a, index in b, IoU): one to one, same label, IoU >= threshold; the most
    matches, then the largest total IoU."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    from scipy.optimize import linear_sum_assignment

    la, lb = [as_box(x) for x in a], [as_box(x) for x in b]
    by_label: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i, box in enumerate(la):
        by_label[box[4]][0].append(i)
    for j, box in enumerate(lb):
        by_label[box[4]][1].append(j)
    out = []
    for ia, ib in by_label.values():
        if not ia or not ib:
            continue
        m = np.array([[_iou(*la[i][:4], *lb[j][:4]) for j in ib] for i in ia])
        ok = m >= threshold - 1e-12
        if not ok.any():
            continue
        big = min(len(ia), len(ib)) + 1.0  # more than any total IoU
        rows, cols = linear_sum_assignment(np.where(ok, big + m, 0.0), maximize=True)
        out += [(ia[r], ib[c], float(m[r, c])) for r, c in zip(rows, cols) if ok[r, c]]
    return sorted(out)


def match_counts(a: Iterable[Any], b: Iterable[Any], threshold: float = 0.5) -> dict[str, tuple[int, int, int, float]]:
    """Per label: (matches, n_a, n_b, sum of the matches' IoU) between two box sets."""
    la, lb = [as_box(x) for x in a], [as_box(x) for x in b]
    out: dict[str, list] = {}
    for box in la:
        out.setdefault(box[4], [0, 0, 0, 0.0])[1] += 1
    for box in lb:
        out.setdefault(box[4], [0, 0, 0, 0.0])[2] += 1
    for i, _j, v in match_boxes(la, lb, threshold):
        acc = out[la[i][4]]
        acc[0] += 1
        acc[3] += v
    return {lab: tuple(v) for lab, v in out.items()}


def _score(m: int = 0, na: int = 0, nb: int = 0, iou_sum: float = 0.0) -> dict[str, Any]:
    return {"f1": (2.0 * m / (na + nb)) if na + nb else None,
            "precision": (m / nb) if nb else None, "recall": (m / na) if na else None,
            "matched": m, "n_boxes_a": na, "n_boxes_b": nb, "mean_iou": (iou_sum / m) if m else None}


def box_f1(a: Iterable[Any], b: Iterable[Any], threshold: float = 0.5, label: str | None = None) -> dict[str, Any]:
    """F1 (precision of b against a, recall, counts, mean IoU of the matches) between two box sets of one item;
    ``label`` restricts to one label. F1 is None when neither side has a box."""
    per = match_counts(a, b, threshold)
    if label is not None:
        per = {k: v for k, v in per.items() if k == label}
    return _score(*(sum(v[k] for v in per.values()) for k in range(4)))


def box_agreement(annotations: Mapping[Hashable, Mapping[Hashable, Iterable[Any]]],
                  thresholds: Iterable[float] = THRESHOLDS) -> dict[str, Any]:
    """Box agreement over items and annotator pairs. ``annotations``: item id -> annotator id -> that annotator's
    boxes on the item (an empty list means "annotated, nothing to box"; an absent annotator did not annotate it).

    Returns, for each IoU threshold (keys ``"iou>=0.5"`` ...), the micro F1 and mean IoU over all items and pairs
    (``overall``), per label (``per_type``) and per annotator pair (``per_pair``; b against a)."""
    counters = {}
    for t in thresholds:
        if not 0.0 < float(t) <= 1.0:
            raise ValueError(f"thresholds must be in (0, 1], got {t!r}")
        counters[f"iou>={float(t):g}"] = lambda a, b, t=float(t): match_counts(a, b, t)
    return pairwise_micro(annotations, as_box, counters, _score)
