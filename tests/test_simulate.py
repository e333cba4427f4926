"""The active-learning simulation command (`python -m labelops.simulate`) on a Banking77 subset: 15 classes x 40
train items, 15 x 12 test items from the real test file, small batches."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from labelops import simulate
from labelops.simulate import labels_to_target, main, stratified_seed

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "banking77"
CLASSES, PER_CLASS, PER_CLASS_TEST = 15, 40, 12
SMALL = ["--batch-size", "40", "--budget", "190", "--quiet"]


def _subset(split: str, per_class: int, n_classes: int = CLASSES) -> list[tuple[str, str]]:
    """The first `per_class` rows (file order) of the first `n_classes` categories (sorted), as (text, label)."""
    with open(DATA / f"{split}.csv", encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    keep = sorted({lab for _, lab in rows})[:n_classes]
    taken: Counter = Counter()
    out = []
    for text, lab in rows:
        if lab in keep and taken[lab] < per_class:
            taken[lab] += 1
            out.append((text, lab))
    return out


def _write(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("simulate")
    train = _write(d / "train.csv", _subset("train", PER_CLASS))
    test = _write(d / "test.csv", _subset("test", PER_CLASS_TEST))
    tiny_train = _write(d / "tiny_train.csv", _subset("train", 8, 4))
    tiny_test = _write(d / "tiny_test.csv", _subset("test", 5, 4))
    return {"dir": d, "train": train, "test": test, "tiny_train": tiny_train, "tiny_test": tiny_test}


def run(files, *args, name="out.json", train="train", test="test") -> dict:
    out = files["dir"] / name
    code = main(["--train", str(files[train]), "--test", str(files[test]), "--out", str(out), *args])
    assert code == 0
    return json.loads(out.read_text(encoding="utf-8"))


def _without_times(r: dict) -> dict:
    r = json.loads(json.dumps(r))
    for k in ("seconds", "full_data_seconds"):
        r.pop(k)
    for rnd in r["rounds"]:
        for k in ("fit_seconds", "evaluate_seconds", "select_seconds", "seconds"):
            rnd.pop(k)
    return r


@pytest.fixture(scope="module")
def lc(files):
    return run(files, "--strategy", "least_confidence", *SMALL, name="lc.json")


def test_result_keys_and_types(lc):
    assert lc["strategy"] == "least_confidence" and lc["stopped"] == "budget"
    assert isinstance(lc["full_data_accuracy"], float) and 0.5 < lc["full_data_accuracy"] <= 1.0
    assert isinstance(lc["target"], float) and lc["target"] == 0.98
    assert lc["target_accuracy"] == pytest.approx(0.98 * lc["full_data_accuracy"])
    assert lc["labels_to_target"] is None or isinstance(lc["labels_to_target"], int)
    assert all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and isinstance(p[1], float)
               and 0.0 <= p[1] <= 1.0 for p in lc["curve"])
    assert lc["params"] == {"seed_size": 2 * CLASSES, "batch_size": 40, "budget": 190, "seed": 0,
                            "random_share": 0.15, "diversity": True, "stratify": True}
    assert lc["train"] == {"path": lc["train"]["path"], "rows": CLASSES * PER_CLASS, "classes": CLASSES,
                           "skipped_rows": 0}
    assert lc["test"]["rows"] == CLASSES * PER_CLASS_TEST and lc["test"]["unseen_label_rows"] == 0
    assert len(lc["rounds"]) == len(lc["curve"])
    for rnd, (labels, acc) in zip(lc["rounds"], lc["curve"]):
        assert rnd["labels"] == labels and rnd["accuracy"] == acc and rnd["classes_seen"] == CLASSES
        assert all(isinstance(rnd[k], float) and rnd[k] >= 0
                   for k in ("fit_seconds", "evaluate_seconds", "select_seconds", "seconds"))
    json.dumps(lc, allow_nan=False)


def test_curve_starts_at_seed_size_and_grows_by_batches_to_budget(lc):
    labels = [p[0] for p in lc["curve"]]
    assert labels == [30, 70, 110, 150, 190]  # seed 2 x 15 classes, batches of 40, budget 190
    # each batch is picked by dispatch's selection: the random share, one per predicted class, diversity
    for rnd, nxt in zip(lc["rounds"], labels[1:]):
        assert sum(rnd["picked"].values()) == nxt - rnd["labels"]
        assert rnd["picked"].get("random") == 6  # round(40 x 0.15)
        assert set(rnd["picked"]) <= {"random", "stratified", "diversity", "uncertainty"}
    assert lc["rounds"][-1]["picked"] == {}
    # learning helps: the last point beats the seed-set model
    assert lc["curve"][-1][1] > lc["curve"][0][1]


def test_labels_to_target_matches_the_curve(lc):
    first = next((n for n, acc in lc["curve"] if acc >= lc["target_accuracy"]), None)
    assert lc["labels_to_target"] == first == labels_to_target(lc["curve"], lc["target_accuracy"])


def test_same_seed_same_result_other_seed_other_start(files, lc):
    again = run(files, "--strategy", "least_confidence", *SMALL, name="lc2.json")
    assert _without_times(again) == _without_times(lc)
    other = run(files, "--strategy", "least_confidence", "--seed", "3", *SMALL[:2], "--budget", "70", "--quiet",
                name="lc3.json")
    assert [p[0] for p in other["curve"]] == [30, 70]
    assert other["curve"][0][1] != lc["curve"][0][1] or other["curve"][1][1] != lc["curve"][1][1]


def test_random_strategy(files, lc):
    r = run(files, "--strategy", "random", *SMALL, name="random.json")
    assert [p[0] for p in r["curve"]] == [p[0] for p in lc["curve"]]
    assert r["curve"][0] == lc["curve"][0]  # the same seed set, so the same first model
    assert r["full_data_accuracy"] == lc["full_data_accuracy"]
    assert all(rnd["picked"] == {"random": 40} for rnd in r["rounds"][:-1])
    assert r["params"]["random_share"] == 1.0 and not r["params"]["diversity"]
    assert r["labels_to_target"] == labels_to_target(r["curve"], r["target_accuracy"])


@pytest.mark.parametrize("strategy", ["margin", "entropy"])
def test_other_strategies_run(files, strategy):
    r = run(files, "--strategy", strategy, "--batch-size", "6", "--budget", "16", "--quiet",
            train="tiny_train", test="tiny_test", name=f"{strategy}.json")
    assert [p[0] for p in r["curve"]] == [8, 14, 16]  # seed 2 x 4, batch 6, the last cut to the budget


def test_target_zero_gives_the_seed_size_and_unreachable_gives_null(files):
    zero = run(files, "--strategy", "least_confidence", "--target", "0", "--batch-size", "8", "--budget", "16",
               "--quiet", train="tiny_train", test="tiny_test", name="t0.json")
    assert zero["labels_to_target"] == zero["params"]["seed_size"] == 8 == zero["curve"][0][0]
    never = run(files, "--strategy", "random", "--target", "1.5", "--batch-size", "8", "--budget", "16",
                "--quiet", train="tiny_train", test="tiny_test", name="t15.json")
    assert never["labels_to_target"] is None and never["target_accuracy"] > 1.0


def test_pool_runs_out_before_the_budget(files):
    r = run(files, "--strategy", "least_confidence", "--batch-size", "10", "--seed-size", "4", "--budget", "100",
            "--quiet",
            train="tiny_train", test="tiny_test", name="pool.json")
    assert [p[0] for p in r["curve"]] == [4, 14, 24, 32] and r["stopped"] == "pool_empty"
    assert r["params"]["budget"] == 32  # capped to the train rows
    assert r["rounds"][0]["classes_seen"] == 4  # a seed of one per class


def test_test_labels_absent_from_train_count_as_errors(files, capsys):
    rows = _subset("test", 5, 4)
    extra = [("what is the meaning of life", "not_a_banking_intent")] * 5
    _write(files["dir"] / "unseen_test.csv", rows + extra)
    files = {**files, "unseen_test": files["dir"] / "unseen_test.csv"}
    r = run(files, "--strategy", "random", "--batch-size", "8", "--budget", "8", train="tiny_train",
            test="unseen_test", name="unseen.json")
    assert r["test"]["rows"] == 25 and r["test"]["unseen_label_rows"] == 5
    assert r["test"]["unseen_labels"] == ["not_a_banking_intent"]
    assert r["full_data_accuracy"] <= 20 / 25  # the 5 stay in the denominator, always wrong
    assert "count as errors" in capsys.readouterr().err


def test_blank_rows_are_skipped_and_counted(files):
    rows = _subset("train", 8, 4)
    _write(files["dir"] / "blank_train.csv", rows + [("no label here", ""), ("   ", "card_arrival")])
    files = {**files, "blank_train": files["dir"] / "blank_train.csv"}
    r = run(files, "--strategy", "random", "--batch-size", "8", "--budget", "8", "--quiet", train="blank_train",
            test="tiny_test", name="blank.json")
    assert r["train"]["rows"] == 32 and r["train"]["skipped_rows"] == 2


def test_stratified_seed():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20 + ["d"]
    s = stratified_seed(labels, 13, seed=1)
    got = Counter(labels[i] for i in s)
    # one each, then 9 more in proportion to 49 / 29 / 19 / 0 (total 97): 4.55, 2.69, 1.76 -> 4, 3, 2
    assert got == {"a": 5, "b": 4, "c": 3, "d": 1}
    assert list(s) == sorted(set(s.tolist())) and np.array_equal(s, stratified_seed(labels, 13, seed=1))
    few = stratified_seed(labels, 2, seed=0)
    assert len({labels[i] for i in few}) == 2
    assert len(stratified_seed(labels, len(labels), seed=0)) == len(labels)
    with pytest.raises(ValueError):
        stratified_seed(labels, 0, seed=0)


# ---------------------------------------------------------------------------------------------------- errors


def _error(files, capsys, *args, train=None, test=None) -> str:
    argv = ["--train", str(train or files["tiny_train"]), "--test", str(test or files["tiny_test"]),
            "--strategy", "random", "--out", str(files["dir"] / "err.json"), "--quiet", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_inputs_exit_2_with_a_message(files, capsys):
    d = files["dir"]
    _write(d / "nolabel.csv", [("hello", "x")], header=("text", "category"))
    assert "missing column(s) label (found: text, category)" in _error(files, capsys, train=d / "nolabel.csv")
    (d / "empty.csv").write_bytes(b"")
    assert "is empty" in _error(files, capsys, test=d / "empty.csv")
    _write(d / "header.csv", [])
    assert "has no rows" in _error(files, capsys, train=d / "header.csv")
    (d / "latin1.csv").write_bytes("text,label\ncaf\u00e9 card,card_arrival\n".encode("latin-1"))
    assert "not UTF-8" in _error(files, capsys, train=d / "latin1.csv")
    assert "no such file" in _error(files, capsys, train=d / "missing.csv")
    _write(d / "one.csv", [("a", "x"), ("b", "x")])
    assert "only one label" in _error(files, capsys, train=d / "one.csv")
    _write(d / "other.csv", [("a", "y"), ("b", "z")])
    assert "none of its labels occurs in the train file" in _error(files, capsys, test=d / "other.csv")
    assert "--budget (5) is smaller than the seed set (8)" in _error(files, capsys, "--budget", "5")
    assert "--seed-size must be in 2..32" in _error(files, capsys, "--seed-size", "1")
    assert "--batch-size must be >= 1" in _error(files, capsys, "--batch-size", "0")
    assert "--target must be a number >= 0" in _error(files, capsys, "--target", "-1")
    assert "--random-share must be in [0, 1]" in _error(files, capsys, "--random-share", "2")
    _write(d / "punct.csv", [("!", "x"), ("?", "y"), ("!!", "x"), ("??", "y")])
    assert "cannot train the intent model on 4 labelled rows" in _error(files, capsys, train=d / "punct.csv",
                                                                         test=d / "punct.csv")
    out = ["--out", str(d / "no" / "such" / "dir" / "r.json")]
    assert "does not exist" in _error(files, capsys, *out)


def test_command_line_module(files, tmp_path):
    """`python -m labelops.simulate`: an unknown strategy is a usage error (2), a bad file an error (2)."""
    env_cmd = [sys.executable, "-m", "labelops.simulate", "--train", str(files["tiny_train"]), "--test",
               str(files["tiny_test"]), "--out", str(tmp_path / "r.json")]
    env = {"PYTHONPATH": str(REPO / "include"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([*env_cmd, "--strategy", "bald"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "invalid choice: 'bald'" in p.stderr
    (tmp_path / "bad.csv").write_text("text\nhello\n", encoding="utf-8")
    p = subprocess.run([*env_cmd[:4], str(tmp_path / "bad.csv"), *env_cmd[5:], "--strategy", "margin"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    assert simulate.STRATEGIES == ("least_confidence", "margin", "entropy", "random")
