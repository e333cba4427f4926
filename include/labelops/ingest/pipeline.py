"""The ingest stage as two pure steps the `<project>__ingest` DAG calls: `plan` and `run`.

Layout under the project's prefix (`<p>/` below):
  <p>manifests/ingest/<run>.plan.json     the objects this run takes (written once: a retry takes the same ones)
  <p>manifests/ingest/<run>.json          the manifest (its keys are an interface, see MANIFEST_KEYS)
  <p>staged/run=<run>/records.parquet     the staged batch
  <p>quarantine/run=<run>/records.jsonl   every rejected record: reason, detail, source key and line, raw input
  <p>quarantine/run=<run>/objects.jsonl   every rejected object, the object itself copied under objects/
  <p>duplicates/run=<run>.jsonl           every duplicate and the record it duplicates
  <p>state/ingest/current.json            pointer to the ledger and dedup index segments in force, written LAST
  <p>state/ingest/run=<run>/...           that run's ledger (object key -> ETag) and index segments: only the
                                          records it added (merged with a tail of earlier segments now and
                                          then, see dedup.tail_to_merge); segments merged away are deleted after
                                          the new pointer is written

Nothing twice: a run whose manifest exists returns it (re-finishing the pointer if a crash came between the
two), and every key a run writes is derived from its run id, so a retry overwrites, never adds. Nothing lost:
every record read is staged, a duplicate, or quarantined with a reason (the manifest's counts reconcile), and
every object is either read or quarantined whole.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from labelops.config import ProjectConfig
from labelops.storage import S3Store

MANIFEST_KEYS = ("records_read", "records_staged", "duplicates_exact", "duplicates_near", "quarantined",
                 "objects_read", "objects_quarantined", "staged_uri", "contract")


class PrefixNotAllowed(ValueError):
    pass


def safe_run_id(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:200]


@dataclass
class Paths:
    project: ProjectConfig
    run: str

    @property
    def base(self) -> str:
        return self.project.spec.storage.project_prefix

    @property
    def plan(self) -> str:
        return f"{self.base}manifests/ingest/{self.run}.plan.json"

    @property
    def manifest(self) -> str:
        return f"{self.base}manifests/ingest/{self.run}.json"

    @property
    def staged(self) -> str:
        return f"{self.base}staged/run={self.run}/records.parquet"

    @property
    def quarantine(self) -> str:
        return f"{self.base}quarantine/run={self.run}/"

    @property
    def duplicates(self) -> str:
        return f"{self.base}duplicates/run={self.run}.jsonl"

    @property
    def pointer(self) -> str:
        return f"{self.base}state/ingest/current.json"

    def state(self, name: str) -> str:
        return f"{self.base}state/ingest/run={self.run}/{name}"


def check_prefix(project: ProjectConfig, prefix: str | None) -> str:
    """A run may only read under the project's source prefix (a Param naming anything else is refused)."""
    source = project.spec.storage.source_prefix
    prefix = prefix or source
    if not prefix.startswith(source) or ".." in prefix.split("/"):
        raise PrefixNotAllowed(f"prefix {prefix!r} is outside the project's source prefix {source!r}")
    return prefix


def plan(store: S3Store, project: ProjectConfig, run_id: str, prefix: str | None = None,
         max_bytes: int | None = None) -> dict:
    """The objects under prefix that no earlier run has taken (a changed ETag is new input), in key order, up to
    ``max_bytes`` (default: the project's ingest.max_bytes_per_run; at least one object): the rest is left for
    the next run and counted in ``objects_deferred`` / ``bytes_deferred``. Written once per run (a retry takes the
    same objects)."""
    paths = Paths(project, safe_run_id(run_id))
    existing = store.get_json(paths.plan)
    if existing is not None:
        return existing
    prefix = check_prefix(project, prefix)
    pointer = store.get_json(paths.pointer)
    ledger = (store.get_json(pointer["ledger"]) or {}) if pointer else {}
    new = [o for o in store.list(prefix) if ledger.get(o["key"]) != o["etag"]]
    budget = project.spec.ingest.max_bytes_per_run if max_bytes is None else max_bytes
    objects, total = [], 0
    for o in new:
        if objects and total + o["size"] > budget:
            break
        objects.append(o)
        total += o["size"]
    deferred = new[len(objects):]
    result = {"run_id": run_id, "prefix": prefix, "objects": objects, "bytes": total,
              "objects_deferred": len(deferred), "bytes_deferred": sum(o["size"] for o in deferred),
              "plan_uri": store.uri(paths.plan)}
    store.put_json(paths.plan, result)
    return result


