"""The dataset card of an export version (Markdown), from a meta dict (pure Python; no Airflow, no I/O).

The meta dict (``summarize`` fills ``counts``, ``label_distribution`` and ``sources`` from the consolidated items;
the caller adds the rest)::

    {"project": str, "version": str, "created_at": str (ISO), "run_id": str,
     "description": str | None,                          # optional, one line under the title
     "counts": {"items": int, "by_split": {split: int}, "held_back": {reason: int},
                "decided_by": {how: int}, "annotations": int, "annotators": int},
     "label_distribution": {label | None: int},          # items per final label (None: no label)
     "entity_types": {entity label: int} | None,         # optional: spans per entity type (entity projects)
     "agreement": {"since": str | None, "until": str | None,          # the period of the figures
                   "nights": int | None,                               # optional: agreement runs in the period
                   "cohen_kappa_mean": float | None, "fleiss_kappa": float | None,
                   "krippendorff_alpha": float | None, "gold_accuracy": float | None} | None,
     "sources": {source_key | None: int},                # items per source key (prefixes computed: up to the
                                                         #   last "/")
     "source_prefixes": {prefix: int} | None,            # optional: items per prefix, used as given
     "model_versions": [str],                            # models that pre-annotated the items
     "changes": diff(...) output | None,                 # None: the first version
     "previous_version": str | None,                     # optional: the tag the changes are against
     "license": [str],                                   # license / attribution lines, shown as given (escaped)
     "split": {"seed": int, "ratios": [float, float, float]} | None,   # optional
     "files": {file name: sha256} | None}                # optional

Any figure may be None (shown "n/a"); missing keys count as None / empty. Also accepted (``normalize``): "tag" for
"version", "labels" for "label_distribution", "attribution" for "license", "previous_tag" for
"previous_version", agreement "krippendorff_alpha_nominal" for "krippendorff_alpha", and counts "by_decision" for
"decided_by", "held_back_by_reason" for a dict "held_back" (an int "held_back" is then the total). Every data-derived string (project,
labels, keys, model versions, license lines) is escaped: the characters \\ ` * _ [ ] < > # | are backslash-escaped
anywhere, and - + = or "1." / "1)" at the start; newlines and tabs become spaces. So a label can neither end a
table row nor open a code span, a link, raw HTML, a heading or a nested list. Strings longer than 200 characters
are cut.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

TOP_LABELS = 30
TOP_PREFIXES = 10
MAX_CHARS = 200
_PUNCT = re.compile(r"([\\`*_\[\]<>#|])")
_LEAD = re.compile(r"^(\s*)([-+=])|^(\s*\d+)([.)])")
_SPACE = re.compile(r"[\r\n\t\v\f\u0085\u2028\u2029]+")


def md(value: Any, limit: int = MAX_CHARS) -> str:
    """A data-derived string made inert in Markdown (one line, punctuation escaped, at most ``limit`` chars)."""
    s = _SPACE.sub(" ", "" if value is None else str(value))
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    s = _PUNCT.sub(r"\\\1", s)
    # "- x" or "1. x" at the start of a list item would nest a list
    return _LEAD.sub(lambda m: (f"{m.group(1)}\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\{m.group(4)}"), s)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{float(x):.{digits}f}"


def _prefix(key: str | None) -> str | None:
    if key is None:
        return None
    return key.rsplit("/", 1)[0] + "/" if "/" in key else key


def summarize(items: Iterable[Mapping], held_back: Iterable[Mapping], rows: Iterable[Mapping]) -> dict:
    """The ``counts``, ``label_distribution`` and ``sources`` of the meta dict from the consolidated items, the
    held-back items and the raw annotation rows (annotations: rows not cancelled; annotators: of those)."""
    items, held_back = list(items), list(held_back)
    live = [r for r in rows if not r.get("cancelled")]
    return {
        "counts": {"items": len(items), "by_split": dict(sorted(Counter(i["split"] for i in items).items())),
                   "held_back": dict(sorted(Counter(h["reason"] for h in held_back).items())),
                   "decided_by": dict(sorted(Counter(i["decided_by"] for i in items).items())),
                   "annotations": len(live), "annotators": len({r.get("annotator") for r in live})},
        "label_distribution": dict(Counter(i.get("label") for i in items)),
        "sources": dict(Counter(i.get("source_key") for i in items)),
    }


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'|'.join('---' for _ in header)}|",
            *(f"| {' | '.join(str(c) for c in r)} |" for r in rows), ""]


def _ranked(counts: Mapping[Any, int]) -> list[tuple[Any, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], "" if kv[0] is None else str(kv[0])))


_ALIASES = {"tag": "version", "labels": "label_distribution", "attribution": "license",
            "previous_tag": "previous_version"}


def normalize(meta: Mapping) -> dict:
    """``meta`` with the accepted alternative key names (module doc) mapped to the documented ones."""
    out = dict(meta)
    for alias, key in _ALIASES.items():
        if out.get(key) is None and alias in out:
            out[key] = out[alias]
    counts = dict(out.get("counts") or {})
    if counts.get("decided_by") is None and "by_decision" in counts:
        counts["decided_by"] = counts["by_decision"]
    if not isinstance(counts.get("held_back"), Mapping):
        counts["held_back_total"] = counts.get("held_back")
        counts["held_back"] = counts.get("held_back_by_reason") or {}
    out["counts"] = counts
    ag = dict(out.get("agreement") or {})
    if ag.get("krippendorff_alpha") is None and "krippendorff_alpha_nominal" in ag:
        ag["krippendorff_alpha"] = ag["krippendorff_alpha_nominal"]
    out["agreement"] = ag
    return out


def render_card(meta: Mapping) -> str:
    """The Markdown dataset card of ``meta`` (schema in the module doc)."""
    meta = normalize(meta)
    counts = meta["counts"]
    n_items = counts.get("items") or 0
    out = [f"# Dataset card: {md(meta.get('project'))} {md(meta.get('version'))}", "",
           f"- Project: {md(meta.get('project'))}",
           f"- Version: {md(meta.get('version'))}",
           f"- Created: {md(meta.get('created_at'))}",
           f"- Export run: {md(meta.get('run_id'))}"]
    if meta.get("description"):
        out[2:2] = [md(meta["description"], 1000), ""]
    split = meta.get("split")
    if split:
        out.append(f"- Split: seeded hash of the item id (seed {md(split.get('seed'))}, ratios "
                   f"{' / '.join(_num(r, 2) for r in split.get('ratios') or [])}); an item keeps its split across "
                   f"versions")
    out += ["", "## Counts", ""]
    out += _table(("", "count"), [
        ("items", _num(counts.get("items"))),
        *((f"split {md(k)}", _num(v)) for k, v in (counts.get("by_split") or {}).items()),
        ("held back", _num(counts["held_back_total"] if counts.get("held_back_total") is not None
                           else sum((counts.get("held_back") or {}).values()))),
        *((f"held back: {md(k)}", _num(v)) for k, v in (counts.get("held_back") or {}).items()),
        *((f"decided by {md(k)}", _num(v)) for k, v in (counts.get("decided_by") or {}).items()),
        ("annotations", _num(counts.get("annotations"))),
        ("annotators", _num(counts.get("annotators"))),
    ])

    dist = _ranked(meta.get("label_distribution") or {})
    out += ["## Label distribution", ""]
    if dist:
        rows = [("*(no label)*" if lab is None else md(lab), _num(n),
                 f"{100 * n / n_items:.1f}%" if n_items else "n/a") for lab, n in dist[:TOP_LABELS]]
        if len(dist) > TOP_LABELS:
            rest = sum(n for _, n in dist[TOP_LABELS:])
            rows.append((f"*others ({len(dist) - TOP_LABELS} labels)*", _num(rest),
                         f"{100 * rest / n_items:.1f}%" if n_items else "n/a"))
        out += _table(("label", "items", "share"), rows)
    else:
        out += ["No item.", ""]

    types = _ranked(meta.get("entity_types") or {})
    if types:
        out += ["## Entity types", ""]
        out += _table(("entity type", "spans"), [(md(t), _num(n)) for t, n in types[:TOP_LABELS]]
                      + ([(f"*others ({len(types) - TOP_LABELS} types)*", _num(sum(n for _, n in types[TOP_LABELS:])))]
                         if len(types) > TOP_LABELS else []))

    ag = meta["agreement"]
    out += ["## Agreement of the period", ""]
    period = []
    if ag.get("since") or ag.get("until"):
        period.append(f"Period: {md(ag['since']) if ag.get('since') else 'the start'} to "
                      f"{md(ag['until']) if ag.get('until') else 'now'}.")
    if ag.get("nights") is not None:
        period.append(f"Agreement runs in the period: {_num(ag['nights'])}.")
    out += [" ".join(period), ""] if period else []
    out += _table(("measure", "value"), [
        ("mean pairwise Cohen's kappa", _num(ag.get("cohen_kappa_mean"))),
        ("Fleiss' kappa", _num(ag.get("fleiss_kappa"))),
        ("Krippendorff's alpha (nominal)", _num(ag.get("krippendorff_alpha"))),
        ("gold accuracy", _num(ag.get("gold_accuracy"))),
    ])

    sources = meta.get("sources") or {}
    prefixes: Counter = Counter()
    if meta.get("source_prefixes"):
        prefixes.update(meta["source_prefixes"])
    for key, n in (() if prefixes else sources.items()):
        prefixes[_prefix(key)] += n
    n_keys = _num(sum(1 for k in sources if k is not None)) if sources else "n/a"
    out += ["## Sources", "", f"Source keys: {n_keys}.", ""]
    if prefixes:
        out += _table(("prefix", "items"), [("*(unknown)*" if p is None else f"{md(p)}", _num(n))
                                            for p, n in _ranked(prefixes)[:TOP_PREFIXES]])

    models = list(meta.get("model_versions") or [])
    out += ["## Pre-annotation models", ""]
    out += [f"- {md(m)}" for m in models] if models else ["None."]
    out.append("")

    changes = meta.get("changes")
    out += ["## Changes since the previous version", ""]
    if changes is None:
        out += ["First version.", ""]
    else:
        prev = f" ({md(meta['previous_version'])})" if meta.get("previous_version") else ""
        out += [f"Previous version{prev}: {_num(changes.get('previous_items'))} items; this version: "
                f"{_num(changes.get('items'))}.", ""]
        out += _table(("change", "items"), [
            ("added", _num((changes.get("added") or {}).get("count"))),
            ("removed", _num((changes.get("removed") or {}).get("count"))),
            ("label changed", _num((changes.get("label_changed") or {}).get("count"))),
            ("unchanged", _num(changes.get("unchanged"))),
        ])
        changed = (changes.get("label_changed") or {}).get("examples") or []
        if changed:
            out += ["Examples of changed labels:", ""]
            out += _table(("item", "before", "after"), [
                (md(c.get("item_id")), "*(none)*" if c.get("before") is None else md(c["before"]),
                 "*(none)*" if c.get("after") is None else md(c["after"])) for c in changed])
        for kind in ("added", "removed"):
            ex = (changes.get(kind) or {}).get("examples") or []
            if ex:
                out += [f"Examples {kind}: " + ", ".join(md(x) for x in ex), ""]

    files = meta.get("files") or {}
    if files:
        out += ["## Files", ""]
        out += _table(("file", "sha256"), [(md(name), md(digest)) for name, digest in sorted(files.items())])

    out += ["## License and attribution", ""]
    lines = list(meta.get("license") or [])
    out += [f"- {md(line, 1000)}" for line in lines] if lines else ["Not stated."]
    return "\n".join(out).rstrip("\n") + "\n"
