"""Annotator simulator: simulated human annotators working on a real Label Studio through its API.

    python tools/annotator_sim.py --project banking_support --url http://127.0.0.1:8781 \\
        [--token-env LABEL_STUDIO_TOKEN] [--profile tools/annotators.yaml] [--data banking77|snips] \\
        [--queue overlap ...] [--limit N] [--seed S] [--list]

NOT a labelling tool: it stands for the people of the demo and the tests. Each simulated annotator is a real
Label Studio user (created once, found again by e-mail) whose annotations the admin posts with ``completed_by``.
They answer from the **known labels of the real data** (Banking77 intents; SNIPS intents and entity spans), with
the noise their profile asks for, so the agreement the pipeline measures can be predicted from the profile.

Profile (YAML, `tools/annotators.yaml`): ``annotators:`` (or a bare list), each with

* ``name`` (unique), ``email`` (unique; a reserved domain such as ``@sim.labelops.local``);
* ``accuracy``: probability of answering the true class (given that the annotator answers, i.e. does not skip);
* ``confusions`` (optional): true label -> the wrong label this annotator systematically picks when wrong;
  otherwise a wrong answer is drawn uniformly from the rest of the taxonomy. Confusions whose true label is not
  in the project's taxonomy are ignored (one profile serves several projects);
* ``lead_time_s``: mean seconds per annotation, drawn from a lognormal with that mean (``lead_time_sigma``,
  default 0.5, is the sigma of its log) and recorded as the annotation's ``lead_time``; nobody sleeps;
* ``skip_rate`` (default 0): probability of skipping a task (an annotation with ``was_cancelled``: it does not
  count toward the task's annotations, and that annotator never takes the task again);
* ``span_accuracy`` (default 1; entity projects): probability that each true span is marked exactly; otherwise
  it is dropped or one of its boundaries moves by one token (half and half);
* ``weight`` (default 1): relative share of the tasks the annotator is offered first.

Which annotators take a task, and everything an annotator does with it, depend only on (seed, task key,
annotator name), through SHA-256 (no shared random stream): annotators are ranked per task by weighted
sampling without replacement (key ``-ln(u) / weight``) and the task goes down that ranking to annotators who
have not touched it yet, until it has ``maximum_annotations`` (of its queue project) non-cancelled annotations;
a skip passes it to the next one. So a re-run (or the rest of a run cut by ``--limit``) only adds what is still
missing and ends exactly where one uninterrupted run ends. `answer` and `plan_task` are the pure functions
behind it (tests use them to predict every answer), `answer_distribution` gives each annotator's answer
probabilities for a true label (the expected agreement of two annotators is the dot product of theirs).

Tasks are the queue projects of the labelops dispatch stage (found by their ``[labelops:<project>:<queue>]``
marker), listed with their annotations and predictions. A task's ``data.record_id`` is looked up in the truth
map (record id -> {"label", "spans"}), built from the source rows exactly as ingest stages them (`build_truth`):
a task whose record has no known answer is left alone and counted (``no_truth``), never guessed. Records whose
sources disagree (the same normalised text with two labels) have no known answer.

Pre-annotations: an answer equal to one of the task's predictions (an adjudication task shows several) accepts
it (the prediction's own result, ``parent_prediction`` set); otherwise it corrects the prediction of the
project's shown model version, else the latest one (the annotator's result, ``parent_prediction`` set too, as
Label Studio does for an annotation started from a prediction). Counted as ``accepted_predictions`` /
``corrected_predictions``.

The token is read from an environment variable and never printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

log = logging.getLogger("annotator_sim")

DEFAULT_PROFILE = Path(__file__).resolve().with_name("annotators.yaml")
KEY_FIELD = "labelops_key"
QUEUES = ("verify", "expert", "overlap", "main")
NO_RETRY = {"max_retries": 0}
_NORMAL = NormalDist()


# ------------------------------------------------------------------------------------------------- profile
@dataclass(frozen=True)
class Annotator:
    name: str
    email: str
    accuracy: float
    lead_time_s: float
    skip_rate: float = 0.0
    span_accuracy: float = 1.0
    confusions: dict[str, str] = field(default_factory=dict)
    lead_time_sigma: float = 0.5
    weight: float = 1.0


_FIELDS = {"name", "email", "accuracy", "lead_time_s", "skip_rate", "span_accuracy", "confusions",
           "lead_time_sigma", "weight"}


def parse_profile(profile: list[dict] | dict) -> list[Annotator]:
    """Validated annotators of a profile (a list of dicts, or {"annotators": [...]})."""
    if isinstance(profile, dict):
        profile = profile.get("annotators")
    if not isinstance(profile, list) or not profile:
        raise ValueError("a profile is a non-empty list of annotators")
    out: list[Annotator] = []
    for n, raw in enumerate(profile, 1):
        if isinstance(raw, Annotator):
            out.append(raw)
            continue
        if not isinstance(raw, dict):
            raise ValueError(f"annotator #{n}: expected a mapping")
        where = f"annotator #{n} ({raw.get('name', '?')})"
        unknown = set(raw) - _FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        for req in ("name", "email", "accuracy", "lead_time_s"):
            if req not in raw:
                raise ValueError(f"{where}: field {req!r} is required")
        if not isinstance(raw["name"], str) or not raw["name"].strip():
            raise ValueError(f"{where}: name must be a non-empty string")
        if not isinstance(raw["email"], str) or "@" not in raw["email"]:
            raise ValueError(f"{where}: email must be an e-mail address")
        a = Annotator(name=raw["name"], email=raw["email"], accuracy=float(raw["accuracy"]),
                      lead_time_s=float(raw["lead_time_s"]), skip_rate=float(raw.get("skip_rate", 0.0)),
                      span_accuracy=float(raw.get("span_accuracy", 1.0)),
                      confusions={str(k): str(v) for k, v in (raw.get("confusions") or {}).items()},
                      lead_time_sigma=float(raw.get("lead_time_sigma", 0.5)), weight=float(raw.get("weight", 1.0)))
        for name in ("accuracy", "span_accuracy"):
            if not 0.0 <= getattr(a, name) <= 1.0:
                raise ValueError(f"{where}: {name} must be within [0, 1]")
        if not 0.0 <= a.skip_rate < 1.0:
            raise ValueError(f"{where}: skip_rate must be within [0, 1)")
        if a.lead_time_s <= 0 or a.lead_time_sigma < 0 or a.weight <= 0:
            raise ValueError(f"{where}: lead_time_s and weight must be > 0, lead_time_sigma >= 0")
        bad = [k for k, v in a.confusions.items() if k == v]
        if bad:
            raise ValueError(f"{where}: a confusion must name a different label ({bad[0]!r} -> itself)")
        out.append(a)
    for attr in ("name", "email"):
        seen = [getattr(a, attr).lower() for a in out]
        dupes = sorted({x for x in seen if seen.count(x) > 1})
        if dupes:
            raise ValueError(f"duplicate annotator {attr}s: {dupes}")
    return out


def load_profile(path: str | os.PathLike = DEFAULT_PROFILE) -> list[dict]:
    """The annotators of a profile file, as dicts (validated)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    parse_profile(raw)
    return list(raw["annotators"] if isinstance(raw, dict) else raw)


