"""Unit tests of labelops.ingest.dedup: normalisation and ids, ExactIndex, NearDuplicateIndex, ImageHashIndex.

Near-duplicate tests run on real Banking77 utterances (data/banking77/train.csv) with planted variants, and
check the index against a brute-force, pure-Python reference of the same features.
"""

from __future__ import annotations

import csv
import random
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import xxhash

from labelops.ingest.dedup import (
    ExactIndex,
    ImageHashIndex,
    NearDuplicateIndex,
    content_digest,
    normalise_text,
    record_id,
    tail_to_merge,
)

REPO = Path(__file__).resolve().parents[1]


@cache
def banking77() -> list[str]:
    with open(REPO / "data" / "banking77" / "train.csv", newline="", encoding="utf-8") as f:
        return [normalise_text(r["text"]) for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------------------------
# normalisation and ids


def test_nfc_and_nfd_input_give_the_same_text_and_id():
    nfc = "Café crème, naïve façade"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    assert normalise_text(nfd) == normalise_text(nfc) == nfc
    assert record_id(normalise_text(nfd)) == record_id(normalise_text(nfc))


def test_whitespace_is_collapsed_and_stripped():
    text = "  Where\tis \n\n my\u00a0card\u3000now?\r\n\u2028 "
    assert normalise_text(text) == "Where is my card now?"
    assert normalise_text(text, collapse_whitespace=False) == text  # left exactly as it is


def test_control_and_invisible_format_characters_are_removed():
    assert normalise_text("top\x00 up\x07 my\x1b card\x7f\x85now") == "top up my card now"
    text = "zero\u200bwidth \ufeffbom soft\u00adhyphen \u202eltr\u202c"
    assert normalise_text(text) == "zerowidth bom softhyphen ltr"
    assert normalise_text("a\x00b", strip_control=False) == "a\x00b"


def test_what_is_kept():
    # case, punctuation, symbols, digits, accents, emoji, ZWJ sequences, ZWNJ, and flag tag sequences are content
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji: man ZWJ woman ZWJ girl
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # ZWNJ inside a word
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    text = f"I PAID €12.50 (twice!) — déjà vu {family} {persian} {england}"
    assert normalise_text(text) == text
    assert normalise_text("Hello World") != normalise_text("hello world")


def test_options_lowercase_and_nfkc():
    assert normalise_text("ＡＢＣ ｆｉ Ǆ", unicode_form="NFKC") == "ABC fi DŽ"
    assert normalise_text("ＡＢＣ", unicode_form="NFC") == "ＡＢＣ"
    assert normalise_text("Straße İST", lowercase=True) == unicodedata.normalize("NFC", "straße i̇st")
    with pytest.raises(ValueError):
        normalise_text("x", unicode_form="NFX")
    with pytest.raises(TypeError):
        normalise_text(b"x")  # type: ignore[arg-type]


def test_lone_surrogates_become_replacement_characters():
    assert normalise_text("bad \ud83d escape") == "bad \ufffd escape"
    record_id(normalise_text("bad \ud83d escape"))  # encodable


def test_digest_and_id_are_xxh3_128_of_utf8_and_stable():
    text = normalise_text("How do I top up my card?")
    assert content_digest(text) == xxhash.xxh3_128_digest(text.encode("utf-8"))
    assert len(content_digest(text)) == 16
    assert record_id(text) == content_digest(text).hex()
    # pinned: a change here changes every record id ever staged
    assert record_id("hello world") == "df8d09e93f874900a99b8775cc15b6c7"
    assert record_id("") == "99aa06d3014798d86001c324468d497f"


# ---------------------------------------------------------------------------------------------------------------
# ExactIndex


def test_exact_index_within_a_batch_and_across_a_round_trip():
    idx = ExactIndex()
    d = [content_digest(t) for t in ["a", "b", "a", "c", "b"]]
    assert idx.check_and_add(d) == [False, False, True, False, True]
    assert len(idx) == 3
    restored = ExactIndex.from_bytes(idx.to_bytes())
    assert len(restored) == 3
    d2 = [content_digest(t) for t in ["c", "d", "d", "a", "e"]]
    assert restored.check_and_add(d2) == [True, False, True, True, False]
    assert len(restored) == 5
    assert idx.check_and_add([]) == []


def test_exact_index_matches_a_python_set_over_many_batches():
    rng = random.Random(4)
    idx, seen = ExactIndex(), set()
    pool = [rng.randbytes(16) for _ in range(3000)]
    pool += [p[:8] + rng.randbytes(8) for p in pool[:50]]  # same first half, different digest
    for batch_no in range(40):
        batch = [rng.choice(pool) for _ in range(rng.randrange(1, 300))]
        expected = []
        for d in batch:
            expected.append(d in seen)
            seen.add(d)
        assert idx.check_and_add(batch) == expected
        if batch_no % 10 == 9:
            idx = ExactIndex.from_bytes(idx.to_bytes())
    assert len(idx) == len(seen)
    assert len(idx.to_bytes()) < 16 * len(seen) + 1024  # 16 bytes a digest


def test_exact_index_rejects_bad_input_and_bad_bytes():
    with pytest.raises(ValueError):
        ExactIndex().check_and_add([b"short"])
    idx = ExactIndex()
    idx.check_and_add([content_digest("x")])
    blob = bytearray(idx.to_bytes())
    blob[-20] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        ExactIndex.from_bytes(bytes(blob))
    with pytest.raises(ValueError):
        ExactIndex.from_bytes(idx.to_bytes()[:-3])
    with pytest.raises(ValueError, match="not 'ExactIndex'"):
        ExactIndex.from_bytes(NearDuplicateIndex().to_bytes())


# ---------------------------------------------------------------------------------------------------------------
# NearDuplicateIndex: a brute-force reference of the same features


def _ref_features(text: str) -> str:
    out = []
    for ch in text.casefold():
        cat = unicodedata.category(ch)
        if ch in "'\u2019\u2018\u02bc`\u00b4" or cat == "Cf":
            continue
        out.append(" " if ch.isspace() or cat[0] == "P" or cat == "Cc" else ch)
    return " ".join("".join(out).split())


def _ref_shingles(text: str, kind: str = "char", k: int = 3) -> set:
    seq = _ref_features(text)
    if kind == "word":
        seq = seq.split()
    if not seq:
        return set()
    k = min(k, len(seq))
    return {tuple(seq[i:i + k]) if kind == "word" else seq[i:i + k] for i in range(len(seq) - k + 1)}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def _reference(texts: list[str], threshold: float = 0.85, kind: str = "char", k: int = 3,
               word_edits: bool = False) -> list[int | None]:
    """Sequential brute force: index of the best (highest Jaccard, then earliest) kept earlier text with Jaccard
    >= threshold (or with ``word_edits`` one word edit away: `_one_word_edit`), else None."""
    sets = [_ref_shingles(t, kind, k) for t in texts]
    words = [_ref_features(t).split() for t in texts]
    kept, out = [], []
    for i, s in enumerate(sets):
        best, best_j = None, -1.0
        if s:
            for j in kept:
                jj = _jaccard(s, sets[j])
                near = jj >= threshold - 1e-9 or (word_edits and _one_word_edit(words[i], words[j], s, sets[j]))
                if near and jj > best_j:
                    best, best_j = j, jj
            if best is None:
                kept.append(i)
        out.append(best)
    return out


def _variant(rng: random.Random, text: str) -> str:
    kind = rng.randrange(5)
    words = text.split(" ")
    if kind == 0:
        return text.lower() if text != text.lower() else text.upper()
    if kind == 1:
        return text.rstrip("?.!") + ("!!" if text.endswith("?") else "?")
    if kind == 2:  # typo inside a long word
        cand = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()] or [0]
        i = rng.choice(cand)
        w = words[i]
        p = rng.randrange(1, max(2, len(w) - 1))
        words[i] = w[:p] + w[p + 1:] if len(w) > 2 else w + "x"
        return " ".join(words)
    if kind == 3:
        words.insert(rng.randrange(1, len(words) + 1), rng.choice(["please", "really", "now", "just"]))
        return " ".join(words)
    i = rng.randrange(len(words) - 1) if len(words) > 1 else 0
    words[i:i + 2] = words[i:i + 2][::-1]
    return " ".join(words)


