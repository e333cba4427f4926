"""`CrfEntityModel`: a linear-chain CRF (CRFsuite, via python-crfsuite) tagging entity spans, trained from scratch.

Same interface as the gazetteer `EntityModel`: ``fit(texts, spans_per_text)`` with spans as dicts
{start, end, label} (character offsets, end exclusive), ``predict(texts) -> list[list[Span]]``,
``predictions(texts)``, ``labels``; serialised by ``to_bytes`` / ``from_bytes``. Nothing is downloaded: the
model is trained from the labelled spans only.

Tokens are those of the gazetteer (`labelops.models.entities.tokens`: runs of word characters, or one other
non-space character), tagged BIO. A token is inside a labelled span when it overlaps it (SNIPS has a handful of
spans ending in a space or splitting a token; the first span wins). Features per token (``FEATURES`` names
their version): the case-folded word, its prefixes and suffixes (1-3 characters), its shape ("Xxxx", "dd"...) and
short shape, is-digit / is-title / is-upper / is-punctuation flags, the case-folded words and short shapes of
the neighbours within +-2 tokens, the bigrams with the previous and next word, and BOS / EOS at the ends.
Training: CRFsuite's SGD with L2 regularisation (``l2sgd``, c2=0.3, 10 epochs), every possible transition.

Measured on SNIPS (train on ``train_*_full.json``, 13,784 utterances; evaluate on ``validate_*.json``, 700
utterances, 1,794 spans, exact span): micro F1 0.941 (precision 0.941, recall 0.941), macro over the 39 types
0.886, against the gazetteer's 0.752 (0.860 / 0.668) and 0.675; training 21 s on a 2-core box (~27 s when it is
busy: features ~2 s, 10 SGD epochs; CRFsuite uses one core), predicting the 700 utterances 0.2 s. The mean span
score (0.940) matches the precision; spans scoring >= 0.9 are ~98 % right, those below 0.7 ~55 %.
Chosen on an 80/20 split of the training files: l2sgd c2 in {0.1, 0.3, 1}, 6 or 10 epochs (exact-span F1
0.938-0.945); L-BFGS with L1 (c1=0.05, c2=0.01, 150 iterations) 0.948 but ~125-235 s, a 1.6 MB model instead of
10-12 MB; ``feature.minfreq=2`` 3 MB but 0.006 less F1.

Serialised form (`to_bytes`): one line of JSON (format, feature settings, training parameters, labels,
n_train, the model's size and sha256) then a newline, then the CRFsuite model file's bytes. A CRFsuite model
is data (feature weights, label and attribute dictionaries), it holds no code and loading executes none. Its C
reader checks little, though (a crafted file can crash it): the bytes are checked against the header's sha256,
size and CRFsuite's own header before the reader sees them, and the registry checks the whole artifact's
sha256 against meta.json first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import threading
from collections.abc import Iterable, Sequence

from labelops.dispatch.tasks import Prediction, Span
from labelops.models.entities import span_predictions, tokens

FORMAT = "labelops-entities-crf/1"
FEATURES = "labelops-crf-features/1"
UNREGISTERED = "unregistered"
OUTSIDE = "O"
ALGORITHMS = ("l2sgd", "lbfgs")  # CRFsuite's: SGD with L2 regularisation; L-BFGS (OWL-QN when c1 > 0)
DEFAULT_PARAMS = {"algorithm": "l2sgd", "c1": 0.0, "c2": 0.3, "max_iterations": 10}
DEFAULT_FEATURES = {"version": FEATURES, "window": 2, "affixes": [1, 2, 3]}
CRFSUITE_MAGIC = b"lCRF"
CRFSUITE_HEADER = struct.Struct("<4sI4sIIIIIIIII")  # magic, size, type, version, 3 counts, 5 offsets: 48 bytes
_PUNCT = re.compile(r"^[^\w\s]+$")


# -------------------------------------------------------------------------------------------------- features
def _shape(word: str) -> str:
    out = []
    for ch in word:
        if ch.isupper():
            out.append("X")
        elif ch.islower():
            out.append("x")
        elif ch.isdigit():
            out.append("d")
        else:
            out.append(ch)
    return "".join(out)


def _short_shape(shape: str) -> str:
    """The shape with repeats collapsed: "Xxxxx" -> "Xx", "dddd" -> "d"."""
    return "".join(ch for i, ch in enumerate(shape) if i == 0 or ch != shape[i - 1])


def token_features(words: Sequence[str], *, window: int = 2, affixes: Sequence[int] = (1, 2, 3)) -> list[dict]:
    """CRFsuite item features (name -> 1.0) for each token of a sentence; words as written (not case-folded)."""
    low = [w.casefold() for w in words]
    shapes = [_short_shape(_shape(w)) for w in words]
    n = len(words)
    out = []
    for i, w in enumerate(words):
        lw, shape = low[i], _shape(w)
        f = {"bias": 1.0, f"w={lw}": 1.0, f"shape={shape[:12]}": 1.0, f"sshape={shapes[i]}": 1.0}
        for k in affixes:
            if len(lw) >= k:
                f[f"pre{k}={lw[:k]}"] = 1.0
                f[f"suf{k}={lw[-k:]}"] = 1.0
        if w.isdigit():
            f["is_digit"] = 1.0
        if w.istitle():
            f["is_title"] = 1.0
        if w.isupper():
            f["is_upper"] = 1.0
        if _PUNCT.match(w):
            f["is_punct"] = 1.0
        for d in range(1, window + 1):
            for j, side in ((i - d, "-"), (i + d, "+")):
                if 0 <= j < n:
                    f[f"{side}{d}:w={low[j]}"] = 1.0
                    f[f"{side}{d}:sshape={shapes[j]}"] = 1.0
                    if d == 1:
                        f[f"{side}1:title"] = float(words[j].istitle())
        if i == 0:
            f["BOS"] = 1.0
        else:
            f[f"bi-={low[i - 1]}|{lw}"] = 1.0
        if i == n - 1:
            f["EOS"] = 1.0
        else:
            f[f"bi+={lw}|{low[i + 1]}"] = 1.0
        out.append(f)
    return out


def bio_tags(text: str, toks: Sequence[tuple[int, int, str]], spans: Iterable[dict]) -> list[str]:
    """The BIO tag of each token: a token overlapping a span is inside it (the first span, by start, wins)."""
    tags = [OUTSIDE] * len(toks)
    for s in sorted(spans, key=lambda s: (int(s["start"]), int(s["end"]))):
        start, end, label = int(s["start"]), int(s["end"]), str(s["label"])
        inside = [k for k, (a, b, _) in enumerate(toks) if a < end and b > start and tags[k] == OUTSIDE]
        # a span that overlaps an already tagged token (overlapping spans) keeps only its own contiguous tokens
        for n, k in enumerate(inside):
            if n and inside[n - 1] != k - 1:
                break
            tags[k] = ("B-" if n == 0 else "I-") + label
    return tags


def _decode(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(first token, last token inclusive, label) of each span of a BIO path."""
    out: list[list] = []
    for k, tag in enumerate(tags):
        if tag == OUTSIDE or "-" not in tag:
            continue
        prefix, label = tag.split("-", 1)
        if prefix == "I" and out and out[-1][1] == k - 1 and out[-1][2] == label:
            out[-1][1] = k
        else:
            out.append([k, k, label])
    return [tuple(x) for x in out]


