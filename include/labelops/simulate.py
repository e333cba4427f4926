"""Offline active-learning simulation: how many labels would a selection strategy need, on data already labelled?

Command line (run it before spending annotation budget)::

    python -m labelops.simulate --train TRAIN.csv --test TEST.csv --strategy STRATEGY --target 0.98 \\
        --out RESULT.json [--seed-size N] [--batch-size 200] [--budget N] [--seed 0] \\
        [--random-share 0.15] [--no-diversity] [--no-stratify] [--text-column text] [--label-column label] [--quiet]

TRAIN.csv and TEST.csv have the columns ``text,label`` (header names matched case-insensitively after stripping;
more columns allowed; UTF-8 with or without a BOM). A row with a blank text or a blank label is skipped and
counted. STRATEGY is one of the dispatch selection strategies (``least_confidence``, ``margin``, ``entropy``) or
``random``.

The simulation, with the project's own code:

1. **Full data**: an `IntentModel` trained on the whole train file gives ``full_data_accuracy`` on the test file.
2. **Seed set**: a stratified sample of the train file of ``--seed-size`` labels (default 2 per class): one item
   per class first (when the seed set is smaller than the number of classes: that many classes, drawn at
   random), the rest shared out in proportion to the class sizes (largest remainders), items drawn at random
   within each class. The seed set depends on ``--seed`` only, so every strategy starts from the same one. (A
   stratified seed assumes the class of every item is known, which real data does not give: this is the
   optimistic "someone labelled a couple of examples per class" start.)
3. **Rounds**: train an `IntentModel` on the labelled set, measure its accuracy on the test file (one curve
   point), then pick the next batch from the unlabelled rest of the train file with
   `labelops.dispatch.selection.select`, the very function the dispatch DAG calls, with the same inputs as
   dispatch (the model's probabilities and TF-IDF features of the pool) and the dispatch defaults
   (``random_share``, ``diversity``, ``stratify`` from `labelops.config.Dispatch`, overridable); the batch joins the
   labelled set with its true labels. ``random`` calls the same function with no model output and
   ``random_share=1``: a seeded uniform draw from the pool. The select seed of round r is derived from
   (``--seed``, r). Batches are cut to what is left of the budget; rounds stop once the labelled set reaches
   ``--budget`` (default, and at most: the whole train file) or the pool is empty, after measuring that last
   point (``stopped``: ``pool_empty`` when the whole train file got labelled, else ``budget``).

Test items whose label never occurs in the train file cannot be predicted: they stay in the denominator and count
as errors (a warning names them; JSON ``test.unseen_label_rows`` / ``test.unseen_labels``). A test file with no
label in common with the train file is an error.

``labels_to_target`` is the fewest labels of a curve point whose accuracy reached
``target × full_data_accuracy`` (``target_accuracy``), or null when no point did. The result JSON::

    {"strategy": str, "target": float, "target_accuracy": float, "labels_to_target": int | null,
     "full_data_accuracy": float, "full_data_seconds": float,
     "curve": [[labels: int, accuracy: float], ...],          # one point per round, labels strictly increasing
     "rounds": [{"round": int, "labels": int, "accuracy": float, "classes_seen": int, "picked": {reason: n},
                 "fit_seconds": float, "evaluate_seconds": float, "select_seconds": float, "seconds": float}],
     "stopped": "budget" | "pool_empty",
     "params": {"seed_size", "batch_size", "budget", "seed", "random_share", "diversity", "stratify"},
     "train": {"path", "rows", "classes", "skipped_rows"},
     "test": {"path", "rows", "skipped_rows", "unseen_label_rows", "unseen_labels"},
     "seconds": float}

``picked`` counts the selection reasons of the batch picked after that round's point (empty for the last).
Errors in the input or options print ``error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STRATEGIES = ("least_confidence", "margin", "entropy", "random")
SEED_PER_CLASS = 2  # default seed size: this many labels per class of the train file


class InputError(Exception):
    """A problem with the input files or options, said in one line."""


@dataclass
class Labelled:
    """The usable rows of one CSV file."""

    path: str
    texts: list[str]
    labels: list[str]
    skipped: int = 0


@dataclass
class Result:
    full_data_accuracy: float
    full_data_seconds: float
    curve: list[list] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    stopped: str = "budget"


# -------------------------------------------------------------------------------------------------------- input


def read_csv(path: Path, what: str, text_column: str = "text", label_column: str = "label") -> Labelled:
    """The rows of a ``text,label`` CSV (UTF-8, optional BOM). Rows with a blank text or label are skipped and
    counted; labels are stripped, texts kept as they are."""
    need = (text_column.strip().lower(), label_column.strip().lower())
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise InputError(f"{what} file {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{what} file {path}: cannot read: {exc.strerror or exc}") from None
    texts: list[str] = []
    labels: list[str] = []
    skipped = 0
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)
            if header is None:
                raise InputError(f"{what} file {path} is empty: expected a header row {','.join(need)}")
            cols = {h.strip().lower(): i for i, h in enumerate(header)}
            missing = [c for c in need if c not in cols]
            if missing:
                found = ", ".join(h.strip() for h in header) or "(none)"
                raise InputError(f"{what} file {path}: missing column(s) {', '.join(missing)} (found: {found})")
            it, il = cols[need[0]], cols[need[1]]
            for row in reader:
                if not row or not any(c.strip() for c in row):
                    continue
                text = row[it] if it < len(row) else ""
                label = row[il].strip() if il < len(row) else ""
                if not text.strip() or not label:
                    skipped += 1
                    continue
                texts.append(text)
                labels.append(label)
        except UnicodeDecodeError as exc:
            bad = exc.object[exc.start:exc.start + 1]
            raise InputError(f"{what} file {path}: not UTF-8 text near line {reader.line_num + 1} ({exc.reason}: "
                             f"byte {bad!r})") from None
        except csv.Error as exc:
            raise InputError(f"{what} file {path}:{reader.line_num}: unreadable CSV: {exc}") from None
    if not texts:
        raise InputError(f"{what} file {path} has no rows with a text and a label"
                         + (f" ({skipped} skipped as blank)" if skipped else ""))
    return Labelled(str(path), texts, labels, skipped)


# ------------------------------------------------------------------------------------------------- simulation


def stratified_seed(labels: list[str], size: int, seed: int) -> np.ndarray:
    """Sorted positions of a stratified sample of `size` labels: one per class (when size < number of classes,
    `size` classes drawn at random get one), the rest in proportion to the class sizes minus the one already
    taken (largest remainders, ties to the lower class), drawn at random within each class. Seeded."""
    n = len(labels)
    if not 0 < size <= n:
        raise ValueError(f"seed size must be in 1..{n}, got {size}")
    rng = np.random.default_rng([seed, 0])
    classes, y = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    k = len(classes)
    counts = np.bincount(y, minlength=k)
    if size < k:
        quota = np.zeros(k, dtype=np.int64)
        quota[rng.choice(k, size=size, replace=False)] = 1
    else:
        extra, rest = size - k, counts - 1
        total = int(rest.sum())
        quota = np.ones(k, dtype=np.int64)
        if extra:
            share = extra * rest  # exact: quota_c = extra * rest_c / total
            quota += share // total
            left = extra - int((share // total).sum())
            order = np.lexsort((np.arange(k), -(share % total)))
            quota[order[:left]] += 1
    picks = [rng.choice(np.flatnonzero(y == c), size=int(q), replace=False) for c, q in enumerate(quota) if q]
    return np.sort(np.concatenate(picks))


def _round_seed(seed: int, rnd: int) -> int:
    return int(np.random.SeedSequence([seed, rnd + 1]).generate_state(1)[0])


def _fit(texts: list[str], labels: list[str]):
    """An `IntentModel` with the defaults the retrain stage uses; quiet about scikit-learn's "more than 50% unique
    classes" hint, which a seed set of 2 per class (calibration folds of ~1.3 per class) always triggers."""
    from labelops.models.intent import IntentModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%",
                                category=UserWarning)
        try:
            return IntentModel().fit(texts, labels)
        except ValueError as exc:  # e.g. texts with no word of 2+ characters: an empty vocabulary
            raise InputError(f"cannot train the intent model on {len(texts)} labelled rows: {exc}") from None