INDEXES = ("exact", "near", "image")


def _segments(pointer: dict | None, name: str) -> list[dict]:
    """The persisted segments of one dedup index in a state pointer, oldest first: [{"key", "records"}]. (A
    pointer written before segments existed names one whole-index object: it is read as one segment.)"""
    value = (pointer or {}).get(name)
    if not value:
        return []
    return [{"key": value, "records": None}] if isinstance(value, str) else list(value)


def _load_state(store: S3Store, paths: Paths) -> dict:
    """The ledger, and each index's segments as buffers (read straight into one buffer each, never copied:
    the indexes keep views of them)."""
    pointer = store.get_json(paths.pointer)
    if pointer is None:
        return {"ledger": {}, "pointer": None, **{name: [] for name in INDEXES}}
    ledger = store.get_json(pointer["ledger"]) or {}
    segments = {name: [store.get_buffer(s["key"]) for s in _segments(pointer, name)] for name in INDEXES}
    return {"ledger": ledger, "pointer": pointer, **segments}


@dataclass
class _Batch:
    candidates: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    objects_quarantined: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)


def _raw_field(raw: bytes | None) -> dict:
    if raw is None:
        return {}
    try:
        return {"raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw": base64.b64encode(raw).decode(), "raw_encoding": "base64"}


IMAGE_MANIFEST = re.compile(r"\.(jsonl|ndjson|jsonlines)(\.gz|\.gzip)?$", re.IGNORECASE)
MANIFEST_CHUNK = 256  # images of a manifest fetched (in parallel) and read at a time: memory stays bounded
MANIFEST_WORKERS = 8  # images of a manifest fetched at once (bench_images measures it against one at a time)


def is_image_manifest(project: ProjectConfig, key: str) -> bool:
    """In an image project, a JSON Lines object under the source prefix is an image manifest, one row per image:
    {"key": "<key in the project's bucket>" or "s3://<bucket>/<key>", "source": "<where it comes from>", ...}.
    Each row is one input record: staged, a duplicate, or quarantined with a reason, like a line of text."""
    return project.spec.modality == "image" and IMAGE_MANIFEST.search(key) is not None


def manifest_image_key(row: dict, bucket: str) -> tuple[str | None, str | None]:
    """(the image's key, None) of a manifest row, or (None, why the row cannot name an image)."""
    from labelops.storage import split_s3_uri

    key = row.get("key")
    if not isinstance(key, str) or not key.strip():
        return None, "the row has no 'key' string"
    if key.startswith("s3://"):
        try:
            b, key = split_s3_uri(key)
        except ValueError:
            return None, f"{row['key'][:200]!r} does not name an object"
        if b != bucket:
            return None, f"{row['key'][:200]!r} is not in the project's bucket {bucket!r}"
    if key.endswith("/") or ".." in key.split("/"):
        return None, f"{row['key'][:200]!r} does not name an object"
    return key, None


def _read_objects(store: S3Store, project: ProjectConfig, paths: Paths, objects: list[dict]) -> _Batch:
    from labelops.ingest.readers import read_object

    cfg = project.spec.ingest
    limits = dict(max_record_bytes=cfg.max_record_bytes, max_image_pixels=cfg.max_image_pixels,
                  max_decompressed_bytes=cfg.max_decompressed_bytes)
    batch = _Batch()
    # manifests first: an image a manifest of this run names is read through that manifest, not a second time
    manifests = [o for o in objects if is_image_manifest(project, o["key"])]
    listed: dict[str, str] = {}
    for obj in manifests + [o for o in objects if not is_image_manifest(project, o["key"])]:
        if obj["key"] in listed:
            batch.sources.append({"key": obj["key"], "etag": obj["etag"], "format": None, "records": 0,
                                  "read_through": listed[obj["key"]]})
            continue
        body = store.get(obj["key"])
        manifest = is_image_manifest(project, obj["key"])
        result = read_object(obj["key"], body, modality="text" if manifest else project.spec.modality, **limits)
        whole = [r for r in result.rejections if r.whole_object]
        batch.sources.append({"key": obj["key"], "etag": obj["etag"],
                              "format": f"image_manifest+{result.format}" if manifest else result.format,
                              "records": len(result.records) + len(result.rejections) - len(whole)})
        if whole:
            rej = whole[0]
            copy_key = f"{paths.quarantine}objects/{obj['key']}"
            store.put(copy_key, body)
            batch.objects_quarantined.append({"reason": rej.reason, "detail": rej.detail, "source_key": obj["key"],
                                              "etag": obj["etag"], "copy_uri": store.uri(copy_key)})
            continue
        for rej in result.rejections:
            batch.quarantine.append({"reason": rej.reason, "detail": rej.detail, "source_key": rej.source_key,
                                     "source_line": rej.source_line, **_raw_field(rej.raw)})
        if manifest:
            del body
            rows = result.records
            for row in rows:
                key, _ = manifest_image_key(row, store.bucket)
                if key:
                    listed.setdefault(key, obj["key"])
            for start in range(0, len(rows), MANIFEST_CHUNK):
                _read_manifest_rows(store, rows[start:start + MANIFEST_CHUNK], batch, limits)
        else:
            batch.candidates.extend(result.records)
    return batch


