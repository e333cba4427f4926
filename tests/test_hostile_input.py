"""Hostile and broken input through the whole ingest stage (real S3 on moto, the project's Great Expectations
contract): each kind goes in as one object of its own run, beside a clean object of the same run. Every run must
end normally, its manifest must reconcile (read = staged + duplicates + quarantined), and the hostile part must
come out as the table says: quarantined with its reason (the record, or the whole object), or staged with its
content intact (text that is merely odd, such as HTML or formula strings, is data: it is escaped where it is
shown, see test_agreement_report). The fixture prints the table (`pytest -s`)."""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import json
import struct
import unicodedata
import zlib

import pytest

from conftest import print_table
from labelops.storage import S3Store
from test_ingest_pipeline import ingest, jsonl, project_at, put, staged_rows

GOOD = ["How do I locate my card?", "My card has not arrived yet.", "Can I top up with a cheque?",
        "Why was I charged a fee for the transfer?", "I want to close my account please",
        "What currencies do you support for exchange?", "Is there a fee for topping up by card?",
        "How long does a transfer from abroad take?", "My PIN is blocked, what now?",
        "Can I get a virtual card for online shopping?", "Where can I see my card's PIN?",
        "The exchange rate on my statement looks wrong", "How do I change my address?",
        "I was charged twice for the same purchase", "Can I cancel a transfer I just made?",
        "Why is my balance not updated after a deposit?", "My contactless payments stopped working",
        "Is my account frozen?", "How can I verify my identity?", "Which countries can I send money to?"]
HTML = '<script>alert("x")</script><img src=x onerror=alert(1)> my card'


def png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def line(**fields) -> bytes:
    return (json.dumps(fields, ensure_ascii=False) + "\n").encode()


# kind -> (object name, body, expected): ("record", reason) one record quarantined with that reason,
# ("object", reason) the whole object quarantined, ("staged", texts) staged with exactly these texts.
CASES = {
    "UTF-8 BOM": ("bom.jsonl", codecs.BOM_UTF8 + line(text="BOM first line here"), ("staged", ["BOM first line here"])),
    "UTF-16 with BOM": ("u16.jsonl", codecs.BOM_UTF16_LE + line(text="sixteen bits here").decode().encode("utf-16-le"),
                        ("staged", ["sixteen bits here"])),
    "CRLF line ends": ("crlf.jsonl", b'{"text": "windows line one"}\r\n{"text": "windows line two"}\r\n',
                       ("staged", ["windows line one", "windows line two"])),
    "Latin-1 bytes in UTF-8": ("latin1.jsonl", '{"text": "caf\xe9 au lait"}\n'.encode("latin-1"),
                               ("record", "bad_encoding")),
    "control characters": ("ctrl.jsonl", line(text="bell\x07 and \x1b[31mescape"),
                           ("staged", ["bell and [31mescape"])),
    "NUL byte in a line": ("nul.jsonl", b'{"text": "nul \x00 inside"}\n', ("record", "invalid_json")),
    "escaped NUL in text": ("nul2.jsonl", line(text="nul \u0000 escaped"), ("staged", ["nul escaped"])),
    "truncated gzip": ("cut.jsonl.gz", gzip.compress(line(text="never complete") * 50)[:40],
                       ("object", "corrupt_gzip")),
    "50 MB single line": ("big.jsonl", b'{"text": "' + b"x" * (50 * 2**20) + b'"}\n', ("record", "oversized_record")),
    "deeply nested JSON": ("deep.jsonl", b'{"text": "deep", "a": ' + b"[" * 500 + b"]" * 500 + b"}\n",
                           ("record", "too_deeply_nested")),
    "invalid JSON line": ("bad.jsonl", b'{"text": "trailing comma", }\n', ("record", "invalid_json")),
    "unterminated string": ("open.jsonl", b'{"text": "unterminated\n', ("record", "truncated_json")),
    # the complete first element is kept, the cut tail is quarantined
    "truncated JSON array": ("cut.json", b'[{"text": "first of many"}, {"text": "sec',
                             ("record", "truncated_json", ["first of many"])),
    "array of non-objects": ("nums.json", b"[1, 2, 3]", ("record", "not_an_object")),
    "text is a number": ("num.jsonl", line(text=12345), ("record", "contract.text")),
    "text missing": ("missing.jsonl", line(body="where is the text"), ("record", "contract.text")),
    "text null": ("null.jsonl", line(text=None), ("record", "contract.text")),
    "text too short": ("short.jsonl", line(text="a"), ("record", "contract.text")),
    "text whitespace only": ("blank.jsonl", line(text=" \t \u00a0 "), ("record", "contract.text")),
    "text too long": ("long.jsonl", line(text="word " * 200), ("record", "contract.text")),
    "source_id with spaces": ("sid.jsonl", line(text="valid text here", source_id="id with spaces"),
                              ("record", "contract.source_id")),
    "HTML and script": ("html.jsonl", line(text=HTML), ("staged", [HTML])),
    "formula injection in CSV": ("formula.csv", b'text\n"=HYPERLINK(""http://evil"",""x"")"\n+cmd|calc\n@SUM(A1)\n',
                                 ("staged", ['=HYPERLINK("http://evil","x")', "+cmd|calc", "@SUM(A1)"])),
    "malformed CSV row": ("rows.csv", b'text,source_id\n"fine row here",a1\n"broken, quote\n',
                          ("record", "malformed_csv_row", ["fine row here"])),
    "CSV with BOM and CRLF": ("bom.csv", codecs.BOM_UTF8 + b"text\r\nexcel wrote this\r\n",
                              ("staged", ["excel wrote this"])),
    "key with ..": ("dots/../up.jsonl", line(text="dot dot in the key"), ("staged", ["dot dot in the key"])),
    "odd characters in key": ("we ird#%?&=+ k\u00e9y \u202e.jsonl", line(text="odd key object"),
                              ("staged", ["odd key object"])),
    "zero-byte object": ("empty.jsonl", b"", ("object", "empty_object")),
    "folder marker": ("folder/", b"", ("object", "empty_object")),
    "truncated PNG in a text project": ("cut.png", png_header(20, 20)[:40], ("object", "unsupported_for_project")),
    "decompression-bomb PNG in a text project": ("bomb.png", png_header(100_000, 100_000),
                                                ("object", "unsupported_for_project")),
    # 64 MB of zeros in 64 kB, against ingest.max_decompressed_bytes set to 16 MB for this case
    "gzip bomb": ("bomb.jsonl.gz", gzip.compress(b"0" * (64 << 20), compresslevel=9), ("object", "oversized_record")),
    "unknown binary": ("blob.bin", bytes(range(256)) * 8, ("object", "unknown_format")),
    "decomposed Unicode (NFD)": ("nfd.jsonl", line(text=unicodedata.normalize("NFD", "Zoë paid in €, déjà vu")),
                                 ("staged", ["Zoë paid in €, déjà vu"])),
    "right-to-left override": ("rtl.jsonl", line(text="invoice \u202egpj.exe"), ("staged", ["invoice gpj.exe"])),
    "lone surrogate escape": ("sur.jsonl", b'{"text": "half \\ud800 pair"}\n', ("record", "invalid_json")),
    "duplicate JSON keys": ("dupkey.jsonl", b'{"text": "first value", "text": "second value"}\n',
                            ("staged", ["second value"])),
}


