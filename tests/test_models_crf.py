"""The CRF entity tagger: learns SNIPS well beyond the gazetteer, gives exact offsets and marginal-probability
scores, round-trips through its bytes, and lives in the registry as an "entities" model (moto S3 server) whose
artifact is verified before CRFsuite reads it. No Airflow."""

from __future__ import annotations

import json
import random
import re
import struct
import time

import pytest
from seed_model import snips  # tools/ (pytest.ini pythonpath)

from labelops.dispatch.tasks import Prediction, Span
from labelops.models import registry
from labelops.models.crf import FORMAT, CrfEntityModel, _decode, bio_tags, token_features
from labelops.models.entities import EntityModel, tokens
from labelops.models.evaluate import entity_metrics
from labelops.storage import S3Store

# Measured (train_*_full, 13,784 utterances -> validate_*, 700): CRF micro F1 0.941 (P 0.941, R 0.941), macro over
# types 0.886, in ~21 s (~27 s with the 2-core box busy); gazetteer 0.752 / macro 0.675. Mean span score 0.940
# against a precision of 0.941; spans scoring >= 0.9: precision ~0.98; below 0.7: ~0.55.
MIN_FULL_F1, MIN_MARGIN_OVER_GAZETTEER = 0.90, 0.10
# Training time (~21-27 s on the full files) is measured by `make bench` (bench_models), not asserted here.
# Measured on four random 1,500-utterance slices: CRF 0.833-0.852 on validate, gazetteer 0.644-0.651; the CRF gets
# 0.997-0.999 on its own training sentences.
N_SMALL, MIN_SMALL_F1, MIN_TRAIN_SENTENCE_F1 = 1500, 0.78, 0.98


@pytest.fixture(scope="module")
def snips_train() -> list[dict]:
    return snips("*/train_*_full.json")


@pytest.fixture(scope="module")
def snips_validate() -> list[dict]:
    return snips("*/validate_*.json")


@pytest.fixture(scope="module")
def small_slice(snips_train) -> list[dict]:
    return random.Random(0).sample(snips_train, N_SMALL)


@pytest.fixture(scope="module")
def small_crf(small_slice) -> CrfEntityModel:
    return CrfEntityModel().fit([u["text"] for u in small_slice], [u["spans"] for u in small_slice])


@pytest.fixture(scope="module")
def full_crf(snips_train) -> tuple[CrfEntityModel, float]:
    t0 = time.perf_counter()
    model = CrfEntityModel().fit([u["text"] for u in snips_train], [u["spans"] for u in snips_train])
    return model, time.perf_counter() - t0


@pytest.fixture(scope="module")
def store(s3) -> S3Store:
    return S3Store(s3, "labelops")


def gold(items: list[dict]) -> list[list[dict]]:
    return [u["spans"] for u in items]


def tiny_crf() -> CrfEntityModel:
    texts = ["play daft punk now", "book a table in new york city", "weather in boston", "play muse",
             "book a table in paris", "weather in new york city"] * 3
    spans = [[{"start": 5, "end": 14, "label": "artist"}], [{"start": 16, "end": 29, "label": "city"}],
             [{"start": 11, "end": 17, "label": "city"}], [{"start": 5, "end": 9, "label": "artist"}],
             [{"start": 16, "end": 21, "label": "city"}], [{"start": 11, "end": 24, "label": "city"}]] * 3
    return CrfEntityModel().fit(texts, spans)


