"""labelops.ingest.readers: one raw object (key + bytes) -> records or quarantine entries. Pure, no servers."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from labelops.ingest import readers as R
from labelops.ingest.readers import ReadResult, Rejection, read_object

SNIPS = Path(__file__).resolve().parents[1] / "data" / "snips" / "2017-06-custom-intent-engines"


def snips_file(intent: str, kind: str = "train_full") -> bytes:
    name = f"train_{intent}_full.json" if kind == "train_full" else f"validate_{intent}.json"
    return (SNIPS / intent / name).read_bytes()


def reasons(result: ReadResult) -> list[tuple[str, int | None, bool]]:
    return [(r.reason, r.source_line, r.whole_object) for r in result.rejections]


def strip_meta(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "_source_key"} for r in records]


def assert_invariants(result: ReadResult) -> None:
    assert isinstance(result, ReadResult)
    for rej in result.rejections:
        assert isinstance(rej, Rejection)
        assert rej.reason in R.REASONS
        assert len(rej.detail) <= 300 and rej.detail
        assert not rej.detail.startswith("reader error"), rej.detail  # the safety net must not be needed
        assert rej.source_key == result.source_key
        if rej.whole_object:
            assert rej.source_line is None and rej.raw is None
        else:
            assert isinstance(rej.source_line, int) and rej.source_line >= 1
            assert isinstance(rej.raw, bytes) and len(rej.raw) <= 64 * 1024
    if any(r.whole_object for r in result.rejections):
        assert result.records == [] and len(result.rejections) == 1
    for rec in result.records:
        assert rec["_source_key"] == result.source_key and isinstance(rec["_source_line"], int)
    # every line / row / element is counted once: no source line appears twice
    lines = [r["_source_line"] for r in result.records] + [r.source_line for r in result.rejections
                                                            if not r.whole_object]
    assert len(lines) == len(set(lines))


# ---------------------------------------------------------------------------------------------- API surface
def test_reason_constants():
    assert R.REASONS == frozenset({
        "unknown_format", "empty_object", "corrupt_gzip", "bad_encoding", "invalid_json", "truncated_json",
        "not_an_object", "too_deeply_nested", "oversized_record", "malformed_csv_row", "truncated_image",
        "image_too_large", "corrupt_image", "unsupported_for_project", "missing_image", "bad_manifest_row",
    })
    assert (R.UNKNOWN_FORMAT, R.TRUNCATED_JSON, R.UNSUPPORTED_FOR_PROJECT) == (
        "unknown_format", "truncated_json", "unsupported_for_project")


# ---------------------------------------------------------------------------------------------- SNIPS (real data)
def test_snips_playmusic_cesu8_reads_2000_records_with_emoji():
    res = read_object("raw/train_PlayMusic_full.json", snips_file("PlayMusic"), max_record_bytes=65536)
    assert res.format == "snips"
    assert res.rejections == []
    assert len(res.records) == 2000
    assert [r["_source_line"] for r in res.records] == list(range(1, 2001))
    assert {r["intent"] for r in res.records} == {"PlayMusic"}
    pizza = [r["text"] for r in res.records if "\U0001F355" in r["text"]]
    assert pizza == ["I want toi hear some Pop Punk Perfection \U0001F355 off of Deezer"]
    # no lone surrogates anywhere: every emoji was joined into one code point
    assert not any("\ud800" <= c <= "\udfff" for r in res.records for c in r["text"])
    # the file holds exactly one CESU-8 surrogate pair (ED A0 BC ED BD 95): that utterance is the only astral one
    assert sum(any(ord(c) > 0xFFFF for c in r["text"]) for r in res.records) == 1


def test_snips_first_record_exact():
    res = read_object("k.json", snips_file("PlayMusic"))
    assert res.records[0] == {
        "text": "I need to hear the song Aspro Mavro from Bill Szymczyk on Youtube",
        "intent": "PlayMusic",
        "entities": [
            {"start": 19, "end": 23, "label": "music_item", "text": "song"},
            {"start": 24, "end": 35, "label": "track", "text": "Aspro Mavro"},
            {"start": 41, "end": 54, "label": "artist", "text": "Bill Szymczyk"},
            {"start": 58, "end": 65, "label": "service", "text": "Youtube"},
        ],
        "_source_key": "k.json",
        "_source_line": 1,
    }


@pytest.mark.parametrize("intent,kind,count", [
    ("BookRestaurant", "train_full", 1973),
    ("GetWeather", "validate", 100),
    ("PlayMusic", "train_full", 2000),
])
def test_snips_entity_offsets_round_trip(intent, kind, count):
    res = read_object(f"{intent}.json", snips_file(intent, kind))
    assert (res.format, len(res.records), res.rejections) == ("snips", count, [])
    n_entities = 0
    for rec in res.records:
        assert rec["intent"] == intent
        for ent in rec["entities"]:
            assert rec["text"][ent["start"]:ent["end"]] == ent["text"]
            assert ent["label"] and ent["end"] > ent["start"]
            n_entities += 1
    assert n_entities > count  # utterances carry on average more than one slot


def test_snips_gzip_same_records():
    raw = snips_file("PlayMusic", "validate")
    plain = read_object("s/validate_PlayMusic.json", raw)
    gz = read_object("s/validate_PlayMusic.json.gz", gzip.compress(raw))
    assert (plain.format, gz.format) == ("snips", "snips+gzip")
    assert len(gz.records) == 100 and gz.rejections == []
    assert strip_meta(gz.records) == strip_meta(plain.records)
    assert gz.records[0]["_source_key"] == "s/validate_PlayMusic.json.gz"


def test_snips_bad_utterances_are_record_level():
    doc = {"GetWeather": [
        {"data": [{"text": "rain in "}, {"text": "Paris", "entity": "city"}]},
        {"data": "oops"},
        {"data": [{"text": 5}]},
        {"data": [{"text": "snow"}]},
    ]}
    res = read_object("w.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    assert res.format == "snips"
    assert [r["text"] for r in res.records] == ["rain in Paris", "snow"]
    assert res.records[0]["entities"] == [{"start": 8, "end": 13, "label": "city", "text": "Paris"}]
    assert reasons(res) == [("not_an_object", 2, False), ("not_an_object", 3, False)]


# ---------------------------------------------------------------------------------------------- formats
def test_jsonl_records_lines_and_crlf():
    body = b'{"text": "hi", "n": 1}\r\n\r\n  \n{"text": "caf\xc3\xa9"}\r\n'
    res = read_object("p/raw/a.jsonl", body)
    assert res.format == "jsonl" and res.rejections == []
    assert res.records == [
        {"text": "hi", "n": 1, "_source_key": "p/raw/a.jsonl", "_source_line": 1},
        {"text": "café", "_source_key": "p/raw/a.jsonl", "_source_line": 4},
    ]


def test_jsonl_without_extension_and_single_line():
    assert read_object("obj", b'{"a": 1}').records == [{"a": 1, "_source_key": "obj", "_source_line": 1}]
    res = read_object("obj2", b'{"a": 1}\n{"a": 2}\n')
    assert (res.format, [r["a"] for r in res.records]) == ("jsonl", [1, 2])


def test_jsonl_gzip():
    res = read_object("a.jsonl.gz", gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    assert res.format == "jsonl+gzip"
    assert [(r["a"], r["_source_line"], r["_source_key"]) for r in res.records] == [(1, 1, "a.jsonl.gz"),
                                                                                   (2, 2, "a.jsonl.gz")]


def test_jsonl_multi_member_gzip():
    body = gzip.compress(b'{"a": 1}\n') + gzip.compress(b'{"a": 2}\n')
    res = read_object("a.jsonl.gz", body)
    assert [r["a"] for r in res.records] == [1, 2] and res.rejections == []


def test_jsonl_cesu8_line_is_repaired():
    body = b'{"t": "ok"}\n{"t": "\xed\xa0\xbc\xed\xbd\x95"}\n'
    res = read_object("c.jsonl", body)
    assert res.rejections == []
    assert res.records[1]["t"] == "\U0001F355"


def test_csv_records_header_and_multiline_field():
    body = (b'id,text,label\r\n1,hello,greet\r\n2,"line one\r\nline two",multi\r\n'
            b'3,"=cmd|\' /C calc\'!A0",formula\r\n4,"say ""hi""",quote\r\n')
    res = read_object("u.csv", body)
    assert res.format == "csv" and res.rejections == []
    assert res.records == [
        {"id": "1", "text": "hello", "label": "greet", "_source_key": "u.csv", "_source_line": 2},
        {"id": "2", "text": "line one\r\nline two", "label": "multi", "_source_key": "u.csv", "_source_line": 3},
        {"id": "3", "text": "=cmd|' /C calc'!A0", "label": "formula", "_source_key": "u.csv", "_source_line": 5},
        {"id": "4", "text": 'say "hi"', "label": "quote", "_source_key": "u.csv", "_source_line": 6},
    ]


