"""Pulling annotations back from Scale through the real `scaleapi` client against tools/fake_scale.py: tasks are
created by the dispatch code, a test plays the worker through the fake's /_sim endpoints (not Scale's API), and
the pull turns completed / canceled / errored tasks into annotation rows: labels, spans, overlap copies, `since`,
paging, retries, responses that do not parse."""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
import requests
import scaleapi
from scaleapi.exceptions import ScaleInvalidRequest

from labelops.agreement.scale_pull import (COLUMNS, ScalePull, ScalePullError, parse_response, scale_annotations,
                                           scale_time, split_unique_id)
from labelops.dispatch.scale import ScaleDispatcher
from labelops.dispatch.tasks import DispatchTask
from test_scale_dispatch import ENTITIES, LABELS, Fake, intent_tasks

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def at(minutes: float) -> str:
    """A Scale timestamp `minutes` after T0, as Scale writes them ('...Z')."""
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def row_ts(minutes: float) -> str:
    """The same instant as the rows write it."""
    return (T0 + timedelta(minutes=minutes)).isoformat()


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    f = Fake(tmp_path_factory.mktemp("fake-scale-pull") / "state").start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _no_leftover_faults(fake):
    yield
    fake.clear_faults()


def sim(fake: Fake, task_id: str, what: str, expect: int = 200, **body) -> dict:
    r = requests.post(f"{fake.url[:-3]}/_sim/task/{task_id}/{what}", json=body, auth=(fake.key, ""), timeout=10)
    assert r.status_code == expect, r.text
    return r.json()


def complete(fake: Fake, task_id: str, response: dict, **stamps) -> dict:
    return sim(fake, task_id, "complete", response=response, **stamps)


def name() -> str:
    return "p" + uuid.uuid4().hex[:10]


def dispatch(client, project: str, tasks: list[DispatchTask], task_type: str = "intent_classification") -> dict:
    d = ScaleDispatcher(client, project=project, task_type=task_type, labels=LABELS, entities=ENTITIES,
                        instruction="Label it.", backoff=0.01)
    return d.dispatch(tasks, "run-1")["task_ids"]


def no_sleep(_seconds: float) -> None:
    pass


# ---- rows ------------------------------------------------------------------------------------------------------


def test_intent_rows_and_overlap_copies_as_annotator_slots(fake):
    client, project = fake.client(), name()
    tasks = [*intent_tasks(project, 2), *intent_tasks(project, 1, route="overlap", start=2, annotators=3)]
    ids = dispatch(client, project, tasks)
    assert len(ids) == 5
    complete(fake, ids[f"{project}:r0"], {"category": "lost_card"}, created_at=at(0), completed_at=at(30))
    key = f"{project}:r2"
    for copy, (label, minute) in enumerate([("refund", 10), ("refund", 12), ("lost_card", 15)], start=1):
        complete(fake, ids[f"{key}#{copy}"], {"category": label}, created_at=at(0), completed_at=at(minute))

    main = list(scale_annotations(client, f"{project}-main", since=None, labels=LABELS))
    assert main == [{  # r1 is still pending: no row
        "platform": "scale", "queue": "main", "project_id": f"{project}-main", "task_id": ids[f"{project}:r0"],
        "task_key": f"{project}:r0", "record_id": "r0", "annotation_id": ids[f"{project}:r0"],
        "annotator": "scale:copy-1", "label": "lost_card", "spans": "[]", "created_at": row_ts(0),
        "updated_at": row_ts(30), "lead_time_s": 1800.0, "cancelled": False}]

    overlap = sorted(scale_annotations(client, f"{project}-overlap", since=None), key=lambda r: r["annotator"])
    assert [(r["annotator"], r["label"], r["lead_time_s"]) for r in overlap] == [
        ("scale:copy-1", "refund", 600.0), ("scale:copy-2", "refund", 720.0), ("scale:copy-3", "lost_card", 900.0)]
    assert {(r["queue"], r["task_key"], r["record_id"], r["cancelled"]) for r in overlap} == {
        ("overlap", key, "r2", False)}
    assert [r["task_id"] for r in overlap] == [ids[f"{key}#{i}"] for i in (1, 2, 3)]
    assert all(r["annotation_id"] == r["task_id"] for r in overlap)

    for row in main + overlap:  # the shared schema, JSON and Parquet friendly
        assert tuple(row) == COLUMNS
    json.dumps(main + overlap)
    table = pa.Table.from_pylist(main + overlap)
    assert table.num_rows == 4 and table.schema.field("lead_time_s").type == pa.float64()


