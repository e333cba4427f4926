"""Consolidation of the export stage: one final answer per item from the annotation rows, the seeded split, the
diff against the previous version, CoNLL, and the dataset files. Pure Python (pyarrow for Parquet); no Airflow.

Input rows are the agreement stage's annotation rows (``labelops.agreement.pull.COLUMNS`` + ``text``): one per
annotation, ``spans`` the JSON text of ``[{start, end, label, text}]``. Adjudication answers are rows whose
``task_key`` holds ``ADJUDICATION_MARK`` (an expert's answer for that record id).

Rules of ``consolidate``, per record id (the item id):

1. Only rows not cancelled count; each annotator's **latest** answer to the record (by ``updated_at``, then
   ``annotation_id``) replaces their earlier ones, whatever task it came through (a gold record is in many batches
   under different task keys, but has one record id). Of the adjudication answers, the latest one counts.
   In an intent project (``entity=False``) an answer without a label is no answer (it is counted, not voted).
2. **gold** (the record id is in ``gold``): exported once with its known answer, never its annotators' answers;
   ``agreement`` 1.0. A gold item with no label in an intent project is held back ``no_label``.
3. **adjudicated**: the latest adjudication answer wins (label and spans), even against a unanimous vote;
   ``agreement`` 1.0.
4. Otherwise the **vote** of the annotators' answers, each with weight ``weights[annotator]`` (when ``weights``
   is given; an annotator missing from it gets the median weight) or 1:
   * the label: the label with the largest (weighted) vote wins; its ``agreement`` is its share of the total
     weight. A tie for first place is held back ``tie``; a winning share below ``min_share`` is held back
     ``low_agreement`` (neither is guessed). In an entity project the label vote is over the answers that have a
     label; when none has one (an entity-only project) the label is None.
   * entity spans (entity projects): a span (start, end, label) is kept when the annotators who marked it exactly
     hold at least half of the item's total weight (every answer counts in the total, also one with no span).
     Spans are flat: kept spans that overlap (share a character) compete; the better-supported one wins, and
     when overlapping spans have equal support the item is held back ``span_conflict`` (not guessed).
     For an entity-only item the ``agreement`` is the (weighted) share of the answers whose span set equals the
     consolidated one (reported; it does not hold the item back).
   * ``decided_by``: ``single`` (one answer), ``unanimous`` (all answers identical: label, and spans in an entity
     project), else ``weighted_majority`` (weights given) or ``majority``.
5. Other reasons to hold back: ``skipped`` (every annotation of the item was cancelled and it is not gold),
   ``no_label`` (intent project: no answer with a label), ``no_text`` (no row carries the item's text; the
   decided answer is kept in the held-back row).

An item (``dataset.jsonl`` line, ``dataset.parquet`` row)::

    {"item_id": str, "text": str, "label": str | None,
     "entities": [{"start": int, "end": int, "label": str, "text": str | None}],   # sorted, end exclusive
     "source_key": str | None, "decided_by": "gold" | "adjudicated" | "single" | "unanimous" | "majority"
                                             | "weighted_majority",
     "n_annotations": int,          # current answers to the item: latest per annotator + the adjudication, if any
     "annotators": [str],           # their annotators, sorted (the adjudicating expert included)
     "agreement": float,            # share of the winning label (see above), 1.0 for gold / adjudicated
     "split": "train" | "validation" | "test"}

A held-back item (``held_back.jsonl``)::

    {"item_id", "reason": "tie" | "low_agreement" | "span_conflict" | "no_label" | "skipped" | "no_text",
     "text", "source_key", "n_annotations", "annotators", "agreement": float | None,
     "votes": [[label, weight], ...],   # best first (weights rounded to 6 digits)
     "answers": [{"annotator", "label", "entities"}],   # the competing answers, by annotator
     "decided": {"label", "entities", "decided_by"} | None,   # no_text only: what would have been exported
     "split"}
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from labelops.agreement.pipeline import ADJUDICATION_MARK, is_adjudication
from labelops.agreement.pull import COLUMNS, utc
from labelops.agreement.spans import as_span
from labelops.storage import split_s3_uri

__all__ = ["ADJUDICATION_MARK", "ITEM_KEYS", "IMAGE_ITEM_KEYS", "RAW_COLUMNS", "consolidate", "reliability_weights",
           "dawid_skene", "split_of", "diff", "to_conll", "image_items", "to_classification_csv", "write_files"]

ITEM_KEYS = ("item_id", "text", "label", "entities", "source_key", "decided_by", "n_annotations", "annotators",
             "agreement", "split")
# image projects: an item names its image by s3:// URI, key and content hash instead of carrying a text
IMAGE_ITEM_KEYS = ("item_id", "image", "image_key", "sha256", "label", "source_key", "decided_by", "n_annotations",
                   "annotators", "agreement", "split")
RAW_COLUMNS = (*COLUMNS, "text")
SPLITS = ("train", "validation", "test")
EXAMPLES = 20
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TOL = 1e-9

SpanT = tuple[int, int, str]


class _Answer(NamedTuple):
    annotator: str
    label: str | None
    spans: frozenset[SpanT]
    span_text: tuple[tuple[SpanT, str | None], ...]


_NO_SPANS: frozenset[SpanT] = frozenset()


def _spans_of(raw: Any) -> list[dict]:
    if raw in (None, ""):
        return []
    return json.loads(raw) if isinstance(raw, (str, bytes)) else list(raw)


def _answer(row: Mapping, entity: bool = True) -> _Answer:
    spans = _spans_of(row.get("spans")) if entity else []
    if not spans:
        return _Answer(str(row.get("annotator")), row.get("label"), _NO_SPANS, ())
    texts = {}
    for s in spans:
        texts.setdefault(as_span(s), s.get("text") if isinstance(s, Mapping) else None)
    return _Answer(str(row.get("annotator")), row.get("label"), frozenset(texts), tuple(sorted(texts.items())))


def answer_order(row: Mapping) -> tuple:
    """The order of an annotator's answers: the latest by updated_at (then annotation id) is their answer."""
    return (utc(row.get("updated_at")) or _EPOCH, str(row.get("annotation_id") or ""))


