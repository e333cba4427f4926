"""Tests of labelops.agreement.report: the nightly report's charts, HTML page and alert email.

The summary is built from a real `agreement_report` on hand-made ratings whose annotator ids, labels and texts are
hostile (HTML, attribute breakers, ampersands, mathtext), and round-trips through JSON as the pipeline's does.
"""

from __future__ import annotations

import copy
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from labelops.agreement import Ratings, agreement_report, span_agreement
from labelops.agreement import report

XSS = "<script>alert(1)</script>"
ATTR = '"onerror=alert(2)'
AMP = "a&b"
MATH = "$x$"
SUB = "a_b^c"
BAD_MATH = r"$\frac{$"  # mathtext would raise on this
ANNOTATORS = [XSS, ATTR, AMP, MATH, SUB]
LABELS = ["card_arrival", XSS, AMP, MATH, SUB]
# the tags the page and the email may contain: anything else means data leaked in as markup
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "div", "span", "b", "small",
                "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "img", "br", "hr", "a"}


class Page(HTMLParser):
    """Tags, attributes and the visible text of an HTML document (entities decoded)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def ratings() -> Ratings:
    """40 items; MATH and SUB never rate the same item (a missing pair); XSS and ATTR only on odd items."""
    items, who, labels = [], [], []
    rng = np.random.default_rng(7)
    for i in range(40):
        raters = [XSS, ATTR, AMP] if i % 2 else [AMP, MATH] if i % 4 == 0 else [AMP, SUB]
        for a in raters:
            items.append(f"it{i}")
            who.append(a)
            labels.append(LABELS[i % 5] if rng.random() < 0.6 else LABELS[int(rng.integers(0, 5))])
    return Ratings.from_records(items, who, labels)


def make_summary(stats=None, **over) -> dict:
    r = ratings()
    stats = agreement_report(r, gold={"it0": "card_arrival", "it1": XSS, "it2": AMP},
                             lead_time=np.linspace(1, 90, r.n_ratings)) if stats is None else stats
    summary = {
        "project": "banking_support", "run_id": f"scheduled__2026-11-24T02:00:00+00:00{XSS}",
        "generated_at": "2026-11-24T02:03:11+00:00",
        "period": {"since": "2026-11-23T02:00:05+00:00", "until": "2026-11-24T02:00:00+00:00"},
        "counts": {"annotations_pulled": 1234, "annotations_in_window": 5000, "tasks_annotated": 40, "annotators": 5,
                   "cancelled": 3},
        "stats": stats, "stats_reason": None,
        "spans": span_agreement({"i1": {XSS: [(0, 3, XSS)], AMP: [(0, 3, XSS), (5, 7, "LOC")]},
                                 "i2": {XSS: [(1, 4, MATH)], AMP: [(1, 5, MATH)]}}),
        "thresholds": {"min_cohen_kappa": 0.6, "min_gold_accuracy": 0.8, "annotator_margin": 0.15},
        "alerts": [{"rule": "min_cohen_kappa", "message": f"mean pairwise Cohen's kappa is low {XSS}",
                    "value": 0.52, "threshold": 0.6, "annotator": None},
                   {"rule": "annotator_below_team", "message": f"{ATTR}: mean kappa {AMP} is far below",
                    "value": 0.1, "threshold": 0.3, "annotator": ATTR}],
        "worst_items": [{"record_id": f"ab12{ATTR}", "text": f"my card {XSS} <img src=x onerror=alert(3)> & more",
                         "labels": {XSS: XSS, MATH: SUB, AMP: AMP}, "agreement": 0.5}],
        "adjudication": {"sent": 12, "already_sent": 3, "queue": f"expert{XSS}"},
        "drift": {"low_confidence_share": 0.31, "mean_max_probability": 0.62, "model_version": f"intent:v3{XSS}"},
        "report_uri": f"s3://labelops/banking_support/reports/agreement/{XSS}.html",
    }
    summary.update(over)
    return json.loads(json.dumps(summary, allow_nan=False))  # what the pipeline hands over


def make_history(n: int) -> list[dict]:
    return [{"run_id": f"run{i}{XSS}", "generated_at": f"2026-11-{10 + i:02d}T02:03:00+00:00",
             "cohen_kappa_mean": None if i == 2 else 0.5 + 0.02 * i, "fleiss_kappa": 0.45 + 0.01 * i,
             "krippendorff_alpha_nominal": 0.46, "percent_agreement": 0.7, "gold_accuracy": 0.8,
             "annotations": 100 * i} for i in range(n)]


@pytest.fixture(scope="module")
def summary() -> dict:
    return make_summary()


@pytest.fixture(scope="module")
def drawn(summary) -> dict:
    return report.charts(summary, make_history(8))


def assert_safe_html(doc: str) -> Page:
    """No markup from data: only known tags, no event-handler attribute, every '&' starts an entity."""
    assert "<script" not in doc.lower()
    page = Page(doc)
    tags = {t for t, _ in page.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    assert not [(t, a) for t, attrs in page.tags for a in attrs if a.lower().startswith("on")]
    assert not re.search(r"&(?!(?:amp|lt|gt|quot|#x27|#\d+|rarr|middot|ndash);)", doc)
    for tag, attrs in page.tags:
        if tag == "img":
            assert attrs["src"].startswith(("data:image/png;base64,", "cid:"))
        if tag == "a":
            assert attrs["href"].startswith(("https://", "http://"))
    return page


def is_png(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


# ------------------------------------------------------------------------------------------------------------------
# HTML page


def test_html_escapes_all_data_and_shows_it(summary, drawn):
    doc = report.render_html(summary, make_history(8), drawn)
    page = assert_safe_html(doc)
    text = page.all_text
    # the hostile strings are shown as text (decoded), in every section that carries them
    assert text.count(XSS) >= 10
    for s in (ATTR, AMP, MATH, SUB, "<img src=x onerror=alert(3)>", "expert" + XSS, "intent:v3" + XSS,
              summary["report_uri"], summary["run_id"]):
        assert s in text, s
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert "&quot;onerror=alert(2)" in doc and "a&amp;b" in doc
    # the three charts are embedded
    srcs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_html_sections_hold_the_statistics(summary):
    st = summary["stats"]
    doc = report.render_html(summary, make_history(3), charts={})
    text = Page(doc).all_text
    assert "<img" not in doc  # charts={} means none
    assert f"{st['cohen_kappa_mean']:.3f}" in text and f"{st['fleiss_kappa']:.3f}" in text
    assert f"{st['krippendorff_alpha_nominal']:.3f}" in text and f"{100 * st['percent_agreement']:.1f}%" in text
    assert "5,000" in text and "1,234" in text
    for p in st["cohen_kappa_pairwise"]:  # the pairwise table: kappa and CI of every pair
        assert f"{p['kappa']:.3f}" in text and f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}]" in text
    for c in st["confusions"]:
        assert re.search(re.escape(str(c["label_a"])) + re.escape(str(c["label_b"])) + str(c["n_pairs"]), text)
    for a in st["annotators"]:
        assert f"{a['mean_pairwise_kappa']:.3f}" in text
    # span agreement per type: the MATH spans (1, 4) and (1, 5) overlap but are not equal
    assert "exact F1" in text and "overlap F1" in text and f"{MATH}110.0001.000" in text
    # the last runs, newest first
    assert text.index("run2" + XSS) < text.index("run1" + XSS) < text.index("run0" + XSS)


def test_none_statistics_render_as_na_with_the_reason():
    # everybody used one label: every kappa, Fleiss and alpha are undefined (0/0), with reasons
    r = Ratings.from_records(["i1", "i1", "i2", "i2"], [XSS, AMP, XSS, AMP], ["same", "same", "same", "same"])
    st = agreement_report(r)
    assert st["cohen_kappa_mean"] is None and st["fleiss_kappa"] is None
    s = make_summary(st, worst_items=[], alerts=[])
    doc = report.render_html(s, [], charts={})
    assert_safe_html(doc)
    titles = [a.get("title") for t, a in Page(doc).tags if t == "span" and a.get("class") == "na"]
    for key in ("cohen_kappa_mean_reason", "fleiss_kappa_reason", "krippendorff_alpha_nominal_reason"):
        assert st[key] and st[key] in titles, key
    assert st["cohen_kappa_pairwise"][0]["reason"] in titles  # the pair row
    assert "no gold items" in titles

    # no statistics at all: every statistic is n/a with the pipeline's reason
    reason = f'fewer than two annotators rated the same item {XSS}"'
    s = make_summary(st, stats_reason=reason, spans=None, alerts=[])
    s["stats"] = None
    doc = report.render_html(s, [], charts=None)
    assert_safe_html(doc)
    titles = [a.get("title") for t, a in Page(doc).tags if t == "span" and a.get("class") == "na"]
    assert titles.count(reason) == 5  # percent agreement, kappa, Fleiss, alpha, gold
    assert "<img" not in doc  # nothing to draw
    subject, text, body = report.email_content(s, None)
    assert reason in text and "mean Cohen's kappa: n/a" in text
    assert reason in Page(body).all_text and "no statistics" in subject


def test_threshold_crossing_figures_are_marked(summary):
    kappa = summary["stats"]["cohen_kappa_mean"]
    gold = summary["stats"]["gold"]["accuracy"]

    def marked(thresholds):
        s = dict(summary, thresholds=thresholds)
        page = Page(report.render_html(s, [], charts={}))
        figs, out = [t for t in page.tags if t[0] == "div" and "fig" in t[1].get("class", "").split()], set()
        assert len(figs) == 9
        labels = [f.label for f in report.headline(s)]
        for label, (_, attrs) in zip(labels, figs):
            if "bad" in attrs["class"].split():
                out.add(label)
        return out, report.email_content(s, None)

    (m, (_, text, body)) = marked({"min_cohen_kappa": kappa + 0.01, "min_gold_accuracy": gold - 0.01})
    assert m == {"mean Cohen's kappa"}
    assert f"<< below {kappa + 0.01:.3f}" in text and f"(below {kappa + 0.01:.3f})" in Page(body).all_text
    (m, (_, text, body)) = marked({"min_cohen_kappa": kappa - 0.01, "min_gold_accuracy": gold + 0.01})
    assert m == {"gold accuracy"}
    (m, (_, text, body)) = marked({"min_cohen_kappa": -1.0, "min_gold_accuracy": 0.0})
    assert m == set() and "<< below" not in text and "(below" not in body


def test_annotator_rows_are_flagged(summary):
    doc = report.render_html(summary, [], charts={})
    rows = re.findall(r'<tr class="flag"><td>([^<]*)</td>', doc)
    assert rows == ["&quot;onerror=alert(2)"]  # the annotator named by the alert


def test_empty_and_single_history(summary):
    assert "trend" not in report.charts(summary, [])
    doc = report.render_html(summary, [], charts=None)
    assert_safe_html(doc)
    assert "No earlier runs." in doc and "No trend chart" in doc
    one = report.charts(summary, make_history(1))
    is_png(one["trend"])  # one run: drawn as points
    none = make_history(1)
    none[0].update(cohen_kappa_mean=None, fleiss_kappa=None, krippendorff_alpha_nominal=None, gold_accuracy=None)
    assert "trend" not in report.charts(summary, none)


def test_malformed_and_missing_parts_do_not_break_the_page(summary):
    s = copy.deepcopy(summary)
    s.update(counts={}, period=None, spans=None, drift=None, adjudication=None, worst_items=None, alerts=None,
             thresholds=None)
    s["stats"]["annotators"][0]["mean_pairwise_kappa"] = float("nan")
    s["stats"]["per_label"].append("not a row")
    doc = report.render_html(s, [{"run_id": None}], charts={})
    assert_safe_html(doc)
    text = Page(doc).all_text
    assert "No alerts." in text and "No drift figures" in text and "full pull" in text


# ------------------------------------------------------------------------------------------------------------------
# Charts


def test_charts_are_png(drawn):
    assert set(drawn) == {"trend", "kappa_heatmap", "annotators"}
    for data in drawn.values():
        w, h = is_png(data)
        assert w > 100 and h > 100


def test_kappa_matrix_leaves_a_missing_pair_blank(summary):
    st = summary["stats"]
    pairs = {(p["annotator_a"], p["annotator_b"]): p["kappa"] for p in st["cohen_kappa_pairwise"]}
    assert len(pairs) < 5 * 4 // 2 and (MATH, SUB) not in pairs and (SUB, MATH) not in pairs
    names, grid = report.kappa_matrix(st)
    assert sorted(names) == sorted(ANNOTATORS) and names[0] == AMP  # by volume: AMP rates every item
    i, j = names.index(MATH), names.index(SUB)
    assert np.isnan(grid[i, j]) and np.isnan(grid[j, i]) and np.all(np.isnan(np.diag(grid)))
    for (a, b), k in pairs.items():
        assert grid[names.index(a), names.index(b)] == grid[names.index(b), names.index(a)] == pytest.approx(k)
    assert np.count_nonzero(~np.isnan(grid)) == 2 * len(pairs)


def test_heatmap_caps_annotators_by_volume():
    items, who, labels = [], [], []
    for a in range(1, 45):  # annotator a rates 45 - a items, each together with annotator "a00"
        for i in range(45 - a):
            items += [f"a{a}-i{i}"] * 2
            who += [f"a{a:02d}", "a00"]
            labels += [str(i % 3), str((i + a) % 3)]
    st = json.loads(json.dumps(agreement_report(Ratings.from_records(items, who, labels))))
    names, grid = report.kappa_matrix(st)
    assert len(names) == report.MAX_HEATMAP_ANNOTATORS and grid.shape == (40, 40)
    assert names[0] == "a00" and "a39" in names and "a40" not in names and "a44" not in names
    s = make_summary(st)
    is_png(report.charts(s, [])["kappa_heatmap"])


def test_charts_draw_mathtext_literally(summary):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.text(0.5, 0.5, BAD_MATH)
    with pytest.raises(ValueError):  # the name would break a chart if mathtext were on
        fig.savefig(io.BytesIO(), format="png")
    st = copy.deepcopy(summary["stats"])
    for a in st["annotators"]:
        a["annotator_id"] = a["annotator_id"].replace(MATH, BAD_MATH)
    for p in st["cohen_kappa_pairwise"]:
        for k in ("annotator_a", "annotator_b"):
            p[k] = p[k].replace(MATH, BAD_MATH)
    out = report.charts(dict(summary, stats=st), [dict(h, run_id=BAD_MATH) for h in make_history(2)])
    assert set(out) == {"trend", "kappa_heatmap", "annotators"}
    assert BAD_MATH in report.kappa_matrix(st)[0]
    for data in out.values():
        is_png(data)


def test_charts_skip_absent_data(summary):
    s = dict(summary, stats=None, stats_reason="one annotator")
    assert report.charts(s, []) == {}
    st = copy.deepcopy(summary["stats"])
    for p in st["cohen_kappa_pairwise"]:
        p["kappa"] = None
    for a in st["annotators"]:
        a["mean_pairwise_kappa"] = a["gold_accuracy"] = None
    assert report.charts(dict(summary, stats=st), []) == {}


# ------------------------------------------------------------------------------------------------------------------
# Email


def test_email_subject_is_one_short_line():
    s = make_summary(project="bank\r\nBcc: x@evil.example\u2028X-A: 1\x00\x7f")
    s["alerts"][0]["rule"] = "custom"
    s["alerts"][0]["message"] = "kappa low\r\nBcc: y@evil.example\n" + "z" * 300
    subject, text, body = report.email_content(s, "https://reports.example/r?a=1&b=2")
    assert not re.search(r"[\r\n\x00-\x1f\x7f\u2028\u2029\x85]", subject)
    assert len(subject) <= report.SUBJECT_MAX
    assert subject.startswith("[labelops] bank Bcc: x@evil.example X-A: 1: agreement alert — kappa low Bcc: y")
    assert subject.endswith("… (+1 more)")


def test_email_subject_summarises_the_first_alert(summary):
    subject, _, _ = report.email_content(summary, None)
    assert subject == "[labelops] banking_support: agreement alert — mean kappa 0.52 < 0.60 (+1 more)"
    s = dict(summary, alerts=summary["alerts"][1:])
    assert report.email_content(s, None)[0] == f"[labelops] banking_support: agreement alert — {ATTR}: " \
                                               "mean kappa 0.10 < 0.30"
    s = dict(summary, alerts=[dict(summary["alerts"][1], rule="some_new_rule")])  # unknown rule: its message
    assert report.email_content(s, None)[0] == f"[labelops] banking_support: agreement alert — {ATTR}: " \
                                               f"mean kappa {AMP} is far below"
    s = dict(summary, alerts=[])
    kappa = summary["stats"]["cohen_kappa_mean"]
    assert report.email_content(s, None)[0] == \
        f"[labelops] banking_support: agreement report — mean kappa {kappa:.3f}"


def test_email_bodies(summary):
    url = f'https://reports.example/r?a=1&b="{XSS}'
    subject, text, body = report.email_content(summary, url, chart_cid="trend")
    page = assert_safe_html(body)
    shown = page.all_text
    for a in summary["alerts"]:
        assert a["message"] in text and a["message"] in shown
    assert f"{summary['stats']['cohen_kappa_mean']:.3f}" in text and "5,000" in shown
    assert url in text
    assert [a["href"] for t, a in page.tags if t == "a"] == [url]
    assert [a["src"] for t, a in page.tags if t == "img"] == ["cid:trend"]
    _, _, body = report.email_content(summary, "javascript:alert(1)", chart_cid=None)
    page = assert_safe_html(body)
    assert not [t for t, _ in page.tags if t in ("a", "img")] and "javascript:alert(1)" in page.all_text


# ------------------------------------------------------------------------------------------------------------------
# The pipeline's variants: adjudication candidates, entity spans on the worst items, drift of a dispatch run


def test_entity_items_adjudication_and_drift():
    item = {"record_id": "r1", "text": "x", "labels": {XSS: None, AMP: None}, "agreement": 0.5, "gold": True,
            "spans": {XSS: [{"start": 0, "end": 3, "label": XSS}], AMP: []}}
    s = make_summary(worst_items=[item], adjudication={"candidates": 7, "queue": "expert"},
                     drift={"low_confidence_share": 0.25, "mean_max_probability": 0.7, "threshold": 0.5,
                            "records": 900, "model_version": "ner:v2", "dispatch_run": f"manual{XSS}"})
    doc = report.render_html(s, [], charts={})
    text = assert_safe_html(doc).all_text
    assert f"[0:3 {XSS}]" in text and "(no span)" in text and "r1 (gold)" in text
    assert "disputed items: 7" in text and "sent to adjudication" not in text
    assert f"on 900 records of dispatch run manual{XSS}" in text and "below 0.500" in text and "25.0%" in text
