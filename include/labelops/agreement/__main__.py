"""Command line: ``python -m labelops.agreement FILE.csv [--level interval|ordinal|ratio] [--order A,B,C]
[--gold GOLD.csv] [--duplicates error|last] [--confidence 0.95] [--top-confusions 20]``

FILE.csv has the columns ``item_id,annotator_id,label`` (any order, more columns allowed; header names are
matched case-insensitively after stripping), one row per rating; an item may lack some annotators. An optional
``lead_time`` column (seconds per rating; blank = unknown) adds lead time per annotator. The file is read as UTF-8
with or without a BOM. Values are stripped of surrounding whitespace; labels are strings compared exactly. A row
with a blank label is skipped and counted (``n_rows_blank_label``).

Prints one JSON object (see :func:`labelops.agreement.stats.agreement_report`) on stdout; undefined statistics are
``null`` with a ``*_reason``, never NaN. ``--level`` adds Krippendorff's alpha at that level: the labels must be
numbers, or ``--order`` lists every label from lowest to highest (interval / ratio then use the ranks 0, 1, 2 ...).
``--gold`` (columns ``item_id,label``) adds gold accuracy per annotator.

A rater rating the same item twice is an error naming both lines (``--duplicates last`` keeps the later row and
counts the dropped ones instead). Errors (missing file or column, empty file, no ratings, a single annotator, a
blank id, a duplicate rating, non-numeric labels for --level without --order, ...) print ``error: ...`` on stderr
and exit with status 1 (usage errors: 2, from argparse).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from array import array
from pathlib import Path

import numpy as np

from labelops.agreement.stats import LEVELS, DuplicateRatingError, Ratings, agreement_report, label_values

REQUIRED = ("item_id", "annotator_id", "label")


class InputError(Exception):
    """A problem with the input files, said in one line."""


def _open_rows(path: Path, required: tuple[str, ...], what: str):
    """(column index by lower-cased header name, iterator of (line number, row)) of a CSV file, streamed: the
    file is read row by row (UTF-8, with or without a BOM) and closed when the iterator ends."""
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed by rows() below)
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    reader = csv.reader(f)

    def fail(exc: Exception) -> InputError:
        f.close()
        if isinstance(exc, UnicodeDecodeError):
            bad = exc.object[exc.start:exc.start + 1]
            return InputError(f"{what} {path}: not UTF-8 text ({exc.reason}: byte {bad!r})")
        return InputError(f"{what} {path}:{reader.line_num}: unreadable CSV: {exc}")

    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)  # leading blank lines
    except (UnicodeDecodeError, csv.Error) as exc:
        raise fail(exc) from None
    if header is None:
        f.close()
        raise InputError(f"{what} {path} is empty: expected a header row {','.join(required)}")
    cols = {h.strip().lower(): i for i, h in enumerate(header)}
    missing = [c for c in required if c not in cols]
    if missing:
        f.close()
        found = ", ".join(h.strip() for h in header) or "(none)"
        raise InputError(f"{what} {path}: missing column(s) {', '.join(missing)} (found: {found})")

    def rows():
        with f:
            try:
                for row in reader:
                    if row and any(c.strip() for c in row):
                        yield reader.line_num, row
            except (UnicodeDecodeError, csv.Error) as exc:
                raise fail(exc) from None

    return cols, rows()


def _cell(row: list[str], i: int) -> str:
    return row[i].strip() if i < len(row) else ""


def read_ratings(path: Path, duplicates: str) -> tuple[Ratings, np.ndarray, np.ndarray | None, int]:
    """(ratings, line number of every coded row, lead times (NaN: unknown) or None, rows with a blank label).
    Ids are coded while reading (one Python string per distinct id, integer arrays per row)."""
    cols, rows = _open_rows(path, REQUIRED, "ratings file")
    ii, ia, il = cols["item_id"], cols["annotator_id"], cols["label"]
    lt_col = cols.get("lead_time")
    item_code: dict[str, int] = {}
    ann_code: dict[str, int] = {}
    label_code: dict[str, int] = {}
    items, anns, labels, lines = array("q"), array("q"), array("q"), array("q")
    leads = array("d")
    blank = 0
    for line, row in rows:
        item, ann, lab = _cell(row, ii), _cell(row, ia), _cell(row, il)
        if not item:
            raise InputError(f"{path}:{line}: blank item_id")
        if not ann:
            raise InputError(f"{path}:{line}: blank annotator_id")
        if not lab:
            blank += 1
            continue
        if lt_col is not None:
            v = _cell(row, lt_col)
            lead = math.nan
            if v:
                try:
                    lead = float(v)
                except ValueError:
                    lead = -1.0
                if not math.isfinite(lead) or lead < 0:
                    raise InputError(f"{path}:{line}: lead_time {v!r} is not a number of seconds >= 0")
            leads.append(lead)
        items.append(item_code.setdefault(item, len(item_code)))
        anns.append(ann_code.setdefault(ann, len(ann_code)))
        labels.append(label_code.setdefault(lab, len(label_code)))
        lines.append(line)
    if not items:
        raise InputError(f"ratings file {path} has no ratings (only a header"
                         + (f" and {blank} row(s) with a blank label)" if blank else ")"))
    line_arr = np.frombuffer(lines, dtype=np.int64)
    try:
        r = Ratings.from_codes(np.frombuffer(items, dtype=np.int64), np.frombuffer(anns, dtype=np.int64),
                               np.frombuffer(labels, dtype=np.int64), labels=list(label_code),
                               annotator_ids=list(ann_code), item_ids=list(item_code), sort_ids=True,
                               duplicates=duplicates)
    except DuplicateRatingError as exc:
        raise InputError(f"{path}:{line_arr[exc.position]}: annotator {exc.annotator_id!r} rated item "
                         f"{exc.item_id!r} again (first at line {line_arr[exc.first_position]}); use --duplicates "
                         f"last to keep the later rating") from None
    return r, line_arr, (np.frombuffer(leads, dtype=np.float64) if lt_col is not None else None), blank


def read_gold(path: Path) -> dict[str, str]:
    cols, rows = _open_rows(path, ("item_id", "label"), "gold file")
    gold: dict[str, str] = {}
    where: dict[str, int] = {}
    for line, row in rows:
        item, lab = _cell(row, cols["item_id"]), _cell(row, cols["label"])
        if not item:
            raise InputError(f"{path}:{line}: blank item_id")
        if not lab:
            raise InputError(f"{path}:{line}: blank gold label for item {item!r}")
        if item in gold and gold[item] != lab:
            raise InputError(f"{path}:{line}: item {item!r} has two gold labels ({gold[item]!r} at line "
                             f"{where[item]} and {lab!r})")
        gold[item], where[item] = lab, line
    if not gold:
        raise InputError(f"gold file {path} has no rows")
    return gold


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labelops.agreement",
                                 description="Inter-annotator agreement of a ratings CSV (item_id,annotator_id,label)"
                                             "; prints JSON.")
    ap.add_argument("file", type=Path, help="ratings CSV: item_id,annotator_id,label[,lead_time]")
    ap.add_argument("--level", choices=[lv for lv in LEVELS if lv != "nominal"], action="append", default=[],
                    help="also Krippendorff's alpha at this level (repeatable)")
    ap.add_argument("--order", help="comma-separated labels from lowest to highest, for --level with text labels")
    ap.add_argument("--gold", type=Path, help="gold answers CSV: item_id,label")
    ap.add_argument("--duplicates", choices=("error", "last"), default="error",
                    help="an annotator rating an item twice: error (default) or keep the last row")
    ap.add_argument("--confidence", type=float, default=0.95, help="confidence level of the kappa CIs (0.95)")
    ap.add_argument("--top-confusions", type=int, default=20, help="label pairs listed under confusions (20)")
    args = ap.parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        ap.error("--confidence must be between 0 and 1")
    try:
        r, _lines, leads, blank = read_ratings(args.file, args.duplicates)
        if r.n_annotators < 2:
            raise InputError(f"{args.file}: only one annotator ({r.annotator_ids[0]!r}); agreement needs at least "
                             f"two")
        values = None
        if args.level:
            order = [s.strip() for s in args.order.split(",")] if args.order else None
            try:
                values = label_values(r.labels, order)
            except ValueError as exc:
                raise InputError(f"--level {args.level[0]}: {exc}") from None
        gold = read_gold(args.gold) if args.gold else None
        report = agreement_report(r, levels=args.level, values=values, gold=gold, lead_time=leads,
                                  confidence=args.confidence, top_confusions=args.top_confusions)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {"file": str(args.file), "n_rows_blank_label": blank, "duplicates": args.duplicates, **report}
    text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False)
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
        sys.stdout = None  # type: ignore[assignment]  (no second failure when Python flushes at exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
