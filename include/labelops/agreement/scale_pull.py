"""Pulling annotations back from Scale AI: one row per finished Scale task, in the shared annotation row schema
(`COLUMNS`, the same keys as the Label Studio pull).

What is read. Dispatch (`labelops.dispatch.scale`) creates one Scale task per annotator copy in the project
``<project>-<queue>``: ``unique_id`` is the labelops task key, or ``<key>#1`` .. ``<key>#N`` for the N copies of an
overlap task; ``metadata`` holds ``labelops_key``, ``record_id``, ``route`` (the queue) and ``copy``. A Scale task
has exactly one answer (its ``response``), so a row's ``annotation_id`` is the Scale ``task_id``.

Who annotated. Scale's public v1 task API does not name the worker who did a task. The row's ``annotator`` is
therefore ``scale:copy-<n>``, n taken from the copy number (metadata ``copy``, else the ``#n`` suffix of the
unique_id; ``scale:copy-1`` for a task without copies). It is a *slot*, not a person: every single-copy task of a
project is ``scale:copy-1``, and Scale does not promise that copies #1 and #2 of a task go to different people.
Agreement statistics that assume fixed raters (Cohen's kappa per pair, per-annotator summaries) must read it as
such; Fleiss' kappa and Krippendorff's alpha do not need the raters to be the same people across items.

Fast and incremental. Tasks are listed with ``GET /v1/tasks`` (the client's ``tasks(...)``) filtered by project,
status and ``updated_after`` (Scale's filter is inclusive: ``updated_at >= since``), 100 per page (Scale's
maximum), following ``next_token``; never one request per task. Three listings per project: ``completed``,
``canceled`` and ``error`` (pending tasks, the bulk of a project, are never listed; a 400 on the ``error`` listing,
a status filter the v1 client does not document, is logged and that listing skipped). ``updated_after`` rather than
``completed_after``: a completed task whose response is changed later (a customer-audit fix) has a later
``updated_at`` but the same ``completed_at``; it is pulled again and its row replaces the earlier one (same
``annotation_id``). Canceled and errored tasks have no ``completed_at`` at all. ``ScalePull.watermark`` is the
largest task ``updated_at`` seen (Scale's clock): the next pull starts there, minus a margin, as for Label Studio.
A listing page that fails with 408 / 429 / 5xx or no answer is asked again (same ``next_token``) with backoff.

Responses. ``categorization`` (what dispatch creates for intent and image projects): ``{"category": "<label>"}``
(a one-element list is accepted; with taxonomies ``{"taxonomies": {<name>: <label>}}``, `label_field` names the
taxonomy). ``namedentityrecognition`` (entity projects): ``{"annotations": [{"start", "end", "label", "text",
...}], "relationships": [...]}``; offsets are character offsets into the task's text, end exclusive (as dispatch
sends its pre-labels); relationships are ignored. ``textcollection`` (not created by dispatch; read for projects
moved to it): ``{"annotations": {<field_id>: value}}`` with `label_field` the field id. A span's ``text`` is taken
from the task's own text at ``[start:end]``.

Decided: a response that does not parse is never fatal and never guessed at. An unknown category (not among the
task's categories, or `labels` when given), several categories, a missing field or an unknown task type give
``label=None`` (and the spans that are valid); a span with an unknown label or offsets outside the text is dropped.
Each such task is logged at WARNING (task id and what was wrong, never task text) and kept in
``ScalePull.problems`` (task_id -> reason). The row stays ``cancelled=False``: it is a completed task, and the
agreement stage sees a missing label, exactly as for a Label Studio annotation with no choice.

``cancelled=True`` for tasks that are ``canceled`` or ``error`` (not ratings; label None, spans "[]").
``lead_time_s`` is ``completed_at - created_at``: time in Scale's queue, not work time (Scale does not report that).
Tasks without labelops metadata (no ``record_id``, or no key) are skipped and counted in ``ScalePull.skipped``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from labelops.agreement.pull import iso
from labelops.agreement.pull import utc as _dt
from labelops.dispatch.scale import describe_error, retryable, status_of

log = logging.getLogger(__name__)

PLATFORM = "scale"
# The annotation row (the same keys, in the same order, as labelops.agreement.pull.COLUMNS).
COLUMNS = ("platform", "queue", "project_id", "task_id", "task_key", "record_id", "annotation_id", "annotator",
           "label", "spans", "created_at", "updated_at", "lead_time_s", "cancelled")
PAGE = 100  # Scale's maximum page size
STATUSES = ("completed", "canceled", "error")  # the task statuses listed; pending tasks are not
NOT_RATINGS = ("canceled", "error")
ROUTES = ("verify", "expert", "overlap", "main")
CATEGORIZATION, NER, TEXTCOLLECTION = "categorization", "namedentityrecognition", "textcollection"


class ScalePullError(RuntimeError):
    """The pull from Scale failed; the message names the project and the HTTP status, never the API key. `code`
    is the HTTP status (None when there was no answer)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


