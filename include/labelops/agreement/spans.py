"""Agreement on entity spans between annotators, as F1 (pure Python; no Airflow, no I/O).

A span is (start, end, label) with character offsets, end exclusive: a tuple, a mapping with those keys, or an
object with those attributes (``labelops.dispatch.tasks.Span`` works as is).

Between two annotators' span sets on one item, spans are matched **one to one** (a span is matched at most once)
and only to a span of the **same label**:

* ``exact``: same start, end and label (duplicate spans count as often as both sides have them);
* ``overlap``: same label and the character ranges intersect (``a.start < b.end and b.start < a.end``; two
  identical empty spans also match). The number of matches is a maximum bipartite matching, so one long span
  overlapping two short ones counts once.

With M matches, n_a and n_b spans, the agreement is F1 = 2M / (n_a + n_b), the precision of b against a is M / n_b
and the recall M / n_a. F1 is symmetric in a and b and is the positive specific agreement of the two annotators on
spans; it is the usual measure where kappa is ill-defined for lack of negatives (Hripcsak & Rothschild 2005,
"Agreement, the F-measure, and reliability in information retrieval", JAMIA 12:296-298).

Aggregation is *micro*: M, n_a, n_b are summed over items (and annotator pairs, and per entity type), then
F1 = 2 sum M / (sum n_a + sum n_b). An item where both annotators marked no span adds nothing to the sums (it is
counted in ``n_item_pairs_both_empty``: agreement on "no entity" is not an F1 event).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from itertools import combinations
from typing import Any

MODES = ("exact", "overlap")
SpanT = tuple[int, int, str]


def as_span(s: Any) -> SpanT:
    """(start, end, label) of a tuple / mapping / object span; ValueError if it is not one."""
    if isinstance(s, Mapping):
        start, end, label = s.get("start"), s.get("end"), s.get("label")
    elif isinstance(s, (tuple, list)):
        if len(s) < 3:
            raise ValueError(f"a span needs (start, end, label): {s!r}")
        start, end, label = s[0], s[1], s[2]
    else:
        start, end, label = getattr(s, "start", None), getattr(s, "end", None), getattr(s, "label", None)
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool) or isinstance(end, bool):
        raise ValueError(f"span offsets must be integers: {s!r}")
    if end < start:
        raise ValueError(f"span ends before it starts: {s!r}")
    if label is None:
        raise ValueError(f"span has no label: {s!r}")
    return start, end, str(label)


def _by_label(spans: Iterable[SpanT]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for s, e, lab in spans:
        out[lab].append((s, e))
    return out


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return (a[0] < b[1] and b[0] < a[1]) or a == b


def _max_matching(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """Size of a maximum one-to-one matching of overlapping ranges (Kuhn's augmenting paths; sets are small)."""
    adj = [[j for j, y in enumerate(b) if _overlaps(x, y)] for x in a]
    match_b = [-1] * len(b)

    def augment(i: int, seen: list[bool]) -> bool:
        for j in adj[i]:
            if not seen[j]:
                seen[j] = True
                if match_b[j] < 0 or augment(match_b[j], seen):
                    match_b[j] = i
                    return True
        return False

    return sum(augment(i, [False] * len(b)) for i in range(len(a)) if adj[i])


def match_counts(a: Iterable[Any], b: Iterable[Any], mode: str = "exact") -> dict[str, tuple[int, int, int]]:
    """Per label: (matches, n_a, n_b) between two span sets."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    la, lb = _by_label(map(as_span, a)), _by_label(map(as_span, b))
    out = {}
    for lab in set(la) | set(lb):
        xa, xb = la.get(lab, []), lb.get(lab, [])
        if mode == "exact":
            m = sum((Counter(xa) & Counter(xb)).values())
        else:
            m = _max_matching(xa, xb)
        out[lab] = (m, len(xa), len(xb))
    return out


def _score(m: int = 0, na: int = 0, nb: int = 0) -> dict[str, Any]:
    return {"f1": (2.0 * m / (na + nb)) if na + nb else None,
            "precision": (m / nb) if nb else None, "recall": (m / na) if na else None,
            "matched": m, "n_spans_a": na, "n_spans_b": nb}


def span_f1(a: Iterable[Any], b: Iterable[Any], mode: str = "exact", label: str | None = None) -> dict[str, Any]:
    """F1 (and precision of b against a, recall, counts) between two span sets of one item; ``label`` restricts to
    one entity type. F1 is None when neither side has a span."""
    per = match_counts(a, b, mode)
    if label is not None:
        per = {k: v for k, v in per.items() if k == label}
    m = sum(v[0] for v in per.values())
    return _score(m, sum(v[1] for v in per.values()), sum(v[2] for v in per.values()))


def pairwise_micro(annotations: Mapping[Hashable, Mapping[Hashable, Iterable[Any]]], parse: Callable[[Any], Any],
                   counters: Mapping[str, Callable[[list, list], dict[str, tuple]]],
                   score: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Micro-averaged pairwise agreement over items and annotator pairs, for any kind of marks (spans, boxes).

    ``annotations``: item id -> annotator id -> that annotator's marks on the item (an empty list means "annotated,
    nothing marked"; an absent annotator did not annotate it); ``parse`` turns one mark into its canonical form;
    ``counters`` maps each mode to a function (marks a, marks b) -> {label: tuple of counts} whose tuples are summed
    over items and pairs; ``score(*sums)`` makes the figures (``score()`` those of no marks at all). Returns, per
    mode, the score over everything (``overall``), per label (``per_type``) and per annotator pair (``per_pair``;
    b against a)."""
    sums: dict[str, dict[tuple, dict[str, list]]] = {mode: defaultdict(dict) for mode in counters}
    pair_items: Counter = Counter()
    n_items = n_single = both_empty = 0
    for _item, by_ann in annotations.items():
        anns = sorted(by_ann, key=str)
        n_items += 1
        if len(anns) < 2:
            n_single += 1
            continue
        marks = {a: [parse(s) for s in by_ann[a]] for a in anns}
        for a, b in combinations(anns, 2):
            pair_items[(a, b)] += 1
            if not marks[a] and not marks[b]:
                both_empty += 1
                continue
            for mode, count in counters.items():
                for lab, counts in count(marks[a], marks[b]).items():
                    acc = sums[mode][(a, b)].setdefault(lab, [0] * len(counts))
                    for k, v in enumerate(counts):
                        acc[k] += v
    out: dict[str, Any] = {"n_items": n_items, "n_items_single_annotator": n_single,
                           "n_item_pairs": sum(pair_items.values()), "n_item_pairs_both_empty": both_empty}
    for mode in counters:
        total: list = []
        per_type: dict[str, list] = {}
        per_pair = []
        for (a, b), n in sorted(pair_items.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
            pt: list = []
            for lab, acc in sums[mode].get((a, b), {}).items():
                for target in (pt, per_type.setdefault(lab, []), total):
                    target.extend([0] * (len(acc) - len(target)))
                    for k, v in enumerate(acc):
                        target[k] += v
            per_pair.append({"annotator_a": a, "annotator_b": b, "n_items": n, **score(*pt)})
        out[mode] = {"overall": score(*total),
                     "per_type": {lab: score(*v) for lab, v in sorted(per_type.items())},
                     "per_pair": per_pair}
    return out


def span_agreement(annotations: Mapping[Hashable, Mapping[Hashable, Iterable[Any]]],
                   modes: Iterable[str] = MODES) -> dict[str, Any]:
    """Span agreement over items and annotator pairs. ``annotations``: item id -> annotator id -> that annotator's
    spans on the item (an empty list means "annotated, no entity"; an absent annotator did not annotate it).

    Returns, for each mode, the micro F1 over all items and pairs (``overall``), per entity type (``per_type``)
    and per annotator pair (``per_pair``, where precision / recall are of annotator_b against annotator_a)."""
    modes = list(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
    counters = {mode: (lambda a, b, mode=mode: match_counts(a, b, mode)) for mode in modes}
    return pairwise_micro(annotations, as_span, counters, _score)
