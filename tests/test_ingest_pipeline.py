"""The ingest stage against moto's S3 server: formats, quarantine reasons, dedup across runs, incremental runs,
re-runs that create nothing, the batch-level contract limit, and the manifest invariant on every run."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from labelops.config import ProjectConfig, Storage, load_project
from labelops.ingest.contract import BatchRejected
from labelops.ingest.pipeline import MANIFEST_KEYS, PrefixNotAllowed, Paths, plan, run, safe_run_id
from labelops.storage import S3Store

REPO = Path(__file__).resolve().parents[1]
PROJECTS = REPO / "include" / "configs" / "projects"
SNIPS = REPO / "data" / "snips" / "2017-06-custom-intent-engines"


_counter = iter(range(10_000))


def project_at(name: str = "banking_support") -> ProjectConfig:
    """The demo project moved to a fresh prefix, so every test has its own history."""
    base = load_project(PROJECTS / f"{name}.yaml")
    new_name = f"t{next(_counter):04d}_{name}"
    prefix = new_name + "/"
    storage = Storage(bucket="labelops", source_prefix=prefix + "raw/", project_prefix=prefix)
    return ProjectConfig(spec=base.spec.model_copy(update={"storage": storage, "name": new_name}), labels=base.labels,
                         source_file=base.source_file, label_config_xml=base.label_config_xml,
                         entities=base.entities)


def put(s3, project: ProjectConfig, name: str, body: bytes) -> str:
    key = project.spec.storage.source_prefix + name
    s3.put_object(Bucket="labelops", Key=key, Body=body)
    return key


def ingest(s3, project: ProjectConfig, run_id: str, prefix: str | None = None) -> dict:
    store = S3Store(s3, "labelops")
    plan(store, project, run_id, prefix)
    manifest = run(store, project, run_id)
    reconcile(manifest)
    return manifest


def reconcile(manifest: dict) -> None:
    """The manifest invariant, checked on every run of every test."""
    assert set(MANIFEST_KEYS) <= set(manifest)
    assert manifest["records_read"] == (manifest["records_staged"] + manifest["duplicates_exact"]
                                        + manifest["duplicates_near"] + sum(manifest["quarantined"].values()))


def staged_rows(s3, manifest: dict) -> list[dict]:
    key = manifest["staged_uri"].split("/", 3)[3]
    body = s3.get_object(Bucket="labelops", Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body)).to_pylist()


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def all_keys(s3, prefix: str) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="labelops", Prefix=prefix)
    return {o["Key"]: o["ETag"] for p in pages for o in p.get("Contents", [])}


# distinct utterances for the fault tests (tests/test_faults.py): none a near duplicate of another
GOOD_ROWS_FOR_FAULTS = [f"Request number {i}: please check {w} on my account" for i, w in enumerate(
    ["the card limit", "a pending transfer", "the exchange fee", "my top-up", "a refund", "the PIN block",
     "a declined payment", "the statement date", "my address change", "the virtual card"])]

UTTERANCES = ["How do I locate my card?", "My card has not arrived yet.", "Can I top up with a cheque?",
              "Why was I charged a fee for the transfer?", "I want to close my account please",
              "What currencies do you support for exchange?"]


def test_every_text_format_is_read_and_staged(s3):
    project = project_at()
    rows = [{"source_id": f"r{i}", "text": t} for i, t in enumerate(UTTERANCES)]
    put(s3, project, "a.jsonl", jsonl(rows[:2]))
    put(s3, project, "b.csv", b"source_id,text\r\nr2,\"Can I top up with a cheque?\"\r\n")
    put(s3, project, "c.json", json.dumps(rows[3:4]).encode())
    put(s3, project, "d.jsonl.gz", gzip.compress(jsonl(rows[4:5])))
    put(s3, project, "e.csv.gz", gzip.compress(b"source_id,text\nr5,What currencies do you support for exchange?\n"))
    manifest = ingest(s3, project, "manual__2026-11-24T01:00:00+00:00")
    assert manifest["records_read"] == 6 and manifest["records_staged"] == 6
    assert manifest["objects_read"] == 5 and manifest["objects_quarantined"] == 0
    assert {s["format"] for s in manifest["sources"]} == {"jsonl", "csv", "json_array", "jsonl+gzip", "csv+gzip"}
    staged = staged_rows(s3, manifest)
    assert sorted(r["text"] for r in staged) == sorted(UTTERANCES)
    assert {r["source_id"] for r in staged} == {f"r{i}" for i in range(6)}
    assert all(len(r["record_id"]) == 32 and r["source_key"].startswith(project.spec.storage.source_prefix)
               for r in staged)
    assert manifest["contract"] == {"id": "banking_support_utterances", "version": "1.0.0",
                                    "file": "banking_support_utterances.odcs.yaml"}
    key = Paths(project, safe_run_id("manual__2026-11-24T01:00:00+00:00")).manifest
    assert json.loads(s3.get_object(Bucket="labelops", Key=key)["Body"].read())["records_staged"] == 6


def banking77_texts(n: int) -> list[str]:
    import csv

    with open(REPO / "data" / "banking77" / "test.csv", newline="", encoding="utf-8") as fh:
        rows = [r["text"] for r in csv.DictReader(fh)]
    return rows[::40][:n]  # one per intent: clearly distinct


def test_each_quarantine_reason_with_source_key_and_line(s3):
    project = project_at()
    good = [{"text": t} for t in banking77_texts(40)]  # the 8 bad records stay under the contract's 20%
    put(s3, project, "good.jsonl", jsonl(good))
    put(s3, project, "bad_lines.jsonl",
        b'{"text": "Is there a fee for topping up by card?"}\n'
        b'{"text": "x"}\n'                                          # contract: minLength
        b'{"text": "fine text", "source_id": "has space"}\n'       # contract: pattern
        b'{"text": 42}\n'                                           # contract: logicalType
        b'{"source_id": "no-text"}\n'                               # contract: required
        b'[1, 2]\n'                                                 # not an object
        b'{"text": "\xff\xfe broken utf-8"}\n'                      # bad encoding
        b'{"text": "' + b"long " * 20000 + b'"}\n'                  # oversized (over max_record_bytes)
        b'{"text": "cut off')                                       # truncated
    put(s3, project, "empty.jsonl", b"")
    put(s3, project, "mystery.bin", bytes(range(256)) * 4)
    manifest = ingest(s3, project, "scheduled__1")
    assert manifest["quarantined"] == {
        "bad_encoding": 1, "contract.source_id.pattern": 1, "contract.text.logicalType": 1,
        "contract.text.minLength": 1, "contract.text.required": 1, "not_an_object": 1, "oversized_record": 1,
        "truncated_json": 1}
    assert manifest["objects_quarantined_by_reason"] == {"empty_object": 1, "unknown_format": 1}
    assert manifest["records_staged"] == 41
    qkey = manifest["quarantine_uri"].split("/", 3)[3]
    entries = [json.loads(ln) for ln in s3.get_object(Bucket="labelops", Key=qkey + "records.jsonl")["Body"]
               .read().splitlines()]
    by_reason = {e["reason"]: e for e in entries}
    assert by_reason["contract.text.minLength"]["source_line"] == 2
    assert by_reason["contract.text.minLength"]["record"] == {"text": "x"}
    assert by_reason["truncated_json"]["source_line"] == 9 and "cut off" in by_reason["truncated_json"]["raw"]
    assert all(e["source_key"].endswith("bad_lines.jsonl") for e in entries)
    objects = [json.loads(ln) for ln in s3.get_object(Bucket="labelops", Key=qkey + "objects.jsonl")["Body"]
               .read().splitlines()]
    expected = {"empty_object": b"", "unknown_format": bytes(range(256)) * 4}
    for entry in objects:
        copied = s3.get_object(Bucket="labelops", Key=entry["copy_uri"].split("/", 3)[3])["Body"].read()
        assert copied == expected[entry["reason"]], entry


def test_rerun_of_the_same_run_creates_nothing(s3):
    project = project_at()
    put(s3, project, "a.jsonl", jsonl([{"text": t} for t in UTTERANCES]))
    first = ingest(s3, project, "manual__rerun")
    before = all_keys(s3, project.spec.storage.project_prefix)
    again = ingest(s3, project, "manual__rerun")
    assert again == first
    assert all_keys(s3, project.spec.storage.project_prefix) == before


def test_later_runs_see_only_new_and_changed_objects(s3):
    project = project_at()
    put(s3, project, "a.jsonl", jsonl([{"text": t} for t in UTTERANCES[:3]]))
    put(s3, project, "b.jsonl", jsonl([{"text": UTTERANCES[3]}]))
    assert ingest(s3, project, "run1")["objects_read"] == 2
    store = S3Store(s3, "labelops")
    assert plan(store, project, "run2")["objects"] == []
    put(s3, project, "b.jsonl", jsonl([{"text": UTTERANCES[3]}, {"text": UTTERANCES[4]}]))  # changed
    put(s3, project, "c.jsonl", jsonl([{"text": UTTERANCES[5]}]))                           # new
    m3 = ingest(s3, project, "run3")
    assert sorted(s["key"].rsplit("/", 1)[1] for s in m3["sources"]) == ["b.jsonl", "c.jsonl"]
    # b.jsonl's first line was staged by run1: now an exact duplicate of history
    assert (m3["records_read"], m3["records_staged"], m3["duplicates_exact"]) == (3, 2, 1)


def test_exact_and_near_duplicates_within_the_batch_and_across_runs(s3):
    project = project_at()
    put(s3, project, "a.jsonl", jsonl([{"text": "I still have not received my new card, I ordered it last week."},
                                       {"text": "I  still have not received my new card, I ordered it last week."},
                                       {"text": "Which countries can I send money to from my account?"}]))
    m1 = ingest(s3, project, "run1")
    assert (m1["records_staged"], m1["duplicates_exact"]) == (2, 1)  # whitespace is normalised away
    original = {r["text"]: r["record_id"] for r in staged_rows(s3, m1)}
    put(s3, project, "b.jsonl", jsonl([{"text": "I still have not received my new card, I ordered it last week!"},
                                       {"text": "Which countries can I send money to from my account?"}]))
    m2 = ingest(s3, project, "run2")
    assert (m2["records_staged"], m2["duplicates_exact"], m2["duplicates_near"]) == (0, 1, 1)
    dkey = m2["duplicates_uri"].split("/", 3)[3]
    dups = {d["kind"]: d for d in map(json.loads, s3.get_object(Bucket="labelops", Key=dkey)["Body"]
                                      .read().splitlines())}
    assert dups["near"]["duplicate_of"] == original["I still have not received my new card, I ordered it last week."]
    assert dups["exact"]["duplicate_of"] == original["Which countries can I send money to from my account?"]



def test_one_word_edits_are_near_duplicates_across_runs_by_the_projects_config(s3):
    # short utterances whose one-word variants fall under the Jaccard threshold (0.85): the word-edit rule of the
    # config (thresholds.near_duplicate_word_edits, on for banking_support) catches them, run after run
    project = project_at()
    assert project.spec.thresholds.near_duplicate_word_edits
    originals = ["How do I top up by card?", "Why was my transfer declined?", "Can I change my PIN online?"]
    put(s3, project, "a.jsonl", jsonl([{"text": t} for t in originals]))
    m1 = ingest(s3, project, "run1")
    assert m1["records_staged"] == 3
    ids = {r["text"]: r["record_id"] for r in staged_rows(s3, m1)}
    variants = {"How do I top up by card please?": originals[0],  # a word inserted (Jaccard 0.75)
                "Why was my transfer declined today?": originals[1],  # a word inserted (0.81)
                "Can I change PIN my online?": originals[2],  # two neighbours swapped (0.78)
                "Can I chnage my PIN online?": originals[2],  # a misspelt word (0.71)
                "Why was my card declined?": None,  # another word, not a misspelling: a new question (0.5)
                "How do I top up by cash?": None}  # the same, in a short word (0.83)
    put(s3, project, "b.jsonl", jsonl([{"text": t} for t in variants]))
    m2 = ingest(s3, project, "run2")
    reconcile(m2)
    assert (m2["records_staged"], m2["duplicates_near"]) == (2, 4)
    dkey = m2["duplicates_uri"].split("/", 3)[3]
    dups = [json.loads(x) for x in s3.get_object(Bucket="labelops", Key=dkey)["Body"].read().splitlines()]
    assert sorted(d["duplicate_of"] for d in dups) == sorted(ids[o] for o in variants.values() if o)
    assert sorted(r["text"] for r in staged_rows(s3, m2)) == ["How do I top up by cash?", "Why was my card declined?"]

def test_a_batch_over_the_contract_limit_stages_nothing_and_is_retried_later(s3):
    project = project_at()
    put(s3, project, "bad.jsonl", jsonl([{"text": "x"}] * 3 + [{"text": "a fine question about my card"}]))
    store = S3Store(s3, "labelops")
    plan(store, project, "run1")
    with pytest.raises(BatchRejected, match=r"3 of 4 records \(75.0%\).*above the limit of 20%"):
        run(store, project, "run1")
    keys = all_keys(s3, project.spec.storage.project_prefix)
    assert not [k for k in keys if "/staged/" in k or "/state/" in k]
    assert [o["key"] for o in plan(store, project, "run2")["objects"]] == [project.spec.storage.source_prefix
                                                                          + "bad.jsonl"]


def test_a_prefix_outside_the_project_is_refused(s3):
    project = project_at()
    with pytest.raises(PrefixNotAllowed):
        plan(S3Store(s3, "labelops"), project, "run1", "other_project/raw/")
    with pytest.raises(PrefixNotAllowed):
        plan(S3Store(s3, "labelops"), project, "run1", project.spec.storage.source_prefix + "../../x/")


def test_snips_files_as_uploaded_keep_their_entity_spans(s3):
    project = project_at("snips_assistant")
    for name in ("PlayMusic/train_PlayMusic_full.json", "GetWeather/validate_GetWeather.json"):
        put(s3, project, name, (SNIPS / name).read_bytes())
    manifest = ingest(s3, project, "run1")
    assert manifest["records_read"] == 2100
    assert {s["format"] for s in manifest["sources"]} == {"snips"}
    assert not manifest["quarantined"], manifest["quarantined"]
    rows = staged_rows(s3, manifest)
    assert len(rows) == manifest["records_staged"] > 2000
    assert {r["intent"] for r in rows} == {"PlayMusic", "GetWeather"}
    with_entities = [r for r in rows if json.loads(r["entities_json"])]
    assert len(with_entities) > 1500
    for r in with_entities[:200]:
        for e in json.loads(r["entities_json"]):
            assert r["text"][e["start"]:e["end"]] == e["text"]
    assert any(ord(ch) > 0xFFFF for r in rows for ch in r["text"]), "the emoji of PlayMusic are decoded"


def png(pixels) -> bytes:
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((64, 64), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


def test_image_project_dedups_by_content_and_perceptual_hash_and_quarantines_broken_images(s3):
    import numpy as np
    from PIL import Image

    from labelops.config import Project

    raw = yaml_demo_image_project()
    project = ProjectConfig(spec=Project.model_validate(raw), labels=tuple(str(i) for i in range(10)),
                            source_file=PROJECTS / "images_test.yaml", label_config_xml=None)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (8, 8))
    b = rng.integers(0, 255, (8, 8))
    a_brighter = np.clip(a + 3, 0, 255)                        # the same picture, slightly brighter: near duplicate
    put(s3, project, "a.png", png(a))
    put(s3, project, "a_copy.png", png(a))                     # exact duplicate
    put(s3, project, "a_bright.png", png(a_brighter))
    put(s3, project, "b.png", png(b))
    put(s3, project, "cut.png", png(b)[:200])                  # truncated
    tiny = io.BytesIO()
    Image.new("L", (4, 4)).save(tiny, format="PNG")
    put(s3, project, "tiny.png", tiny.getvalue())             # breaks the contract (width >= 8)
    manifest = ingest(s3, project, "run1")
    assert (manifest["records_read"], manifest["records_staged"]) == (5, 2)
    assert (manifest["duplicates_exact"], manifest["duplicates_near"]) == (1, 1)
    assert manifest["quarantined"] == {"contract.width.minimum": 1}
    assert manifest["objects_quarantined_by_reason"] == {"truncated_image": 1}
    rows = staged_rows(s3, manifest)
    assert sorted(r["image_key"].rsplit("/", 1)[1] for r in rows) == ["a.png", "b.png"]
    assert all(r["format"] == "png" and r["width"] == 64 and len(r["phash"]) == 16 for r in rows)


def test_an_image_manifest_is_read_row_by_row_and_every_row_is_counted(s3):
    """A user's image manifest (JSON Lines: key, source) on real UCI digit scans: each row is one record, staged
    with its `source` and image key, a duplicate, or quarantined with a reason (a bad row, a missing, truncated
    or oversized image, a contract rule over the row and the image); an image the manifest names that also lies
    under the source prefix is read once, through the manifest."""
    import sys

    from PIL import Image

    from labelops.config import Project

    sys.path.insert(0, str(REPO / "tools"))
    import digits_data

    raw = yaml_demo_image_project()
    raw["ingest"] = {"contract": "digits_images.odcs.yaml", "max_image_pixels": 100 * 100,
                     "image_near_duplicate_distance": 0}
    project = ProjectConfig(spec=Project.model_validate(raw), labels=tuple(str(i) for i in range(10)),
                            source_file=PROJECTS / "images_test.yaml", label_config_xml=None)
    name = project.name
    scans = digits_data.objects(range(45))  # 40 more good rows keep the bad share under the contract's 20%
    images = f"{name}/images/"
    for fname, body, _ in scans:
        s3.put_object(Bucket="labelops", Key=images + fname, Body=body)
    loose = put(s3, project, "loose.png", scans[4][1])            # under the source prefix AND in the manifest

    def image(key: str, im: Image.Image) -> str:
        out = io.BytesIO()
        im.save(out, format="PNG")
        s3.put_object(Bucket="labelops", Key=key, Body=out.getvalue())
        return key

    rgb = image(images + "rgb.png", Image.new("RGB", (64, 64), "white"))     # contract: mode L
    small = image(images + "small.png", Image.new("L", (32, 32), 255))      # contract: width/height 64
    huge = image(images + "huge.png", Image.new("L", (120, 120), 255))      # over max_image_pixels
    s3.put_object(Bucket="labelops", Key=images + "cut.png", Body=scans[1][1][:100])
    rows = [{"key": images + scans[0][0], "source": "UCI digits #0"},
            {"key": f"s3://labelops/{images}{scans[1][0]}", "source": "UCI digits #1"},  # an s3:// URI
            {"key": images + scans[2][0], "source": "UCI digits #2"},
            {"key": images + scans[0][0], "source": "UCI digits #0 again"},           # exact duplicate
            {"key": loose, "source": "UCI digits #4"},
            {"key": images + "cut.png", "source": "truncated"},
            {"key": huge, "source": "too many pixels"},
            {"key": images + "gone.png", "source": "deleted"},
            {"key": "s3://another-bucket/x.png", "source": "elsewhere"},
            {"source": "no key"},
            {"key": images + scans[3][0]},                                             # no source
            {"key": rgb, "source": "colour"},
            {"key": small, "source": "small"}]
    rows += [{"key": images + f, "source": f"UCI digits #{i + 5}"} for i, (f, _, _) in enumerate(scans[5:])]
    body = jsonl(rows) + b'{"key": "broken json\n'
    mkey = put(s3, project, "manifest.jsonl", body)
    m = ingest(s3, project, "run1")
    assert m["records_read"] == len(rows) + 1
    assert (m["records_staged"], m["duplicates_exact"], m["duplicates_near"]) == (4 + 40, 1, 0)
    assert m["quarantined"] == {
        "bad_manifest_row": 2, "contract.width.minimum": 1, "contract.mode.validValues": 1,
        "contract.source.required": 1, "image_too_large": 1, "truncated_json": 1, "missing_image": 1,
        "truncated_image": 1}, m["quarantined"]
    assert m["objects_quarantined"] == 0
    by_key = {s["key"]: s for s in m["sources"]}
    assert by_key[mkey]["records"] == len(rows) + 1 and by_key[mkey]["format"].startswith("image_manifest")
    assert by_key[loose]["records"] == 0 and by_key[loose]["read_through"] == mkey
    staged = sorted(staged_rows(s3, m), key=lambda r: r["source_line"])[:4]
    assert [(r["image_key"], r["source"], r["source_key"], r["source_line"]) for r in staged] == [
        (images + scans[0][0], "UCI digits #0", mkey, 1), (images + scans[1][0], "UCI digits #1", mkey, 2),
        (images + scans[2][0], "UCI digits #2", mkey, 3), (loose, "UCI digits #4", mkey, 5)]
    import hashlib
    assert [r["sha256"] for r in staged[:3]] == [hashlib.sha256(b).hexdigest() for _, b, _ in scans[:3]]
    quarantined = [json.loads(line) for line in s3.get_object(
        Bucket="labelops", Key=f"{name}/quarantine/run=run1/records.jsonl")["Body"].read().splitlines()]
    assert all(q["source_key"] == mkey and q["source_line"] for q in quarantined)
    gone = next(q for q in quarantined if q["reason"] == "missing_image")
    assert gone["record"] == rows[7] and "gone.png" in gone["detail"]
    # a later run: the manifest is not new; a second manifest naming an image seen before makes a duplicate
    put(s3, project, "manifest-2.jsonl", jsonl([{"key": images + scans[2][0], "source": "again"}]))
    m2 = ingest(s3, project, "run2")
    assert (m2["records_read"], m2["duplicates_exact"], m2["records_staged"]) == (1, 1, 0)


def yaml_demo_image_project() -> dict:
    name = f"t{next(_counter):04d}_images"
    return {"name": name, "description": "digits", "owner": "tests", "modality": "image",
            "task": "image_classification",
            "storage": {"bucket": "labelops", "source_prefix": f"{name}/raw/", "project_prefix": f"{name}/"},
            "taxonomy": {"labels": [str(i) for i in range(10)]},
            "ingest": {"contract": "images_basic.odcs.yaml"},
            "label_studio": {"label_config": "label_configs/digits_image.xml"},
            "alerts": {"emails": ["leads@example.com"]}}


def test_each_run_persists_only_its_own_index_segment_and_superseded_ones_are_deleted(s3):
    """The dedup history grows by one segment per run (merged geometrically), so a run never rewrites the whole
    history; segments merged away are deleted once the new pointer is in force; duplicates of the first run's
    records are still found many runs later."""
    project = project_at()
    texts = banking77_texts(60)
    store = S3Store(s3, "labelops")
    base = project.spec.storage.project_prefix
    put(s3, project, "r0.jsonl", jsonl({"text": t} for t in texts[:30]))
    ingest(s3, project, "run0")
    superseded = []
    for r in range(1, 7):
        put(s3, project, f"r{r}.jsonl", jsonl({"text": t} for t in texts[30 + 5 * (r - 1): 30 + 5 * r]))
        m = ingest(s3, project, f"run{r}")
        assert m["records_staged"] == 5
        pointer = json.loads(s3.get_object(Bucket="labelops", Key=f"{base}state/ingest/current.json")["Body"].read())
        for name in ("exact", "near"):
            assert sum(seg["records"] for seg in pointer[name]) == 30 + 5 * r  # every staged record, once
            assert pointer[name][-1]["key"] == Paths(project, f"run{r}").state(f"{name}.seg")
        named = {seg["key"] for name in ("exact", "near") for seg in pointer[name]}
        on_s3 = {k for k in all_keys(s3, base + "state/ingest/") if k.endswith(".seg")}
        assert on_s3 == named  # nothing superseded is left behind
        assert not set(m["superseded_segments"]) & on_s3
        superseded += m["superseded_segments"]
    assert len(pointer["near"]) < 7 and superseded  # small runs were merged, and what they replaced deleted
    # a near duplicate of a first-run record, and an exact one, six runs later
    put(s3, project, "late.jsonl", jsonl([{"text": texts[3].rstrip("?.!") + "!!"}, {"text": texts[4]}]))
    late = ingest(s3, project, "late")
    assert (late["records_staged"], late["duplicates_near"], late["duplicates_exact"]) == (0, 1, 1)
    assert store.exists(Paths(project, "late").state("near.seg")) is False  # nothing added: nothing written


def test_a_pointer_written_before_segments_is_still_read(s3):
    """Deployments that ran the earlier layout have one whole-index object per index in the pointer."""
    project = project_at()
    texts = banking77_texts(20)
    base = project.spec.storage.project_prefix
    put(s3, project, "a.jsonl", jsonl({"text": t} for t in texts[:10]))
    ingest(s3, project, "run1")
    key = f"{base}state/ingest/current.json"
    pointer = json.loads(s3.get_object(Bucket="labelops", Key=key)["Body"].read())
    old = {**pointer, **{name: pointer[name][0]["key"] for name in ("exact", "near")}}
    s3.put_object(Bucket="labelops", Key=key, Body=json.dumps(old).encode())
    put(s3, project, "b.jsonl", jsonl([{"text": texts[0]}, {"text": texts[1].rstrip("?.!") + "!!"},
                                       {"text": texts[15]}]))
    m = ingest(s3, project, "run2")
    assert (m["records_staged"], m["duplicates_exact"], m["duplicates_near"]) == (1, 1, 1)
    pointer = json.loads(s3.get_object(Bucket="labelops", Key=key)["Body"].read())
    assert isinstance(pointer["near"], list) and sum(s["records"] for s in pointer["near"]) == 11


def test_a_backlog_over_the_byte_budget_is_drained_over_runs_in_key_order(s3):
    project = project_at()
    texts = banking77_texts(9)
    bodies = {f"{n}.jsonl": jsonl({"text": t} for t in texts[3 * i: 3 * i + 3]) for i, n in enumerate("abc")}
    for name, body in bodies.items():
        put(s3, project, name, body)
    store = S3Store(s3, "labelops")
    budget = len(bodies["a.jsonl"]) + len(bodies["b.jsonl"]) - 1  # a fits, a + b does not
    first = plan(store, project, "run1", max_bytes=budget)
    assert [o["key"].rsplit("/", 1)[1] for o in first["objects"]] == ["a.jsonl"]
    assert (first["objects_deferred"], first["bytes_deferred"]) == (2, len(bodies["b.jsonl"]) + len(bodies["c.jsonl"]))
    m1 = run(store, project, "run1")
    reconcile(m1)
    assert (m1["records_staged"], m1["objects_deferred"]) == (3, 2)
    tiny = plan(store, project, "run2", max_bytes=1)  # at least one object, even over the budget
    assert [o["key"].rsplit("/", 1)[1] for o in tiny["objects"]] == ["b.jsonl"]
    reconcile(run(store, project, "run2"))
    m3 = ingest(s3, project, "run3")
    assert (m3["objects_read"], m3["records_staged"], m3["objects_deferred"]) == (1, 3, 0)