def test_features_match_the_reference_jaccard():
    idx = NearDuplicateIndex()
    texts = banking77()[:400] + ["Café au lait?", "CAFÉ AU LAIT", "don't", "dont", "hi", "Hi!", "", "?!?", "$1 €1"]
    rng = random.Random(2)
    a = [rng.choice(texts) for _ in range(600)]
    b = [_variant(rng, t) if t and rng.random() < 0.7 else rng.choice(texts) for t in a]
    got = idx.similarities(a, b)
    for x, y, g in zip(a, b, got):
        sx, sy = _ref_shingles(x), _ref_shingles(y)
        assert g == pytest.approx(_jaccard(sx, sy) if sx and sy else 0.0), (x, y)
    assert idx.similarity("Café au lait?", "CAFÉ AU LAIT") == 1.0
    assert idx.similarity("don't", "dont") == 1.0
    assert idx.similarity("I paid $1", "I paid €1") < 1.0  # symbols are features


@pytest.mark.parametrize("shingle", ["char3", "word1", "word3", "char5"])
def test_near_index_equals_the_brute_force_reference_across_calls_and_round_trips(shingle):
    kind, k = shingle[:4], int(shingle[4:])
    rng = random.Random(11)
    base = banking77()[1000:1500]
    texts = base + [_variant(rng, t) for t in rng.sample(base, 150)]
    rng.shuffle(texts)
    texts = list(dict.fromkeys(texts))  # exact duplicates are removed before near dedup
    expected = _reference(texts, kind=kind, k=k)
    ids = [f"r{i}" for i in range(len(texts))]
    idx = NearDuplicateIndex(shingle=shingle)
    got = idx.check_and_add(ids[:200], texts[:200])
    idx = NearDuplicateIndex.from_bytes(idx.to_bytes())
    got += idx.check_and_add(ids[200:450], texts[200:450])
    got += idx.check_and_add(ids[450:], texts[450:])
    assert got == [None if e is None else ids[e] for e in expected]
    assert sum(e is not None for e in expected) >= 40
    assert len(idx) == sum(e is None for e in expected)