def _read_manifest_rows(store: S3Store, rows: list[dict], batch: _Batch, limits: dict) -> None:
    """The images a chunk of manifest rows names, fetched in parallel and read like image objects: each row
    becomes a candidate record (the image's properties, its key and the row's `source`; its source is the
    manifest's key and line) or a quarantine entry (a bad row, a missing image, or the image's own reason)."""
    from labelops.ingest.readers import BAD_MANIFEST_ROW, MISSING_IMAGE, read_object

    keys = [manifest_image_key(row, store.bucket) for row in rows]
    named = list(dict.fromkeys(k for k, _ in keys if k is not None))  # an image listed twice is fetched once
    bodies = dict(zip(named, store.get_many(named, workers=MANIFEST_WORKERS, missing_ok=True)))
    for row, (key, why) in zip(rows, keys):
        where = {"source_key": row["_source_key"], "source_line": row["_source_line"]}
        line = {k: v for k, v in row.items() if not k.startswith("_")}
        if key is None:
            batch.quarantine.append({"reason": BAD_MANIFEST_ROW, "detail": why, **where, "record": line})
            continue
        if bodies[key] is None:
            batch.quarantine.append({"reason": MISSING_IMAGE, "detail": f"{store.uri(key)} does not exist", **where,
                                     "record": line})
            continue
        got = read_object(key, bodies[key], modality="image", **limits)
        if got.rejections:
            rej = got.rejections[0]
            batch.quarantine.append({"reason": rej.reason, "detail": f"{store.uri(key)}: {rej.detail}", **where,
                                     "record": line})
        else:
            batch.candidates.append({**got.records[0], "source": row.get("source"),
                                     **{f"_{k}": v for k, v in where.items()}})


def _normalise(project: ProjectConfig, records: list[dict]) -> None:
    from labelops.ingest.dedup import normalise_text

    opts = project.spec.ingest.normalisation.model_dump()
    for rec in records:
        text = rec.get("text")
        if not isinstance(text, str):
            continue  # the contract reports the wrong type
        rec["text"] = normalise_text(text, **opts)
        if isinstance(rec.get("entities"), list) and rec["entities"]:
            rec["entities"] = remap_spans(text, rec["text"], rec["entities"], lambda t: normalise_text(t, **opts))


def remap_spans(old: str, new: str, entities: list[dict], norm) -> list[dict] | str:
    """Entity offsets into the normalised text. Each span's normalised text is looked for where its normalised
    prefix ends (or one character later, past a separating space); a span that cannot be found makes the
    record's entities invalid (a string), which the contract quarantines as the wrong type."""
    out = []
    for ent in entities:
        try:
            start, end = int(ent["start"]), int(ent["end"])
        except (KeyError, TypeError, ValueError):
            return "invalid entity span"
        piece = norm(old[start:end])
        guess = len(norm(old[:start]))
        for pos in (guess, guess + 1, guess - 1):
            if piece and 0 <= pos and new[pos:pos + len(piece)] == piece:
                out.append({**ent, "start": pos, "end": pos + len(piece), "text": piece})
                break
        else:
            return f"entity span {start}:{end} lost in normalisation"
    return out