def check_confusions(annotators: list[Annotator], labels: tuple[str, ...] | list[str]) -> None:
    """A confusion from a label of this taxonomy must lead to a label of it."""
    known = set(labels)
    for a in annotators:
        for true, wrong in a.confusions.items():
            if true in known and wrong not in known:
                raise ValueError(f"annotator {a.name}: confusion {true!r} -> {wrong!r}: {wrong!r} is not in the "
                                 "project's taxonomy")


# ------------------------------------------------------------------------------------------------ decisions
def _u(seed: int, key: str, name: str, what: str) -> float:
    """A uniform number in (0, 1) that depends only on its arguments (same on every machine and Python)."""
    digest = hashlib.sha256(f"{what}\x00{seed}\x00{key}\x00{name}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2.0 ** 64


def ranking(annotators: list[Annotator], seed: int, key: str) -> list[Annotator]:
    """The order in which the task `key` is offered to the annotators (weighted, without replacement)."""
    return sorted(annotators, key=lambda a: (-math.log(_u(seed, key, a.name, "rank")) / a.weight, a.name))


@dataclass(frozen=True)
class Answer:
    skip: bool
    label: str | None  # None for a skip
    spans: tuple[dict, ...]  # {start, end, label, text}, sorted; () for a skip
    lead_time: float


def _tokens(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def _shift(span: dict, text: str, u: float) -> dict | None:
    """The span with one boundary moved by one token (which one: u), or None when no boundary can move."""
    s, e = span["start"], span["end"]
    toks = _tokens(text)
    inside = [(a, b) for a, b in toks if a < e and b > s]
    options = []
    after = [t for t in toks if t[0] >= e]
    before = [t for t in toks if t[1] <= s]
    if after:
        options.append((s, after[0][1]))  # the end takes in the next token
    if before:
        options.append((before[-1][0], e))  # the start takes in the previous token
    if len(inside) >= 2:
        options.append((s, inside[-2][1]))  # the end drops the last token
        options.append((inside[1][0], e))  # the start drops the first token
    options = [(a, b) for a, b in options if 0 <= a < b <= len(text) and (a, b) != (s, e)]
    if not options:
        return None
    a, b = options[min(int(u * len(options)), len(options) - 1)]
    return {"start": a, "end": b, "label": span["label"], "text": text[a:b]}


def _span_key(s: dict) -> tuple:
    return (int(s["start"]), int(s["end"]), str(s["label"]))


def answer(annotator: Annotator, seed: int, key: str, truth: dict, labels: tuple[str, ...] | list[str],
           text: str = "", *, with_spans: bool = True) -> Answer:
    """What `annotator` does with the task `key` whose true answer is `truth` ({"label", "spans"})."""
    a = annotator
    lead = a.lead_time_s * math.exp(a.lead_time_sigma * _NORMAL.inv_cdf(_u(seed, key, a.name, "lead"))
                                    - a.lead_time_sigma ** 2 / 2)
    lead = round(lead, 3)
    if _u(seed, key, a.name, "skip") < a.skip_rate:
        return Answer(True, None, (), lead)
    true = truth.get("label")
    label = true
    if true is not None and _u(seed, key, a.name, "label") >= a.accuracy:
        label = a.confusions.get(true)
        if label is None or label not in labels:
            others = [x for x in labels if x != true]
            label = others[min(int(_u(seed, key, a.name, "wrong") * len(others)), len(others) - 1)] if others else true
    spans: list[dict] = []
    if with_spans:
        for i, sp in enumerate(truth.get("spans") or ()):
            sp = {"start": int(sp["start"]), "end": int(sp["end"]), "label": sp["label"], "text": sp.get("text")}
            if _u(seed, key, a.name, f"span{i}") < a.span_accuracy:
                spans.append(sp)
            elif _u(seed, key, a.name, f"span{i}:how") >= 0.5:
                moved = _shift(sp, text, _u(seed, key, a.name, f"span{i}:which"))
                if moved is not None:
                    spans.append(moved)
    unique = {_span_key(s): s for s in spans}
    return Answer(False, label, tuple(unique[k] for k in sorted(unique)), lead)


def plan_task(annotators: list[Annotator], seed: int, key: str, need: int, touched: set[str] = frozenset(),
              truth: dict | None = None, labels=(), text: str = "", *, with_spans: bool = True
              ) -> list[tuple[Annotator, Answer]]:
    """Who does what on a task still needing `need` annotations; `touched`: names of profile annotators who
    already annotated or skipped it. Stops when `need` answers are planned or the annotators run out."""
    out = []
    for a in ranking(annotators, seed, key):
        if need <= 0:
            break
        if a.name in touched:
            continue
        ans = answer(a, seed, key, truth or {}, labels, text, with_spans=with_spans)
        out.append((a, ans))
        if not ans.skip:
            need -= 1
    return out


def answer_distribution(annotator: Annotator | dict, true_label: str, labels) -> dict[str, float]:
    """P(answer = label | true label, not skipped) for one annotator: the expected accuracy is the value at
    the true label; the expected agreement of two annotators on an item is the dot product of theirs."""
    a = annotator if isinstance(annotator, Annotator) else parse_profile([annotator])[0]
    labels = list(labels)
    dist = {true_label: a.accuracy}
    wrong = 1.0 - a.accuracy
    if wrong > 0:
        target = a.confusions.get(true_label)
        if target is not None and target in labels:
            dist[target] = dist.get(target, 0.0) + wrong
        else:
            others = [x for x in labels if x != true_label]
            for x in others:
                dist[x] = dist.get(x, 0.0) + wrong / len(others)
    return dist


def expected_pair_agreement(a: Annotator | dict, b: Annotator | dict, true_label: str, labels) -> float:
    da, db = answer_distribution(a, true_label, labels), answer_distribution(b, true_label, labels)
    return sum(p * db.get(k, 0.0) for k, p in da.items())


# ------------------------------------------------------------------------------------------------- truth
def build_truth(project_cfg, rows, stats: dict | None = None) -> dict[str, dict]:
    """record id -> {"label", "spans"} of source rows ({"text", "intent" or "label", optional "spans" or
    "entities" with character offsets into the raw text}), normalised and remapped as ingest stages them.
    Records whose rows disagree are left out (never guessed); so are rows whose spans are lost in
    normalisation (ingest quarantines those). `stats` (a dict) receives the counts."""
    from labelops.ingest.dedup import normalise_text, record_id
    from labelops.ingest.pipeline import remap_spans

    opts = project_cfg.spec.ingest.normalisation.model_dump()

    def norm(t: str) -> str:
        return normalise_text(t, **opts)

    truth: dict[str, dict] = {}
    conflicts: set[str] = set()
    lost = rows_n = 0
    for row in rows:
        rows_n += 1
        raw = row["text"]
        text = norm(raw)
        if not text.strip():
            continue
        rid = record_id(text)
        ents = remap_spans(raw, text, list(row.get("spans") or row.get("entities") or []), norm)
        if isinstance(ents, str):
            lost += 1
            continue
        spans = sorted(({"start": e["start"], "end": e["end"], "label": e["label"], "text": e["text"]} for e in ents),
                       key=_span_key)
        item = {"label": row.get("label", row.get("intent")), "spans": spans}
        if rid in conflicts:
            continue
        prev = truth.get(rid)
        if prev is not None and prev != item:
            conflicts.add(rid)
            del truth[rid]
            continue
        truth[rid] = item
    if stats is not None:
        stats.update({"rows": rows_n, "records": len(truth), "conflicting_records": len(conflicts),
                      "spans_lost": lost})
    return truth


def source_rows(data: str) -> list[dict]:
    """Every labelled row of a data set: Banking77 train + test; every SNIPS file (train, full, validate)."""
    from seed_model import banking77, snips

    if data == "banking77":
        return banking77("train") + banking77("test")
    if data == "snips":
        return snips("*/*.json")
    raise ValueError(f"unknown data set {data!r} (banking77 or snips)")


def default_data(project_cfg) -> str:
    """The data set whose known labels answer a project's tasks: digits (image projects), snips (entity
    projects) or banking77."""
    if project_cfg.spec.modality == "image":
        return "digits"
    return "snips" if project_cfg.spec.task == "intent_entities" else "banking77"


def load_truth(project_cfg, data: str, stats: dict | None = None) -> dict[str, dict]:
    if data == "digits":  # images: the record id is the PNG's content hash, nothing to normalise
        import digits_data

        truth = digits_data.truth()
        if stats is not None:
            stats.update({"rows": len(truth), "records": len(truth), "conflicting_records": 0, "spans_lost": 0})
        return truth
    return build_truth(project_cfg, source_rows(data), stats)


# ------------------------------------------------------------------------------------------------ platform
def ensure_users(client, annotators: list[Annotator]) -> dict[str, int]:
    """annotator name -> Label Studio user id; users are found by e-mail and created once."""
    def by_email() -> dict[str, int]:
        return {(u.email or "").lower(): int(u.id) for u in client.users.list()}

    known = by_email()
    out = {}
    for a in annotators:
        uid = known.get(a.email.lower())
        if uid is None:
            username = "sim_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", a.name)[:100]
            try:
                uid = int(client.users.create(username=username, email=a.email, first_name=a.name,
                                              last_name="(simulated)").id)
                log.info("created Label Studio user %s for simulated annotator %s", uid, a.name)
            except Exception:  # noqa: BLE001  (created meanwhile by another run: find it)
                known = by_email()
                uid = known.get(a.email.lower())
                if uid is None:
                    raise
        out[a.name] = uid
    return out


def find_queues(client, project: str, queues: list[str] | None = None) -> dict[str, Any]:
    """queue -> Label Studio project (by the dispatch stage's marker in the description)."""
    wanted = set(queues or QUEUES)
    pattern = re.compile(r"\[labelops:" + re.escape(project) + r":([A-Za-z0-9_]+)\]")
    found: dict[str, Any] = {}
    for p in client.projects.list(page_size=100):
        m = pattern.search(p.description or "")
        if m and m.group(1) in wanted and m.group(1) not in found:
            found[m.group(1)] = p
    return found


def _get(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _user_id(ann) -> int | None:
    user = _get(ann, "completed_by")
    if isinstance(user, dict):
        user = user.get("id")
    return int(user) if user is not None else None


def parse_result(result, names) -> tuple[str | None, tuple]:
    """(class label, sorted span keys) of a Label Studio result for the config's control names."""
    label, spans = None, []
    for item in result or []:
        value = item.get("value") or {}
        if item.get("type") == "choices" and item.get("from_name") == names.choices:
            picked = value.get("choices") or []
            label = str(picked[0]) if picked else None
        elif item.get("type") == "labels" and item.get("from_name") == names.labels:
            if value.get("labels") and value.get("start") is not None:
                spans.append((int(value["start"]), int(value["end"]), str(value["labels"][0])))
    return label, tuple(sorted(spans))


def result_for(ans: Answer, names) -> list[dict]:
    """The annotation result of an answer, shaped exactly like the dispatch stage's predictions."""
    from labelops.dispatch.label_studio import prediction_payload
    from labelops.dispatch.tasks import Prediction, Span

    spans = tuple(Span(s["start"], s["end"], s["label"], s["text"]) for s in ans.spans) if names.labels else ()
    payload = prediction_payload(Prediction("", ans.label, 1.0, spans), names)
    return [{k: v for k, v in item.items() if k != "score"} for item in payload["result"]]


def _prediction(task, shown: str | None, names, mine: list[dict]) -> tuple[Any, bool]:
    """(the prediction an answer starts from, whether it accepts it). A task may show several predictions (an
    adjudication task shows the competing answers): one equal to the answer is accepted (the shown model
    version's first); else the answer corrects the shown model version's prediction, or the latest one."""
    preds = sorted(_get(task, "predictions") or [], key=lambda p: (not (shown and _get(p, "model_version") == shown),
                                                                    -int(_get(p, "id") or 0)))
    answer_is = parse_result(mine, names)
    for p in preds:
        if parse_result(list(_get(p, "result") or []), names) == answer_is:
            return p, True
    return (preds[0] if preds else None), False


def _post(client, task_id: int, user_id: int, body: dict, attempts: int = 4) -> None:
    """One annotation, exactly once: no blind SDK retry; after a failure, look before posting again."""
    for attempt in range(1, attempts + 1):
        try:
            client.annotations.create(id=task_id, completed_by=user_id, **body, request_options=NO_RETRY)
            return
        except Exception as exc:  # noqa: BLE001
            status = getattr(exc, "status_code", None)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise
            if attempt == attempts:
                raise
            time.sleep(0.5 * 2 ** (attempt - 1))
            if any(_user_id(a) == user_id for a in client.annotations.list(id=task_id)):
                return  # the failed POST was applied after all


def simulate(client, project_cfg, truth: dict, profile: list[dict], *, queues: list[str] | None = None,
             limit: int | None = None, seed: int = 0, workers: int = 4) -> dict:
    """Let the profile's annotators work on the project's queue projects until every task with a known answer
    has its annotations (or `limit` tasks got new ones in this run). Returns the counts and `made`, the list of
    (task_key, annotator name, label) answers posted by this run (`skips`: (task_key, annotator name)).
    Tasks are posted by `workers` threads (one task's annotations in order by one thread; Label Studio on SQLite
    takes ~0.25 s per annotation and about twice as many per second from 4 threads). A task that fails is
    reported after the others are done (RuntimeError); a re-run continues."""
    from labelops.dispatch.label_studio import label_config_names

    annotators = parse_profile(profile)
    labels = tuple(project_cfg.labels)
    check_confusions(annotators, labels)
    users = ensure_users(client, annotators)
    name_of = {uid: name for name, uid in users.items()}
    found = find_queues(client, project_cfg.name, queues)
    per_annotator = {a.name: {"annotations": 0, "skipped": 0, "correct": 0, "lead_time_s": 0.0} for a in annotators}
    per_queue: dict[str, dict] = {}
    counts = {"project": project_cfg.name, "seed": seed, "queues": {}, "tasks": 0, "tasks_complete": 0,
              "tasks_annotated": 0, "tasks_left_by_limit": 0, "tasks_exhausted": 0, "no_truth": 0,
              "annotations": 0, "skipped": 0, "accepted_predictions": 0, "corrected_predictions": 0}
    work = []
    for queue, p in sorted(found.items()):
        pid = int(p.id)
        full = client.projects.get(id=pid)
        names = label_config_names(full.label_config)
        info = {"pid": pid, "maximum_annotations": int(full.maximum_annotations or 1), "names": names,
                "model_version": full.model_version or None}
        counts["queues"][queue] = {"project_id": pid, "maximum_annotations": info["maximum_annotations"]}
        per_queue[queue] = {"tasks": 0, "annotations": 0, "skipped": 0, "no_truth": 0}
        for t in client.tasks.list(project=pid, page_size=1000, fields="all"):
            work.append((int(t.id), queue, info, t))
    work.sort(key=lambda w: w[0])
    made: list[tuple[str, str, str | None]] = []
    skips: list[tuple[str, str]] = []
    jobs = []  # (task id, queue, key, truth item, [(annotator, answer, POST body)]), in task id order
    for task_id, queue, info, t in work:
        counts["tasks"] += 1
        per_queue[queue]["tasks"] += 1
        data = t.data or {}
        key = str(data.get(KEY_FIELD) or data.get("record_id") or f"task:{task_id}")
        anns = list(_get(t, "annotations") or [])
        touched_ids = {_user_id(a) for a in anns}
        need = info["maximum_annotations"] - sum(1 for a in anns if not _get(a, "was_cancelled"))
        if need <= 0:
            counts["tasks_complete"] += 1
            continue
        item = truth.get(data.get("record_id"))
        if item is None or (item.get("label") is not None and item["label"] not in labels):
            counts["no_truth"] += 1
            per_queue[queue]["no_truth"] += 1
            continue
        names = info["names"]
        text = str(data.get(names.data_key) or "")
        touched = {name_of[u] for u in touched_ids if u in name_of}
        plan = plan_task(annotators, seed, key, need, touched, item, labels, text, with_spans=bool(names.labels))
        if not plan:
            counts["tasks_exhausted"] += 1
            continue
        if limit is not None and len(jobs) >= limit:
            counts["tasks_left_by_limit"] += 1
            continue
        if sum(1 for _, ans in plan if not ans.skip) < need:
            counts["tasks_exhausted"] += 1
        posts = []
        for a, ans in plan:
            body: dict[str, Any] = {"lead_time": ans.lead_time}
            if ans.skip:
                body.update(result=[], was_cancelled=True)
            else:
                mine = result_for(ans, names)
                pred, accepted = _prediction(t, info["model_version"], names, mine)
                if pred is not None:
                    body["parent_prediction"] = int(_get(pred, "id"))
                    if accepted:
                        mine = [{k: v for k, v in it.items() if k != "score"} for it in _get(pred, "result")]
                    body["accepted"] = accepted
                body["result"] = mine
            posts.append((a, ans, body))
        jobs.append((task_id, queue, key, item, posts))

    def do(job) -> tuple[int, Exception | None]:
        """Post one task's annotations in plan order: (how many were posted, the error that stopped it)."""
        task_id, _, _, _, posts = job
        for n, (a, _, body) in enumerate(posts):
            try:
                _post(client, task_id, users[a.name], {k: v for k, v in body.items() if k != "accepted"})
            except Exception as exc:  # noqa: BLE001  (reported after the other tasks are done)
                return n, exc
        return len(posts), None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        outcomes = list(pool.map(do, jobs))
    errors = []
    for (task_id, queue, key, item, posts), (posted, error) in zip(jobs, outcomes):
        if error is not None:
            errors.append((task_id, error))
        if posted:
            counts["tasks_annotated"] += 1
        for a, ans, body in posts[:posted]:
            row = per_annotator[a.name]
            row["lead_time_s"] += ans.lead_time
            if ans.skip:
                counts["skipped"] += 1
                per_queue[queue]["skipped"] += 1
                row["skipped"] += 1
                skips.append((key, a.name))
                continue
            counts["annotations"] += 1
            per_queue[queue]["annotations"] += 1
            row["annotations"] += 1
            row["correct"] += ans.label == item.get("label")
            made.append((key, a.name, ans.label))
            if "accepted" in body:
                counts["accepted_predictions" if body["accepted"] else "corrected_predictions"] += 1
    if errors:
        task_id, exc = errors[0]
        raise RuntimeError(f"{len(errors)} task(s) could not be annotated (first: task {task_id}: "
                           f"{type(exc).__name__}: {exc}); a re-run continues where this one stopped") from exc
    for row in per_annotator.values():
        done = row["annotations"] + row["skipped"]
        row["lead_time_mean_s"] = round(row.pop("lead_time_s") / done, 3) if done else None
    counts.update(per_annotator=per_annotator, per_queue=per_queue, made=made, skips=skips)
    missing = sorted(set(queues or ()) - set(found))
    if missing:
        counts["queues_not_found"] = missing
    return counts


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Simulated annotators answering a labelops project's Label Studio "
                                             "tasks from the known labels of the real data (see the module doc).")
    ap.add_argument("--project", required=True, help="project name (its config in LABELOPS_PROJECTS_DIR or "
                                                     "include/configs/projects) or a path to its YAML file")
    ap.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL"), help="Label Studio base URL")
    ap.add_argument("--token-env", default="LABEL_STUDIO_TOKEN",
                    help="environment variable holding the Label Studio API token (never printed)")
    ap.add_argument("--profile", default=str(DEFAULT_PROFILE), help="annotator profile YAML")
    ap.add_argument("--data", choices=("banking77", "snips", "digits"), default=None,
                    help="where the known answers come from (default: snips for intent_entities projects, "
                         "digits for image projects, else banking77)")
    ap.add_argument("--queue", action="append", choices=QUEUES, help="only these queues (repeatable)")
    ap.add_argument("--limit", type=int, default=None, help="give new annotations to at most N tasks in this run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4, help="tasks posted in parallel (default 4)")
    ap.add_argument("--list", action="store_true", help="also print every answer and skip made (made, skips)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if not args.url:
        ap.error("--url is required (or set LABEL_STUDIO_URL)")
    token = os.environ.get(args.token_env)
    if not token:
        ap.error(f"environment variable {args.token_env} is not set (it must hold the Label Studio API token)")

    from label_studio_sdk import LabelStudio

    from labelops.config import load_project, projects_dir

    path = Path(args.project)
    if not path.suffix:
        path = projects_dir() / f"{args.project}.yaml"
    project_cfg = load_project(path)
    data = args.data or default_data(project_cfg)
    stats: dict = {}
    truth = load_truth(project_cfg, data, stats)
    client = LabelStudio(base_url=args.url, api_key=token)
    counts = simulate(client, project_cfg, truth, load_profile(args.profile), queues=args.queue, limit=args.limit,
                      seed=args.seed, workers=args.workers)
    counts["truth"] = {"data": data, **stats}
    if not args.list:
        counts.pop("made")
        counts.pop("skips")
    print(json.dumps(counts, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
