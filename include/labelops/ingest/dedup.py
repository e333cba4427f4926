"""Deduplication for the ingest stage: text normalisation, stable record ids, and three persistent indexes.

Pure Python + numpy (+ xxhash); no Airflow import, so it is cheap to import and to test.

Normalisation and ids
---------------------
`normalise_text` is the one canonical form records are staged in, and `record_id` (xxh3-128 of its UTF-8 bytes,
32 hex digits) is the stable id of a record: the same text gives the same id on every run and machine
(xxh3 is specified byte for byte; `unicodedata` is the only version-dependent piece: a Python upgrade that brings a
newer Unicode database could change the NFC form of newly assigned characters, nothing else).

What `normalise_text` does, in this order (each step can be turned off where it has a flag):

1. lone surrogates (invalid in UTF-8; they come from broken JSON escapes) become U+FFFD, always;
2. ``strip_control``: control characters (category Cc) that are *not* whitespace (NUL, BEL, ESC, DEL, the C1
   controls ...) are removed, and so are the invisible format characters that only add noise: soft hyphen U+00AD,
   Mongolian vowel separator U+180E, zero-width space U+200B, LRM/RLM U+200E/U+200F, the bidi embeddings,
   overrides and isolates U+202A-U+202E / U+2066-U+2069, word joiner and invisible operators U+2060-U+2064, and
   the BOM / zero-width no-break space U+FEFF. The whitespace controls (``\\t \\n \\v \\f \\r``, U+001C-U+001F,
   U+0085) are *not* removed: they are whitespace and are handled by step 5. **Kept** on purpose: the format
   characters that carry meaning, i.e. ZWNJ U+200C and ZWJ U+200D (emoji ZWJ sequences, Indic and Persian
   scripts), the emoji tag characters U+E0020-U+E007F (subdivision flags), the Arabic prepended marks
   (U+0600-U+0605, U+06DD, U+08E2) and every other Cf character not listed above;
3. Unicode normalisation to ``unicode_form`` (NFC by default; NFKC also folds compatibility characters such as
   full-width letters and ligatures); NFD input and NFC input give the same text, hence the same id;
4. ``lowercase``: ``str.lower()`` (off by default: case is kept, it is data), then the normal form again;
5. ``collapse_whitespace``: every run of whitespace (``str.isspace``: spaces, tabs, newlines, NBSP, the
   ideographic space, U+2028/U+2029 ...) becomes one ASCII space and the ends are stripped. With it off, the
   text's whitespace is left exactly as it is (ends included).

Punctuation, symbols, emoji, digits, accents and case are all kept: those are content. Near-duplicate matching
(below) is where case and punctuation stop mattering.

Indexes
-------
All three indexes answer ``check_and_add(batch)`` in batch order, with the same result as adding the records one
at a time: a record is a duplicate if it matches something *in the index*, i.e. the history or an earlier record
of the same call that was itself kept (added). A duplicate is never added, so the id returned for a duplicate is
always the id of a kept record, and the results do not depend on how the records are split into calls.
Persistence is by **segments**, each a small self-describing container: magic, JSON header (kind, version,
parameters, the segment's first record number ``base``, array table), the raw little-endian numpy arrays, and
an xxh3-64 checksum of everything before it (a truncated or corrupted object is refused, not half-loaded).
``open(segments)`` builds an index over the segments of earlier runs (oldest first) *without copying them*: its
arrays are views of the given buffers, probed in place. What is added afterwards lives in small growable arrays;
``write_segment(write, merge=k)`` streams one new segment holding those records plus the last k persisted
segments (``tail_to_merge`` picks k so that segment sizes grow geometrically: O(log n) segments, each record
rewritten O(log n) times over the project's life). So a run costs memory for the history it probes (the index
itself) plus its own batch, and never builds or uploads a copy of the whole history. ``to_bytes`` /
``from_bytes`` are the one-segment case (the whole index).
Memory is linear in the number of indexed records, in numpy arrays (no Python object per record); what a batch
adds is kept as sorted runs merged geometrically (an LSM), so adding a small batch to a big index costs
O(batch * log(index)) and not a rewrite of the index.

`ExactIndex`: every content digest ever staged, 16 bytes per record.

`NearDuplicateIndex`: MinHash LSH with exact Jaccard verification, for short texts (utterances), and optionally
one-word edits (below):

* features: the text is case-folded, apostrophes are dropped (``don't`` = ``dont``), every run of punctuation
  (category P*), whitespace or control characters becomes one space; symbols (``$ € + %``), emoji, digits and
  letters with their marks are kept. Shingles are then ``charK`` (K consecutive characters of that string,
  spaces included; default ``char3``) or ``wordK`` (K consecutive words). A text shorter than K characters /
  words gets one shingle of its whole length, so very short texts still match (``hi`` vs ``Hi!``). A text with
  no features at all (empty, or only punctuation / whitespace) is never matched and never added: its result is
  None. Why ``char3``: on Banking77 utterances with planted variants it keeps the most one-edit variants above
  0.85 Jaccard (typo 71%, adjacent word swap 74%, word inserted 52% / removed 58%; case and punctuation
  variants are identical in feature space), where ``char5`` keeps 29/10/23/25% and ``word3`` 4/1/10/10%;
  ``word1`` (bag of words) is order-blind and keeps only 26% of typos.
* each shingle is a 32-bit hash (polynomial hash of the code points or word hashes, finalised with murmur3's
  fmix64). The whole pipeline is vectorised over a batch: the texts of a chunk (16,384) are joined into one
  code point array, classified through a lookup table, and shingled with shifted numpy arithmetic, with no
  Python work per record or per shingle.
* signature: ``bands * rows <= num_perm`` (default 128) min-hashes under the permutations ``h_i(y) = a_i * y + b_i mod 2**16``
  (a_i odd, a_i and b_i derived from ``seed`` with xxhash, so they are the same on every machine and numpy
  version) of one 16-bit half y of the shingle hash (the low half for the first half of the permutations, the
  high half for the others). 16-bit lanes double numpy's SIMD width; two different shingles agreeing on a
  16-bit half only add a ~0.1% chance per permutation of a spurious agreement, which can only add a candidate,
  never lose one, and candidates are verified exactly. Records are ordered by decreasing shingle count and
  processed by shingle position: for positions t..t+15 the records that have one are a prefix of that order,
  so one numpy ``multiply`` / ``add`` / ``minimum.reduce`` covers 64 permutations x 16 positions x 2048
  records at a time, with almost no padding (a record short of a position repeats its last shingle, which
  leaves the minimum unchanged).
* banding: b bands of r rows, each band hashed to a 32-bit key. Candidates are records sharing a band key, found
  by sorting band keys (within the batch) and ``searchsorted`` (against the history), never by per-record dicts.
  Because every candidate is verified exactly, a false candidate costs only time, a missed one costs recall; so
  (b, r) is chosen on the S-curve ``P(J) = 1 - (1 - J**r)**b`` as the *largest* r (fewest false candidates)
  whose ``b = num_perm // r`` still gives ``P(threshold) >= 0.99``. For threshold 0.85 and 128 permutations:
  b=16, r=8: P(0.85)=0.994, P(0.9)=0.9999, P(0.95)=1.0, and P(0.8)=0.95, P(0.7)=0.61, P(0.5)=0.061,
  P(0.3)=0.001. (datasketch's default, which has no verification step and weighs misses and false candidates
  equally, picks b=8, r=16 for the same threshold: P(0.85)=0.46, P(0.9)=0.81.)
* verification: the exact Jaccard similarity of the two shingle-hash sets (kept per record as sorted uint32),
  ``>= threshold`` (1e-9 tolerance), computed for all candidate pairs at once (pairs bucketed by size, each
  bucket a matrix of the two sets per row, row-sorted, distinct values counted). A length filter
  (``min/max >= threshold``) drops impossible pairs first. The best match is returned (highest Jaccard; ties:
  the earliest record). `NearDuplicateIndex.similarities` gives the same exact Jaccard for any pair of texts.
* records whose feature sets are identical within a batch (e.g. case/punctuation variants) are collapsed before
  candidate generation, and a band bucket is expanded to at most ``_MAX_BUCKET`` (1000) earlier members: a
  safety valve against pathological inputs (the largest bucket of the 1M-record benchmark corpus holds 865).
* threads: feature/MinHash chunks, bands and verification buckets run on ``LABELOPS_DEDUP_THREADS`` threads
  (default min(2, cpu count)); numpy releases the GIL in those loops. Results do not depend on the thread count.
* persisted: parameters (threshold, num_perm, shingle, seed, bands, rows, word_edits), the shingle sets, the ids
  and the sorted band keys: about 4 * shingles + 12 + 8 * bands + 8 + len(id) bytes per record, ~410 B for the
  benchmark's utterances (75 characters on average, char3, 11-character ids); with word edits also the words
  and edit keys (below): ~680 B.

Word edits (``word_edits=True``; the projects' config turns it on with ``thresholds.near_duplicate_word_edits``):
char-3 Jaccard misses one-word edits of short utterances (a word inserted into a 30-character question leaves
J ~0.75; on the benchmark corpus only 84% of the planted one-edit copies reach 0.85: 68% of inserted words, 74%
of removed ones, 84% of typos and swaps). So a text is also a near duplicate of a kept one when their word
sequences (the feature form above split on spaces; the shorter one has 3 to 64 words) differ by exactly one of:

* one word inserted or removed;
* two neighbouring words swapped;
* one word replaced by a spelling variant of it: both words alphabetic (letters and marks), the longer one at
  least 4 letters, lengths within one, letter sets within 2 letters (a replaced letter changes at most 2, a
  dropped or added one at most 1, two swapped ones none), and the two texts' char-3 sets within 8 shingles (what
  one such edit can change). So "fiml"/"film" or "ponits"/"points" pass and "jazz"/"rock", "card"/"cash",
  "is"/"it" and "1234"/"1235" do not: a different word, a short word or a number is a different text.

The best match is still the one with the highest Jaccard. Candidates come from *edit keys*, not from MinHash: a
32-bit key of each word sequence and one of it with word j deleted, for each j (two sequences one edit apart share
a key: the longer one without the inserted word is the shorter one; a replaced word, or either of two swapped
ones, deleted from both gives the same sequence). The keys are polynomial hashes over 32-bit word hashes,
computed for all words at once from prefix sums (no Python per word), kept as one more sorted table (probed
with ``searchsorted``, merged like the bands); candidates are verified by comparing the words (common prefix and
suffix, vectorised) and, for a replaced word, its length, letters mask and the shingle sets. Per stored record:
its words (hash, length/alphabetic byte, 32-bit letter mask: 9 B per word) and its keys (8 B each): ~270 B more
for the benchmark's utterances. With word edits, texts are collapsed as identical only when their words are
identical too (two texts can share a shingle set with different words, and the rule reads the words). The
setting is stored with the history and cannot change under it: segments written without it (or before it
existed) open without it, and one history has one rule.

Measured (bench/bench_dedup.py, 2 cores, 1M-record corpus of Banking77/SNIPS-based utterances with planted
duplicates, 913,551 records after exact dedup): with word edits, the near-duplicate step takes 19.9 s (46k
records/s, peak 1.98 GB) with recall 0.971 on *all* planted near-duplicate pairs (1.000 on those with J >= 0.85
whose original was kept), 0 false positives (every flag passes the rule), and 91,567 flags that are not planted
copies (chance near duplicates among the base records; 78,042 with Jaccard alone); the Jaccard rule alone takes
11.9 s (77k records/s, 1.15 GB) with recall 0.842 on all planted pairs. datasketch's MinHashLSH with default
settings does ~6.6k records/s with recall 0.807 on all planted pairs (100k records).

`ImageHashIndex`: 64-bit perceptual hashes within a Hamming distance (default 6), by multi-index hashing: the
hash is cut into 4 blocks of 16 bits; two hashes within distance d have (pigeonhole) some block within distance
``d // 4`` of each other, so each block is probed with every value within that distance (17 probes per block for
d <= 7) in sorted block tables, and candidates are verified with a popcount. Best match: smallest distance, ties
earliest. Hashes may be given signed (-2**63 ..) or unsigned; they are taken modulo 2**64. Cost grows with
(images in the index) / 2**16 chance block matches per probe: ~2.5 s for a first batch of 200k random hashes.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import sys
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations

import numpy as np
import xxhash

__all__ = [
    "ExactIndex",
    "ImageHashIndex",
    "NearDuplicateIndex",
    "content_digest",
    "image_record_id",
    "normalise_text",
    "record_id",
]

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_TEXT_CHUNK = 16384  # texts per feature/MinHash chunk (keeps temporaries small enough to be reused)
_MAX_BUCKET = 1000  # at most this many earlier members of one band bucket are candidates for a record
_THREADS = max(1, int(os.environ.get("LABELOPS_DEDUP_THREADS", "0") or 0) or min(2, os.cpu_count() or 1))

# ----------------------------------------------------------------------------------------------------------------
# normalisation and ids

_UNICODE_FORMS = ("NFC", "NFKC", "NFD", "NFKD")
# Cc characters that are not whitespace, and the invisible Cf characters listed in the module docstring.
_CC_NOT_SPACE = "".join(chr(c) for c in range(0xA0) if unicodedata.category(chr(c)) == "Cc" and not chr(c).isspace())
_CF_REMOVED = "\u00ad\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_REMOVE_RE = re.compile("[" + re.escape(_CC_NOT_SPACE) + _CF_REMOVED + "]")
_ASCII_REMOVE_RE = re.compile("[" + re.escape("".join(c for c in _CC_NOT_SPACE if c < "\x80")) + "]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def normalise_text(text: str, *, unicode_form: str = "NFC", collapse_whitespace: bool = True,
                   strip_control: bool = True, lowercase: bool = False) -> str:
    """The canonical form of a text (see the module docstring for exactly what is removed and what is kept)."""
    if not isinstance(text, str):
        raise TypeError(f"normalise_text expects str, got {type(text).__name__}")
    if unicode_form not in _UNICODE_FORMS:
        raise ValueError(f"unicode_form must be one of {_UNICODE_FORMS}, got {unicode_form!r}")
    if text.isascii():  # every Unicode normal form is the identity on ASCII
        if strip_control and _ASCII_REMOVE_RE.search(text):
            text = _ASCII_REMOVE_RE.sub("", text)
        if lowercase:
            text = text.lower()
    else:
        if _SURROGATE_RE.search(text):
            text = _SURROGATE_RE.sub("\ufffd", text)
        if strip_control:
            text = _REMOVE_RE.sub("", text)
        text = unicodedata.normalize(unicode_form, text)
        if lowercase:
            text = unicodedata.normalize(unicode_form, text.lower())
    if collapse_whitespace:
        text = " ".join(text.split())
    return text


def content_digest(normalised: str) -> bytes:
    """16 bytes: xxh3-128 of the UTF-8 bytes of the (normalised) text, big-endian (xxhash's canonical form)."""
    return xxhash.xxh3_128_digest(normalised.encode("utf-8", "surrogatepass"))


def image_record_id(sha256_hex: str) -> str:
    """The stable record id of an image: the first 32 hex digits of the SHA-256 of its bytes."""
    return sha256_hex[:32]


def record_id(normalised: str) -> str:
    """The stable record id: the 32 lowercase hex digits of `content_digest`."""
    return xxhash.xxh3_128_hexdigest(normalised.encode("utf-8", "surrogatepass"))


# ----------------------------------------------------------------------------------------------------------------
# small numpy helpers

_C1, _C2 = _U64(0xFF51AFD7ED558CCD), _U64(0xC4CEB9FE1A85EC53)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser (a bijection with full avalanche) on a uint64 array; returns a new array."""
    x = x ^ (x >> _U64(33))
    x *= _C1
    x ^= x >> _U64(33)
    x *= _C2
    x ^= x >> _U64(33)
    return x


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths) + np.arange(total,
                                                                                               dtype=np.int64)


def _param(seed: int, name: str, i: int) -> int:
    """A 64-bit parameter derived from the seed with xxhash (stable forever, unlike numpy's Generator methods)."""
    return xxhash.xxh64_intdigest(f"labelops.dedup/{name}/{i}".encode(), seed=seed)


class _Buf:
    """A growable 1-D numpy array (capacity x1.5), possibly starting from a given array."""

    __slots__ = ("arr", "n")

    def __init__(self, dtype, data: np.ndarray | None = None) -> None:
        self.arr = np.empty(0, dtype) if data is None else data
        self.n = 0 if data is None else len(data)

    def extend(self, x: np.ndarray) -> None:
        need = self.n + len(x)
        if need > len(self.arr) or not self.arr.flags.writeable:
            new = np.empty(max(need, int(len(self.arr) * 1.5) + 1024), self.arr.dtype)
            new[: self.n] = self.arr[: self.n]
            self.arr = new
        self.arr[self.n: need] = x
        self.n = need

    def view(self) -> np.ndarray:
        return self.arr[: self.n]


class _Ids:
    """Record ids as one UTF-8 blob plus offsets (no Python string per stored record)."""

    def __init__(self) -> None:
        self.blob = _Buf(np.uint8)
        self.off = _Buf(np.int64, np.zeros(1, np.int64))

    def __len__(self) -> int:
        return self.off.n - 1

    def extend(self, ids: list[str]) -> None:
        enc = [i.encode("utf-8", "surrogatepass") for i in ids]
        lens = np.fromiter(map(len, enc), np.int64, len(enc))
        self.blob.extend(np.frombuffer(b"".join(enc), np.uint8))
        self.off.extend(self.off.view()[-1] + np.cumsum(lens))

    def get(self, j: int) -> str:
        off = self.off.arr
        return self.blob.arr[off[j]: off[j + 1]].tobytes().decode("utf-8", "surrogatepass")


def _check_ids(ids: list[str], n: int) -> None:
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for {n} items")
    for i in ids:
        if not isinstance(i, str):
            raise TypeError(f"ids must be str, got {type(i).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# persistence container

_MAGIC = b"LABELOPS-DEDUP\x00\x01"


def _pack_stream(write, kind: str, meta: dict, arrays: list[tuple[str, np.dtype, tuple, object]]) -> int:
    """Write the container to ``write`` (a callable taking bytes) without building it in memory: ``arrays`` are
    (name, dtype, shape, chunks) where chunks is a callable returning an iterable of numpy arrays whose bytes,
    concatenated, are the array in C order. Returns the number of bytes written."""
    table, offset, plans = [], 0, []
    for name, dtype, shape, chunks in arrays:
        dt = np.dtype(dtype)
        dt = dt.newbyteorder("<") if dt.byteorder not in ("|", "<") else dt
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        table.append([name, dt.str, list(shape), offset, nbytes])
        plans.append((name, dt, nbytes, chunks))
        offset += nbytes + (-nbytes) % 8
    header = json.dumps({"kind": kind, "version": 1, "meta": meta, "arrays": table}, sort_keys=True).encode()
    header += b" " * ((-len(header) - len(_MAGIC) - 8) % 8)
    digest = xxhash.xxh3_64()
    total = 0

    def out(b) -> None:
        nonlocal total
        if len(b):
            digest.update(b)
            write(b)
            total += len(b)

    out(_MAGIC + len(header).to_bytes(8, "little") + header)
    for name, dt, nbytes, chunks in plans:
        done = 0
        for arr in chunks():
            raw = memoryview(np.ascontiguousarray(np.asarray(arr).astype(dt, copy=False))).cast("B")
            out(raw)
            done += len(raw)
        if done != nbytes:
            raise AssertionError(f"array {name}: wrote {done} bytes, expected {nbytes}")
        out(b"\x00" * ((-nbytes) % 8))
    write(digest.digest())
    return total + 8


def _pack(kind: str, meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    _pack_stream(out.write, kind, meta,
                 [(name, arr.dtype, arr.shape, lambda arr=arr: [arr]) for name, arr in arrays.items()])
    return out.getvalue()


def _unpack(data, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The meta and arrays of a container; the arrays are views of ``data`` (bytes, bytearray or memoryview:
    nothing is copied)."""
    data = memoryview(data).cast("B")
    if len(data) < len(_MAGIC) + 16 or bytes(data[: len(_MAGIC)]) != _MAGIC:
        raise ValueError("not a labelops dedup index (bad magic)")
    if xxhash.xxh3_64_digest(data[:-8]) != bytes(data[-8:]):
        raise ValueError("dedup index checksum mismatch (truncated or corrupted)")
    hlen = int.from_bytes(data[len(_MAGIC): len(_MAGIC) + 8], "little")
    start = len(_MAGIC) + 8
    header = json.loads(bytes(data[start: start + hlen]))
    if header.get("kind") != kind:
        raise ValueError(f"this is a {header.get('kind')!r} index, not {kind!r}")
    if header.get("version") != 1:
        raise ValueError(f"unsupported {kind} index version {header.get('version')!r}")
    base = start + hlen
    arrays = {}
    for name, dtype, shape, offset, nbytes in header["arrays"]:
        dt = np.dtype(dtype)
        count = nbytes // dt.itemsize
        arr = np.frombuffer(data, dtype=dt, count=count, offset=base + offset).reshape(shape)
        arrays[name] = arr.astype(dt.newbyteorder("="), copy=False)
    return header["meta"], arrays


def tail_to_merge(sizes: list[int], new: int, max_segments: int = 16) -> int:
    """How many of the last persisted segments (record counts ``sizes``, oldest first) to merge into the segment a
    run writes for its ``new`` records: the tail while the last one is at most twice the merged size (so segment
    sizes grow geometrically, and there are O(log n) of them), and more if there would be over ``max_segments``.
    Each record is rewritten O(log n) times over the life of a project, never all at once on every run."""
    k, merged = 0, new
    while k < len(sizes) and (sizes[-1 - k] <= 2 * merged or len(sizes) - k + 1 > max_segments):
        merged += sizes[-1 - k]
        k += 1
    return k


class _Frozen:
    """The records of the persisted segments an index was opened from: read-only views of the segments' bytes
    (nothing copied), record numbers ``base .. base + n`` global across the index."""

    __slots__ = ("base", "n", "arrays")

    def __init__(self, base: int, n: int, arrays: dict[str, np.ndarray]) -> None:
        self.base, self.n, self.arrays = base, n, arrays

    def id(self, j: int) -> str:
        off = self.arrays["id_off"]
        return self.arrays["id_blob"][off[j]: off[j + 1]].tobytes().decode("utf-8", "surrogatepass")


class _Segmented:
    """What every index shares about persistence: `to_bytes` / `from_bytes` are the one-segment case of
    `write_segment` / `open` (each index defines those two, and `_frozen`, its persisted parts)."""

    def to_bytes(self) -> bytes:
        """The whole index as one segment."""
        out = io.BytesIO()
        self.write_segment(out.write, merge=len(self._frozen))
        return out.getvalue()

    @classmethod
    def from_bytes(cls, b):
        return cls.open([b])


class _PartsIndex(_Segmented):
    """An index whose records have ids and global record numbers: `_frozen` parts (`_Frozen`, from segments),
    then the records added since opened (`_ids`, numbered from `_live_base`)."""

    def segment_sizes(self) -> list[int]:
        """Records per persisted segment the index was opened from, oldest first."""
        return [p.n for p in self._frozen]

    def live_records(self) -> int:
        """Records added since the index was opened (what `write_segment` adds to the persisted ones)."""
        return len(self._ids)

    def _id(self, j: int) -> str:
        if j >= self._live_base:
            return self._ids.get(j - self._live_base)
        part = self._frozen[int(np.searchsorted([p.base for p in self._frozen], j, side="right")) - 1]
        return part.id(j - part.base)


def _open_parts(segments: list, kind: str, make, shared: tuple[str, ...], count: str, tables: tuple[str, str]):
    """An index (built by ``make(meta)`` from the first segment's meta) over persisted segments, each one a
    `_Frozen` part (views of its bytes, empty ones too, so parts match segments one to one), its key tables frozen
    runs. The segments must agree on the ``shared`` parameters and follow each other (each one's ``base`` is the
    record count before it). None for no segments."""
    idx = first = None
    for seg in segments:
        meta, arrays = _unpack(seg, kind)
        if idx is None:
            idx, first = make(meta), meta
        elif any(meta.get(k) != first.get(k) for k in shared):
            raise ValueError(f"segments of one {kind} must share their parameters ({', '.join(shared)})")
        if meta.get("base", 0) != idx._live_base:
            raise ValueError(f"segment starts at record {meta.get('base', 0)}, expected {idx._live_base}")
        n = len(arrays[count])
        idx._frozen.append(_Frozen(idx._live_base, n, arrays))
        idx._live_base += n
    if idx is not None:
        idx._runs.freeze([(p.arrays[tables[0]], p.arrays[tables[1]]) for p in idx._frozen])
    return idx


def _by_part(bases: list[int], j: np.ndarray):
    """(part number, positions in j) for the global record numbers j, parts starting at ``bases`` (ascending)."""
    if len(bases) == 1:
        yield 0, np.arange(len(j))
        return
    p = np.searchsorted(np.asarray(bases, np.int64), j, side="right") - 1
    for part in np.unique(p).tolist():
        yield part, np.nonzero(p == part)[0]


def _merged_rows(parts: list[tuple[np.ndarray, np.ndarray]], row: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``row`` of several sorted key tables (keys, recs), merged: sorted by key, equal keys in part order."""
    if len(parts) == 1:
        return parts[0][0][row], parts[0][1][row]
    keys = np.concatenate([k[row] for k, _ in parts])
    recs = np.concatenate([r[row] for _, r in parts])
    o = np.argsort(keys, kind="stable")
    return keys[o], recs[o]


def _ids_chunks(parts: list[tuple[np.ndarray, np.ndarray]]):
    """The id offsets of several parts (blob, offsets from 0) as one offsets array over their joined blobs."""
    base = 0
    for blob, off in parts:
        yield off[:-1] + base
        base += int(off[-1])
    yield np.array([base], np.int64)


# ----------------------------------------------------------------------------------------------------------------
# sorted runs (an LSM of sorted key tables, one row of keys per band / block)


class _Runs:
    """Sorted runs of (key, record) per band: ``keys`` (bands, m) sorted per row, ``recs`` (bands, m) uint32.

    New runs are appended and the last two are merged while the older one is at most twice the newer one, so
    there are O(log n) runs and each entry is merged O(log n) times. The first ``frozen`` runs are the tables of
    persisted segments (views of their bytes): they are probed but never merged in memory.
    """

    def __init__(self, bands: int, dtype) -> None:
        self.bands, self.dtype = bands, np.dtype(dtype)
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen = 0

    def freeze(self, runs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.runs = [r for r in runs if r[0].shape[1]]
        self.frozen = len(self.runs)

    def __len__(self) -> int:
        return sum(k.shape[1] for k, _ in self.runs)

    def add_sorted(self, keys: np.ndarray, recs: np.ndarray) -> None:
        if keys.shape[1] == 0:
            return
        self.runs.append((keys, recs))
        while len(self.runs) - self.frozen > 1 and self.runs[-2][0].shape[1] <= 2 * self.runs[-1][0].shape[1]:
            (k1, r1), (k2, r2) = self.runs[-2], self.runs[-1]
            self.runs[-2:] = [self._merge(k1, r1, k2, r2)]

    @staticmethod
    def _merge(k1, r1, k2, r2):
        n1, n2 = k1.shape[1], k2.shape[1]
        keys = np.empty((k1.shape[0], n1 + n2), k1.dtype)
        recs = np.empty((k1.shape[0], n1 + n2), np.uint32)
        for b in range(k1.shape[0]):
            pos2 = np.searchsorted(k1[b], k2[b], side="right") + np.arange(n2)
            mask = np.ones(n1 + n2, bool)
            mask[pos2] = False
            keys[b, pos2], recs[b, pos2] = k2[b], r2[b]
            keys[b, mask], recs[b, mask] = k1[b], r1[b]
        return keys, recs

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """The runs added since the index was opened, merged into one."""
        while len(self.runs) - self.frozen > 1:
            (k1, r1), (k2, r2) = self.runs[-2], self.runs[-1]
            self.runs[-2:] = [self._merge(k1, r1, k2, r2)]
        if len(self.runs) == self.frozen:
            return np.empty((self.bands, 0), self.dtype), np.empty((self.bands, 0), np.uint32)
        return self.runs[-1]

    def probe(self, band: int, q_sorted: np.ndarray, q_idx: np.ndarray, cap: int):
        """Queries ``q_sorted`` (sorted keys of band ``band``, belonging to items ``q_idx``) against every run:
        the (item, record) pairs with equal keys, at most ``cap`` records per query and run."""
        out_i, out_j = [], []
        for keys, recs in self.runs:
            k = keys[band]
            if not len(k) or not len(q_sorted):
                continue
            left = np.searchsorted(k, q_sorted, side="left")
            hit = np.nonzero(k[np.minimum(left, len(k) - 1)] == q_sorted)[0]
            if not hit.size:
                continue
            right = np.searchsorted(k, q_sorted[hit], side="right")
            cnt = np.minimum(right - left[hit], cap)
            out_i.append(np.repeat(q_idx[hit], cnt))
            out_j.append(recs[band][_ragged(left[hit], cnt)])
        return out_i, out_j


def _pair_keys(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pairs (i, j) of indices < 2**32 as one uint64 each: i << 32 | j."""
    return (i.astype(np.uint64) << _U64(32)) | j.astype(np.uint64)


def _unique_pairs(pairs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs as `_pair_keys` arrays, possibly repeated -> the unique pairs (i, j), sorted. Empties
    ``pairs`` (it can be large)."""
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    key = np.unique(np.concatenate(pairs))
    pairs.clear()
    return (key >> _U64(32)).astype(np.int64), (key & _U64(0xFFFFFFFF)).astype(np.int64)


def _within_pairs(sorted_keys: np.ndarray, order: np.ndarray, cap: int) -> np.ndarray:
    """Pairs (later, earlier) of items sharing a key, as `_pair_keys`; ``order`` is a stable argsort, so within a
    run of equal keys items are in increasing index order. Each item pairs with at most ``cap`` preceding
    members."""
    n = len(sorted_keys)
    if n < 2:
        return np.empty(0, np.uint64)
    same = sorted_keys[1:] == sorted_keys[:-1]
    if not same.any():
        return np.empty(0, np.uint64)
    grouped = np.zeros(n, bool)  # keep only the members of runs of two or more (keys are mostly unique)
    grouped[1:] |= same
    grouped[:-1] |= same
    sorted_keys, order = sorted_keys[grouped], order[grouped]
    n = len(sorted_keys)
    same = sorted_keys[1:] == sorted_keys[:-1]
    pos = np.arange(n, dtype=np.int64)
    group_start = np.maximum.accumulate(np.where(np.concatenate(([True], ~same)), pos, 0))
    cnt = np.minimum(pos - group_start, cap)
    sel = np.nonzero(cnt)[0]
    cnt = cnt[sel]
    # the cnt preceding positions of each selected position p: p-1, p-2, ..., p-cnt
    prev = np.repeat(sel, cnt) - 1 - _ragged(np.zeros(len(cnt), np.int64), cnt)
    return _pair_keys(order[np.repeat(sel, cnt)], order[prev])


def _resolve(n: int, hist_i, hist_j, hist_score, bat_i, bat_j, bat_score):
    """Sequential semantics, vectorised except over within-batch matches. Items 0..n-1 in batch order; history
    pairs (i, history record j) and batch pairs (i, earlier item j) that passed verification, with a score
    (higher is better). Returns (kept mask, match kind: 0 none / 1 history / 2 batch, match index)."""
    kept = np.ones(n, bool)
    kind = np.zeros(n, np.int8)
    match = np.full(n, -1, np.int64)
    best_score = np.full(n, -np.inf)
    if len(hist_i):
        o = np.lexsort((hist_j, -hist_score, hist_i))
        hi, hj, hs = hist_i[o], hist_j[o], hist_score[o]
        first = np.concatenate(([True], hi[1:] != hi[:-1]))
        hi, hj, hs = hi[first], hj[first], hs[first]
        kept[hi], kind[hi], match[hi], best_score[hi] = False, 1, hj, hs
    if len(bat_i):
        o = np.lexsort((bat_j, -bat_score, bat_i))
        bi, bj, bs = bat_i[o].tolist(), bat_j[o].tolist(), bat_score[o].tolist()
        k = 0
        while k < len(bi):
            i = bi[k]
            end = k
            while end < len(bi) and bi[end] == i:
                end += 1
            for t in range(k, end):  # sorted by score desc, then earliest: the first kept one is the best
                if kept[bj[t]]:
                    if bs[t] > best_score[i]:  # ties go to the history (it is earlier)
                        kept[i], kind[i], match[i], best_score[i] = False, 2, bj[t], bs[t]
                    break
            k = end
    return kept, kind, match


# ----------------------------------------------------------------------------------------------------------------
# ExactIndex


class ExactIndex(_Segmented):
    """Every content digest ever staged for a project.

    Digests are kept as sorted tables of two uint64 (the digest's first and last 8 bytes, big-endian): 16 bytes
    per record. Lookups are a ``searchsorted`` on the first half and a check of the second. The persisted segments
    an index is opened from stay read-only views of their bytes; what a run adds is written as its own segment
    (`write_segment`), so a run never copies or rewrites the whole history (see `tail_to_merge`).
    """

    KIND = "ExactIndex"

    def __init__(self) -> None:
        self._frozen: list[tuple[np.ndarray, np.ndarray]] = []  # persisted segments: (hi sorted, lo aligned)
        self._runs = _Runs(1, np.uint64)  # added since opened: keys = first 8 bytes; recs index into _lo
        self._lo = _Buf(np.uint64)

    def __len__(self) -> int:
        return sum(len(hi) for hi, _ in self._frozen) + self._lo.n

    def segment_sizes(self) -> list[int]:
        """Records per persisted segment the index was opened from, oldest first."""
        return [len(hi) for hi, _ in self._frozen]

    def live_records(self) -> int:
        """Records added since the index was opened (what `write_segment` adds to the persisted ones)."""
        return self._lo.n

    @staticmethod
    def _split(digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        buf = b"".join(digests)
        if len(buf) != 16 * len(digests) or any(len(d) != 16 for d in digests):
            raise ValueError("content digests must be 16 bytes each (see content_digest)")
        arr = np.frombuffer(buf, dtype=">u8").reshape(-1, 2).astype(np.uint64)
        return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])

    def check_and_add(self, digests: list[bytes]) -> list[bool]:
        """True = duplicate (already in the index, or earlier in this list); the others are added."""
        n = len(digests)
        if n == 0:
            return []
        hi, lo = self._split(digests)
        order = np.lexsort((np.arange(n), lo, hi))
        hs, ls = hi[order], lo[order]
        dup = np.zeros(n, bool)
        dup[order[1:]] = (hs[1:] == hs[:-1]) & (ls[1:] == ls[:-1])
        tables = [(k, lo_k) for k, lo_k in self._frozen]
        lo_live = self._lo.arr
        tables += [(keys[0], lo_live[recs[0]]) for keys, recs in self._runs.runs[self._runs.frozen:]]
        for k, lo_k in tables:  # lo_k: the second halves aligned with the sorted first halves k
            if not len(k):
                continue
            left = np.searchsorted(k, hs, side="left")
            hit = np.nonzero(k[np.minimum(left, len(k) - 1)] == hs)[0]
            if not hit.size:
                continue
            right = np.searchsorted(k, hs[hit], side="right")
            single = right - left[hit] == 1
            h1 = hit[single]
            dup[order[h1]] |= lo_k[left[h1]] == ls[h1]
            for h in hit[~single].tolist():  # equal first halves, different digests: ~never (2**-64)
                dup[order[h]] |= bool((lo_k[left[h]: np.searchsorted(k, hs[h], side="right")] == ls[h]).any())
        new_sorted = ~dup[order]
        if new_sorted.any():
            base = self._lo.n
            keys = hs[new_sorted]
            self._lo.extend(ls[new_sorted])
            recs = np.arange(base, base + len(keys), dtype=np.uint32)
            self._runs.add_sorted(keys[None, :], recs[None, :])
        return dup.tolist()

    def write_segment(self, write, merge: int = 0) -> int:
        """Write one segment holding the last ``merge`` persisted segments and everything added since the index
        was opened, through ``write`` (a callable taking bytes). Returns the segment's record count."""
        keys, recs = self._runs.live()
        parts = self._frozen[len(self._frozen) - merge:] if merge else []
        parts = parts + [(keys[0], self._lo.view()[recs[0]])]
        total = sum(len(h) for h, _ in parts)
        merged = None

        def merge_once():
            nonlocal merged
            if merged is None:
                merged = _merged_rows([(h[None, :], lo_[None, :]) for h, lo_ in parts], 0)
            return merged

        _pack_stream(write, self.KIND, {}, [("hi", np.uint64, (total,), lambda: [merge_once()[0]]),
                                            ("lo", np.uint64, (total,), lambda: [merge_once()[1]])])
        return total


    @classmethod
    def open(cls, segments: list) -> "ExactIndex":
        """An index over persisted segments (bytes-like, oldest first), which stay views of those bytes."""
        idx = cls()
        for seg in segments:
            _, arrays = _unpack(seg, cls.KIND)
            idx._frozen.append((arrays["hi"], arrays["lo"]))  # empty ones too: parts match segments
        return idx



# ----------------------------------------------------------------------------------------------------------------
# text features: canonical code point stream -> shingle hashes


@functools.cache
def _char_classes() -> np.ndarray:
    """uint8 class per code point: 0 keep, 1 space (whitespace, punctuation, controls), 2 drop (apostrophes,
    format characters), 3 record separator (NUL). Built once, on first use (~0.1 s): planes 0-3 and 14 are
    scanned; planes 4-13 are unassigned and 15-16 are private use (kept)."""
    cls = np.zeros(sys.maxunicode + 1, np.uint8)
    category = unicodedata.category
    for lo, hi in ((0, 0x40000), (0xE0000, 0xF0000)):
        for c in range(lo, hi):
            ch = chr(c)
            cat = category(ch)
            if cat[0] == "P" or cat == "Cc" or cat == "Zs" or cat == "Zl" or cat == "Zp" or ch.isspace():
                cls[c] = 1
            elif cat == "Cf":
                cls[c] = 2
    for ch in "'\u2019\u2018\u02bc`\u00b4":
        cls[ord(ch)] = 2
    cls[0] = 3
    return cls


_P_CHAR = 0xD6E8FEB86659FD93  # odd 64-bit multipliers for the polynomial hashes
_P_WORD = 0xC2B2AE3D27D4EB4F
_GOLD = 0x9E3779B97F4A7C15
_LEN_SALT = [_U64((j * _GOLD) & _MASK64) for j in range(100)]


def _canonical_stream(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of the feature form of the texts, records separated by 0 and words by one space 32 (no
    leading, trailing or repeated spaces). Returns (code points, class per code point: 0 word, 1 space, 3 sep)."""
    n = len(texts)
    big = "\x00".join(texts)
    if big.count("\x00") != n - 1:
        big = "\x00".join(t.replace("\x00", " ") for t in texts)
    cps = np.frombuffer(big.casefold().encode("utf-32-le", "surrogatepass"), np.uint32)
    cls = _char_classes()[cps]
    drop = cls == 2
    if drop.any():
        cps, cls = cps[~drop], cls[~drop]
    # of each run of spaces keep the last one, and only if a word character follows it ...
    keep = cls != 1
    keep[:-1] |= cls[1:] == 0
    cps, cls = cps[keep], cls[keep]
    # ... and not if it opens a record (right after a separator, or at the very start)
    space = cls == 1
    opens = space.copy()
    opens[1:] &= cls[:-1] == 3
    if opens.any():
        cps, cls = cps[~opens], cls[~opens]
        space = cls == 1
    cps = np.where(space, np.uint32(32), cps)
    return cps, cls


def _shingles(sym: np.ndarray, is_sep: np.ndarray, k: int, mult: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """k-grams of a symbol stream (uint64) whose records are separated by separator positions; a record with
    0 < length < k gets one shingle of its whole length. Returns (uint32 shingle hashes in record order, with
    repeats; count per record)."""
    L = len(sym)
    seps = np.flatnonzero(is_sep)
    starts = np.concatenate(([0], seps + 1))
    ends = np.concatenate((seps, [L]))
    lengths = ends - starts
    sep_pad = np.ones(L + k - 1, bool)
    sep_pad[:L] = is_sep
    valid = ~is_sep
    for j in range(1, k):
        valid &= ~sep_pad[j: L + j]
    pad = np.zeros(L + k - 1, np.uint64)
    pad[:L] = sym
    h = pad[:L].copy()
    shorts = np.flatnonzero((lengths > 0) & (lengths < k))
    short_len = lengths[shorts]
    h_short = np.empty(len(shorts), np.uint64)
    m = _U64(mult)
    for j in range(1, k + 1):
        if j > 1:
            h *= m
            h += pad[j - 1: L + j - 1]
        if j < k and len(shorts):
            sel = short_len == j
            if sel.any():
                h_short[sel] = h[starts[shorts[sel]]] ^ _LEN_SALT[j]
    h ^= _LEN_SALT[k] ^ _U64(salt)
    if len(shorts):
        h[starts[shorts]] = h_short ^ _U64(salt)
        valid[starts[shorts]] = True
    out = (_fmix64(h[valid]) >> _U64(32)).astype(np.uint32)
    cv = np.zeros(L + 1, np.int64)
    np.cumsum(valid, out=cv[1:])
    return out, cv[ends] - cv[starts]


def _token_spans(cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) positions of the words (runs of word characters) of a canonical stream."""
    L = len(cls)
    word = cls == 0
    prev_word = np.zeros(L, bool)
    prev_word[1:] = word[:-1]
    next_word = np.zeros(L, bool)
    next_word[:-1] = word[1:]
    return np.flatnonzero(word & ~prev_word), np.flatnonzero(word & ~next_word) + 1


def _prefix_hash(x: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(P**k for k = 0..len(x), U) with U[k] = sum_{q<k} x_q P**-q mod 2**64 (P odd, so invertible): the hash
    sum_{s<=q<e} x_q P**(e-1-q) of any span is then P**(e-1) * (U[e] - U[s])."""
    L = len(x)
    ppow = np.full(L + 1, _U64(p), np.uint64)
    ppow[0] = 1
    np.cumprod(ppow, out=ppow)
    ipow = np.full(L + 1, _U64(pow(p, -1, 1 << 64)), np.uint64)
    ipow[0] = 1
    np.cumprod(ipow, out=ipow)
    u = np.zeros(L + 1, np.uint64)
    np.cumsum(x.astype(np.uint64) * ipow[:L], out=u[1:])
    return ppow, u


def _token_hashes(cps: np.ndarray, tok_s: np.ndarray, tok_e: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each word ``cps[s:e]`` (polynomial over its code points, length-salted, fmix64)."""
    ppow, u = _prefix_hash(cps, _P_CHAR)
    th = (u[tok_e] - u[tok_s]) * ppow[np.maximum(tok_e - 1, 0)]
    return _fmix64(th + (tok_e - tok_s).astype(np.uint64) * _U64(_GOLD))


def _stream_shingles(cps: np.ndarray, cls: np.ndarray, kind: str, k: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes (uint32, ragged in record order, may repeat within a record) and the count per record, of a
    canonical stream (`_canonical_stream`)."""
    if kind == "char":
        return _shingles(cps.astype(np.uint64), cls == 3, k, _P_CHAR, salt)
    seps = np.flatnonzero(cls == 3)
    tok_s, tok_e = _token_spans(cls)
    th = _token_hashes(cps, tok_s, tok_e)
    # items: tokens and separators in stream order
    pos = np.concatenate((tok_s, seps))
    o = np.argsort(pos, kind="stable")
    sym = np.concatenate((th, np.zeros(len(seps), np.uint64)))[o]
    is_sep = np.concatenate((np.zeros(len(tok_s), bool), np.ones(len(seps), bool)))[o]
    return _shingles(sym, is_sep, k, _P_WORD, salt)


def _text_shingles(texts: list[str], kind: str, k: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """`_stream_shingles` of texts."""
    return _stream_shingles(*_canonical_stream(texts), kind, k, salt)


# ----------------------------------------------------------------------------------------------------------------
# word edits: one word inserted, removed, swapped with its neighbour, or misspelt

_EDIT_MIN_WORDS = 3  # the shorter text of a word-edit pair has at least this many words
_EDIT_MAX_WORDS = 64  # texts with more words are left to the Jaccard rule (one edit keeps their Jaccard high)
_EDIT_TYPO_MIN_LETTERS = 4  # a misspelt word: both alphabetic, the longer one at least this many letters, ...
_EDIT_TYPO_LETTERS = 2  # ... their letter sets differ by at most this many letters, ...
_EDIT_TYPO_SHINGLES = 8  # ... and the texts' shingle sets differ by at most this many shingles
_P_EDIT = 0xA0761D6478BD642F


@functools.cache
def _letters() -> np.ndarray:
    """bool per code point: a letter or a combining mark (categories L*, M*). Built once, on first use."""
    out = np.zeros(sys.maxunicode + 1, bool)
    category = unicodedata.category
    for lo, hi in ((0, 0x40000), (0xE0000, 0xF0000)):
        for c in range(lo, hi):
            if category(chr(c))[0] in "LM":
                out[c] = True
    return out


def _edit_features(cps: np.ndarray, cls: np.ndarray, n: int, salt: int):
    """Word-edit features of the n records of a canonical stream: (word values uint32, word info uint8 and word
    letter masks uint32, in record order, of the records with `_EDIT_MIN_WORDS`..`_EDIT_MAX_WORDS` words; word
    count per record, 0 for the others; edit keys uint32 and the record of each key; a 64-bit hash of each
    record's word sequence, 0 for the others). A word's info is its length
    (at most 127) plus 128 when every character of it is a letter or mark; its letter mask has bit
    ``fmix64(c) >> 59`` set for each of its characters c (the set of its letters, in 32 bits)."""
    tok_s, tok_e = _token_spans(cls)
    rec = np.searchsorted(np.flatnonzero(cls == 3), tok_s)
    m = np.bincount(rec, minlength=n)[:n]
    eligible = (m >= _EDIT_MIN_WORDS) & (m <= _EDIT_MAX_WORDS)
    sel = eligible[rec]
    tok_s, tok_e = tok_s[sel], tok_e[sel]
    tok = (_token_hashes(cps, tok_s, tok_e) >> _U64(32)).astype(np.uint32)
    letters = np.zeros(len(cps) + 1, np.int64)
    np.cumsum(_letters()[cps], out=letters[1:])
    length = tok_e - tok_s
    alpha = (letters[tok_e] - letters[tok_s]) == length
    info = (np.minimum(length, 127) | (alpha.astype(np.int64) << 7)).astype(np.uint8)
    bits = np.zeros(len(cps) + 1, np.uint32)  # one spare element: a word may end the stream
    bits[:-1] = np.uint32(1) << (_fmix64(cps.astype(np.uint64)) >> _U64(59)).astype(np.uint32)
    bounds = np.stack((tok_s, tok_e), axis=1).ravel()  # OR over [s, e) of each word, ignoring [e, next s)
    mask = np.bitwise_or.reduceat(bits, bounds)[::2] if len(tok_s) else np.empty(0, np.uint32)
    counts = np.where(eligible, m, 0).astype(np.int64)
    keys, owner, whole = _edit_keys(tok, counts, salt)
    seq = np.zeros(n, np.uint64)
    seq[counts > 0] = whole
    return tok, info, mask.astype(np.uint32), counts, keys, owner, seq


def _edit_keys(tok: np.ndarray, counts: np.ndarray, salt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each record with words t_0..t_{m-1} (ragged ``tok``, ``counts``): a key of the whole sequence and one of
    the sequence without t_j for each j (uint32, and the record of each; and the 64-bit hash of each whole
    sequence, for the records with words in order). Two sequences one word-edit apart share
    a key: an inserted word (the longer one without it is the shorter one), a replaced word (both without it) and
    two swapped neighbours (both without either of them). Sequence hash H = sum t_q P**(m-1-q) mod 2**64; without
    t_j it is H - P**(m-1-j) * (t_j + (P - 1) * A_j) with A_j = sum_{q<j} t_q P**(j-1-q), all vectorised."""
    T = len(tok)
    recs = np.flatnonzero(counts)
    if T == 0:
        return np.empty(0, np.uint32), np.empty(0, np.int32), np.empty(0, np.uint64)
    m_r = counts[recs]
    s_r = np.zeros(len(recs), np.int64)
    np.cumsum(m_r[:-1], out=s_r[1:])
    t = tok.astype(np.uint64)
    P = _U64(_P_EDIT)
    ppow, u = _prefix_hash(t, _P_EDIT)
    whole = (u[s_r + m_r] - u[s_r]) * ppow[s_r + m_r - 1]
    g = np.arange(T, dtype=np.int64)
    s_g = np.repeat(s_r, m_r)
    m_g = np.repeat(m_r, m_r)
    j = g - s_g
    a_j = (u[g] - u[s_g]) * ppow[np.maximum(g - 1, 0)]
    without = np.repeat(whole, m_r) - ppow[m_g - 1 - j] * (t + (P - _U64(1)) * a_j)

    def key(h, length):
        return (_fmix64(h ^ (length.astype(np.uint64) * _U64(_GOLD)) ^ _U64(salt)) >> _U64(32)).astype(np.uint32)

    keys = np.concatenate((key(whole, m_r), key(without, m_g - 1)))
    owner = np.concatenate((recs, np.repeat(recs, m_r))).astype(np.int32)
    return keys, owner, _fmix64(whole ^ (m_r.astype(np.uint64) * _U64(_GOLD)))


def _edit_pairs(i, j, a_words, b_words) -> tuple[np.ndarray, np.ndarray]:
    """For candidate pairs (item i, record j) whose words are ``*_words`` = (values, info, letter masks, start,
    count) (`_edit_features`): (one word edit apart, the edit is a replaced word). A replaced word counts only as a
    spelling variant: both words alphabetic, the longer one at least `_EDIT_TYPO_MIN_LETTERS` letters, lengths
    within one, letter sets within `_EDIT_TYPO_LETTERS` letters (the caller still bounds how much the texts'
    shingles differ)."""
    a_tok, a_info, a_mask, a_st, a_ln = a_words
    b_tok, b_info, b_mask, b_st, b_ln = b_words
    la, lb = a_ln[i].astype(np.int64), b_ln[j].astype(np.int64)
    ok, sub = np.zeros(len(i), bool), np.zeros(len(i), bool)
    cand = np.flatnonzero((np.minimum(la, lb) >= _EDIT_MIN_WORDS) & (np.abs(la - lb) <= 1))
    for c0 in range(0, len(cand), 1 << 15):
        c = cand[c0: c0 + (1 << 15)]
        sa, na, sb, nb = a_st[i[c]].astype(np.int64), la[c], b_st[j[c]].astype(np.int64), lb[c]
        m = np.minimum(na, nb)
        x = np.arange(int(m.max()))[None, :]
        inside = x < m[:, None]
        left = (a_tok[sa[:, None] + np.minimum(x, na[:, None] - 1)]
                == b_tok[sb[:, None] + np.minimum(x, nb[:, None] - 1)]) & inside
        right = (a_tok[sa[:, None] + np.maximum(na[:, None] - 1 - x, 0)]
                 == b_tok[sb[:, None] + np.maximum(nb[:, None] - 1 - x, 0)]) & inside
        pad = np.zeros((len(c), 1), bool)
        p = np.argmin(np.concatenate((left, pad), axis=1), axis=1)  # common prefix, in words
        s = np.argmin(np.concatenate((right, pad), axis=1), axis=1)  # common suffix
        same = na == nb
        inserted = ~same & (p + s >= m)
        identical = same & (p == m)
        replaced = same & ~identical & (p + s == m - 1)
        q = np.minimum(p, m - 1)
        ia, ib = a_info[sa + q].astype(np.int64), b_info[sb + q].astype(np.int64)
        wa, wb = ia & 127, ib & 127
        replaced &= (ia >= 128) & (ib >= 128) & (np.maximum(wa, wb) >= _EDIT_TYPO_MIN_LETTERS) & (np.abs(wa - wb) <= 1)
        replaced &= np.bitwise_count(a_mask[sa + q] ^ b_mask[sb + q]) <= _EDIT_TYPO_LETTERS
        two = same & (p + s == m - 2)
        q1 = np.minimum(p + 1, m - 1)
        swapped = two & (a_tok[sa + q] == b_tok[sb + q1]) & (a_tok[sa + q1] == b_tok[sb + q])
        ok[c] = inserted | identical | replaced | swapped
        sub[c] = replaced
    return ok, sub


_MH_SLOTS = 16  # shingle positions hashed per numpy call
_MH_RECORDS = 2048  # records per numpy call: temporaries of (perms/2 x slots x records) uint16 = 2 MiB
_SET_BLOCK_CELLS = 1 << 18  # records x longest record, per block when sorting shingle sets


class _Workspace(threading.local):
    """Per-thread scratch buffers for `_minhash16` (allocated once, reshaped to each call's size)."""

    def get(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        ws = getattr(self, "ws", None)
        if ws is None or ws[2] != h:
            ws = self.ws = (np.empty(h * _MH_SLOTS * _MH_RECORDS, np.uint16), np.empty(h * _MH_RECORDS, np.uint16), h)
        return ws[0], ws[1]


_WS = _Workspace()


def _minhash16(vals: np.ndarray, starts: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures (perms, records) uint16 of records whose shingle hashes are ``vals[starts:starts+counts]``,
    given in order of *decreasing* count (every count > 0).

    Permutation i is ``a_i * y + b_i mod 2**16`` (a_i odd) of one 16-bit half y of the 32-bit shingle hash: the low
    half for the first half of the permutations, the high half for the rest. 16-bit lanes double numpy's SIMD
    width; the truncation adds only a ~0.1% chance per permutation of a spurious agreement (two different
    shingles with the same 16-bit half), harmless since candidates are verified exactly. The work is organised
    by shingle position: for positions t..t+15, the records that have a shingle there are a prefix of the order
    (counts decrease), so there is almost no padding, and each numpy call covers 64 permutations x 16 positions
    x 2048 records (a record with fewer positions in the group repeats its last shingle, which leaves the
    minimum unchanged)."""
    k, n = len(a), len(counts)
    h = k // 2
    sig = np.full((k, n), 0xFFFF, np.uint16)
    if n == 0:
        return sig
    tmp_ws, red_ws = _WS.get(max(h, k - h))
    halves = [(lo, hi, a[lo:hi, None, None], b[lo:hi, None, None]) for lo, hi in ((0, h), (h, k)) if hi > lo]
    neg = -counts
    last = counts - 1
    cmax = int(counts[0])
    for t in range(0, cmax, _MH_SLOTS):
        m_t = int(np.searchsorted(neg, -t, side="left"))  # records with count > t
        g = min(_MH_SLOTS, cmax - t)
        pos = np.arange(t, t + g)[:, None]
        for p0 in range(0, m_t, _MH_RECORDS):
            p1 = min(m_t, p0 + _MH_RECORDS)
            w = p1 - p0
            x = vals[starts[p0:p1][None, :] + np.minimum(pos, last[p0:p1][None, :])]  # (g, w) uint32
            for i, (lo, hi, aa, bb) in enumerate(halves):
                y = (x >> np.uint32(16) if i else x).astype(np.uint16)
                tt = tmp_ws[: (hi - lo) * g * w].reshape(hi - lo, g, w)
                np.multiply(aa, y[None], out=tt)
                tt += bb
                red = red_ws[: (hi - lo) * w].reshape(hi - lo, w)
                np.minimum.reduce(tt, axis=1, out=red)
                view = sig[lo:hi, p0:p1]
                np.minimum(view, red, out=view)
    return sig


def _band_keys(sig: np.ndarray, bmul: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 32-bit key per band: a hash of the band's rows of the signature."""
    m = sig.shape[1]
    acc = (sig[: bands * rows].reshape(bands, rows, m).astype(np.uint64) * bmul[None, :, None]).sum(
        axis=1, dtype=np.uint64)
    acc += np.arange(bands, dtype=np.uint64)[:, None] * _U64(_GOLD)
    return (_fmix64(acc) >> _U64(32)).astype(np.uint32)


def _sketch_chunk(texts: list[str], kind: str, k: int, salt: int, a, b, bmul, bands: int, rows: int,
                  edits: bool = False):
    """Features and MinHash of a chunk of texts: (sorted unique shingle sets, concatenated; each record's
    start and count in there; a 64-bit hash of each set; band keys (bands, n); the records with a set, in the
    order their sets are laid out; `_edit_features` or None)."""
    n = len(texts)
    cps, cls = _canonical_stream(texts)
    vals, counts = _stream_shingles(cps, cls, kind, k, salt)
    edit = _edit_features(cps, cls, n, salt) if edits else None
    del cps, cls
    starts = np.zeros(n, np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    keys = np.zeros((bands, n), np.uint32)
    ucounts = np.zeros(n, np.int64)
    set_hash = np.zeros(n, np.uint64)
    valid = np.flatnonzero(counts > 0)
    order = valid[np.argsort(-counts[valid], kind="stable")]  # decreasing count
    sorted_counts = counts[order]
    # sorted unique sets, in blocks of records of similar length (rows padded by repeating their last value)
    parts: list[np.ndarray] = []
    neg_counts = -sorted_counts
    s = 0
    while s < len(order):
        e = min(len(order), s + max(1, _SET_BLOCK_CELLS // int(sorted_counts[s])))
        e = min(e, int(np.searchsorted(neg_counts, -int(sorted_counts[s] * 0.8), side="right")))
        e = max(e, s + 1)
        recs, c = order[s:e], sorted_counts[s:e]
        x = vals[starts[recs][:, None] + np.minimum(np.arange(int(c[0]))[None, :], (c - 1)[:, None])]
        x.sort(axis=1)
        uniq = np.ones(x.shape, bool)
        uniq[:, 1:] = x[:, 1:] != x[:, :-1]
        u = x[uniq]
        uc = np.count_nonzero(uniq, axis=1)
        parts.append(u)
        ucounts[recs] = uc
        u64 = u.astype(np.uint64)
        first = np.zeros(len(uc), np.int64)
        np.cumsum(uc[:-1], out=first[1:])
        s1 = np.add.reduceat(u64, first)
        s2 = np.add.reduceat(u64 * u64, first)
        set_hash[recs] = _fmix64(s1 ^ _fmix64(s2 + uc.astype(np.uint64)))
        s = e
    uvals = np.concatenate(parts) if parts else np.empty(0, np.uint32)
    ustarts = np.zeros(n, np.int64)
    if len(order):
        ustarts[order[1:]] = np.cumsum(ucounts[order[:-1]])
    keys[:, order] = _band_keys(_minhash16(vals, starts[order], sorted_counts, a, b), bmul, bands, rows)
    if edit is not None:
        # records are collapsed by this hash (identical features): with word edits the words must be identical too,
        # since the rule reads them (two texts can have one shingle set and different words)
        set_hash = _fmix64(set_hash ^ edit[6])
        edit = edit[:6]
    return uvals, ustarts, ucounts, set_hash, keys, order, edit


def _lsh_params(threshold: float, num_perm: int, target: float = 0.99) -> tuple[int, int]:
    """(bands, rows): the largest r whose b = num_perm // r reaches P(candidate | J = threshold) >= target."""
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if 1.0 - (1.0 - threshold ** r) ** b >= target:
            return b, r
    return num_perm, 1


def _intersections(a_vals, a_st, a_ln, b_vals, b_st, b_ln) -> np.ndarray:
    """|A_p & B_p| for pairs of sorted unique uint32 sets given as (values, start, length) per pair.

    Pairs are bucketed by size; each bucket is a dense matrix whose row p holds A_p then B_p, each padded by
    repeating its own last value; after a row sort the number of distinct values in a row is |A_p | B_p|.
    Buckets are shared out to `_THREADS` threads (numpy releases the GIL in gathers and sorts)."""
    P = len(a_st)
    out = np.zeros(P, np.int64)
    if P == 0:
        return out
    order = np.lexsort((b_ln, a_ln))
    la_s, lb_s = a_ln[order], b_ln[order]
    buckets, s = [], 0
    while s < P:  # sizes within ~12% of the first one, at most 4096 pairs and 2**18 cells
        e = min(int(np.searchsorted(la_s, int(la_s[s] * 1.12) + 2, side="right")), s + 4096)
        e = max(s + 1, min(e, s + (1 << 18) // int(la_s[e - 1] + lb_s[s:e].max())))
        buckets.append((s, e))
        s = e

    def work(span):
        for s, e in span:
            idx = order[s:e]
            la, lb = a_ln[idx], b_ln[idx]
            wa, wb = int(la.max()), int(lb.max())
            m = np.empty((len(idx), wa + wb), np.uint32)
            m[:, :wa] = a_vals[a_st[idx][:, None] + np.minimum(np.arange(wa)[None, :], (la - 1)[:, None])]
            m[:, wa:] = b_vals[b_st[idx][:, None] + np.minimum(np.arange(wb)[None, :], (lb - 1)[:, None])]
            m.sort(axis=1)
            out[idx] = la + lb - 1 - np.count_nonzero(m[:, 1:] != m[:, :-1], axis=1)

    _parallel(work, buckets)
    return out


def _parallel(work, items: list) -> None:
    """work(sublist) over `_THREADS` interleaved shares of items (in the calling thread when there is one)."""
    if _THREADS > 1 and len(items) > 1:
        with ThreadPoolExecutor(_THREADS) as ex:
            list(ex.map(work, [items[i::_THREADS] for i in range(_THREADS)]))
    else:
        work(items)


class NearDuplicateIndex(_PartsIndex):
    """Near-duplicate text detection by MinHash LSH over shingles, with candidate verification, and optionally
    by word edits (``word_edits``).

    See the module docstring for the features, the hash family, the band choice, the word-edit rule and what is
    persisted.
    """

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, *, shingle: str = "char3", seed: int = 1,
                 word_edits: bool = False):
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if not 2 <= int(num_perm) <= 1024:
            raise ValueError(f"num_perm must be in [2, 1024], got {num_perm!r}")
        m = re.fullmatch(r"(char|word)([1-9][0-9]?)", shingle)
        if not m:
            raise ValueError(f"shingle must look like 'char3' or 'word2', got {shingle!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not isinstance(word_edits, bool):
            raise ValueError(f"word_edits must be a bool, got {word_edits!r}")
        self.threshold, self.num_perm, self.shingle, self.seed = float(threshold), int(num_perm), shingle, seed
        self.word_edits = word_edits
        self._kind, self._k = m.group(1), int(m.group(2))
        self.bands, self.rows = _lsh_params(self.threshold, self.num_perm)
        self._init_state()

    def _init_state(self) -> None:
        k = self.bands * self.rows
        self._a = (np.array([_param(self.seed, "a", i) for i in range(k)], np.uint64) | _U64(1)).astype(np.uint16)
        self._b = np.array([_param(self.seed, "b", i) for i in range(k)], np.uint64).astype(np.uint16)
        self._bmul = np.array([_param(self.seed, "band", i) | 1 for i in range(self.rows)], np.uint64)
        self._salt = _param(self.seed, "shingle-salt", 0)
        self._runs = _Runs(self.bands, np.uint32)
        self._frozen: list[_Frozen] = []  # persisted segments: vals, st, ln, id_blob, id_off (records base..)
        self._live_base = 0  # record number of the first record added since opened
        self._vals = _Buf(np.uint32)  # shingle sets of the records added since opened, concatenated
        self._st = _Buf(np.int64)  # each record's start in _vals
        self._ln = _Buf(np.int32)  # and length
        self._ids = _Ids()
        # word edits: each record's words (hash, info, letter mask) and its edit keys (one sorted table)
        self._eruns = _Runs(1, np.uint32)
        self._tok = _Buf(np.uint32)
        self._tinfo = _Buf(np.uint8)
        self._tmask = _Buf(np.uint32)
        self._tst = _Buf(np.int64)
        self._tln = _Buf(np.int32)

    def __len__(self) -> int:
        return self._live_base + len(self._ids)

    def _set_parts(self) -> tuple[list[int], list[tuple[np.ndarray, ...]]]:
        """(bases, (vals, st, ln[, tok, tinfo, tmask, tst, tln]) per part): the persisted segments, then the records
        added since opened."""
        bases = [p.base for p in self._frozen] + [self._live_base]
        names = ("vals", "st", "ln") + (("tok", "tinfo", "tmask", "tst", "tln") if self.word_edits else ())
        sets = [tuple(p.arrays[x] for x in names) for p in self._frozen]
        live = (self._vals.arr, self._st.arr, self._ln.arr)
        if self.word_edits:
            live += (self._tok.arr, self._tinfo.arr, self._tmask.arr, self._tst.arr, self._tln.arr)
        return bases, sets + [live]

    def __repr__(self) -> str:
        return (f"NearDuplicateIndex(threshold={self.threshold}, num_perm={self.num_perm}, shingle={self.shingle!r}, "
                f"seed={self.seed}, word_edits={self.word_edits}, bands={self.bands}, rows={self.rows}, "
                f"records={len(self)})")

    # -- features and signatures -------------------------------------------------------------------------------

    def _sketch(self, texts: list[str], edits: bool = False):
        """Per record: sorted unique shingle set (values, start, count), set hash, band keys (bands, n); the order
        of the records' sets in the values (layout); and with ``edits`` the word-edit features (words, word info,
        word count, edit keys, key owner; `_edit_features`), else None.
        Chunks of texts are processed independently (in threads: numpy releases the GIL)."""
        n = len(texts)
        step = _TEXT_CHUNK
        chunks = [texts[s: s + step] for s in range(0, n, step)]

        def work(chunk):
            return _sketch_chunk(chunk, self._kind, self._k, self._salt, self._a, self._b, self._bmul,
                                 self.bands, self.rows, edits)

        if _THREADS > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(_THREADS) as ex:
                results = list(ex.map(work, chunks))
        else:
            results = [work(c) for c in chunks]
        if len(results) == 1:
            return results[0]
        base = np.cumsum([0] + [len(r[0]) for r in results[:-1]])
        uvals = np.concatenate([r[0] for r in results])
        ustarts = np.concatenate([r[1] + b for r, b in zip(results, base)])
        ucounts = np.concatenate([r[2] for r in results])
        set_hash = np.concatenate([r[3] for r in results])
        keys = np.concatenate([r[4] for r in results], axis=1)
        layout = np.concatenate([r[5] + i * step for i, r in enumerate(results)])
        edit = None
        if edits:
            ed = [r[6] for r in results]
            edit = tuple(np.concatenate([e[k] for e in ed]) for k in range(5)) + (
                np.concatenate([e[5] + i * step for i, e in enumerate(ed)]),)
        return uvals, ustarts, ucounts, set_hash, keys, layout, edit

    # -- the batch operation ------------------------------------------------------------------------------------

    def check_and_add(self, ids: list[str], texts: list[str]) -> list[str | None]:
        """For each (already normalised) text in order: the id of a kept earlier record (history, or this call)
        that it near-duplicates (Jaccard >= threshold, or with ``word_edits`` one word edit; the best one: highest
        Jaccard), or None, in which case the text is added under its id.
        Texts without features (empty, only punctuation/whitespace) get None and are not added."""
        n = len(texts)
        _check_ids(ids, n)
        if n == 0:
            return []
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be str, got {type(t).__name__}")
        uvals, ustarts, ucounts, set_hash, keys, layout, edit = self._sketch(texts, self.word_edits)
        valid = np.nonzero(ucounts > 0)[0]
        # collapse identical feature sets to their first occurrence (the representative)
        _, first, inverse = np.unique(set_hash[valid], return_index=True, return_inverse=True)
        rep_of = valid[first][inverse]  # for each valid record, the index of its representative
        reps = np.sort(valid[first])
        nr = len(reps)
        rkeys = keys[:, reps]
        hist_pairs: list[np.ndarray] = []
        bat_pairs: list[np.ndarray] = []
        orders: list[np.ndarray] = [np.empty(0, np.uint32)] * self.bands
        pos = np.arange(nr, dtype=np.uint64)

        def candidates(bands: list[int]) -> None:
            for band in bands:
                # a stable argsort of the band keys, as one sort of (key << 32 | position)
                packed = np.sort((rkeys[band].astype(np.uint64) << _U64(32)) | pos)
                o = (packed & _U64(0xFFFFFFFF)).astype(np.uint32)
                ks = (packed >> _U64(32)).astype(np.uint32)
                del packed
                orders[band] = o
                hist_pairs.extend(map(_pair_keys, *self._runs.probe(band, ks, o, _MAX_BUCKET)))
                bat_pairs.append(_within_pairs(ks, o, _MAX_BUCKET))

        _parallel(candidates, list(range(self.bands)))
        # candidates -> unique pairs -> length filter -> exact Jaccard
        r_st, r_ln = ustarts[reps], ucounts[reps]
        h_i, h_j, h_s = self._verify_history(hist_pairs, uvals, r_st, r_ln)
        b_i, b_j, b_s = self._verify(_unique_pairs(bat_pairs), uvals, r_st, r_ln, uvals, r_st, r_ln)
        if edit is not None:
            tok, tinfo, tmask, tcount, ekeys, eowner = edit
            tst = np.zeros(n, np.int64)
            np.cumsum(tcount[:-1], out=tst[1:])
            rep_index = np.full(n, -1, np.int32)  # each record's position in reps, -1 for non-representatives
            rep_index[reps] = np.arange(nr)
            owner = rep_index[eowner]
            sel = owner >= 0
            packed = (ekeys[sel].astype(np.uint64) << _U64(32)) | owner[sel].astype(np.uint64)
            del owner, sel, ekeys, eowner
            packed.sort()
            e_owner = (packed & _U64(0xFFFFFFFF)).astype(np.uint32)
            e_keys = (packed >> _U64(32)).astype(np.uint32)
            del packed
            a_words = (tok, tinfo, tmask, tst[reps], tcount[reps])
            e_hist = list(map(_pair_keys, *self._eruns.probe(0, e_keys, e_owner, _MAX_BUCKET)))
            ei, ej, es = self._verify_history(e_hist, uvals, r_st, r_ln, a_words)
            e_bat = _within_pairs(e_keys, e_owner, _MAX_BUCKET)
            bi, bj = _unique_pairs([e_bat])
            ne = bi != bj  # a record whose own keys repeat pairs with itself
            fi, fj, fs = self._verify_edits((bi[ne], bj[ne]), uvals, r_st, r_ln, uvals, r_st, r_ln, a_words, a_words)
            h_i, h_j, h_s = np.concatenate((h_i, ei)), np.concatenate((h_j, ej)), np.concatenate((h_s, es))
            b_i, b_j, b_s = np.concatenate((b_i, fi)), np.concatenate((b_j, fj)), np.concatenate((b_s, fs))
        kept, kind, match = _resolve(nr, h_i, h_j, h_s, b_i, b_j, b_s)
        # results for representatives
        result: list[str | None] = [None] * n
        rep_result: dict[int, str | None] = {}
        kept_reps = reps[kept]
        for r in np.nonzero(~kept)[0].tolist():
            if kind[r] == 1:
                rep_result[r] = self._id(int(match[r]))
            else:
                rep_result[r] = ids[int(reps[match[r]])]
        for r, res in rep_result.items():
            result[int(reps[r])] = res
        # non-representatives: identical features to their representative
        nonrep = np.nonzero(rep_of != valid)[0]
        if len(nonrep):
            rep_pos = np.searchsorted(reps, rep_of[nonrep])
            for v, rp in zip(valid[nonrep].tolist(), rep_pos.tolist()):
                result[v] = ids[int(reps[rp])] if kept[rp] else rep_result[rp]
        # add the kept representatives
        if len(kept_reps):
            base = len(self)
            self._ids.extend([ids[i] for i in kept_reps.tolist()])
            # append the kept sets in their layout order (a mask, cheaper than a ragged gather)
            kept_rec = np.zeros(n, bool)
            kept_rec[kept_reps] = True
            in_layout = kept_rec[layout]
            vbase = self._vals.n
            self._vals.extend(uvals[np.repeat(in_layout, ucounts[layout])])
            lay_kept = layout[in_layout]
            st = np.zeros(n, np.int64)
            st[lay_kept[1:]] = np.cumsum(ucounts[lay_kept[:-1]])
            self._st.extend(vbase + st[kept_reps])
            self._ln.extend(ucounts[kept_reps].astype(np.int32))
            global_rec = np.full(nr, -1, np.int64)
            global_rec[np.nonzero(kept)[0]] = np.arange(base, base + len(kept_reps))
            new_keys = np.empty((self.bands, len(kept_reps)), np.uint32)
            new_recs = np.empty((self.bands, len(kept_reps)), np.uint32)
            for band in range(self.bands):
                o = orders[band]
                o = o[kept[o]]
                new_keys[band], new_recs[band] = rkeys[band][o], global_rec[o]
            self._runs.add_sorted(new_keys, new_recs)
            if edit is not None:
                # words of the kept records (record order, as the ids) and their edit keys, sorted
                in_words = np.repeat(kept_rec, tcount)
                tbase = self._tok.n
                self._tok.extend(tok[in_words])
                self._tinfo.extend(tinfo[in_words])
                self._tmask.extend(tmask[in_words])
                kc = tcount[kept_reps]
                kst = np.zeros(len(kc), np.int64)
                np.cumsum(kc[:-1], out=kst[1:])
                self._tst.extend(tbase + kst)
                self._tln.extend(kc.astype(np.int32))
                keep_e = kept[e_owner]  # e_keys / e_owner are sorted by key, then owner
                self._eruns.add_sorted(e_keys[keep_e][None, :],
                                       global_rec[e_owner[keep_e]].astype(np.uint32)[None, :])
        return result

    def _verify_history(self, pairs: list, a_vals, a_st, a_ln, a_words=None):
        """`_verify` (or with ``a_words``, `_verify_edits`) of candidate pairs (item, stored record), record by
        record in the part that holds it."""
        i, j = _unique_pairs(pairs)
        if not len(i):
            return i, j, np.empty(0)
        bases, parts = self._set_parts()
        out = []
        for part, sel in _by_part(bases, j):
            b = parts[part]
            pair = (i[sel], j[sel] - bases[part])
            if a_words is None:
                vi, vj, vs = self._verify(pair, a_vals, a_st, a_ln, *b[:3])
            else:
                vi, vj, vs = self._verify_edits(pair, a_vals, a_st, a_ln, *b[:3], a_words, b[3:])
            out.append((vi, vj + bases[part], vs))
        return tuple(np.concatenate(x) for x in zip(*out))

    def _verify(self, pairs: tuple[np.ndarray, np.ndarray], a_vals, a_st, a_ln, b_vals, b_st, b_ln):
        """Unique candidate pairs (item i, record j) -> those whose exact Jaccard reaches the threshold, and that
        Jaccard. Items' sets are (a_vals, a_st[i], a_ln[i]), records' (b_vals, b_st[j], b_ln[j])."""
        i, j = pairs
        if not len(i):
            return i, j, np.empty(0)
        la, lb = a_ln[i], b_ln[j].astype(np.int64)
        thr = self.threshold
        ok = np.minimum(la, lb) >= thr * np.maximum(la, lb) - 1e-9  # J <= min/max
        i, j, la, lb = i[ok], j[ok], la[ok], lb[ok]
        inter = _intersections(a_vals, a_st[i], la, b_vals, b_st[j], lb)
        union = la + lb - inter
        ok = inter >= thr * union - 1e-9
        return i[ok], j[ok], inter[ok] / union[ok]

    def _verify_edits(self, pairs, a_vals, a_st, a_ln, b_vals, b_st, b_ln, a_words, b_words):
        """Unique candidate pairs (item i, record j) from shared edit keys -> those one word edit apart (a replaced
        word only when the shingle sets differ by at most `_EDIT_TYPO_SHINGLES`), and their Jaccard. ``*_words``
        are (word values, info, letter masks, start, count) per item / record."""
        i, j = pairs
        if not len(i):
            return i, j, np.empty(0)
        ok, sub = _edit_pairs(i, j, a_words, b_words)
        i, j, sub = i[ok], j[ok], sub[ok]
        la, lb = a_ln[i].astype(np.int64), b_ln[j].astype(np.int64)
        inter = _intersections(a_vals, a_st[i], la, b_vals, b_st[j], lb)
        ok = ~sub | (la + lb - 2 * inter <= _EDIT_TYPO_SHINGLES)
        return i[ok], j[ok], (inter / (la + lb - inter))[ok]

    def similarities(self, texts_a: list[str], texts_b: list[str]) -> list[float]:
        """Exact Jaccard similarity of each pair (texts_a[i], texts_b[i]) in this index's feature space: what
        `check_and_add` compares with the threshold. 0.0 when either text has no features."""
        if len(texts_a) != len(texts_b):
            raise ValueError("texts_a and texts_b must have the same length")
        n = len(texts_a)
        if n == 0:
            return []
        uvals, ustarts, ucounts, *_ = self._sketch(list(texts_a) + list(texts_b))
        la, lb = ucounts[:n], ucounts[n:]
        ok = np.flatnonzero((la > 0) & (lb > 0))
        out = np.zeros(n)
        inter = _intersections(uvals, ustarts[ok], la[ok], uvals, ustarts[n + ok], lb[ok])
        out[ok] = inter / (la[ok] + lb[ok] - inter)
        return out.tolist()

    def similarity(self, text_a: str, text_b: str) -> float:
        """`similarities` for one pair."""
        return self.similarities([text_a], [text_b])[0]

    def near_duplicates(self, texts_a: list[str], texts_b: list[str]) -> list[bool]:
        """For each pair (texts_a[i], texts_b[i]): does `check_and_add` count them as near duplicates (Jaccard >=
        threshold, or with ``word_edits`` one word edit)? The rule itself, without candidate generation."""
        if len(texts_a) != len(texts_b):
            raise ValueError("texts_a and texts_b must have the same length")
        n = len(texts_a)
        if n == 0:
            return []
        uvals, ustarts, ucounts, _, _, _, edit = self._sketch(list(texts_a) + list(texts_b), self.word_edits)
        idx = np.flatnonzero((ucounts[:n] > 0) & (ucounts[n:] > 0))
        out = np.zeros(n, bool)
        i, _, _ = self._verify((idx, n + idx), uvals, ustarts, ucounts, uvals, ustarts, ucounts)
        out[i] = True
        if edit is not None:
            tok, tinfo, tmask, tcount, _, _ = edit
            tst = np.zeros(2 * n, np.int64)
            np.cumsum(tcount[:-1], out=tst[1:])
            words = (tok, tinfo, tmask, tst, tcount)
            i, _, _ = self._verify_edits((idx, n + idx), uvals, ustarts, ucounts, uvals, ustarts, ucounts, words,
                                         words)
            out[i] = True
        return out.tolist()

    # -- persistence --------------------------------------------------------------------------------------------

    KIND = "NearDuplicateIndex"

    def _meta(self, base: int) -> dict:
        meta = {"threshold": self.threshold, "num_perm": self.num_perm, "shingle": self.shingle, "seed": self.seed,
                "bands": self.bands, "rows": self.rows, "features": 1, "base": base}
        if self.word_edits:  # absent = False: segments written before word edits existed stay readable as they were
            meta["word_edits"] = True
        return meta

    def write_segment(self, write, merge: int = 0) -> int:
        """Write one segment holding the last ``merge`` persisted segments and the records added since the index
        was opened, through ``write`` (a callable taking bytes), streaming: nothing of the size of the index is
        built. Returns the segment's record count."""
        keys, recs = self._runs.live()
        frozen = self._frozen[len(self._frozen) - merge:] if merge else []
        parts = [(p.arrays["vals"], p.arrays["st"], p.arrays["ln"], p.arrays["id_blob"], p.arrays["id_off"],
                  p.arrays["band_keys"], p.arrays["band_recs"]) for p in frozen]
        parts.append((self._vals.view(), self._st.view(), self._ln.view(), self._ids.blob.view(), self._ids.off.view(),
                      keys, recs))
        base = frozen[0].base if frozen else self._live_base
        n = sum(len(p[2]) for p in parts)
        nv = sum(len(p[0]) for p in parts)
        nb = sum(len(p[3]) for p in parts)

        def starts(which: list[tuple[np.ndarray, np.ndarray]]):
            off = 0
            for vals, st in which:
                yield st + off
                off += len(vals)

        def band(tables, rows: int, which: int):
            tables = [t for t in tables if t[0].shape[1]]
            for b in range(rows):
                yield _merged_rows(tables, b)[which] if tables else np.empty(0, np.uint32)

        btables = [(p[5], p[6]) for p in parts]
        arrays = [
            ("vals", np.uint32, (nv,), lambda: (p[0] for p in parts)),
            ("st", np.int64, (n,), lambda: starts([(p[0], p[1]) for p in parts])),
            ("ln", np.int32, (n,), lambda: (p[2] for p in parts)),
            ("id_blob", np.uint8, (nb,), lambda: (p[3] for p in parts)),
            ("id_off", np.int64, (n + 1,), lambda: _ids_chunks([(p[3], p[4]) for p in parts])),
            ("band_keys", np.uint32, (self.bands, n), lambda: band(btables, self.bands, 0)),
            ("band_recs", np.uint32, (self.bands, n), lambda: band(btables, self.bands, 1)),
        ]
        if self.word_edits:
            ekeys, erecs = self._eruns.live()
            words = [(p.arrays["tok"], p.arrays["tinfo"], p.arrays["tmask"], p.arrays["tst"], p.arrays["tln"])
                     for p in frozen]
            words.append((self._tok.view(), self._tinfo.view(), self._tmask.view(), self._tst.view(), self._tln.view()))
            etables = [(p.arrays["edit_keys"], p.arrays["edit_recs"]) for p in frozen] + [(ekeys, erecs)]
            nt = sum(len(w[0]) for w in words)
            ne = sum(t[0].shape[1] for t in etables)
            arrays += [
                ("tok", np.uint32, (nt,), lambda: (w[0] for w in words)),
                ("tinfo", np.uint8, (nt,), lambda: (w[1] for w in words)),
                ("tmask", np.uint32, (nt,), lambda: (w[2] for w in words)),
                ("tst", np.int64, (n,), lambda: starts([(w[0], w[3]) for w in words])),
                ("tln", np.int32, (n,), lambda: (w[4] for w in words)),
                ("edit_keys", np.uint32, (1, ne), lambda: band(etables, 1, 0)),
                ("edit_recs", np.uint32, (1, ne), lambda: band(etables, 1, 1)),
            ]
        _pack_stream(write, self.KIND, self._meta(base), arrays)
        return n

    @classmethod
    def open(cls, segments: list, threshold: float = 0.85, num_perm: int = 128, *, shingle: str = "char3",
             seed: int = 1, word_edits: bool = False) -> "NearDuplicateIndex":
        """An index over persisted segments (bytes-like, oldest first), which stay views of those bytes. With
        segments, their stored parameters win over the arguments (they define what the stored keys mean)."""
        def make(meta: dict) -> "NearDuplicateIndex":
            if meta.get("features") != 1:
                raise ValueError(f"unsupported feature version {meta.get('features')!r}")
            idx = cls(meta["threshold"], meta["num_perm"], shingle=meta["shingle"], seed=meta["seed"],
                      word_edits=bool(meta.get("word_edits", False)))
            if (idx.bands, idx.rows) != (meta["bands"], meta["rows"]):  # stored choice wins over today's rule
                idx.bands, idx.rows = meta["bands"], meta["rows"]
                idx._init_state()
            return idx

        idx = _open_parts(segments, cls.KIND, make, ("threshold", "num_perm", "shingle", "seed", "bands", "rows",
                                                      "features", "word_edits"), "ln", ("band_keys", "band_recs"))
        if idx is None:
            return cls(threshold, num_perm, shingle=shingle, seed=seed, word_edits=word_edits)
        if idx.word_edits:
            idx._eruns.freeze([(p.arrays["edit_keys"], p.arrays["edit_recs"]) for p in idx._frozen])
        return idx



# ----------------------------------------------------------------------------------------------------------------
# ImageHashIndex

_BLOCKS = 4  # 16-bit blocks of a 64-bit hash


@functools.cache
def _block_masks(radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        for bits in combinations(range(16), r):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, np.uint16)


class ImageHashIndex(_PartsIndex):
    """Near-duplicate images by perceptual hash (64-bit ints) and Hamming distance (<= max_distance)."""

    def __init__(self, max_distance: int = 6) -> None:
        if not isinstance(max_distance, int) or not 0 <= max_distance <= 64:
            raise ValueError(f"max_distance must be an int in [0, 64], got {max_distance!r}")
        self.max_distance = max_distance
        self._runs = _Runs(_BLOCKS, np.uint16)
        self._frozen: list[_Frozen] = []  # persisted segments: hashes, id_blob, id_off
        self._live_base = 0
        self._hashes = _Buf(np.uint64)  # added since opened
        self._ids = _Ids()

    def __len__(self) -> int:
        return self._live_base + len(self._ids)


    def _stored(self, j: np.ndarray) -> np.ndarray:
        """The hashes of stored records j (global record numbers)."""
        bases = [p.base for p in self._frozen] + [self._live_base]
        parts = [p.arrays["hashes"] for p in self._frozen] + [self._hashes.arr]
        out = np.empty(len(j), np.uint64)
        for part, sel in _by_part(bases, j):
            out[sel] = parts[part][j[sel] - bases[part]]
        return out

    @staticmethod
    def _blocks(h: np.ndarray) -> np.ndarray:
        return np.stack([((h >> _U64(16 * i)) & _U64(0xFFFF)).astype(np.uint16) for i in range(_BLOCKS)])

    def check_and_add(self, ids: list[str], phashes: list[int]) -> list[str | None]:
        """For each hash in order: the id of a kept earlier image (history, or this call) within max_distance
        (the closest; ties: the earliest), or None, in which case it is added under its id."""
        n = len(phashes)
        _check_ids(ids, n)
        if n == 0:
            return []
        try:
            h = np.array([int(p) & _MASK64 if -(1 << 63) <= int(p) < (1 << 64) else None for p in phashes],
                         dtype=np.uint64)
        except (TypeError, ValueError):
            raise ValueError("phashes must be 64-bit integers") from None
        uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        reps = np.sort(first)
        nr = len(reps)
        rh = h[reps]
        rblocks = self._blocks(rh)
        masks = _block_masks(self.max_distance // _BLOCKS)
        # the representatives as a temporary run, to find pairs within the batch by the same probing
        batch = _Runs(_BLOCKS, np.uint16)
        bo = np.argsort(rblocks, axis=1, kind="stable")
        batch.runs = [(np.take_along_axis(rblocks, bo, axis=1), bo.astype(np.uint32))]
        d = self.max_distance

        def close(i, j, other, earlier_only=False):
            """Candidate pairs (item i, j in `other`) within the distance (most are chance block matches)."""
            i = i.astype(np.int64)
            j = j.astype(np.int64)
            ok = np.bitwise_count(rh[i] ^ other(j)) <= d
            if earlier_only:
                ok &= j < i
            return i[ok], j[ok]

        hist_i, hist_j, bat_i, bat_j = [], [], [], []
        for blk in range(_BLOCKS):
            for mask in masks:
                q = rblocks[blk] ^ mask
                o = np.argsort(q, kind="stable")
                for a, b in zip(*self._runs.probe(blk, q[o], o, _MAX_BUCKET)):
                    a, b = close(a, b, self._stored)
                    hist_i.append(a)
                    hist_j.append(b)
                for a, b in zip(*batch.probe(blk, q[o], o, _MAX_BUCKET)):
                    a, b = close(a, b, rh.__getitem__, earlier_only=True)
                    bat_i.append(a)
                    bat_j.append(b)

        def verify(pi, pj, other):
            if not pi:
                return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
            i, j = _unique_pairs([_pair_keys(np.concatenate(pi), np.concatenate(pj))])
            return i, j, -np.bitwise_count(rh[i] ^ other(j)).astype(float)

        h_i, h_j, h_s = verify(hist_i, hist_j, self._stored)
        b_i, b_j, b_s = verify(bat_i, bat_j, rh.__getitem__)
        kept, kind, match = _resolve(nr, h_i, h_j, h_s, b_i, b_j, b_s)
        rep_result: list[str | None] = [None] * nr
        for r in np.nonzero(~kept)[0].tolist():
            rep_result[r] = self._id(int(match[r])) if kind[r] == 1 else ids[int(reps[match[r]])]
        rep_pos = np.searchsorted(reps, first[inverse])  # each item's representative (position in reps)
        result: list[str | None] = [None] * n
        for i, rp in enumerate(rep_pos.tolist()):
            if reps[rp] == i:
                result[i] = rep_result[rp]
            else:
                result[i] = ids[int(reps[rp])] if kept[rp] else rep_result[rp]
        kept_pos = np.nonzero(kept)[0]
        if len(kept_pos):
            base = len(self)
            self._ids.extend([ids[i] for i in reps[kept_pos].tolist()])
            self._hashes.extend(rh[kept_pos])
            kb = rblocks[:, kept_pos]
            o = np.argsort(kb, axis=1, kind="stable")
            self._runs.add_sorted(np.take_along_axis(kb, o, axis=1), (base + o).astype(np.uint32))
        return result

    KIND = "ImageHashIndex"

    def write_segment(self, write, merge: int = 0) -> int:
        """Write one segment holding the last ``merge`` persisted segments and the images added since the index
        was opened, through ``write`` (a callable taking bytes). Returns the segment's record count."""
        keys, recs = self._runs.live()
        frozen = self._frozen[len(self._frozen) - merge:] if merge else []
        parts = [(p.arrays["hashes"], p.arrays["id_blob"], p.arrays["id_off"], p.arrays["block_keys"],
                  p.arrays["block_recs"]) for p in frozen]
        parts.append((self._hashes.view(), self._ids.blob.view(), self._ids.off.view(), keys, recs))
        base = frozen[0].base if frozen else self._live_base
        n = sum(len(p[0]) for p in parts)

        def block(which: int):
            tables = [(p[3], p[4]) for p in parts if p[3].shape[1]]
            for b in range(_BLOCKS):
                yield _merged_rows(tables, b)[which] if tables else np.empty(0, np.uint16)

        _pack_stream(write, self.KIND, {"max_distance": self.max_distance, "blocks": _BLOCKS, "base": base}, [
            ("hashes", np.uint64, (n,), lambda: (p[0] for p in parts)),
            ("id_blob", np.uint8, (sum(len(p[1]) for p in parts),), lambda: (p[1] for p in parts)),
            ("id_off", np.int64, (n + 1,), lambda: _ids_chunks([(p[1], p[2]) for p in parts])),
            ("block_keys", np.uint16, (_BLOCKS, n), lambda: block(0)),
            ("block_recs", np.uint32, (_BLOCKS, n), lambda: block(1)),
        ])
        return n


    @classmethod
    def open(cls, segments: list, max_distance: int = 6) -> "ImageHashIndex":
        """An index over persisted segments (bytes-like, oldest first), which stay views of those bytes; their
        stored max_distance wins over the argument."""
        def make(meta: dict) -> "ImageHashIndex":
            if meta.get("blocks") != _BLOCKS:
                raise ValueError(f"unsupported block layout {meta.get('blocks')!r}")
            return cls(meta["max_distance"])

        idx = _open_parts(segments, cls.KIND, make, ("max_distance", "blocks"), "hashes", ("block_keys", "block_recs"))
        return idx or cls(max_distance)