def test_planted_near_duplicates_of_real_utterances_are_found_with_the_id_they_duplicate():
    texts = banking77()
    ids = [f"b77-{i}" for i in range(len(texts))]
    idx = NearDuplicateIndex()
    first = idx.check_and_add(ids, texts)
    kept = [i for i, r in enumerate(first) if r is None]
    assert len(idx) == len(kept) > 9500
    rng = random.Random(5)
    originals = rng.sample(kept, 600)
    variants = [_variant(rng, texts[i]) for i in originals]
    sims = idx.similarities([texts[i] for i in originals], variants)
    planted = [(o, v) for o, v, s in zip(originals, variants, sims) if s >= 0.85 and normalise_text(v) != texts[o]]
    assert len(planted) >= 350  # the variants that are near duplicates by the definition
    found = idx.check_and_add([f"new-{n}" for n in range(len(planted))], [v for _, v in planted])
    same = sum(f == ids[o] for f, (o, _) in zip(found, planted))
    assert same / len(planted) >= 0.95, same / len(planted)
    # every reported match is real: an indexed record, at or above the threshold
    reported = [(v, f) for f, (_, v) in zip(found, planted) if f is not None]
    by_id = dict(zip(ids, texts))
    assert min(idx.similarities([v for v, _ in reported], [by_id[f] for _, f in reported])) >= 0.85


