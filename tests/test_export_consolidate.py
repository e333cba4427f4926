"""Tests of labelops.export (consolidation, split, diff, CoNLL, files, dataset card): pure, hand-made rows."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re

import pyarrow.parquet as pq
import pytest

from labelops.export import card as card_mod
from labelops.export.consolidate import (
    IMAGE_ITEM_KEYS,
    ITEM_KEYS,
    consolidate,
    dawid_skene,
    diff,
    image_items,
    reliability_weights,
    split_of,
    to_classification_csv,
    to_conll,
    write_files,
)

_ids = itertools.count(1)
T0 = "2026-01-01T00:00:00+00:00"


def row(rid, annotator, label=None, *, spans=(), updated=T0, cancelled=False, task_key=None, text="some text",
        adjudication=False):
    n = next(_ids)
    return {"platform": "label_studio", "queue": "expert" if adjudication else "crowd", "project_id": "1",
            "task_id": str(n), "task_key": task_key or (f"p:adjudicate:{rid}" if adjudication else f"p:b1:{rid}"),
            "record_id": rid, "annotation_id": str(n), "annotator": annotator, "label": label,
            "spans": json.dumps([{"start": s, "end": e, "label": lab, "text": None} for s, e, lab in spans]),
            "created_at": updated, "updated_at": updated, "lead_time_s": 3.0, "cancelled": cancelled, "text": text}


def by_id(items):
    return {i["item_id"]: i for i in items}


def spans_of(item):
    return [(e["start"], e["end"], e["label"]) for e in item["entities"]]


# -- labels ---------------------------------------------------------------------------------------------------------


def test_adjudication_wins_even_against_a_unanimous_vote():
    rows = [row("r1", "a", "X"), row("r1", "b", "X"), row("r1", "c", "X"),
            row("r1", "expert", "Y", adjudication=True, updated="2026-01-02T00:00:00+00:00"),
            row("r2", "a", "X"), row("r2", "b", "X")]
    items, held = consolidate(rows, gold={}, entity=False)
    got = by_id(items)
    assert held == []
    assert (got["r1"]["label"], got["r1"]["decided_by"], got["r1"]["agreement"]) == ("Y", "adjudicated", 1.0)
    assert got["r1"]["n_annotations"] == 4 and got["r1"]["annotators"] == ["a", "b", "c", "expert"]
    assert (got["r2"]["label"], got["r2"]["decided_by"], got["r2"]["agreement"]) == ("X", "unanimous", 1.0)


def test_the_latest_adjudication_wins():
    rows = [row("r1", "a", "X"), row("r1", "e1", "Y", adjudication=True, updated="2026-01-03T00:00:00+00:00"),
            row("r1", "e2", "Z", adjudication=True, updated="2026-01-02T00:00:00+00:00")]
    for order in (rows, rows[::-1]):
        assert consolidate(order, gold={}, entity=False)[0][0]["label"] == "Y"


def test_gold_is_exported_once_with_its_known_answer_even_if_its_annotators_were_wrong():
    rows = [row("g1", "a", "wrong", task_key="p:b1:g1"), row("g1", "b", "wrong", task_key="p:b2:g1"),
            row("g1", "c", "wrong", task_key="p:b3:g1"), row("g1", "a", "wrong", task_key="p:b4:g1"),
            row("r1", "a", "X")]
    items, held = consolidate(rows, gold={"g1": {"label": "right", "spans": []}}, entity=False)
    gold_items = [i for i in items if i["item_id"] == "g1"]
    assert len(gold_items) == 1 and held == []
    g = gold_items[0]
    assert (g["label"], g["decided_by"], g["agreement"]) == ("right", "gold", 1.0)
    assert g["n_annotations"] == 3  # a's two answers through two batches count once (the latest)
    assert len(items) == 2


def test_gold_spans_win_in_an_entity_project():
    text = "play Journey now"
    rows = [row("g1", "a", spans=[(0, 4, "verb")], text=text), row("g1", "b", spans=[(0, 4, "verb")], text=text)]
    items, _ = consolidate(rows, gold={"g1": {"label": None, "spans": [{"start": 5, "end": 12, "label": "artist",
                                                                         "text": "Journey"}]}}, entity=True)
    assert spans_of(items[0]) == [(5, 12, "artist")] and items[0]["entities"][0]["text"] == "Journey"
    assert items[0]["decided_by"] == "gold"


def test_a_tie_is_held_back_with_the_competing_answers():
    rows = [row("r1", "a", "X"), row("r1", "b", "Y")]
    items, held = consolidate(rows, gold={}, entity=False)
    assert items == []
    assert held[0]["reason"] == "tie" and held[0]["item_id"] == "r1"
    assert held[0]["answers"] == [{"annotator": "a", "label": "X", "entities": []},
                                  {"annotator": "b", "label": "Y", "entities": []}]
    assert held[0]["votes"] == [["X", 1.0], ["Y", 1.0]]


def test_a_low_winning_share_is_held_back_and_min_share_sets_the_bar():
    rows = [row("r1", "a", "X"), row("r1", "b", "X"), row("r1", "c", "Y"), row("r1", "d", "Z"), row("r1", "e", "W")]
    items, held = consolidate(rows, gold={}, entity=False)
    assert items == [] and held[0]["reason"] == "low_agreement" and held[0]["agreement"] == 0.4
    items, held = consolidate(rows, gold={}, entity=False, min_share=0.4)
    assert held == [] and (items[0]["label"], items[0]["decided_by"], items[0]["agreement"]) == ("X", "majority", 0.4)


def test_a_majority_and_a_single_answer():
    rows = [row("r1", "a", "X"), row("r1", "b", "X"), row("r1", "c", "Y"), row("r2", "a", "Z")]
    got = by_id(consolidate(rows, gold={}, entity=False)[0])
    assert (got["r1"]["label"], got["r1"]["decided_by"], got["r1"]["agreement"]) == ("X", "majority", 0.666667)
    assert (got["r2"]["label"], got["r2"]["decided_by"], got["r2"]["n_annotations"]) == ("Z", "single", 1)


def test_a_weighted_vote_flips_an_unweighted_majority():
    rows = [row("r1", "a", "X"), row("r1", "b", "X"), row("r1", "c", "Y")]
    assert consolidate(rows, gold={}, entity=False)[0][0]["label"] == "X"
    items, held = consolidate(rows, gold={}, entity=False, weights={"a": 1.0, "b": 1.0, "c": 3.0})
    assert (items[0]["label"], items[0]["decided_by"], items[0]["agreement"]) == ("Y", "weighted_majority", 0.6)


def test_an_annotator_missing_from_the_weights_gets_the_median_weight():
    rows = [row("r1", "a", "X"), row("r1", "new", "Y"), row("r1", "c", "Y")]
    # median of {a: 5, b: 1, c: 0.5} is 1: Y = 1 + 0.5 < X = 5
    items, _ = consolidate(rows, gold={}, entity=False, weights={"a": 5.0, "b": 1.0, "c": 0.5})
    assert items[0]["label"] == "X"
    # median of {a: 5, b: 4.5, c: 0.5} is 4.5: Y = 4.5 + 0.5 = X = 5 -> tie
    _, held = consolidate(rows, gold={}, entity=False, weights={"a": 5.0, "b": 4.5, "c": 0.5})
    assert held[0]["reason"] == "tie"
    with pytest.raises(ValueError):
        consolidate(rows, gold={}, entity=False, weights={"a": 0.0})


def test_the_latest_answer_of_each_annotator_wins():
    rows = [row("r1", "a", "Y", updated="2026-01-02T00:00:00Z", task_key="p:b2:r1"),  # later, listed first
            row("r1", "a", "X", updated="2026-01-01T23:00:00+00:00", task_key="p:b1:r1"),
            row("r1", "b", "Y")]
    for order in (rows, rows[::-1]):
        items, held = consolidate(order, gold={}, entity=False)
        assert held == [] and (items[0]["label"], items[0]["decided_by"]) == ("Y", "unanimous")
        assert items[0]["n_annotations"] == 2


def test_cancelled_annotations_are_ignored():
    rows = [row("r1", "a", "X"), row("r1", "b", "X"), row("r1", "c", "Y", cancelled=True),
            row("r1", "d", "Y", cancelled=True), row("r1", "e", "Y", cancelled=True),
            row("r2", "a", "X", cancelled=True)]
    items, held = consolidate(rows, gold={}, entity=False)
    assert (items[0]["label"], items[0]["decided_by"], items[0]["n_annotations"]) == ("X", "unanimous", 2)
    assert [(h["item_id"], h["reason"]) for h in held] == [("r2", "skipped")]
    # a cancelled later answer does not replace the annotator's earlier one
    rows = [row("r1", "a", "X"), row("r1", "a", "Y", cancelled=True, updated="2026-02-01T00:00:00+00:00")]
    assert consolidate(rows, gold={}, entity=False)[0][0]["label"] == "X"


def test_no_label_and_no_text_are_held_back():
    rows = [row("r1", "a", None), row("r1", "b", None), row("r2", "a", "X", text=None)]
    items, held = consolidate(rows, gold={}, entity=False)
    assert items == []
    assert [(h["item_id"], h["reason"]) for h in held] == [("r1", "no_label"), ("r2", "no_text")]
    assert held[1]["decided"] == {"label": "X", "entities": [], "decided_by": "single"}


def test_items_are_sorted_and_carry_the_schema_and_source_keys():
    rows = [row(rid, "a", "X") for rid in ("r3", "r1", "r2")]
    items, _ = consolidate(rows, gold={}, entity=False, source_keys={"r1": "raw/2026/a.jsonl"})
    assert [i["item_id"] for i in items] == ["r1", "r2", "r3"]
    assert all(tuple(i) == ITEM_KEYS for i in items)
    assert items[0]["source_key"] == "raw/2026/a.jsonl" and items[1]["source_key"] is None


# -- entity spans ---------------------------------------------------------------------------------------------------

TEXT = "Add Don and Sherri to my Meditate playlist"
ARTIST, OWNER, PLAYLIST = (4, 18, "artist"), (22, 24, "playlist_owner"), (25, 33, "playlist")


def test_entity_spans_kept_by_a_majority_of_three_annotators():
    rows = [row("r1", "a", spans=[ARTIST, PLAYLIST], text=TEXT),
            row("r1", "b", spans=[ARTIST], text=TEXT),
            row("r1", "c", spans=[ARTIST, PLAYLIST, OWNER], text=TEXT)]
    items, held = consolidate(rows, gold={}, entity=True)
    assert held == []
    it = items[0]
    assert spans_of(it) == [ARTIST, PLAYLIST]  # 3/3 and 2/3 kept, OWNER (1/3) dropped
    assert [e["text"] for e in it["entities"]] == ["Don and Sherri", "Meditate"]
    assert it["label"] is None and it["decided_by"] == "majority"
    assert it["agreement"] == 0.333333  # only a's span set equals the consolidated one


def test_entity_spans_weighted_and_the_half_rule():
    rows = [row("r1", "a", spans=[ARTIST], text=TEXT), row("r1", "b", spans=[], text=TEXT),
            row("r1", "c", spans=[], text=TEXT)]
    assert spans_of(consolidate(rows, gold={}, entity=True)[0][0]) == []
    items, _ = consolidate(rows, gold={}, entity=True, weights={"a": 2.0, "b": 1.0, "c": 1.0})
    assert spans_of(items[0]) == [ARTIST]  # 2 of 4: exactly half is kept


def test_adjudicated_spans_win():
    rows = [row("r1", "a", "AddToPlaylist", spans=[ARTIST], text=TEXT),
            row("r1", "b", "AddToPlaylist", spans=[ARTIST], text=TEXT),
            row("r1", "e", "AddToPlaylist", spans=[PLAYLIST], text=TEXT, adjudication=True)]
    items, _ = consolidate(rows, gold={}, entity=True)
    assert spans_of(items[0]) == [PLAYLIST] and items[0]["decided_by"] == "adjudicated"


def test_intent_and_entities_vote_the_label_and_the_spans():
    rows = [row("r1", "a", "AddToPlaylist", spans=[ARTIST, PLAYLIST], text=TEXT),
            row("r1", "b", "AddToPlaylist", spans=[ARTIST], text=TEXT),
            row("r1", "c", "PlayMusic", spans=[ARTIST, PLAYLIST], text=TEXT)]
    items, _ = consolidate(rows, gold={}, entity=True)
    it = items[0]
    assert (it["label"], it["decided_by"], it["agreement"]) == ("AddToPlaylist", "majority", 0.666667)
    assert spans_of(it) == [ARTIST, PLAYLIST]
    # same label, different spans: not unanimous
    rows = [row("r2", "a", "AddToPlaylist", spans=[ARTIST], text=TEXT),
            row("r2", "b", "AddToPlaylist", spans=[], text=TEXT)]
    assert consolidate(rows, gold={}, entity=True)[0][0]["decided_by"] == "majority"


def test_overlapping_spans_with_equal_support_are_held_back():
    rows = [row("r1", "a", spans=[(4, 18, "artist")], text=TEXT), row("r1", "b", spans=[(4, 7, "artist")], text=TEXT)]
    items, held = consolidate(rows, gold={}, entity=True)
    assert items == [] and held[0]["reason"] == "span_conflict"
    assert [spans_of(a) for a in held[0]["answers"]] == [[(4, 18, "artist")], [(4, 7, "artist")]]
    # the better-supported of two overlapping spans wins
    rows = [row("r1", "a", spans=[(4, 18, "artist"), (4, 7, "person")], text=TEXT),
            row("r1", "b", spans=[(4, 18, "artist")], text=TEXT)]
    items, held = consolidate(rows, gold={}, entity=True)
    assert held == [] and spans_of(items[0]) == [(4, 18, "artist")]


# -- reliability ----------------------------------------------------------------------------------------------------


def test_reliability_weights_are_log_odds_normalised_to_the_median():
    w = reliability_weights({"a": 0.9, "b": 0.75, "c": 0.6, "d": None}, 2)
    la, lb, lc = math.log(9), math.log(3), math.log(1.5)
    assert w["a"] == pytest.approx(la / lb) and w["b"] == pytest.approx(1.0) and w["c"] == pytest.approx(lc / lb)
    assert w["d"] == 1.0
    k4 = reliability_weights({"a": 0.7, "b": 0.7}, 4)  # (K-1) p/(1-p): equal accuracies -> equal weights
    assert k4 == {"a": 1.0, "b": 1.0}
    clipped = reliability_weights({"perfect": 1.0, "chance": 0.2, "mid": 0.8}, 2)
    assert clipped["perfect"] == pytest.approx(math.log(99) / math.log(4))
    assert 0 < clipped["chance"] == pytest.approx(math.log(0.51 / 0.49) / math.log(4))
    assert reliability_weights({"a": None}, 3) == {"a": 1.0}
    with pytest.raises(ValueError):
        reliability_weights({"a": 0.9}, 1)


def test_dawid_skene_finds_the_spammer():
    rng = random.Random(7)
    labels = ["A", "B", "C"]
    truth = {f"r{n}": rng.choice(labels) for n in range(300)}
    rows = []
    for rid, t in truth.items():
        for who in ("good1", "good2", "good3"):
            rows.append(row(rid, who, t if rng.random() < 0.85 else rng.choice([x for x in labels if x != t])))
        rows.append(row(rid, "spam", rng.choice(labels)))
    ds = dawid_skene(rows, labels)
    assert ds["converged"]
    assert ds["accuracy"]["spam"] < 0.45 < 0.75 < min(ds["accuracy"][g] for g in ("good1", "good2", "good3"))
    right = sum(max(p, key=p.get) == truth[rid] for rid, p in ds["posterior"].items())
    voted = {i["item_id"]: i["label"] for i in consolidate(rows, gold={}, entity=False, min_share=0)[0]}
    assert right / len(truth) > 0.9 and right > sum(voted.get(rid) == t for rid, t in truth.items())
    w = reliability_weights(ds["accuracy"], len(labels))
    assert w["spam"] < 0.2 * min(w[g] for g in ("good1", "good2", "good3"))


# -- split, diff ----------------------------------------------------------------------------------------------------


def test_an_items_split_does_not_change_when_other_items_are_added():
    first = [row(f"r{n}", "a", "X") for n in range(200)]
    more = first + [row(f"s{n}", "a", "X") for n in range(500)]
    v1 = {i["item_id"]: i["split"] for i in consolidate(first, gold={}, entity=False, seed=42)[0]}
    v2 = {i["item_id"]: i["split"] for i in consolidate(more, gold={}, entity=False, seed=42)[0]}
    assert all(v2[k] == s for k, s in v1.items())
    assert all(split_of(k, 42) == s for k, s in v2.items())
    other = {k: split_of(k, 43) for k in v2}
    assert sum(other[k] != v2[k] for k in v2) > 100  # the seed matters


def test_the_split_scheme_is_pinned():
    # sha256("<seed>:<id>"): a change of the scheme would move items between splits across versions
    got = {k: split_of(k, 42) for k in "abcdefghijkl"}
    assert got == {"a": "train", "b": "train", "c": "train", "d": "validation", "e": "test", "f": "train",
                   "g": "test", "h": "validation", "i": "train", "j": "train", "k": "test", "l": "train"}


def test_split_ratios_are_respected_on_10k_ids():
    counts = {"train": 0, "validation": 0, "test": 0}
    for n in range(10_000):
        counts[split_of(f"item-{n}", 1)] += 1
    assert abs(counts["train"] - 8000) < 200 and abs(counts["validation"] - 1000) < 100
    assert abs(counts["test"] - 1000) < 100
    counts = {"train": 0, "validation": 0, "test": 0}
    for n in range(10_000):
        counts[split_of(f"item-{n}", 1, (0.5, 0.0, 0.5))] += 1
    assert counts["validation"] == 0 and abs(counts["train"] - 5000) < 200
    with pytest.raises(ValueError):
        split_of("x", 1, (0.8, 0.1, 0.2))


def test_diff_counts_and_examples():
    previous = {f"i{n:03d}": "X" for n in range(50)}
    items = [{"item_id": f"i{n:03d}", "label": "Y" if n < 30 else "X"} for n in range(25, 100)]
    d = diff(previous, items)
    assert (d["previous_items"], d["items"]) == (50, 75)
    assert d["added"]["count"] == 50 and d["added"]["examples"] == [f"i{n:03d}" for n in range(50, 70)]
    assert d["removed"]["count"] == 25 and len(d["removed"]["examples"]) == 20
    assert d["label_changed"]["count"] == 5 and d["unchanged"] == 20
    assert d["label_changed"]["examples"][0] == {"item_id": "i025", "before": "X", "after": "Y"}
    assert diff({}, items)["added"]["count"] == 75


# -- CoNLL ----------------------------------------------------------------------------------------------------------


def test_conll_of_a_snips_sentence():
    text = "Add Don and Sherri to my Meditate to Sounds of Nature playlist"
    ents = [{"start": 4, "end": 18, "label": "artist"}, {"start": 22, "end": 24, "label": "playlist_owner"},
            {"start": 25, "end": 53, "label": "playlist"}]
    assert text[25:53] == "Meditate to Sounds of Nature"
    out = to_conll([{"text": text, "entities": ents}, {"text": "play music", "entities": []}])
    assert out == ("Add O\nDon B-artist\nand I-artist\nSherri I-artist\nto O\nmy B-playlist_owner\n"
                   "Meditate B-playlist\nto I-playlist\nSounds I-playlist\nof I-playlist\nNature I-playlist\n"
                   "playlist O\n\nplay O\nmusic O\n\n")
    assert to_conll([{"text": "hi", "entities": []}], docstart=True) == "-DOCSTART- O\n\nhi O\n\n"


def test_conll_tags_the_tokens_a_misaligned_span_overlaps():
    text = "book a table in Paris. for two"
    ents = [{"start": 16, "end": 21, "label": "city"},          # "Paris" inside the token "Paris."
            {"start": 7, "end": 10, "label": "facility type"},  # half of "table"; a label with a space
            {"start": 8, "end": 12, "label": "other"}]          # overlaps the previous span: left out
    lines = to_conll([{"text": text, "entities": ents}]).splitlines()
    assert lines == ["book O", "a O", "table B-facility_type", "in O", "Paris. B-city", "for O", "two O", ""]


# -- files ----------------------------------------------------------------------------------------------------------


def _entity_dataset():
    rows = [row("r1", "a", "AddToPlaylist", spans=[ARTIST], text=TEXT),
            row("r1", "b", "AddToPlaylist", spans=[ARTIST], text=TEXT),
            row("r2", "a", "PlayMusic", spans=[], text="play «Blåbær» now ✓"),
            row("r3", "a", "X", text="t3"), row("r3", "b", "Y", text="t3"),
            row("r4", "a", "X", text="t4", cancelled=True)]
    items, held = consolidate(rows, gold={}, entity=True, source_keys={"r1": "raw/a.jsonl"}, seed=3)
    return rows, items, held


def test_write_files_is_byte_deterministic_and_round_trips(tmp_path):
    rows, items, held = _entity_dataset()
    h1 = write_files(tmp_path / "one", items, held, rows, entity=True)
    h2 = write_files(tmp_path / "two", list(reversed(items)), held, list(reversed(rows)), entity=True)
    assert set(h1) == {"dataset.jsonl", "dataset.parquet", "held_back.jsonl", "annotations.parquet",
                       "entities.conll"}
    assert h1 == h2
    for name, digest in h1.items():
        data = (tmp_path / "one" / name).read_bytes()
        assert data == (tmp_path / "two" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
    assert pq.read_table(tmp_path / "one" / "dataset.parquet").to_pylist() == items
    lines = (tmp_path / "one" / "dataset.jsonl").read_text("utf-8").splitlines()
    assert [json.loads(x) for x in lines] == items and "«Blåbær»" in lines[1]
    assert [json.loads(x)["reason"] for x in (tmp_path / "one" / "held_back.jsonl").read_text().splitlines()] == \
        ["tie", "skipped"]
    raw = pq.read_table(tmp_path / "one" / "annotations.parquet").to_pylist()
    assert len(raw) == len(rows) and [r["record_id"] for r in raw] == sorted(r["record_id"] for r in rows)
    assert "Don B-artist" in (tmp_path / "one" / "entities.conll").read_text()
    plain = write_files(tmp_path / "three", items, held, rows, entity=False)
    assert "entities.conll" not in plain and not (tmp_path / "three" / "entities.conll").exists()


def test_image_items_name_their_image_by_uri_key_and_hash_and_the_csv_is_the_automl_layout(tmp_path):
    """Image projects: items carry the image's s3:// URI, key and content hash (from the dispatch ledger, not the
    URL a platform showed), no text or entities; classification.csv is ML_USE,URI,LABEL; deterministic."""
    uri = {f"r{i}": f"s3://labelops/digits/images/digit-{i:04d}.png" for i in range(1, 5)}
    rows = [row("r1", "a", "3", text=uri["r1"]), row("r1", "b", "3", text=uri["r1"]),
            row("r2", "a", "7", text="https://signed.example/x?X-Amz-Signature=1"),  # what Scale was shown
            row("r3", "a", "1", text=uri["r3"]), row("r3", "b", "7", text=uri["r3"]),  # a tie: held back
            row("r4", "a", "0", text=uri["r4"])]
    images = {rid: {"image": u, "sha256": hashlib.sha256(rid.encode()).hexdigest()} for rid, u in uri.items()}
    items, held = consolidate(rows, gold={}, entity=False, ratios=(0.5, 0.0, 0.5), seed=3)
    hashes = write_files(tmp_path / "one", items, held, rows, entity=False, images=images)
    assert set(hashes) == {"dataset.jsonl", "dataset.parquet", "held_back.jsonl", "annotations.parquet",
                           "classification.csv"}
    assert hashes == write_files(tmp_path / "two", list(reversed(items)), held, rows, entity=False, images=images)
    got = [json.loads(x) for x in (tmp_path / "one" / "dataset.jsonl").read_text().splitlines()]
    assert [(i["item_id"], i["label"]) for i in got] == [("r1", "3"), ("r2", "7"), ("r4", "0")]
    for i in got:
        assert tuple(i) == IMAGE_ITEM_KEYS and "text" not in i
        assert i["image"] == uri[i["item_id"]] and i["image_key"] == uri[i["item_id"]].split("/", 3)[3]
        assert i["sha256"] == images[i["item_id"]]["sha256"]
    assert pq.read_table(tmp_path / "one" / "dataset.parquet").to_pylist() == got
    csv_rows = (tmp_path / "one" / "classification.csv").read_text().splitlines()
    ml_use = {"train": "TRAINING", "test": "TEST"}
    assert csv_rows == [f"{ml_use[i['split']]},{i['image']},{i['label']}" for i in got]
    assert [h["item_id"] for h in held] == ["r3"]
    # an item the ledger does not know keeps what the platform row named, with no key when it is not s3://
    lone = image_items([{"item_id": "zz", "text": "https://x/y.png", "label": "1"}], images)[0]
    assert (lone["image"], lone["image_key"], lone["sha256"]) == ("https://x/y.png", None, None)
    assert to_classification_csv([{"image": "s3://b/k.png", "label": None, "split": "train"}]) == ""


# -- card -----------------------------------------------------------------------------------------------------------


def _meta(**over):
    rows, items, held = _entity_dataset()
    meta = {"project": "snips", "version": "v0003", "created_at": "2026-02-01T00:00:00+00:00", "run_id": "run-1",
            **card_mod.summarize(items, held, rows),
            "agreement": {"since": "2026-01-01", "until": "2026-02-01", "cohen_kappa_mean": 0.8123,
                          "fleiss_kappa": None, "krippendorff_alpha": 0.7, "gold_accuracy": None},
            "model_versions": ["intent-clf@3"], "changes": None, "license": ["CC BY 4.0, SNIPS"]}
    meta.update(over)
    return meta


def test_card_contains_the_figures_and_na_for_none():
    text = card_mod.render_card(_meta())
    assert "| mean pairwise Cohen's kappa | 0.812 |" in text and "Period: 2026-01-01 to 2026-02-01." in text
    assert "| Fleiss' kappa | n/a |" in text and "| gold accuracy | n/a |" in text
    assert "| items | 2 |" in text and "| held back | 2 |" in text and "| held back: tie | 1 |" in text
    assert "| annotations | 5 |" in text and "| annotators | 2 |" in text
    assert "| AddToPlaylist | 1 | 50.0% |" in text
    assert "First version." in text and "intent\\-clf@3" not in text and "- intent-clf@3" in text
    assert "raw/" in text and "CC BY 4.0, SNIPS" in text


def test_card_changes_and_top_labels():
    dist = {f"label{n:02d}": 100 - n for n in range(40)}
    d = {"previous_items": 10, "items": 12, "added": {"count": 3, "examples": ["x1"]},
         "removed": {"count": 1, "examples": ["x0"]},
         "label_changed": {"count": 2, "examples": [{"item_id": "x5", "before": "A", "after": None}]},
         "unchanged": 7}
    text = card_mod.render_card(_meta(label_distribution=dist, changes=d, counts={"items": sum(dist.values())}))
    assert "| label29 |" in text and "| label30 |" not in text
    assert "*others (10 labels)*" in text and f"| {sum(100 - n for n in range(30, 40))} |" in text
    assert "| added | 3 |" in text and "| label changed | 2 |" in text and "| x5 | A | *(none)* |" in text
    assert "First version." not in text


def test_card_survives_hostile_strings():
    evil = "a|b`c`\n# Heading <script>alert(1)</script> [x](http://e)"
    text = card_mod.render_card(_meta(project=evil, label_distribution={evil: 3, "- list": 1}, counts={"items": 4},
                                      sources={evil + "/k": 4}, model_versions=[evil], license=[evil]))
    assert "<script>" not in text and "\n# Heading" not in text and not re.search(r"(?<!\\)\]\(", text)
    tables = [block.splitlines() for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) >= 4
    for table in tables:  # every row of a table keeps the header's number of cells
        assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table}) == 1, table
    assert all(len(re.findall(r"(?<!\\)`", line)) % 2 == 0 for line in text.splitlines())
    assert "| \\- list | 1 |" in text


def test_card_accepts_the_alternative_key_names_and_shows_entity_types():
    meta = {"project": "snips", "tag": "snips/v2", "description": "Assistant utterances", "run_id": "r",
            "created_at": "2026-02-01", "labels": {"PlayMusic": 7}, "entity_types": {"artist": 5, "playlist": 2},
            "counts": {"items": 7, "held_back": 3, "held_back_by_reason": {"tie": 2, "low_agreement": 1},
                       "by_decision": {"majority": 7}, "annotations": 20, "annotators": 3},
            "agreement": {"nights": 4, "cohen_kappa_mean": 0.5, "krippendorff_alpha_nominal": 0.456,
                          "fleiss_kappa": 0.4, "gold_accuracy": 0.9},
            "source_prefixes": {"raw/2026/01": 7}, "attribution": ["SNIPS, CC0"], "previous_tag": "snips/v1",
            "changes": diff({"a": "X"}, [{"item_id": "a", "label": "Y"}])}
    text = card_mod.render_card(meta)
    assert text.startswith("# Dataset card: snips snips/v2\n\nAssistant utterances\n")
    assert "| held back | 3 |" in text and "| held back: tie | 2 |" in text and "| decided by majority | 7 |" in text
    assert "| Krippendorff's alpha (nominal) | 0.456 |" in text and "Agreement runs in the period: 4." in text
    assert "| PlayMusic | 7 | 100.0% |" in text and "| artist | 5 |" in text
    assert "| raw/2026/01 | 7 |" in text and "- SNIPS, CC0" in text and "Previous version (snips/v1)" in text
    assert "| label changed | 1 |" in text and "| a | X | Y |" in text