def test_the_row_schema_is_the_shared_one():
    pull = pytest.importorskip("labelops.agreement.pull")
    assert COLUMNS == pull.COLUMNS


def test_entity_tasks_give_spans_with_offsets_and_text(fake, caplog):
    client, project = fake.client(), name()
    text = "Paid 20 EUR at Lidl yesterday"
    tasks = [DispatchTask(key=f"{project}:e{i}", record_id=f"e{i}", text=text, route="expert") for i in (1, 2)]
    ids = dispatch(client, project, tasks, "intent_entities")
    complete(fake, ids[f"{project}:e1"], {
        "annotations": [  # Scale's NER response: ids, text, and relationships (ignored); not in order
            {"id": "b", "start": 15, "end": 19, "text": "Lidl", "label": "merchant"},
            {"id": "a", "start": 5, "end": 11, "text": "20 EUR", "label": "amount"}],
        "relationships": [{"id": "r", "source_ref": "a", "target_ref": "b", "name": "paid_at"}]},
        completed_at=at(5))
    complete(fake, ids[f"{project}:e2"], {"annotations": [
        {"start": 5, "end": 11, "label": "amount"},
        {"start": 0, "end": 4, "label": "person"},  # not an entity label of the task: dropped
        {"start": 20, "end": 99, "label": "merchant"}]},  # outside the text: dropped
        completed_at=at(6))
    pull = ScalePull(client)
    with caplog.at_level(logging.WARNING, logger="labelops.agreement.scale_pull"):
        rows = {r["record_id"]: r for r in pull.annotations(f"{project}-expert")}
    assert json.loads(rows["e1"]["spans"]) == [
        {"start": 5, "end": 11, "label": "amount", "text": "20 EUR"},
        {"start": 15, "end": 19, "label": "merchant", "text": "Lidl"}]
    assert rows["e1"]["label"] is None and rows["e1"]["queue"] == "expert"
    assert json.loads(rows["e2"]["spans"]) == [{"start": 5, "end": 11, "label": "amount", "text": "20 EUR"}]
    e2 = ids[f"{project}:e2"]
    assert list(pull.problems) == [e2] and "2 of 3 spans dropped" in pull.problems[e2]
    assert any(e2 in r.getMessage() and "spans dropped" in r.getMessage() for r in caplog.records)
    assert text not in caplog.text  # task text is never logged


def test_since_returns_only_later_completions_and_a_fix_comes_again(fake):
    client, project = fake.client(), name()
    ids = dispatch(client, project, intent_tasks(project, 3))
    for i, minute in enumerate((10, 20, 30)):
        complete(fake, ids[f"{project}:r{i}"], {"category": LABELS[i]}, created_at=at(0), completed_at=at(minute))
    scale_project = f"{project}-main"
    pull = ScalePull(client)
    assert len(list(pull.annotations(scale_project))) == 3
    assert pull.watermark == row_ts(30)

    def records(since) -> list[str]:
        return sorted(r["record_id"] for r in scale_annotations(client, scale_project, since=since))

    assert records(at(15)) == ["r1", "r2"]
    assert records(T0 + timedelta(minutes=15)) == ["r1", "r2"]  # a datetime works too
    assert records(row_ts(30)) == ["r2"]  # Scale's updated_after is inclusive
    assert records(at(30.01)) == []
    # a customer-audit fix: a new response and a later updated_at, completed_at unchanged
    complete(fake, ids[f"{project}:r0"], {"category": "refund"}, updated_at=at(45))
    fixed = list(scale_annotations(client, scale_project, since=at(31)))
    assert [(r["record_id"], r["label"], r["annotation_id"], r["updated_at"]) for r in fixed] == [
        ("r0", "refund", ids[f"{project}:r0"], row_ts(10))]  # same annotation id: it replaces the first row