# ---- time ------------------------------------------------------------------------------------------------------


def scale_time(ts: str | datetime) -> str:
    """A timestamp as Scale's v1 list filters take it: 'YYYY-MM-DD HH:MM:SS.mmmmmm', UTC."""
    dt = _dt(ts)
    if dt is None:
        raise ValueError("a timestamp is needed")
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")


# ---- responses -------------------------------------------------------------------------------------------------


def _label_names(labels: Iterable[Any]) -> list[str]:
    """Entity label names of an NER task's ``labels`` param (strings, or objects with a name and children)."""
    names: list[str] = []
    for label in labels or ():
        if isinstance(label, str):
            names.append(label)
        elif isinstance(label, Mapping) and isinstance(label.get("name"), str):
            names.append(label["name"])
            names.extend(_label_names(label.get("children") or ()))
    return names


def _one(value: Any) -> tuple[str | None, str | None]:
    """(label, problem) of a category value: a string, or a list of exactly one string."""
    if isinstance(value, list):
        if len(value) != 1:
            return None, f"{len(value)} categories where one was expected"
        value = value[0]
    if not isinstance(value, str) or not value:
        return None, "no category in the response"
    return value, None


def _check(label: str | None, allowed: Iterable[str] | None) -> tuple[str | None, str | None]:
    if label is None or allowed is None:
        return label, None
    allowed = set(allowed)
    if allowed and label not in allowed:
        return None, f"unknown category {label[:80]!r}"
    return label, None