def test_tsv_by_name_and_csv_sniffed_and_gzip():
    tsv = read_object("u.tsv", b"text\tlabel\nhi there, you\tgreet\n")
    assert (tsv.format, tsv.records[0]["text"], tsv.records[0]["label"]) == ("csv", "hi there, you", "greet")
    sniffed = read_object("export-0001", b"text;label\nhello;greet\nbye;farewell\n")
    assert sniffed.format == "csv"
    assert [(r["text"], r["label"]) for r in sniffed.records] == [("hello", "greet"), ("bye", "farewell")]
    gz = read_object("u.csv.gz", gzip.compress(b"a,b\n1,2\n"))
    assert gz.format == "csv+gzip" and gz.records == [{"a": "1", "b": "2", "_source_key": "u.csv.gz",
                                                       "_source_line": 2}]


def test_csv_header_names_kept_as_is():
    res = read_object("h.csv", b"Text , Intent Label\nx,y\n")
    assert list(res.records[0])[:2] == ["Text ", " Intent Label"]


def test_json_array():
    body = b'[\n  {"text": "a"},\n  {"text": "b", "tags": ["x"]}\n]\n'
    res = read_object("arr.json", body)
    assert res.format == "json_array" and res.rejections == []
    assert res.records == [{"text": "a", "_source_key": "arr.json", "_source_line": 1},
                           {"text": "b", "tags": ["x"], "_source_key": "arr.json", "_source_line": 2}]