def _check_crfsuite_model(body: bytes) -> None:
    """Refuse bytes that are not a complete, self-consistent CRFsuite model file before its C reader sees them."""
    if len(body) < CRFSUITE_HEADER.size:
        raise ValueError(f"CRFsuite model too short ({len(body)} bytes)")
    magic, size, _type, _version, _nf, _nl, _na, *offsets = CRFSUITE_HEADER.unpack_from(body)
    if magic != CRFSUITE_MAGIC:
        raise ValueError(f"not a CRFsuite model (magic {magic!r})")
    if size != len(body):
        raise ValueError(f"CRFsuite model says {size} bytes, has {len(body)}")
    if any(not CRFSUITE_HEADER.size <= o < size for o in offsets if o):
        raise ValueError("CRFsuite model offsets outside the file")


# ----------------------------------------------------------------------------------------------------- model
class CrfEntityModel:
    """``fit(texts, spans_per_text)`` then ``predict(texts)``; ``version`` is set by the registry. The registry
    stores it under the kind "entities" (the same champion slot as the gazetteer), as ``to_bytes()``."""

    kind = "entities"
    artifact_format = "crfsuite"

    def __init__(self, *, algorithm: str = DEFAULT_PARAMS["algorithm"], c1: float = DEFAULT_PARAMS["c1"],
                 c2: float = DEFAULT_PARAMS["c2"], max_iterations: int = DEFAULT_PARAMS["max_iterations"],
                 window: int = 2, affixes: Sequence[int] = (1, 2, 3)) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r}: one of {ALGORITHMS}")
        if c1 and algorithm != "lbfgs":
            raise ValueError("c1 (L1 regularisation) needs algorithm='lbfgs'")
        self.params = {"algorithm": algorithm, "c1": float(c1), "c2": float(c2), "max_iterations": int(max_iterations)}
        self.feature_settings = {"version": FEATURES, "window": int(window), "affixes": [int(a) for a in affixes]}
        self.version: str = UNREGISTERED
        self.n_train = 0
        self._labels: list[str] = []
        # CRFsuite reads the model bytes in place (no copy): the tagger must never outlive them. It also holds the
        # sequence being tagged, so one text at a time (the lock).
        self._tagger = None
        self._model: bytes | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ training
    def _features(self, text: str) -> tuple[list[tuple[int, int, str]], list[dict]]:
        toks = tokens(text)
        words = [text[a:b] for a, b, _ in toks]
        return toks, token_features(words, window=self.feature_settings["window"],
                                    affixes=self.feature_settings["affixes"])

    def fit(self, texts: Sequence[str], spans_per_text: Sequence[Iterable[dict]]) -> CrfEntityModel:
        import pycrfsuite

        texts, spans_per_text = list(texts), [list(s or ()) for s in spans_per_text]
        if len(texts) != len(spans_per_text):
            raise ValueError(f"{len(texts)} texts but {len(spans_per_text)} span lists")
        trainer = pycrfsuite.Trainer(verbose=False)
        labels: set[str] = set()
        n_seq = 0
        for i, (text, spans) in enumerate(zip(texts, spans_per_text)):
            for s in spans:
                start, end = int(s["start"]), int(s["end"])
                if not 0 <= start < end <= len(text):
                    raise ValueError(f"text {i}: span {start}:{end} outside the text (length {len(text)})")
            toks, feats = self._features(text)
            if not toks:
                continue
            tags = bio_tags(text, toks, spans)
            labels.update(t[2:] for t in tags if t != OUTSIDE)
            trainer.append(pycrfsuite.ItemSequence(feats), tags)
            n_seq += 1
        if not labels:
            raise ValueError("no labelled span on a token: nothing to learn")
        algorithm = self.params["algorithm"]
        trainer.select(algorithm, "crf1d")
        settings = {"c2": self.params["c2"], "max_iterations": self.params["max_iterations"],
                    "feature.possible_transitions": True}
        if algorithm == "lbfgs":
            settings["c1"] = self.params["c1"]
        trainer.set_params(settings)
        fd, path = tempfile.mkstemp(prefix="labelops-crf-", suffix=".crfsuite")
        os.close(fd)
        try:
            trainer.train(path)
            with open(path, "rb") as fh:
                body = fh.read()
        finally:
            os.unlink(path)
        self._labels = sorted(labels)
        self.n_train = len(texts)
        self._open(body)
        return self

    def _open(self, body: bytes) -> None:
        import pycrfsuite

        _check_crfsuite_model(body)
        tagger = pycrfsuite.Tagger()
        tagger.open_inmemory(body)
        self._tagger, self._model = tagger, body  # the old tagger goes before its bytes

    # ---------------------------------------------------------------------------------------------- inference
    def predict(self, texts: Sequence[str]) -> list[list[Span]]:
        if self._tagger is None:
            raise RuntimeError("CrfEntityModel is not fitted")
        with self._lock:
            return [self._tag(text) for text in texts]

    def _tag(self, text: str) -> list[Span]:
        toks, feats = self._features(text)
        if not toks:
            return []
        tagger = self._tagger
        tagger.set(feats)
        tags = tagger.tag()
        out = []
        for first, last, label in _decode(tags):
            score = sum(tagger.marginal(tags[k], k) for k in range(first, last + 1)) / (last - first + 1)
            start, end = toks[first][0], toks[last][1]
            out.append(Span(start=start, end=end, label=label, text=text[start:end],
                            score=round(min(1.0, max(score, 1e-6)), 6)))
        return out

    def predictions(self, texts: Sequence[str]) -> list[Prediction]:
        """Spans-only `Prediction`s (label None; score the spans' mean score, 0.0 when no span was found)."""
        return span_predictions(self.predict(texts), self.version)

    @property
    def labels(self) -> list[str]:
        """The entity types it was trained on (without BIO prefixes)."""
        return list(self._labels)

    # ------------------------------------------------------------------------------------------ serialisation
    def header(self) -> dict:
        if self._model is None:
            raise RuntimeError("CrfEntityModel is not fitted")
        return {"format": FORMAT, "features": self.feature_settings, "params": self.params,
                "labels": self._labels, "n_train": self.n_train,
                "model": {"engine": "crfsuite", "size": len(self._model),
                          "sha256": hashlib.sha256(self._model).hexdigest()}}

    def to_bytes(self) -> bytes:
        """One line of JSON (the header), a newline, then the CRFsuite model file."""
        head = json.dumps(self.header(), ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode()
        return head + b"\n" + self._model

    @classmethod
    def from_bytes(cls, body: bytes) -> CrfEntityModel:
        """The model of ``to_bytes()``; ValueError for anything else (checked before CRFsuite reads a byte)."""
        if not isinstance(body, (bytes, bytearray)):
            raise ValueError(f"not bytes: {type(body).__name__}")
        body = bytes(body)
        head, sep, model = body.partition(b"\n")
        if not sep:
            raise ValueError("not a CRF entity model (no header line)")
        try:
            state = json.loads(head.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a CRF entity model (header: {exc})") from exc
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        if found != FORMAT:
            raise ValueError(f"not a CRF entity model ({found!r}, expected {FORMAT!r})")
        feats, params, info = state.get("features") or {}, state.get("params") or {}, state.get("model") or {}
        if feats.get("version") != FEATURES:
            raise ValueError(f"CRF features {feats.get('version')!r}, this code computes {FEATURES!r}")
        if info.get("size") != len(model) or info.get("sha256") != hashlib.sha256(model).hexdigest():
            raise ValueError("CRF model bytes do not match the header's size and sha256")
        try:
            m = cls(algorithm=str(params.get("algorithm", DEFAULT_PARAMS["algorithm"])),
                    c1=float(params.get("c1", 0.0)), c2=float(params.get("c2", DEFAULT_PARAMS["c2"])),
                    max_iterations=int(params.get("max_iterations", DEFAULT_PARAMS["max_iterations"])),
                    window=int(feats["window"]), affixes=[int(a) for a in feats["affixes"]])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"CRF header: bad feature settings or parameters ({exc})") from exc
        m._labels = sorted(str(x) for x in state.get("labels") or [])
        m.n_train = int(state.get("n_train", 0))
        m._open(model)
        tagged = {t.split("-", 1)[1] for t in m._tagger.labels() if t != OUTSIDE and "-" in t}
        if not tagged <= set(m._labels):
            raise ValueError(f"CRF model tags {sorted(tagged - set(m._labels))} not in the header's labels")
        return m