def test_paging_over_several_pages_small_and_full(fake):
    client, project = fake.client(), name()
    ids = dispatch(client, project, intent_tasks(project, 140))
    for i in range(130):  # 10 stay pending
        complete(fake, ids[f"{project}:r{i}"], {"category": LABELS[i % 3]}, completed_at=at(i))
    scale_project = f"{project}-main"
    full = ScalePull(client)
    rows = list(full.annotations(scale_project))
    assert len(rows) == 130 and len({r["task_id"] for r in rows}) == 130
    assert full.pages == 2 + 1 + 1  # completed: 100 + 30; canceled and error: one empty page each
    assert {r["record_id"]: r["label"] for r in rows} == {f"r{i}": LABELS[i % 3] for i in range(130)}

    small = ScalePull(client, page_size=7)
    rows = list(small.annotations(scale_project, since=at(100)))
    assert sorted(int(r["record_id"][1:]) for r in rows) == list(range(100, 130))
    assert small.pages == 5 + 1 + 1  # 30 completed tasks in pages of 7
    with pytest.raises(ValueError):
        ScalePull(client, page_size=101)


def test_canceled_and_errored_tasks_are_cancelled_rows(fake):
    client, project = fake.client(), name()
    ids = dispatch(client, project, intent_tasks(project, 4))
    complete(fake, ids[f"{project}:r0"], {"category": "refund"}, completed_at=at(1))
    canceled = client.cancel_task(ids[f"{project}:r1"])
    assert canceled.status == "canceled"
    sim(fake, ids[f"{project}:r2"], "error", message="attachment could not be loaded", updated_at=at(3))
    rows = {r["record_id"]: r for r in scale_annotations(client, f"{project}-main", since=None)}
    assert sorted(rows) == ["r0", "r1", "r2"]  # r3 pending
    assert rows["r0"]["cancelled"] is False and rows["r0"]["label"] == "refund"
    for rid in ("r1", "r2"):
        assert rows[rid]["cancelled"] is True
        assert (rows[rid]["label"], rows[rid]["spans"], rows[rid]["lead_time_s"]) == (None, "[]", None)
    assert rows["r2"]["updated_at"] == row_ts(3)
    # the fake keeps Scale's rules: only a pending task can be canceled, a canceled one cannot be completed
    with pytest.raises(ScaleInvalidRequest):
        client.cancel_task(ids[f"{project}:r0"])
    sim(fake, ids[f"{project}:r1"], "complete", expect=400, response={"category": "refund"})
    sim(fake, ids[f"{project}:r3"], "complete", expect=400, response={"category": "refund"}, completed_at="soon")