def test_json_array_gzip_and_large_array_path():
    items = [{"i": i, "text": "x" * 50} for i in range(3000)]
    res = read_object("arr.json.gz", gzip.compress(orjson.dumps(items)), max_record_bytes=1024)
    assert res.format == "json_array+gzip" and res.rejections == []
    assert [r["i"] for r in res.records] == list(range(3000))
    assert res.records[-1]["_source_line"] == 3000


def test_boms_utf16_and_crlf():
    rows = "text,label\r\nnaïve,a\r\n"
    for enc in ("utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"):
        res = read_object(f"x-{enc}.csv", rows.encode(enc))
        assert res.rejections == [], enc
        assert res.records == [{"text": "naïve", "label": "a", "_source_key": f"x-{enc}.csv", "_source_line": 2}]
    jl = '{"t": "naïve ☃"}\r\n{"t": "b"}\r\n'
    for enc in ("utf-8-sig", "utf-16", "utf-32"):
        res = read_object("x.jsonl", jl.encode(enc))
        assert [r["t"] for r in res.records] == ["naïve ☃", "b"], enc
    arr = read_object("x.json", '[{"t": "é"}]'.encode("utf-8-sig"))
    assert arr.records[0]["t"] == "é"
    snips = read_object("x.json", b"\xef\xbb\xbf" + snips_file("GetWeather", "validate"))
    assert (snips.format, len(snips.records)) == ("snips", 100)


