"""A small fake of Scale AI's v1 REST API for the local stack and the tests (Scale has no local server).

    python tools/fake_scale.py --host 127.0.0.1 --port 8784 --state var/stack/scale --api-key-env VAR
                               [--tls-cert cert.pem --tls-key key.pem]

Implements what labelops uses, following Scale's documented v1 API and what the `scaleapi` client (2.18) expects.
Every request needs HTTP Basic auth with the API key as user name (401 otherwise). Errors are JSON
`{"status_code": <n>, "error": "<message>"}`, the shape the client turns into ScaleInvalidRequest (400),
ScaleUnauthorized (401), ScaleResourceNotFound (404), ScaleDuplicateResource (409), ScaleTooManyRequests (429)...

Projects   GET /v1/projects, GET /v1/projects/<name>, POST /v1/projects (409 on an existing name).
Tasks      POST /v1/task/categorization   attachment + attachment_type (text|image|video|audio|website|pdf) and
                                          `categories` (list of strings) or `taxonomies` (object).
           POST /v1/task/namedentityrecognition   `text` and `labels` (strings or objects with a `name`).
           Common body fields: project and/or batch (the batch's project is used when only the batch is given),
           instruction, callback_url, metadata (object), unique_id, tags, priority, hypothesis (pre-labels, shaped
           like the task response: categorization {"category": c}, NER {"annotations": [{start, end, label}]};
           checked against the task's categories / labels / text).
           A `unique_id` is unique across the whole account (all projects, all types): a repeat answers 409 with
           `The unique_id ("<id>") is already used for a different task (<task_id>).`
           A task may only be added to a batch in `staging` (no task may be added once it is finalized).
           GET /v1/task/<task_id>.
           POST /v1/task/<task_id>/cancel[?clear_unique_id=true]   a pending task becomes `canceled` (400 for a
           task that is completed, errored or already canceled); clear_unique_id frees its unique_id for reuse.
           GET /v1/tasks  filters: project, batch, status, type, unique_id (repeatable), tags, start_time/end_time
           (created_at), updated_after/before, completed_after/before, limited_response; pagination `limit`
           (1..100, default 100) and `next_token`; answer {"docs", "total", "limit", "offset", "has_more",
           "next_token"} with next_token null on the last page. A next_token stays valid when the task it points
           after no longer matches the filters (it was updated meanwhile): the next page starts after its place.
Batches    POST /v1/batches (project, name, callback, metadata...; 409 on an existing name: batch names are
           account-wide, as GET /v1/batches/<name> shows), GET /v1/batches (project, status, limit, offset),
           GET /v1/batches/<name>, POST /v1/batches/<name>/finalize (staging -> in_progress; 400 when the batch is
           not in staging), GET /v1/batches/<name>/status ({"status", "<task status>": count...}).
Tasks never progress by themselves (they stay `pending`): there are no workers here. The tests play the worker
through the simulation endpoints below.

Simulation (NOT part of Scale's API; under /_sim, same Basic auth, no fault injection):
    POST /_sim/task/<task_id>/complete   {"response": {...}, "completed_at": iso?, "updated_at": iso?,
                                          "created_at": iso?}
        the task becomes `completed` with that `response` (stored as is, shaped like Scale's response of its type:
        categorization {"category": c}, NER {"annotations": [{id, start, end, text, label}], "relationships": []});
        completed_at defaults to now, updated_at to completed_at; created_at rewrites the creation time (to test
        lead times). A completed task may be completed again (a customer-audit fix: new response, later
        updated_at, first completed_at kept unless given); a canceled or errored task cannot (400).
    POST /_sim/task/<task_id>/error      {"message": str?, "updated_at": iso?}
        a pending task becomes `error` (Scale's status for a task it could not do), with `errors: [{"message"}]`.
    Both answer the task.

State (projects, batches, tasks) is kept in <state>/state.json, rewritten after every change under one lock, so
it survives a restart.

Fault injection (for tests; in memory, not persisted), all with the same Basic auth:
    POST   /_faults   one spec or a list of specs; answers {"ids": [...]}
    GET    /_faults   every spec with its `remaining` count and `hits`
    DELETE /_faults   removes all
A spec: {"path": "/v1/task/", "method": "POST", "status": 503, "count": 1, "skip": 0, "mode": "before",
         "retry_after": 1, "delay": 0}
    path       prefix of the request path (no query string) it applies to (default "/v1/")
    method     GET / POST / DELETE, or null for any (default null)
    count      how many matching requests it affects (default 1)
    skip       how many matching requests, counted from when it was set, pass untouched first (default 0)
    mode       before: answer `status` without doing anything (default);
               after:  do the request (state changes), then answer `status` instead of the real answer
                       (a gateway error on a request that took effect);
               drop:   do the request, then close the connection without any answer;
               delay:  do the request, then wait `delay` seconds before sending the real answer (a client with
                       a shorter timeout gives up although the request took effect);
               late:   wait `delay` seconds, then do the request and answer (it takes effect after a client with a
                       shorter timeout gave up, and after whatever that client did meanwhile).
    status     HTTP status for before/after (default 503); 429 and 503 answers carry `Retry-After: retry_after`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import secrets
import ssl
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

ATTACHMENT_TYPES = ("text", "image", "video", "audio", "website", "pdf")
TASK_STATUSES = ("pending", "completed", "canceled", "error")
MAX_LIMIT = 100
FAULT_MODES = ("before", "after", "drop", "delay", "late")


def now_iso() -> str:
    return _iso_ms(datetime.now(timezone.utc))


def _iso_ms(dt: datetime) -> str:
    """Scale's timestamp format: '2024-01-01T00:00:00.000Z' (UTC, milliseconds)."""
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: str) -> datetime:
    """Scale's filters take 'YYYY-MM-DD HH:MM:SS.mmmmmm' (UTC) or ISO 8601."""
    value = value.strip().replace(" ", "T").replace("Z", "+00:00")
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class FakeScale:
    def __init__(self, state_dir: Path, api_key: str) -> None:
        self.state_dir, self.api_key = state_dir, api_key
        self.lock = threading.Lock()
        self.path = state_dir / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        for key in ("projects", "batches", "tasks"):
            self.data.setdefault(key, {})
        # derived index: unique_id -> task_id (unique across the account)
        self.unique_ids = {t["unique_id"]: tid for tid, t in self.data["tasks"].items() if t.get("unique_id")}
        self.faults: list[dict] = []
        self.fault_seq = 0

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)

    # ---- faults ----------------------------------------------------------------------------------------------
    def add_faults(self, specs) -> list[int]:
        specs = specs if isinstance(specs, list) else [specs]
        parsed = []
        for spec in specs:
            if not isinstance(spec, dict):
                raise ApiError(400, "a fault spec is a JSON object")
            mode = spec.get("mode", "before")
            if mode not in FAULT_MODES:
                raise ApiError(400, f"mode must be one of {FAULT_MODES}")
            try:
                fault = {
                    "path": str(spec.get("path", "/v1/")),
                    "method": spec["method"].upper() if spec.get("method") else None,
                    "status": int(spec.get("status", 503)),
                    "remaining": int(spec.get("count", 1)),
                    "skip": int(spec.get("skip", 0)),
                    "mode": mode,
                    "retry_after": int(spec.get("retry_after", 1)),
                    "delay": float(spec.get("delay", 0)),
                    "hits": 0,
                }
            except (TypeError, ValueError, AttributeError):
                raise ApiError(400, "bad fault spec") from None
            parsed.append(fault)
        with self.lock:
            for fault in parsed:
                self.fault_seq += 1
                fault["id"] = self.fault_seq
                self.faults.append(fault)
        return [f["id"] for f in parsed]

    def take_fault(self, method: str, path: str) -> dict | None:
        chosen = None
        with self.lock:
            for fault in self.faults:
                if not path.startswith(fault["path"]) or fault["method"] not in (None, method):
                    continue
                if fault["skip"] > 0:
                    fault["skip"] -= 1
                    continue
                if chosen is None and fault["remaining"] > 0:
                    chosen = fault
            if chosen is not None:
                chosen["remaining"] -= 1
                chosen["hits"] += 1
                chosen = dict(chosen)
        return chosen

    # ---- projects --------------------------------------------------------------------------------------------
    def get_project(self, name: str) -> dict:
        project = self.data["projects"].get(name)
        if project is None:
            raise ApiError(404, f"Project {name} not found")
        return project

    def create_project(self, body: dict) -> dict:
        name = body.get("name")
        if not name or not body.get("type"):
            raise ApiError(400, "name and type are required")
        if name in self.data["projects"]:
            raise ApiError(409, f"Project {name} already exists")
        now = now_iso()
        params = {**(body.get("params") or {}), "version": 0, "created_at": now}
        project = {"name": name, "type": body["type"], "param_history": [params], "created_at": now}
        self.data["projects"][name] = project
        self.save()
        return project

    # ---- batches ---------------------------------------------------------------------------------------------
    def get_batch(self, name: str) -> dict:
        batch = self.data["batches"].get(name)
        if batch is None:
            raise ApiError(404, f"Batch {name} not found")
        return batch

    def create_batch(self, body: dict) -> dict:
        name, project = body.get("name"), body.get("project")
        if not name or not project:
            raise ApiError(400, "project and name are required")
        if project not in self.data["projects"]:
            raise ApiError(400, f"Project {project} not found")
        if name in self.data["batches"]:
            raise ApiError(409, f"A batch with the name {name} already exists")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ApiError(400, "metadata must be an object")
        batch = {"name": name, "project": project, "status": "staging", "created_at": now_iso(),
                 "metadata": metadata, "callback": body.get("callback") or "",
                 "calibration_batch": bool(body.get("calibration_batch")),
                 "self_label_batch": bool(body.get("self_label_batch"))}
        self.data["batches"][name] = batch
        self.save()
        return batch

    def finalize_batch(self, name: str) -> dict:
        batch = self.get_batch(name)
        if batch["status"] != "staging":
            raise ApiError(400, f"Batch {name} is {batch['status']}: only a batch in staging can be finalized")
        batch["status"] = "in_progress"
        batch["finalized_at"] = now_iso()
        self.save()
        return batch

    def batch_status(self, name: str) -> dict:
        batch = self.get_batch(name)
        counts: dict[str, int] = {}
        for task in self.data["tasks"].values():
            if task.get("batch") == name:
                counts[task["status"]] = counts.get(task["status"], 0) + 1
        return {"status": batch["status"], **counts}

    def list_batches(self, query: dict) -> dict:
        docs = [b for b in self.data["batches"].values()
                if all(b.get(k) == query[k][0] for k in ("project", "status") if k in query)]
        limit = _int_param(query, "limit", MAX_LIMIT, 1, MAX_LIMIT)
        offset = _int_param(query, "offset", 0, 0, None)
        page = docs[offset:offset + limit]
        return {"docs": page, "totalDocs": len(docs), "limit": limit, "offset": offset,
                "has_more": offset + len(page) < len(docs)}

    # ---- tasks -----------------------------------------------------------------------------------------------
    def create_task(self, task_type: str, body: dict) -> dict:
        params = _task_params(task_type, body)
        project_name, batch_name = body.get("project"), body.get("batch")
        batch = None
        if batch_name:
            batch = self.data["batches"].get(batch_name)
            if batch is None:
                raise ApiError(400, f"Batch {batch_name} not found")
            if project_name and project_name != batch["project"]:
                raise ApiError(400, f"Batch {batch_name} belongs to project {batch['project']}, not {project_name}")
            project_name = batch["project"]
        if not project_name:
            raise ApiError(400, "project or batch is required")
        project = self.data["projects"].get(project_name)
        if project is None:
            raise ApiError(400, f"Project {project_name} not found")
        if project["type"] != task_type:
            raise ApiError(400, f"Project {project_name} is of type {project['type']}, not {task_type}")
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ApiError(400, "metadata must be an object")
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "tags must be a list of strings")
        hypothesis = body.get("hypothesis")
        if hypothesis is not None:
            _check_hypothesis(task_type, params, hypothesis)
        unique_id = body.get("unique_id")
        if unique_id is not None and (not isinstance(unique_id, str) or not unique_id):
            raise ApiError(400, "unique_id must be a non-empty string")
        if unique_id and unique_id in self.unique_ids:
            raise ApiError(409, f'The unique_id ("{unique_id}") is already used for a different task '
                                f"({self.unique_ids[unique_id]}).")
        if batch is not None and batch["status"] != "staging":
            raise ApiError(400, f"Batch {batch_name} is {batch['status']}: tasks can only be added to a batch in "
                                "staging")
        instruction = body.get("instruction")
        if instruction is None:
            instruction = project["param_history"][-1].get("instruction", "")
        now = now_iso()
        task_id = secrets.token_hex(12)
        task = {"task_id": task_id, "created_at": now, "updated_at": now, "completed_at": None, "type": task_type,
                "status": "pending", "instruction": instruction, "params": params,
                "callback_url": body.get("callback_url") or "", "metadata": metadata, "project": project_name,
                "batch": batch_name, "unique_id": unique_id, "tags": tags, "priority": body.get("priority"),
                "is_test": self.api_key.startswith("test_")}
        if hypothesis is not None:
            task["hypothesis"] = hypothesis
        self.data["tasks"][task_id] = task
        if unique_id:
            self.unique_ids[unique_id] = task_id
        self.save()
        return task

    def get_task(self, task_id: str) -> dict:
        task = self.data["tasks"].get(task_id)
        if task is None:
            raise ApiError(404, f"Task {task_id} not found")
        return task

    def cancel_task(self, task_id: str, clear_unique_id: bool = False) -> dict:
        task = self.get_task(task_id)
        if task["status"] != "pending":
            raise ApiError(400, f"Task {task_id} is {task['status']}: only a pending task can be canceled")
        task["status"] = "canceled"
        task["updated_at"] = now_iso()
        if clear_unique_id and task.get("unique_id"):
            self.unique_ids.pop(task["unique_id"], None)
            task["unique_id"] = None
        self.save()
        return task

    # ---- simulation (not Scale's API: the tests play the worker) ---------------------------------------------
    def sim_complete(self, task_id: str, body: dict) -> dict:
        task = self.get_task(task_id)
        if task["status"] not in ("pending", "completed"):
            raise ApiError(400, f"Task {task_id} is {task['status']}: it cannot be completed")
        response = body.get("response")
        if not isinstance(response, dict):
            raise ApiError(400, "response must be an object")
        stamps = {k: _sim_time(body, k) for k in ("created_at", "completed_at", "updated_at")}
        completed_at = stamps["completed_at"] or (task["completed_at"] if task["status"] == "completed" else None)
        completed_at = completed_at or now_iso()
        if stamps["created_at"]:
            task["created_at"] = stamps["created_at"]
        task.update(status="completed", response=response, completed_at=completed_at,
                    updated_at=stamps["updated_at"] or stamps["completed_at"] or now_iso())
        self.save()
        return task

    def sim_error(self, task_id: str, body: dict) -> dict:
        task = self.get_task(task_id)
        if task["status"] != "pending":
            raise ApiError(400, f"Task {task_id} is {task['status']}: only a pending task can turn to error")
        message = body.get("message", "the task could not be done")
        if not isinstance(message, str):
            raise ApiError(400, "message must be a string")
        task.update(status="error", errors=[{"message": message}],
                    updated_at=_sim_time(body, "updated_at") or now_iso())
        self.save()
        return task

    def list_tasks(self, query: dict) -> dict:
        limit = _int_param(query, "limit", MAX_LIMIT, 1, MAX_LIMIT)
        uids = set(query.get("unique_id", []))
        tags = set(query.get("tags", []))
        exact = {k: query[k][0] for k in ("project", "batch", "status", "type") if k in query}
        windows = []
        for param, field, after in (("start_time", "created_at", True), ("end_time", "created_at", False),
                                    ("updated_after", "updated_at", True), ("updated_before", "updated_at", False),
                                    ("completed_after", "completed_at", True),
                                    ("completed_before", "completed_at", False)):
            if param in query:
                try:
                    windows.append((field, _parse_time(query[param][0]), after))
                except ValueError:
                    raise ApiError(400, f"{param} is not a date") from None

        def keep(task: dict) -> bool:
            if any(task.get(k) != v for k, v in exact.items()):
                return False
            if uids and task.get("unique_id") not in uids:
                return False
            if tags and not tags & set(task.get("tags") or ()):
                return False
            for field, bound, after in windows:
                if not task.get(field):
                    return False
                value = _parse_time(task[field])
                if (after and value < bound) or (not after and value > bound):
                    return False
            return True

        docs = [t for t in self.data["tasks"].values() if keep(t)]
        start = 0
        token = query.get("next_token", [None])[0]
        if token:
            try:
                after_id = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
                if after_id not in self.data["tasks"]:
                    raise KeyError(after_id)
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise ApiError(400, "next_token is not valid for this query") from None
            # tasks are kept in creation order: the page starts after the token's task, matching or not any more
            order = {tid: i for i, tid in enumerate(self.data["tasks"])}
            start = next((i for i, t in enumerate(docs) if order[t["task_id"]] > order[after_id]), len(docs))
        page = docs[start:start + limit]
        has_more = start + len(page) < len(docs)
        next_token = None
        if has_more:
            next_token = base64.urlsafe_b64encode(json.dumps({"after": page[-1]["task_id"]}).encode()).decode()
        if query.get("limited_response", ["false"])[0].lower() == "true":
            page = [{k: t.get(k) for k in ("task_id", "status", "metadata", "project")} for t in page]
        return {"docs": page, "total": len(docs), "limit": limit, "offset": start, "has_more": has_more,
                "next_token": next_token}


