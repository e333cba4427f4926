"""Dispatch to the real Label Studio server of the local stack: queue projects from config, predictions as
pre-annotations, and imports that create each task exactly once through re-runs, lost responses, real client
timeouts and crashes between chunks."""

from __future__ import annotations

import itertools
import json
import time
import uuid

import httpx
import pytest

from labelops.config import load_project
from labelops.dispatch.label_studio import (
    KEY_FIELD,
    Importer,
    MemoryLedger,
    Queues,
    label_config_names,
    queue_title,
    task_payload,
)
from labelops.dispatch.tasks import DispatchTask, Prediction, Span, task_key

from test_ingest_pipeline import PROJECTS

pytestmark = pytest.mark.stack
_ids = itertools.count()
_session = uuid.uuid4().hex[:6]  # Label Studio outlives a test session when reused: names unique per session


def banking():
    return load_project(PROJECTS / "banking_support.yaml")


def fresh_queues(client, *, annotators: int = 2, project=None) -> Queues:
    project = project or banking()
    name = f"t{_session}{next(_ids)}_{project.name}"
    return Queues(client, project=name, title=project.spec.label_studio.project_title, description="test project",
                  label_config=project.label_config_xml, overlap_annotators=annotators)


def make_tasks(prefix: str, n: int, queue: str = "verify", version: str = "intent:m1") -> list[DispatchTask]:
    return [DispatchTask(key=task_key(prefix, f"r{i:05d}"), record_id=f"r{i:05d}", text=f"where is my card number {i}?",
                         route=queue, prediction=Prediction(version, "card_arrival", 0.91 - i / 10_000))
            for i in range(n)]


def project_tasks(client, pid: int) -> list:
    return list(client.tasks.list(project=pid, page_size=1000, fields="all"))


def assert_exactly_once(client, pid: int, tasks: list[DispatchTask]) -> None:
    keys = [t.data[KEY_FIELD] for t in project_tasks(client, pid)]
    assert sorted(keys) == sorted(t.key for t in tasks), "each key must exist exactly once"


def test_queue_projects_follow_the_config_and_are_found_again(label_studio):
    queues = fresh_queues(label_studio, annotators=3)
    verify = queues.ensure("verify")
    overlap = queues.ensure("overlap")
    assert verify != overlap and queues.ensure("verify") == verify
    # a second process that knows no ids finds the same projects by their marker (no second project)
    again = Queues(label_studio, project=queues.project, title=queues.title, description="test project",
                   label_config=queues.label_config, overlap_annotators=3)
    assert again.ensure("overlap") == overlap
    task = make_tasks(queues.project, 1, "overlap", version="intent:m2")
    Importer(label_studio, label_config_names(queues.label_config), MemoryLedger()).run("overlap", overlap, task)
    again.show_model_version(overlap, "intent:m2")
    p = label_studio.projects.get(id=overlap)
    assert (p.maximum_annotations, p.overlap_cohort_percentage, p.model_version) == (3, 100, "intent:m2")
    assert p.show_collab_predictions is True and p.title == queue_title(queues.title, "overlap")
    assert p.label_config.strip() == queues.label_config.strip()
    assert label_studio.projects.get(id=verify).maximum_annotations == 1
    assert len(queue_title("x" * 80, "overlap")) <= 50


def test_tasks_are_created_once_with_their_predictions_and_a_rerun_creates_none(label_studio):
    queues = fresh_queues(label_studio)
    pid = queues.ensure("verify")
    names = label_config_names(queues.label_config)
    tasks = make_tasks(queues.project, 120)
    ledger = MemoryLedger()
    first = Importer(label_studio, names, ledger, chunk_size=50).run("verify", pid, tasks)
    assert (first["created"], first["already_present"]) == (120, 0)
    stored = project_tasks(label_studio, pid)
    assert_exactly_once(label_studio, pid, tasks)
    by_key = {t.data[KEY_FIELD]: t for t in stored}
    assert {k: v.id for k, v in by_key.items()} == first["task_ids"]
    sample = by_key[tasks[7].key]
    assert sample.data["text"] == tasks[7].text and sample.data["record_id"] == tasks[7].record_id
    preds = list(label_studio.predictions.list(task=sample.id))
    assert len(preds) == 1 and preds[0].model_version == "intent:m1"
    assert preds[0].score == pytest.approx(tasks[7].prediction.score)
    assert preds[0].result[0]["value"] == {"choices": ["card_arrival"]}
    second = Importer(label_studio, names, ledger, chunk_size=50).run("verify", pid, tasks)
    assert (second["created"], second["already_present"]) == (0, 120)
    assert second["task_ids"] == first["task_ids"]
    assert_exactly_once(label_studio, pid, tasks)


