"""A synthetic ingest corpus built from the real Banking77 and SNIPS utterances, with planted duplicates.

``build_corpus(n, seed)`` returns ``(records, truth)``: records ``{"source_id", "text"}`` in arrival order and the
planted pairs. Deterministic for a seed (``random.Random(seed)`` only; no hash-order dependence). Base records
(~90%) look like real traffic and are mostly distinct, but not all: recombining templates and reusing
utterances makes some base records near duplicates of others by chance (measured on 200k records: 3.5% of base
records have a char-3-gram Jaccard >= 0.85 with an earlier one, 11% >= 0.75), which is why the benchmark reports
them as "flagged but not planted" rather than as false positives. The kinds:

* SNIPS recombination (55%): a real SNIPS utterance with every slot refilled by a random value of the same intent
  and slot type seen anywhere in SNIPS ("add {artist} to my {playlist} playlist"), ~13.8k templates;
* Banking77 follow-ups (25%): two real Banking77 utterances of the same intent, joined the way people chain
  questions ("... Also, ...");
* Banking77 with context (20%): one real utterance with a greeting and name, and/or a reference number, amount,
  date or order id around it.

Planted, always after their original (a base record, never another planted one):

* exact duplicates (~5%): the original text, or the original with whitespace changes only (doubled or trailing
  spaces, a tab, a newline) or in NFD; identical after ``normalise_text``. ``truth["exact_pairs"]`` lists
  ``(dup_source_id, original_source_id)``;
* near duplicates (~5%): one edit: a typo (character dropped, doubled, replaced or two swapped), a case change, a
  punctuation change, a filler word inserted, a word removed, or two adjacent words swapped; never identical to
  the original after ``normalise_text``. ``truth["near_pairs"]`` lists ``(dup_source_id, original_source_id)``
  and ``truth["near_kinds"]`` the edit of each pair.

Whether a near pair is a near duplicate *by Jaccard* depends on the shingling (a typo in a short utterance can
fall under 0.85); the benchmark reports recall on all planted pairs and on those whose exact Jaccard reaches
the threshold.

``write_jsonl_objects(records, n_objects)`` splits records into JSONL object bodies named like
``bench/part-00001.jsonl``.
"""

from __future__ import annotations

import csv
import json
import random
import unicodedata
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"

FILLERS = ("please", "just", "really", "now", "actually", "again", "today", "quickly", "still", "also", "maybe")
GREETINGS = ("Hi", "Hello", "Hey", "Good morning", "Good evening", "Hi there", "Hello team", "Dear support", "Hiya")
FIRST = ("Anna", "Ben", "Carla", "Dmitri", "Elif", "Farah", "Gustavo", "Hana", "Ivan", "Jia", "Kofi", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Ximena",
         "Yusuf", "Zoe", "Aiko", "Bruno", "Chidi", "Dana", "Emil", "Fatima", "Goran", "Ines", "Jonas", "Kai")
LAST = ("Smith", "Garcia", "Müller", "Rossi", "Kowalski", "Nguyen", "Okafor", "Silva", "Jensen", "Novak", "Khan",
        "Haddad", "Tanaka", "Dubois", "O'Brien", "Petrov", "Costa", "Yilmaz", "Andersson", "Moreau", "Schmidt")
CONNECTORS = (" ", " Also, ", " And ", " Also ", " One more thing: ", " Plus, ", " Another question: ", " Oh and ")
CONTEXT_SUFFIX = (
    " My reference is {ref}.", " Order number {ref}.", " It was {amt}.", " The amount was {amt}.",
    " This happened on {date}.", " Since {date}.", " Card ending {last4}.", " Account ending in {last4}.",
    " Ticket #{ref}.", " (ref {ref})", " I paid {amt} on {date}.", " Transaction id {ref}.",
)
CURRENCIES = ("$", "€", "£", "")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