def _sim_time(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return _iso_ms(_parse_time(str(value)))
    except ValueError:
        raise ApiError(400, f"{name} is not a date") from None


def _int_param(query: dict, name: str, default: int, low: int, high: int | None) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name][0])
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"{name} must be between {low} and {high}" if high else f"{name} must be >= {low}")
    return value


def _label_names(labels) -> list[str]:
    names = []
    for label in labels:
        if isinstance(label, str):
            names.append(label)
        elif isinstance(label, dict) and isinstance(label.get("name"), str):
            names.append(label["name"])
            names.extend(_label_names(label.get("children") or []))
        else:
            raise ApiError(400, "labels must be strings or objects with a name")
    return names


def _task_params(task_type: str, body: dict) -> dict:
    if task_type == "categorization":
        attachment, attachment_type = body.get("attachment"), body.get("attachment_type")
        if not isinstance(attachment, str) or not attachment:
            raise ApiError(400, "attachment is required")
        if attachment_type not in ATTACHMENT_TYPES:
            raise ApiError(400, f"attachment_type must be one of {', '.join(ATTACHMENT_TYPES)}")
        params = {"attachment": attachment, "attachment_type": attachment_type}
        categories, taxonomies = body.get("categories"), body.get("taxonomies")
        if categories is not None:
            if (not isinstance(categories, list) or not categories
                    or not all(isinstance(c, str) and c for c in categories)):
                raise ApiError(400, "categories must be a non-empty list of strings")
            if len(set(categories)) != len(categories):
                raise ApiError(400, "categories must be unique")
            params["categories"] = categories
        elif isinstance(taxonomies, dict) and taxonomies:
            params["taxonomies"] = taxonomies
        else:
            raise ApiError(400, "categories or taxonomies is required")
        if "allow_multiple" in body:
            params["allow_multiple"] = bool(body["allow_multiple"])
        return params
    if task_type == "namedentityrecognition":
        text, labels = body.get("text"), body.get("labels")
        if not isinstance(text, str) or not text:
            raise ApiError(400, "text is required")
        if not isinstance(labels, list) or not labels:
            raise ApiError(400, "labels must be a non-empty list")
        names = _label_names(labels)
        if len(set(names)) != len(names):
            raise ApiError(400, "label names must be unique")
        return {"text": text, "labels": labels}
    raise ApiError(400, f"fake_scale does not implement task type {task_type!r}")