def test_clearly_different_utterances_are_not_flagged():
    texts = list(dict.fromkeys(banking77()[3000:5000]))
    idx = NearDuplicateIndex()
    res = idx.check_and_add([str(i) for i in range(len(texts))], texts)
    flagged = [(i, int(r)) for i, r in enumerate(res) if r is not None]
    sims = idx.similarities([texts[i] for i, _ in flagged], [texts[j] for _, j in flagged])
    assert all(s >= 0.85 for s in sims)  # no false positive: every flag is a verified near duplicate
    rate = len(flagged) / len(texts)
    assert rate < 0.03, rate  # Banking77 holds a few real near duplicates (e.g. "fiat"/"flat" typos)
    # and pairs that are clearly different never are
    rng = random.Random(8)
    pairs = [(rng.randrange(len(texts)), rng.randrange(len(texts))) for _ in range(3000)]
    pair_sims = idx.similarities([texts[a] for a, _ in pairs], [texts[b] for _, b in pairs])
    flagged_set = set(flagged)
    assert not any((a, b) in flagged_set or (b, a) in flagged_set for (a, b), s in zip(pairs, pair_sims) if s < 0.85)


def test_identical_empty_and_short_texts():
    idx = NearDuplicateIndex()
    res = idx.check_and_add(["a", "b", "c", "d", "e", "f", "g", "h"],
                           ["same text here", "same text here", "", "?!", "hi", "Hi!", "ok", "no"])
    assert res == [None, "a", None, None, None, "e", None, None]
    assert len(idx) == 4  # a, hi, ok, no: empty and punctuation-only texts are not added
    assert idx.check_and_add(["z"], [""]) == [None]
    assert len(idx) == 4


def test_batches_give_the_same_result_as_one_call():
    rng = random.Random(3)
    base = banking77()[6000:6800]
    texts = list(dict.fromkeys(base + [_variant(rng, t) for t in rng.sample(base, 200)]))
    rng.shuffle(texts)
    ids = [f"x{i}" for i in range(len(texts))]
    one = NearDuplicateIndex().check_and_add(ids, texts)
    idx, many = NearDuplicateIndex(), []
    for s in range(0, len(texts), 97):
        many += idx.check_and_add(ids[s:s + 97], texts[s:s + 97])
    assert many == one


def test_history_survives_round_trips_with_its_parameters():
    idx = NearDuplicateIndex(threshold=0.8, num_perm=96, shingle="word1", seed=9)
    idx.check_and_add(["h1", "h2"], ["please cancel my last transfer", "what is the exchange rate today"])
    blob = idx.to_bytes()
    again = NearDuplicateIndex.from_bytes(blob)
    assert (again.threshold, again.num_perm, again.shingle, again.seed) == (0.8, 96, "word1", 9)
    assert (again.bands, again.rows) == (idx.bands, idx.rows) and again.bands * again.rows <= 96
    assert len(again) == 2
    res = again.check_and_add(["n1", "n2", "n3"], ["Please cancel my last transfer!", "transfer my last cancel please",
                                                   "how do I order a new card"])
    assert res == ["h1", "h1", None]  # word1 is a bag of words: order does not matter
    third = NearDuplicateIndex.from_bytes(again.to_bytes())
    assert len(third) == 3
    assert third.check_and_add(["n4"], ["How do I order a new card?"]) == ["n3"]
    assert third.to_bytes() == NearDuplicateIndex.from_bytes(third.to_bytes()).to_bytes()


def test_band_choice_and_bad_parameters():
    idx = NearDuplicateIndex()
    assert (idx.bands, idx.rows) == (16, 8)
    p = 1 - (1 - 0.85 ** idx.rows) ** idx.bands
    assert p >= 0.99
    for kwargs in ({"threshold": 0}, {"threshold": 1.5}, {"num_perm": 1}, {"shingle": "char0"},
                   {"shingle": "bigram"}, {"seed": -1}):
        with pytest.raises(ValueError):
            NearDuplicateIndex(**kwargs)
    with pytest.raises(ValueError):
        idx.check_and_add(["a"], ["x", "y"])
    with pytest.raises(ValueError, match="not 'NearDuplicateIndex'"):
        NearDuplicateIndex.from_bytes(ImageHashIndex().to_bytes())



# ---------------------------------------------------------------------------------------------------------------
# NearDuplicateIndex with word edits: a brute-force reference of the rule


def _fmix(x: int) -> int:
    m = (1 << 64) - 1
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & m
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & m
    return x ^ (x >> 33)


