"""Turn one raw S3 object (its key and bytes) into records, or into quarantine entries.

`read_object(key, body, ...)` never raises on bad input: every problem becomes a `Rejection` with one of the
reasons in `REASONS`. Pure Python (no Airflow, no S3); Pillow and numpy are imported only when an image is read,
so importing this module from a DAG file stays cheap.

Formats (`ReadResult.format`, with "+gzip" appended when the object was gzip-compressed):
  "jsonl"       one JSON object per line; blank lines are skipped and not counted
  "json_array"  a JSON array of objects; `_source_line` is the element index + 1
  "snips"       one JSON object in the SNIPS NLU benchmark layout; `_source_line` is the utterance index + 1
  "csv"         CSV/TSV with a header row (line 1); values stay strings
  "png", "jpeg" images (image projects only)

Counting contract: every line / row / element of a readable object ends up exactly once, either in `records` or
as a record-level `Rejection`; a whole-object rejection comes with no records.

Decisions worth knowing (see each reader for details):
  * JSON arrays: complete elements before a cut-off are kept; the cut-off tail becomes one record-level
    TRUNCATED_JSON rejection (index = next element). An invalid element in the middle of an array makes
    the whole object INVALID_JSON (element boundaries after it cannot be found reliably).
  * Nesting depth is checked for the whole document for JSON arrays and SNIPS (whole-object
    TOO_DEEPLY_NESTED), per line for JSON Lines.
  * A gzip stream that inflates beyond `max_decompressed_bytes` is rejected whole as OVERSIZED_RECORD
    (CORRUPT_GZIP is kept for streams that are actually broken or truncated).
  * CSV: blank lines are skipped and not counted; a row that never closes its quote (before the end of data,
    an undecodable/NUL line, or `max_record_bytes`) is rejected as the single line it starts on and reading
    resumes at the next line.
  * Images larger than Pillow's own bomb limit (about 179 M pixels) are IMAGE_TOO_LARGE even if
    `max_image_pixels` is higher.
  * JSON arrays and SNIPS: an element's size is its compact JSON encoding (the document is parsed whole);
    JSON Lines and CSV lines are measured before parsing.
  * "{" documents: the first line parsing as an object means JSON Lines (or SNIPS if it is the only line);
    otherwise the whole text is parsed: SNIPS if it has that layout, JSON Lines if it is any other JSON or if
    a later line parses as an object, else one whole-object rejection (truncated_json, invalid_json...). So a
    pretty-printed object that is not SNIPS is read as JSON Lines, line by line, as the contract says.
  * UTF-16 without a BOM is recognised from ASCII text with zero high bytes; UTF-32 with a BOM is decoded too.
  * Records are what orjson parses: NaN/Infinity and lone surrogate escapes are invalid_json, integers beyond
    64 bits become floats -- so everything read can be written back with orjson.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import orjson

__all__ = [
    "UNKNOWN_FORMAT", "EMPTY_OBJECT", "CORRUPT_GZIP", "BAD_ENCODING", "INVALID_JSON", "TRUNCATED_JSON",
    "NOT_AN_OBJECT", "TOO_DEEPLY_NESTED", "OVERSIZED_RECORD", "MALFORMED_CSV_ROW", "TRUNCATED_IMAGE",
    "IMAGE_TOO_LARGE", "CORRUPT_IMAGE", "UNSUPPORTED_FOR_PROJECT", "MISSING_IMAGE", "BAD_MANIFEST_ROW", "REASONS",
    "Rejection", "ReadResult", "read_object",
]

# ---------------------------------------------------------------------------------------------- reasons
UNKNOWN_FORMAT = "unknown_format"
EMPTY_OBJECT = "empty_object"
CORRUPT_GZIP = "corrupt_gzip"
BAD_ENCODING = "bad_encoding"
INVALID_JSON = "invalid_json"
TRUNCATED_JSON = "truncated_json"
NOT_AN_OBJECT = "not_an_object"
TOO_DEEPLY_NESTED = "too_deeply_nested"
OVERSIZED_RECORD = "oversized_record"
MALFORMED_CSV_ROW = "malformed_csv_row"
TRUNCATED_IMAGE = "truncated_image"
IMAGE_TOO_LARGE = "image_too_large"
CORRUPT_IMAGE = "corrupt_image"
UNSUPPORTED_FOR_PROJECT = "unsupported_for_project"
# image manifests (a JSON Lines object in an image project, one row per image: key, source; see ingest.pipeline)
MISSING_IMAGE = "missing_image"  # the row names an object that does not exist
BAD_MANIFEST_ROW = "bad_manifest_row"  # the row has no usable key (missing, not a string, another bucket, "..")

REASONS = frozenset({
    UNKNOWN_FORMAT, EMPTY_OBJECT, CORRUPT_GZIP, BAD_ENCODING, INVALID_JSON, TRUNCATED_JSON, NOT_AN_OBJECT,
    TOO_DEEPLY_NESTED, OVERSIZED_RECORD, MALFORMED_CSV_ROW, TRUNCATED_IMAGE, IMAGE_TOO_LARGE, CORRUPT_IMAGE,
    UNSUPPORTED_FOR_PROJECT, MISSING_IMAGE, BAD_MANIFEST_ROW,
})

RAW_LIMIT = 64 * 1024  # raw bytes kept on a rejection, for replay
DETAIL_LIMIT = 300


@dataclass
class Rejection:
    reason: str
    detail: str
    source_key: str
    source_line: int | None
    raw: bytes | None
    whole_object: bool


@dataclass
class ReadResult:
    source_key: str
    format: str | None
    records: list[dict]
    rejections: list[Rejection]


class _Limits(NamedTuple):
    modality: str
    max_record_bytes: int
    max_image_pixels: int
    max_depth: int
    max_decompressed_bytes: int


# ---------------------------------------------------------------------------------------------- helpers
_GZIP_MAGIC = b"\x1f\x8b"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_UTF8_BOM = b"\xef\xbb\xbf"
_NON_WS = re.compile(rb"[^ \t\r\n\x0b\x0c]")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NON_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_JSON_WS = re.compile(r"[ \t\r\n]*")
_SNIPS_START = re.compile(rb'\{\s*"(?:[^"\\]|\\.)*"\s*:\s*\[\s*\{\s*"data"\s*:\s*\[')
_CSV_EXTS = {"csv": ",", "tsv": "\t", "tab": "\t"}
_JSONL_EXTS = {"jsonl", "ndjson", "jsonlines"}
_JDE = orjson.JSONDecodeError
_ORJSON_EOF = "unexpected end of data"


def _clip(text: str, limit: int = DETAIL_LIMIT) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raw(b: bytes | str | None) -> bytes | None:
    if b is None:
        return None
    if isinstance(b, str):
        b = b[:RAW_LIMIT].encode("utf-8", "surrogatepass")
    return bytes(b[:RAW_LIMIT])


def _whole(key: str, fmt: str | None, reason: str, detail: str) -> ReadResult:
    return ReadResult(key, fmt, [], [Rejection(reason, _clip(detail), key, None, None, True)])


def _cesu(raw: bytes) -> str:
    """Strict UTF-8 that also joins UTF-8-encoded surrogate pairs (CESU-8, as in SNIPS PlayMusic)."""
    return raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass").decode("utf-16")


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None) or (None, error) -- strict UTF-8 first, then the CESU-8 repair."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        err = e
    try:
        return _cesu(raw), None
    except UnicodeError:
        return None, f"not valid UTF-8: {err}"


def _ext(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def _too_deep(buf: bytes, max_depth: int) -> int | None:
    """Bracket-depth scan outside JSON strings, without parsing. Returns a depth > max_depth, or None."""
    if len(buf) <= max_depth or buf.count(b"[") + buf.count(b"{") <= max_depth:
        return None
    if b'"' in buf:
        if b'\\"' in buf:  # escaped quotes (or a backslash before a closing quote): tokenize strings properly
            buf = _JSTRING_SUB(b"", buf)
        else:  # every other piece between quotes is inside a string
            buf = b"".join(buf.split(b'"')[0::2])
    br = buf.translate(None, _NON_BRACKETS)
    if br.count(b"[") + br.count(b"{") <= max_depth:
        return None
    if len(br) > 1_000_000:
        return _too_deep_numpy(br, max_depth)
    d = 0
    for c in br:
        if c == 91 or c == 123:
            d += 1
            if d > max_depth:
                return d
        else:
            d -= 1
    return None


_JSTRING_SUB = _JSON_STRING.sub


def _too_deep_numpy(br: bytes, max_depth: int) -> int | None:
    import numpy as np

    carry = 0
    step = 4_000_000
    for i in range(0, len(br), step):
        a = np.frombuffer(br, dtype=np.uint8, count=min(step, len(br) - i), offset=i)
        delta = np.where((a == 91) | (a == 123), 1, -1).astype(np.int64)
        depth = np.cumsum(delta) + carry
        top = int(depth.max())
        if top > max_depth:
            return top
        carry = int(depth[-1])
    return None


def _oversized_detail(size: int, limit: int) -> str:
    return f"element of {size} bytes (compact JSON) > max_record_bytes={limit}"


def _orjson_truncated(e: orjson.JSONDecodeError, doc: bytes | str) -> bool:
    return e.msg == _ORJSON_EOF or e.pos >= len(doc.rstrip())


def _tail_truncated(text: str, pos: int) -> bool:
    """Does the JSON value starting at `pos` run into the end of the text (rather than hit a bad character)?"""
    try:
        orjson.loads(text[pos:])
    except _JDE as e:
        return e.msg == _ORJSON_EOF
    return False


# ---------------------------------------------------------------------------------------------- entry point
def read_object(key: str, body: bytes, *, modality: str = "text", max_record_bytes: int = 1_048_576,
                max_image_pixels: int = 40_000_000, max_depth: int = 32,
                max_decompressed_bytes: int = 2_000_000_000) -> ReadResult:
    """Read one raw object into records and rejections. Never raises on bad input.

    `modality` is "text" or "image" (the project's); anything else is a caller error (ValueError).
    """
    if modality not in ("text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', not {modality!r}")
    lim = _Limits(modality, max_record_bytes, max_image_pixels, max_depth, max_decompressed_bytes)
    try:
        return _read(key, body if isinstance(body, bytes) else bytes(body), lim)
    except Exception as e:  # a safety net: bad input must never crash the ingest task
        return _whole(key, None, UNKNOWN_FORMAT, f"reader error: {type(e).__name__}: {e}")


def _read(key: str, body: bytes, lim: _Limits) -> ReadResult:
    if key.endswith("/"):
        return _whole(key, None, EMPTY_OBJECT, f"folder marker ({len(body)} bytes)")
    name, suffix, data = key, "", body
    if body[:2] == _GZIP_MAGIC:
        data, err, reason = _gunzip(body, lim.max_decompressed_bytes)
        if err:
            return _whole(key, None, reason, err)
        suffix = "+gzip"
        low = key.lower()
        for ext in (".gz", ".gzip"):
            if low.endswith(ext):
                name = key[: -len(ext)]
                break
        if data[:2] == _GZIP_MAGIC:
            return _whole(key, None, UNKNOWN_FORMAT, "gzip inside gzip is not supported")

    if data[:8] == _PNG_MAGIC or data[:3] == _JPEG_MAGIC:
        fmt = ("png" if data[:1] == b"\x89" else "jpeg") + suffix
        if lim.modality != "image":
            return _whole(key, fmt, UNSUPPORTED_FOR_PROJECT, f"{fmt} image in a text project")
        return _read_image(key, data, fmt, lim)

    ext = _ext(name)
    if lim.modality == "image":
        if _NON_WS.search(data) is None:
            return _whole(key, None, EMPTY_OBJECT, f"{len(data)} bytes, no content")
        if _looks_like_text(data, ext):
            return _whole(key, None, UNSUPPORTED_FOR_PROJECT,
                          "text data (not a PNG/JPEG image) in an image project")
        return _whole(key, None, UNKNOWN_FORMAT, f"not a PNG or JPEG image (starts with {data[:8]!r})")

    # ---- text: byte-order marks and UTF-16/32
    enc = None
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        enc = "utf-32"
    elif data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        enc = "utf-16"
    elif len(data) >= 4 and data[0] and not data[1] and data[2] and not data[3]:
        enc = "utf-16-le"  # no BOM, but ASCII text in UTF-16-LE
    elif len(data) >= 4 and not data[0] and data[1] and not data[2] and data[3]:
        enc = "utf-16-be"
    if enc:
        try:
            data = data.decode(enc).encode("utf-8")
        except UnicodeError as e:
            return _whole(key, _name_format(ext, suffix), BAD_ENCODING, f"{enc}: {e}")
        if data[:3] == _UTF8_BOM:
            data = data[3:]
    elif data[:3] == _UTF8_BOM:
        data = data[3:]

    m = _NON_WS.search(data)
    if m is None:
        return _whole(key, _name_format(ext, suffix), EMPTY_OBJECT,
                      "zero bytes" if not data else f"{len(data)} bytes of whitespace only")
    first = data[m.start()]

    if ext in _CSV_EXTS:
        return _read_csv(key, data, "csv" + suffix, _CSV_EXTS[ext], lim)
    if ext in _JSONL_EXTS and first != 0x7B:
        return _read_jsonl(key, data, "jsonl" + suffix, lim)
    if first == 0x5B:  # [
        return _read_json_array(key, data, "json_array" + suffix, lim)
    if first == 0x7B:  # {
        return _read_brace(key, data, m.start(), suffix, lim)
    delim = _sniff_csv(data)
    if delim:
        return _read_csv(key, data, "csv" + suffix, delim, lim)
    head = data[m.start():m.start() + 16]
    return _whole(key, None, UNKNOWN_FORMAT, f"not JSON Lines, a JSON array, SNIPS JSON or CSV (starts with {head!r})")


def _name_format(ext: str, suffix: str) -> str | None:
    if ext in _CSV_EXTS:
        return "csv" + suffix
    if ext in _JSONL_EXTS:
        return "jsonl" + suffix
    return None


def _looks_like_text(data: bytes, ext: str) -> bool:
    if ext in _CSV_EXTS or ext in _JSONL_EXTS or ext in ("json", "txt"):
        return True
    sample = data[:8192]
    if sample[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        return e.start >= len(sample) - 3 and len(data) > len(sample)  # only a character cut by the sample


# ---------------------------------------------------------------------------------------------- gzip
def _gunzip(body: bytes, limit: int) -> tuple[bytes, str | None, str]:
    """Inflate all gzip members, never producing more than `limit` bytes. (data, error, reason)."""
    parts: list[bytes] = []
    total = 0
    src = body
    try:
        while True:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while not d.eof:
                before = len(src)
                piece = d.decompress(src, limit - total + 1)
                src = d.unconsumed_tail
                if piece:
                    total += len(piece)
                    if total > limit:
                        return b"", f"gzip inflates to more than max_decompressed_bytes={limit}", OVERSIZED_RECORD
                    parts.append(piece)
                elif not d.eof and (not src or len(src) == before):
                    return b"", f"truncated gzip stream: input ended after {total} decompressed bytes", CORRUPT_GZIP
            rest = d.unused_data
            if not rest.strip(b"\x00"):
                break
            if rest[:2] != _GZIP_MAGIC:
                return b"", f"{len(rest)} bytes of trailing garbage after the gzip stream", CORRUPT_GZIP
            src = rest
    except zlib.error as e:
        return b"", f"corrupt gzip stream: {e}", CORRUPT_GZIP
    return b"".join(parts), None, ""


# ---------------------------------------------------------------------------------------------- JSON Lines
def _read_jsonl(key: str, data: bytes, fmt: str, lim: _Limits) -> ReadResult:
    records: list[dict] = []
    rejections: list[Rejection] = []
    append = records.append
    loads = orjson.loads
    jde = _JDE
    max_rb = lim.max_record_bytes
    max_depth = lim.max_depth
    for lineno, line in enumerate(data.split(b"\n"), 1):
        n = len(line)
        if n > max_rb or (n > max_depth and line.count(b"[") + line.count(b"{") > max_depth):
            out = _jsonl_slow(key, line, lineno, lim)
        else:
            try:
                obj = loads(line)
            except jde:
                out = _jsonl_slow(key, line, lineno, lim)
            else:
                if type(obj) is dict:
                    obj["_source_key"] = key
                    obj["_source_line"] = lineno
                    append(obj)
                    continue
                out = Rejection(NOT_AN_OBJECT, _clip(f"JSON {type(obj).__name__}, not an object"), key, lineno,
                                _raw(line.rstrip(b"\r")), False)
        if out is None:
            continue
        if type(out) is dict:
            append(out)
        else:
            rejections.append(out)
    return ReadResult(key, fmt, records, rejections)


def _jsonl_slow(key: str, line: bytes, lineno: int, lim: _Limits) -> dict | Rejection | None:
    """Everything that is not a short, valid, UTF-8 JSON object line. None for a blank line."""
    if line[-1:] == b"\r":
        line = line[:-1]
    n = len(line)
    if n > lim.max_record_bytes:
        if not line.strip():
            return None
        return Rejection(OVERSIZED_RECORD, f"line of {n} bytes > max_record_bytes={lim.max_record_bytes}",
                         key, lineno, _raw(line), False)
    stripped = line.strip()
    if not stripped:
        return None
    if stripped[:3] == _UTF8_BOM:  # concatenated files keep their BOMs
        stripped = stripped[3:]
    depth = _too_deep(stripped, lim.max_depth)
    if depth is not None:
        return Rejection(TOO_DEEPLY_NESTED, f"nesting depth > {lim.max_depth} (reached {depth} before stopping)",
                         key, lineno, _raw(line), False)
    doc: bytes | str = stripped
    try:
        stripped.decode("utf-8")
    except UnicodeDecodeError as e:
        try:
            doc = _cesu(stripped)
        except UnicodeError:
            return Rejection(BAD_ENCODING, _clip(f"not valid UTF-8: {e}"), key, lineno, _raw(line), False)
    try:
        obj = orjson.loads(doc)
    except _JDE as e:
        reason = TRUNCATED_JSON if _orjson_truncated(e, doc) else INVALID_JSON
        return Rejection(reason, _clip(str(e)), key, lineno, _raw(line), False)
    if type(obj) is not dict:
        return Rejection(NOT_AN_OBJECT, f"JSON {type(obj).__name__}, not an object", key, lineno, _raw(line), False)
    obj["_source_key"] = key
    obj["_source_line"] = lineno
    return obj


# ---------------------------------------------------------------------------------------------- "{": SNIPS or JSONL
def _read_brace(key: str, data: bytes, start: int, suffix: str, lim: _Limits) -> ReadResult:
    nl = data.find(b"\n", start)
    first_line = data[start: nl if nl >= 0 else len(data)]
    single_line = nl < 0 or _NON_WS.search(data, nl) is None
    obj = _try_object(first_line, lim)
    if obj is not None:
        if single_line and _is_snips(obj):
            return _snips_result(key, obj, len(data), "snips" + suffix, lim)
        return _read_jsonl(key, data, "jsonl" + suffix, lim)
    if single_line:
        # A minified SNIPS document is one line that may well exceed max_record_bytes (which limits utterances,
        # not the document): parse it whole only if it starts like SNIPS, else JSONL says why the line is bad.
        if len(first_line) > lim.max_record_bytes and _SNIPS_START.match(first_line, 0, 4096):
            doc, reason, detail = _parse_document(first_line, lim)
            if reason is None and type(doc) is dict and _is_snips(doc):
                return _snips_result(key, doc, len(data), "snips" + suffix, lim)
            if reason is not None:  # e.g. a cut-off minified SNIPS file
                return _whole(key, None, reason, f"document that starts like SNIPS: {detail}")
        return _read_jsonl(key, data, "jsonl" + suffix, lim)

    # Several lines and the first is not an object by itself: a pretty-printed document (SNIPS), or JSONL
    # with a bad first line.
    doc, reason, detail = _parse_document(data, lim)
    if reason is None:
        if type(doc) is dict and _is_snips(doc):
            return _snips_result(key, doc, len(data), "snips" + suffix, lim)
        return _read_jsonl(key, data, "jsonl" + suffix, lim)
    if _later_line_is_object(data, nl, lim):
        return _read_jsonl(key, data, "jsonl" + suffix, lim)
    return _whole(key, None, reason, detail)


def _try_object(line: bytes, lim: _Limits) -> dict | None:
    if len(line) > lim.max_record_bytes or _too_deep(line, lim.max_depth) is not None:
        return None
    try:
        obj = orjson.loads(line)
    except _JDE:
        text, _ = _decode(line)
        if text is None:
            return None
        try:
            obj = orjson.loads(text)
        except _JDE:
            return None
    return obj if type(obj) is dict else None


def _later_line_is_object(data: bytes, nl: int, lim: _Limits, lines: int = 50) -> bool:
    pos = nl + 1
    seen = 0
    while pos < len(data) and seen < lines:
        end = data.find(b"\n", pos)
        if end < 0:
            end = len(data)
        line = data[pos:end]
        pos = end + 1
        if not line.strip():
            continue
        seen += 1
        if _try_object(line, lim) is not None:
            return True
    return False


def _parse_document(data: bytes, lim: _Limits) -> tuple[object, str | None, str]:
    """Parse a whole JSON document: (value, None, "") or (None, reason, detail)."""
    depth = _too_deep(data, lim.max_depth)
    if depth is not None:
        return None, TOO_DEEPLY_NESTED, f"nesting depth > {lim.max_depth} (reached {depth} before stopping)"
    try:
        return orjson.loads(data), None, ""
    except _JDE as e:
        err, doc = e, data
    if "UTF-8" in err.msg or "BOM" in err.msg:
        text, bad = _decode(data)
        if text is None:
            return None, BAD_ENCODING, bad
        try:
            return orjson.loads(text), None, ""
        except _JDE as e:
            err, doc = e, text
    reason = TRUNCATED_JSON if _orjson_truncated(err, doc) else INVALID_JSON
    return None, reason, str(err)


def _is_utterance(u: object) -> bool:
    if type(u) is not dict or type(u.get("data")) is not list:
        return False
    return all(type(s) is dict and type(s.get("text")) is str for s in u["data"])


def _is_snips(doc: dict) -> bool:
    """{"<Intent>": [{"data": [{"text": ...}, {"text": ..., "entity": ...}]}, ...]}: every value a list, more
    than half of the elements objects with a "data" key, at least one a well-formed utterance. (The malformed
    ones become record-level rejections.)"""
    if not doc or not all(type(v) is list for v in doc.values()):
        return False
    total = sum(len(v) for v in doc.values())
    with_data = sum(1 for v in doc.values() for u in v if type(u) is dict and "data" in u)
    return with_data * 2 > total and any(_is_utterance(u) for v in doc.values() for u in v)


def _snips_result(key: str, doc: dict, doc_size: int, fmt: str, lim: _Limits) -> ReadResult:
    records: list[dict] = []
    rejections: list[Rejection] = []
    check_size = doc_size > lim.max_record_bytes
    index = 0
    for intent, utterances in doc.items():
        for utt in utterances:
            index += 1
            if check_size:
                raw = orjson.dumps(utt)
                if len(raw) > lim.max_record_bytes:
                    rejections.append(Rejection(
                        OVERSIZED_RECORD, f"utterance of {len(raw)} bytes > max_record_bytes={lim.max_record_bytes}",
                        key, index, _raw(raw), False))
                    continue
            problem = None
            parts: list[str] = []
            entities: list[dict] = []
            offset = 0
            data = utt.get("data") if type(utt) is dict else None
            if type(data) is not list:
                problem = "utterance is not an object with a 'data' list"
            else:
                for seg in data:
                    text = seg.get("text") if type(seg) is dict else None
                    if type(text) is not str:
                        problem = "segment is not an object with a string 'text'"
                        break
                    label = seg.get("entity")
                    if label is not None:
                        if type(label) is not str or not label:
                            problem = "segment 'entity' is not a non-empty string"
                            break
                        entities.append({"start": offset, "end": offset + len(text), "label": label, "text": text})
                    parts.append(text)
                    offset += len(text)
            if problem:
                rejections.append(Rejection(NOT_AN_OBJECT, f"SNIPS: {problem}", key, index,
                                            _raw(orjson.dumps(utt)), False))
                continue
            records.append({"text": "".join(parts), "intent": intent, "entities": entities,
                            "_source_key": key, "_source_line": index})
    return ReadResult(key, fmt, records, rejections)


# ---------------------------------------------------------------------------------------------- JSON array
def _read_json_array(key: str, data: bytes, fmt: str, lim: _Limits) -> ReadResult:
    depth = _too_deep(data, lim.max_depth)
    if depth is not None:
        return _whole(key, fmt, TOO_DEEPLY_NESTED,
                      f"nesting depth > {lim.max_depth} (reached {depth} before stopping)")
    try:
        value = orjson.loads(data)
    except _JDE:
        value = None
    if type(value) is list:
        if not value:
            return _whole(key, fmt, EMPTY_OBJECT, "empty JSON array")
        max_rb = lim.max_record_bytes
        check_size = len(data) > max_rb  # else no element can be oversized
        records: list[dict] = []
        rejections: list[Rejection] = []
        for i, el in enumerate(value, 1):
            if check_size:
                raw = orjson.dumps(el)
                if len(raw) > max_rb:
                    rejections.append(Rejection(OVERSIZED_RECORD, _oversized_detail(len(raw), max_rb),
                                                key, i, _raw(raw), False))
                    continue
            if type(el) is dict:
                el["_source_key"] = key
                el["_source_line"] = i
                records.append(el)
            else:
                rejections.append(Rejection(NOT_AN_OBJECT, f"JSON {type(el).__name__}, not an object",
                                            key, i, _raw(orjson.dumps(el)), False))
        return ReadResult(key, fmt, records, rejections)
    # Not one valid UTF-8 JSON array: CESU-8, cut off, or broken somewhere -- element by element.
    text, bad = _decode(data)
    if text is None:
        return _whole(key, fmt, BAD_ENCODING, bad)
    return _json_array_elements(key, text, fmt, lim)


def _json_array_elements(key: str, text: str, fmt: str, lim: _Limits) -> ReadResult:
    """Element by element (json's raw_decode finds each end; orjson parses the element text)."""
    records: list[dict] = []
    rejections: list[Rejection] = []
    raw_decode = json.JSONDecoder().raw_decode
    skip = _JSON_WS.match
    max_rb = lim.max_record_bytes
    n = len(text)
    pos = skip(text, text.index("[") + 1).end()
    if pos < n and text[pos] == "]":
        pos = skip(text, pos + 1).end()
        if pos < n:
            return _whole(key, fmt, INVALID_JSON, f"extra data after the array at char {pos}")
        return _whole(key, fmt, EMPTY_OBJECT, "empty JSON array")
    index = 0
    while True:
        index += 1
        if pos >= n:
            rejections.append(Rejection(TRUNCATED_JSON, f"array cut off before element {index} (no closing ']')",
                                        key, index, b"", False))
            break
        try:
            _, end = raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if _tail_truncated(text, pos):
                rejections.append(Rejection(TRUNCATED_JSON, _clip(f"element {index} cut off: {e}"), key, index,
                                            _raw(text[pos:]), False))
                break
            return _whole(key, fmt, INVALID_JSON, f"element {index}: {e}")
        except RecursionError:
            return _whole(key, fmt, TOO_DEEPLY_NESTED, f"element {index} nests too deeply")
        piece = text[pos:end]
        try:
            el = orjson.loads(piece)
        except _JDE as e:  # what json tolerates and orjson does not (NaN, lone surrogates...)
            rejections.append(Rejection(INVALID_JSON, _clip(str(e)), key, index, _raw(piece), False))
        else:
            size = len(orjson.dumps(el)) if len(piece) * 4 > max_rb else 0  # compact size, as in the fast path
            if size > max_rb:
                rejections.append(Rejection(OVERSIZED_RECORD, _oversized_detail(size, max_rb),
                                            key, index, _raw(piece), False))
            else:
                if type(el) is dict:
                    el["_source_key"] = key
                    el["_source_line"] = index
                    records.append(el)
                else:
                    rejections.append(Rejection(NOT_AN_OBJECT, f"JSON {type(el).__name__}, not an object",
                                                key, index, _raw(piece), False))
        pos = skip(text, end).end()
        if pos >= n:
            rejections.append(Rejection(TRUNCATED_JSON, f"array cut off after element {index} (no closing ']')",
                                        key, index + 1, b"", False))
            break
        c = text[pos]
        if c == ",":
            pos = skip(text, pos + 1).end()
            continue
        if c == "]":
            pos = skip(text, pos + 1).end()
            if pos < n:
                return _whole(key, fmt, INVALID_JSON, f"extra data after the array at char {pos}")
            break
        return _whole(key, fmt, INVALID_JSON, f"expected ',' or ']' after element {index} at char {pos}, got {c!r}")
    return ReadResult(key, fmt, records, rejections)


# ---------------------------------------------------------------------------------------------- CSV
def _sniff_csv(data: bytes) -> str | None:
    """A delimiter if the start of `data` looks like CSV with a header, else None."""
    sample = data[:65536].decode("utf-8", "replace")
    lines = [ln for ln in sample.split("\n")[:21] if ln.strip()]
    if len(data) > 65536 and len(lines) > 1:
        lines = lines[:-1]  # possibly cut by the sample
    if len(lines) < 2:
        return None
    best, best_n = None, 1
    for d in (",", "\t", ";", "|"):
        try:
            rows = list(csv.reader(lines, delimiter=d))
        except csv.Error:
            continue
        header = rows[0]
        n = len(header)
        if n <= best_n or any(not h.strip() for h in header) or len(set(header)) != n:
            continue
        if all(len(r) == n for r in rows[1:]):
            best, best_n = d, n
    return best


class _Feeder:
    """Feeds physical lines to csv.reader; stops at a line that must be handled outside the reader."""

    __slots__ = ("lines", "raw_lines", "pos", "limit", "row_bytes", "stop")

    def __init__(self, lines: list[str | None], raw_lines: list[bytes], pos: int, limit: int):
        self.lines, self.raw_lines, self.pos, self.limit = lines, raw_lines, pos, limit
        self.row_bytes = 0
        self.stop = ""

    def __iter__(self) -> "_Feeder":
        return self

    def __next__(self) -> str:
        pos = self.pos
        if pos >= len(self.lines):
            raise StopIteration
        line = self.lines[pos]
        if line is None:
            self.stop = "an undecodable line"
            raise StopIteration
        if "\x00" in line:
            self.stop = "a line with a NUL byte"
            raise StopIteration
        self.row_bytes += len(self.raw_lines[pos])
        if self.row_bytes > self.limit:
            self.stop = f"max_record_bytes={self.limit}"
            raise StopIteration
        self.pos = pos + 1
        return line


def _read_csv(key: str, data: bytes, fmt: str, delim: str, lim: _Limits) -> ReadResult:
    max_rb = lim.max_record_bytes
    if csv.field_size_limit() < max_rb + 1:
        csv.field_size_limit(max_rb + 1)  # rows are capped at max_record_bytes by the feeder
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    text, _ = _decode(data)
    lines: list[str | None]
    if text is not None:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) != len(raw_lines):  # cannot happen for UTF-8, but keep raw_lines aligned regardless
            raw_lines = [ln.encode("utf-8", "surrogatepass") for ln in lines]
    else:
        lines = [_decode(ln)[0] for ln in raw_lines]
    for i in range(len(lines) - 1):
        if lines[i] is not None:
            lines[i] += "\n"
    if lines and lines[-1] is not None and raw_lines and data.endswith(b"\n"):
        lines[-1] += "\n"

    # header: the first non-blank line
    h = 0
    while h < len(lines) and lines[h] is not None and not lines[h].strip():
        h += 1
    if h >= len(lines):
        return _whole(key, fmt, EMPTY_OBJECT, "no header")
    if lines[h] is None:
        return _whole(key, fmt, BAD_ENCODING, f"header line {h + 1} is not valid UTF-8")
    feeder = _Feeder(lines, raw_lines, h, max_rb)
    try:
        header = next(csv.reader(feeder, delimiter=delim, strict=True))
    except (csv.Error, StopIteration) as e:
        why = feeder.stop or str(e) or "no header row"
        reason = OVERSIZED_RECORD if feeder.stop.startswith("max_record") else MALFORMED_CSV_ROW
        return _whole(key, fmt, reason, f"header row (line {h + 1}): {why}")
    ncols = len(header)

    records: list[dict] = []
    rejections: list[Rejection] = []
    pos = feeder.pos
    n = len(lines)
    while pos < n:
        line = lines[pos]
        if line is None:
            why = _decode(raw_lines[pos])[1]
            rejections.append(Rejection(BAD_ENCODING, _clip(f"line {pos + 1}: {why}"), key, pos + 1,
                                        _raw(raw_lines[pos]), False))
            pos += 1
            continue
        if "\x00" in line:
            rejections.append(Rejection(MALFORMED_CSV_ROW, "NUL byte in row", key, pos + 1, _raw(raw_lines[pos]),
                                        False))
            pos += 1
            continue
        size = len(raw_lines[pos])
        if size > max_rb:
            rejections.append(Rejection(OVERSIZED_RECORD, f"line of {size} bytes > max_record_bytes={max_rb}",
                                        key, pos + 1, _raw(raw_lines[pos]), False))
            pos += 1
            continue
        first = pos
        feeder = _Feeder(lines, raw_lines, pos, max_rb)
        reader = csv.reader(feeder, delimiter=delim, strict=True)
        while True:
            start = feeder.pos
            feeder.row_bytes = 0
            try:
                row = next(reader)
            except StopIteration:
                pos = feeder.pos
                break
            except csv.Error as e:
                if feeder.stop.startswith("max_record_bytes"):
                    detail = (f"quoted field not closed within {feeder.stop} (unterminated quote, or a row larger "
                              "than the limit)")
                    resume = start + 1
                    raw = raw_lines[start]
                elif feeder.stop or str(e) == "unexpected end of data":
                    detail = (f"unterminated quoted field: the row starting here does not close before "
                              f"{feeder.stop or 'the end of data'}")
                    resume = start + 1
                    raw = raw_lines[start]
                else:
                    detail = str(e)
                    resume = max(feeder.pos, start + 1)
                    raw = b"\n".join(raw_lines[start:resume])
                rejections.append(Rejection(MALFORMED_CSV_ROW, _clip(detail), key, start + 1, _raw(raw), False))
                pos = resume
                break
            if not row:
                continue  # blank line
            if len(row) != ncols:
                rejections.append(Rejection(
                    MALFORMED_CSV_ROW, f"{len(row)} fields, header has {ncols}", key, start + 1,
                    _raw(b"\n".join(raw_lines[start:feeder.pos])), False))
                continue
            rec = dict(zip(header, row))
            rec["_source_key"] = key
            rec["_source_line"] = start + 1
            records.append(rec)
        if pos == first:  # never loop on a line the reader would not take (cannot happen; belt and braces)
            rejections.append(Rejection(MALFORMED_CSV_ROW, _clip(f"unreadable row ({feeder.stop or 'unknown'})"),
                                        key, pos + 1, _raw(raw_lines[pos]), False))
            pos += 1
    if not records and not rejections:
        return _whole(key, fmt, EMPTY_OBJECT, "CSV with a header and no rows")
    return ReadResult(key, fmt, records, rejections)


# ---------------------------------------------------------------------------------------------- images
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _png_check(data: bytes) -> tuple[str | None, str, tuple[int, int] | None]:
    """Walk the PNG chunks: (reason or None, detail, (width, height) from IHDR)."""
    if len(data) < 33:
        return TRUNCATED_IMAGE, f"PNG of {len(data)} bytes ends inside its header", None
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        return CORRUPT_IMAGE, "PNG does not start with an IHDR chunk", None
    w, h = struct.unpack(">II", data[16:24])
    if w == 0 or h == 0:
        return CORRUPT_IMAGE, f"PNG header says {w}x{h}", (w, h)
    return None, "", (w, h)


def _png_walk(data: bytes) -> tuple[str | None, str]:
    mv = memoryview(data)
    pos, n = 8, len(data)
    while True:
        if pos + 8 > n:
            return TRUNCATED_IMAGE, f"PNG ends at byte {n} before the IEND chunk"
        length, ctype = struct.unpack(">I4s", mv[pos:pos + 8])
        if length > 0x7FFFFFFF:
            return CORRUPT_IMAGE, f"PNG chunk {ctype!r} has an invalid length {length}"
        end = pos + 12 + length
        if end > n:
            return TRUNCATED_IMAGE, f"PNG ends at byte {n} inside the {ctype.decode('latin-1')!r} chunk"
        (crc,) = struct.unpack(">I", mv[end - 4:end])
        if zlib.crc32(mv[pos + 4:end - 4]) != crc:
            return CORRUPT_IMAGE, f"bad CRC in PNG chunk {ctype!r} at byte {pos}"
        if ctype == b"IEND":
            return None, ""
        pos = end


def _jpeg_size(data: bytes) -> tuple[str | None, str, tuple[int, int] | None]:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return CORRUPT_IMAGE, f"JPEG: expected a marker at byte {pos}", None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker < 0xC0 and marker != 0x01:
            return CORRUPT_IMAGE, f"JPEG: invalid marker 0xFF{marker:02X} at byte {pos}", None
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            return CORRUPT_IMAGE, "JPEG: no frame header (SOF) before the scan", None
        (seglen,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 9 > n:
                break
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            if w == 0 or h == 0:
                return CORRUPT_IMAGE, f"JPEG header says {w}x{h}", (w, h)
            return None, "", (w, h)
        if seglen < 2:
            return CORRUPT_IMAGE, f"JPEG: invalid segment length at byte {pos}", None
        pos += 2 + seglen
    return TRUNCATED_IMAGE, f"JPEG of {n} bytes ends before its frame header", None


_DCT: dict[int, object] = {}


def _phash(im) -> str:
    """DCT perceptual hash as in imagehash.phash: 32x32 grey (Lanczos), 2-D DCT-II, top-left 8x8 > median."""
    import numpy as np
    from PIL import Image

    c = _DCT.get(32)
    if c is None:
        k = np.arange(32).reshape(-1, 1)
        j = np.arange(32).reshape(1, -1)
        c = _DCT[32] = 2.0 * np.cos(np.pi * k * (2 * j + 1) / 64.0)
    px = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (c @ px @ c.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return f"{value:016x}"


def _read_image(key: str, data: bytes, fmt: str, lim: _Limits) -> ReadResult:
    kind = fmt.split("+", 1)[0]
    reason, detail, size = (_png_check if kind == "png" else _jpeg_size)(data)
    if size and size[0] * size[1] > lim.max_image_pixels:
        return _whole(key, fmt, IMAGE_TOO_LARGE,
                      f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels > max_image_pixels={lim.max_image_pixels}")
    if reason:
        return _whole(key, fmt, reason, detail)
    if kind == "png":
        reason, detail = _png_walk(data)
        if reason:
            return _whole(key, fmt, reason, detail)

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=["PNG" if kind == "png" else "JPEG"])
            im.load()
    except Image.DecompressionBombError as e:
        return _whole(key, fmt, IMAGE_TOO_LARGE, f"Pillow: {e}")
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error... on bad data
        msg = f"{type(e).__name__}: {e}"
        if "truncated" in str(e).lower() or (kind == "jpeg" and b"\xff\xd9" not in data[-1024:]):
            return _whole(key, fmt, TRUNCATED_IMAGE, msg)
        return _whole(key, fmt, CORRUPT_IMAGE, msg)
    try:
        phash = _phash(im)
    except Exception as e:
        return _whole(key, fmt, CORRUPT_IMAGE, f"cannot compute pHash: {type(e).__name__}: {e}")
    record = {
        "image_key": key, "format": kind, "width": im.width, "height": im.height, "mode": im.mode,
        "sha256": hashlib.sha256(data).hexdigest(), "phash": phash, "_source_key": key, "_source_line": 1,
    }
    return ReadResult(key, fmt, [record], [])