def _dedup(project: ProjectConfig, state: dict, records: list[dict], batch: _Batch,
           near_index=None) -> tuple[list[dict], dict]:
    """Exact then near duplicates, within the batch and against every record staged before. Returns the records
    to stage and the updated index blobs."""
    from labelops.ingest.dedup import (ExactIndex, ImageHashIndex, NearDuplicateIndex, content_digest,
                                       image_record_id, record_id)

    exact = ExactIndex.open(state["exact"])
    image = project.spec.modality == "image"
    if image:
        digests = [bytes.fromhex(r["sha256"])[:16] for r in records]
        for r in records:
            r["record_id"] = image_record_id(r["sha256"])
    else:
        digests = [content_digest(r["text"]) for r in records]
        for r in records:
            r["record_id"] = record_id(r["text"])
    first_of: dict[bytes, str] = {}
    is_dup = exact.check_and_add(digests)
    survivors = []
    for rec, digest, dup in zip(records, digests, is_dup):
        if dup:
            batch.duplicates.append({"kind": "exact", "record_id": rec["record_id"],
                                     "duplicate_of": first_of.get(digest, rec["record_id"]),
                                     "source_key": rec["_source_key"], "source_line": rec["_source_line"]})
        else:
            first_of[digest] = rec["record_id"]
            survivors.append(rec)
    if image:
        near = ImageHashIndex.open(state["image"], max_distance=project.spec.ingest.image_near_duplicate_distance)
        matches = near.check_and_add([r["record_id"] for r in survivors], [int(r["phash"], 16) for r in survivors])
    else:
        thresholds = project.spec.thresholds
        near = near_index or NearDuplicateIndex.open(state["near"], threshold=thresholds.near_duplicate_jaccard,
                                                     word_edits=thresholds.near_duplicate_word_edits)
        matches = near.check_and_add([r["record_id"] for r in survivors], [r["text"] for r in survivors])
    staged = []
    for rec, match in zip(survivors, matches):
        if match is None:
            staged.append(rec)
        else:
            batch.duplicates.append({"kind": "near", "record_id": rec["record_id"], "duplicate_of": match,
                                     "source_key": rec["_source_key"], "source_line": rec["_source_line"]})
    indexes = {"exact": exact}
    if hasattr(near, "write_segment"):  # (the benchmark's baseline index is not persisted)
        indexes["image" if image else "near"] = near
    return staged, indexes


def _save_indexes(store: S3Store, paths: Paths, previous: dict | None, indexes: dict) -> tuple[dict, list[str]]:
    """Persist what this run added to each index as one new segment under the run's state prefix, merged with
    the tail of the earlier segments when `tail_to_merge` says so (segment sizes grow geometrically: a run writes
    its own records, and now and then a merge, never the whole history each time). Streamed to S3. Returns the
    segment lists for the new pointer and the keys of the segments it no longer names."""
    from labelops.ingest.dedup import tail_to_merge

    lists, dropped = {}, []
    for name in INDEXES:
        segments = _segments(previous, name)
        idx = indexes.get(name)
        if idx is not None:
            segments = [{**s, "records": n} for s, n in zip(segments, idx.segment_sizes(), strict=True)]
            merge = tail_to_merge(idx.segment_sizes(), idx.live_records())
            if merge or idx.live_records():
                key = paths.state(f"{name}.seg")
                with store.writer(key) as write:
                    records = idx.write_segment(write, merge=merge)
                dropped += [s["key"] for s in segments[len(segments) - merge:]] if merge else []
                segments = segments[: len(segments) - merge] + [{"key": key, "records": records}]
        if segments:
            lists[name] = segments
    return lists, [k for k in dropped if k not in {s["key"] for v in lists.values() for s in v}]


