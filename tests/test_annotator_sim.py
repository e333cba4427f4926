"""The annotator simulator (tools/annotator_sim.py) on the session's real Label Studio: queue projects created by
the real dispatch code, real Banking77 / SNIPS texts, and answers that follow the profile exactly (each one is
predicted by the simulator's pure functions), so the agreement tests can rely on it."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import uuid
from collections import Counter

import pytest
import yaml

import annotator_sim as sim
from labelops.config import load_project
from labelops.dispatch.label_studio import KEY_FIELD, Importer, MemoryLedger, Queues, label_config_names
from labelops.dispatch.tasks import DispatchTask, Prediction, Span, task_key
from labelops.ingest.dedup import normalise_text, record_id
from seed_model import banking77, snips

from test_ingest_pipeline import PROJECTS, REPO

_session = uuid.uuid4().hex[:6]  # Label Studio outlives a test session when reused: project names unique
_ids = itertools.count()
SEED = 7

# Exact figures: `perfect` is always right, `never` always wrong (systematically so on two intents), `mid` is
# right 80% of the time and skips 20% of its tasks. Users are found by e-mail, so they are shared across sessions.
PROFILE = [
    {"name": "perfect", "email": "perfect@test.sim.labelops.local", "accuracy": 1.0, "lead_time_s": 12},
    {"name": "never", "email": "never@test.sim.labelops.local", "accuracy": 0.0, "lead_time_s": 5,
     "confusions": {"card_arrival": "card_delivery_estimate", "exchange_rate": "exchange_charge"}},
    {"name": "mid", "email": "mid@test.sim.labelops.local", "accuracy": 0.8, "lead_time_s": 8, "skip_rate": 0.2},
]


def project_file(directory, base: str, name: str):
    """A project config file: the demo project `base` under another name (its queue projects are found by that
    name's marker); the command line reads it."""
    raw = yaml.safe_load((PROJECTS / f"{base}.yaml").read_text())
    raw["name"] = name
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def make_queues(client, project, annotators: int = 2) -> Queues:
    return Queues(client, project=project.name, title=project.spec.label_studio.project_title,
                  description="annotator simulator test", label_config=project.label_config_xml,
                  overlap_annotators=annotators)


def staged(project, text: str) -> tuple[str, str]:
    """(normalised text, record id) as ingest stages a text."""
    norm = normalise_text(text, **project.spec.ingest.normalisation.model_dump())
    return norm, record_id(norm)


def ls_tasks(client, pid: int) -> list:
    return list(client.tasks.list(project=pid, page_size=1000, fields="all"))


def user_id(ann) -> int:
    user = ann["completed_by"]
    return user["id"] if isinstance(user, dict) else user


def binomial_ok(hits: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(hits / n - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


# ------------------------------------------------------------------------------------------- pure functions


def test_answers_depend_only_on_seed_task_and_annotator():
    a, b = sim.parse_profile(PROFILE)[2], sim.parse_profile(PROFILE)[0]
    labels = ("x", "y", "z")
    truth = {"label": "x", "spans": []}
    first = [sim.answer(a, 1, f"k{i}", truth, labels) for i in range(200)]
    assert first == [sim.answer(a, 1, f"k{i}", truth, labels) for i in range(200)]
    assert first != [sim.answer(a, 2, f"k{i}", truth, labels) for i in range(200)]
    assert all(sim.answer(b, 1, f"k{i}", truth, labels).label == "x" for i in range(200))
    # the ranking of a task does not depend on who else is in the profile
    full = [x.name for x in sim.ranking(sim.parse_profile(PROFILE), 3, "task")]
    assert [x.name for x in sim.ranking(sim.parse_profile(PROFILE[:2]), 3, "task")] == [
        n for n in full if n != "mid"]


def test_answer_distribution_predicts_accuracy_and_agreement():
    labels = [f"l{i}" for i in range(10)]
    never = {**PROFILE[1], "confusions": {"l0": "l3"}}
    assert sim.answer_distribution(never, "l0", labels) == {"l0": 0.0, "l3": 1.0}
    mid = sim.answer_distribution(PROFILE[2], "l1", labels)
    assert mid["l1"] == 0.8 and math.isclose(sum(mid.values()), 1.0)
    assert math.isclose(sim.expected_pair_agreement(PROFILE[0], PROFILE[2], "l1", labels), 0.8)
    # drawn answers follow the distribution
    a = sim.parse_profile([PROFILE[2]])[0]
    answers = [sim.answer(a, 0, f"k{i}", {"label": "l1"}, labels) for i in range(4000)]
    answered = [x for x in answers if not x.skip]
    assert binomial_ok(len(answers) - len(answered), len(answers), 0.2)
    assert binomial_ok(sum(x.label == "l1" for x in answered), len(answered), 0.8)
    wrong = Counter(x.label for x in answered if x.label != "l1")
    assert set(wrong) <= set(labels) - {"l1"} and len(wrong) == 9
    leads = [x.lead_time for x in answers]
    assert abs(sum(leads) / len(leads) - 8) < 0.5 and min(leads) > 0


def test_spans_are_kept_dropped_or_moved_by_one_token():
    text = "play the album Like A Hurricane by Paul Landers now"
    spans = [{"start": text.index("Like"), "end": text.index(" by"), "label": "album", "text": "Like A Hurricane"},
             {"start": text.index("Paul"), "end": text.index(" now"), "label": "artist", "text": "Paul Landers"}]
    truth = {"label": "PlayMusic", "spans": spans}
    exact = sim.parse_profile([{**PROFILE[0], "span_accuracy": 1.0}])[0]
    sloppy = sim.parse_profile([{**PROFILE[0], "span_accuracy": 0.0}])[0]
    assert all(list(sim.answer(exact, 0, f"k{i}", truth, ["PlayMusic"], text).spans) == spans for i in range(50))
    true_keys = {(s["start"], s["end"], s["label"]) for s in spans}
    kinds = Counter()
    for i in range(400):
        got = sim.answer(sloppy, 0, f"k{i}", truth, ["PlayMusic"], text).spans
        assert not {(s["start"], s["end"], s["label"]) for s in got} & true_keys
        for s in got:
            assert s["text"] == text[s["start"]:s["end"]] and s["text"] == s["text"].strip()
        kinds[len(got)] += 1
    assert set(kinds) == {0, 1, 2}  # dropped or moved, about half and half


def test_profile_is_validated_and_the_default_profile_loads():
    default = sim.parse_profile(sim.load_profile())
    assert len(default) == 5 and min(a.accuracy for a in default) <= 0.7
    assert all(a.email.endswith("@sim.labelops.local") for a in default)
    for project in ("banking_support", "snips_assistant"):
        sim.check_confusions(default, load_project(PROJECTS / f"{project}.yaml").labels)
    for bad, msg in [({**PROFILE[0], "accuracy": 1.5}, "accuracy"), ({**PROFILE[0], "colour": 1}, "unknown"),
                     ({"name": "x", "email": "x@y"}, "required"), ({**PROFILE[0], "skip_rate": 1}, "skip_rate")]:
        with pytest.raises(ValueError, match=msg):
            sim.parse_profile([bad])
    with pytest.raises(ValueError, match="duplicate"):
        sim.parse_profile([PROFILE[0], {**PROFILE[1], "email": PROFILE[0]["email"].upper()}])
    with pytest.raises(ValueError, match="not in the project's taxonomy"):
        sim.check_confusions(sim.parse_profile([{**PROFILE[1], "confusions": {"card_arrival": "nope"}}]),
                             load_project(PROJECTS / "banking_support.yaml").labels)


def test_truth_is_keyed_like_staged_records_and_conflicts_are_left_out():
    project = load_project(PROJECTS / "banking_support.yaml")
    stats: dict = {}
    truth = sim.build_truth(project, [{"text": "  Where is   my card?", "intent": "card_arrival"},
                                      {"text": "Where is my card?", "intent": "card_arrival"},
                                      {"text": "hello\u200b there", "intent": "card_linking"},
                                      {"text": "hello there", "intent": "age_limit"}], stats)
    assert truth == {staged(project, "Where is my card?")[1]: {"label": "card_arrival", "spans": []}}
    assert stats["conflicting_records"] == 1
    snips_project = load_project(PROJECTS / "snips_assistant.yaml")
    raw = "Play  Paul   Landers"
    truth = sim.build_truth(snips_project, [{"text": raw, "intent": "PlayMusic", "spans": [
        {"start": 6, "end": 20, "label": "artist", "text": "Paul   Landers"}]}])
    assert list(truth.values()) == [{"label": "PlayMusic", "spans": [
        {"start": 5, "end": 17, "label": "artist", "text": "Paul Landers"}]}]


@pytest.mark.parametrize("project_name,data", [("banking_support", "banking77"), ("snips_assistant", "snips")])
def test_every_record_and_gold_item_of_the_demo_has_a_known_answer(project_name, data):
    """The demo's raw input read and normalised by ingest's own code, and its gold items, all find their answer
    (with the same spans) in the truth map: the simulator leaves none of the demo's tasks alone."""
    import demo
    from labelops.ingest.pipeline import _normalise
    from labelops.ingest.readers import read_object

    project = load_project(PROJECTS / f"{project_name}.yaml")
    truth = sim.load_truth(project, data)
    objects = demo.sample_objects() if data == "banking77" else demo.snips_objects()
    records = [r for key, body in objects.items() for r in read_object(key, body).records]
    _normalise(project, records)
    assert len(records) >= 600
    for r in records:
        item = truth[record_id(r["text"])]
        if data == "snips":
            assert sorted((e["start"], e["end"], e["label"]) for e in r["entities"]) == [
                (s["start"], s["end"], s["label"]) for s in item["spans"]]
    for line in demo.gold_objects(project_name)["gold.jsonl"].decode().splitlines():
        row = json.loads(line)
        assert truth[staged(project, row["text"])[1]]["label"] == row["label"]


# ------------------------------------------------------------------------------------ on a real Label Studio


@pytest.fixture(scope="module")
def banking_run(label_studio, tmp_path_factory):
    """A fresh banking project with a verify queue (1 annotator) and an overlap queue (2 annotators) of real
    Banking77 test utterances, a third with a correct pre-annotation and a third with a wrong one, plus two
    tasks whose record has no known answer; the simulator run first with a limit, then to the end, then again."""
    path = project_file(tmp_path_factory.mktemp("sim"), "banking_support", f"sim{_session}{next(_ids)}_banking")
    project = load_project(path)
    rows, seen = [], set()
    for r in banking77("test"):
        norm, rid = staged(project, r["text"])
        if rid not in seen:
            seen.add(rid)
            rows.append(r)
        if len(rows) == 330:
            break
    truth = sim.build_truth(project, rows)
    labels = project.labels
    tasks = []
    for i, r in enumerate(rows):
        norm, rid = staged(project, r["text"])
        wrong = labels[(labels.index(r["intent"]) + 1) % len(labels)]
        pred = (Prediction("intent:sim", r["intent"], 0.9) if i % 3 == 0 else
                Prediction("intent:sim", wrong, 0.6) if i % 3 == 1 else None)
        tasks.append(DispatchTask(key=task_key(project.name, rid), record_id=rid, text=norm,
                                  route="overlap" if i % 3 == 2 or i % 5 == 0 else "verify", prediction=pred))
    unknown = [staged(project, f"labelops simulator test {_session}: nobody knows the answer to this one ({i})")
               for i in range(2)]
    tasks += [DispatchTask(key=task_key(project.name, rid), record_id=rid, text=norm, route="verify")
              for norm, rid in unknown]
    queues = make_queues(label_studio, project, annotators=2)
    names = label_config_names(project.label_config_xml)
    pids = {}
    for queue in ("verify", "overlap"):
        pids[queue] = queues.ensure(queue)
        Importer(label_studio, names, MemoryLedger()).run(queue, pids[queue], [t for t in tasks if t.route == queue])
        queues.show_model_version(pids[queue], "intent:sim")
    runs = [sim.simulate(label_studio, project, truth, PROFILE, limit=40, seed=SEED),
            sim.simulate(label_studio, project, truth, PROFILE, seed=SEED),
            sim.simulate(label_studio, project, truth, PROFILE, seed=SEED)]
    stored = {q: ls_tasks(label_studio, pid) for q, pid in pids.items()}
    users = sim.ensure_users(label_studio, sim.parse_profile(PROFILE))
    return {"project": project, "path": path, "truth": truth, "tasks": tasks, "pids": pids, "runs": runs,
            "stored": stored, "unknown": {rid for _, rid in unknown}, "users": users}


@pytest.mark.stack
def test_every_task_with_a_known_answer_gets_its_annotations_from_distinct_annotators(banking_run):
    stored, runs, pids = banking_run["stored"], banking_run["runs"], banking_run["pids"]
    names = {v: k for k, v in banking_run["users"].items()}
    assert set(runs[1]["queues"]) == {"verify", "overlap"}
    assert runs[1]["queues"]["overlap"] == {"project_id": pids["overlap"], "maximum_annotations": 2}
    for queue, need in (("verify", 1), ("overlap", 2)):
        assert stored[queue], queue
        for t in stored[queue]:
            anns = t.annotations
            users = [user_id(a) for a in anns]
            assert len(users) == len(set(users)), "an annotator annotated a task twice"
            assert {names.get(u) for u in users} <= {"perfect", "never", "mid"}
            live = [a for a in anns if not a["was_cancelled"]]
            if t.data["record_id"] in banking_run["unknown"]:
                assert anns == []  # no known answer: left alone, never guessed
            else:
                assert len(live) == need, (queue, t.id, anns)


@pytest.mark.stack
def test_a_run_cut_by_a_limit_continues_and_a_rerun_adds_nothing(banking_run):
    first, second, third = banking_run["runs"]
    assert first["tasks_annotated"] == 40 and first["tasks_left_by_limit"] > 0
    assert second["tasks_left_by_limit"] == 0 and second["tasks_complete"] == 40
    assert third["annotations"] == third["skipped"] == third["tasks_annotated"] == 0
    assert third["made"] == [] and third["tasks_complete"] == len(banking_run["tasks"]) - 2
    for run in banking_run["runs"]:
        assert run["no_truth"] == 2 and run["tasks_exhausted"] == 0
    made = first["made"] + second["made"]
    assert len({(k, a) for k, a, _ in made}) == len(made)
    total = sum(1 for q in banking_run["stored"].values() for t in q for a in t.annotations if not a["was_cancelled"])
    assert total == first["annotations"] + second["annotations"] == len(made)


@pytest.mark.stack
def test_annotations_are_exactly_the_predicted_answers(banking_run):
    """Every stored annotation (who, what, skipped or not, lead time) is what plan_task predicts for the task;
    the cut run and its continuation add up to one uninterrupted run."""
    project, truth = banking_run["project"], banking_run["truth"]
    annotators = sim.parse_profile(PROFILE)
    names = {v: k for k, v in banking_run["users"].items()}
    choices = label_config_names(project.label_config_xml)
    for queue, need in (("verify", 1), ("overlap", 2)):
        for t in banking_run["stored"][queue]:
            item = truth.get(t.data["record_id"])
            if item is None:
                continue
            plan = sim.plan_task(annotators, SEED, t.data[KEY_FIELD], need, set(), item, project.labels)
            expected = sorted((a.name, ans.skip, ans.label, ans.lead_time) for a, ans in plan)
            got = sorted((names[user_id(a)], a["was_cancelled"], sim.parse_result(a["result"], choices)[0],
                          a["lead_time"]) for a in t.annotations)
            assert got == expected, (t.id, got, expected)


@pytest.mark.stack
def test_each_annotators_accuracy_follows_the_profile(banking_run):
    truth = banking_run["truth"]
    by_key = {t.key: t.record_id for t in banking_run["tasks"]}
    made = banking_run["runs"][0]["made"] + banking_run["runs"][1]["made"]
    hits, n = Counter(), Counter()
    for key, annotator, label in made:
        n[annotator] += 1
        hits[annotator] += label == truth[by_key[key]]["label"]
    assert set(n) == {"perfect", "never", "mid"} and min(n.values()) >= 60, n
    assert hits["perfect"] == n["perfect"] and hits["never"] == 0
    assert binomial_ok(hits["mid"], n["mid"], 0.8), (hits["mid"], n["mid"])
    # `never` is wrong the way its confusions say
    for key, annotator, label in made:
        true = truth[by_key[key]]["label"]
        if annotator == "never" and true in PROFILE[1]["confusions"]:
            assert label == PROFILE[1]["confusions"][true]
    per = {a: sum(r["per_annotator"][a]["correct"] for r in banking_run["runs"]) for a in n}
    assert per == dict(hits)


@pytest.mark.stack
def test_overlap_agreement_is_predicted_by_the_profile(banking_run):
    """The share of overlap tasks where both answers agree matches the expectation computed from the profile
    (the answer distributions of the pair who took each task)."""
    project, truth = banking_run["project"], banking_run["truth"]
    names = {v: k for k, v in banking_run["users"].items()}
    choices = label_config_names(project.label_config_xml)
    profile = {p["name"]: p for p in PROFILE}
    agree, expected, variance, n = 0, 0.0, 0.0, 0
    for t in banking_run["stored"]["overlap"]:
        live = [a for a in t.annotations if not a["was_cancelled"]]
        if len(live) != 2:
            continue
        (a, la), (b, lb) = [(names[user_id(x)], sim.parse_result(x["result"], choices)[0]) for x in live]
        p = sim.expected_pair_agreement(profile[a], profile[b], truth[t.data["record_id"]]["label"], project.labels)
        agree += la == lb
        expected += p
        variance += p * (1 - p)
        n += 1
    assert n >= 100
    assert abs(agree - expected) <= 4 * math.sqrt(variance) + 1, (agree, expected, n)


@pytest.mark.stack
def test_skips_are_cancelled_annotations_and_the_task_goes_to_someone_else(banking_run):
    names = {v: k for k, v in banking_run["users"].items()}
    skipped = [(t, a) for q in banking_run["stored"].values() for t in q for a in t.annotations if a["was_cancelled"]]
    assert len(skipped) == sum(r["skipped"] for r in banking_run["runs"]) > 0
    assert {names[user_id(a)] for _, a in skipped} == {"mid"}  # only `mid` skips
    for t, a in skipped:
        assert a["result"] == [] and a["lead_time"] > 0
        assert user_id(a) not in {user_id(x) for x in t.annotations if not x["was_cancelled"]}
    skips = [s for r in banking_run["runs"] for s in r["skips"]]
    assert len(skips) == len(skipped) and {a for _, a in skips} == {"mid"}


@pytest.mark.stack
def test_pre_annotations_are_accepted_when_the_answer_matches_and_corrected_otherwise(banking_run, label_studio):
    project = banking_run["project"]
    choices = label_config_names(project.label_config_xml)
    accepted = corrected = 0
    for q in banking_run["stored"].values():
        for t in q:
            preds = t.predictions
            for a in t.annotations:
                if a["was_cancelled"]:
                    continue
                if not preds:
                    assert a["parent_prediction"] is None
                    continue
                pred = preds[0]
                pid = pred["id"] if isinstance(pred, dict) else pred.id
                result = pred["result"] if isinstance(pred, dict) else pred.result
                assert a["parent_prediction"] == pid
                if sim.parse_result(a["result"], choices) == sim.parse_result(result, choices):
                    accepted += 1
                    assert a["result"] == [{k: v for k, v in r.items() if k != "score"} for r in result]
                else:
                    corrected += 1
    runs = banking_run["runs"]
    assert accepted == sum(r["accepted_predictions"] for r in runs) > 0
    assert corrected == sum(r["corrected_predictions"] for r in runs) > 0


@pytest.mark.stack
def test_a_deleted_annotation_is_redone_by_the_same_annotator_with_the_same_answer(banking_run, label_studio):
    project, truth = banking_run["project"], banking_run["truth"]
    names = {v: k for k, v in banking_run["users"].items()}
    task = next(t for t in banking_run["stored"]["overlap"] if all(not a["was_cancelled"] for a in t.annotations))
    gone = task.annotations[0]
    label_studio.annotations.delete(id=gone["id"])
    again = sim.simulate(label_studio, project, truth, PROFILE, queues=["overlap"], seed=SEED)
    assert (again["annotations"], again["tasks_annotated"]) == (1, 1)
    assert again["made"][0][:2] == (task.data[KEY_FIELD], names[user_id(gone)])
    redone = [a for a in label_studio.annotations.list(id=task.id) if a.id != gone["id"]
              and a.completed_by == user_id(gone)]
    assert len(redone) == 1 and redone[0].result == gone["result"] and redone[0].lead_time == gone["lead_time"]
    assert set(again["queues"]) == {"overlap"}


@pytest.mark.stack
def test_simulated_users_are_created_once(label_studio):
    annotators = sim.parse_profile(PROFILE)
    first = sim.ensure_users(label_studio, annotators)
    assert sim.ensure_users(label_studio, annotators) == first
    emails = Counter((u.email or "").lower() for u in label_studio.users.list())
    assert all(emails[p["email"]] == 1 for p in PROFILE)


@pytest.mark.stack
def test_entity_tasks_get_the_true_spans_when_span_accuracy_is_one(label_studio, tmp_path):
    project = load_project(project_file(tmp_path, "snips_assistant", f"sim{_session}{next(_ids)}_snips"))
    rows = [u for u in snips("*/train_*_full.json") if len(u["spans"]) >= 2][::100][:30]
    truth = sim.build_truth(project, rows)
    assert len(truth) == len(rows) == 30
    tasks = []
    for i, r in enumerate(rows):
        norm, rid = staged(project, r["text"])
        item = truth[rid]
        spans = tuple(Span(s["start"], s["end"], s["label"], s["text"], 0.9) for s in item["spans"])
        pred = Prediction("entities:sim", item["label"], 0.8, spans) if i % 2 == 0 else None
        tasks.append(DispatchTask(key=task_key(project.name, rid), record_id=rid, text=norm, route="overlap",
                                  prediction=pred))
    queues = make_queues(label_studio, project, annotators=2)
    pid = queues.ensure("overlap")
    names = label_config_names(project.label_config_xml)
    Importer(label_studio, names, MemoryLedger()).run("overlap", pid, tasks)
    profile = [{"name": "exact", "email": "exact@test.sim.labelops.local", "accuracy": 1.0, "span_accuracy": 1.0,
                "lead_time_s": 20},
               {"name": "sloppy", "email": "sloppy@test.sim.labelops.local", "accuracy": 1.0, "span_accuracy": 0.0,
                "lead_time_s": 10}]
    counts = sim.simulate(label_studio, project, truth, profile, seed=SEED)
    assert counts["annotations"] == 60 and counts["no_truth"] == 0
    assert counts["accepted_predictions"] == 15 and counts["corrected_predictions"] == 15
    users = {v: k for k, v in sim.ensure_users(label_studio, sim.parse_profile(profile)).items()}
    for t in ls_tasks(label_studio, pid):
        item = truth[t.data["record_id"]]
        true_spans = {(s["start"], s["end"], s["label"]) for s in item["spans"]}
        text = t.data["text"]
        assert len(t.annotations) == 2
        for a in t.annotations:
            label, spans = sim.parse_result(a["result"], names)
            assert label == item["label"]
            for r in a["result"]:
                if r["type"] == "labels":
                    v = r["value"]
                    assert text[v["start"]:v["end"]] == v["text"]
            if users[user_id(a)] == "exact":
                assert set(spans) == true_spans and len(spans) == len(true_spans)
            else:
                assert not set(spans) & true_spans
    assert sim.simulate(label_studio, project, truth, profile, seed=SEED)["annotations"] == 0


@pytest.mark.stack
def test_the_command_line_prints_the_counts_and_never_the_token(banking_run, label_studio_endpoint):
    """The command line on the finished banking project (truth from all of Banking77): nothing left to do."""
    url, token = label_studio_endpoint
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "annotator_sim.py"), "--project", str(banking_run["path"]), "--url", url,
         "--token-env", "SIM_TEST_TOKEN", "--profile", str(write_profile(banking_run["path"].parent)),
         "--data", "banking77", "--seed", str(SEED)],
        env={**os.environ, "SIM_TEST_TOKEN": token}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert token not in out.stdout + out.stderr
    counts = json.loads(out.stdout)
    assert (counts["annotations"], counts["skipped"], counts["no_truth"]) == (0, 0, 2)
    assert counts["tasks_complete"] == len(banking_run["tasks"]) - 2 and "made" not in counts
    assert counts["truth"]["data"] == "banking77" and counts["truth"]["records"] > 13_000
    missing = subprocess.run([sys.executable, str(REPO / "tools" / "annotator_sim.py"), "--project",
                              str(banking_run["path"]), "--url", url, "--token-env", "SIM_TEST_NO_SUCH_VAR"],
                             env=os.environ, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "SIM_TEST_NO_SUCH_VAR is not set" in missing.stderr


def write_profile(directory):
    path = directory / "profile.yaml"
    path.write_text(yaml.safe_dump({"annotators": PROFILE}))
    return path


@pytest.mark.stack
def test_with_several_predictions_the_one_equal_to_the_answer_is_accepted(label_studio, tmp_path):
    """An adjudication task shows the competing answers as predictions: the right one is accepted."""
    project = load_project(project_file(tmp_path, "banking_support", f"sim{_session}{next(_ids)}_adj"))
    rows = banking77("test")[2000:2010]
    truth = sim.build_truth(project, rows)
    labels = project.labels
    tasks = []
    for r in rows:
        norm, rid = staged(project, r["text"])
        wrong = labels[(labels.index(r["intent"]) + 7) % len(labels)]
        tasks.append(DispatchTask(key=task_key(project.name, rid), record_id=rid, text=norm, route="expert",
                                  prediction=Prediction("intent:sim", wrong, 0.6)))
    queues = make_queues(label_studio, project)
    pid = queues.ensure("expert")
    names = label_config_names(project.label_config_xml)
    ids = Importer(label_studio, names, MemoryLedger()).run("expert", pid, tasks)["task_ids"]
    queues.show_model_version(pid, "intent:sim")
    right = {}
    for t, r in zip(tasks, rows):
        right[ids[t.key]] = label_studio.predictions.create(
            task=ids[t.key], model_version="other:answer", score=0.5,
            result=[{"from_name": names.choices, "to_name": names.object_name, "type": "choices",
                     "value": {"choices": [r["intent"]]}}]).id
    counts = sim.simulate(label_studio, project, truth, PROFILE[:1], seed=SEED)
    assert (counts["annotations"], counts["accepted_predictions"], counts["corrected_predictions"]) == (10, 10, 0)
    for t in ls_tasks(label_studio, pid):
        (a,) = t.annotations
        assert a["parent_prediction"] == right[t.id]
        assert sim.parse_result(a["result"], names)[0] == truth[t.data["record_id"]]["label"]
