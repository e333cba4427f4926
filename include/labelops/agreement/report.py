"""The nightly agreement report: PNG charts, one self-contained HTML page and the alert email (pure; no Airflow,
no I/O).

Input: ``summary`` (one night: counts, the :func:`~labelops.agreement.stats.agreement_report` dict under
``stats``, the :func:`~labelops.agreement.spans.span_agreement` dict under ``spans``, thresholds, alerts, worst
items, adjudication, drift) and ``history`` (one row per run, oldest first, tonight last; may be empty). Any
figure may be missing or None; an undefined one is shown as "n/a" with its ``*_reason`` as a tooltip.

Safety: every string that comes from data (ids, labels, texts, messages, reasons, run ids, URIs) is escaped with
``html.escape(..., quote=True)``; the page also carries a Content-Security-Policy that forbids scripts. Chart text
is drawn with mathtext off, so ``$x$`` is drawn literally. The email subject is one line: control and line
separator characters from data become spaces (no header injection). A report URL becomes a link only when it is
http(s).

matplotlib is imported inside :func:`charts` only (the Agg canvas, no pyplot: no global figure state).
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import unicodedata
from typing import Any, NamedTuple

import numpy as np

MAX_HEATMAP_ANNOTATORS = 40  # heatmap / bar chart: the annotators with the most ratings
TREND_TABLE_ROWS = 10
MAX_PAIR_ROWS = 200  # pairwise table: the lowest kappas first
MAX_TEXT_CHARS = 600  # worst items: text shown per item
SUBJECT_MAX = 150
# history / stats key, label, min_* threshold key (a figure below its threshold is marked)
SERIES = (("cohen_kappa_mean", "mean Cohen's kappa", "min_cohen_kappa"),
          ("fleiss_kappa", "Fleiss' kappa", "min_fleiss_kappa"),
          ("krippendorff_alpha_nominal", "Krippendorff's alpha", "min_krippendorff_alpha"),
          ("gold_accuracy", "gold accuracy", "min_gold_accuracy"))
# alert rule -> the figure it compares (subject: "<figure> <value> < <threshold>", prefixed by the annotator)
SHORT_RULE = {"min_cohen_kappa": "mean kappa", "min_gold_accuracy": "gold accuracy",
              "annotator_gold_accuracy": "gold accuracy", "annotator_below_team": "mean kappa"}
ADJUDICATION = (("candidates", "disputed items"), ("sent", "sent to adjudication"),
                ("already_sent", "already sent by an earlier run"))


# ------------------------------------------------------------------------------------------------------------------
# Small helpers


def _e(x: Any) -> str:
    """Escaped text of a data value ("" for None)."""
    return "" if x is None else html.escape(str(x), quote=True)


def _one_line(x: Any, limit: int | None = None) -> str:
    """One line of text: control characters and line / paragraph separators become spaces, runs of spaces
    collapse; cut to ``limit`` characters with an ellipsis."""
    s = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(x))
    return _cut(" ".join(s.split()), limit)


def _cut(x: Any, limit: int | None) -> str:
    """The text of x, cut to ``limit`` characters with an ellipsis ("" for None)."""
    s = "" if x is None else str(x)
    return s if limit is None or len(s) <= limit else s[:max(limit - 1, 0)].rstrip() + "…"


def _num(x: Any) -> float | None:
    """A finite number, or None (None, NaN, booleans and strings are not numbers)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    return float(x) if math.isfinite(x) else None


def _fmt(x: Any, kind: str = "k") -> str | None:
    """Formatted number or None. kind: int, k (3 decimals), pct, s (seconds)."""
    v = _num(x)
    if v is None:
        return None
    if kind == "int":
        return f"{int(v):,}"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "s":
        return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"
    return f"{v:.3f}"


def _val(x: Any, kind: str = "k", reason: Any = None, bad: bool = False) -> str:
    """HTML of a figure: the number (class "bad" when marked) or "n/a" with the reason as tooltip."""
    s = _fmt(x, kind)
    if s is None:
        return f'<span class="na" title="{_e(reason or "not available")}">n/a</span>'
    return f'<span class="bad" title="crosses its threshold">{s} &#9660;</span>' if bad else s


def _below(value: Any, threshold: Any) -> bool:
    """Both are numbers and the value is below the threshold."""
    v, t = _num(value), _num(threshold)
    return v is not None and t is not None and v < t