def _accuracy(model, texts: list[str], truth: np.ndarray) -> float:
    classes, probs = model.predict_proba(texts)
    pred = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
    return float(np.mean(pred == truth))


def labels_to_target(curve: list[list], target_accuracy: float) -> int | None:
    """The labels of the first curve point (curve in increasing labels) whose accuracy reached the target."""
    for labels, acc in curve:
        if acc >= target_accuracy - 1e-12:
            return int(labels)
    return None


def simulate(train: Labelled, test: Labelled, *, strategy: str, seed_size: int, batch_size: int, budget: int,
             seed: int = 0, random_share: float = 0.15, diversity: bool = True, stratify: bool = True,
             log=None) -> Result:
    """Run the simulation (see the module docstring); `log(str)` gets one line per round."""
    from labelops.dispatch import selection

    log = log or (lambda _msg: None)
    truth = np.asarray(test.labels, dtype=object)
    t0 = time.perf_counter()
    full = _fit(train.texts, train.labels)
    result = Result(full_data_accuracy=_accuracy(full, test.texts, truth), full_data_seconds=0.0)
    result.full_data_seconds = round(time.perf_counter() - t0, 3)
    del full
    log(f"full data: {len(train.texts)} labels, accuracy {result.full_data_accuracy:.4f} "
        f"({result.full_data_seconds:.1f} s)")

    n = len(train.texts)
    labelled = np.zeros(n, dtype=bool)
    labelled[stratified_seed(train.labels, seed_size, seed)] = True
    order = list(np.flatnonzero(labelled))  # labelled positions, in the order they were labelled
    rnd = 0
    while True:
        t_round = time.perf_counter()
        idx = np.asarray(order)
        model = _fit([train.texts[i] for i in idx], [train.labels[i] for i in idx])
        t_fit = time.perf_counter()
        acc = _accuracy(model, test.texts, truth)
        t_eval = time.perf_counter()
        point = {"round": rnd, "labels": len(order), "accuracy": acc, "classes_seen": len(model.classes),
                 "picked": {}}
        result.curve.append([len(order), acc])
        pool = np.flatnonzero(~labelled)
        room = budget - len(order)
        if room > 0 and pool.size:
            texts = [train.texts[i] for i in pool]
            if strategy == "random":
                picks = selection.select(pool.size, batch_size=min(batch_size, room), probs=None, features=None,
                                         random_share=1.0, seed=_round_seed(seed, rnd))
            else:
                _, probs = model.predict_proba(texts)
                picks = selection.select(pool.size, batch_size=min(batch_size, room), probs=probs,
                                         features=model.features(texts), strategy=strategy,
                                         random_share=random_share, diversity=diversity, stratify=stratify,
                                         seed=_round_seed(seed, rnd))
            chosen = pool[[p.index for p in picks]]
            labelled[chosen] = True
            order.extend(int(i) for i in chosen)
            point["picked"] = dict(Counter(p.reason for p in picks))
        t_end = time.perf_counter()
        point.update(fit_seconds=round(t_fit - t_round, 3), evaluate_seconds=round(t_eval - t_fit, 3),
                     select_seconds=round(t_end - t_eval, 3), seconds=round(t_end - t_round, 3))
        result.rounds.append(point)
        log(f"round {rnd}: {point['labels']} labels, accuracy {acc:.4f} ({point['seconds']:.1f} s)")
        if room <= 0 or not pool.size:
            result.stopped = "pool_empty" if not pool.size else "budget"
            return result
        rnd += 1