def _overlap(a: SpanT, b: SpanT) -> bool:
    return (a[0] < b[1] and b[0] < a[1]) or (a[0] == b[0] and a[1] == b[1])


def _entities(spans: Iterable[SpanT], text: str | None, texts: Mapping[SpanT, str | None]) -> list[dict]:
    out = []
    for s, e, lab in sorted(set(spans)):
        piece = text[s:e] if text is not None and 0 <= s <= e <= len(text) else texts.get((s, e, lab))
        out.append({"start": s, "end": e, "label": lab, "text": piece})
    return out


def _vote(scores: Mapping[Any, float]) -> tuple[Any, float, bool, list]:
    """(winner, its share of the total weight, tie for first?, [(label, weight)] best first)."""
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))
    total = sum(scores.values())
    tie = len(ranked) > 1 and ranked[0][1] - ranked[1][1] <= _TOL * max(1.0, total)
    return ranked[0][0], ranked[0][1] / total, tie, ranked


def _consolidate_spans(answers: Sequence[_Answer], weight) -> tuple[set[SpanT], bool]:
    """The kept spans (support >= half of the total weight; flat: overlaps resolved by support) and whether an
    equal-support overlap was left unresolved."""
    total = sum(weight(a) for a in answers)
    support: dict[SpanT, float] = defaultdict(float)
    for a in answers:
        for s in a.spans:
            support[s] += weight(a)
    cands = {s: v for s, v in support.items() if v >= total / 2 - _TOL * max(1.0, total)}
    kept: set[SpanT] = set()
    conflict = False
    for level in sorted({round(v, 9) for v in cands.values()}, reverse=True):
        group = [s for s, v in cands.items() if round(v, 9) == level and not any(_overlap(s, k) for k in kept)]
        clash = {s for s in group for t in group if s != t and _overlap(s, t)}
        conflict = conflict or bool(clash)
        kept.update(s for s in group if s not in clash)
    return kept, conflict