def _check_hypothesis(task_type: str, params: dict, hypothesis) -> None:
    if not isinstance(hypothesis, dict):
        raise ApiError(400, "hypothesis must be an object")
    if task_type == "categorization" and "categories" in params:
        if hypothesis.get("category") not in params["categories"]:
            raise ApiError(400, "hypothesis.category must be one of the task's categories")
    elif task_type == "namedentityrecognition":
        annotations = hypothesis.get("annotations")
        names, text = set(_label_names(params["labels"])), params["text"]
        if not isinstance(annotations, list):
            raise ApiError(400, "hypothesis.annotations must be a list")
        for ann in annotations:
            if not isinstance(ann, dict) or ann.get("label") not in names:
                raise ApiError(400, "every hypothesis annotation needs a label of the task")
            start, end = ann.get("start"), ann.get("end")
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
                raise ApiError(400, "hypothesis annotation offsets are outside the text")


def make_handler(fake: FakeScale):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fake-scale/0.2"

        def log_message(self, fmt, *args):  # one line per request, never the Authorization header nor the query
            print(f"{self.command} {urlparse(self.path).path} -> {fmt % args}", flush=True)

        def _send(self, status: int, body, headers: dict | None = None) -> None:
            raw = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.close_connection = True  # the client gave up (e.g. its timeout ran out)

        def _error(self, status: int, message: str, headers: dict | None = None) -> None:
            self._send(status, {"status_code": status, "error": message}, headers)

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                try:
                    user = base64.b64decode(header[6:]).decode().split(":", 1)[0]
                except (ValueError, UnicodeDecodeError):
                    user = ""
                if secrets.compare_digest(user.encode(), fake.api_key.encode()):
                    return True
            self._error(401, "Unauthorized: invalid or missing API key")
            return False

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def do_GET(self):  # noqa: N802
            self._handle("GET")

        def do_POST(self):  # noqa: N802
            self._handle("POST")

        def do_DELETE(self):  # noqa: N802
            self._handle("DELETE")

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            raw = self._read_body()  # read first, so that an early answer leaves the connection clean
            if not self._authorized():
                return
            try:
                body = json.loads(raw) if raw.strip() else {}
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._error(400, "body is not JSON")
            parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
            query = parse_qs(url.query, keep_blank_values=False)
            if parts == ["_faults"]:
                return self._faults(method, body)
            if parts[:1] == ["_sim"]:
                return self._sim(method, parts[1:], body)
            fault = fake.take_fault(method, url.path) if parts[:1] == ["v1"] else None
            if fault is not None and fault["mode"] == "before":
                return self._fault_answer(fault)
            if fault is not None and fault["mode"] == "late":
                time.sleep(fault["delay"])
            try:
                status, answer = self._route(method, parts[1:] if parts[:1] == ["v1"] else None, query, body)
            except ApiError as exc:
                status, answer = exc.status, {"status_code": exc.status, "error": exc.message}
            if fault is not None:
                if fault["mode"] == "after":
                    return self._fault_answer(fault)
                if fault["mode"] == "drop":
                    self.close_connection = True
                    return
                if fault["mode"] == "delay":
                    time.sleep(fault["delay"])
            self._send(status, answer)

        def _fault_answer(self, fault: dict) -> None:
            status = fault["status"]
            headers = {"Retry-After": str(fault["retry_after"])} if status in (429, 503) else None
            self._error(status, f"HTTP {status} injected by fake_scale", headers)

        def _faults(self, method: str, body) -> None:
            if method == "POST":
                try:
                    return self._send(200, {"ids": fake.add_faults(body)})
                except ApiError as exc:
                    return self._error(exc.status, exc.message)
            with fake.lock:
                if method == "DELETE":
                    fake.faults.clear()
                faults = [dict(f) for f in fake.faults]
            self._send(200, faults)

        def _sim(self, method: str, route: list[str], body) -> None:
            try:
                if method != "POST" or len(route) != 3 or route[0] != "task" or route[2] not in ("complete", "error"):
                    raise ApiError(404, "not found")
                if not isinstance(body, dict):
                    raise ApiError(400, "body must be a JSON object")
                with fake.lock:
                    task = (fake.sim_complete if route[2] == "complete" else fake.sim_error)(route[1], body)
                    return self._send(200, task)
            except ApiError as exc:
                return self._error(exc.status, exc.message)

        def _route(self, method: str, route: list[str] | None, query: dict, body) -> tuple[int, object]:
            if route is None:
                raise ApiError(404, "not found")
            if method != "GET" and not isinstance(body, dict):
                raise ApiError(400, "body must be a JSON object")
            n = len(route)
            with fake.lock:
                if method == "GET":
                    if route == ["projects"]:
                        return 200, list(fake.data["projects"].values())
                    if n == 2 and route[0] == "projects":
                        return 200, fake.get_project(route[1])
                    if route == ["tasks"]:
                        return 200, fake.list_tasks(query)
                    if n == 2 and route[0] == "task":
                        return 200, fake.get_task(route[1])
                    if route == ["batches"]:
                        return 200, fake.list_batches(query)
                    if n == 2 and route[0] == "batches":
                        return 200, fake.get_batch(route[1])
                    if n == 3 and route[0] == "batches" and route[2] == "status":
                        return 200, fake.batch_status(route[1])
                elif method == "POST":
                    if route == ["projects"]:
                        return 200, fake.create_project(body)
                    if n == 2 and route[0] == "task":
                        return 200, fake.create_task(route[1], body)
                    if n == 3 and route[0] == "task" and route[2] == "cancel":
                        clear = query.get("clear_unique_id", ["false"])[0].lower() == "true"
                        return 200, fake.cancel_task(route[1], clear)
                    if route == ["batches"]:
                        return 200, fake.create_batch(body)
                    if n == 3 and route[0] == "batches" and route[2] == "finalize":
                        return 200, fake.finalize_batch(route[1])
            raise ApiError(404, "not found")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--api-key-env", required=True, help="environment variable holding the accepted API key")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate (needs --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    args = parser.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)
    api_key = os.environ.get(args.api_key_env, "")
    if not api_key:
        raise SystemExit(f"fake_scale: ${args.api_key_env} is empty")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("fake_scale: --tls-cert and --tls-key go together")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(FakeScale(args.state, api_key)))
    server.daemon_threads = True
    scheme = "http"
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    print(f"fake_scale: listening on {scheme}://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