# ---------------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    from labelops.config import Dispatch

    d = Dispatch()
    ap = argparse.ArgumentParser(
        prog="python -m labelops.simulate",
        description="Simulate active learning on labelled data: the labels a selection strategy needs to reach "
                    "TARGET x the full-data test accuracy. Writes a JSON result.")
    ap.add_argument("--train", type=Path, required=True, help="labelled pool CSV: text,label")
    ap.add_argument("--test", type=Path, required=True, help="test CSV: text,label")
    ap.add_argument("--strategy", choices=STRATEGIES, required=True, help="selection strategy (dispatch's, or random)")
    ap.add_argument("--target", type=float, default=0.98,
                    help="share of the full-data accuracy to reach (0.98); any number >= 0")
    ap.add_argument("--out", required=True, help="result JSON file ('-' for stdout)")
    ap.add_argument("--seed-size", type=int,
                    help=f"labels of the stratified seed set (default {SEED_PER_CLASS} per train class)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size,
                    help=f"labels added per round (dispatch default {d.batch_size})")
    ap.add_argument("--budget", type=int, help="stop at this many labels, seed included (default: all of train)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the seed set and the selection (0)")
    ap.add_argument("--random-share", type=float, default=d.random_share,
                    help=f"share of each batch drawn at random (dispatch default {d.random_share})")
    ap.add_argument("--no-diversity", dest="diversity", action="store_false", default=d.diversity,
                    help="no k-means diversity in the batch")
    ap.add_argument("--no-stratify", dest="stratify", action="store_false", default=d.stratify,
                    help="no pick per predicted class")
    ap.add_argument("--text-column", default="text", help="name of the text column (text)")
    ap.add_argument("--label-column", default="label", help="name of the label column (label)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def _check_options(args, n_train: int, n_classes: int) -> tuple[int, int]:
    """(seed size, budget) after checking the numeric options."""
    if not math.isfinite(args.target) or args.target < 0:
        raise InputError(f"--target must be a number >= 0, got {args.target}")
    if not 0.0 <= args.random_share <= 1.0:
        raise InputError(f"--random-share must be in [0, 1], got {args.random_share}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    seed_size = min(SEED_PER_CLASS * n_classes, n_train) if args.seed_size is None else args.seed_size
    if not 2 <= seed_size <= n_train:
        raise InputError(f"--seed-size must be in 2..{n_train} (the train rows), got {seed_size}: the model needs "
                         f"at least 2 classes")
    budget = n_train if args.budget is None else args.budget
    if budget < seed_size:
        raise InputError(f"--budget ({budget}) is smaller than the seed set ({seed_size})")
    return seed_size, min(budget, n_train)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    try:
        train = read_csv(args.train, "train", args.text_column, args.label_column)
        test = read_csv(args.test, "test", args.text_column, args.label_column)
        classes = sorted(set(train.labels))
        if len(classes) < 2:
            raise InputError(f"train file {args.train}: only one label ({classes[0]!r}); a classifier needs 2")
        seed_size, budget = _check_options(args, len(train.texts), len(classes))
        known = set(classes)
        unseen = Counter(lab for lab in test.labels if lab not in known)
        if sum(unseen.values()) == len(test.labels):
            raise InputError(f"test file {args.test}: none of its labels occurs in the train file "
                             f"(e.g. {sorted(unseen)[:3]}); wrong file or label column?")
        if unseen:
            log(f"warning: {sum(unseen.values())} test rows have a label absent from train "
                f"({', '.join(sorted(unseen)[:5])}{', ...' if len(unseen) > 5 else ''}): they count as errors")
        if args.out != "-":
            out_dir = Path(args.out).resolve().parent
            if not out_dir.is_dir():
                raise InputError(f"--out {args.out}: folder {out_dir} does not exist")
        res = simulate(train, test, strategy=args.strategy, seed_size=seed_size, batch_size=args.batch_size,
                       budget=budget, seed=args.seed, random_share=args.random_share, diversity=args.diversity,
                       stratify=args.stratify, log=log)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target_accuracy = args.target * res.full_data_accuracy
    reached = labels_to_target(res.curve, target_accuracy)
    report = {
        "strategy": args.strategy, "target": args.target, "target_accuracy": target_accuracy,
        "labels_to_target": reached, "full_data_accuracy": res.full_data_accuracy,
        "full_data_seconds": res.full_data_seconds, "curve": res.curve, "rounds": res.rounds,
        "stopped": res.stopped,
        "params": {"seed_size": seed_size, "batch_size": args.batch_size, "budget": budget, "seed": args.seed,
                   "random_share": args.random_share if args.strategy != "random" else 1.0,
                   "diversity": args.diversity and args.strategy != "random",
                   "stratify": args.stratify and args.strategy != "random"},
        "train": {"path": train.path, "rows": len(train.texts), "classes": len(classes),
                  "skipped_rows": train.skipped},
        "test": {"path": test.path, "rows": len(test.texts), "skipped_rows": test.skipped,
                 "unseen_label_rows": sum(unseen.values()), "unseen_labels": sorted(unseen)},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        tmp = f"{args.out}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, args.out)
        except OSError as exc:
            print(f"error: --out {args.out}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return 2
    log(f"labels_to_target: {reached} (target {args.target} x full-data accuracy {res.full_data_accuracy:.4f} = "
        f"{target_accuracy:.4f}); {report['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
