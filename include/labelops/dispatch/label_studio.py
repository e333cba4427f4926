"""Label Studio side of dispatch: one Label Studio project per queue, and imports that create each task once.

Queues. Each labelops project gets one Label Studio project per queue it uses (`verify`, `expert`, `overlap`, or
`main` when routing is off), titled ``<project_title> · <queue>`` and found again by a marker in its description
(``[labelops:<project>:<queue>]``), so a renamed project is still found and a crash between creating a project
and remembering it creates no second one. Settings come from the config on every run: the label config, the
description, ``maximum_annotations`` (the overlap queue: ``dispatch.overlap_annotators``, with an overlap cohort
of 100% so every task there gets that many annotators; the other queues: 1), predictions shown to annotators as
pre-annotations, and after an import the model version whose predictions are shown.

Images. An image task holds the image's ``s3://bucket/key`` URI, never its bytes: each queue project of an image
project gets an S3 import storage on the project's bucket (found again by the same marker; keys, region and
endpoint from the AWS connection, refreshed on every run), through which Label Studio resolves the URI when the
task is shown: a redirect to a presigned URL (``label_studio.image_urls: presign``, valid
``presign_ttl_minutes``) or the bytes streamed by Label Studio itself (``proxy``). The storage is never synced
(its ``regex_filter`` matches no key): tasks come only from our imports.

Idempotent import. The SDK retries a POST on 5xx/429/connection errors and Label Studio has no idempotency key,
so an import can be applied twice. Here:

* every task carries its stable key in ``data.labelops_key`` (see `tasks.task_key`);
* tasks are imported in chunks with the SDK's retries off (``max_retries=0``);
* a run ledger (any object with ``get(name)`` / ``put(name, value)``; the pipeline keeps it in S3) records, per
  queue, the highest task id in the project before the run's first import (``baseline``), and per chunk a
  ``done`` record (its task ids) after its POST: one small write per chunk;
* a chunk marked done is skipped. When an attempt finds a baseline already there, an earlier attempt of the run
  was interrupted and its last POST may or may not have been applied (a timeout, a crash, a killed worker): the
  first chunk not done is **reconciled**: the tasks created in the project since the baseline are listed once
  (only those: cheap, whatever the size of the project) and only the keys not found are imported. A POST that
  fails is reconciled the same way and retried a few times with backoff, then the error is raised (the Airflow
  retry continues from the ledger);
* after a run that had to reconcile, a sweep lists the tasks created since the baseline once more and deletes
  later copies of a key (not yet annotated): a POST that timed out on our side can still be applied by the
  server after we looked. Runs without any doubt never pay for a listing;
* a POST we gave up on may still be running on the server (Label Studio goes on importing after the client
  left), so every listing that reconciles or sweeps **settles** first: the tasks since the baseline are listed
  every ``settle_interval`` seconds until two listings agree (at most ``settle_limit`` seconds). Without it a
  sweep could act on half of a late import (measured: a 600-task POST timed out at 0.02 s was still landing while
  the sweep listed, and the ledger then named copies that did not survive), and a delete could meet its writes.

So a re-run, a retry after a timeout or a crash between chunks leaves exactly one task per key.
"""

from __future__ import annotations

import json
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Protocol

from labelops.dispatch.tasks import DispatchTask, Prediction

log = logging.getLogger(__name__)

KEY_FIELD = "labelops_key"
TITLE_MAX = 50  # Label Studio's limit on project titles
NO_RETRY = {"max_retries": 0}


class Ledger(Protocol):
    def get(self, name: str) -> Any: ...

    def put(self, name: str, value: Any) -> None: ...