def _letter_mask(word: str) -> int:
    return sum({1 << (_fmix(ord(c)) >> 59) for c in word})


def _spelling_variant(u: str, v: str) -> bool:
    alpha = all(unicodedata.category(c)[0] in "LM" for c in u + v)
    return (alpha and max(len(u), len(v)) >= 4 and abs(len(u) - len(v)) <= 1
            and bin(_letter_mask(u) ^ _letter_mask(v)).count("1") <= 2)


def _one_word_edit(a: list[str], b: list[str], sa: set, sb: set) -> bool:
    """The documented rule, spelled out: the shorter text has 3..64 words, and one word was inserted, swapped with
    its neighbour, or replaced by a spelling variant (and then the shingle sets differ by at most 8)."""
    if len(a) > len(b):
        a, b = b, a
    if len(a) < 3 or len(b) > 64:
        return False
    if len(b) == len(a) + 1:
        return any(b[:k] + b[k + 1:] == a for k in range(len(b)))
    if len(a) != len(b):
        return False
    diff = [k for k in range(len(a)) if a[k] != b[k]]
    if not diff:
        return True
    if len(diff) == 1:
        return _spelling_variant(a[diff[0]], b[diff[0]]) and len(sa ^ sb) <= 8
    k = diff[0]
    return len(diff) == 2 and diff[1] == k + 1 and (a[k], a[k + 1]) == (b[k + 1], b[k])


def _reference_edits(texts: list[str]) -> list[int | None]:
    return _reference(texts, word_edits=True)


def _edit_variant(rng: random.Random, text: str) -> str:
    """One of the edits a person makes: `_variant`'s five, or a word removed."""
    words = text.split(" ")
    if rng.random() < 0.2 and len(words) >= 4:
        del words[rng.randrange(1, len(words))]
        return " ".join(words)
    return _variant(rng, text)


@pytest.mark.parametrize("a, b, near", [
    ("find films nearby please", "find film nearby please", True),  # a letter dropped
    ("Rate this textbook five out of 6 ponits", "Rate this textbook five out of 6 points", True),  # letters swapped
    ("play the top ten sog", "play the top ten song", True),
    ("Rate The White Goddess 3 points today", "Rate The White Goddess 3 points", True),  # a word removed
    ("play some bass booty", "play some booty bass", True),  # two neighbours swapped
    ("what is my balance", "what is my balance?", True),  # punctuation: identical features (Jaccard 1)
    ("add Adele to my workout playlist", "add Beyonce to my workout playlist", False),  # another word, not a typo
    ("play some jazz", "play some rock", False),  # a different 4-letter word: 8 shingles apart, 7 letters apart
    ("card ending 1234 please", "card ending 1235 please", False),  # numbers are not misspelt words
    ("what is the weather", "what it the weather", False),  # 2-letter words: a different word, not a typo
    ("play jazz", "play jazz now", False),  # the shorter text has fewer than 3 words
    ("book a table for two tonight", "book a table for four people tonight", False),  # two edits
    ("please block my card now", "my card now please block", False),  # reordered, not one swap
])
def test_the_word_edit_rule(a, b, near):
    with_edits = NearDuplicateIndex(word_edits=True)
    jaccard = NearDuplicateIndex()
    assert with_edits.near_duplicates([a], [b]) == [near]
    assert with_edits.near_duplicates([b], [a]) == [near]  # symmetric
    sa, sb = _ref_shingles(a), _ref_shingles(b)
    assert near == (_jaccard(sa, sb) >= 0.85 or _one_word_edit(_ref_features(a).split(), _ref_features(b).split(),
                                                                  sa, sb))
    # without word edits, only the Jaccard rule
    assert jaccard.near_duplicates([a], [b]) == [_jaccard(sa, sb) >= 0.85]
    ids = ["first", "second"]
    assert with_edits.check_and_add(ids, [a, b]) == [None, "first" if near else None]