@cache
def banking77() -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(texts, texts grouped by category), in file order."""
    with open(DATA / "banking77" / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_cat: dict[str, list[str]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r["text"])
    return tuple(r["text"] for r in rows), tuple(tuple(v) for _, v in sorted(by_cat.items()))


def _load_snips_file(path: Path) -> dict:
    raw = path.read_bytes()
    # some files carry surrogate pairs encoded one by one (CESU-8 style): join them into real characters
    text = raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass").decode("utf-16")
    return json.loads(text)


@cache
def snips() -> tuple[tuple[tuple, ...], dict]:
    """(templates, pools): a template is a tuple of parts, str for fixed text and (intent, slot) for a slot;
    pools maps (intent, slot) to the tuple of values seen for it."""
    templates, pools = [], {}
    for path in sorted((DATA / "snips" / "2017-06-custom-intent-engines").glob("*/train_*_full.json")):
        data = _load_snips_file(path)
        for intent, utterances in sorted(data.items()):
            for u in utterances:
                parts = []
                for chunk in u["data"]:
                    if chunk.get("entity"):
                        key = (intent, chunk["entity"])
                        pools.setdefault(key, {})[chunk["text"].strip()] = None
                        parts.append(key)
                    else:
                        parts.append(chunk["text"])
                templates.append(tuple(parts))
    return tuple(templates), {k: tuple(v) for k, v in pools.items()}


def _typo(rng: random.Random, text: str) -> str | None:
    words = text.split(" ")
    cand = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not cand:
        return None
    i = cand[int(rng.random() * len(cand))]
    w = words[i]
    p = 1 + int(rng.random() * (len(w) - 2))
    op = int(rng.random() * 4)
    if op == 0:
        w = w[:p] + w[p + 1:]
    elif op == 1:
        w = w[:p] + w[p] + w[p:]
    elif op == 2:
        w = w[:p] + "qwertyuiopasdfghjklzxcvbnm"[int(rng.random() * 26)] + w[p + 1:]
    else:
        w = w[: p - 1] + w[p] + w[p - 1] + w[p + 1:]
    words[i] = w
    return " ".join(words)


def _case(rng: random.Random, text: str) -> str | None:
    op = int(rng.random() * 4)
    if op == 0:
        return text.lower()
    if op == 1:
        return text.upper()
    if op == 2:
        return text[:1].swapcase() + text[1:]
    return text.title()


def _punct(rng: random.Random, text: str) -> str | None:
    stripped = text.rstrip(".?!")
    op = int(rng.random() * 4)
    if op == 0 and stripped != text:
        return stripped
    if op == 1:
        return stripped + "?"
    if op == 2:
        return stripped + "!!"
    if "," in text:
        return text.replace(",", "")
    return stripped + "..."


def _insert(rng: random.Random, text: str) -> str | None:
    words = text.split(" ")
    words.insert(1 + int(rng.random() * len(words)), FILLERS[int(rng.random() * len(FILLERS))])
    return " ".join(words)


def _remove(rng: random.Random, text: str) -> str | None:
    words = text.split(" ")
    if len(words) < 4:
        return None
    del words[1 + int(rng.random() * (len(words) - 1))]
    return " ".join(words)


def _swap(rng: random.Random, text: str) -> str | None:
    words = text.split(" ")
    if len(words) < 3:
        return None
    i = int(rng.random() * (len(words) - 1))
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


NEAR_EDITS = (("typo", _typo), ("case", _case), ("punctuation", _punct), ("insert", _insert),
              ("remove", _remove), ("swap", _swap))


def _exact_copy(rng: random.Random, text: str) -> str:
    op = int(rng.random() * 6)
    if op == 0:
        return text + " "
    if op == 1:
        return "  " + text
    if op == 2 and " " in text:
        return text.replace(" ", "  ", 1)
    if op == 3 and " " in text:
        return text.replace(" ", "\t", 1)
    if op == 4 and not text.isascii():
        return unicodedata.normalize("NFD", text)
    return text


def _canon(text: str) -> str:
    """What normalise_text does to these texts (NFC, whitespace collapsed), without importing labelops."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


@cache
def banking77_labels() -> dict[str, str]:
    """Banking77 train text -> its category."""
    with open(DATA / "banking77" / "train.csv", newline="", encoding="utf-8") as f:
        return {r["text"]: r["category"] for r in csv.DictReader(f)}