class MemoryLedger:
    """A ledger in a dict (tests, the benchmark)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        return self.data.get(name)

    def put(self, name: str, value: Any) -> None:
        self.data[name] = value


@dataclass(frozen=True)
class ConfigNames:
    """Which tags of a labeling config the tasks and predictions refer to."""

    data_key: str  # the task data field the object tag shows ($text -> "text", $image -> "image")
    object_name: str  # the object tag's name (to_name of the controls)
    object_type: str  # "text" or "image"
    choices: str | None  # name of the <Choices> control (the class)
    labels: str | None  # name of the <Labels> control (entity spans)
    rectangles: str | None = None  # name of the <RectangleLabels> control (bounding boxes, image projects)


def label_config_names(xml: str) -> ConfigNames:
    root = ET.fromstring(xml)
    obj = next((el for el in root.iter() if el.tag in ("Text", "HyperText", "Image")), None)
    if obj is None or not obj.attrib.get("value", "").startswith("$") or "name" not in obj.attrib:
        raise ValueError("the label config has no <Text> or <Image> tag with a name and value=\"$field\"")
    name = obj.attrib["name"]

    def control(tag: str) -> str | None:
        for el in root.iter(tag):
            if el.attrib.get("toName") == name and "name" in el.attrib:
                return el.attrib["name"]
        return None

    return ConfigNames(data_key=obj.attrib["value"][1:], object_name=name,
                       object_type="image" if obj.tag == "Image" else "text",
                       choices=control("Choices"), labels=control("Labels"),
                       rectangles=control("RectangleLabels") if obj.tag == "Image" else None)


def prediction_payload(pred: Prediction, names: ConfigNames) -> dict:
    """A Label Studio prediction: the class as a choice, entity spans as labels, each with its score."""
    result = []
    if pred.label is not None and names.choices:
        result.append({"from_name": names.choices, "to_name": names.object_name, "type": "choices",
                       "value": {"choices": [pred.label]}, "score": pred.score})
    if names.labels:
        for i, span in enumerate(pred.spans):
            result.append({"id": f"s{i}", "from_name": names.labels, "to_name": names.object_name, "type": "labels",
                           "value": {"start": span.start, "end": span.end, "text": span.text,
                                     "labels": [span.label]},
                           **({"score": span.score} if span.score is not None else {})})
    return {"model_version": pred.model_version, "score": pred.score, "result": result}


def task_payload(task: DispatchTask, names: ConfigNames) -> dict:
    """The import payload of one task. A gold task looks like any other: its answer is never sent."""
    data = {names.data_key: task.image_url if names.object_type == "image" else task.text, KEY_FIELD: task.key,
            "record_id": task.record_id}  # (no source key, no selection reason: gold must not stand out)
    if task.note is not None:
        data["labelops_note"] = task.note
    payload: dict = {"data": data}
    preds = ([task.prediction] if task.prediction is not None else []) + list(task.alternatives)
    if preds:
        payload["predictions"] = [prediction_payload(p, names) for p in preds]
    return payload


def queue_title(title: str, queue: str) -> str:
    suffix = f" · {queue}"
    return title[: TITLE_MAX - len(suffix)].rstrip() + suffix


def marker(project: str, queue: str) -> str:
    return f"[labelops:{project}:{queue}]"


def image_storage_settings(bucket: str, prefix: str, access: dict[str, str], *, presign: bool,
                           ttl_minutes: int) -> dict:
    """The S3 import storage an image queue project resolves its tasks' s3:// URIs through. ``access`` is the AWS
    connection as environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    AWS_DEFAULT_REGION, AWS_ENDPOINT_URL; missing ones left out)."""
    settings = {"bucket": bucket, "prefix": prefix, "presign": presign, "presign_ttl": ttl_minutes,
                "regex_filter": "^$",  # matches no key: a sync (from the UI) imports nothing
                "use_blob_urls": False, "recursive_scan": False,
                "region_name": access.get("AWS_DEFAULT_REGION") or "us-east-1"}
    for field, env in (("s3endpoint", "AWS_ENDPOINT_URL"), ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
                       ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"), ("aws_session_token", "AWS_SESSION_TOKEN")):
        if access.get(env):
            settings[field] = access[env]
    return settings


class Queues:
    """Finds or creates the Label Studio project of each queue, with the settings the config asks for."""

    def __init__(self, client, *, project: str, title: str, label_config: str, description: str,
                 overlap_annotators: int, known: dict[str, int] | None = None) -> None:
        self.client, self.project, self.title = client, project, title
        self.label_config, self.description = label_config, description
        self.overlap_annotators = overlap_annotators
        self.ids: dict[str, int] = dict(known or {})

    def settings(self, queue: str) -> dict:
        overlap = queue == "overlap"
        settings = {
            "title": queue_title(self.title, queue),
            "description": f"{self.description}\n\nQueue: {queue}. Managed by labelops {marker(self.project, queue)}",
            "label_config": self.label_config,
            "maximum_annotations": self.overlap_annotators if overlap else 1,
            "overlap_cohort_percentage": 100,
            "show_overlap_first": overlap,
            "show_collab_predictions": True,  # predictions are shown as pre-annotations to correct
        }
        return settings

    def _find(self, queue: str) -> int | None:
        mark = marker(self.project, queue)
        for p in self.client.projects.list(page_size=100):
            if mark in (p.description or ""):
                return p.id
        return None

    def ensure(self, queue: str) -> int:
        """The id of the queue's project, created if missing, its settings brought in line with the config."""
        wanted = self.settings(queue)
        pid = self.ids.get(queue)
        if pid is not None:
            try:
                current = self.client.projects.get(id=pid)
                if marker(self.project, queue) not in (current.description or ""):
                    pid = None  # deleted and the id reused, or not ours
            except Exception as exc:  # noqa: BLE001  (404: the project was deleted)
                if getattr(exc, "status_code", None) != 404:
                    raise
                pid = None
        if pid is None:
            pid = self._find(queue)
        if pid is None:
            pid = self.client.projects.create(**wanted).id
            log.info("created Label Studio project %s for queue %s", pid, queue)
        else:
            current = self.client.projects.get(id=pid)
            changed = {k: v for k, v in wanted.items() if getattr(current, k, None) != v}
            if changed:
                self.client.projects.update(id=pid, **changed)
                log.info("updated Label Studio project %s (%s): %s", pid, queue, ", ".join(sorted(changed)))
        self.ids[queue] = pid
        return pid

    def ensure_image_storage(self, pid: int, queue: str, settings: dict) -> int:
        """The id of the queue project's S3 storage for task images, created if missing, else updated to the
        settings."""
        mark = marker(self.project, queue)
        wanted = {**settings, "title": queue_title(f"{self.title} images", queue),
                  "description": f"Resolves the s3:// URIs of task images; never synced. {mark}"}
        found = [st for st in self.client.import_storage.s3.list(project=pid) if mark in (st.description or "")]
        if not found:
            sid = self.client.import_storage.s3.create(project=pid, **wanted).id
            log.info("created the S3 image storage %s of Label Studio project %s", sid, pid)
            return sid
        # keys are write-only (Label Studio never returns them), so the settings are sent again on every run: a
        # rotated key or a changed endpoint reaches the storage
        self.client.import_storage.s3.update(id=found[0].id, **wanted)
        return found[0].id

    def show_model_version(self, pid: int, model_version: str) -> None:
        """Pre-annotate with this model version's predictions (Label Studio accepts a version only once the
        project holds predictions of it: call after the import)."""
        if self.client.projects.get(id=pid).model_version != model_version:
            self.client.projects.update(id=pid, model_version=model_version)