def test_word_edit_index_equals_the_brute_force_reference_across_calls_and_round_trips():
    rng = random.Random(13)
    base = banking77()[2000:2600]
    texts = base + [_edit_variant(rng, t) for t in rng.sample(base, 300)]
    rng.shuffle(texts)
    texts = list(dict.fromkeys(texts))
    expected = _reference_edits(texts)
    ids = [f"r{i}" for i in range(len(texts))]
    idx = NearDuplicateIndex(word_edits=True)
    got = idx.check_and_add(ids[:300], texts[:300])
    idx = NearDuplicateIndex.from_bytes(idx.to_bytes())
    assert idx.word_edits
    got += idx.check_and_add(ids[300:600], texts[300:600])
    idx = NearDuplicateIndex.open([bytearray(idx.to_bytes())])
    got += idx.check_and_add(ids[600:], texts[600:])
    assert got == [None if e is None else ids[e] for e in expected]
    by_jaccard = _reference(texts)
    edit_only = sum(e is not None and j is None for e, j in zip(expected, by_jaccard))
    assert edit_only >= 40, edit_only  # the word-edit path found what the Jaccard rule alone misses
    assert len(idx) == sum(e is None for e in expected)


def test_identical_shingles_with_different_words_are_judged_on_their_own_words():
    # the 2nd and 3rd texts have one char-3 shingle set ("schedules" occurs earlier in both), but only the 2nd is
    # one word edit from the 1st: the 3rd must not inherit the 2nd's match (it did once: texts with one shingle
    # set were collapsed before the word rule was applied)
    texts = ["show the schedules of schedule", "show the schedules of movie schedule",
             "show the schedules of movie schedules"]
    assert _ref_shingles(texts[1]) == _ref_shingles(texts[2])
    assert _reference_edits(texts) == [None, 0, None]
    assert NearDuplicateIndex(word_edits=True).check_and_add(["a", "b", "c"], texts) == [None, "a", None]
    # without word edits they are collapsed as before: the 2nd and 3rd are one text for the Jaccard rule
    assert NearDuplicateIndex().check_and_add(["a", "b", "c"], texts) == [None, None, "b"]


def test_word_edits_are_fixed_by_the_history():
    old = NearDuplicateIndex()  # a history written without word edits (or before they existed)
    old.check_and_add(["h"], ["Rate The White Goddess 3 points"])
    reopened = NearDuplicateIndex.open([old.to_bytes()], word_edits=True)
    assert not reopened.word_edits  # the stored segments decide: they hold no words to compare with
    assert reopened.check_and_add(["n"], ["Rate The White Goddess 3 points today"]) == [None]
    new = NearDuplicateIndex(word_edits=True)
    new.check_and_add(["h"], ["Rate The White Goddess 3 points"])
    assert NearDuplicateIndex.open([new.to_bytes()]).check_and_add(["n"], ["Rate The White Goddess 3 points today"]) \
        == ["h"]
    other = NearDuplicateIndex(word_edits=True)
    other.check_and_add(["x"], ["what is the fee for a transfer abroad"])
    with pytest.raises(ValueError, match="share their parameters"):
        NearDuplicateIndex.open([old.to_bytes(), other.to_bytes()])  # one history has one rule


# ---------------------------------------------------------------------------------------------------------------
# ImageHashIndex