def _get(d: Any, *keys: str) -> Any:
    """d[k1][k2]... or None when any level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _pairwise_rows(figures: dict, levels: list[str], unit: str, metrics: list[tuple[str, str]]) -> list[list[str]]:
    """Table rows of a pairwise micro-averaged agreement (span or box: `spans.pairwise_micro`): one row for all
    types, then one per type; the counts of each side (n_<unit>_a, n_<unit>_b) at the first level, then each
    metric (key, reason when n/a) at each level."""
    types = ["(all)"] + sorted({str(t) for m in levels for t in (_get(figures, m, "per_type") or {})})
    rows = []
    for t in types:
        sc = {m: (_get(figures, m, "overall") if t == "(all)" else _get(figures, m, "per_type", t)) or {}
              for m in levels}
        first = sc[levels[0]]
        rows.append([_e(t), _val(first.get(f"n_{unit}_a"), "int"), _val(first.get(f"n_{unit}_b"), "int")]
                    + [_val(sc[m].get(k), reason=why) for m in levels for k, why in metrics])
    return rows


def _dicts(x: Any) -> list[dict]:
    """The dict entries of a list (missing / malformed entries dropped)."""
    return [d for d in x if isinstance(d, dict)] if isinstance(x, (list, tuple)) else []


def _worst_first(key: str):
    """Sort key: the lowest value of ``key`` first, undefined ones last."""
    return lambda d: (_num(d.get(key)) is None, _num(d.get(key)) or 0.0)


def _annotator_rows(stats: Any, limit: int | None = None) -> list[dict]:
    """The annotator rows of the statistics by volume (most ratings first)."""
    return sorted(_dicts(_get(stats, "annotators")), key=lambda a: -(_num(a.get("n_ratings")) or 0))[:limit]


def _table(headers: list[str], rows: list[list[str]], row_class: list[str] | None = None) -> str:
    """Rows of ready-made HTML cells (headers are fixed text)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    classes = row_class or [""] * len(rows)
    body = "".join((f'<tr class="{c}">' if c else "<tr>") + "".join(f"<td>{x}</td>" for x in r) + "</tr>"
                   for c, r in zip(classes, rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Figure(NamedTuple):
    label: str
    value: Any
    kind: str
    reason: str | None = None
    threshold: float | None = None
    note: str = ""

    @property
    def crossed(self) -> bool:
        return _below(self.value, self.threshold)

    def text(self) -> str:
        """Plain text (for the email)."""
        s = _fmt(self.value, self.kind)
        if s is None:
            return f"n/a ({_one_line(self.reason or 'not available')})"
        below = f"  << below {_fmt(self.threshold, self.kind)}" if self.crossed else ""
        return s + (f" {self.note}" if self.note else "") + below


def headline(summary: dict) -> list[Figure]:
    """The headline figures of one night (shared by the page and the email)."""
    st, counts, th = summary.get("stats"), summary.get("counts") or {}, summary.get("thresholds") or {}
    has = isinstance(st, dict)
    why = summary.get("stats_reason") or "no statistics this run"

    def stat(label: str, key: str, kind: str, threshold_key: str, note: str = "") -> Figure:
        if not has:
            return Figure(label, None, kind, why, th.get(threshold_key))
        return Figure(label, st.get(key), kind, st.get(f"{key}_reason"), th.get(threshold_key), note)

    pairable = _fmt(st.get("n_items_pairable"), "int") if has else None
    figs = [Figure("annotations in window", counts.get("annotations_in_window"), "int", "not counted"),
            Figure("pulled this run", counts.get("annotations_pulled"), "int", "not counted"),
            Figure("annotators", counts.get("annotators"), "int", "not counted"),
            Figure("items", st.get("n_items") if has else counts.get("tasks_annotated"), "int", "not counted",
                   note=f"({pairable} pairable)" if pairable else ""),
            stat("percent agreement", "percent_agreement", "pct", "min_percent_agreement")]
    defined = [p for p in _dicts(_get(st, "cohen_kappa_pairwise")) if _num(p.get("kappa")) is not None]
    lo, hi = (st.get("cohen_kappa_mean_ci_low"), st.get("cohen_kappa_mean_ci_high")) if has else (None, None)
    if lo is None and len(defined) == 1:  # one pair: the mean is that pair's kappa, and its CI is the pair's
        lo, hi = defined[0].get("ci_low"), defined[0].get("ci_high")
    notes = ([f"CI [{_fmt(lo)}, {_fmt(hi)}]"] if _fmt(lo) and _fmt(hi) else []) + (
        [f"over {len(defined)} pair{'s' * (len(defined) != 1)}"] if defined else [])
    figs += [stat(label, key, "k", tkey, "; ".join(notes) if key == "cohen_kappa_mean" else "")
             for key, label, tkey in SERIES[:3]]
    gold = st.get("gold") if has else None
    if not isinstance(gold, dict):
        figs.append(Figure("gold accuracy", None, "pct", why if not has else "no gold items",
                           th.get("min_gold_accuracy")))
    else:
        n = _fmt(gold.get("n_gold_ratings"), "int")
        figs.append(Figure("gold accuracy", gold.get("accuracy"), "pct", "no gold item was rated",
                           th.get("min_gold_accuracy"),
                           f"({_fmt(gold.get('n_correct'), 'int')} of {n} gold ratings)" if n else ""))
    return figs


# ------------------------------------------------------------------------------------------------------------------
# Charts


def kappa_matrix(stats: Any, limit: int = MAX_HEATMAP_ANNOTATORS) -> tuple[list[str], np.ndarray]:
    """(annotator ids, symmetric matrix of pairwise Cohen's kappa; NaN where a pair shares no item, has an undefined
    kappa, and on the diagonal). The ``limit`` annotators with the most ratings (without annotator rows: those
    named by the pairs, sorted)."""
    pairs = _dicts(_get(stats, "cohen_kappa_pairwise"))
    ann = [str(a.get("annotator_id")) for a in _annotator_rows(stats, limit)]
    if not ann:
        ann = sorted({str(p.get(k)) for p in pairs for k in ("annotator_a", "annotator_b")})[:limit]
    index = {a: i for i, a in enumerate(ann)}
    grid = np.full((len(ann), len(ann)), np.nan)
    for p in pairs:
        i, j, k = index.get(str(p.get("annotator_a"))), index.get(str(p.get("annotator_b"))), _num(p.get("kappa"))
        if i is not None and j is not None and k is not None:
            grid[i, j] = grid[j, i] = k
    return ann, grid


def charts(summary: dict, history: list[dict]) -> dict[str, bytes]:
    """PNG bytes of "trend", "kappa_heatmap" and "annotators"; a chart without data is left out."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure as MplFigure

    th = summary.get("thresholds") or {}
    st = summary.get("stats")
    out: dict[str, bytes] = {}

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

    def hline(ax, value, label, color, vertical=False):
        if _num(value) is not None:
            (ax.axvline if vertical else ax.axhline)(value, color=color, ls="--", lw=1, label=label)

    with rc_context({"text.parse_math": False, "font.size": 9}):
        # trend over the runs
        runs = _dicts(history)
        series = {key: np.array([_num(h.get(key)) for h in runs], dtype=float) for key, _, _ in SERIES}
        if any(not np.all(np.isnan(v)) for v in series.values()):
            fig = MplFigure(figsize=(8, 3.6))
            ax = fig.subplots()
            x = np.arange(len(runs))
            for key, label, _ in SERIES:
                ax.plot(x, series[key], marker="o", ms=4, lw=1.5, label=label)
            hline(ax, th.get("min_cohen_kappa"), "kappa threshold", "black")
            step = max(1, math.ceil(len(runs) / 10))
            ticks = [str(h["generated_at"])[:10] if h.get("generated_at") else _one_line(h.get("run_id") or i, 20)
                     for i, h in enumerate(runs)]
            ax.set_xticks(x[::step], ticks[::step], rotation=30, ha="right")
            ax.set_xlim(-0.5, len(runs) - 0.5)
            low = np.nanmin(np.concatenate(list(series.values())))
            ax.set_ylim(min(0.0, low) - 0.05, 1.05)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
            ax.set_title("Agreement over the runs")
            out["trend"] = png(fig)

        # pairwise kappa heatmap
        ann, grid = kappa_matrix(st)
        if not np.all(np.isnan(grid)):
            n = len(ann)
            fig = MplFigure(figsize=(min(3 + 0.35 * n, 16), min(2.5 + 0.35 * n, 15)))
            ax = fig.subplots()
            im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=-1, vmax=1)
            ax.set_facecolor("#eeeeee")
            names = [_one_line(a, 24) for a in ann]
            ax.set_xticks(range(n), names, rotation=60, ha="right")
            ax.set_yticks(range(n), names)
            if n <= 15:
                for i, j in zip(*np.nonzero(~np.isnan(grid))):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
            fig.colorbar(im, ax=ax, label="Cohen's kappa")
            total = len(_dicts(_get(st, "annotators")))
            ax.set_title("Pairwise Cohen's kappa" + (f" (top {n} of {total} by volume)" if total > n else ""))
            out["kappa_heatmap"] = png(fig)

        # per annotator: mean pairwise kappa and gold accuracy
        rows = _annotator_rows(st, MAX_HEATMAP_ANNOTATORS)
        kap = np.array([_num(a.get("mean_pairwise_kappa")) for a in rows], dtype=float)
        gold = np.array([_num(a.get("gold_accuracy")) for a in rows], dtype=float)
        if rows and not (np.all(np.isnan(kap)) and np.all(np.isnan(gold))):
            n = len(rows)
            fig = MplFigure(figsize=(7, 1.2 + 0.32 * n))
            ax = fig.subplots()
            y = np.arange(n)
            ax.barh(y - 0.2, np.nan_to_num(kap), 0.4, label="mean pairwise kappa", color="tab:blue")
            ax.barh(y + 0.2, np.nan_to_num(gold), 0.4, label="gold accuracy", color="tab:orange")
            for yi, v in [(yi - 0.2, v) for yi, v in zip(y, kap)] + [(yi + 0.2, v) for yi, v in zip(y, gold)]:
                if np.isnan(v):
                    ax.text(0.01, yi, "n/a", va="center", fontsize=7, color="grey")
            hline(ax, th.get("min_cohen_kappa"), "kappa threshold", "tab:blue", vertical=True)
            hline(ax, th.get("min_gold_accuracy"), "gold threshold", "tab:orange", vertical=True)
            ax.set_yticks(y, [_one_line(a.get("annotator_id"), 30) for a in rows])
            ax.set_ylim(n - 0.5, -0.5)  # the busiest annotator on top
            ax.set_xlim(min(0.0, np.nanmin(np.r_[kap, gold, 0.0])) - 0.05, 1.05)
            ax.grid(axis="x", alpha=0.3)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
            ax.set_title("Annotators")
            out["annotators"] = png(fig)
    return out


_draw_charts = charts  # render_html's parameter is named `charts`


# ------------------------------------------------------------------------------------------------------------------
# The HTML page

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}.figs{display:flex;flex-wrap:wrap;gap:.6em}
.fig{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:9em}.fig .v{font-size:1.4em}
.fig .l,.muted{color:#666;font-size:.85em}.fig.bad{border-color:#c62828;background:#fdecea}.bad{color:#c62828}
.na{color:#888;border-bottom:1px dotted #888;cursor:help}tr.flag td{background:#fdecea}
.alerts li{color:#c62828}.text{white-space:pre-wrap;max-width:40em}img{max-width:100%}"""


def _img(charts_: dict, key: str, alt: str) -> str:
    data = charts_.get(key)
    if not isinstance(data, (bytes, bytearray)):
        return f'<p class="muted">No {_e(alt)} chart (no data).</p>'
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _item_labels(item: dict) -> str:
    """Each annotator's label of an item (and spans, for entity projects), one per line."""
    labels, spans = item.get("labels"), item.get("spans")
    labels, spans = labels if isinstance(labels, dict) else {}, spans if isinstance(spans, dict) else {}
    lines = []
    for who in list(labels) + [a for a in spans if a not in labels]:
        line = f"{_e(who)}: <b>{_e(labels.get(who))}</b>"
        if isinstance(spans.get(who), list):
            line += " " + _e(", ".join(
                f"[{s.get('start')}:{s.get('end')} {s.get('label')}]" if isinstance(s, dict) else str(s)
                for s in spans[who]) or "(no span)")
        lines.append(line)
    return "<br>".join(lines)


def render_html(summary: dict, history: list[dict], charts: dict[str, bytes] | None = None) -> str:
    """The whole report as one HTML page. ``charts``: from :func:`charts` (None: drawn here; {}: no charts)."""
    ch = _draw_charts(summary, history) if charts is None else charts
    st = summary.get("stats") if isinstance(summary.get("stats"), dict) else None
    th = summary.get("thresholds") or {}
    project = summary.get("project")
    why = summary.get("stats_reason") or "no statistics this run"
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy"'
             f' content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'">'
             f"<title>Agreement report: {_e(project)}</title><style>{CSS}</style></head><body>",
             f"<h1>Agreement report: {_e(project)}</h1>"]
    since, until = _get(summary, "period", "since"), _get(summary, "period", "until")
    parts.append(f'<p class="muted">Window: {_e(since) if since else "full pull"} &rarr; {_e(until) or "n/a"}; '
                 f'run {_e(summary.get("run_id"))}; cancelled annotations: '
                 f'{_val(_get(summary, "counts", "cancelled"), "int")}</p>')
    if st is None:
        parts.append(f'<p class="bad">No agreement statistics: {_e(why)}</p>')

    parts.append('<h2>Headline</h2><div class="figs">')
    for f in headline(summary):
        parts.append(f'<div class="fig{" bad" if f.crossed else ""}"><div class="l">{_e(f.label)}</div>'
                     f'<div class="v">{_val(f.value, f.kind, f.reason)}</div>'
                     + (f'<div class="l">{_e(f.note)}</div>' if f.note else "")
                     + (f'<div class="l bad">below threshold {_fmt(f.threshold, f.kind)}</div>' if f.crossed else "")
                     + "</div>")
    parts.append("</div>")

    alerts = _dicts(summary.get("alerts"))
    parts.append("<h2>Alerts</h2>")
    parts.append('<ul class="alerts">' + "".join(
        f"<li>{_e(a.get('message') or a.get('rule'))}"
        + (f' <span class="muted">(annotator {_e(a["annotator"])})</span>' if a.get("annotator") is not None else "")
        + "</li>" for a in alerts) + "</ul>" if alerts else "<p>No alerts.</p>")

    parts.append("<h2>Trend</h2>" + _img(ch, "trend", "trend"))
    runs = _dicts(history)[-TREND_TABLE_ROWS:]
    if runs:
        parts.append(_table(["run", "generated", "annotations", "mean kappa", "Fleiss", "alpha", "percent agr.",
                             "gold acc."], [
            [_e(h.get("run_id")), _e(h.get("generated_at")), _val(h.get("annotations"), "int"),
             _val(h.get("cohen_kappa_mean"), bad=_below(h.get("cohen_kappa_mean"), th.get("min_cohen_kappa"))),
             _val(h.get("fleiss_kappa")), _val(h.get("krippendorff_alpha_nominal")),
             _val(h.get("percent_agreement"), "pct"), _val(h.get("gold_accuracy"), "pct")] for h in reversed(runs)]))
    else:
        parts.append('<p class="muted">No earlier runs.</p>')

    parts.append("<h2>Pairwise Cohen's kappa</h2>" + _img(ch, "kappa_heatmap", "pairwise kappa heatmap"))
    pairs = sorted(_dicts(_get(st, "cohen_kappa_pairwise")), key=_worst_first("kappa"))
    if pairs:
        parts.append(_table(["annotator a", "annotator b", "shared items", "kappa", "CI"], [
            [_e(p.get("annotator_a")), _e(p.get("annotator_b")), _val(p.get("n_items"), "int"),
             _val(p.get("kappa"), reason=p.get("reason")),
             f"[{_fmt(p.get('ci_low'))}, {_fmt(p.get('ci_high'))}]" if _fmt(p.get("ci_low")) else "&ndash;"]
            for p in pairs[:MAX_PAIR_ROWS]]))
        if len(pairs) > MAX_PAIR_ROWS:
            parts.append(f'<p class="muted">{len(pairs) - MAX_PAIR_ROWS} more pairs not shown.</p>')

    labels = sorted(_dicts(_get(st, "per_label")), key=_worst_first("specific_agreement"))
    if labels:
        parts.append("<h2>Labels</h2>" + _table(["label", "ratings", "rating pairs", "agreeing pairs",
                                                 "specific agreement"], [
            [_e(r.get("label")), _val(r.get("n_ratings"), "int"), _val(r.get("n_pairs"), "int"),
             _val(r.get("n_agreeing_pairs"), "int"),
             _val(r.get("specific_agreement"), "pct", "the label is in no pair of ratings")] for r in labels]))
    conf = _dicts(_get(st, "confusions"))
    if conf:
        parts.append("<h3>Most confused label pairs</h3>" + _table(["label", "confused with", "disagreeing pairs"], [
            [_e(c.get("label_a")), _e(c.get("label_b")), _val(c.get("n_pairs"), "int")] for c in conf]))

    spans = summary.get("spans")
    modes = [m for m in ("exact", "overlap") if isinstance(_get(spans, m), dict)]
    if modes:
        rows = _pairwise_rows(spans, modes, "spans", [("f1", "no span of this type on either side")])
        parts.append("<h2>Span agreement</h2>" + _table(["entity type", "spans (a)", "spans (b)"]
                                                        + [f"{m} F1" for m in modes], rows))

    boxes = summary.get("boxes") if isinstance(summary.get("boxes"), dict) else {}
    levels = sorted(k for k in boxes if str(k).startswith("iou>=") and isinstance(boxes[k], dict))
    if levels:
        rows = _pairwise_rows(boxes, levels, "boxes", [("f1", "no box of this label on either side"),
                                                       ("mean_iou", "no matched pair")])
        note = (f'<p class="muted">{_val(boxes.get("items"), "int")} items with boxes from two or more annotators '
                f'measured; {_val(boxes.get("items_with_rotated_boxes"), "int")} left out (a rotated box).</p>')
        parts.append("<h2>Bounding-box agreement (IoU matching)</h2>" + note + _table(
            ["label", "boxes (a)", "boxes (b)"] + [f"{_e(m.replace('iou', 'IoU '))} {k}" for m in levels
                                                   for k in ("F1", "mean IoU")], rows))

    worst = _dicts(summary.get("worst_items"))
    if worst:
        parts.append("<h2>Items with the least agreement</h2>" + _table(["record", "text", "labels", "agreement"], [
            [_e(w.get("record_id")) + (' <span class="muted">(gold)</span>' if w.get("gold") is True else ""),
             f'<div class="text">{_e(_cut(w.get("text"), MAX_TEXT_CHARS))}</div>', _item_labels(w),
             _val(w.get("agreement"), "pct")] for w in worst]))

    ann_rows = _annotator_rows(st)
    if ann_rows:  # marked: a row named by an alert; a kappa more than the margin below the mean; gold accuracy
        named = {str(a.get("annotator")) for a in alerts if a.get("annotator") is not None}
        kmean, margin = _num(_get(st, "cohen_kappa_mean")), _num(th.get("annotator_margin"))
        rows = []
        for a in ann_rows:
            k, g = _num(a.get("mean_pairwise_kappa")), _num(a.get("gold_accuracy"))
            rows.append([_e(a.get("annotator_id")), _val(a.get("n_ratings"), "int"),
                         _val(a.get("n_items_shared"), "int"), _val(a.get("n_pairs"), "int"),
                         _val(k, reason="no pair with a defined kappa",
                              bad=None not in (kmean, margin) and _below(k, kmean - margin)),
                         _val(g, "pct", "no gold item rated" if "gold_n" in a else "no gold items",
                              bad=_below(g, th.get("min_gold_accuracy"))),
                         _val(a.get("lead_time_median_s"), "s", "no lead time recorded")])
        flags = ["flag" if str(a.get("annotator_id")) in named else "" for a in ann_rows]
        parts.append("<h2>Annotators</h2>" + _img(ch, "annotators", "annotators") + _table(
            ["annotator", "ratings", "shared items", "pairs", "mean pairwise kappa", "gold accuracy",
             "median lead time"], rows, flags))

    adj, drift = summary.get("adjudication"), summary.get("drift")
    parts.append("<h2>Adjudication and drift</h2>")
    counts = [f"{label}: {_val(adj[key], 'int')}" for key, label in ADJUDICATION if key in (adj or {})]
    if counts:
        parts.append(f"<p>Adjudication (queue <b>{_e(_get(adj, 'queue')) or 'n/a'}</b>): {'; '.join(counts)}.</p>")
    else:
        parts.append('<p class="muted">No adjudication this run.</p>')
    if isinstance(drift, dict):
        below = f" (max probability below {_fmt(drift['threshold'])})" if _fmt(drift.get("threshold")) else ""
        on = f" on {_fmt(drift['records'], 'int')} records" if _fmt(drift.get("records"), "int") else ""
        run = f" of dispatch run {_e(drift['dispatch_run'])}" if drift.get("dispatch_run") else ""
        parts.append(f"<p>Model {_e(drift.get('model_version')) or 'n/a'}{on}{run}: low-confidence share"
                     f"{below} {_val(drift.get('low_confidence_share'), 'pct')}, mean max probability "
                     f"{_val(drift.get('mean_max_probability'))}.</p>")
    else:
        parts.append('<p class="muted">No drift figures this run.</p>')

    parts.append(f'<hr><p class="muted">Project {_e(project)} &middot; run {_e(summary.get("run_id"))} &middot; '
                 f'generated {_e(summary.get("generated_at"))} &middot; stored at {_e(summary.get("report_uri"))}'
                 f"</p></body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------------------------
# The alert email


def _alert_short(a: dict) -> str:
    """An alert in a few words for the subject (its message when the rule is not a known comparison)."""
    rule, value, limit = a.get("rule"), _num(a.get("value")), _num(a.get("threshold"))
    if rule not in SHORT_RULE or value is None or limit is None:
        return str(a.get("message") or rule or "alert")
    who = f"{a['annotator']}: " if a.get("annotator") is not None else ""
    return f"{who}{SHORT_RULE[rule]} {value:.2f} < {limit:.2f}"


def email_content(summary: dict, report_url: str | None, chart_cid: str | None = "trend") -> tuple[str, str, str]:
    """(subject, plain-text body, HTML body) of the alert email. The subject is one line of at most SUBJECT_MAX
    characters. ``chart_cid``: the Content-ID of the attached trend chart, shown as ``<img src="cid:...">``
    (None: no image; pass None when :func:`charts` drew no trend)."""
    figs = headline(summary)
    alerts = _dicts(summary.get("alerts"))
    kind = "alert" if alerts else "report"
    head = f"[labelops] {_one_line(summary.get('project') or '?', 40)}: agreement {kind} — "
    more = f" (+{len(alerts) - 1} more)" if len(alerts) > 1 else ""
    if alerts:
        middle = _alert_short(alerts[0])
    else:
        kappa = _fmt(next(f.value for f in figs if f.label == SERIES[0][1]))
        middle = f"mean kappa {kappa}" if kappa else "no statistics"
    subject = head + _one_line(middle, SUBJECT_MAX - len(head) - len(more)) + more

    no_stats = summary.get("stats") is None
    reason = summary.get("stats_reason") or "not computed"
    messages = [a.get("message") or a.get("rule") for a in alerts]
    text = [f"Agreement report for {_one_line(summary.get('project'))}, run {_one_line(summary.get('run_id'))}", ""]
    if no_stats:
        text += [f"No agreement statistics: {_one_line(reason)}", ""]
    text += (["Alerts:"] + [f"  - {_one_line(m)}" for m in messages]) if alerts else ["No alerts."]
    text += ["", "Figures:"] + [f"  {f.label}: {f.text()}" for f in figs]
    text += ["", f"Full report: {_one_line(report_url)}" if report_url else "No report link."]

    td = 'style="padding:2px 8px;border-bottom:1px solid #eee"'
    rows = []
    for f in figs:
        value = _fmt(f.value, f.kind)
        if value is None:
            cell = f"n/a ({_e(_one_line(f.reason or 'not available'))})"
        elif f.crossed:
            cell = f'<b style="color:#c62828">{value} (below {_fmt(f.threshold, f.kind)})</b>'
        else:
            cell = value
        rows.append(f"<tr><td {td}>{_e(f.label)}</td><td {td}>{cell}"
                    + (f" <small>{_e(f.note)}</small>" if f.note else "") + "</td></tr>")
    body = [f'<div style="font-family:sans-serif"><h2>Agreement report: {_e(summary.get("project"))}</h2>',
            f"<p>Run {_e(summary.get('run_id'))}</p>"]
    if no_stats:
        body.append(f"<p>No agreement statistics: {_e(reason)}</p>")
    body.append(('<ul style="color:#c62828">' + "".join(f"<li>{_e(m)}</li>" for m in messages) + "</ul>")
                if alerts else "<p>No alerts.</p>")
    body.append(f'<table style="border-collapse:collapse">{"".join(rows)}</table>')
    if chart_cid:
        body.append(f'<p><img src="cid:{_e(chart_cid)}" alt="agreement trend" style="max-width:100%"></p>')
    if isinstance(report_url, str) and report_url.lower().startswith(("https://", "http://")):
        body.append(f'<p><a href="{_e(report_url)}">Open the full report</a></p>')
    elif report_url:
        body.append(f"<p>Full report (not a web link): {_e(report_url)}</p>")
    body.append("</div>")
    return subject, "\n".join(text) + "\n", "\n".join(body)