def _id_ranges(ids: list[int]) -> str:
    ids = sorted(ids)
    out, start, prev = [], ids[0], ids[0]
    for i in ids[1:] + [None]:
        if i is None or i != prev + 1:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            if i is not None:
                start = i
        if i is not None:
            prev = i
    return ", ".join(out)


class Importer:
    """Chunked, reconciled, exactly-once import of tasks into Label Studio projects (see the module doc)."""

    def __init__(self, client, names: ConfigNames, ledger: Ledger, *, chunk_size: int = 500, attempts: int = 4,
                 backoff: float = 1.0, sleep=time.sleep, settle_interval: float = 1.0,
                 settle_limit: float = 60.0) -> None:
        self.client, self.names, self.ledger = client, names, ledger
        self.chunk_size, self.attempts, self.backoff, self.sleep = chunk_size, attempts, backoff, sleep
        self.settle_interval, self.settle_limit = settle_interval, settle_limit

    # -- what is in the project -------------------------------------------------------------------------------

    def max_task_id(self, pid: int) -> int:
        page = self.client.tasks.list(project=pid, page_size=1, fields="task_only",
                                      query=json.dumps({"ordering": ["-tasks:id"]}))
        items = list(page.items or [])
        return int(items[0].id) if items else 0

    def tasks_since(self, pid: int, baseline: int) -> dict[str, list[tuple[int, int]]]:
        """key -> (task id, annotations) of the tasks created in the project after task id `baseline`, ids
        ascending."""
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": baseline}]},
            "ordering": ["tasks:id"]}
        found: dict[str, list[tuple[int, int]]] = {}
        for t in self.client.tasks.list(project=pid, page_size=1000, fields="task_only", query=json.dumps(query)):
            key = (t.data or {}).get(KEY_FIELD)
            if key is not None and int(t.id) > baseline:
                found.setdefault(key, []).append((int(t.id), int(getattr(t, "total_annotations", 0) or 0)))
        return {k: sorted(v) for k, v in found.items()}

    def settled_since(self, pid: int, baseline: int) -> dict[str, list[tuple[int, int]]]:
        """`tasks_since`, once it stops changing: listed every `settle_interval` seconds until two listings agree
        (a POST we gave up on may still be landing), at most `settle_limit` seconds (then the last listing)."""
        last = self.tasks_since(pid, baseline)
        waited = 0.0
        while waited < self.settle_limit:
            self.sleep(self.settle_interval)
            waited += self.settle_interval
            now = self.tasks_since(pid, baseline)
            if now == last:
                return now
            log.info("tasks of project %s still changing (%d keys, was %d): waiting for them to settle", pid,
                     len(now), len(last))
            last = now
        log.warning("tasks of project %s did not settle within %.0f s: going on with the last listing", pid,
                    self.settle_limit)
        return last

    def keys_since(self, pid: int, baseline: int) -> dict[str, int]:
        """key -> id of the first task with that key created after task id `baseline`, once settled."""
        return {k: v[0][0] for k, v in self.settled_since(pid, baseline).items()}

    def sweep(self, pid: int, baseline: int) -> int:
        """The last line of defence: a POST that timed out on our side may still be applied by the server after
        we reconciled and re-imported. Every key created twice since the baseline keeps its first task; the
        later copies (created by this run, not yet annotated) are deleted in one Data Manager action. Returns
        how many were deleted."""
        extra = []
        for key, tasks in self.settled_since(pid, baseline).items():
            for task_id, annotations in tasks[1:]:
                if annotations:
                    log.warning("task %s repeats key %s (first: task %s) but is annotated already: kept", task_id,
                                key, tasks[0][0])
                else:
                    extra.append(task_id)
        if extra:
            self.client.actions.create(id="delete_tasks", project=pid,
                                       selected_items={"all": False, "included": extra})
            log.warning("deleted %d later copies of tasks this run created twice (a POST applied after its "
                        "client gave up): task ids %s", len(extra), _id_ranges(extra))
        return len(extra)

    # -- the import -------------------------------------------------------------------------------------------

    def _post(self, pid: int, tasks: list[DispatchTask]) -> list[int]:
        payload = [task_payload(t, self.names) for t in tasks]
        resp = self.client.projects.import_tasks(id=pid, request=payload, return_task_ids=True,
                                                 request_options=NO_RETRY)
        ids = list(getattr(resp, "task_ids", None) or [])
        if len(ids) != len(tasks):
            raise RuntimeError(f"Label Studio reported {len(ids)} task ids for {len(tasks)} imported tasks")
        return [int(i) for i in ids]

    def run(self, queue: str, pid: int, tasks: list[DispatchTask]) -> dict:
        """Import `tasks` (in the run's fixed order) into project `pid`; returns counts and key -> task id."""
        base_name = f"{queue}/baseline"
        baseline = self.ledger.get(base_name)
        resumed = baseline is not None  # an earlier attempt of this run got this far: its last POST is unknown
        if not resumed:
            baseline = self.max_task_id(pid)
            self.ledger.put(base_name, baseline)
        present: dict[str, int] | None = None
        created = already = 0
        task_ids: dict[str, int] = {}
        for n, start in enumerate(range(0, len(tasks), self.chunk_size)):
            chunk = tasks[start: start + self.chunk_size]
            done_name = f"{queue}/chunk-{n:06d}.done"
            done = self.ledger.get(done_name)
            if done is not None:
                already += len(chunk)
                task_ids.update(done["task_ids"])
                continue
            uncertain = resumed and present is None
            for attempt in range(1, self.attempts + 1):
                if uncertain:  # an earlier POST may have been applied: ask the project, once
                    if not self.ledger.get(f"{queue}/needs_sweep"):
                        self.ledger.put(f"{queue}/needs_sweep", True)
                    present = self.keys_since(pid, baseline)
                    uncertain = False
                missing = [t for t in chunk if present is None or t.key not in present]
                try:
                    ids = self._post(pid, missing) if missing else []
                    break
                except Exception as exc:  # noqa: BLE001
                    status = getattr(exc, "status_code", None)
                    if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
                        raise  # a request Label Studio refuses (bad payload): retrying cannot help
                    if attempt == self.attempts:
                        raise
                    log.warning("import of chunk %d (%d tasks) into project %s failed (%s); reconciling and "
                                "retrying", n, len(missing), pid, status or type(exc).__name__)
                    uncertain = True
                    self.sleep(self.backoff * 2 ** (attempt - 1))
            new_ids = dict(zip([t.key for t in missing], ids))
            if present is not None:
                present.update(new_ids)
            kept = {t.key: present[t.key] for t in chunk if present is not None and t.key in present
                    and t.key not in new_ids}
            created += len(new_ids)
            already += len(kept)
            chunk_ids = {**kept, **new_ids}
            self.ledger.put(done_name, {"task_ids": chunk_ids, "created": len(new_ids)})
            task_ids.update(chunk_ids)
        swept = 0
        if self.ledger.get(f"{queue}/needs_sweep") and self.ledger.get(f"{queue}/swept") is None:
            swept = self.sweep(pid, baseline)
            if swept:  # the task kept for a key is its first one: the ledger names it from now on
                first = self.keys_since(pid, baseline)
                task_ids = {k: first.get(k, v) for k, v in task_ids.items()}
                for n, start in enumerate(range(0, len(tasks), self.chunk_size)):
                    done_name = f"{queue}/chunk-{n:06d}.done"
                    record = self.ledger.get(done_name)
                    record["task_ids"] = {k: task_ids[k] for k in record["task_ids"]}
                    self.ledger.put(done_name, record)
            self.ledger.put(f"{queue}/swept", {"deleted": swept})
        # every key counted once: created by this run (even when the POST we thought lost is the one that stuck)
        # or already there before it; copies the sweep removed are counted apart
        return {"created": created, "already_present": already, "duplicates_removed": swept, "task_ids": task_ids}