def consolidate(rows: Iterable[Mapping], *, gold: Mapping[str, Mapping], entity: bool,
                weights: Mapping[str, float] | None = None, min_share: float = 0.5,
                source_keys: Mapping[str, str] | None = None, seed: int = 0,
                ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[list[dict], list[dict]]:
    """(items, held_back), each sorted by item id: one final answer per record id (the rules are in the module
    doc). ``gold``: record id -> {"label", "spans"} (``agreement.pipeline.gold_answers``); ``source_keys``:
    record id -> the raw object the record came from; ``seed`` / ``ratios``: the split (``split_of``)."""
    if weights is not None and any(not (w > 0) for w in weights.values()):
        raise ValueError("weights must be positive")
    default_w = statistics.median(weights.values()) if weights else 1.0
    weight = (lambda a: weights.get(a.annotator, default_w)) if weights is not None else (lambda a: 1.0)
    source_keys = source_keys or {}
    _check_ratios(ratios)

    latest: dict[tuple[str, str], tuple] = {}          # (record, annotator) -> (order, row)
    adjudicated: dict[str, tuple] = {}                 # record -> (order, row)
    text_row: dict[str, tuple] = {}                    # record -> (order, the latest row with a text)
    records: set[str] = set()
    for row in rows:
        rid = row.get("record_id")
        if not rid:
            continue
        records.add(rid)
        entry = (answer_order(row), row)
        if row.get("text") is not None and (rid not in text_row or entry[0] >= text_row[rid][0]):
            text_row[rid] = entry
        if row.get("cancelled"):
            continue
        if is_adjudication(row):
            if rid not in adjudicated or entry[0] >= adjudicated[rid][0]:
                adjudicated[rid] = entry
        else:
            key = (rid, str(row.get("annotator")))
            if key not in latest or entry[0] >= latest[key][0]:
                latest[key] = entry
    by_record: dict[str, list[_Answer]] = defaultdict(list)
    for (rid, _), (_, row) in sorted(latest.items(), key=lambda kv: kv[0]):
        by_record[rid].append(_answer(row, entity))

    items, held = [], []
    for rid in sorted(records):
        text = text_row[rid][1]["text"] if rid in text_row else None
        answers = by_record.get(rid, [])
        adj = _answer(adjudicated[rid][1], entity) if rid in adjudicated else None
        current = answers + ([adj] if adj is not None else [])
        base = {"source_key": source_keys.get(rid), "n_annotations": len(current),
                "annotators": sorted({a.annotator for a in current})}
        split = _split(rid, seed, ratios)

        def hold(reason: str, agreement: float | None = None, votes: list | None = None,
                 decided: dict | None = None) -> None:
            held.append({"item_id": rid, "reason": reason, "text": text, "source_key": base["source_key"],
                         "n_annotations": base["n_annotations"], "annotators": base["annotators"],
                         "agreement": None if agreement is None else round(agreement, 6),
                         "votes": [[lab, round(w, 6)] for lab, w in (votes or [])],
                         "answers": [{"annotator": a.annotator, "label": a.label,
                                      "entities": _entities(a.spans, text, dict(a.span_text)) if entity else []}
                                     for a in current],
                         "decided": decided, "split": split})

        def emit(label: str | None, entities: list[dict], decided_by: str, agreement: float) -> None:
            if text is None:
                hold("no_text", decided={"label": label, "entities": entities, "decided_by": decided_by})
                return
            items.append({"item_id": rid, "text": text, "label": label, "entities": entities,
                          "source_key": base["source_key"], "decided_by": decided_by,
                          "n_annotations": base["n_annotations"], "annotators": base["annotators"],
                          "agreement": round(agreement, 6), "split": split})

        if rid in gold:
            g = gold[rid] or {}
            gspans = _spans_of(g.get("spans")) if entity else []
            gtexts = {as_span(s): s.get("text") for s in gspans if isinstance(s, Mapping)}
            if g.get("label") is None and not entity:
                hold("no_label")
            else:
                emit(g.get("label"), _entities(map(as_span, gspans), text, gtexts), "gold", 1.0)
            continue
        if adj is not None and (entity or adj.label is not None):
            emit(adj.label, _entities(adj.spans, text, dict(adj.span_text)) if entity else [], "adjudicated", 1.0)
            continue
        voters = [a for a in answers if entity or a.label is not None]
        if not voters:
            hold("no_label" if current else "skipped")
            continue
        labelled = [a for a in voters if a.label is not None]
        label, share, votes = None, None, []
        if labelled:
            scores: dict[str, float] = defaultdict(float)
            for a in labelled:
                scores[a.label] += weight(a)
            label, share, tie, votes = _vote(scores)
            if tie:
                hold("tie", share, votes)
                continue
            if share < min_share - _TOL:
                hold("low_agreement", share, votes)
                continue
        entities: list[dict] = []
        if entity:
            kept, conflict = _consolidate_spans(voters, weight)
            if conflict:
                hold("span_conflict", share, votes)
                continue
            texts: dict[SpanT, str | None] = {}
            for a in voters:
                for s, t in a.span_text:
                    texts.setdefault(s, t)
            entities = _entities(kept, text, texts)
            if share is None:
                share = sum(weight(a) for a in voters if a.spans == kept) / sum(weight(a) for a in voters)
        same = len({(a.label, a.spans if entity else None) for a in voters}) == 1
        how = ("single" if len(voters) == 1 else "unanimous" if same
               else "weighted_majority" if weights is not None else "majority")
        emit(label, entities, how, share)
    return items, held


# -- annotator reliability ------------------------------------------------------------------------------------------


def reliability_weights(per_annotator_gold_accuracy: Mapping[str, float | None], n_labels: int, *,
                        eps: float = 0.01, max_accuracy: float = 0.99) -> dict[str, float]:
    """Vote weights from each annotator's gold accuracy, for ``consolidate(weights=...)``.

    Model: the symmetric ("one-coin") confusion model, where annotator a gives the true label with probability
    p_a and otherwise one of the other K - 1 labels uniformly. Under it, with a uniform prior, the posterior
    log-odds of a label is a sum over the annotators who chose it of

        w_a = log( (K - 1) * p_a / (1 - p_a) )

    so the most probable label is the weighted majority with weights w_a (Nitzan & Paroush 1982 for K = 2; Li &
    Yu 2014, "Error rate bounds and iterative weighted majority voting for crowdsourcing", for K labels).

    p_a is clipped to [1/K + eps, max_accuracy]: an annotator at or below chance gets a small positive weight
    (not a negative one, which would vote against their own answer) and a perfect record on a few gold items
    does not become an infinite weight. The weights are then divided by the median of the weights of the
    annotators with a gold accuracy, so the median annotator weighs 1.0; annotators without one (None) get 1.0,
    the median. Nobody with a gold accuracy: everyone 1.0. The accuracy's sample size is the caller's concern
    (pass None below a minimum number of gold items).
    """
    k = int(n_labels)
    if k < 2:
        raise ValueError("n_labels must be at least 2")
    lo, hi = 1.0 / k + eps, max_accuracy
    if not lo < hi:
        raise ValueError(f"no accuracy range left: [1/{k} + {eps}, {max_accuracy}]")
    raw = {}
    for who, acc in per_annotator_gold_accuracy.items():
        if acc is not None and not (isinstance(acc, float) and math.isnan(acc)):
            p = min(max(float(acc), lo), hi)
            raw[who] = math.log((k - 1) * p / (1 - p))
    median = statistics.median(raw.values()) if raw else 1.0
    return {who: (raw[who] / median if who in raw else 1.0) for who in sorted(per_annotator_gold_accuracy)}


def dawid_skene(rows: Iterable[Mapping], labels: Sequence[str] | None = None, *, iterations: int = 100,
                tol: float = 1e-6, smoothing: float = 0.01) -> dict:
    """Dawid & Skene (1979) EM over the label answers (latest per annotator and record, not cancelled, not an
    adjudication, with a label): a full confusion matrix per annotator and the class priors, started from the
    vote shares. Returns {"labels", "priors": {label: p}, "accuracy": {annotator: sum_k prior_k * pi_a[k][k]},
    "confusion": {annotator: {true: {given: p}}}, "posterior": {record: {label: p}}, "iterations", "converged"}.
    ``accuracy`` can feed ``reliability_weights``. Memory is O(ratings x labels)."""
    import numpy as np

    latest: dict[tuple[str, str], Mapping] = {}
    for row in rows:
        if row.get("cancelled") or not row.get("record_id") or is_adjudication(row) or row.get("label") is None:
            continue
        key = (row["record_id"], str(row.get("annotator")))
        if key not in latest or answer_order(row) >= answer_order(latest[key]):
            latest[key] = row
    labels = sorted({r["label"] for r in latest.values()}) if labels is None else list(labels)
    items = sorted({k[0] for k in latest})
    annotators = sorted({k[1] for k in latest})
    if not latest:
        return {"labels": labels, "priors": {}, "accuracy": {}, "confusion": {}, "posterior": {}, "iterations": 0,
                "converged": True}
    li, ii, ai = {x: n for n, x in enumerate(labels)}, {x: n for n, x in enumerate(items)}, \
        {x: n for n, x in enumerate(annotators)}
    triples = sorted(latest)
    unknown = {latest[t]["label"] for t in triples} - set(li)
    if unknown:
        raise ValueError(f"labels not in the label set: {sorted(unknown)[:5]}")
    it = np.array([ii[t[0]] for t in triples])
    an = np.array([ai[t[1]] for t in triples])
    lab = np.array([li[latest[t]["label"]] for t in triples])
    n_i, n_a, k = len(items), len(annotators), len(labels)
    post = np.zeros((n_i, k))
    np.add.at(post, (it, lab), 1.0)
    post /= post.sum(axis=1, keepdims=True)
    converged, n = False, 0
    for n in range(1, iterations + 1):
        priors = (post.sum(axis=0) + smoothing) / (n_i + k * smoothing)
        counts = np.full((n_a, k, k), smoothing)
        np.add.at(counts, (an[:, None], np.arange(k)[None, :], lab[:, None]), post[it])
        conf = counts / counts.sum(axis=2, keepdims=True)
        logp = np.tile(np.log(priors), (n_i, 1))
        np.add.at(logp, it, np.log(conf[an, :, lab]))
        logp -= logp.max(axis=1, keepdims=True)
        new = np.exp(logp)
        new /= new.sum(axis=1, keepdims=True)
        delta = float(np.abs(new - post).max())
        post = new
        if delta < tol:
            converged = True
            break
    return {
        "labels": labels, "priors": {l: float(p) for l, p in zip(labels, priors)},
        "accuracy": {a: float((priors * np.diag(conf[x])).sum()) for x, a in enumerate(annotators)},
        "confusion": {a: {t: {g: float(conf[x, i, j]) for j, g in enumerate(labels)} for i, t in enumerate(labels)}
                      for x, a in enumerate(annotators)},
        "posterior": {r: {l: float(post[x, j]) for j, l in enumerate(labels)} for x, r in enumerate(items)},
        "iterations": n, "converged": converged,
    }


# -- split, diff ----------------------------------------------------------------------------------------------------


def split_of(item_id: str, seed: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """"train" / "validation" / "test" from sha256("<seed>:<item id>") read as a number u in [0, 1): train when
    u < ratios[0], validation when u < ratios[0] + ratios[1], else test. It depends on the item id and the seed
    only, so an item keeps its split across versions whatever else is in the dataset."""
    _check_ratios(ratios)
    return _split(item_id, seed, ratios)


def _check_ratios(ratios: Sequence[float]) -> None:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be three non-negative numbers summing to 1: {tuple(ratios)}")


def _split(item_id: str, seed: int, ratios: Sequence[float]) -> str:
    digest = hashlib.sha256(f"{int(seed)}:{item_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return "train" if u < ratios[0] else "validation" if u < ratios[0] + ratios[1] else "test"


def diff(previous: Mapping[str, str | None], items: Iterable[Mapping]) -> dict:
    """What changed since the previous version (item id -> label of its items): {"previous_items", "items",
    "added": {"count", "examples": [item id]}, "removed": {...}, "label_changed": {"count", "examples":
    [{"item_id", "before", "after"}]}, "unchanged"}; examples are the first 20 by item id."""
    current = {it["item_id"]: it.get("label") for it in items}
    added = sorted(current.keys() - previous.keys())
    removed = sorted(previous.keys() - current.keys())
    changed = sorted(k for k in current.keys() & previous.keys() if current[k] != previous[k])
    return {
        "previous_items": len(previous), "items": len(current),
        "added": {"count": len(added), "examples": added[:EXAMPLES]},
        "removed": {"count": len(removed), "examples": removed[:EXAMPLES]},
        "label_changed": {"count": len(changed), "examples": [
            {"item_id": k, "before": previous[k], "after": current[k]} for k in changed[:EXAMPLES]]},
        "unchanged": len(current.keys() & previous.keys()) - len(changed),
    }


# -- CoNLL ----------------------------------------------------------------------------------------------------------


def to_conll(items: Iterable[Mapping], *, docstart: bool = False) -> str:
    """CoNLL (IOB2) of the items' entities: one ``token TAG`` line per token, a blank line after each item (a
    "sentence"), in the items' order; an item whose text has no token is left out. ``docstart`` puts a
    ``-DOCSTART- O`` line (and a blank one) first.

    Tokens are the whitespace-separated runs of the text, with their character offsets. A span tags every token
    it overlaps (token.start < span.end and span.start < token.end): B-<label> on the first, I-<label> on the
    others, so a span that does not align to token boundaries (``Paris`` in ``Paris.``, or half a word) tags the
    whole tokens it touches. A span that would retag a token an earlier span (by start, end, label) tagged is
    left out (BIO is flat); a span touching no token (only whitespace) is left out. Whitespace in a label becomes
    ``_`` (the columns are space-separated).
    """
    lines = ["-DOCSTART- O", ""] if docstart else []
    for item in items:
        text = item.get("text") or ""
        tokens = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
        if not tokens:
            continue
        tags = ["O"] * len(tokens)
        for ent in sorted(item.get("entities") or [], key=lambda e: (e["start"], e["end"], e["label"])):
            idx = [n for n, (s, e, _) in enumerate(tokens) if s < ent["end"] and ent["start"] < e]
            if not idx or any(tags[n] != "O" for n in idx):
                continue
            name = re.sub(r"\s+", "_", str(ent["label"]))
            tags[idx[0]] = f"B-{name}"
            for n in idx[1:]:
                tags[n] = f"I-{name}"
        lines.extend(f"{tok} {tag}" for (_, _, tok), tag in zip(tokens, tags))
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")


# -- files ----------------------------------------------------------------------------------------------------------


def _item_schema():
    import pyarrow as pa

    entity = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.string()), ("text", pa.string())])
    return pa.schema([("item_id", pa.string()), ("text", pa.string()), ("label", pa.string()),
                      ("entities", pa.list_(entity)), ("source_key", pa.string()), ("decided_by", pa.string()),
                      ("n_annotations", pa.int64()), ("annotators", pa.list_(pa.string())),
                      ("agreement", pa.float64()), ("split", pa.string())])