class CrashAfterPost(MemoryLedger):
    """A worker that dies right after a chunk's POST was applied, before it could record it."""

    def __init__(self, crash_on: str) -> None:
        super().__init__()
        self.crash_on = crash_on

    def put(self, name, value):
        if name == self.crash_on:
            self.crash_on = None
            raise SystemExit("worker killed")
        super().put(name, value)


def test_a_crash_between_a_post_and_its_record_then_a_retry_leaves_one_task_per_key(label_studio):
    queues = fresh_queues(label_studio)
    pid = queues.ensure("expert")
    names = label_config_names(queues.label_config)
    tasks = make_tasks(queues.project, 130, "expert")
    ledger = CrashAfterPost("expert/chunk-000001.done")
    with pytest.raises(SystemExit):
        Importer(label_studio, names, ledger, chunk_size=50).run("expert", pid, tasks)
    assert len(project_tasks(label_studio, pid)) == 100  # chunks 0 and 1 were applied, only 0 was recorded
    retry = Importer(label_studio, names, ledger, chunk_size=50).run("expert", pid, tasks)
    assert (retry["created"], retry["already_present"]) == (30, 100)
    assert_exactly_once(label_studio, pid, tasks)
    ids = {t.data[KEY_FIELD]: t.id for t in project_tasks(label_studio, pid)}
    assert retry["task_ids"] == ids


class Faulty:
    """The real client, except that `projects.import_tasks` goes through `wrap(real_import, **kw)`."""

    def __init__(self, client, wrap) -> None:
        self._client = client
        real = client.projects

        class Projects:
            def import_tasks(self, **kw):
                return wrap(real.import_tasks, **kw)

            def __getattr__(self, name):
                return getattr(real, name)

        self.projects = Projects()

    def __getattr__(self, name):
        return getattr(self._client, name)


def lost_response(times: int = 1):
    """The server applies the import but the answer never reaches us (as after a proxy timeout)."""
    left = [times]

    def wrap(real, **kw):
        result = real(**kw)
        if left[0]:
            left[0] -= 1
            raise httpx.ReadTimeout("response lost")
        return result

    return wrap


def verify_queue(label_studio, n: int):
    """A fresh project's verify queue and n tasks for it: (project id, config names, tasks)."""
    queues = fresh_queues(label_studio)
    return queues.ensure("verify"), label_config_names(queues.label_config), make_tasks(queues.project, n)


def test_a_lost_response_is_reconciled_instead_of_imported_twice(label_studio):
    pid, names, tasks = verify_queue(label_studio, 90)
    result = Importer(Faulty(label_studio, lost_response()), names, MemoryLedger(), chunk_size=40, backoff=0.01).run(
        "verify", pid, tasks)
    assert (result["created"], result["already_present"]) == (50, 40)  # chunk 0 was applied, then found
    assert_exactly_once(label_studio, pid, tasks)


def short_timeout_once(seconds: float = 0.02):
    """The first import gets a real client-side timeout far below the server's time to import it."""
    first = [True]

    def wrap(real, **kw):
        if first[0]:
            first[0] = False
            kw["request_options"] = {**kw.get("request_options", {}), "timeout_in_seconds": seconds}
        return real(**kw)

    return wrap