def build_corpus(n: int = 1_000_000, seed: int = 7, *, banking_only: bool = False) -> tuple[list[dict], dict]:
    """n records in arrival order, and {"exact_pairs", "near_pairs", "near_kinds", ...} (see the docstring).
    `banking_only`: no SNIPS recombinations (the Banking77 kinds share their 45% as 25:20), and every record
    carries its Banking77 intent as "label" (a follow-up joins two utterances of one intent; a planted duplicate
    has its original's label): a labelled corpus for one intent project (the soak)."""
    rng = random.Random(seed)
    rnd = rng.random
    b_texts, b_cats = banking77()
    labels = banking77_labels() if banking_only else {}
    templates, pools = snips()
    # each template as a format string and the pools of its slots, in order
    formats = [("".join(p.replace("{", "{{").replace("}", "}}") if p.__class__ is str else "{}" for p in t),
                tuple(pools[p] for p in t if p.__class__ is not str)) for t in templates]
    nb, nt, ncat = len(b_texts), len(templates), len(b_cats)
    records: list[dict] = []
    base_idx: list[int] = []  # indices of base records (originals for planted duplicates)
    exact_pairs, near_pairs, near_kinds = [], [], []
    n_edits = len(NEAR_EDITS)
    for i in range(n):
        sid = f"src-{i:07d}"
        u = rnd()
        if u < 0.05 and base_idx:
            orig = base_idx[int(rnd() * len(base_idx))]
            o = records[orig]
            records.append({"source_id": sid, "text": _exact_copy(rng, o["text"]), **_label_of(o)})
            exact_pairs.append((sid, o["source_id"]))
            continue
        if u < 0.10 and base_idx:
            orig = base_idx[int(rnd() * len(base_idx))]
            o = records[orig]
            for _attempt in range(4):
                name, edit = NEAR_EDITS[int(rnd() * n_edits)]
                v = edit(rng, o["text"])
                if v is not None and _canon(v) != _canon(o["text"]):
                    records.append({"source_id": sid, "text": v, **_label_of(o)})
                    near_pairs.append((sid, o["source_id"]))
                    near_kinds.append(name)
                    break
            else:
                records.append({"source_id": sid, "text": o["text"] + " Thanks!", **_label_of(o)})  # a new base
                base_idx.append(i)
            continue
        v = 0.55 + 0.45 * rnd() if banking_only else rnd()
        label = None
        if v < 0.55:
            fmt, slot_pools = formats[int(rnd() * nt)]
            text = " ".join(fmt.format(*[pool[int(rnd() * len(pool))] for pool in slot_pools]).split())
        elif v < 0.80:
            cat = b_cats[int(rnd() * ncat)]
            a, b = cat[int(rnd() * len(cat))], cat[int(rnd() * len(cat))]
            conn = CONNECTORS[int(rnd() * len(CONNECTORS))]
            if conn != " " and conn.endswith(", "):
                b = b[:1].lower() + b[1:]
            text = a.strip() + conn + b.strip()
            label = labels.get(a)
        else:
            raw = b_texts[int(rnd() * nb)]
            text = raw.strip()
            label = labels.get(raw)
            w = rnd()
            if w < 0.6:
                name = FIRST[int(rnd() * len(FIRST))]
                if rnd() < 0.5:
                    name += " " + LAST[int(rnd() * len(LAST))]
                text = f"{GREETINGS[int(rnd() * len(GREETINGS))]}, this is {name}. {text}"
            if w > 0.3:
                suffix = CONTEXT_SUFFIX[int(rnd() * len(CONTEXT_SUFFIX))]
                text += suffix.format(
                    ref=f"{int(rnd() * 10**8):08d}", last4=f"{int(rnd() * 10**4):04d}",
                    amt=f"{CURRENCIES[int(rnd() * 4)]}{int(rnd() * 2000) + 1}.{int(rnd() * 100):02d}",
                    date=f"{MONTHS[int(rnd() * 12)]} {1 + int(rnd() * 28)}")
        records.append({"source_id": sid, "text": text, **({"label": label} if banking_only else {})})
        base_idx.append(i)
    truth = {"exact_pairs": exact_pairs, "near_pairs": near_pairs, "near_kinds": near_kinds, "n": n, "seed": seed,
             "base_records": len(base_idx)}
    return records, truth


def _label_of(record: dict) -> dict:
    return {"label": record["label"]} if "label" in record else {}


def write_jsonl_objects(records: list[dict], n_objects: int) -> list[tuple[str, bytes]]:
    """Split records (in order) into n_objects JSONL bodies: [("bench/part-00001.jsonl", body), ...]."""
    if n_objects < 1:
        raise ValueError("n_objects must be >= 1")
    try:
        import orjson

        dumps = orjson.dumps
    except ImportError:  # pragma: no cover - orjson is in requirements
        def dumps(obj):
            return json.dumps(obj, ensure_ascii=False).encode("utf-8")
    n = len(records)
    out = []
    for k in range(n_objects):
        lo, hi = k * n // n_objects, (k + 1) * n // n_objects
        body = b"\n".join(map(dumps, records[lo:hi]))
        out.append((f"bench/part-{k + 1:05d}.jsonl", body + b"\n" if hi > lo else b""))
    return out