@pytest.fixture(scope="module")
def outcomes(s3):
    """kind -> (expected, manifest, quarantined records, quarantined objects, staged texts of the hostile part)."""
    store = S3Store(s3, "labelops")
    results = {}
    for n, (kind, (name, body, expected)) in enumerate(CASES.items()):
        project = project_at()
        if kind == "gzip bomb":
            spec = project.spec.model_copy(update={"ingest": project.spec.ingest.model_copy(
                update={"max_decompressed_bytes": 16 << 20})})
            project = dataclasses.replace(project, spec=spec)
        put(s3, project, "clean.jsonl", jsonl({"text": f"{t} ({n})"} for t in GOOD))
        put(s3, project, name, body)
        manifest = ingest(s3, project, f"hostile{n}")  # reconciles the manifest (test_ingest_pipeline.reconcile)
        base = project.spec.storage.project_prefix
        records = _jsonl_or_empty(store, f"{base}quarantine/run=hostile{n}/records.jsonl")
        objects = _jsonl_or_empty(store, f"{base}quarantine/run=hostile{n}/objects.jsonl")
        staged = [r["text"] for r in staged_rows(s3, manifest)] if manifest["records_staged"] else []
        hostile = [t for t in staged if not any(t == f"{g} ({n})" for g in GOOD)]
        results[kind] = (expected, manifest, records, objects, hostile)
    print_table("kind", {"expected": "expected", "outcome": "outcome", "read": "read", "staged": "staged",
                         "quarantined": "quarantined"}, {kind: table_row(*r) for kind, r in results.items()})
    return results


def table_row(expected, m: dict, records: list[dict], objects: list[dict], hostile: list[str]) -> dict:
    what, want = expected[0], expected[1]
    got = " ".join((["staged"] if hostile else []) + sorted({r["reason"] for r in records}
                                                           | {"object:" + o["reason"] for o in objects}))
    return {"expected": f"{what}: {want if what != 'staged' else len(want)}", "outcome": got or "-",
            "read": m["records_read"], "staged": m["records_staged"],
            "quarantined": f"{sum(m['quarantined'].values())} + {m['objects_quarantined']} objects"}


def _jsonl_or_empty(store: S3Store, key: str) -> list[dict]:
    body = store.get_or_none(key)
    return [json.loads(x) for x in body.decode().splitlines() if x.strip()] if body else []


def test_at_least_thirty_kinds():
    assert len(CASES) >= 30


@pytest.mark.parametrize("kind", list(CASES))
def test_hostile_input_is_quarantined_with_its_reason_or_staged_intact(outcomes, kind):
    (what, expected, *salvaged), manifest, records, objects, hostile = outcomes[kind]
    # the clean object of the run is staged whatever happened to the hostile one
    assert manifest["records_staged"] - len(hostile) == len(GOOD), (kind, manifest)
    if what == "staged":
        assert sorted(hostile) == sorted(expected) and not records and not objects, (hostile, records, objects)
    elif what == "record":
        assert records and all(r["reason"].startswith(expected) for r in records), records
        assert hostile == (salvaged[0] if salvaged else []) and not objects
        assert all(r["source_key"].endswith(CASES[kind][0]) for r in records)
    else:
        assert [o["reason"] for o in objects] == [expected] and not hostile, (objects, records)
        assert objects[0]["source_key"].endswith(CASES[kind][0])