def test_a_real_client_timeout_leaves_exactly_one_task_per_key(label_studio):
    pid, names, tasks = verify_queue(label_studio, 600)
    ledger = MemoryLedger()
    result = Importer(Faulty(label_studio, short_timeout_once()), names, ledger, chunk_size=600, backoff=0.2).run(
        "verify", pid, tasks)
    assert ledger.get("verify/needs_sweep") is True  # the timeout was noticed and reconciled
    assert result["created"] + result["already_present"] == 600, result
    assert_exactly_once(label_studio, pid, tasks)
    # whichever copy survived (the late POST's or the retry's), the ledger and the result name it
    ids = {t.data[KEY_FIELD]: t.id for t in project_tasks(label_studio, pid)}
    assert result["task_ids"] == ids and ledger.get("verify/chunk-000000.done")["task_ids"] == ids


def test_entity_pre_annotations_land_as_spans_at_their_offsets(label_studio):
    snips = load_project(PROJECTS / "snips_assistant.yaml")
    queues = fresh_queues(label_studio, project=snips)
    pid = queues.ensure("verify")
    names = label_config_names(snips.label_config_xml)
    assert (names.choices, names.labels, names.data_key) == ("intent", "entities", "text")
    text = "Play Hélène Ségara's Les Vents Contraires on Deezer please"
    a, d = text.index("Hélène Ségara"), text.index("Deezer")
    spans = (Span(a, a + 13, "artist", "Hélène Ségara", 0.8), Span(d, d + 6, "service", "Deezer", 0.95))
    assert [text[s.start:s.end] for s in spans] == ["Hélène Ségara", "Deezer"]
    task = DispatchTask(key=task_key(queues.project, "e1"), record_id="e1", text=text, route="verify",
                        prediction=Prediction("entities:e1", "PlayMusic", 0.7, spans))
    payload = task_payload(task, names)
    assert json.dumps(payload)  # serialisable as sent
    ids = Importer(label_studio, names, MemoryLedger()).run("verify", pid, [task])["task_ids"]
    pred = list(label_studio.predictions.list(task=ids[task.key]))[0]
    got = [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0], r.get("score"))
           for r in pred.result if r["type"] == "labels"]
    assert got == [(a, a + 13, "artist", 0.8), (d, d + 6, "service", 0.95)]
    stored = label_studio.tasks.get(id=ids[task.key]).data["text"]
    assert [stored[s:e] for s, e, *_ in got] == ["Hélène Ségara", "Deezer"]
    assert [r["value"]["choices"] for r in pred.result if r["type"] == "choices"] == [["PlayMusic"]]


def late_first_post(delay: float = 0.3):
    """The first import times out on our side, and the server applies it later: after our reconcile looked and
    while our retry is being imported (the retry's call waits until the late one has landed)."""
    import threading

    state: dict = {}

    def wrap(real, **kw):
        if "late" not in state:
            def land():
                time.sleep(delay)
                real(**kw)

            state["late"] = threading.Thread(target=land)
            state["late"].start()
            raise httpx.ReadTimeout("no answer in time")
        result = real(**kw)
        state["late"].join()
        return result

    return wrap


def test_a_post_applied_after_the_reconcile_is_swept_keeping_one_task_per_key(label_studio):
    pid, names, tasks = verify_queue(label_studio, 300)
    ledger = MemoryLedger()
    # the reconcile settles (two equal listings 0.05 s apart) before the late POST lands at 0.3 s: it is found only
    # by the sweep, which settles too
    result = Importer(Faulty(label_studio, late_first_post()), names, ledger, chunk_size=300, backoff=0.05,
                      settle_interval=0.05).run("verify", pid, tasks)
    assert result["duplicates_removed"] == 300  # one of the two copies of every key was deleted
    assert (result["created"], result["already_present"]) == (300, 0)
    assert_exactly_once(label_studio, pid, tasks)
    ids = {t.data[KEY_FIELD]: t.id for t in project_tasks(label_studio, pid)}
    assert result["task_ids"] == ids and ledger.get("verify/chunk-000000.done")["task_ids"] == ids