def parse_response(task_type: str, params: Mapping | None, response: Any, *, labels: Iterable[str] | None = None,
                   entities: Iterable[str] | None = None,
                   label_field: str | None = None) -> tuple[str | None, list[dict], list[str]]:
    """(label, spans, problems) of one completed Scale task's `response` (see the module docstring).

    `labels` / `entities`: the accepted categories / entity labels; None means the task's own (``params``
    ``categories`` / ``labels``, or a textcollection field's choices). Spans are ``{"start", "end", "label",
    "text"}`` sorted by (start, end, label). `problems` is empty when the response parsed cleanly."""
    params = params or {}
    problems: list[str] = []
    if not isinstance(response, Mapping):
        return None, [], ["the task has no response object"]
    if task_type == CATEGORIZATION:
        if label_field is not None and isinstance(response.get("taxonomies"), Mapping):
            value = response["taxonomies"].get(label_field)
        elif "category" in response:
            value = response.get("category")
        elif isinstance(response.get("taxonomies"), Mapping) and len(response["taxonomies"]) == 1:
            value = next(iter(response["taxonomies"].values()))
        else:
            value = None
        label, problem = _one(value)
        if problem is None:
            accepted = labels if labels is not None else params.get("categories")
            if accepted is None and label_field is not None and isinstance(params.get("taxonomies"), Mapping):
                accepted = (params["taxonomies"].get(label_field) or {}).get("choices")
            label, problem = _check(label, accepted)
        return label, [], [problem] if problem else []
    if task_type == TEXTCOLLECTION:
        fields = response.get("annotations")
        if label_field is None:
            return None, [], ["a textcollection task needs label_field (the field id of the label)"]
        if not isinstance(fields, Mapping) or label_field not in fields:
            return None, [], [f"no field {label_field!r} in the response"]
        label, problem = _one(fields[label_field])
        if problem is None:
            accepted = labels
            if accepted is None:
                for f in params.get("fields") or ():
                    if isinstance(f, Mapping) and f.get("field_id") == label_field and f.get("choices"):
                        accepted = [c.get("value") if isinstance(c, Mapping) else c for c in f["choices"]]
            label, problem = _check(label, accepted)
        return label, [], [problem] if problem else []
    if task_type == NER:
        anns = response.get("annotations")
        if not isinstance(anns, list):
            return None, [], ["no annotations list in the response"]
        text = params.get("text") if isinstance(params.get("text"), str) else None
        names = set(entities) if entities is not None else set(_label_names(params.get("labels") or ()))
        spans, dropped, mismatched = [], 0, 0
        for ann in anns:
            if not isinstance(ann, Mapping):
                dropped += 1
                continue
            start, end, label = ann.get("start"), ann.get("end"), ann.get("label")
            if (not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool)
                    or isinstance(end, bool) or not 0 <= start < end or (text is not None and end > len(text))
                    or not isinstance(label, str) or (names and label not in names)):
                dropped += 1
                continue
            span_text = text[start:end] if text is not None else ann.get("text")
            if text is not None and isinstance(ann.get("text"), str) and ann["text"] != span_text:
                mismatched += 1
            spans.append({"start": start, "end": end, "label": label, "text": span_text})
        if dropped:
            problems.append(f"{dropped} of {len(anns)} spans dropped (unknown label or offsets outside the text)")
        if mismatched:
            problems.append(f"{mismatched} spans whose text differs from the task text at their offsets")
        spans.sort(key=lambda s: (s["start"], s["end"], s["label"]))
        return None, spans, problems
    return None, [], [f"task type {task_type!r} is not read"]


# ---- identity --------------------------------------------------------------------------------------------------


def split_unique_id(unique_id: str | None) -> tuple[str | None, int | None]:
    """('<key>', n) of an overlap copy's unique_id '<key>#<n>'; (unique_id, None) otherwise."""
    if not unique_id:
        return None, None
    key, sep, n = unique_id.rpartition("#")
    if sep and key and n.isdigit() and int(n) >= 1:
        return key, int(n)
    return unique_id, None


def _copy_of(meta: Mapping, unique_id: str | None, key: str) -> int:
    copy = meta.get("copy")
    if isinstance(copy, int) and not isinstance(copy, bool) and copy >= 1:
        return copy
    base, n = split_unique_id(unique_id)
    return n if n is not None and base == key else 1


def _queue_of(project: str | None) -> str | None:
    suffix = (project or "").rpartition("-")[2]
    return suffix if suffix in ROUTES else None


# ---- the pull --------------------------------------------------------------------------------------------------


