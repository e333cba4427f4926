"""Pulling annotations back from the annotation platform: one row per annotation, the same columns for every
platform (`COLUMNS`), landed by the agreement pipeline as one Parquet snapshot per run.

Label Studio, fast and incremental. Listing tasks page by page through the API serialises every task one by one
(~270 tasks/s measured with annotations); the synchronous export times out on big projects. Here each queue
project is read through **export snapshots**, cut into task-id ranges (``chunk_tasks`` tasks each, so no single
request runs long enough to time out and memory stays bounded), each range selected by a temporary Data Manager
view whose filters are the id range and, for an incremental pull, ``tasks:updated_at > since`` (Label Studio
bumps a task's ``updated_at`` when an annotation of it is created or updated). Snapshots and views are deleted
after they are read. Predictions and drafts are serialised as ids only. Up to ``workers`` snapshots are built at
once (in order of id range, rows yielded in that order): Label Studio serialises ~1 ms per task in one process,
so a Label Studio served by several worker processes (the local stack's tools/ls_serve.py, Label Studio's Docker
image) builds ranges in parallel. Measured: see README (bench_agreement_pull).

The watermark of a pull is the largest task ``updated_at`` it saw (the server's clock, not ours); the next pull
asks for tasks updated after the watermark minus a margin, and rows seen twice are merged by annotation id.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

log = logging.getLogger(__name__)

# The annotation row: every platform's pull yields dicts with exactly these keys.
COLUMNS = ("platform", "queue", "project_id", "task_id", "task_key", "record_id", "annotation_id", "annotator",
           "label", "spans", "created_at", "updated_at", "lead_time_s", "cancelled")
# optional: "text" (the annotated text, for the report's worst items and adjudication)
# How far before the last watermark an incremental pull starts again (clock skew between the server's
# transaction start and its commit); rows seen twice are merged by annotation id.
WATERMARK_MARGIN = timedelta(minutes=5)
KEY_FIELD = "labelops_key"


def utc(ts: Any) -> datetime | None:
    """A timestamp (ISO-8601 with 'Z', '+00:00' or none = UTC; a ' ' or 'T' separator; or a datetime) in UTC."""
    if ts in (None, ""):
        return None
    dt = ts if isinstance(ts, datetime) else datetime.fromisoformat(
        str(ts).strip().replace("Z", "+00:00").replace(" ", "T"))
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def iso(ts: Any) -> str | None:
    """A timestamp as every pull writes it: '2026-11-24T05:06:19.518659+00:00'."""
    dt = utc(ts)
    return dt.isoformat() if dt is not None else None


def since_with_margin(watermark: str | None) -> str | None:
    if watermark is None:
        return None
    return iso(datetime.fromisoformat(watermark) - WATERMARK_MARGIN)


def ls_result(result: list[dict], choices: str | None, labels: str | None,
              rectangles: str | None = None) -> tuple[str | None, list[dict]]:
    """(class label, marks) of a Label Studio annotation result, for the configured control names. The marks are
    entity spans {start, end, label, text} (a <Labels> control), or, for a <RectangleLabels> control (bounding-box
    projects), boxes {x, y, width, height, label} in percent of the image (plus the image's original_width and
    original_height in pixels when given, and rotation when not 0)."""
    label, spans = None, []
    for item in result or []:
        value = item.get("value") or {}
        if item.get("type") == "choices" and (choices is None or item.get("from_name") == choices):
            picked = value.get("choices") or []
            if picked:
                label = str(picked[0])
        elif item.get("type") == "labels" and (labels is None or item.get("from_name") == labels):
            names = value.get("labels") or []
            if names and value.get("start") is not None and value.get("end") is not None:
                spans.append({"start": int(value["start"]), "end": int(value["end"]), "label": str(names[0]),
                              "text": value.get("text")})
        elif (item.get("type") == "rectanglelabels" and rectangles is not None
              and item.get("from_name") == rectangles):
            names = value.get("rectanglelabels") or []
            try:
                box = {k: float(value[k]) for k in ("x", "y", "width", "height")}
            except (KeyError, TypeError, ValueError):
                continue  # not a rectangle (Label Studio always writes all four)
            if names:
                size = {k: int(item[k]) for k in ("original_width", "original_height")
                        if isinstance(item.get(k), (int, float)) and item[k] > 0}
                spans.append({**box, "label": str(names[0]), **size,
                              **({"rotation": float(value["rotation"])} if value.get("rotation") else {})})
    spans.sort(key=lambda s: (s.get("start", -1), s.get("end", -1), s.get("x", 0.0), s.get("y", 0.0), s["label"],
                              s.get("width", 0.0), s.get("height", 0.0)))
    return label, spans


def ls_rows(task: dict, *, queue: str, project_id: int, users: dict[int, str], choices: str | None,
            labels: str | None, text_field: str = "text", rectangles: str | None = None) -> Iterator[dict]:
    """The annotation rows of one exported Label Studio task."""
    data = task.get("data") or {}
    for ann in task.get("annotations") or []:
        user = ann.get("completed_by")
        if isinstance(user, dict):  # serialised as an object
            user = user.get("id")
        label, spans = ls_result(ann.get("result") or [], choices, labels, rectangles)
        lead = ann.get("lead_time")
        yield {
            "platform": "label_studio", "queue": queue, "project_id": str(project_id), "task_id": str(task["id"]),
            "task_key": data.get(KEY_FIELD), "record_id": data.get("record_id"), "annotation_id": str(ann["id"]),
            "annotator": users.get(user, f"user:{user}"), "label": label, "spans": json.dumps(spans),
            "created_at": iso(ann.get("created_at")), "updated_at": iso(ann.get("updated_at") or ann.get("created_at")),
            "lead_time_s": float(lead) if lead is not None else None, "cancelled": bool(ann.get("was_cancelled")),
            "text": data.get(text_field) if isinstance(data.get(text_field), str) else None,
        }


EXPORT_TITLE, VIEW_TITLE = "labelops pull", "labelops pull (temporary)"


class LabelStudioPull:
    """Reads a Label Studio project's annotations through id-range export snapshots (see the module doc)."""

    def __init__(self, client, *, choices: str | None, labels: str | None, text_field: str = "text",
                 chunk_tasks: int = 5_000, workers: int = 2, rectangles: str | None = None) -> None:
        self.client, self.choices, self.labels, self.chunk_tasks = client, choices, labels, chunk_tasks
        self.rectangles = rectangles
        self.workers = max(1, int(workers))
        self.text_field = text_field
        self._users: dict[int, str] | None = None
        self.watermark: str | None = None  # the largest task updated_at seen
        self.snapshots = 0
        self.ignored = 0  # tasks a snapshot returned outside its filters (should stay 0)

    @property
    def users(self) -> dict[int, str]:
        if self._users is None:
            self._users = {u.id: (u.email or u.username or f"user:{u.id}") for u in self.client.users.list()}
        return self._users

    def _edge_id(self, pid: int, ordering: str) -> int | None:
        page = self.client.tasks.list(project=pid, page_size=1, fields="task_only",
                                      query=json.dumps({"ordering": [ordering]}))
        items = list(page.items or [])
        return int(items[0].id) if items else None

    def sweep(self, pid: int) -> int:
        """Delete the temporary views and export snapshots an earlier pull of this project left behind: a create
        whose answer was lost (the server made it, we never heard its id) cannot be deleted by that pull. Pulls of
        one project never overlap (the agreement DAG runs one at a time), so every one found is an orphan."""
        n = 0
        for export in self.client.projects.exports.list(id=pid):
            if getattr(export, "title", None) == EXPORT_TITLE:
                self._quietly(self.client.projects.exports.delete, id=pid, export_pk=export.id)
                n += 1
        for view in self.client.views.list(project=pid):
            if (getattr(view, "data", None) or {}).get("title") == VIEW_TITLE:
                self._quietly(self.client.views.delete, id=view.id)
                n += 1
        return n

    def _snapshot(self, pid: int, filters: list[dict]) -> list[dict]:
        view = self.client.views.create(project=pid, data={
            "title": VIEW_TITLE, "filters": {"conjunction": "and", "items": filters}})
        export = None
        try:
            export = self.client.projects.exports.create(
                id=pid, title=EXPORT_TITLE, task_filter_options={"view": view.id, "only_with_annotations": True},
                serialization_options={"predictions": {"only_id": True}, "drafts": {"only_id": True}})
            if export.status != "completed":  # an instance with background jobs: wait for it
                export = self._wait(pid, export.id)
            raw = b"".join(self.client.projects.exports.download(id=pid, export_pk=export.id, export_type="JSON"))
            return json.loads(raw)
        finally:
            if export is not None:
                self._quietly(self.client.projects.exports.delete, id=pid, export_pk=export.id)
            self._quietly(self.client.views.delete, id=view.id)

    def _wait(self, pid: int, export_pk: int, timeout: float = 1800, poll: float = 1.0):
        import time

        deadline = time.monotonic() + timeout
        while True:
            export = self.client.projects.exports.get(id=pid, export_pk=export_pk)
            if export.status == "completed":
                return export
            if export.status == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio export {export_pk} of project {pid} ended {export.status!r}")
            time.sleep(poll)

    @staticmethod
    def _quietly(fn, **kwargs) -> None:
        try:
            fn(**kwargs)
        except Exception as exc:  # noqa: BLE001  (cleanup: the pull itself succeeded)
            log.warning("could not clean up after the pull (%s): %s", fn.__qualname__, type(exc).__name__)

    def annotations(self, queue: str, pid: int, since: str | None = None) -> Iterator[dict]:
        """Every annotation of the tasks updated after `since` (all tasks when None), chunk by chunk."""
        if self.sweep(pid):
            log.info("deleted temporary views and snapshots an earlier pull of project %s left behind", pid)
        lo, hi = self._edge_id(pid, "tasks:id"), self._edge_id(pid, "-tasks:id")
        if lo is None:
            return
        users = self.users  # looked up once, before the snapshot threads start
        for start, tasks in self._ranges(pid, range(lo, hi + 1, self.chunk_tasks), since):
            self.snapshots += 1
            for task in tasks:
                updated = iso(task.get("updated_at"))
                # the filters again, here: a filter the server could not parse would return every task
                if not start <= int(task["id"]) < start + self.chunk_tasks or (
                        since is not None and updated is not None and updated <= since):
                    self.ignored += 1
                    continue
                if updated and (self.watermark is None or updated > self.watermark):
                    self.watermark = updated
                for ann in task.get("annotations") or []:
                    ann_updated = iso(ann.get("updated_at"))
                    if ann_updated and (self.watermark is None or ann_updated > self.watermark):
                        self.watermark = ann_updated
                yield from ls_rows(task, queue=queue, project_id=pid, users=users, choices=self.choices,
                                   labels=self.labels, text_field=self.text_field, rectangles=self.rectangles)

    def _filters(self, start: int, since: str | None) -> list[dict]:
        filters = [
            {"filter": "filter:tasks:id", "operator": "greater_or_equal", "type": "Number", "value": start},
            {"filter": "filter:tasks:id", "operator": "less", "type": "Number", "value": start + self.chunk_tasks},
        ]
        if since is not None:  # the Data Manager parses only this form; any other is silently ignored
            value = datetime.fromisoformat(since).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            filters.append({"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
                            "value": value})
        return filters

    def _ranges(self, pid: int, starts: range, since: str | None) -> Iterator[tuple[int, list[dict]]]:
        """(start, tasks) of every id range, in order, with `workers` snapshots being built while the caller reads
        the previous one (a Label Studio served by several processes builds them in parallel; at most workers + 1
        ranges' tasks are in memory). The first failure ends the pull; snapshots in flight still delete their
        view and export."""
        pending: deque = deque()
        todo = iter(starts)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ls-pull") as pool:
            def submit() -> None:
                start = next(todo, None)
                if start is not None:
                    pending.append((start, pool.submit(self._snapshot, pid, self._filters(start, since))))

            try:
                for _ in range(self.workers):
                    submit()
                while pending:
                    first, future = pending.popleft()
                    submit()  # keep `workers` snapshots building while this one is read
                    yield first, future.result()
            finally:
                for _, future in pending:
                    future.cancel()


class LabelStudioSource:
    """Every queue project of a labelops project (queue -> Label Studio project id, as dispatch recorded them)."""

    def __init__(self, client, queues: dict[str, int], names, chunk_tasks: int = 5_000, workers: int = 2) -> None:
        self.queues = dict(sorted(queues.items()))
        self.reader = LabelStudioPull(client, choices=names.choices, labels=names.labels, text_field=names.data_key,
                                      chunk_tasks=chunk_tasks, workers=workers, rectangles=names.rectangles)

    @property
    def watermark(self) -> str | None:
        return self.reader.watermark

    def annotations(self, since: str | None) -> Iterator[dict]:
        for queue, pid in self.queues.items():
            yield from self.reader.annotations(queue, pid, since)
