"""Train a seed model on a small labelled slice of the repo's data, register it and promote it (reason "seed").

    python tools/seed_model.py --endpoint-url http://127.0.0.1:8782 --bucket labelops \\
        --project-prefix banking_support/ --kind intent --data banking77 --n 2000
    python tools/seed_model.py ... --project-prefix snips_assistant/ --kind entities --data snips --n 2000
    python tools/seed_model.py ... --project-prefix digits/ --kind image --data digits --n 60

It stands for a team's small labelled seed set before the first retrain. The slice never contains an utterance
that `make demo` uploads as unlabelled input (tools/demo.py: the Banking77 sample, the SNIPS files), so the seed
model has not seen the answers of the records it will pre-annotate. The metrics stored with it are measured on
data it was not trained on: Banking77's test set; for SNIPS, up to 2,000 held-out utterances of the same files.
AWS credentials and region come from the environment as boto3 reads them (AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BANKING77 = REPO / "data" / "banking77"
SNIPS = REPO / "data" / "snips" / "2017-06-custom-intent-engines"
SNIPS_EVAL_MAX = 2000


# ---------------------------------------------------------------------------------------------------- data
def banking77(split: str) -> list[dict]:
    """Rows {"text", "intent"} of data/banking77/<split>.csv, in file order."""
    with open(BANKING77 / f"{split}.csv", newline="", encoding="utf-8") as fh:
        return [{"text": r["text"], "intent": r["category"]} for r in csv.DictReader(fh)]


def snips_utterances(key: str, raw: bytes) -> list[dict]:
    """{"text", "intent", "spans": [{start, end, label, text}]} of one SNIPS file, read by the ingest stage's own
    reader (the same decoding of the files' CESU-8 surrogate pairs, the same offsets as ingest stages)."""
    from labelops.ingest.readers import read_object

    result = read_object(key, raw)
    if result.format.split("+")[0] != "snips" or result.rejections:
        raise ValueError(f"{key}: not a clean SNIPS file ({result.format}, {len(result.rejections)} rejections)")
    return [{"text": r["text"], "intent": r["intent"], "spans": r["entities"]} for r in result.records]


def snips(pattern: str) -> list[dict]:
    """Every utterance of the SNIPS files matching pattern (e.g. "*/train_*_full.json"), files in name order."""
    return [u for path in sorted(SNIPS.glob(pattern)) for u in snips_utterances(str(path), path.read_bytes())]


def demo_raw_texts(data: str) -> set[str]:
    """The texts `make demo` uploads as unlabelled input for a data set (tools/demo.py builds them)."""
    import demo

    texts: set[str] = set()
    if data == "banking77":
        for name, body in demo.sample_objects().items():
            if name.endswith(".jsonl"):
                texts.update(json.loads(line)["text"] for line in body.decode().splitlines() if line.strip())
            else:
                texts.update(r["text"] for r in csv.DictReader(io.StringIO(body.decode())))
    else:
        for name, body in demo.snips_objects().items():
            texts.update(u["text"] for u in snips_utterances(name, body))
    return texts


def seed_slice(data: str, n: int, seed: int, exclude: set[str]) -> tuple[list[dict], list[dict], str]:
    """(training slice of n items, evaluation items, evaluation set name). Texts in exclude are never used;
    duplicates by text are dropped (first kept)."""
    rng = random.Random(seed)
    if data == "banking77":
        pool = _dedupe(r for r in banking77("train") if r["text"] not in exclude)
        return rng.sample(pool, min(n, len(pool))), banking77("test"), "banking77/test.csv"
    pool = _dedupe(u for u in snips("*/train_*_full.json") + snips("*/train_*.json") if u["text"] not in exclude)
    pool = [u for u in pool if u["text"].strip()]
    rng.shuffle(pool)
    train, rest = pool[:n], pool[n:]
    return train, rest[:SNIPS_EVAL_MAX], "snips train files, held out from the seed slice"


def _dedupe(rows) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        if r["text"] not in seen:
            seen.add(r["text"])
            out.append(r)
    return out


# ------------------------------------------------------------------------------------------------- metrics
def intent_metrics(model, items: list[dict]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    truth = [r["intent"] for r in items]
    pred = [p.label for p in model.predict([r["text"] for r in items])]
    return {"accuracy": round(float(accuracy_score(truth, pred)), 4),
            "macro_f1": round(float(f1_score(truth, pred, average="macro")), 4), "n_eval": len(items)}


def span_metrics(model, items: list[dict]) -> dict:
    """Exact-span micro precision, recall and F1 (start, end and label must all match)."""
    tp = fp = fn = 0
    for item, spans in zip(items, model.predict([r["text"] for r in items])):
        gold = {(s["start"], s["end"], s["label"]) for s in item["spans"]}
        got = {(s.start, s.end, s.label) for s in spans}
        tp, fp, fn = tp + len(gold & got), fp + len(got - gold), fn + len(gold - got)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "n_eval": len(items)}


# ----------------------------------------------------------------------------------------------------- main
def train(kind: str, items: list[dict]):
    from labelops.models.entities import EntityModel
    from labelops.models.intent import IntentModel

    texts = [r["text"] for r in items]
    if kind == "intent":
        return IntentModel().fit(texts, [r["intent"] for r in items])
    return EntityModel().fit(texts, [r["spans"] for r in items])


def digits_seed(n: int):
    """An ImageModel trained on the first `n` scans of the digits demo's seed slice (tools/digits_data.py:
    never part of the demo's raw input or gold), measured on the demo's raw input (labels it never saw):
    (model, metrics, items)."""
    from labelops.models.image import ImageModel

    import digits_data

    split = digits_data.demo_split()
    if n > len(split["seed"]):
        raise SystemExit(f"--n {n}: the digits seed slice has {len(split['seed'])} scans")
    scans = digits_data.objects()
    items = [scans[i] for i in split["seed"][:n]]
    t0 = time.perf_counter()
    model = ImageModel().fit([b for _, b, _ in items], [label for _, _, label in items])
    seconds = time.perf_counter() - t0
    held = [scans[i] for i in split["input"]]
    pred = [p.label for p in model.predict([b for _, b, _ in held])]
    accuracy = sum(p == label for p, (_, _, label) in zip(pred, held)) / len(held)
    return model, {"accuracy": round(accuracy, 4), "n_eval": len(held), "train_seconds": round(seconds, 2),
                   "eval_set": f"the digits demo's raw input ({len(held)} scans, labels not trained on)"}, items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL)")
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--project-prefix", required=True, help="e.g. banking_support/")
    ap.add_argument("--kind", choices=("intent", "entities", "image"), required=True)
    ap.add_argument("--data", choices=("banking77", "snips", "digits"), required=True)
    ap.add_argument("--n", type=int, default=2000, help="labelled items in the seed slice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--include-demo-input", action="store_true",
                    help="allow utterances that make demo uploads as unlabelled input into the slice")
    args = ap.parse_args(argv)
    if args.kind == "entities" and args.data != "snips":
        ap.error("--kind entities needs --data snips (Banking77 has no entity spans)")
    if args.n < 2:
        ap.error("--n must be at least 2")
    if (args.kind == "image") != (args.data == "digits"):
        ap.error("--kind image goes with --data digits (and digits only with --kind image)")

    import boto3

    from labelops.models import registry
    from labelops.storage import S3Store

    if args.kind == "image":
        model, metrics, items = digits_seed(args.n)
    else:
        exclude = set() if args.include_demo_input else demo_raw_texts(args.data)
        items, evaluation, eval_name = seed_slice(args.data, args.n, args.seed, exclude)
        t0 = time.perf_counter()
        model = train(args.kind, items)
        seconds = time.perf_counter() - t0
        metrics = intent_metrics(model, evaluation) if args.kind == "intent" else span_metrics(model, evaluation)
        metrics["eval_set"], metrics["train_seconds"] = eval_name, round(seconds, 2)
    metrics["seed_slice"] = (f"{args.data}: {len(items)} items, seed {args.seed}, demo input "
                             f"{'allowed' if args.include_demo_input or args.kind == 'image' else 'excluded'}")
    store = S3Store(boto3.client("s3", endpoint_url=args.endpoint_url), args.bucket)
    meta = registry.save(store, args.project_prefix, model, metrics=metrics, dataset_tag=None, kind=args.kind)
    pointer = registry.promote(store, args.project_prefix, meta["version"], "seed")
    print(json.dumps({"version": meta["version"], "kind": args.kind, "n_train": meta["n_train"],
                      "metrics": metrics, "artifact": meta["artifact"], "champion": pointer}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