def _parquet(records: list[dict], columns: list[str], run_id: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {"record_id": [r["record_id"] for r in records]}
    for col in columns:
        values = [r.get(col) for r in records]
        if any(isinstance(v, (list, dict)) for v in values):
            col, values = f"{col}_json", [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
        data[col] = values
    data["source_key"] = [r["_source_key"] for r in records]
    data["source_line"] = [r["_source_line"] for r in records]
    data["ingest_run_id"] = [run_id] * len(records)
    table = pa.table({k: pa.array(v) if any(x is not None for x in v) else pa.array(v, type=pa.string())
                      for k, v in data.items()})
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode()


def run(store: S3Store, project: ProjectConfig, run_id: str, near_index=None) -> dict:
    """Ingest the objects of the run's plan; return the manifest. Raises BatchRejected (nothing staged, ledger
    untouched) when the batch breaks the contract's batch-level limit. `near_index` replaces the project's
    near-duplicate index (the benchmark's baseline); it must offer check_and_add(ids, texts); without
    write_segment() it is not persisted."""
    from labelops.ingest.contract import check_batch, load_contract, validate

    paths = Paths(project, safe_run_id(run_id))
    done = store.get_json(paths.manifest)
    if done is not None:  # this run already finished: make sure its state is the one in force, create nothing
        pointer = store.get_json(paths.pointer)
        if pointer is None or pointer.get("created_at", "") < done["state_pointer"]["created_at"]:
            store.put_json(paths.pointer, done["state_pointer"])
            store.delete(done.get("superseded_segments", []))
        return done
    the_plan = store.get_json(paths.plan)
    if the_plan is None:
        raise RuntimeError(f"no plan at {store.uri(paths.plan)}: run plan() first")
    started = time.time()
    state = _load_state(store, paths)
    contract = load_contract(project.spec.ingest.contract)
    batch = _read_objects(store, project, paths, the_plan["objects"])

    if project.spec.modality == "text":
        _normalise(project, batch.candidates)
    reasons = validate(contract, batch.candidates)
    parse_rejections = len(batch.quarantine)
    valid = []
    for rec, reason in zip(batch.candidates, reasons):
        if reason is None:
            valid.append(rec)
        else:
            fields = {k: v for k, v in rec.items() if not k.startswith("_")}
            batch.quarantine.append({"reason": reason, "detail": f"breaks {reason} of contract {contract.id}",
                                     "source_key": rec["_source_key"], "source_line": rec["_source_line"],
                                     "record": fields})
    records_read = len(batch.candidates) + parse_rejections
    check_batch(contract, records_read, len(batch.quarantine))

    staged, indexes = _dedup(project, state, valid, batch, near_index)
    columns = list(contract.properties)
    if project.spec.modality == "image":
        columns += [c for c in ("image_key", "sha256", "phash", "source") if c not in columns]
    staged_uri = store.put(paths.staged, _parquet(staged, columns, run_id)) if staged else None
    quarantine_uri = None
    if batch.quarantine or batch.objects_quarantined:
        store.put(paths.quarantine + "records.jsonl", _jsonl(batch.quarantine), "application/x-ndjson")
        store.put(paths.quarantine + "objects.jsonl", _jsonl(batch.objects_quarantined), "application/x-ndjson")
        quarantine_uri = store.uri(paths.quarantine)
    duplicates_uri = store.put(paths.duplicates, _jsonl(batch.duplicates)) if batch.duplicates else None

    ledger = dict(state["ledger"])
    ledger.update({o["key"]: o["etag"] for o in the_plan["objects"]})
    now = datetime.now(timezone.utc).isoformat()
    pointer = {"run_id": run_id, "created_at": now, "ledger": paths.state("ledger.json")}
    store.put_json(pointer["ledger"], ledger)
    segments, superseded = _save_indexes(store, paths, state["pointer"], indexes)
    pointer.update(segments)
    del indexes, state

    exact_dups = sum(1 for d in batch.duplicates if d["kind"] == "exact")
    manifest = {
        "project": project.name,
        "run_id": run_id,
        "created_at": now,
        "records_read": records_read,
        "records_staged": len(staged),
        "duplicates_exact": exact_dups,
        "duplicates_near": len(batch.duplicates) - exact_dups,
        "quarantined": dict(sorted(Counter(q["reason"] for q in batch.quarantine).items())),
        "objects_read": len(the_plan["objects"]),
        "objects_deferred": the_plan.get("objects_deferred", 0),
        "objects_quarantined": len(batch.objects_quarantined),
        "objects_quarantined_by_reason": dict(sorted(Counter(o["reason"] for o in batch.objects_quarantined).items())),
        "staged_uri": staged_uri,
        "quarantine_uri": quarantine_uri,
        "duplicates_uri": duplicates_uri,
        "manifest_uri": store.uri(paths.manifest),
        "plan_uri": store.uri(paths.plan),
        "contract": contract.describe(),
        "sources": batch.sources,
        "seconds": round(time.time() - started, 3),
        "state_pointer": pointer,
        "superseded_segments": superseded,
    }
    assert_reconciles(manifest)
    store.put_json(paths.manifest, manifest)
    store.put_json(paths.pointer, pointer)  # last: from here on, the next run sees this run's history
    store.delete(superseded)  # merged into this run's segments; the pointer in force no longer names them
    return manifest


def assert_reconciles(manifest: dict) -> None:
    total = (manifest["records_staged"] + manifest["duplicates_exact"] + manifest["duplicates_near"]
             + sum(manifest["quarantined"].values()))
    if manifest["records_read"] != total:
        raise AssertionError(f"manifest does not reconcile: records_read={manifest['records_read']} but "
                             f"staged+duplicates+quarantined={total}")
