"""Scale AI side of dispatch: one Scale project per queue, one batch per queue and run, each task created once.

Layout. A labelops project dispatching to Scale uses one Scale project per queue, ``<project>-<queue>`` (created
when missing, with the instruction), and per dispatch run one batch per queue, ``<project>-<queue>-<batch>``
(Scale's batch names are account-wide), created when there is something to add, finalized at the end of the
run. Scale accepts no task into a finalized batch, so when a run's batch is already finalized and new tasks
still come (the same run name dispatched again with other tasks) they go to ``<name>-2``, ``<name>-3``...
Finalizing is done only for a batch still in ``staging``: finalizing twice is harmless.

Tasks. Each `DispatchTask` becomes one Scale task whose ``unique_id`` is the task's key; a task that needs N
annotators (overlap) becomes N tasks ``<key>#1`` .. ``<key>#N``: a Scale task has one answer (Scale does not
promise that the N copies go to N different people). Intent and image projects use ``categorization`` (the
labels as ``categories``), entity projects ``namedentityrecognition`` (the entity names as ``labels``). The
record id, queue, selection reason, the key and the model's prediction (version, label, score) go into the
task's ``metadata``. Scale documents pre-labels (``hypothesis``, shaped like the task's response) for some task
types; with ``hypothesis=True`` the prediction is also sent that way (categorization ``{"category": label}``,
NER ``{"annotations": [{start, end, text, label}]}``). A gold task is sent like any other: its answer is never
sent.

Exactly once. ``unique_id`` is Scale's idempotency key (unique across the account: a repeat answers 409):

* before creating, the run looks the queue's unique ids up (``GET /v1/tasks?unique_id=..``, 50 at a time); those
  found are ``already_present`` and not posted again;
* a 409 on create is checked by fetching the task by unique id; it counts as ``already_present``, or as
  ``created`` when an earlier attempt of ours may have taken effect (a 5xx, a timeout, a dropped connection);
* 408 / 429 / 5xx / transport errors are retried with exponential backoff and jitter. The scaleapi client
  itself retries 408/429/5xx and connection errors 3 times (POST included, honouring Retry-After) but only on
  ``https://`` URLs; on a 409 after a first 5xx it fetches the task by unique id itself. That path of the
  client (2.18.4) fails in three ways: a TypeError when the first attempt had no status (timeout, reset); its GET
  ignores the client's ``verify`` / ``proxies`` / ``cert``; the unique id is put in the URL unencoded (``#`` of
  an overlap copy starts a fragment: another id is asked for). So here every failed create that may have taken
  effect (anything but a refusal 400/401/402/403/404 or a 429) is followed by our own lookup of the unique id
  (properly encoded), and the task is created again only if it is not there;
* the scaleapi client sets no timeout on its requests: with ``request_timeout`` (seconds) the dispatcher gives
  its client one (same retries as the client's own).

Messages and logs name projects, batches, keys and HTTP statuses; never the API key, never task text.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from labelops.dispatch.tasks import DispatchTask, Prediction

log = logging.getLogger(__name__)

CATEGORIZATION = "categorization"
NER = "namedentityrecognition"
# labelops project task (config `Project.task`) or a Scale task type -> the Scale task type
TASK_TYPES = {
    "intent_classification": CATEGORIZATION,
    "image_classification": CATEGORIZATION,
    "intent_entities": NER,
    CATEGORIZATION: CATEGORIZATION,
    NER: NER,
}
LOOKUP_CHUNK = 50  # unique ids per GET /v1/tasks (keeps the URL short)
PAGE = 100  # Scale's maximum page size
MAX_CONTINUATIONS = 50
FINAL = (400, 401, 402, 403, 404)  # refusals: retrying cannot help


class ScaleDispatchError(RuntimeError):
    """Dispatch to Scale failed; the message names the call, the project / batch / key and the HTTP status."""


@dataclass
class _Queue:
    name: str
    project: str
    tasks: list[tuple[str, DispatchTask, int | None]] = field(default_factory=list)  # (unique_id, task, copy)


def scale_task_type(task_type: str) -> str:
    try:
        return TASK_TYPES[task_type]
    except KeyError:
        raise ValueError(f"no Scale task type for {task_type!r}; expected one of {sorted(TASK_TYPES)}") from None


def set_request_timeout(client, seconds: float) -> bool:
    """Give a scaleapi client a timeout on every request (it has none: a hung connection would hang the run).

    Replaces the client's transport with the same one (a new `requests` session per request, the client's own
    retry policy on https) plus ``timeout=seconds``. Returns False, changing nothing, if the client does not look
    like scaleapi 2.x."""
    api = getattr(client, "api", None)
    if api is None or not callable(getattr(api, "_http_request", None)):
        return False
    import requests
    from requests.adapters import HTTPAdapter, Retry
    from scaleapi import api as scale_api
    from scaleapi.exceptions import ScaleException

    def http_request(method, url, headers=None, auth=None, params=None, body=None, files=None, data=None,
                     verify=None, proxies=None, cert=None):
        session = requests.Session()
        retry = Retry(total=scale_api.HTTP_TOTAL_RETRIES, backoff_factor=scale_api.HTTP_RETRY_BACKOFF_FACTOR,
                      status_forcelist=scale_api.HTTP_STATUS_FORCE_LIST,
                      allowed_methods=scale_api.HTTP_RETRY_ALLOWED_METHODS, raise_on_status=False)
        session.mount("https://", HTTPAdapter(max_retries=retry))
        session.cert = cert if cert else None
        session.verify = verify if verify else True
        if proxies:
            session.proxies.update(proxies)
        try:
            with session:
                return session.request(method=method, url=url, headers=headers, auth=auth, params=params or {},
                                       json=body or None, files=files, data=data, timeout=seconds)
        except Exception as err:  # as the client does: every transport error becomes a ScaleException
            raise ScaleException(err) from err

    api._http_request = http_request
    return True


def retryable(exc) -> bool:
    """Whether a failed Scale call may succeed when repeated: no answer (but not a TLS failure), 408, 429, 5xx."""
    code = getattr(exc, "code", None)
    if code is None:  # no answer: retry, unless TLS verification failed (retrying cannot help)
        import requests

        return not isinstance(exc.__cause__, requests.exceptions.SSLError)
    return code in (408, 429) or code >= 500


def describe_error(what: str, where: str, exc, secret: str | None) -> str:
    """A failed Scale call in one line for logs and task errors, the API key (`secret`) never in it."""
    code = getattr(exc, "code", None)
    if code in (401, 403):
        text = (f"Scale at {where} rejected the API key (HTTP {code}) on {what}: check the password of the Scale "
                "connection")
    else:
        detail = str(getattr(exc, "message", "") or exc)[:300]
        text = f"Scale {what} at {where} failed: {status_of(exc)}: {detail}"
    return text.replace(secret, "***") if secret else text


def status_of(exc) -> str:
    code = getattr(exc, "code", None)
    if code is None and exc.__cause__ is not None:
        return f"no answer ({type(exc.__cause__).__name__})"
    return f"HTTP {code}" if code else "no answer"


class ScaleDispatcher:
    """Create a run's tasks on Scale exactly once (see the module docstring).

    `client` is a `scaleapi.ScaleClient`; `project` the labelops project name (Scale projects are
    ``<project>-<queue>``); `task_type` the labelops task (intent_classification, intent_entities,
    image_classification) or a Scale type; `labels` the categories; `entities` the entity labels (NER)."""

    def __init__(self, client, *, project: str, task_type: str, labels: Iterable[str] = (),
                 entities: Iterable[str] = (), instruction: str, hypothesis: bool = False,
                 max_attempts: int = 6, backoff: float = 1.0, max_backoff: float = 30.0,
                 request_timeout: float | None = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.project, self.instruction = client, project, instruction
        self.task_type = task_type
        self.scale_type = scale_task_type(task_type)
        self.labels, self.entities = tuple(labels), tuple(entities)
        if self.scale_type == CATEGORIZATION and len(self.labels) < 2:
            raise ValueError("a categorization project needs at least 2 labels")
        if self.scale_type == NER and not self.entities:
            raise ValueError("an entity project needs entity labels")
        self.hypothesis = hypothesis
        self.max_attempts, self.backoff, self.max_backoff, self.sleep = max_attempts, backoff, max_backoff, sleep
        if request_timeout is not None and not set_request_timeout(client, request_timeout):
            log.warning("Scale client of type %s: cannot set a request timeout", type(client).__name__)
        from scaleapi.tasks import TaskType

        self._type_enum = TaskType(self.scale_type)
        api = getattr(client, "api", None)
        self._secret = getattr(api, "api_key", None) or None
        self._where = getattr(api, "base_api_url", "Scale")

    # ---- names -------------------------------------------------------------------------------------------
    def project_name(self, queue: str) -> str:
        return f"{self.project}-{queue}"

    def batch_name(self, queue: str, batch: str) -> str:
        return f"{self.project_name(queue)}-{batch}"

    # ---- payloads ----------------------------------------------------------------------------------------
    def payload(self, task: DispatchTask, *, unique_id: str, project: str, batch: str | None,
                copy: int | None = None, run: str | None = None) -> dict:
        """The create-task body of one Scale task. Never contains `task.gold`."""
        body: dict[str, Any] = {"project": project, "unique_id": unique_id, "instruction": self.instruction,
                                "metadata": self.metadata(task, copy=copy, run=run)}
        if batch:
            body["batch"] = batch
        if self.scale_type == CATEGORIZATION:
            if self.task_type == "image_classification" or (task.text is None and task.image_url):
                if not task.image_url:
                    raise ValueError(f"task {task.key}: an image task needs image_url")
                body.update(attachment=task.image_url, attachment_type="image")
            else:
                if not task.text:
                    raise ValueError(f"task {task.key}: a text task needs text")
                body.update(attachment=task.text, attachment_type="text")
            body["categories"] = list(self.labels)
        else:
            if not task.text:
                raise ValueError(f"task {task.key}: an entity task needs text")
            body.update(text=task.text, labels=[{"name": e} for e in self.entities])
        if self.hypothesis and task.prediction is not None:
            hyp = self.hypothesis_of(task.prediction, task.text or "")
            if hyp is not None:
                body["hypothesis"] = hyp
        return body

    def metadata(self, task: DispatchTask, *, copy: int | None = None, run: str | None = None) -> dict:
        pred = task.prediction
        meta = {
            "labelops_project": self.project, "labelops_key": task.key, "record_id": task.record_id,
            # not the selection reason nor the source key: a gold task must look like any other
            "route": task.route, "annotators": task.annotators, "copy": copy, "dispatch_run": run,
            "model_version": pred.model_version if pred else None,
            "model_label": pred.label if pred else None,
            "model_score": pred.score if pred else None,
            "model_spans": len(pred.spans) if pred and pred.spans else None,
        }
        return {k: v for k, v in meta.items() if v is not None and v != ""}

    def hypothesis_of(self, pred: Prediction, text: str) -> dict | None:
        if self.scale_type == CATEGORIZATION:
            return {"category": pred.label} if pred.label in self.labels else None
        anns = [{"start": s.start, "end": s.end, "text": s.text, "label": s.label} for s in pred.spans
                if s.label in self.entities and 0 <= s.start < s.end <= len(text)]
        return {"annotations": anns} if anns else None

    # ---- dispatch ----------------------------------------------------------------------------------------
    def dispatch(self, tasks: list[DispatchTask], batch: str) -> dict:
        """Create `tasks` on Scale (see the module docstring). Returns ``created`` / ``already_present`` (Scale
        tasks), ``per_queue`` (queue -> Scale tasks of this run in it, created or already there), ``batches``
        (the batch names used, finalized) and ``task_ids`` (unique_id -> Scale task id)."""
        if not batch:
            raise ValueError("batch must be a non-empty name")
        queues: dict[str, _Queue] = {}
        seen: set[str] = set()
        for task in tasks:
            q = queues.setdefault(task.route, _Queue(task.route, self.project_name(task.route)))
            copies = [(task.key, None)] if task.annotators <= 1 else [
                (f"{task.key}#{i}", i) for i in range(1, task.annotators + 1)]
            for uid, copy in copies:
                if uid not in seen:  # the same key twice in a run is one task
                    seen.add(uid)
                    q.tasks.append((uid, task, copy))
        result: dict[str, Any] = {"created": 0, "already_present": 0, "per_queue": {}, "batches": [],
                                  "task_ids": {}}
        to_finalize: list[str] = []
        for name in sorted(queues):
            q = queues[name]
            self._ensure_project(q.project)
            existing = self._lookup([uid for uid, _, _ in q.tasks])
            for uid, doc in existing.items():
                if doc.get("project") not in (None, q.project):
                    log.warning("Scale task %s already exists in project %s, not %s: left there",
                                uid, doc.get("project"), q.project)
                result["task_ids"][uid] = doc.get("task_id")
            missing = [(uid, t, c) for uid, t, c in q.tasks if uid not in existing]
            counts = {"created": 0, "already_present": len(existing)}
            batch_used, chain = self._open_batch(q, self.batch_name(name, batch), batch, need=bool(missing))
            to_finalize.extend(b for b in chain if b not in to_finalize)
            for uid, task, copy in missing:
                outcome, task_id = self._create(self.payload(task, unique_id=uid, project=q.project,
                                                             batch=batch_used, copy=copy, run=batch))
                counts[outcome] += 1
                result["task_ids"][uid] = task_id
            result["created"] += counts["created"]
            result["already_present"] += counts["already_present"]
            result["per_queue"][name] = len(q.tasks)
            log.info("Scale %s: %d tasks, %d created, %d already there, batch %s", q.project, len(q.tasks),
                     counts["created"], counts["already_present"], batch_used)
        for name in to_finalize:
            self._finalize(name)
        result["batches"] = to_finalize
        log.info("Scale dispatch %s: %d created, %d already present, batches %s", batch, result["created"],
                 result["already_present"], to_finalize)
        return result

    # ---- projects and batches ----------------------------------------------------------------------------
    def _ensure_project(self, name: str) -> None:
        from scaleapi.exceptions import ScaleDuplicateResource, ScaleResourceNotFound

        try:
            project = self._call(f"get project {name}", self.client.get_project, name)
        except ScaleResourceNotFound:
            try:
                project = self._call(f"create project {name}", self.client.create_project, name, self._type_enum,
                                     params={"instruction": self.instruction})
                log.info("Scale project %s created (%s)", name, self.scale_type)
            except ScaleDuplicateResource:  # created meanwhile, or by our own attempt that timed out
                project = self._call(f"get project {name}", self.client.get_project, name)
        if project.type != self.scale_type:
            raise ScaleDispatchError(f"Scale project {name} is of type {project.type}, expected {self.scale_type}")

    def _get_batch(self, name: str):
        from scaleapi.exceptions import ScaleResourceNotFound

        try:
            return self._call(f"get batch {name}", self.client.get_batch, name)
        except ScaleResourceNotFound:
            return None

    def _open_batch(self, q: _Queue, base: str, run: str, *, need: bool) -> tuple[str | None, list[str]]:
        """(the batch that takes this run's new tasks in queue `q`, every batch of the run's chain that exists).

        The chain is `base`, `base-2`, `base-3`...: the first batch still in staging takes new tasks; when all are
        finalized the next one is created. With nothing to add (`need` False) nothing is created and the batch is
        None."""
        from scaleapi.exceptions import ScaleDuplicateResource

        chain: list[str] = []
        for n in range(1, MAX_CONTINUATIONS + 1):
            name = base if n == 1 else f"{base}-{n}"
            found = self._get_batch(name)
            if found is None:
                if not need:
                    return None, chain
                try:
                    self._call(f"create batch {name}", self.client.create_batch, q.project, name,
                               metadata={"labelops_project": self.project, "queue": q.name, "dispatch_run": run})
                    log.info("Scale batch %s created in %s", name, q.project)
                    return name, [*chain, name]
                except ScaleDuplicateResource:  # created meanwhile, or by our own attempt that failed on the way back
                    found = self._get_batch(name)
                    if found is None:
                        raise ScaleDispatchError(f"Scale batch {name}: 409 on create but not found") from None
            if found.project != q.project:
                raise ScaleDispatchError(f"Scale batch {name} belongs to project {found.project}, not {q.project}")
            chain.append(name)
            if need and found.status == "staging":
                return name, chain
            if need:
                log.info("Scale batch %s is %s: new tasks go to the next batch", name, found.status)
        raise ScaleDispatchError(f"Scale batch {base}: {MAX_CONTINUATIONS} batches of that name exist")

    def _finalize(self, name: str) -> None:
        from scaleapi.exceptions import ScaleInvalidRequest

        found = self._get_batch(name)
        if found is None:
            raise ScaleDispatchError(f"Scale batch {name} disappeared before finalization")
        if found.status != "staging":
            return
        try:
            self._call(f"finalize batch {name}", self.client.finalize_batch, name)
        except ScaleInvalidRequest:  # finalized meanwhile (e.g. by our own attempt that failed on the way back)
            again = self._get_batch(name)
            if again is None or again.status == "staging":
                raise
        log.info("Scale batch %s finalized", name)

    # ---- tasks -------------------------------------------------------------------------------------------
    def _lookup(self, unique_ids: list[str]) -> dict[str, dict]:
        """The tasks that exist with these unique ids (in any project): unique_id -> task JSON."""
        found: dict[str, dict] = {}
        for i in range(0, len(unique_ids), LOOKUP_CHUNK):
            chunk = unique_ids[i:i + LOOKUP_CHUNK]
            token = None
            while True:
                kwargs = {"unique_id": chunk, "limit": PAGE, **({"next_token": token} if token else {})}
                page = self._call("list tasks by unique_id", self.client.tasks, **kwargs)
                for task in page.docs:
                    doc = task.as_dict()
                    if doc.get("unique_id") in chunk:
                        found.setdefault(doc["unique_id"], doc)
                token = page.next_token
                if not page.has_more or not token:
                    break
        return found

    def _create(self, body: dict) -> tuple[str, str | None]:
        """Create one task; ("created" | "already_present", task id).

        A refusal (400, 401, 402, 403, 404) is final. Any other failure leaves a doubt (except a 429: not done):
        the unique id is looked up before trying again. This also covers the scaleapi client's own 409 path,
        which fails on its own (a TypeError after an attempt without status; a GET that ignores `verify` /
        `proxies`; a unique id with '#' sent unencoded, so the lookup asks for another id)."""
        from scaleapi.exceptions import ScaleDuplicateResource, ScaleException

        uid = body["unique_id"]
        doubtful = False  # an earlier attempt may have created the task
        last = "?"
        for attempt in range(1, self.max_attempts + 1):
            try:
                task = self.client.create_task(self._type_enum, **body)
                return "created", task.id
            except ScaleDuplicateResource:
                doc = self._lookup([uid]).get(uid)
                if doc is None:
                    raise ScaleDispatchError(f"Scale task {uid}: 409 on create but no task has that unique_id "
                                             f"({self._where})") from None
                return ("created" if doubtful else "already_present"), doc.get("task_id")
            except ScaleException as exc:
                if getattr(exc, "code", None) in FINAL:
                    raise ScaleDispatchError(self._describe(f"create task {uid}", exc)) from None
                last = status_of(exc)
                doubtful = doubtful or getattr(exc, "code", None) != 429
            except Exception as exc:  # noqa: BLE001 - the client's own retry path can raise TypeError
                last = type(exc).__name__
                doubtful = True
            if doubtful:
                doc = self._lookup([uid]).get(uid)
                if doc is not None:
                    log.info("Scale create task %s: %s, but the task exists: created by that attempt", uid, last)
                    return "created", doc.get("task_id")
            if attempt < self.max_attempts:
                delay = self._delay(attempt)
                log.warning("Scale create task %s: %s, attempt %d/%d, retrying in %.1fs", uid, last, attempt,
                            self.max_attempts, delay)
                self.sleep(delay)
        raise ScaleDispatchError(f"Scale create task {uid} at {self._where}: gave up after {self.max_attempts} "
                                 f"attempts (last: {last})")

    # ---- calls, retries, messages ------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        """Call the client, retrying transient failures. 404/409/400 come back as the client's exceptions (the
        caller decides what they mean); other failures become ScaleDispatchError."""
        from scaleapi.exceptions import (ScaleDuplicateResource, ScaleException, ScaleInvalidRequest,
                                         ScaleResourceNotFound)

        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn(*args, **kwargs)
            except (ScaleResourceNotFound, ScaleDuplicateResource, ScaleInvalidRequest):
                raise
            except ScaleException as exc:
                if not retryable(exc) or attempt == self.max_attempts:
                    raise ScaleDispatchError(self._describe(what, exc)
                                             + (f" (after {attempt} attempts)" if attempt > 1 else "")) from None
                delay = self._delay(attempt)
                log.warning("Scale %s: %s, attempt %d/%d, retrying in %.1fs", what, status_of(exc), attempt,
                            self.max_attempts, delay)
                self.sleep(delay)

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    def _describe(self, what: str, exc) -> str:
        return describe_error(what, self._where, exc, self._secret)


class ScalePlatform:
    """`pipeline.run`'s platform interface for Scale: ``dispatch(tasks, ledger, model_version)``. Scale's
    unique_id makes a ledger unnecessary; the run name becomes the batch name. The instruction defaults to the
    project's description. ``task_ids`` is keyed by unique_id (an overlap copy: ``<key>#<i>``)."""

    name = "scale"

    def __init__(self, client, project, run_id: str, *, instruction: str | None = None, s3_client=None,
                 **kwargs) -> None:
        """``s3_client``: a boto3 S3 client on the AWS connection, which presigns image attachments (image
        projects with ``scale.image_urls: presign``)."""
        spec = project.spec
        self.run_id = run_id
        self.settings, self.s3_client = spec.scale, s3_client
        self.dispatcher = ScaleDispatcher(client, project=spec.scale.project, task_type=spec.task,
                                          labels=project.labels, entities=project.entities,
                                          instruction=instruction or spec.description, **kwargs)

    def attachment_url(self, uri: str) -> str:
        """What Scale fetches for an image task's ``s3://bucket/key``: a presigned HTTPS URL, or the URI itself."""
        if self.settings.image_urls == "s3" or not uri.startswith("s3://"):
            return uri
        if self.s3_client is None:
            raise ValueError("image tasks with scale.image_urls: presign need the AWS connection (s3_client)")
        from labelops.storage import split_s3_uri

        bucket, key = split_s3_uri(uri)
        return self.s3_client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                     ExpiresIn=self.settings.presign_ttl_hours * 3600)

    def dispatch(self, tasks: list[DispatchTask], ledger=None, model_version: str | None = None) -> dict:
        # presigned when sent (a re-run signs again: Scale's unique_id keeps the task it already has)
        tasks = [dataclasses.replace(t, image_url=self.attachment_url(t.image_url)) if t.image_url else t
                 for t in tasks]
        return self.dispatcher.dispatch(tasks, self.run_id)