def _image_item_schema(with_boxes: bool = False):
    import pyarrow as pa

    box = pa.struct([("x", pa.float64()), ("y", pa.float64()), ("width", pa.float64()), ("height", pa.float64()),
                     ("label", pa.string()), ("votes", pa.int64()), ("original_width", pa.int64()),
                     ("original_height", pa.int64())])
    return pa.schema([("item_id", pa.string()), ("image", pa.string()), ("image_key", pa.string()),
                      ("sha256", pa.string()), ("label", pa.string())]
                     + ([("boxes", pa.list_(box))] if with_boxes else [])
                     + [("source_key", pa.string()), ("decided_by", pa.string()), ("n_annotations", pa.int64()),
                        ("annotators", pa.list_(pa.string())), ("agreement", pa.float64()), ("split", pa.string())])


def _with_boxes(item: Mapping, boxes: Sequence[Mapping]) -> dict:
    """An image item with its consolidated boxes after its label (every box with the same keys, None if absent)."""
    keys = ("x", "y", "width", "height", "label", "votes", "original_width", "original_height")
    out: dict = {}
    for k, v in item.items():
        out[k] = v
        if k == "label":
            out["boxes"] = [{key: b.get(key) for key in keys} for b in boxes]
    return out


def image_items(items: Iterable[Mapping], images: Mapping[str, Mapping]) -> list[dict]:
    """Image projects: the consolidated items (whose ``text`` is the image's s3:// URI) as ``IMAGE_ITEM_KEYS``
    dicts. ``images``: record id -> {"image": s3:// URI, "sha256"} (``agreement.pipeline.dispatched_images``)."""
    out = []
    for it in items:
        ref = images.get(it["item_id"]) or {}
        uri = ref.get("image") or it.get("text")
        try:
            key = split_s3_uri(uri)[1]
        except ValueError:  # not an s3:// URI: no key
            key = None
        out.append({**{k: it.get(k) for k in IMAGE_ITEM_KEYS}, "image": uri, "image_key": key,
                    "sha256": ref.get("sha256")})
    return out