def test_a_response_that_does_not_parse_gives_no_label_and_is_reported(fake, caplog):
    client, project = fake.client(), name()
    ids = dispatch(client, project, intent_tasks(project, 5))
    responses = [{"category": "not_a_label"}, {"category": ["refund", "lost_card"]}, {"category": ["refund"]},
                 {}, {"category": "card_arrival"}]
    for i, response in enumerate(responses):
        complete(fake, ids[f"{project}:r{i}"], response, completed_at=at(i))
    pull = ScalePull(client)
    with caplog.at_level(logging.WARNING, logger="labelops.agreement.scale_pull"):
        rows = {r["record_id"]: r for r in pull.annotations(f"{project}-main")}
    assert {k: r["label"] for k, r in rows.items()} == {"r0": None, "r1": None, "r2": "refund", "r3": None,
                                                        "r4": "card_arrival"}
    assert not any(r["cancelled"] for r in rows.values())  # completed tasks: a missing label, not a cancellation
    problems = {ids[f"{project}:r{i}"]: reason for i, reason in
                [(0, "unknown category 'not_a_label'"), (1, "2 categories"), (3, "no category")]}
    assert set(pull.problems) == set(problems)
    for task_id, reason in problems.items():
        assert reason in pull.problems[task_id]
        assert any(task_id in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    # the accepted labels can be narrowed by the caller
    narrowed = {r["record_id"]: r["label"] for r in
                scale_annotations(client, f"{project}-main", since=None, labels=("refund",))}
    assert narrowed["r4"] is None and narrowed["r2"] == "refund"


def test_tasks_without_labelops_metadata_are_skipped(fake):
    client, project = fake.client(), name()
    ids = dispatch(client, project, intent_tasks(project, 1))
    other = client.create_task(scaleapi.TaskType.Categorization, project=f"{project}-main", attachment="hello",
                               attachment_type="text", categories=list(LABELS))
    complete(fake, ids[f"{project}:r0"], {"category": "refund"})
    complete(fake, other.id, {"category": "refund"})
    pull = ScalePull(client)
    assert [r["record_id"] for r in pull.annotations(f"{project}-main")] == ["r0"]
    assert pull.skipped == 1


# ---- failures --------------------------------------------------------------------------------------------------


def test_a_failing_page_is_asked_again(fake, caplog):
    client, project = fake.client(), name()
    ids = dispatch(client, project, intent_tasks(project, 12))
    for i in range(12):
        complete(fake, ids[f"{project}:r{i}"], {"category": LABELS[i % 3]}, completed_at=at(i))
    fake.faults({"path": "/v1/tasks", "method": "GET", "status": 503, "skip": 1, "count": 2},
                {"path": "/v1/tasks", "method": "GET", "status": 429, "skip": 4, "count": 1})
    pull = ScalePull(client, page_size=5, backoff=0.01, sleep=no_sleep)
    with caplog.at_level(logging.WARNING, logger="labelops.agreement.scale_pull"):
        rows = list(pull.annotations(f"{project}-main"))
    assert sorted(int(r["record_id"][1:]) for r in rows) == list(range(12))
    assert not fake.pending_faults()
    assert sum("HTTP 503" in r.getMessage() for r in caplog.records) == 2
    assert sum("HTTP 429" in r.getMessage() for r in caplog.records) == 1


def test_failures_are_clear_errors_without_the_key(fake):
    client, project = fake.client(), name()
    dispatch(client, project, intent_tasks(project, 1))
    fake.faults({"path": "/v1/tasks", "status": 502, "count": 10})
    with pytest.raises(ScalePullError, match=rf"list completed tasks of project {project}-main .*HTTP 502.*"
                                             r"after 3 attempts"):
        list(scale_annotations(client, f"{project}-main", since=None, max_attempts=3, sleep=no_sleep))
    fake.clear_faults()
    wrong = "live_" + uuid.uuid4().hex
    with pytest.raises(ScalePullError) as err:
        list(scale_annotations(fake.client(wrong), f"{project}-main", since=None, sleep=no_sleep))
    assert "rejected the API key (HTTP 401)" in str(err.value)
    assert wrong not in "".join(traceback.format_exception(err.value))


# ---- the fake and the pure parts -------------------------------------------------------------------------------


def test_a_next_token_stays_valid_when_its_task_stops_matching(fake):
    client, project = fake.client(), name()
    ids = dispatch(client, project, intent_tasks(project, 5))
    first = client.tasks(project=f"{project}-main", status="pending", limit=2)
    assert len(first) == 2 and first.has_more
    complete(fake, first.docs[-1].id, {"category": "refund"})  # the token's task is no longer pending
    rest = client.tasks(project=f"{project}-main", status="pending", limit=10, next_token=first.next_token)
    assert [t.id for t in rest] == [ids[f"{project}:r{i}"] for i in (2, 3, 4)]
    r = requests.post(f"{fake.url[:-3]}/_sim/task/{first.docs[0].id}/complete", json={"response": {}},
                      auth=("live_wrong", ""), timeout=10)
    assert r.status_code == 401
    assert requests.get(f"{fake.url[:-3]}/_sim/task/x/complete", auth=(fake.key, ""), timeout=10).status_code == 404


def test_parse_response_for_each_task_type():
    cat = {"categories": ["a", "b"]}
    assert parse_response("categorization", cat, {"category": "a"}) == ("a", [], [])
    assert parse_response("categorization", cat, {"category": "c"})[0] is None
    assert parse_response("categorization", cat, None) == (None, [], ["the task has no response object"])
    tax = {"taxonomies": {"intent": {"type": "category", "choices": ["x", "y"]}, "tone": {"choices": ["p"]}}}
    response = {"taxonomies": {"intent": "y", "tone": "p"}}
    assert parse_response("categorization", tax, response, label_field="intent") == ("y", [], [])
    assert parse_response("categorization", tax, response)[0] is None  # two taxonomies, none named
    fields = {"fields": [{"field_id": "intent", "type": "category", "choices": [{"label": "X", "value": "x"}]}]}
    assert parse_response("textcollection", fields, {"annotations": {"intent": "x"}}, label_field="intent")[0] == "x"
    assert parse_response("textcollection", fields, {"annotations": {"intent": ["z"]}}, label_field="intent")[0] is None
    assert "label_field" in parse_response("textcollection", fields, {"annotations": {}})[2][0]
    ner = {"text": "abc def", "labels": [{"name": "word", "children": [{"name": "short"}]}]}
    label, spans, problems = parse_response("namedentityrecognition", ner, {"annotations": [
        {"start": 4, "end": 7, "label": "short", "text": "def"},
        {"start": 0, "end": 3, "label": "word", "text": "ab"}]})
    assert spans == [{"start": 0, "end": 3, "label": "word", "text": "abc"},
                     {"start": 4, "end": 7, "label": "short", "text": "def"}]
    assert problems == ["1 spans whose text differs from the task text at their offsets"]
    assert parse_response("imageannotation", {}, {"annotations": []})[2] == ["task type 'imageannotation' is not read"]


def test_identity_and_time_helpers():
    assert split_unique_id("proj:r1#2") == ("proj:r1", 2)
    assert split_unique_id("proj:r1") == ("proj:r1", None)
    assert split_unique_id("proj:a#b") == ("proj:a#b", None)
    assert scale_time("2026-03-01T08:00:00.5Z") == "2026-03-01 08:00:00.500000"
    assert scale_time("2026-03-01T09:00:00+01:00") == "2026-03-01 08:00:00.000000"
    pull = ScalePull(object(), request_timeout=None)
    row = pull.row({"task_id": "t", "project": "p-verify", "status": "completed", "type": "categorization",
                    "unique_id": "p:r9#4", "metadata": {"record_id": "r9"}, "params": {"categories": ["a", "b"]},
                    "response": {"category": "b"}, "created_at": "2026-03-01T08:00:00Z", "completed_at": None,
                    "updated_at": "2026-03-01T08:00:05Z"})
    assert (row["queue"], row["task_key"], row["annotator"], row["label"]) == ("verify", "p:r9", "scale:copy-4", "b")
    assert (row["updated_at"], row["lead_time_s"]) == ("2026-03-01T08:00:05+00:00", None)


def test_an_api_that_refuses_the_error_status_filter_costs_only_that_listing(fake, caplog):
    client, project = fake.client(), name()
    ids = dispatch(client, project, intent_tasks(project, 2))
    complete(fake, ids[f"{project}:r0"], {"category": "refund"})
    client.cancel_task(ids[f"{project}:r1"])
    # completed: 1 page, canceled: 1 page, then the error listing answers 400
    fake.faults({"path": "/v1/tasks", "method": "GET", "status": 400, "skip": 2, "count": 1})
    with caplog.at_level(logging.WARNING, logger="labelops.agreement.scale_pull"):
        rows = list(scale_annotations(client, f"{project}-main", since=None, sleep=no_sleep))
    assert sorted((r["record_id"], r["cancelled"]) for r in rows) == [("r0", False), ("r1", True)]
    assert "refuses status=error" in caplog.text
    fake.faults({"path": "/v1/tasks", "method": "GET", "status": 400, "skip": 1, "count": 1})
    with pytest.raises(ScalePullError, match="list canceled tasks") as err:  # elsewhere a 400 is an error
        list(scale_annotations(client, f"{project}-main", since=None, sleep=no_sleep))
    assert err.value.code == 400
