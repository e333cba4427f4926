"""The nightly agreement stage as steps the `<project>__agreement` DAG calls: `pull`, `compute`, `alert_needed` /
`mark_alerted`, `adjudicate`. Pure Python over an S3Store and a platform client; no Airflow.

pull: the annotations made or changed since the last pull (all of them when `full`), one Parquet snapshot per
  run. A retried or re-run pull reuses its snapshot (the run's pull record is written last).
compute: the current state of every annotation (all snapshots merged, latest version of each annotation wins);
  the statistics over the items touched since the last pull (all items on a full pull): Cohen's kappa per pair,
  Fleiss, Krippendorff, per-label agreement, span agreement for entity projects, gold accuracy per annotator
  from the gold answers the dispatch ledger keeps; the alerts the config's thresholds raise; the items to
  adjudicate; the HTML report, its JSON summary and the manifest.
adjudicate: each disagreed item once into the project's expert queue, the competing answers shown as predictions.

Layout under the project's prefix (`<p>/`):
  <p>annotations/snapshots/run=<run>/part-NNNNN.parquet   the run's pulled rows (pull.COLUMNS + text)
  <p>state/agreement/pulls/run=<run>.json                 the run's pull: since, watermark, rows, parts
  <p>reports/agreement/<run>.html / <run>.json            the report and its summary (the trend reads these)
  <p>manifests/agreement/<run>.json                       the manifest
  <p>state/agreement/alerts/run=<run>.json                the alert of the run was sent (never twice)
  <p>state/agreement/adjudication/run=<run>/ledger/...    the adjudication import ledger
  <p>state/agreement/adjudicated/run=<run>.jsonl          the items sent to adjudication (each item once)
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone

from labelops.agreement.pull import COLUMNS, since_with_margin
from labelops.config import ProjectConfig
from labelops.ingest.pipeline import safe_run_id
from labelops.storage import S3Store

log = logging.getLogger(__name__)

ROW_COLUMNS = (*COLUMNS, "text")
PART_ROWS = 200_000
ADJUDICATION_MARK = ":adjudicate:"
MANIFEST_KEYS = ("annotations_pulled", "annotations_total", "annotations_in_window", "items_in_window",
                 "annotators", "alerts", "adjudication_candidates", "report_uri", "snapshot_uri", "since",
                 "watermark")


class Paths:
    def __init__(self, project: ProjectConfig, run_id: str) -> None:
        self.base = project.spec.storage.project_prefix
        self.run = safe_run_id(run_id)

    snapshots = property(lambda self: f"{self.base}annotations/snapshots/")
    snapshot = property(lambda self: f"{self.snapshots}run={self.run}/")
    pulls = property(lambda self: f"{self.base}state/agreement/pulls/")
    pull = property(lambda self: f"{self.pulls}run={self.run}.json")
    reports = property(lambda self: f"{self.base}reports/agreement/")
    report = property(lambda self: f"{self.reports}{self.run}.html")
    summary = property(lambda self: f"{self.reports}{self.run}.json")
    manifest = property(lambda self: f"{self.base}manifests/agreement/{self.run}.json")
    alert = property(lambda self: f"{self.base}state/agreement/alerts/run={self.run}.json")
    ledger = property(lambda self: f"{self.base}state/agreement/adjudication/run={self.run}/ledger/")
    adjudicated_prefix = property(lambda self: f"{self.base}state/agreement/adjudicated/")
    adjudicated = property(lambda self: f"{self.adjudicated_prefix}run={self.run}.jsonl")


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


# -- pull ---------------------------------------------------------------------------------------------------------


def last_watermark(store: S3Store, paths: Paths) -> str | None:
    """The newest watermark of the other runs' pulls (None before the first pull)."""
    marks = []
    for obj in store.list(paths.pulls):
        if obj["key"] != paths.pull:
            rec = store.get_json(obj["key"])
            if rec.get("watermark"):
                marks.append(rec["watermark"])
    return max(marks) if marks else None