ML_USE = {"train": "TRAINING", "validation": "VALIDATION", "test": "TEST"}


def to_classification_csv(items: Iterable[Mapping]) -> str:
    """Image items in the common image-classification import layout of AutoML / Vertex AI (``ML_USE,URI,LABEL``
    rows, no header; ML_USE is TRAINING, VALIDATION or TEST), with the images' s3:// URIs; items without a label
    are left out."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for it in items:
        if it.get("label") is not None and it.get("image"):
            writer.writerow([ML_USE.get(it.get("split"), ""), it["image"], it["label"]])
    return out.getvalue()


def _raw_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.float64() if c == "lead_time_s" else pa.bool_() if c == "cancelled" else pa.string())
                      for c in RAW_COLUMNS])


def _parquet(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _jsonl(rows: Iterable[Mapping]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _raw_value(column: str, value: Any) -> Any:
    if value is None or column in ("lead_time_s", "cancelled"):
        return value
    return value if isinstance(value, str) else str(value)


def write_files(directory: Path, items: Sequence[Mapping], held_back: Sequence[Mapping],
                raw_rows: Iterable[Mapping], *, entity: bool, images: Mapping[str, Mapping] | None = None,
                boxes: Mapping[str, Sequence[Mapping]] | None = None, box_categories: Sequence[str] = (),
                sizes: Mapping[str, tuple[int, int]] | None = None) -> dict[str, str]:
    """Write the version's files into ``directory`` and return {file name: sha256 hex}:

    * ``dataset.jsonl``: one item per line (``ITEM_KEYS`` order, UTF-8, ensure_ascii=False), by item id;
    * ``dataset.parquet``: the same items; ``entities`` a list<struct<start int64, end int64, label, text>>,
      ``annotators`` a list<string>;
    * ``held_back.jsonl``: the held-back items, by item id;
    * ``annotations.parquet``: the raw rows (``RAW_COLUMNS``; other keys dropped; string columns written as
      text), ordered by record id, task key, annotator, updated_at, annotation id, platform, project id;
    * ``entities.conll`` (entity projects): ``to_conll`` of the items.

    Image projects (``images`` given, see ``image_items``): the items are ``IMAGE_ITEM_KEYS`` (the image by
    s3:// URI, key and content hash, no text or entities) in ``dataset.jsonl`` and ``dataset.parquet``, and
    ``classification.csv`` holds them in the AutoML / Vertex AI layout (``to_classification_csv``). Bounding-box
    projects (``boxes``: item id -> consolidated boxes, ``export.detection.consolidate_boxes``): each item also
    has ``boxes``, and ``detection.coco.json`` holds them in COCO's detection format (``detection.to_coco`` with
    ``box_categories`` and the images' pixel ``sizes``).

    The bytes depend on the input only (Parquet: zstd, no timestamp in its metadata; the writer's version string
    ``created_by`` is in the footer, so another pyarrow version writes other bytes)."""
    import pyarrow as pa

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if images is not None:
        items = sorted(image_items(items, images), key=lambda it: it["item_id"])
        if boxes is not None:
            items = [_with_boxes(it, boxes.get(it["item_id"]) or []) for it in items]
        schema = _image_item_schema(with_boxes=boxes is not None)
    else:
        items = sorted(({k: it[k] for k in ITEM_KEYS} for it in items), key=lambda it: it["item_id"])
        schema = _item_schema()
    held_back = sorted(held_back, key=lambda h: h["item_id"])
    raw = [{c: _raw_value(c, r.get(c)) for c in RAW_COLUMNS} for r in raw_rows]
    raw.sort(key=lambda r: tuple("" if r[c] is None else r[c] for c in
                                 ("record_id", "task_key", "annotator", "updated_at", "annotation_id", "platform",
                                  "project_id")))
    files = {
        "dataset.jsonl": _jsonl(items),
        "dataset.parquet": _parquet(pa.Table.from_pylist(items, schema=schema)),
        "held_back.jsonl": _jsonl(held_back),
        "annotations.parquet": _parquet(pa.Table.from_pylist(raw, schema=_raw_schema())),
    }
    if entity:
        files["entities.conll"] = to_conll(items).encode("utf-8")
    if images is not None:
        files["classification.csv"] = to_classification_csv(items).encode("utf-8")
    if images is not None and boxes is not None:
        from labelops.export.detection import to_coco

        coco = to_coco(items, box_categories, sizes, description="labelops dataset version")
        files["detection.coco.json"] = (json.dumps(coco, ensure_ascii=False, sort_keys=True, indent=1)
                                        + "\n").encode("utf-8")
    out = {}
    for name, data in files.items():
        (directory / name).write_bytes(data)
        out[name] = hashlib.sha256(data).hexdigest()
    return out