def _png(size=(40, 30), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    arr[: size[1] // 2] //= 3
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(png: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _reference_phash(data: bytes) -> str:
    """pHash computed the slow way: explicit DCT-II sums per coefficient."""
    px = np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((32, 32), Image.Resampling.LANCZOS), float)
    n = np.arange(32)
    coef = np.empty((8, 8))
    for u in range(8):
        for v in range(8):
            cu = np.cos(np.pi * u * (2 * n + 1) / 64)
            cv = np.cos(np.pi * v * (2 * n + 1) / 64)
            coef[u, v] = 4 * (cu[:, None] * cv[None, :] * px).sum()
    bits = "".join("1" if c > np.median(coef) else "0" for c in coef.flatten())
    return f"{int(bits, 2):016x}"


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_png_and_jpeg_records():
    png = _png()
    res = read_object("img/a.png", png, modality="image")
    assert res.format == "png" and res.rejections == []
    rec = res.records[0]
    assert rec == {"image_key": "img/a.png", "format": "png", "width": 40, "height": 30, "mode": "RGB",
                   "sha256": hashlib.sha256(png).hexdigest(), "phash": _reference_phash(png),
                   "_source_key": "img/a.png", "_source_line": 1}
    jpg = _jpeg(png)
    rj = read_object("img/a.jpg", jpg, modality="image")
    assert rj.format == "jpeg" and rj.rejections == []
    assert (rj.records[0]["format"], rj.records[0]["width"], rj.records[0]["height"]) == ("jpeg", 40, 30)
    assert rj.records[0]["phash"] == _reference_phash(jpg)
    assert _hamming(rj.records[0]["phash"], rec["phash"]) <= 6  # same picture
    other = read_object("img/b.png", _png(seed=7), modality="image")
    grey = read_object("img/c.png", _grey_gradient_png(), modality="image")
    assert _hamming(grey.records[0]["phash"], rec["phash"]) > 10
    assert other.records[0]["sha256"] != rec["sha256"]


def _grey_gradient_png() -> bytes:
    arr = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)).T.copy()
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, "PNG")
    return buf.getvalue()


def test_png_gzip_in_image_project():
    png = _png()
    res = read_object("img/a.png.gz", gzip.compress(png), modality="image")
    assert res.format == "png+gzip"
    assert res.records[0]["sha256"] == hashlib.sha256(png).hexdigest()
    assert res.records[0]["mode"] == "RGB"


# ---------------------------------------------------------------------------------------------- one test per reason
def test_unknown_format():
    for key, body in (("blob.bin", bytes(range(256)) * 4), ("notes", b"just some words\nand more\n")):
        res = read_object(key, body)
        assert (res.format, reasons(res)) == (None, [("unknown_format", None, True)])


def test_empty_object():
    cases = [("a.jsonl", b""), ("a.jsonl", b" \r\n\t\n"), ("a.csv", b"text,label\r\n"), ("a.json", b"[ ]"),
             ("p/raw/folder/", b""), ("a.jsonl.gz", gzip.compress(b"")), ("x.png", b"")]
    for key, body in cases:
        res = read_object(key, body)
        assert reasons(res) == [("empty_object", None, True)], key
    assert read_object("a.csv", b"text,label\r\n").format == "csv"
    assert reasons(read_object("i/", b"", modality="image")) == [("empty_object", None, True)]


