"""`make demo`: start the local stack, load the demo project's data into S3, run its DAGs, say where to look.

Safe to re-run: the stack is reused when it is up, the sample objects are re-uploaded byte for byte (same keys,
same ETags, so nothing is new to ingest), and every run gets a fresh run id.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from airflow_api import AirflowAPI, AirflowAPIError  # noqa: E402
from stack import REPO, Stack, StackError  # noqa: E402

PROJECT = "banking_support"
BANKING77 = REPO / "data" / "banking77"
SAMPLE_SIZE = 600
SEED = 77
# The DAGs a person starts by hand, in this order; the others follow through Assets and schedules.
ENTRY_STAGES = ("healthcheck", "ingest")


def sample_objects() -> dict[str, bytes]:
    """Unlabeled raw input for the demo: a seeded sample of Banking77's training set, as one JSONL and one CSV
    object. `source_id` names the row of data/banking77/train.csv, where the simulated annotators find the gold."""
    with open(BANKING77 / "train.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picked = sorted(random.Random(SEED).sample(range(len(rows)), SAMPLE_SIZE))
    records = [{"source_id": f"banking77-train-{i:05d}", "text": rows[i]["text"]} for i in picked]
    half = len(records) // 2
    jsonl = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[:half]).encode()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["source_id", "text"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records[half:])
    return {"batch-0001.jsonl": jsonl, "batch-0002.csv": out.getvalue().encode()}


def upload_samples(stack: Stack) -> list[str]:
    sys.path.insert(0, str(REPO / "include"))
    from labelops.config import load_project

    project = load_project(REPO / "include" / "configs" / "projects" / f"{PROJECT}.yaml")
    storage = project.spec.storage
    client = stack.s3_client()
    uris = []
    for name, body in sample_objects().items():
        key = f"{storage.source_prefix}{name}"
        client.put_object(Bucket=storage.bucket, Key=key, Body=body)
        uris.append(f"s3://{storage.bucket}/{key}")
    return uris


def run_project(api: AirflowAPI, stamp: str) -> bool:
    for stage in ENTRY_STAGES:  # make sure the factory's DAGs are parsed before reading the list
        if stage == "healthcheck":
            api.wait_for_dag(f"{PROJECT}__{stage}", timeout=180)
    dag_ids = sorted(d for d in api.dag_ids(tag=f"project:{PROJECT}"))
    print(f"DAGs of {PROJECT}: {', '.join(dag_ids)}")
    for dag_id in dag_ids:
        api.set_paused(dag_id, False)
    ok = True
    for stage in ENTRY_STAGES:
        dag_id = f"{PROJECT}__{stage}"
        if dag_id not in dag_ids:
            print(f"  {dag_id}: not built yet (that stage does not exist yet)")
            continue
        run = api.trigger(dag_id, run_id=f"demo__{stamp}")
        final = api.wait_for_run(dag_id, run["dag_run_id"], timeout=900)
        print(f"  {dag_id}: {final['state']} (run {run['dag_run_id']})")
        for ti in api.task_instances(dag_id, run["dag_run_id"]):
            print(f"    {ti['task_id']:28} {ti['state']}")
            if ti["state"] == "failed":
                ok = False
                tail = api.task_log(dag_id, run["dag_run_id"], ti["task_id"], max(ti.get("try_number") or 1, 1))
                print("      " + "\n      ".join(tail.splitlines()[-8:]))
        if final["state"] != "success":
            return False
    return ok


def main() -> int:
    stack = Stack()
    try:
        stack.up()
    except StackError as exc:
        print(f"demo: the stack did not start: {exc}", file=sys.stderr)
        return 2
    uris = upload_samples(stack)
    print(f"sample data ({SAMPLE_SIZE} unlabeled Banking77 utterances): {', '.join(uris)}")
    s = stack.secrets()
    api = AirflowAPI(stack.url("airflow"), "admin", s["airflow_admin_password"])
    try:
        ok = run_project(api, time.strftime("%Y%m%dT%H%M%S"))
    except AirflowAPIError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        ok = False
    print(f"""
Where to look (the stack keeps running; `make stack-down` stops it):
  Airflow UI      {stack.url('airflow')}   login admin / {s['airflow_admin_password']}
  Label Studio    {stack.url('label_studio')}   login {s['label_studio_email']} / {s['label_studio_password']}
  S3 (moto)       {stack.url('s3')}   bucket labelops; browse: {stack.url('s3')}/moto-api/
  Captured email  {stack.mail_dir}/*.eml
  Reports         s3://labelops/{PROJECT}/reports/ (written by the nightly agreement stage)
  Logs            {stack.logs}/ (one file per service; task logs under {stack.state / 'airflow' / 'logs'})
  Airflow CLI     source {stack.state / 'airflow.env'} && airflow dags list
These logins are generated for this machine at first start and kept in {stack.state / 'secrets.json'}.""")
    print("demo: OK" if ok else "demo: FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