# --------------------------------------------------------------------------------------------------- tagging
def test_bio_tags_and_decoding():
    text = "fly to new york in 2 days "
    toks = tokens(text)
    spans = [{"start": 7, "end": 15, "label": "city"}, {"start": 16, "end": 26, "label": "timeRange"}]  # ends in " "
    assert bio_tags(text, toks, spans) == ["O", "O", "B-city", "I-city", "B-timeRange", "I-timeRange",
                                           "I-timeRange"]
    # two adjacent spans of one type stay two; an I- that does not continue its type starts a span
    assert _decode(["B-x", "I-x", "B-x", "O", "I-y", "I-y", "I-x"]) == [(0, 1, "x"), (2, 2, "x"), (4, 5, "y"),
                                                                        (6, 6, "x")]
    assert _decode(["O", "O"]) == []
    feats = token_features(["Play", "Daft", "Punk", "2"])
    assert feats[0]["BOS"] == 1 and "BOS" not in feats[1] and feats[3]["EOS"] == 1 and feats[3]["is_digit"] == 1
    assert feats[1]["w=daft"] == 1 and feats[1]["suf3=aft"] == 1 and feats[1]["pre2=da"] == 1
    assert feats[1]["shape=Xxxx"] == 1 and feats[1]["is_title"] == 1
    assert feats[1]["-1:w=play"] == 1 and feats[1]["+2:w=2"] == 1 and "+2:w=2" not in feats[0]


def test_crf_gets_its_training_sentences_right(small_crf, small_slice):
    items = small_slice[:300]
    predicted = small_crf.predict([u["text"] for u in items])
    assert entity_metrics(gold(items), predicted)["micro"]["f1"] >= MIN_TRAIN_SENTENCE_F1
    # one training sentence, spelled out
    item = next(u for u in small_slice if len(u["spans"]) >= 3)
    [spans] = small_crf.predict([item["text"]])
    assert {(s.start, s.end, s.label) for s in spans} == {(s["start"], s["end"], s["label"]) for s in item["spans"]}
    assert set(small_crf.labels) == {s["label"] for u in small_slice for s in u["spans"]}
    assert small_crf.n_train == N_SMALL


def test_small_crf_beats_the_gazetteer_on_validate(small_crf, small_slice, snips_validate):
    gaz = EntityModel().fit([u["text"] for u in small_slice], gold(small_slice))
    texts = [u["text"] for u in snips_validate]
    crf_f1 = entity_metrics(gold(snips_validate), small_crf.predict(texts))["micro"]["f1"]
    gaz_f1 = entity_metrics(gold(snips_validate), gaz.predict(texts))["micro"]["f1"]
    assert crf_f1 >= MIN_SMALL_F1 and crf_f1 >= gaz_f1 + MIN_MARGIN_OVER_GAZETTEER, (crf_f1, gaz_f1)


def test_full_crf_on_snips_validate(full_crf, snips_train, snips_validate):
    model, _seconds = full_crf
    texts = [u["text"] for u in snips_validate]
    predicted = model.predict(texts)
    crf = entity_metrics(gold(snips_validate), predicted)
    gaz = entity_metrics(gold(snips_validate),
                         EntityModel().fit([u["text"] for u in snips_train], gold(snips_train)).predict(texts))
    assert crf["micro"]["f1"] >= MIN_FULL_F1, crf["micro"]
    assert crf["micro"]["f1"] >= gaz["micro"]["f1"] + MIN_MARGIN_OVER_GAZETTEER, (crf["micro"], gaz["micro"])
    assert crf["macro_f1"] >= gaz["macro_f1"] + MIN_MARGIN_OVER_GAZETTEER
    # names the gazetteer cannot know: the CRF finds them from context
    for label in ("object_name", "artist", "city", "movie_name"):
        assert crf["per_type"][label]["f1"] >= gaz["per_type"][label]["f1"] + 0.3, label
    # exact offsets on token boundaries, sorted, never overlapping, scores in (0, 1]
    for text, spans in zip(texts, predicted):
        starts = {m.start() for m in re.finditer(r"\w+|[^\w\s]", text)}
        ends = {m.end() for m in re.finditer(r"\w+|[^\w\s]", text)}
        for a, b in zip(spans, spans[1:]):
            assert a.end <= b.start
        for s in spans:
            assert isinstance(s, Span) and s.text == text[s.start:s.end] and 0 < s.score <= 1
            assert s.start in starts and s.end in ends
    # the same validate utterance as the gazetteer's test
    [spans] = model.predict(["can you put on Like A Hurricane by Paul Landers"])
    assert ("Paul Landers", "artist") in {(s.text, s.label) for s in spans}