def test_corrupt_gzip():
    gz = gzip.compress(b'{"a": 1}\n' * 1000)
    for body in (gz[: len(gz) // 2], gz[:12], b"\x1f\x8b" + b"garbage" * 10, gz + b"trailing junk"):
        res = read_object("a.jsonl.gz", body)
        assert reasons(res) == [("corrupt_gzip", None, True)]
        assert res.records == []


def test_gzip_bomb_bounded_by_max_decompressed_bytes():
    bomb = gzip.compress(b"\n" * 20_000_000)  # ~20 kB that inflates to 20 MB
    res = read_object("bomb.jsonl.gz", bomb, max_decompressed_bytes=1_000_000)
    assert reasons(res) == [("oversized_record", None, True)]
    assert "max_decompressed_bytes=1000000" in res.rejections[0].detail


def test_bad_encoding_line_level_and_whole_document():
    body = b'{"t": "ok"}\n{"t": "caf\xe9"}\n{"t": "fine"}\n'
    res = read_object("l.jsonl", body)
    assert [r["t"] for r in res.records] == ["ok", "fine"]
    assert reasons(res) == [("bad_encoding", 2, False)]
    assert res.rejections[0].raw == b'{"t": "caf\xe9"}'
    arr = read_object("a.json", b'[{"t": "caf\xe9"}]')
    assert reasons(arr) == [("bad_encoding", None, True)] and arr.format == "json_array"
    rows = read_object("r.csv", b"t,l\nok,a\ncaf\xe9,b\nfine,c\n")
    assert [r["t"] for r in rows.records] == ["ok", "fine"]
    assert reasons(rows) == [("bad_encoding", 3, False)]
    bad16 = read_object("x.jsonl", b"\xff\xfe" + '{"a": 1}'.encode("utf-16-le") + b"\x00\xd8")  # lone surrogate
    assert reasons(bad16) == [("bad_encoding", None, True)]


def test_invalid_json():
    res = read_object("l.jsonl", b'{"a": 1}\n{bad}\n{"a": NaN}\n{"a": 2} trailing\n')
    assert reasons(res) == [("invalid_json", 2, False), ("invalid_json", 3, False), ("invalid_json", 4, False)]
    assert res.rejections[0].raw == b"{bad}"
    arr = read_object("a.json", b'[{"a": 1}, {"b": 1,}, {"c": 2}]')
    assert reasons(arr) == [("invalid_json", None, True)]
    arr_nan = read_object("a.json", b'[{"a": 1}, {"b": NaN}]')
    assert reasons(arr_nan) == [("invalid_json", 2, False)] and len(arr_nan.records) == 1


def test_truncated_json():
    res = read_object("l.jsonl", b'{"a": 1}\n{"a": 2, "b": "unterminat')
    assert [r["a"] for r in res.records] == [1]
    assert reasons(res) == [("truncated_json", 2, False)]
    assert res.rejections[0].raw == b'{"a": 2, "b": "unterminat'
    arr = read_object("a.json", b'[{"a": 1}, {"a": 2}, {"a": 3, "b": [1, 2')
    assert [r["a"] for r in arr.records] == [1, 2]
    assert reasons(arr) == [("truncated_json", 3, False)]
    cut_after = read_object("a.json", b'[{"a": 1},\n')
    assert reasons(cut_after) == [("truncated_json", 2, False)] and len(cut_after.records) == 1
    pretty = orjson.dumps({"PlayMusic": [{"data": [{"text": "x"}]}] * 5}, option=orjson.OPT_INDENT_2)
    cut = read_object("s.json", pretty[: len(pretty) // 2])
    assert reasons(cut) == [("truncated_json", None, True)]


def test_not_an_object():
    res = read_object("l.jsonl", b'[1, 2]\n"str"\n{"ok": true}\n3\n')
    assert reasons(res) == [("not_an_object", 1, False), ("not_an_object", 2, False), ("not_an_object", 4, False)]
    assert res.records == [{"ok": True, "_source_key": "l.jsonl", "_source_line": 3}]
    arr = read_object("a.json", b'[{"a": 1}, 3, [4], {"b": 2}]')
    assert reasons(arr) == [("not_an_object", 2, False), ("not_an_object", 3, False)]
    assert arr.rejections[0].raw == b"3"


def test_too_deeply_nested():
    bomb = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    res = read_object("d.jsonl", b'{"ok": 1}\n' + bomb + b"\n" + b'{"ok": 2}\n')
    assert [r["ok"] for r in res.records] == [1, 2]
    assert reasons(res) == [("too_deeply_nested", 2, False)]
    assert len(res.rejections[0].raw) == 64 * 1024
    assert reasons(read_object("d.json", b"[" * 100_000 + b"]" * 100_000)) == [("too_deeply_nested", None, True)]
    assert reasons(read_object("d", b"[" * 100_000)) == [("too_deeply_nested", None, True)]  # unclosed
    # exactly max_depth is fine, one more is not; brackets inside strings do not count
    assert read_object("d.jsonl", b'{"a": [[1]]}', max_depth=3).records[0]["a"] == [[1]]
    assert reasons(read_object("d.jsonl", b'{"a": [[[1]]]}', max_depth=3)) == [("too_deeply_nested", 1, False)]
    s = read_object("d.jsonl", b'{"a": "[[[[[[{{{{{{ \\" [[[[[["}', max_depth=3)
    assert s.records[0]["a"] == '[[[[[[{{{{{{ " [[[[[['


def test_oversized_record_50mb_line_rejected_cheaply():
    big = b'{"text": "' + b"x" * (50 * 2**20) + b'"}'
    body = b'{"a": 1}\n' + big + b'\n{"a": 2}\n'
    res = read_object("big.jsonl", body, max_record_bytes=4096)
    assert [r["a"] for r in res.records] == [1, 2]
    assert reasons(res) == [("oversized_record", 2, False)]
    assert res.rejections[0].raw == big[: 64 * 1024]
    assert str(len(big)) in res.rejections[0].detail
    csv_res = read_object("big.csv", b"a,b\n1,2\n" + b"3," + b"y" * 10_000 + b"\n4,5\n", max_record_bytes=1000)
    assert [r["a"] for r in csv_res.records] == ["1", "4"]
    assert reasons(csv_res) == [("oversized_record", 3, False)]
    arr = read_object("a.json", orjson.dumps([{"a": 1}, {"t": "z" * 5000}, {"a": 3}]), max_record_bytes=1000)
    assert reasons(arr) == [("oversized_record", 2, False)] and [r["a"] for r in arr.records] == [1, 3]


def test_malformed_csv_rows():
    body = (b"id,text\n"          # 1
            b"1,ok\n"             # 2
            b"2,too,many\n"       # 3
            b"3\n"                # 4
            b"4,a\x00b\n"         # 5 NUL byte
            b'5,"never closed\n'  # 6 unterminated quote
            b"6,after\n")         # 7
    res = read_object("m.csv", body)
    assert [r["id"] for r in res.records] == ["1", "6"]
    assert reasons(res) == [("malformed_csv_row", 3, False), ("malformed_csv_row", 4, False),
                            ("malformed_csv_row", 5, False), ("malformed_csv_row", 6, False)]
    assert res.rejections[2].raw == b"4,a\x00b"
    assert res.rejections[3].raw == b'5,"never closed'
    assert "unterminated" in res.rejections[3].detail


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def test_truncated_image():
    png = _png()
    for cut in (20, 60, len(png) // 2, len(png) - 5):
        assert reasons(read_object("t.png", png[:cut], modality="image")) == [("truncated_image", None, True)], cut
    jpg = _jpeg(png)
    for cut in (30, len(jpg) // 2):
        res = read_object("t.jpg", jpg[:cut], modality="image")
        assert (res.format, reasons(res)) == ("jpeg", [("truncated_image", None, True)]), cut


def test_image_too_large_from_header_only():
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + _chunk(b"IEND", b""))
    res = read_object("bomb.png", bomb, modality="image")  # refused from the header: nothing is decoded
    assert reasons(res) == [("image_too_large", None, True)]
    assert "100000x100000" in res.rejections[0].detail
    small = read_object("s.png", _png((40, 30)), modality="image", max_image_pixels=1000)
    assert reasons(small) == [("image_too_large", None, True)]


def test_corrupt_image():
    png = _png()
    ihdr = png[8:33]
    broken_idat = b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", b"not zlib data at all" * 5) + _chunk(b"IEND", b"")
    assert reasons(read_object("c.png", broken_idat, modality="image")) == [("corrupt_image", None, True)]
    bad_crc = bytearray(png)
    bad_crc[40] ^= 0xFF  # inside the first IDAT chunk
    assert reasons(read_object("c.png", bytes(bad_crc), modality="image")) == [("corrupt_image", None, True)]
    no_ihdr = b"\x89PNG\r\n\x1a\n" + _chunk(b"IDAT", b"x" * 20) + _chunk(b"IEND", b"")
    assert reasons(read_object("c.png", no_ihdr, modality="image")) == [("corrupt_image", None, True)]
    assert reasons(read_object("c.jpg", b"\xff\xd8\xff\x00garbage-garbage", modality="image")) == [
        ("corrupt_image", None, True)]


def test_unsupported_for_project():
    res = read_object("a.png", _png())
    assert (res.format, reasons(res)) == ("png", [("unsupported_for_project", None, True)])
    assert reasons(read_object("a.jpg", _jpeg(_png()))) == [("unsupported_for_project", None, True)]
    for key, body in (("a.jsonl", b'{"a": 1}\n'), ("a.csv", b"a,b\n1,2\n"), ("notes", b"plain words")):
        assert reasons(read_object(key, body, modality="image")) == [("unsupported_for_project", None, True)], key
    assert reasons(read_object("a.bin", b"\x00\x01\x02\x03", modality="image")) == [("unknown_format", None, True)]


# ---------------------------------------------------------------------------------------------- counting contract
def test_counting_contract_on_mixed_jsonl():
    lines = [
        b'{"a": 1}', b"", b'{"a": 2}\r', b"[1]", b"{bad", b"   ", b'{"a": "caf\xe9"}',
        b'{"a": ' + b"[" * 50 + b"]" * 50 + b"}",
        b'{"t": "' + b"x" * 3000 + b'"}', b'{"a": 3}', b"\xef\xbb\xbf{\"a\": 4}", b'"s"', b'{"a": 5',
    ]
    res = read_object("mix.jsonl", b"\n".join(lines), max_record_bytes=2048)
    assert_invariants(res)
    non_blank = [i for i, ln in enumerate(lines, 1) if ln.strip()]
    seen = [r["_source_line"] for r in res.records] + [r.source_line for r in res.rejections]
    assert sorted(seen) == non_blank  # each non-blank line exactly once
    assert [r["a"] for r in res.records] == [1, 2, 3, 4]
    assert sorted(reasons(res), key=lambda x: x[1]) == [
        ("not_an_object", 4, False), ("invalid_json", 5, False), ("bad_encoding", 7, False),
        ("too_deeply_nested", 8, False), ("oversized_record", 9, False), ("not_an_object", 12, False),
        ("truncated_json", 13, False)]


def test_counting_contract_on_mixed_csv():
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["id", "text"])
    rows = [[str(i), f"text, number {i}\nwith a second line" if i % 7 == 0 else f"t{i}"] for i in range(1, 60)]
    for r in rows:
        w.writerow(r)
    body = out.getvalue().encode() + b"60,x,extra\r\n61,\"open\r\n"
    res = read_object("mix.csv", body)
    assert_invariants(res)
    assert len(res.records) == 59 and [r["id"] for r in res.records] == [str(i) for i in range(1, 60)]
    assert reasons(res) == [("malformed_csv_row", 69, False), ("malformed_csv_row", 70, False)]
    assert res.records[6] == {"id": "7", "text": "text, number 7\nwith a second line", "_source_key": "mix.csv",
                              "_source_line": 8}
    assert res.records[7]["_source_line"] == 10  # row 7 took two physical lines


def test_never_raises_on_mutated_inputs():
    rng = random.Random(1234)
    seeds = [
        ("a.jsonl", b'{"a": 1, "b": [1, {"c": "d"}]}\n{"x": "y"}\n'),
        ("a.csv", b'id,text\r\n1,"a, b"\r\n2,c\r\n'),
        ("a.json", b'[{"a": 1}, {"b": [2, 3]}]'),
        ("s.json", orjson.dumps({"I": [{"data": [{"text": "a "}, {"text": "b", "entity": "e"}]}]},
                                option=orjson.OPT_INDENT_2)),
        ("a.jsonl.gz", gzip.compress(b'{"a": 1}\n{"b": 2}\n')),
        ("i.png", _png((8, 8))),
    ]
    for key, seed in seeds:
        for _ in range(60):
            body = bytearray(seed)
            for _ in range(rng.randint(1, 6)):
                op = rng.random()
                pos = rng.randrange(len(body) or 1)
                if op < 0.4 and body:
                    body[pos] = rng.randrange(256)
                elif op < 0.7:
                    body.insert(pos, rng.choice(b'{}[]",\n\r\x00\xff\xed\\'))
                elif body:
                    del body[pos: pos + rng.randint(1, 8)]
            for modality in ("text", "image"):
                assert_invariants(read_object(key, bytes(body), modality=modality))


def test_minified_snips_larger_than_max_record_bytes():
    text = snips_file("PlayMusic").decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass").decode("utf-16")
    minified = orjson.dumps(orjson.loads(text))
    assert b"\n" not in minified and len(minified) > 65536
    res = read_object("m.json", minified, max_record_bytes=65536)
    assert (res.format, len(res.records), res.rejections) == ("snips", 2000, [])
    cut = read_object("m.json", minified[:-100], max_record_bytes=65536)
    assert reasons(cut) == [("truncated_json", None, True)]