class ScalePull:
    """Reads the finished tasks of Scale projects as annotation rows (see the module docstring).

    `client`: a ``scaleapi.ScaleClient``. `labels` / `entities`: the accepted categories / entity labels (None:
    each task's own). `label_field`: the taxonomy / textcollection field holding the label, where there is one.
    `request_timeout` (seconds) is given to the client (it has none; see ``dispatch.scale.set_request_timeout``).
    After a pull: ``watermark`` (largest task updated_at seen, ISO UTC), ``pages`` (listing requests answered),
    ``skipped`` (tasks without labelops metadata), ``problems`` (task_id -> why its response did not parse)."""

    def __init__(self, client, *, labels: Iterable[str] | None = None, entities: Iterable[str] | None = None,
                 label_field: str | None = None, page_size: int = PAGE, request_timeout: float | None = 60.0,
                 max_attempts: int = 5, backoff: float = 1.0, max_backoff: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 1 <= page_size <= PAGE:
            raise ValueError(f"page_size must be between 1 and {PAGE}")
        self.client = client
        self.labels = tuple(labels) if labels is not None else None
        self.entities = tuple(entities) if entities is not None else None
        self.label_field, self.page_size = label_field, page_size
        self.max_attempts, self.backoff, self.max_backoff, self.sleep = max_attempts, backoff, max_backoff, sleep
        if request_timeout is not None:
            from labelops.dispatch.scale import set_request_timeout

            if not set_request_timeout(client, request_timeout):
                log.warning("Scale client of type %s: cannot set a request timeout", type(client).__name__)
        api = getattr(client, "api", None)
        self._secret = getattr(api, "api_key", None) or None
        self._where = getattr(api, "base_api_url", "Scale")
        self.watermark: str | None = None
        self.pages = 0
        self.skipped = 0
        self.problems: dict[str, str] = {}

    # ---- listing -------------------------------------------------------------------------------------------
    def tasks(self, project_name: str, status: str, since: str | datetime | None = None) -> Iterator[dict]:
        """The task JSON of every task of `project_name` in `status`, updated at or after `since`, page by page."""
        kwargs: dict[str, Any] = {"project": project_name, "status": status, "limit": self.page_size,
                                  "include_attachment_url": False}
        if since is not None:
            kwargs["updated_after"] = scale_time(since)
        token = None
        while True:
            page = self._page(project_name, status, {**kwargs, **({"next_token": token} if token else {})})
            for task in page.docs:
                yield task.as_dict() if hasattr(task, "as_dict") else dict(task)
            token = page.next_token
            if not page.has_more or not token:
                return

    def _page(self, project: str, status: str, kwargs: dict):
        from scaleapi.exceptions import ScaleException

        what = f"list {status} tasks of project {project}"
        for attempt in range(1, self.max_attempts + 1):
            try:
                page = self.client.tasks(**kwargs)
                self.pages += 1
                return page
            except ScaleException as exc:
                if not retryable(exc) or attempt == self.max_attempts:
                    raise ScalePullError(self._describe(what, exc)
                                         + (f" (after {attempt} attempts)" if attempt > 1 else ""),
                                         getattr(exc, "code", None)) from None
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                log.warning("Scale %s: %s, attempt %d/%d, retrying in %.1fs", what, status_of(exc), attempt,
                            self.max_attempts, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _describe(self, what: str, exc) -> str:
        return describe_error(what, self._where, exc, self._secret)

    # ---- rows ----------------------------------------------------------------------------------------------
    def annotations(self, project_name: str, *, since: str | datetime | None = None,
                    queue: str | None = None) -> Iterator[dict]:
        """One row per completed, canceled or errored task of the Scale project `project_name` updated at or after
        `since` (every such task when None). The queue is the task's metadata ``route``, else the project name's
        ``-<queue>`` suffix, else `queue`."""
        seen: set[str] = set()
        for status in STATUSES:
            try:
                for task in self.tasks(project_name, status, since):
                    task_id = str(task.get("task_id"))
                    updated = _dt(task.get("updated_at"))
                    if updated is not None and (self.watermark is None or updated > _dt(self.watermark)):
                        self.watermark = updated.isoformat()
                    if task_id in seen:  # moved between listings while we paged
                        continue
                    seen.add(task_id)
                    row = self.row(task, project_name=project_name, queue=queue)
                    if row is not None:
                        yield row
            except ScalePullError as err:
                # v2 documents `error` as a status filter; the v1 client's docstring names only pending / completed
                # / canceled. A v1 API that refuses it must not cost the whole pull.
                if status != "error" or err.code != 400:
                    raise
                log.warning("Scale pull %s: the API refuses status=error (HTTP 400): errored tasks not read",
                            project_name)
        if self.skipped:
            log.info("Scale pull %s: %d tasks without labelops metadata skipped", project_name, self.skipped)

    def row(self, task: Mapping, *, project_name: str | None = None, queue: str | None = None) -> dict | None:
        """The annotation row of one Scale task JSON (None for a task without labelops metadata)."""
        meta = task.get("metadata") if isinstance(task.get("metadata"), Mapping) else {}
        task_id = str(task.get("task_id"))
        unique_id = task.get("unique_id")
        key = meta.get("labelops_key") or split_unique_id(unique_id)[0]
        record_id = meta.get("record_id")
        if not key or record_id in (None, ""):
            self.skipped += 1
            return None
        project = task.get("project") or project_name
        status = task.get("status")
        cancelled = status in NOT_RATINGS
        label, spans = None, []
        if not cancelled:
            label, spans, problems = parse_response(
                str(task.get("type")), task.get("params") if isinstance(task.get("params"), Mapping) else None,
                task.get("response"), labels=self.labels, entities=self.entities, label_field=self.label_field)
            if problems:
                reason = "; ".join(problems)
                self.problems[task_id] = reason
                log.warning("Scale task %s (%s, key %s): response not fully read: %s", task_id, project, key, reason)
        created, completed = _dt(task.get("created_at")), _dt(task.get("completed_at"))
        updated = completed or _dt(task.get("updated_at"))
        lead = (completed - created).total_seconds() if created is not None and completed is not None else None
        return {
            "platform": PLATFORM,
            "queue": str(meta.get("route") or _queue_of(project) or queue or ""),
            "project_id": str(project),
            "task_id": task_id,
            "task_key": str(key),
            "record_id": str(record_id),
            "annotation_id": task_id,
            "annotator": f"scale:copy-{_copy_of(meta, unique_id, key)}",
            "label": label,
            "spans": json.dumps(spans),
            "created_at": created.isoformat() if created is not None else None,
            "updated_at": updated.isoformat() if updated is not None else None,
            "lead_time_s": lead,
            "cancelled": cancelled,
        }


def scale_annotations(client, project_name: str, *, since: str | datetime | None, queue: str | None = None,
                      labels: Iterable[str] | None = None, entities: Iterable[str] | None = None,
                      label_field: str | None = None, page_size: int = PAGE, **kwargs) -> Iterator[dict]:
    """One annotation row (`COLUMNS`) per finished task of the Scale project `project_name` (``<project>-<queue>``
    as dispatch names it) updated at or after `since` (None: all). `kwargs` go to `ScalePull` (request_timeout,
    max_attempts, backoff, sleep). Use `ScalePull` directly to read the watermark and the parse problems."""
    return ScalePull(client, labels=labels, entities=entities, label_field=label_field, page_size=page_size,
                     **kwargs).annotations(project_name, since=since, queue=queue)


class ScaleSource:
    """The agreement pipeline's source for a Scale project: the Scale project of every queue dispatch created
    tasks in (the queues named in the dispatch manifests' ``per_queue``; ``<scale.project>-<queue>``), read with
    `ScalePull`."""

    def __init__(self, client, project, store) -> None:
        self.project, self.store = project, store
        self.reader = ScalePull(client, labels=project.labels, entities=project.entities or None)

    @property
    def watermark(self) -> str | None:
        return self.reader.watermark

    def projects(self) -> list[str]:
        from labelops.dispatch.pipeline import finished_manifests

        queues = {q for m in finished_manifests(self.store, self.project) for q in m.get("per_queue") or {}}
        return sorted(f"{self.project.spec.scale.project}-{queue}" for queue in queues)

    def annotations(self, since: str | None) -> Iterator[dict]:
        for name in self.projects():
            yield from self.reader.annotations(name, since=since)