def test_span_scores_are_marginal_probabilities(full_crf, snips_validate):
    import pycrfsuite

    model, _ = full_crf
    texts = [u["text"] for u in snips_validate]
    predicted = model.predict(texts)
    # the score is the mean of the span's token marginals, recomputed here from the model bytes
    crfsuite_bytes = model.to_bytes().partition(b"\n")[2]  # CRFsuite reads this buffer in place: keep it alive
    tagger = pycrfsuite.Tagger()
    tagger.open_inmemory(crfsuite_bytes)
    text = texts[0]
    toks = tokens(text)
    tags = tagger.tag(token_features([text[a:b] for a, b, _ in toks]))
    for s in predicted[0]:
        idx = [k for k, (a, b, _) in enumerate(toks) if a >= s.start and b <= s.end]
        assert s.score == pytest.approx(sum(tagger.marginal(tags[k], k) for k in idx) / len(idx), abs=1e-6)
    del tagger, crfsuite_bytes
    # and they are calibrated-ish: their mean is close to the precision, high scores are right more often
    truth = [{(s["start"], s["end"], s["label"]) for s in u["spans"]} for u in snips_validate]
    scored = [(s.score, (s.start, s.end, s.label) in g) for g, spans in zip(truth, predicted) for s in spans]
    precision = sum(ok for _, ok in scored) / len(scored)
    mean_score = sum(sc for sc, _ in scored) / len(scored)
    assert abs(mean_score - precision) < 0.05, (mean_score, precision)
    high = [ok for sc, ok in scored if sc >= 0.9]
    low = [ok for sc, ok in scored if sc < 0.7]
    assert len(high) > 0.6 * len(scored) and sum(high) / len(high) >= 0.95
    assert len(low) >= 20 and sum(low) / len(low) < 0.8


def test_predictions_and_bad_input(small_crf):
    preds = small_crf.predictions(["add this song to my workout playlist", "", "   "])
    assert all(isinstance(p, Prediction) and p.label is None and p.model_version == "unregistered" for p in preds)
    assert preds[0].spans and preds[0].score == pytest.approx(sum(s.score for s in preds[0].spans) /
                                                              len(preds[0].spans))
    assert preds[1].spans == () and preds[1].score == 0.0 and preds[2].spans == ()
    assert small_crf.predict([]) == []
    with pytest.raises(ValueError, match="outside the text"):
        CrfEntityModel().fit(["abc"], [[{"start": 1, "end": 9, "label": "x"}]])
    with pytest.raises(ValueError, match="span lists"):
        CrfEntityModel().fit(["abc", "def"], [[]])
    with pytest.raises(ValueError, match="nothing to learn"):
        CrfEntityModel().fit(["abc", "def"], [[], []])
    with pytest.raises(RuntimeError, match="not fitted"):
        CrfEntityModel().predict(["abc"])
    with pytest.raises(ValueError, match="lbfgs"):
        CrfEntityModel(c1=0.1)


# ------------------------------------------------------------------------------------------- serialisation
def test_bytes_round_trip_gives_identical_predictions(small_crf, snips_validate):
    texts = [u["text"] for u in snips_validate]
    body = small_crf.to_bytes()
    head, _, model = body.partition(b"\n")
    header = json.loads(head)
    assert header["format"] == FORMAT and header["labels"] == small_crf.labels and header["n_train"] == N_SMALL
    assert header["model"]["size"] == len(model) and model[:4] == b"lCRF"
    again = CrfEntityModel.from_bytes(body)
    assert again.predict(texts) == small_crf.predict(texts)  # same spans and same scores
    assert again.labels == small_crf.labels and again.params == small_crf.params
    assert again.to_bytes() == body


