"""Dispatch to Scale through the real `scaleapi` client against tools/fake_scale.py run as a subprocess: task
types and payloads, exactly one task per unique_id across re-runs, retries and faults (429, 5xx, a request that
took effect but whose answer was lost or late), pagination, batches, auth errors, state across a restart."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests
import scaleapi
from scaleapi.exceptions import (ScaleDuplicateResource, ScaleInvalidRequest, ScaleResourceNotFound,
                                 ScaleUnauthorized)

from conftest import free_port
from labelops.dispatch.scale import ScaleDispatcher, ScaleDispatchError
from labelops.dispatch.tasks import DispatchTask, Gold, Prediction, Span, task_key

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tools" / "fake_scale.py"
LABELS = ("card_arrival", "lost_card", "refund")
ENTITIES = ("amount", "merchant")


class Fake:
    """A fake_scale process; `url` is the API base (…/v1), `key` the accepted API key."""

    def __init__(self, state: Path, *, tls: tuple[Path, Path] | None = None, port: int | None = None) -> None:
        self.state, self.tls = state, tls
        self.port = port or free_port()
        self.key = "live_" + uuid.uuid4().hex
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}/v1"
        self.log = state.parent / f"{state.name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Fake":
        argv = [sys.executable, str(FAKE), "--host", "127.0.0.1", "--port", str(self.port), "--state",
                str(self.state), "--api-key-env", "FAKE_SCALE_KEY"]
        if self.tls:
            argv += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, env={**os.environ, "FAKE_SCALE_KEY": self.key}, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.get("/_faults").status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.05)
        raise AssertionError(f"fake_scale did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def _verify(self):
        return str(self.tls[0]) if self.tls else True

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url[:-3] + path, auth=(self.key, ""), timeout=10, verify=self._verify(), **kw)

    def faults(self, *specs: dict) -> None:
        r = requests.post(self.url[:-3] + "/_faults", json=list(specs), auth=(self.key, ""), timeout=10,
                          verify=self._verify())
        assert r.status_code == 200, r.text

    def pending_faults(self) -> list[dict]:
        return [f for f in self.get("/_faults").json() if f["remaining"] > 0]

    def clear_faults(self) -> None:
        requests.delete(self.url[:-3] + "/_faults", auth=(self.key, ""), timeout=10, verify=self._verify())

    def client(self, key: str | None = None) -> scaleapi.ScaleClient:
        return scaleapi.ScaleClient(key or self.key, api_instance_url=self.url,
                                    verify=str(self.tls[0]) if self.tls else None)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    f = Fake(tmp_path_factory.mktemp("fake-scale") / "state").start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _no_leftover_faults(request):
    yield
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").clear_faults()


def name() -> str:
    return "p" + uuid.uuid4().hex[:10]


def dispatcher(client, project: str, task_type: str = "intent_classification", **kw) -> ScaleDispatcher:
    kw.setdefault("backoff", 0.01)
    return ScaleDispatcher(client, project=project, task_type=task_type, labels=LABELS, entities=ENTITIES,
                           instruction="Pick the customer's intent.", **kw)


def intent_tasks(project: str, n: int, route: str = "main", start: int = 0, **kw) -> list[DispatchTask]:
    return [DispatchTask(key=f"{project}:r{i}", record_id=f"r{i}", text=f"where is my card number {i}?",
                         route=route, selection="uncertainty", selection_score=0.42,
                         prediction=Prediction("m-7", LABELS[i % 3], 0.61), source_key="raw/a.jsonl",
                         ingest_run_id="ing-1", **kw)
            for i in range(start, start + n)]


def tasks_in(client, scale_project: str) -> list[dict]:
    return [t.as_dict() for t in client.get_tasks(project_name=scale_project, limit=100)]


def assert_one_per_key(client, scale_project: str, keys) -> list[dict]:
    docs = tasks_in(client, scale_project)
    counts = Counter(d["unique_id"] for d in docs)
    assert all(c == 1 for c in counts.values()), counts.most_common(3)
    assert set(counts) == set(keys)
    return docs


# ---- payloads ----------------------------------------------------------------------------------------------


def test_intent_tasks_are_categorization_with_categories_unique_id_and_metadata(fake):
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 3, "verify") + intent_tasks(project, 2, "expert", start=3)
    result = dispatcher(client, project).dispatch(tasks, "run-1")

    assert result["created"] == 5 and result["already_present"] == 0
    assert result["per_queue"] == {"expert": 2, "verify": 3}
    assert result["batches"] == [f"{project}-expert-run-1", f"{project}-verify-run-1"]
    for queue in ("verify", "expert"):
        p = client.get_project(f"{project}-{queue}")
        assert p.type == "categorization" and p.instruction == "Pick the customer's intent."
    docs = {d["unique_id"]: d for d in tasks_in(client, f"{project}-verify")}
    assert set(docs) == {t.key for t in tasks[:3]}
    doc = docs[f"{project}:r1"]
    assert doc["type"] == "categorization"
    assert doc["params"] == {"attachment": "where is my card number 1?", "attachment_type": "text",
                             "categories": list(LABELS)}
    assert doc["batch"] == f"{project}-verify-run-1" and doc["project"] == f"{project}-verify"
    assert doc["metadata"] == {
        "labelops_project": project, "labelops_key": f"{project}:r1", "record_id": "r1", "route": "verify",
        "annotators": 1, "dispatch_run": "run-1", "model_version": "m-7", "model_label": "lost_card",
        "model_score": 0.61}  # no selection reason, no source key: a gold task must not stand out
    assert "hypothesis" not in doc  # only on request (hypothesis=True)
    assert result["task_ids"][f"{project}:r1"] == doc["task_id"]
    assert client.get_task(doc["task_id"]).unique_id == f"{project}:r1"


def test_hypothesis_carries_the_prediction_when_asked(fake):
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 3)
    tasks.append(DispatchTask(key=f"{project}:unknown", record_id="x", text="hi", route="main",
                              prediction=Prediction("m-7", "not_a_label", 0.3)))
    dispatcher(client, project, hypothesis=True).dispatch(tasks, "run-1")
    docs = {d["unique_id"]: d for d in tasks_in(client, f"{project}-main")}
    assert [docs[t.key]["hypothesis"] for t in tasks[:3]] == [{"category": LABELS[i]} for i in range(3)]
    assert "hypothesis" not in docs[f"{project}:unknown"]  # a label outside the taxonomy is not pre-filled
    assert docs[f"{project}:unknown"]["metadata"]["model_label"] == "not_a_label"


def test_entity_tasks_are_ner_with_entity_labels_and_span_hypothesis(fake):
    client, project = fake.client(), name()
    text = "I paid 20 EUR at Lidl twice"
    pred = Prediction("ner-2", None, 0.8,
                      spans=(Span(7, 13, "amount", "20 EUR", 0.9), Span(17, 21, "merchant", "Lidl")))
    tasks = [DispatchTask(key=f"{project}:e1", record_id="e1", text=text, route="main", prediction=pred,
                          selection="random")]
    result = dispatcher(client, project, "intent_entities", hypothesis=True).dispatch(tasks, "r")
    assert result["created"] == 1
    assert client.get_project(f"{project}-main").type == "namedentityrecognition"
    (doc,) = tasks_in(client, f"{project}-main")
    assert doc["type"] == "namedentityrecognition"
    assert doc["params"] == {"text": text, "labels": [{"name": "amount"}, {"name": "merchant"}]}
    assert doc["hypothesis"] == {"annotations": [{"start": 7, "end": 13, "text": "20 EUR", "label": "amount"},
                                                 {"start": 17, "end": 21, "text": "Lidl", "label": "merchant"}]}
    assert doc["metadata"]["model_version"] == "ner-2" and doc["metadata"]["model_spans"] == 2
    assert "model_label" not in doc["metadata"]


def test_image_tasks_send_the_image_url_as_attachment(fake):
    client, project = fake.client(), name()
    tasks = [DispatchTask(key=f"{project}:i1", record_id="i1", text=None, image_url="https://img.example/1.png",
                          route="main")]
    dispatcher(client, project, "image_classification").dispatch(tasks, "r")
    (doc,) = tasks_in(client, f"{project}-main")
    assert doc["params"]["attachment"] == "https://img.example/1.png"
    assert doc["params"]["attachment_type"] == "image"


def test_a_gold_answer_is_never_sent(fake):
    client, project = fake.client(), name()
    secret = "refund"  # the gold answer; also one of the categories, so look for it outside params.categories
    gold = DispatchTask(key=task_key(project, "g1", gold_run="run-1"), record_id="g1", text="money back please", route="main",
                        gold=Gold(label=secret, spans=(Span(0, 5, "amount", "money"),)), selection="gold")
    sent: list[dict] = []
    create = client.create_task
    client.create_task = lambda task_type, **body: (sent.append(body), create(task_type, **body))[1]
    dispatcher(client, project, hypothesis=True).dispatch([gold, *intent_tasks(project, 1)], "run-1")
    body = next(b for b in sent if b["unique_id"] == gold.key)  # what went over the wire
    doc = next(d for d in tasks_in(client, f"{project}-main") if d["unique_id"] == gold.key)
    for thing in (body, doc, doc["params"]):
        thing.pop("categories", None)
    assert secret not in json.dumps(body) and secret not in json.dumps(doc)
    assert "money" not in json.dumps(body["metadata"]) and "hypothesis" not in body
    assert "selection" not in doc["metadata"] and "source_key" not in doc["metadata"]


# ---- exactly once ------------------------------------------------------------------------------------------


def test_a_second_dispatch_creates_nothing_and_overlap_makes_one_task_per_annotator(fake):
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 4, "verify") + intent_tasks(project, 2, "overlap", start=4, annotators=3)
    keys_overlap = {f"{t.key}#{i}" for t in tasks[4:] for i in (1, 2, 3)}
    first = dispatcher(client, project).dispatch(tasks, "run-1")
    assert (first["created"], first["already_present"]) == (10, 0)
    assert first["per_queue"] == {"overlap": 6, "verify": 4}

    again = dispatcher(client, project).dispatch(tasks + tasks[:1], "run-1")  # a duplicate in the input, too
    assert (again["created"], again["already_present"]) == (0, 10)
    assert again["task_ids"] == first["task_ids"]
    assert again["batches"] == first["batches"]

    assert_one_per_key(client, f"{project}-verify", {t.key for t in tasks[:4]})
    docs = assert_one_per_key(client, f"{project}-overlap", keys_overlap)
    copies = sorted((d["metadata"]["labelops_key"], d["metadata"]["copy"]) for d in docs)
    assert copies == sorted((t.key, i) for t in tasks[4:] for i in (1, 2, 3))
    assert {d["metadata"]["annotators"] for d in docs} == {3}


def test_429_and_5xx_mid_run_still_end_with_one_task_per_key(fake, caplog):
    caplog.set_level(logging.DEBUG)
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 12)
    fake.faults(
        {"path": "/v1/task/", "method": "POST", "status": 429, "count": 2, "skip": 2},
        {"path": "/v1/task/", "method": "POST", "status": 503, "count": 1, "skip": 4},
        # the next ones take effect but their answer is an error / is lost: the retry meets a 409
        {"path": "/v1/task/", "method": "POST", "status": 500, "mode": "after", "count": 2, "skip": 6},
        {"path": "/v1/task/", "method": "POST", "mode": "drop", "count": 1, "skip": 9},
        {"path": "/v1/tasks", "method": "GET", "status": 502, "count": 1},
        {"path": "/v1/batches", "method": "POST", "status": 500, "mode": "after", "count": 1},
    )
    result = dispatcher(client, project).dispatch(tasks, "run-1")
    assert fake.pending_faults() == []  # every fault was met
    assert (result["created"], result["already_present"]) == (12, 0)
    assert_one_per_key(client, f"{project}-main", {t.key for t in tasks})
    assert client.get_batch(f"{project}-main-run-1").status == "in_progress"
    assert "retrying" in caplog.text
    assert fake.key not in caplog.text and fake.key not in fake.log.read_text()
    assert "where is my card" not in caplog.text  # no task text in the logs either


def test_a_request_answered_after_the_client_timeout_counts_once(fake, caplog):
    caplog.set_level(logging.INFO, logger="labelops")
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 3)
    fake.faults({"path": "/v1/task/", "method": "POST", "mode": "delay", "delay": 4, "count": 1, "skip": 1})
    started = time.monotonic()
    result = dispatcher(client, project, request_timeout=0.4).dispatch(tasks, "r")
    assert time.monotonic() - started < 3  # the client alone has no timeout: it would wait the 4 s
    assert f"create task {project}:r1: no answer (ReadTimeout), but the task exists" in caplog.text
    assert fake.pending_faults() == []
    assert (result["created"], result["already_present"]) == (3, 0)
    assert_one_per_key(client, f"{project}-main", {t.key for t in tasks})


def test_a_request_that_takes_effect_after_our_lookup_counts_once(fake):
    # attempt 1 times out (0.3 s); our lookup finds nothing; the server applies attempt 1 at 1 s; our retry
    # (after 1.5 s) meets 409: the task is ours, created once
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 2)
    fake.faults({"path": "/v1/task/", "method": "POST", "mode": "late", "delay": 1.0, "count": 1})
    d = dispatcher(client, project, request_timeout=0.3, sleep=lambda s: time.sleep(1.5))
    result = d.dispatch(tasks, "r")
    assert fake.pending_faults() == []
    assert (result["created"], result["already_present"]) == (2, 0)
    assert_one_per_key(client, f"{project}-main", {t.key for t in tasks})


def test_a_run_that_fails_midway_is_completed_by_the_next_one(fake):
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 6)
    fake.faults({"path": "/v1/task/", "method": "POST", "status": 503, "count": 100, "skip": 3})
    with pytest.raises(ScaleDispatchError, match=r"gave up after 2 attempts \(last: HTTP 503\)"):
        dispatcher(client, project, max_attempts=2).dispatch(tasks, "run-1")
    assert client.get_batch(f"{project}-main-run-1").status == "staging"  # not finalized: the rerun may add
    fake.clear_faults()
    result = dispatcher(client, project).dispatch(tasks, "run-1")
    assert (result["created"], result["already_present"]) == (3, 3)
    assert_one_per_key(client, f"{project}-main", {t.key for t in tasks})
    assert client.batch_status(f"{project}-main-run-1") == {"status": "in_progress", "pending": 6}


# ---- batches -----------------------------------------------------------------------------------------------


def test_batches_are_finalized_once_and_a_finalized_batch_takes_no_new_tasks(fake):
    client, project = fake.client(), name()
    first = intent_tasks(project, 2)
    dispatcher(client, project).dispatch(first, "run-1")
    base = f"{project}-main-run-1"
    assert client.get_batch(base).status == "in_progress"
    with pytest.raises(ScaleInvalidRequest):  # Scale: no task may be added once a batch is finalized
        client.create_task(scaleapi.TaskType.Categorization, batch=base, attachment="x", attachment_type="text",
                           categories=list(LABELS))

    # the same run again with one more task: the known ones are there, the new one goes to a continuation batch
    result = dispatcher(client, project).dispatch(first + intent_tasks(project, 1, start=2), "run-1")
    assert (result["created"], result["already_present"]) == (1, 2)
    assert result["batches"] == [base, f"{base}-2"]
    new = next(d for d in tasks_in(client, f"{project}-main") if d["unique_id"] == f"{project}:r2")
    assert new["batch"] == f"{base}-2"
    assert client.get_batch(f"{base}-2").status == "in_progress"

    # finalize answered 500 although it took effect: the retry's 400 (not in staging) is fine
    fake.faults({"path": "/v1/batches/", "method": "POST", "status": 500, "mode": "after", "count": 1})
    result = dispatcher(client, project).dispatch(intent_tasks(project, 1, route="expert", start=10), "run-2")
    assert fake.pending_faults() == []
    assert client.get_batch(f"{project}-expert-run-2").status == "in_progress"
    assert result["batches"] == [f"{project}-expert-run-2"]


def test_a_run_with_nothing_new_creates_no_batch(fake):
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 2)
    dispatcher(client, project).dispatch(tasks, "run-1")
    result = dispatcher(client, project).dispatch(tasks, "run-2")
    assert (result["created"], result["already_present"], result["batches"]) == (0, 2, [])
    with pytest.raises(ScaleResourceNotFound):
        client.get_batch(f"{project}-main-run-2")


# ---- the fake's API as the client sees it ------------------------------------------------------------------


def test_pagination_with_next_token_lists_all_250_tasks(fake):
    client, project = fake.client(), name()
    tasks = intent_tasks(project, 250)
    assert dispatcher(client, project).dispatch(tasks, "big")["created"] == 250
    scale_project = f"{project}-main"
    pages, token = [], None
    while True:
        page = client.tasks(project=scale_project, limit=100, **({"next_token": token} if token else {}))
        pages.append(page)
        token = page.next_token
        if not page.has_more:
            break
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [p.has_more for p in pages] == [True, True, False] and pages[-1].next_token is None
    assert {p.total for p in pages} == {250}
    ids = [t.id for p in pages for t in p]
    assert len(set(ids)) == 250
    assert len(list(client.get_tasks(project_name=scale_project, limit=100))) == 250
    assert client.get_tasks_count(project_name=scale_project) == 250
    assert len(list(client.get_tasks(batch_name=f"{scale_project}-big"))) == 250
    assert dispatcher(client, project).dispatch(tasks, "big")["already_present"] == 250  # lookups in chunks
    with pytest.raises(ScaleInvalidRequest):
        client.tasks(project=scale_project, limit=101)
    with pytest.raises(ScaleInvalidRequest):
        client.tasks(project=scale_project, next_token="garbage")


def test_fake_follows_scale_rules_for_unique_id_batches_and_filters(fake):
    client, p1, p2 = fake.client(), name(), name()
    for p in (p1, p2):
        client.create_project(p, scaleapi.TaskType.Categorization, params={"instruction": "i"})
    body = {"attachment": "a", "attachment_type": "text", "categories": ["x", "y"]}
    t = client.create_task(scaleapi.TaskType.Categorization, project=p1, unique_id="u-1", **body)
    with pytest.raises(ScaleDuplicateResource, match=rf'unique_id \("u-1"\) is already used .*\({t.id}\)'):
        client.create_task(scaleapi.TaskType.Categorization, project=p2, unique_id="u-1", **body)  # account-wide
    with pytest.raises(ScaleInvalidRequest):  # wrong task type for the project
        client.create_task(scaleapi.TaskType.NamedEntityRecognition, project=p1, text="t", labels=["x"])
    with pytest.raises(ScaleInvalidRequest):
        client.create_task(scaleapi.TaskType.Categorization, project=p1, attachment="a", attachment_type="text")
    client.create_batch(p2, f"{p2}-b")
    with pytest.raises(ScaleDuplicateResource):
        client.create_batch(p2, f"{p2}-b")
    t2 = client.create_task(scaleapi.TaskType.Categorization, batch=f"{p2}-b", unique_id="u-2", **body)
    assert t2.project == p2  # the batch's project
    assert client.finalize_batch(f"{p2}-b").status == "in_progress"
    with pytest.raises(ScaleInvalidRequest):
        client.finalize_batch(f"{p2}-b")
    with pytest.raises(ScaleResourceNotFound):
        client.get_task("0" * 24)
    assert [x.id for x in client.tasks(unique_id=["u-1", "u-2", "nope"])] == [t.id, t2.id]
    assert [x.id for x in client.tasks(project=p2, status="pending")] == [t2.id]
    assert list(client.tasks(project=p2, status="completed")) == []
    assert [b.name for b in client.get_batches(project_name=p2)] == [f"{p2}-b"]
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    assert list(client.tasks(project=p1, start_time=later)) == []
    assert [x.id for x in client.tasks(project=p1, end_time=later)] == [t.id]


def test_a_wrong_key_is_a_clear_error_without_the_key(fake):
    wrong = "live_" + uuid.uuid4().hex
    project = name()
    with pytest.raises(ScaleDispatchError) as err:
        dispatcher(fake.client(wrong), project).dispatch(intent_tasks(project, 1), "r")
    message = str(err.value)
    assert "rejected the API key (HTTP 401)" in message and fake.url in message
    assert wrong not in "".join(traceback.format_exception(err.value))
    with pytest.raises(ScaleUnauthorized):
        fake.client(wrong).get_projects()
    assert f"{project}-main" not in [p.name for p in fake.client().get_projects()]


def test_state_survives_a_restart(tmp_path):
    f = Fake(tmp_path / "state").start()
    try:
        client, project = f.client(), name()
        tasks = intent_tasks(project, 3)
        dispatcher(client, project).dispatch(tasks, "r")
    finally:
        f.stop()
    again = Fake(tmp_path / "state", port=f.port)
    again.key = f.key
    again.start()
    try:
        client = again.client()
        result = dispatcher(client, project).dispatch(tasks, "r")
        assert (result["created"], result["already_present"]) == (0, 3)
        assert client.get_batch(f"{project}-main-r").status == "in_progress"
        assert_one_per_key(client, f"{project}-main", {t.key for t in tasks})
    finally:
        again.stop()


# ---- over https: the scaleapi client's own retries ---------------------------------------------------------


@pytest.fixture(scope="module")
def tls_fake(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    d = tmp_path_factory.mktemp("fake-scale-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    f = Fake(d / "state", tls=(d / "cert.pem", d / "key.pem")).start()
    yield f
    f.stop()


def test_over_https_the_client_retries_by_itself_and_its_409_path_is_covered(tls_fake, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="labelops")
    # trust the fake's certificate the way requests does for every request (the client's own 409 lookup too)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_fake.tls[0]))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    client, project = tls_fake.client(), name()
    tasks = intent_tasks(project, 5) + intent_tasks(project, 1, start=5, annotators=2)
    tls_fake.faults(  # `skip` counts the POSTs to /v1/task/..., the client's own retries included
        {"path": "/v1/task/", "method": "POST", "status": 429, "retry_after": 0, "count": 1, "skip": 1},
        # took effect, answered 500: the client retries, meets 409, fetches the task by unique_id itself
        {"path": "/v1/task/", "method": "POST", "status": 500, "mode": "after", "count": 1, "skip": 3},
        # took effect, connection dropped: the client retries, meets 409, and raises TypeError
        {"path": "/v1/task/", "method": "POST", "mode": "drop", "count": 1, "skip": 5},
        # an overlap copy "<key>#1": the client's lookup URL loses "#1" (unencoded) and finds nothing
        {"path": "/v1/task/", "method": "POST", "status": 500, "mode": "after", "count": 1, "skip": 8},
    )
    sleeps: list[float] = []
    result = dispatcher(client, project, sleep=sleeps.append).dispatch(tasks, "r")
    assert tls_fake.pending_faults() == []
    assert (result["created"], result["already_present"]) == (7, 0)
    assert sleeps == []  # the client retried the 429 and the 500 itself; the doubtful ones were looked up
    assert f"create task {tasks[3].key}: TypeError, but the task exists" in caplog.text
    assert f"create task {tasks[5].key}#1: HTTP 200, but the task exists" in caplog.text
    assert f"create task {tasks[2].key}:" not in caplog.text  # the client's own lookup found that one
    keys = {t.key for t in tasks[:5]} | {f"{tasks[5].key}#{i}" for i in (1, 2)}
    assert_one_per_key(client, f"{project}-main", keys)

    tls_fake.faults({"path": "/v1/task/", "method": "POST", "mode": "drop", "count": 1})
    with pytest.raises(TypeError):  # the client bug worked around above (scaleapi 2.18.4, api.py)
        client.create_task(scaleapi.TaskType.Categorization, project=f"{project}-main", unique_id="tls-x",
                           attachment="a", attachment_type="text", categories=list(LABELS))


def test_over_https_with_a_private_ca_the_clients_own_lookup_fails_and_ours_does_not(tls_fake, monkeypatch,
                                                                                      caplog):
    caplog.set_level(logging.INFO, logger="labelops")
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # only the client's `verify` trusts the fake
        monkeypatch.delenv(var, raising=False)
    # the client's lookup retries its TLS failure with backoff 0, 4, 8 s: read at call time (set_request_timeout)
    monkeypatch.setattr(scaleapi.api, "HTTP_RETRY_BACKOFF_FACTOR", 0)
    client, project = tls_fake.client(), name()
    tasks = intent_tasks(project, 3)
    tls_fake.faults({"path": "/v1/task/", "method": "POST", "status": 502, "mode": "after", "count": 1, "skip": 1})
    result = dispatcher(client, project).dispatch(tasks, "r")
    assert tls_fake.pending_faults() == []
    assert (result["created"], result["already_present"]) == (3, 0)
    assert_one_per_key(client, f"{project}-main", {t.key for t in tasks})
    assert f"create task {project}:r1: no answer (SSLError), but the task exists" in caplog.text


def scale_image_project(image_urls: str):
    from labelops.config import Project, ProjectConfig

    from test_ingest_pipeline import yaml_demo_image_project

    raw = yaml_demo_image_project()
    del raw["label_studio"]
    raw.update(platform="scale", scale={"project": name(), "image_urls": image_urls, "presign_ttl_hours": 2})
    return ProjectConfig(spec=Project.model_validate(raw), labels=tuple(str(i) for i in range(10)),
                         source_file=Path(f"{raw['name']}.yaml"), label_config_xml=None)


@pytest.mark.parametrize("image_urls", ["presign", "s3"])
def test_image_tasks_reach_scale_with_an_attachment_it_can_fetch(fake, s3, image_urls):
    from digits_data import objects

    from labelops.dispatch.scale import ScalePlatform

    project = scale_image_project(image_urls)
    (file_name, png, _), = objects([7])
    key = f"{project.spec.storage.source_prefix}{file_name}"
    s3.put_object(Bucket="labelops", Key=key, Body=png)
    task = DispatchTask(key=f"{project.name}:i7", record_id="i7", text=None, image_url=f"s3://labelops/{key}",
                        route="main")
    client = fake.client()
    ScalePlatform(client, project, "run-1", s3_client=s3).dispatch([task])
    (doc,) = tasks_in(client, f"{project.spec.scale.project}-main")
    attachment = doc["params"]["attachment"]
    assert doc["params"]["attachment_type"] == "image"
    if image_urls == "s3":  # for Scale's own S3 integration
        assert attachment == f"s3://labelops/{key}"
        return
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(attachment).query)
    assert attachment.startswith(s3.meta.endpoint_url) and ("Signature" in query or "X-Amz-Signature" in query)
    if "X-Amz-Expires" in query:  # SigV4: seconds from signing
        assert query["X-Amz-Expires"] == ["7200"]
    else:  # SigV2 (this test's client): the moment it expires
        assert abs(int(query["Expires"][0]) - (time.time() + 7200)) < 120
    got = requests.get(attachment, timeout=10)  # what Scale's workers' browsers fetch
    assert got.status_code == 200 and got.content == png
    # a cleared run signs again, and Scale's unique_id keeps the one task
    ScalePlatform(client, project, "run-1", s3_client=s3).dispatch([task])
    assert len(tasks_in(client, f"{project.spec.scale.project}-main")) == 1
    with pytest.raises(ValueError, match="AWS connection"):
        ScalePlatform(client, project, "run-2").dispatch([task])