def _flip(h: int, bits: list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def test_image_hashes_at_distance_0_5_and_7():
    base = 0xF0E1D2C3B4A59687
    d0, d5, d7 = base, _flip(base, [0, 13, 27, 41, 63]), _flip(base, [1, 2, 17, 30, 33, 48, 62])
    assert [bin(base ^ h).count("1") for h in (d0, d5, d7)] == [0, 5, 7]
    idx = ImageHashIndex()  # max_distance 6
    assert idx.check_and_add(["base"], [base]) == [None]
    assert idx.check_and_add(["d0", "d5", "d7"], [d0, d5, d7]) == ["base", "base", None]
    assert len(idx) == 2
    restored = ImageHashIndex.from_bytes(idx.to_bytes())
    # closest wins: one bit from d7, seven from base
    assert restored.check_and_add(["near-d7"], [_flip(d7, [5])]) == ["d7"]
    assert ImageHashIndex(max_distance=7).check_and_add(["a", "b"], [base, d7]) == [None, "a"]


def test_image_index_matches_brute_force_and_accepts_signed_hashes():
    rng = np.random.default_rng(1)
    hashes = []
    for b in rng.integers(0, 2**63, 400, dtype=np.int64).tolist():
        hashes.append(b)
        for _ in range(2):
            hashes.append(_flip(b, rng.choice(64, int(rng.integers(0, 10)), replace=False).tolist()))
    order = rng.permutation(len(hashes))
    hashes = [hashes[i] for i in order]
    ids = [f"i{i}" for i in range(len(hashes))]
    kept, expected = [], []
    for i, h in enumerate(hashes):
        dists = [(bin(h ^ hashes[j]).count("1"), n, j) for n, j in enumerate(kept)]
        best = min((d for d in dists if d[0] <= 6), default=None)
        expected.append(None if best is None else ids[best[2]])
        if best is None:
            kept.append(i)
    idx = ImageHashIndex()
    got = idx.check_and_add(ids[:500], hashes[:500])
    got += ImageHashIndex.from_bytes(idx.to_bytes()).check_and_add(ids[500:], hashes[500:])
    assert got == expected
    signed = ImageHashIndex()
    assert signed.check_and_add(["s", "u"], [-1, (1 << 64) - 2]) == [None, "s"]  # -1 is all 64 bits set
    with pytest.raises(ValueError):
        signed.check_and_add(["x"], [1 << 64])


# ---------------------------------------------------------------------------------------------------------------
# persisted segments: a run opens the segments, adds, and writes only its own segment (merging a tail now and then)


def test_tail_to_merge_keeps_few_segments_and_rewrites_each_record_few_times():
    assert tail_to_merge([], 10) == 0
    assert tail_to_merge([1000], 10) == 0  # a small run does not rewrite a big history
    assert tail_to_merge([1000, 10], 10) == 1  # similar sizes merge
    assert tail_to_merge([1000, 40, 20, 10], 10) == 3
    sizes16 = [4 ** k for k in range(20, 4, -1)]  # 16 segments, each 4x the next: no size rule applies
    assert tail_to_merge(sizes16, 1, max_segments=17) == 0
    assert tail_to_merge(sizes16, 1, max_segments=16) == 1  # the cap: one more segment would be 17
    rng = random.Random(5)
    sizes, written, total = [], 0, 0
    for _ in range(2000):  # nightly runs of very different sizes
        new = rng.choice([0, 1, 10, 100, 1000, 20_000])
        k = tail_to_merge(sizes, new)
        if not (k or new):
            continue
        merged = new + sum(sizes[len(sizes) - k:])
        sizes = sizes[: len(sizes) - k] + [merged]
        written += merged
        total += new
        assert len(sizes) <= 16
    assert sum(sizes) == total
    # each record was written ~log2(total / run size) times at most, not once per run
    assert written / total < 2 * np.log2(total)


def _segmented(cls, batches, add, **params):
    """Each batch in its own 'run': open the index over the segments so far, add, write one segment merging the
    tail tail_to_merge asks for. Returns the results per batch, the segments, and each run's merge count."""
    segments, sizes, results, merges = [], [], [], []
    for batch in batches:
        idx = cls.open([bytearray(s) for s in segments], **params)
        assert idx.segment_sizes() == sizes
        results.append(add(idx, batch))
        merge = tail_to_merge(idx.segment_sizes(), idx.live_records())
        merges.append(merge)
        if merge or idx.live_records():
            out = bytearray()
            n = idx.write_segment(out.extend, merge=merge)
            assert n == idx.live_records() + sum(sizes[len(sizes) - merge:])
            segments = segments[: len(segments) - merge] + [bytes(out)]
            sizes = sizes[: len(sizes) - merge] + [n]
    return results, segments, merges


@pytest.mark.parametrize("word_edits", [False, True])
def test_near_index_over_segments_equals_one_index_in_memory(word_edits):
    rng = random.Random(11)
    base = banking77()[:3000]
    texts = list(dict.fromkeys(base + [_edit_variant(rng, t) for t in rng.sample(base, 900)]))
    rng.shuffle(texts)
    ids = [f"r{i}" for i in range(len(texts))]
    sizes = [1500, 40, 30, 700, 20, 20, 10, 5, 900, 60]  # a big first run, then a mix (merges happen)
    bounds = np.cumsum([0] + sizes)
    batches = [(ids[a:b], texts[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if a < len(texts)]
    whole = NearDuplicateIndex(word_edits=word_edits)
    expected = [whole.check_and_add(i, t) for i, t in batches]
    got, segments, merges = _segmented(NearDuplicateIndex, batches, lambda idx, b: idx.check_and_add(*b),
                                       word_edits=word_edits)
    assert got == expected
    assert sum(x is not None for r in got for x in r) > 100  # duplicates of earlier runs' records were found
    assert any(merges) and len(segments) > 1  # both merged and separate segments were exercised
    final = NearDuplicateIndex.open(segments)
    assert final.word_edits == word_edits
    assert len(final) == len(whole)
    assert final.to_bytes() == whole.to_bytes()  # the same index, byte for byte, however it was persisted


@pytest.mark.parametrize("word_edits", [False, True])
def test_opened_segments_are_views_of_their_buffers_not_copies(word_edits):
    idx = NearDuplicateIndex(word_edits=word_edits)
    idx.check_and_add(["a", "b"], ["how do I activate my new card", "what is the fee for a transfer abroad"])
    buf = bytearray(idx.to_bytes())
    opened = NearDuplicateIndex.open([buf])
    assert len(opened._frozen[0].arrays) == (14 if word_edits else 7)
    raw = np.frombuffer(buf, np.uint8)
    for name, arr in opened._frozen[0].arrays.items():
        assert np.shares_memory(arr, raw), name
    assert opened.check_and_add(["c"], ["How do I activate my new card?"]) == ["a"]
    assert opened.live_records() == 0 and opened.segment_sizes() == [2]


def test_exact_index_over_segments_equals_one_index_in_memory():
    rng = random.Random(4)
    pool = [rng.randbytes(16) for _ in range(3000)]
    digests = [rng.choice(pool) for _ in range(6000)]
    bounds = [0, 2500, 2600, 2650, 4000, 4010, 4020, 6000]
    batches = [digests[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    whole = ExactIndex()
    expected = [whole.check_and_add(b) for b in batches]
    got, segments, merges = _segmented(ExactIndex, batches, lambda idx, b: idx.check_and_add(b))
    assert got == expected and any(merges)
    assert ExactIndex.open(segments).to_bytes() == whole.to_bytes()


def test_image_index_over_segments_equals_one_index_in_memory():
    rng = random.Random(8)
    roots = [rng.getrandbits(64) for _ in range(400)]
    hashes = [_flip(rng.choice(roots), rng.sample(range(64), rng.randrange(0, 9))) for _ in range(1200)]
    ids = [f"i{k}" for k in range(len(hashes))]
    bounds = [0, 600, 640, 660, 1000, 1010, 1200]
    batches = [(ids[a:b], hashes[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    whole = ImageHashIndex(max_distance=6)
    expected = [whole.check_and_add(*b) for b in batches]
    got, segments, merges = _segmented(ImageHashIndex, batches, lambda idx, b: idx.check_and_add(*b),
                                       max_distance=6)
    assert got == expected and any(merges)
    assert ImageHashIndex.open(segments).to_bytes() == whole.to_bytes()


def test_segments_that_do_not_fit_together_are_refused():
    a = NearDuplicateIndex()
    a.check_and_add(["a"], ["how do I activate my new card"])
    seg = a.to_bytes()
    with pytest.raises(ValueError, match="starts at record 0, expected 1"):
        NearDuplicateIndex.open([seg, seg])  # the same segment twice: record numbers would collide
    other = NearDuplicateIndex(threshold=0.7)
    other.check_and_add(["b"], ["what is the fee for a transfer abroad"])
    with pytest.raises(ValueError):
        NearDuplicateIndex.open([seg, other.to_bytes()])