def test_bad_bytes_are_refused_before_crfsuite_reads_them(small_crf):
    body = small_crf.to_bytes()
    head, _, model = body.partition(b"\n")
    header = json.loads(head)
    flipped = bytearray(model)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="sha256"):
        CrfEntityModel.from_bytes(head + b"\n" + bytes(flipped))
    with pytest.raises(ValueError, match="sha256"):
        CrfEntityModel.from_bytes(body[:-10])
    with pytest.raises(ValueError, match="header line"):
        CrfEntityModel.from_bytes(b"lCRF" + b"\x00" * 100)
    with pytest.raises(ValueError, match="not a CRF entity model"):
        CrfEntityModel.from_bytes(b'{"format": "labelops-entities-gazetteer/1"}\n')
    with pytest.raises(ValueError, match="features"):
        CrfEntityModel.from_bytes(json.dumps({**header, "features": {**header["features"], "version": "x/0"}})
                                  .encode() + b"\n" + model)

    def rehashed(m: bytes) -> bytes:  # a consistent header around crafted CRFsuite bytes
        import hashlib

        h = {**header, "model": {**header["model"], "size": len(m), "sha256": hashlib.sha256(m).hexdigest()}}
        return json.dumps(h).encode() + b"\n" + m

    with pytest.raises(ValueError, match="magic"):
        CrfEntityModel.from_bytes(rehashed(b"XCRF" + model[4:]))
    lying_size = model[:4] + struct.pack("<I", len(model) + 1000) + model[8:]
    with pytest.raises(ValueError, match="says"):
        CrfEntityModel.from_bytes(rehashed(lying_size))
    with pytest.raises(ValueError, match="too short"):
        CrfEntityModel.from_bytes(rehashed(model[:20]))


# ------------------------------------------------------------------------------------------------ registry
def test_registry_saves_loads_and_promotes_a_crf_as_the_entity_model(store, small_crf, snips_validate):
    prefix = "crf/"
    texts = [u["text"] for u in snips_validate[:200]]
    assert registry.load_champion(store, prefix, kind="entities") is None
    gaz = EntityModel().fit(["play daft punk"], [[{"start": 5, "end": 14, "label": "artist"}]])
    m_gaz = registry.save(store, prefix, gaz, metrics={"f1": 0.75}, dataset_tag=None, kind="entities")
    registry.promote(store, prefix, m_gaz["version"], "seed")
    assert isinstance(registry.load_champion(store, prefix, kind="entities"), EntityModel)

    meta = registry.save(store, prefix, small_crf, metrics={"f1": 0.85}, dataset_tag="ds-1", kind="entities")
    version = meta["version"]
    assert small_crf.version == version and meta["kind"] == "entities" and meta["labels"] == small_crf.labels
    assert meta["artifact"]["format"] == "crfsuite"
    assert meta["artifact"]["key"] == f"{prefix}models/{version}/entities.crf"
    body = store.get(meta["artifact"]["key"])
    assert body == small_crf.to_bytes() and meta["artifact"]["sha256"] == registry._sha256(body)
    assert meta["libraries"]["python-crfsuite"] == "0.9.12"
    loaded = registry.load(store, prefix, version)
    assert isinstance(loaded, CrfEntityModel) and loaded.version == version
    assert loaded.predict(texts) == small_crf.predict(texts)
    assert {p.model_version for p in loaded.predictions(texts[:3])} == {version}

    # promoted, the CRF is what the dispatch stage's load_champion(kind="entities") gets
    entry = registry.promote(store, prefix, version, "beat the gazetteer")
    assert entry["kind"] == "entities" and entry["previous"]["version"] == m_gaz["version"]
    champ = registry.load_champion(store, prefix, kind="entities")
    assert isinstance(champ, CrfEntityModel) and champ.version == version
    assert champ.predict(texts) == small_crf.predict(texts)
    assert registry.champion(store, prefix, kind="intent") is None
    # the dispatch stage's predict step takes it as its "entities" model
    from labelops.dispatch import pipeline

    preds, probs, _ = pipeline.predict({"entities": champ}, texts[:20], f"entities:{version}")
    assert probs is None and [p.spans for p in preds] == [tuple(s) for s in small_crf.predict(texts[:20])]
    assert any(p.spans for p in preds) and all(p.label is None for p in preds)
    # and a rollback to the gazetteer works the same way
    registry.promote(store, prefix, m_gaz["version"], "rollback")
    assert isinstance(registry.load_champion(store, prefix, kind="entities"), EntityModel)
    assert registry.versions(store, prefix) == sorted([m_gaz["version"], version])
    with pytest.raises(TypeError):
        registry.save(store, prefix, small_crf, metrics={}, dataset_tag=None, kind="intent")


