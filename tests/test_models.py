"""The models: the intent classifier learns Banking77 with calibrated-ish probabilities, the entity tagger gives
exact offsets, and the S3 registry round-trips models, refuses tampered or untrusted artifacts and keeps one
champion per kind (moto S3 server, no Airflow)."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime

import numpy as np
import pytest
import scipy.sparse as sp
from seed_model import banking77, snips  # tools/ (pytest.ini pythonpath)

from labelops.dispatch.tasks import Prediction, Span
from labelops.models import registry
from labelops.models.entities import EntityModel
from labelops.models.intent import IntentModel
from labelops.storage import S3Store

N_TRAIN, N_TEST = 3000, 1000
# Measured on four random slices of this size: accuracy 0.835-0.863 (chance: 1/77 = 0.013), mean top probability
# within 0.02-0.06 of accuracy, predictions with probability >= 0.9 (~3/4 of them) 0.954-0.970 accurate.
MIN_ACCURACY = 0.75
# Measured: exact-span micro F1 0.75 on SNIPS validate when trained on train_*_full.
MIN_SPAN_F1 = 0.65


@pytest.fixture(scope="module")
def b77() -> tuple[list[dict], list[dict]]:
    rng = random.Random(7)
    return rng.sample(banking77("train"), N_TRAIN), rng.sample(banking77("test"), N_TEST)


@pytest.fixture(scope="module")
def intent_model(b77) -> IntentModel:
    train, _ = b77
    return IntentModel().fit([r["text"] for r in train], [r["intent"] for r in train])


@pytest.fixture(scope="module")
def snips_model() -> EntityModel:
    train = snips("*/train_*_full.json")
    return EntityModel().fit([u["text"] for u in train], [u["spans"] for u in train])


@pytest.fixture(scope="module")
def store(s3) -> S3Store:
    return S3Store(s3, "labelops")


def tiny_entity_model(*unlabelled: str) -> EntityModel:
    texts = ["play daft punk now", "book a table in new york city", "weather in new york", *unlabelled]
    spans = [[{"start": 5, "end": 14, "label": "artist"}], [{"start": 16, "end": 29, "label": "city"}],
             [{"start": 11, "end": 19, "label": "state"}]] + [[] for _ in unlabelled]
    return EntityModel().fit(texts, spans)


# ------------------------------------------------------------------------------------------------- intent
def test_intent_model_learns_banking77(intent_model, b77):
    _, test = b77
    classes, probs = intent_model.predict_proba([r["text"] for r in test])
    assert len(classes) == 77 and probs.shape == (N_TEST, 77)
    accuracy = float(np.mean(np.array(classes)[probs.argmax(1)] == np.array([r["intent"] for r in test])))
    assert accuracy >= MIN_ACCURACY, accuracy


def test_intent_probabilities_are_calibrated_ish(intent_model, b77):
    _, test = b77
    classes, probs = intent_model.predict_proba([r["text"] for r in test])
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs >= 0).all()
    correct = np.array(classes)[probs.argmax(1)] == np.array([r["intent"] for r in test])
    top = probs.max(axis=1)
    # raw LinearSVC margins through a plain softmax (no temperature) give a mean top probability of ~0.05
    assert abs(top.mean() - correct.mean()) < 0.1, (top.mean(), correct.mean())
    confident = top >= 0.9
    assert confident.mean() > 0.3 and correct[confident].mean() >= 0.9, (confident.mean(), correct[confident].mean())
    assert 0 < intent_model.temperature < 1


def test_intent_predictions_map_to_prediction(intent_model, b77):
    _, test = b77
    texts = [r["text"] for r in test[:50]]
    classes, probs = intent_model.predict_proba(texts)
    preds = intent_model.predict(texts)
    assert len(preds) == 50
    for p, row in zip(preds, probs):
        assert isinstance(p, Prediction) and p.spans == () and p.model_version == "unregistered"
        assert p.label == classes[int(row.argmax())]
        assert p.score == pytest.approx(float(row.max())) and p.score == max(p.probabilities.values())
        assert len(p.probabilities) == 5 and p.label in p.probabilities
        assert list(p.probabilities.values()) == sorted(p.probabilities.values(), reverse=True)
        assert all(p.probabilities[c] == pytest.approx(float(row[classes.index(c)])) for c in p.probabilities)
        json.dumps(p.probabilities)  # plain floats, for the manifest
    feats = intent_model.features(texts)
    assert sp.issparse(feats) and feats.shape[0] == 50 and feats.shape[1] > 10_000 and feats.nnz > 0
    assert intent_model.predict([]) == [] and intent_model.predict_proba([])[1].shape == (0, 77)


def test_intent_model_small_and_bad_input():
    with pytest.raises(ValueError, match="at least 2 classes"):
        IntentModel().fit(["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match="labels"):
        IntentModel().fit(["a", "b"], ["x"])
    with pytest.raises(RuntimeError, match="not fitted"):
        IntentModel().predict(["a"])
    # too few to hold out anything: no temperature, but a valid model; a binary model has two probability columns
    m = IntentModel().fit(["card lost", "lost my card", "top up failed", "top-up not working"],
                          ["lost", "lost", "topup", "topup"])
    classes, probs = m.predict_proba(["I lost my card", "my top up failed"])
    assert classes == ["lost", "topup"] and probs.shape == (2, 2) and m.temperature == 1.0
    assert [p.label for p in m.predict(["I lost my card", "my top up failed"])] == ["lost", "topup"]


# ----------------------------------------------------------------------------------------------- entities
def test_entity_spans_exact_offsets_on_snips(snips_model):
    validate = snips("*/validate_*.json")
    texts = [u["text"] for u in validate]
    predicted = snips_model.predict(texts)
    tp = fp = fn = 0
    for text, item, spans in zip(texts, validate, predicted):
        boundaries = {m.start() for m in re.finditer(r"\w+|[^\w\s]", text)}
        ends = {m.end() for m in re.finditer(r"\w+|[^\w\s]", text)}
        for a, b in zip(spans, spans[1:]):
            assert a.end <= b.start  # sorted, never overlapping
        for s in spans:
            assert isinstance(s, Span) and s.text == text[s.start:s.end] and 0 < s.score <= 1
            assert s.start in boundaries and s.end in ends
        gold = {(s["start"], s["end"], s["label"]) for s in item["spans"]}
        got = {(s.start, s.end, s.label) for s in spans}
        tp, fp, fn = tp + len(gold & got), fp + len(got - gold), fn + len(gold - got)
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert f1 >= MIN_SPAN_F1, f1
    # one validate utterance, spelled out
    text = "can you put on Like A Hurricane by Paul Landers"
    [spans] = snips_model.predict([text])
    assert ("Paul Landers", "artist") in {(s.text, s.label) for s in spans}


def test_entity_tagger_case_insensitive_longest_match_on_token_boundaries():
    m = tiny_entity_model()
    text = "Could you PLAY Daft Punk, then book New York City? Daft Punked is no artist."
    [spans] = m.predict([text])
    got = [(s.start, s.end, s.label, s.text) for s in spans]
    assert got == [(15, 24, "artist", "Daft Punk"), (36, 49, "city", "New York City")]
    assert all(text[s:e] == t for s, e, _, t in got)
    # "new york" alone: the shorter phrase, with its own label
    assert [(s.text, s.label) for s in m.predict(["NEW YORK weather"])[0]] == [("NEW YORK", "state")]
    # a phrase that was an entity once among many plain occurrences scores low and is not emitted
    noisy = EntityModel().fit(["the the the the", "play the song"], [[{"start": 0, "end": 3, "label": "x"}], []])
    assert noisy.predict(["the song"]) == [[]]
    assert EntityModel(min_score=0.1).fit(["the the the the", "play the song"],
                                          [[{"start": 0, "end": 3, "label": "x"}], []]).predict(["the"])[0][0].score \
        == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="outside the text"):
        EntityModel().fit(["abc"], [[{"start": 1, "end": 9, "label": "x"}]])


def test_entity_model_state_round_trips_as_json(snips_model):
    texts = [u["text"] for u in snips("*/validate_*.json")[:200]]
    state = json.loads(json.dumps(snips_model.to_dict()))
    again = EntityModel.from_dict(state)
    assert again.predict(texts) == snips_model.predict(texts) and again.labels == snips_model.labels
    preds = again.predictions(texts[:5])
    assert all(isinstance(p, Prediction) and p.label is None for p in preds)
    assert all(p.score == pytest.approx(np.mean([s.score for s in p.spans]) if p.spans else 0.0) for p in preds)


# ----------------------------------------------------------------------------------------------- registry
def test_registry_round_trip_intent(store, intent_model, b77):
    prefix = "rt/"
    texts = [r["text"] for r in b77[1][:200]]
    assert registry.champion(store, prefix) is None
    meta = registry.save(store, prefix, intent_model, metrics={"accuracy": np.float64(0.86)}, dataset_tag="ds-1",
                         kind="intent")
    version = meta["version"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", version) and intent_model.version == version
    assert meta["kind"] == "intent" and meta["labels"] == intent_model.classes and meta["n_train"] == N_TRAIN
    assert meta["metrics"] == {"accuracy": 0.86} and meta["dataset_tag"] == "ds-1" and meta["code_version"]
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None and meta["created_at"].endswith("Z")
    body = store.get(f"{prefix}models/{version}/model.skops")
    assert meta["artifact"]["sha256"] == registry._sha256(body) and version.endswith(meta["artifact"]["sha256"][:8])
    assert store.get_json(f"{prefix}models/{version}/meta.json") == meta
    assert not store.exists(f"{prefix}models/champion.json")  # saving does not promote

    pointer = registry.promote(store, prefix, version, "first")
    assert pointer["version"] == version and pointer["reason"] == "first" and pointer["previous"] is None
    loaded = registry.load_champion(store, prefix)
    assert isinstance(loaded, IntentModel) and loaded.version == version
    c1, p1 = intent_model.predict_proba(texts)
    c2, p2 = loaded.predict_proba(texts)
    assert c1 == c2 and np.array_equal(p1, p2)
    assert [p.model_version for p in loaded.predict(texts[:3])] == [version] * 3
    champ = registry.champion(store, prefix, kind="intent")
    assert champ["version"] == version and champ["promotion"]["reason"] == "first"
    assert registry.champion(store, prefix, kind="entities") is None


def test_tampered_artifact_is_refused(store):
    prefix = "tamper/"
    model = tiny_entity_model()
    meta = registry.save(store, prefix, model, metrics={}, dataset_tag=None, kind="entities")
    key = meta["artifact"]["key"]
    good = store.get(key)
    text = ["play daft punk"]
    assert registry.load(store, prefix, meta["version"]).predict(text) == model.predict(text)
    store.put(key, good.replace(b'"artist"', b'"hacked"'))
    assert store.get(key) != good
    with pytest.raises(registry.ArtifactIntegrityError, match="sha256"):
        registry.load(store, prefix, meta["version"])
    with pytest.raises(registry.ArtifactIntegrityError):
        registry.promote(store, prefix, meta["version"], "should not happen")
    assert registry.champion(store, prefix, kind="entities") is None
    store.delete([key])
    with pytest.raises(registry.ArtifactIntegrityError, match="missing"):
        registry.load(store, prefix, meta["version"])
    # an artifact not (or not yet) complete in S3 never becomes the champion: the pointer does not move
    with pytest.raises(registry.ArtifactIntegrityError, match="missing"):
        registry.promote(store, prefix, meta["version"], "should not happen either")
    assert registry.champion(store, prefix, kind="entities") is None


class Gadget:
    """Stands for any type a crafted artifact might smuggle in."""

    def __init__(self) -> None:
        self.command = "echo pwned"


def test_skops_artifact_with_untrusted_types_is_refused(store, intent_model):
    import skops.io as sio

    prefix = "untrusted/"
    meta = registry.save(store, prefix, intent_model, metrics={}, dataset_tag=None, kind="intent")
    key, mkey = meta["artifact"]["key"], f"{prefix}models/{meta['version']}/meta.json"

    def plant(payload) -> None:  # an attacker able to rewrite both the artifact and its meta.json's sha256
        body = sio.dumps(payload)
        store.put(key, body)
        store.put_json(mkey, {**meta, "artifact": {**meta["artifact"], "sha256": registry._sha256(body)}})

    plant({**intent_model.to_payload(), "extra": Gadget()})
    with pytest.raises(registry.UntrustedArtifactError, match=r"allowlist: .*Gadget"):
        registry.load(store, prefix, meta["version"])
    plant({"format": "labelops-intent/1", "features": [1, 2], "classifier": {"a": 1}})  # trusted types, wrong shape
    with pytest.raises(registry.UntrustedArtifactError, match="not an intent model"):
        registry.load(store, prefix, meta["version"])
    store.put(key, b"not a zip")
    store.put_json(mkey, {**meta, "artifact": {**meta["artifact"], "sha256": registry._sha256(b"not a zip")}})
    with pytest.raises(registry.UntrustedArtifactError, match="not a readable skops"):
        registry.load(store, prefix, meta["version"])


def test_champion_pointer_per_kind(store, monkeypatch):
    prefix = "kinds/"
    intent_a = IntentModel().fit(["lost card", "card lost", "top up", "top-up failed"], ["l", "l", "t", "t"])
    ents = tiny_entity_model()
    m_a = registry.save(store, prefix, intent_a, metrics={"accuracy": 1.0}, dataset_tag=None, kind="intent")
    m_e = registry.save(store, prefix, ents, metrics={"f1": 0.5}, dataset_tag=None, kind="entities")
    registry.promote(store, prefix, m_a["version"], "seed")
    registry.promote(store, prefix, m_e["version"], "seed")
    assert registry.champion(store, prefix, kind="intent")["version"] == m_a["version"]
    assert registry.champion(store, prefix, kind="entities")["version"] == m_e["version"]
    assert isinstance(registry.load_champion(store, prefix, kind="entities"), EntityModel)

    intent_b = IntentModel().fit(["lost card", "card lost", "top up", "top-up failed", "topped up"],
                                 ["l", "l", "t", "t", "t"])
    m_b = registry.save(store, prefix, intent_b, metrics={}, dataset_tag="ds-2", kind="intent")
    entry = registry.promote(store, prefix, m_b["version"], "retrain beat champion")
    assert entry["previous"]["version"] == m_a["version"] and entry["previous"]["reason"] == "seed"
    doc = store.get_json(f"{prefix}models/champion.json")
    assert doc["intent"]["version"] == m_b["version"] and doc["entities"]["version"] == m_e["version"]
    assert registry.promote(store, prefix, m_b["version"], "again") == entry  # already champion: unchanged
    promotions = [o["key"] for o in store.list(f"{prefix}models/promotions/")]
    assert len(promotions) == 3
    assert registry.versions(store, prefix) == sorted([m_a["version"], m_e["version"], m_b["version"]])

    # a concurrent promotion of the other kind between our read and our write is not lost (compare-and-swap)
    ents_2 = tiny_entity_model("today")
    m_e2 = registry.save(store, prefix, ents_2, metrics={}, dataset_tag=None, kind="entities")
    real_read = registry._read_pointer
    raced = []

    def racing_read(st, pre):
        doc, etag = real_read(st, pre)
        if not raced:
            raced.append(True)
            registry.promote(st, pre, m_e2["version"], "concurrent")
        return doc, etag

    monkeypatch.setattr(registry, "_read_pointer", racing_read)
    registry.promote(store, prefix, m_a["version"], "rollback")
    monkeypatch.setattr(registry, "_read_pointer", real_read)
    doc = store.get_json(f"{prefix}models/champion.json")
    assert doc["intent"]["version"] == m_a["version"] and doc["intent"]["previous"]["version"] == m_b["version"]
    assert doc["entities"]["version"] == m_e2["version"] and doc["entities"]["reason"] == "concurrent"


def test_cold_start_and_unknown_versions(store):
    prefix = "cold/"
    assert registry.load_champion(store, prefix) is None
    assert registry.load_champion(store, prefix, kind="entities") is None
    assert registry.champion(store, prefix, kind="entities") is None and registry.versions(store, prefix) == []
    with pytest.raises(registry.ModelNotFound):
        registry.promote(store, prefix, "20260101T000000Z-00000000", "nope")
    with pytest.raises(registry.ModelNotFound):
        registry.load(store, prefix, "20260101T000000Z-00000000")
    with pytest.raises(ValueError, match="not a model version"):
        registry.load(store, prefix, "../banking_support/models/x")
    with pytest.raises(ValueError, match="kind"):
        registry.champion(store, prefix, kind="images")
    with pytest.raises(TypeError):
        registry.save(store, prefix, tiny_entity_model(), metrics={}, dataset_tag=None, kind="intent")
    assert registry.versions(store, prefix) == []


def test_saving_the_same_artifact_twice(store, monkeypatch):
    prefix = "twice/"
    model = tiny_entity_model()
    frozen = datetime(2026, 1, 2, 3, 15, tzinfo=UTC)  # in the past: a later save sorts after it
    monkeypatch.setattr(registry, "_now", lambda: frozen)
    first = registry.save(store, prefix, model, metrics={"f1": 0.1}, dataset_tag=None, kind="entities")
    etag = next(o["etag"] for o in store.list(f"{prefix}models/{first['version']}/meta.json"))
    again = registry.save(store, prefix, model, metrics={"f1": 0.1}, dataset_tag=None, kind="entities")
    assert again == first and first["version"].startswith("20260102T031500Z-")
    assert next(o["etag"] for o in store.list(f"{prefix}models/{first['version']}/meta.json")) == etag
    other = registry.save(store, prefix, tiny_entity_model("now"), metrics={}, dataset_tag=None,
                          kind="entities")
    assert other["version"] != first["version"] and registry.versions(store, prefix) == sorted(
        [first["version"], other["version"]])
    monkeypatch.undo()
    later = registry.save(store, prefix, model, metrics={}, dataset_tag=None, kind="entities")
    assert later["version"] > first["version"]
    for v in (first["version"], other["version"], later["version"]):
        assert isinstance(registry.load(store, prefix, v), EntityModel)


def test_seed_tool_registers_and_promotes(s3, store, monkeypatch, capsys):
    import seed_model

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = s3.meta.endpoint_url
    common = ["--endpoint-url", url, "--bucket", "labelops", "--project-prefix", "seeded/"]
    assert seed_model.main(common + ["--kind", "entities", "--data", "snips", "--n", "1500"]) == 0
    assert seed_model.main(common + ["--kind", "intent", "--data", "banking77", "--n", "600"]) == 0
    out = capsys.readouterr().out
    assert '"reason": "seed"' in out
    intent_meta = registry.champion(store, "seeded/", kind="intent")
    ent_meta = registry.champion(store, "seeded/", kind="entities")
    assert intent_meta["n_train"] == 600 and intent_meta["promotion"]["reason"] == "seed"
    assert intent_meta["metrics"]["n_eval"] == 3080 and intent_meta["metrics"]["accuracy"] > 0.4
    assert ent_meta["n_train"] == 1500 and 0.3 < ent_meta["metrics"]["f1"] <= 1
    assert registry.load_champion(store, "seeded/", kind="intent").predict(["my card has not arrived"])[0].label