def _write_parts(store: S3Store, prefix: str, rows: list[dict]) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.float64() if c == "lead_time_s" else pa.bool_() if c == "cancelled" else pa.string())
                        for c in ROW_COLUMNS])
    keys = []
    for n, start in enumerate(range(0, len(rows), PART_ROWS)):
        chunk = rows[start: start + PART_ROWS]
        table = pa.Table.from_pylist([{c: r.get(c) for c in ROW_COLUMNS} for r in chunk], schema=schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        key = f"{prefix}part-{n:05d}.parquet"
        store.put(key, buf.getvalue(), "application/vnd.apache.parquet")
        keys.append(key)
    return keys


def pull(store: S3Store, project: ProjectConfig, run_id: str, source, *, full: bool = False) -> dict:
    """Land the annotations changed since the last pull (all when `full`) as this run's snapshot.
    `source.annotations(since)` yields rows (pull.COLUMNS, optionally "text"); `source.watermark` is then the
    newest change the platform reported."""
    paths = Paths(project, run_id)
    done = store.get_json(paths.pull)
    if done is not None:
        return done
    stale = [o["key"] for o in store.list(paths.snapshot)]  # an interrupted attempt of this run
    if stale:
        store.delete(stale)
    previous = last_watermark(store, paths)
    since = None if full else since_with_margin(previous)
    started = time.time()
    known = known_versions(store, paths)
    rows, again = [], 0
    for row in source.annotations(since):  # the margin before the watermark brings some rows back: keep changes
        if known.get((row["platform"], row["project_id"], row["annotation_id"])) == row["updated_at"]:
            again += 1
        else:
            rows.append(row)
    parts = _write_parts(store, paths.snapshot, rows)
    record = {
        "run_id": run_id, "full": full or previous is None, "since": since, "pulled_at": now(),
        "watermark": max(filter(None, [previous, getattr(source, "watermark", None)]), default=None),
        "rows": len(rows), "rows_unchanged": again, "cancelled": sum(bool(r.get("cancelled")) for r in rows),
        "parts": [store.uri(k) for k in parts], "snapshot_uri": store.uri(paths.snapshot),
        "seconds": round(time.time() - started, 3), "platform": project.spec.platform,
    }
    store.put_json(paths.pull, record)  # last: a retry before this line pulls again
    return record


def read_rows(store: S3Store, keys: list[str], columns: list[str] | None = None) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for key in keys:
        rows.extend(pq.read_table(io.BytesIO(store.get(key)), columns=columns).to_pylist())
    return rows


def known_versions(store: S3Store, paths: Paths) -> dict[tuple[str, str, str], str]:
    """(platform, project id, annotation id) -> the newest updated_at the earlier pulls landed."""
    out: dict[tuple[str, str, str], str] = {}
    cols = ["platform", "project_id", "annotation_id", "updated_at"]
    for row in read_rows(store, snapshot_keys(store, paths, exclude=paths.run), cols):
        ident = (row["platform"], row["project_id"], row["annotation_id"])
        if (row["updated_at"] or "") >= (out.get(ident) or ""):
            out[ident] = row["updated_at"]
    return out


def snapshot_keys(store: S3Store, paths: Paths, runs: set[str] | None = None, exclude: str | None = None) -> list[str]:
    """The Parquet parts of the finished pulls (of `runs` only, when given; not of run `exclude`), oldest first."""
    pulls = []
    for obj in store.list(paths.pulls):
        rec = store.get_json(obj["key"])
        run = safe_run_id(rec["run_id"])
        if (runs is None or run in runs) and run != exclude:
            pulls.append((rec["pulled_at"], run, rec["parts"]))
    prefix = f"s3://{store.bucket}/"
    return [uri[len(prefix):] for _, _, parts in sorted(pulls) for uri in parts]


def current_annotations(store: S3Store, paths: Paths) -> list[dict]:
    """Every annotation's latest version over all pulls (a later pull's row replaces an earlier one)."""
    latest: dict[tuple[str, str, str], dict] = {}
    for row in read_rows(store, snapshot_keys(store, paths)):
        ident = (row["platform"], row["project_id"], row["annotation_id"])
        old = latest.get(ident)
        if old is None or (row["updated_at"] or "") >= (old["updated_at"] or ""):
            latest[ident] = row
    return list(latest.values())


# -- compute ------------------------------------------------------------------------------------------------------


def dispatched_rows(store: S3Store, project: ProjectConfig):
    """Every row of the dispatch ledger (one per task dispatched: key, record id, queue, gold, image...)."""
    from labelops.dispatch.pipeline import Paths as DispatchPaths

    for obj in store.list(DispatchPaths(project, "x").dispatched_prefix):
        for line in store.get(obj["key"]).splitlines():
            yield json.loads(line)


def gold_answers(store: S3Store, project: ProjectConfig) -> dict[str, dict]:
    """record id -> the known answer of every gold item dispatched (from the dispatch ledger)."""
    return {row["record_id"]: row["gold"] for row in dispatched_rows(store, project) if row.get("gold")}


def dispatched_images(store: S3Store, project: ProjectConfig) -> dict[str, dict]:
    """Image projects: record id -> {"image": s3:// URI, "sha256"} of every image dispatched (from the dispatch
    ledger: the same for every platform, whatever URL the platform was given)."""
    return {row["record_id"]: {"image": row["image"], "sha256": row.get("sha256")}
            for row in dispatched_rows(store, project) if row.get("image")}


def is_adjudication(row: dict) -> bool:
    return ADJUDICATION_MARK in (row.get("task_key") or "")


def box_project(project: ProjectConfig) -> bool:
    """An image project whose Label Studio label config has a <RectangleLabels> control (bounding boxes): its
    annotation rows carry boxes in `spans`, and the agreement stage measures them by IoU matching."""
    if project.spec.modality != "image" or not project.label_config_xml:
        return False
    from labelops.dispatch.label_studio import label_config_names

    return label_config_names(project.label_config_xml).rectangles is not None


def box_figures(ratings: list[dict]) -> dict:
    """`boxes.box_agreement` over the ratings' boxes (each annotator's latest answer per item), with the counts
    of items measured and of items left out because a box on them is rotated (IoU here is for axis-aligned
    boxes)."""
    from labelops.agreement.boxes import box_agreement

    by_item: dict[str, dict[str, list]] = defaultdict(dict)
    for x in sorted(ratings, key=lambda x: x["updated_at"] or ""):
        by_item[x["record_id"]][x["annotator"]] = [m for m in json.loads(x["spans"] or "[]") if "x" in m]
    rotated = {rid for rid, by in by_item.items() if any(m.get("rotation") for ms in by.values() for m in ms)}
    measured = {rid: by for rid, by in by_item.items() if rid not in rotated}
    return {**box_agreement(measured), "items": len(measured), "items_with_rotated_boxes": len(rotated),
            "boxes": sum(len(ms) for by in measured.values() for ms in by.values())}


def ratings_of(rows: list[dict], entity: bool) -> list[dict]:
    """The rows that are ratings: not skipped, not an adjudication, with an answer."""
    return [r for r in rows if not r["cancelled"] and not is_adjudication(r) and r.get("record_id")
            and (r.get("label") is not None or entity)]


def _majority(labels: list[str]) -> tuple[str, float]:
    label, n = Counter(labels).most_common(1)[0]
    return label, n / len(labels)


def alerts_for(stats: dict | None, spans: dict | None, project: ProjectConfig) -> list[dict]:
    """The thresholds of the config that the night's figures cross."""
    th, ag = project.spec.thresholds, project.spec.agreement
    out = []
    if stats is None or (stats.get("n_items_pairable") or 0) < ag.min_items_for_alert:
        return out  # no figure, or too few shared items for one to mean anything
    kmean = stats.get("cohen_kappa_mean")
    if kmean is not None and kmean < th.min_cohen_kappa:
        out.append({"rule": "min_cohen_kappa", "value": kmean, "threshold": th.min_cohen_kappa, "annotator": None,
                    "message": f"mean pairwise Cohen's kappa {kmean:.2f} is below {th.min_cohen_kappa:.2f}"})
    gold = (stats.get("gold") or {}).get("accuracy")
    if gold is not None and gold < th.min_gold_accuracy:
        out.append({"rule": "min_gold_accuracy", "value": gold, "threshold": th.min_gold_accuracy, "annotator": None,
                    "message": f"gold accuracy {gold:.2f} is below {th.min_gold_accuracy:.2f}"})
    for row in stats.get("annotators") or []:
        who = row["annotator_id"]
        acc = row.get("gold_accuracy")
        if acc is not None and row.get("gold_n", 0) >= ag.min_annotator_gold and acc < th.min_gold_accuracy:
            out.append({"rule": "annotator_gold_accuracy", "value": acc, "threshold": th.min_gold_accuracy,
                        "annotator": who, "message": f"{who}: gold accuracy {acc:.2f} on {row['gold_n']} gold "
                                                     f"tasks is below {th.min_gold_accuracy:.2f}"})
        k = row.get("mean_pairwise_kappa")
        if k is not None and kmean is not None and k < kmean - th.annotator_kappa_margin:
            out.append({"rule": "annotator_below_team", "value": k, "threshold": kmean - th.annotator_kappa_margin,
                        "annotator": who, "message": f"{who}: mean kappa with the others {k:.2f} is more than "
                                                     f"{th.annotator_kappa_margin:.2f} below the team's {kmean:.2f}"})
    return out


def compute(store: S3Store, project: ProjectConfig, run_id: str) -> dict:
    """Statistics, alerts, adjudication candidates, report and manifest of the run (after its pull)."""
    import numpy as np

    from labelops.agreement import report as html_report
    from labelops.agreement.spans import span_agreement
    from labelops.agreement.stats import Ratings, agreement_report

    paths = Paths(project, run_id)
    pulled = store.get_json(paths.pull)
    if pulled is None:
        raise RuntimeError(f"run {run_id} has no pull record at {store.uri(paths.pull)}: pull first")
    entity = project.spec.task == "intent_entities"
    boxed = box_project(project)
    current = current_annotations(store, paths)
    if pulled["full"]:
        window = current
    else:
        # items whose ratings changed tonight (an adjudicator's answer alone does not put an item back in)
        touched = {r["record_id"] for r in read_rows(store, snapshot_keys(store, paths, {paths.run}))
                   if not is_adjudication(r)}
        window = [r for r in current if r["record_id"] in touched]
    ratings = ratings_of(window, entity or boxed)  # a box answer may have no class
    labelled = [r for r in ratings if r.get("label") is not None]
    gold = gold_answers(store, project)
    stats, reason = None, None
    if labelled:
        r = Ratings.from_records([x["record_id"] for x in labelled], [x["annotator"] for x in labelled],
                                 [x["label"] for x in labelled], duplicates="last")
        if r.n_annotators < 2:
            reason = f"only one annotator ({r.annotator_ids[0]}) in the window"
        elif r.n_items_pairable == 0:
            reason = "no item was rated by two annotators in the window"
        else:
            lead = np.array([x["lead_time_s"] if x["lead_time_s"] is not None else np.nan for x in labelled])
            stats = agreement_report(r, gold={k: v["label"] for k, v in gold.items() if v.get("label") is not None},
                                     lead_time=lead)
    else:
        reason = "no annotation with a label in the window"
    spans = None
    if entity and ratings:
        by_item: dict[str, dict[str, list]] = defaultdict(dict)
        for x in sorted(ratings, key=lambda x: x["updated_at"] or ""):
            by_item[x["record_id"]][x["annotator"]] = json.loads(x["spans"] or "[]")
        spans = span_agreement(by_item)
    boxes = box_figures(ratings) if boxed and ratings else None

    # items whose annotators disagree: the worst first
    per_item: dict[str, dict[str, dict]] = defaultdict(dict)
    for x in sorted(ratings, key=lambda x: x["updated_at"] or ""):
        per_item[x["record_id"]][x["annotator"]] = x
    ag = project.spec.agreement
    images = dispatched_images(store, project) if project.spec.modality == "image" else None
    disputed = []
    for rid, by_ann in per_item.items():
        if len(by_ann) < 2:
            continue
        labels = {a: x["label"] for a, x in by_ann.items()}
        share = _majority([str(v) for v in labels.values()])[1]
        span_sets = {json.dumps(json.loads(x["spans"] or "[]"), sort_keys=True) for x in by_ann.values()}
        if share < ag.adjudicate_below or (entity and len(span_sets) > 1):
            if images is not None:  # an image item is shown by its s3:// URI
                text = (images.get(rid) or {}).get("image")
            else:
                text = next((x.get("text") for x in by_ann.values() if x.get("text")), None)
            disputed.append({"record_id": rid, "text": text, "labels": labels, "agreement": round(share, 4),
                             "spans": {a: json.loads(x["spans"] or "[]") for a, x in by_ann.items()} if entity else None,
                             "gold": rid in gold})
    disputed.sort(key=lambda d: (d["agreement"], d["record_id"]))
    alerts = alerts_for(stats, spans, project)
    earlier = history(store, project, exclude=run_id)[-ag.history_runs:]
    summary = {
        "project": project.name, "run_id": run_id, "generated_at": now(),
        "period": {"since": pulled["since"], "until": pulled["pulled_at"]},
        "counts": {"annotations_pulled": pulled["rows"], "annotations_total": len(current),
                   "annotations_in_window": len(window), "ratings_in_window": len(ratings),
                   "tasks_annotated": len({x["task_key"] for x in window}), "items_in_window": len(per_item),
                   "annotators": len({x["annotator"] for x in ratings}),
                   "cancelled": sum(bool(x["cancelled"]) for x in window)},
        "stats": stats, "stats_reason": reason, "spans": spans, "boxes": boxes,
        "thresholds": {"min_cohen_kappa": project.spec.thresholds.min_cohen_kappa,
                       "min_gold_accuracy": project.spec.thresholds.min_gold_accuracy,
                       "annotator_margin": project.spec.thresholds.annotator_kappa_margin},
        "alerts": alerts,
        "worst_items": disputed[: ag.worst_items],
        "adjudication": {"candidates": len(disputed), "queue": "expert"},
        "drift": _drift(store, project),
        "report_uri": store.uri(paths.report),
    }
    entry = {"run_id": run_id, "generated_at": summary["generated_at"], "annotations": len(window),
             **{k: (stats or {}).get(k) for k in ("cohen_kappa_mean", "fleiss_kappa", "krippendorff_alpha_nominal",
                                                   "percent_agreement")},
             "gold_accuracy": ((stats or {}).get("gold") or {}).get("accuracy")}
    trend = [*earlier, entry]
    summary["history_entry"] = entry
    charts = html_report.charts(summary, trend)
    store.put(paths.report, html_report.render_html(summary, trend, charts).encode("utf-8"), "text/html")
    store.put_json(paths.summary, {**summary, "candidates": disputed})
    for name, png in charts.items():
        store.put(f"{paths.reports}{paths.run}.{name}.png", png, "image/png")
    manifest = {
        "project": project.name, "run_id": run_id, "created_at": summary["generated_at"],
        "annotations_pulled": pulled["rows"], "annotations_total": len(current),
        "annotations_in_window": len(window), "items_in_window": len(per_item),
        "annotators": summary["counts"]["annotators"], "alerts": len(alerts),
        "adjudication_candidates": len(disputed), "report_uri": store.uri(paths.report),
        "summary_uri": store.uri(paths.summary), "snapshot_uri": pulled["snapshot_uri"],
        "since": pulled["since"], "watermark": pulled["watermark"], "full": pulled["full"],
        "cohen_kappa_mean": entry["cohen_kappa_mean"], "gold_accuracy": entry["gold_accuracy"],
        "manifest_uri": store.uri(paths.manifest),
    }
    store.put_json(paths.manifest, manifest)
    return manifest


def history(store: S3Store, project: ProjectConfig, *, exclude: str | None = None) -> list[dict]:
    """The trend entries of every night's summary (but run `exclude`'s), oldest first."""
    paths = Paths(project, exclude or "x")
    entries = []
    for obj in store.list(paths.reports):
        if obj["key"].endswith(".json") and (exclude is None or obj["key"] != paths.summary):
            entry = (store.get_json(obj["key"]) or {}).get("history_entry")
            if entry:
                entries.append(entry)
    return sorted(entries, key=lambda e: e["generated_at"])


def _drift(store: S3Store, project: ProjectConfig) -> dict | None:
    """The model's confidence on the last dispatched pool (from the newest dispatch manifest with a pool)."""
    from labelops.dispatch.pipeline import finished_manifests

    newest = [m for m in finished_manifests(store, project) if (m.get("drift") or {}).get("records")]
    if not newest:
        return None
    m = newest[-1]
    return {**m["drift"], "model_version": m.get("model_version"), "dispatch_run": m["run_id"]}


# -- alerts -------------------------------------------------------------------------------------------------------


def pending_alert(store: S3Store, project: ProjectConfig, run_id: str) -> dict | None:
    """The run's alert email when one is due and not sent yet: {subject, text, html, chart (png bytes or None),
    message_id}. None when no threshold was crossed or the alert was sent already."""
    from labelops.agreement import report as html_report

    paths = Paths(project, run_id)
    if store.get_json(paths.alert) is not None:
        return None
    summary = store.get_json(paths.summary)
    if summary is None or not summary["alerts"]:
        return None
    chart = store.get_or_none(f"{paths.reports}{paths.run}.trend.png")
    # the SMTP hook names an attached file's part <file name>: the DAG attaches the chart as trend.png
    subject, text, html = html_report.email_content(summary, summary["report_uri"],
                                                    chart_cid="trend.png" if chart else None)
    digest = __import__("hashlib").sha256(f"{project.name}\x00{paths.run}".encode()).hexdigest()[:24]
    return {"subject": subject, "text": text, "html": html, "chart": chart,
            "message_id": f"<agreement-{digest}@labelops>", "to": list(project.spec.alerts.emails),
            "alerts": len(summary["alerts"])}


def mark_alerted(store: S3Store, project: ProjectConfig, run_id: str, alert: dict) -> None:
    store.put_json(Paths(project, run_id).alert, {"sent_at": now(), "to": alert["to"], "subject": alert["subject"],
                                                  "message_id": alert["message_id"]})


# -- adjudication -------------------------------------------------------------------------------------------------


def adjudicated_records(store: S3Store, paths: Paths) -> set[str]:
    done = set()
    for obj in store.list(paths.adjudicated_prefix):
        if obj["key"] != paths.adjudicated:
            done.update(json.loads(line)["record_id"] for line in store.get(obj["key"]).splitlines())
    return done


def adjudication_tasks(store: S3Store, project: ProjectConfig, run_id: str) -> list:
    """The run's disputed items not sent to adjudication by an earlier run, as expert-queue tasks whose
    predictions are the competing answers (one per distinct answer, scored by its share)."""
    from labelops.dispatch.tasks import DispatchTask, Prediction, Span

    paths = Paths(project, run_id)
    summary = store.get_json(paths.summary)
    if summary is None:
        raise RuntimeError(f"run {run_id} has no summary: compute first")
    done = adjudicated_records(store, paths)
    tasks = []
    for item in summary["candidates"]:
        if item["record_id"] in done or item["gold"] or not item.get("text"):  # gold has its answer already
            continue
        by_answer: dict[str, list[str]] = defaultdict(list)
        answer_of = {}
        for annotator, label in sorted(item["labels"].items()):
            spans = (item.get("spans") or {}).get(annotator) or []
            key = json.dumps([label, spans], sort_keys=True)
            by_answer[key].append(annotator)
            answer_of[key] = (label, spans)
        n = len(item["labels"])
        alternatives = tuple(
            Prediction(model_version=f"answer of {', '.join(who)}", label=answer_of[key][0], score=len(who) / n,
                       spans=tuple(Span(s["start"], s["end"], s["label"], s.get("text") or "")
                                   for s in answer_of[key][1]))
            for key, who in sorted(by_answer.items(), key=lambda kv: (-len(kv[1]), kv[0])))
        note = "Adjudicate: annotators disagree. " + "; ".join(
            f"{answer_of[k][0]} ({len(w)}/{n})" for k, w in sorted(by_answer.items(), key=lambda kv: -len(kv[1])))
        image = project.spec.modality == "image"
        tasks.append(DispatchTask(key=f"{project.name}{ADJUDICATION_MARK}{item['record_id']}",
                                  record_id=item["record_id"], text=None if image else item["text"],
                                  image_url=item["text"] if image else None, route="expert",
                                  selection="adjudication", alternatives=alternatives, note=note))
        if len(tasks) >= project.spec.agreement.max_adjudications_per_run:
            break
    return tasks


def adjudicate(store: S3Store, project: ProjectConfig, run_id: str, platform) -> dict:
    """Send the run's disputed items to the expert queue, each item once (`platform.dispatch` as for dispatch)."""
    from labelops.dispatch.pipeline import S3Ledger

    paths = Paths(project, run_id)
    existing = store.get_or_none(paths.adjudicated)
    if existing is not None:
        rows = [json.loads(line) for line in existing.splitlines()]
        return {"sent": 0, "already_sent": len(rows), "adjudicated_uri": store.uri(paths.adjudicated)}
    tasks = adjudication_tasks(store, project, run_id)
    if not tasks:
        return {"sent": 0, "already_sent": 0, "adjudicated_uri": None}
    result = platform.dispatch(tasks, S3Ledger(store, paths.ledger), None)
    ids = result.get("task_ids", {})
    body = "".join(json.dumps({"record_id": t.record_id, "key": t.key, "task_id": ids.get(t.key),
                               "answers": [p.label for p in t.alternatives]}) + "\n" for t in tasks)
    store.put(paths.adjudicated, body.encode(), "application/x-ndjson")
    return {"sent": result["created"], "already_sent": result["already_present"],
            "adjudicated_uri": store.uri(paths.adjudicated)}