def test_registry_refuses_a_tampered_crf_artifact(store):
    prefix = "crf-tamper/"
    model = tiny_crf()
    meta = registry.save(store, prefix, model, metrics={}, dataset_tag=None, kind="entities")
    key, mkey = meta["artifact"]["key"], f"{prefix}models/{meta['version']}/meta.json"
    good = store.get(key)
    assert registry.load(store, prefix, meta["version"]).predict(["play muse"]) == model.predict(["play muse"])
    assert [s.label for s in model.predict(["weather in paris"])[0]] == ["city"]

    bad = bytearray(good)
    bad[-100] ^= 0xFF  # one byte of the CRFsuite model
    store.put(key, bytes(bad))
    with pytest.raises(registry.ArtifactIntegrityError, match="sha256"):
        registry.load(store, prefix, meta["version"])
    with pytest.raises(registry.ArtifactIntegrityError):
        registry.promote(store, prefix, meta["version"], "should not happen")
    assert registry.champion(store, prefix, kind="entities") is None

    # an attacker who also rewrites meta.json's sha256: the artifact's own header still refuses it
    store.put_json(mkey, {**meta, "artifact": {**meta["artifact"], "sha256": registry._sha256(bytes(bad))}})
    with pytest.raises(registry.UntrustedArtifactError, match="not a CRF entity model"):
        registry.load(store, prefix, meta["version"])
    # meta.json claiming another format for the file is refused, as is an unknown format
    store.put(key, good)
    store.put_json(mkey, {**meta, "artifact": {**meta["artifact"], "format": "json"}})
    with pytest.raises(registry.ArtifactIntegrityError, match="does not describe"):
        registry.load(store, prefix, meta["version"])
    store.put_json(mkey, {**meta, "artifact": {**meta["artifact"], "format": "pickle"}})
    with pytest.raises(registry.ArtifactIntegrityError, match="no artifact format 'pickle'"):
        registry.load(store, prefix, meta["version"])
    store.put_json(mkey, meta)
    assert isinstance(registry.load(store, prefix, meta["version"]), CrfEntityModel)
    store.delete([key])
    with pytest.raises(registry.ArtifactIntegrityError, match="missing"):
        registry.load(store, prefix, meta["version"])


def test_the_retrain_evaluation_measures_span_score_calibration(small_crf, snips_validate):
    """The retrain stage's evaluation of an entity model (`retrain.pipeline.evaluate` + `headline`): exact-span
    F1 and the calibration of the span scores, which dispatch routes on."""
    from labelops.models.evaluate import span_calibration
    from labelops.retrain.pipeline import evaluate, headline

    items = [{"text": u["text"], "entities": u["spans"]} for u in snips_validate]
    metrics = evaluate(small_crf, "entities", items)
    flat = headline(metrics, "entities")
    predicted = small_crf.predict([u["text"] for u in snips_validate])
    assert flat["entity_f1"] == pytest.approx(entity_metrics(gold(snips_validate), predicted)["micro"]["f1"])
    cal = metrics["calibration"]
    assert flat["entity_ece"] == cal["ece"] == span_calibration(gold(snips_validate), predicted)["ece"]
    assert cal["n"] == sum(len(p) for p in predicted) and cal["precision"] == pytest.approx(
        flat["entity_precision"])
    # the CRF's marginals are close to calibrated even from 1,500 utterances; a constant score of 1 is not
    assert cal["ece"] < 0.1, cal["ece"]
    overconfident = [[{"start": s.start, "end": s.end, "label": s.label, "score": 1.0} for s in p] for p in predicted]
    assert span_calibration(gold(snips_validate), overconfident)["ece"] == pytest.approx(1 - cal["precision"])