class LabelStudioPlatform:
    """Dispatch to Label Studio: the queue projects, then the exactly-once import of each queue's tasks."""

    name = "label_studio"

    def __init__(self, client, project, store, paths, s3_access: dict[str, str] | None = None) -> None:
        """``s3_access``: the AWS connection as environment variables (image projects: the storage Label Studio
        reads the images through)."""
        self.client, self.project, self.store, self.paths = client, project, store, paths
        self.s3_access = s3_access

    def dispatch(self, tasks: list[DispatchTask], ledger: Ledger, model_version: str | None) -> dict:
        spec = self.project.spec
        names = label_config_names(self.project.label_config_xml)
        queues = Queues(self.client, project=self.project.name,
                        title=spec.label_studio.project_title or self.project.name,
                        label_config=self.project.label_config_xml, description=spec.description,
                        overlap_annotators=spec.dispatch.overlap_annotators,
                        known=self.store.get_json(self.paths.label_studio))
        importer = Importer(self.client, names, ledger, chunk_size=spec.dispatch.chunk_size)
        storage = None
        if names.object_type == "image":
            if self.s3_access is None:
                raise ValueError(f"project {self.project.name}: image tasks need the AWS connection's settings "
                                 "(s3_access) for Label Studio's S3 storage")
            storage = image_storage_settings(spec.storage.bucket, spec.storage.source_prefix, self.s3_access,
                                             presign=spec.label_studio.image_urls == "presign",
                                             ttl_minutes=spec.label_studio.presign_ttl_minutes)
        totals = {"created": 0, "already_present": 0, "duplicates_removed": 0, "per_queue": {}, "task_ids": {}}
        for queue in sorted({t.route for t in tasks}):
            pid = queues.ensure(queue)
            self.store.put_json(self.paths.label_studio, queues.ids)
            if storage is not None:
                queues.ensure_image_storage(pid, queue, storage)
            queued = [t for t in tasks if t.route == queue]
            result = importer.run(queue, pid, queued)
            if model_version and any(t.prediction is not None for t in queued):
                queues.show_model_version(pid, model_version)
            for k in ("created", "already_present", "duplicates_removed"):
                totals[k] += result[k]
            totals["task_ids"].update(result["task_ids"])
            totals["per_queue"][queue] = {"project_id": pid, "created": result["created"],
                                          "already_present": result["already_present"]}
        return totals
