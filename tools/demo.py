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

PROJECTS = ("banking_support", "snips_assistant", "digits")
BANKING77 = REPO / "data" / "banking77"
SNIPS = REPO / "data" / "snips" / "2017-06-custom-intent-engines"
SAMPLE_SIZE = 1200
SEED = 77
# Labelled items in each project's seed slice (tools/seed_model.py). Banking77's is deliberately small (100 items
# covering 53 of the 77 intents, 0.31 accuracy on its test set): the demo's first round of annotations
# (dispatch.batch_size 400) trains a challenger that beats it, so the demo shows a promotion and the dispatch that follows with the new
# champion. SNIPS's seed intent model is strong already; its entity seed is the gazetteer baseline.
SEED_ITEMS = {"banking_support": 100, "snips_assistant": 2000, "digits": 60}
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


def snips_objects() -> dict[str, bytes]:
    """The SNIPS benchmark's JSON files exactly as published (their own layout, PlayMusic's odd UTF-8 included):
    the full training file of two intents and the validation file of every intent."""
    files = {}
    for intent_dir in sorted(p for p in SNIPS.iterdir() if p.is_dir()):
        intent = intent_dir.name
        names = [f"validate_{intent}.json"] + ([f"train_{intent}_full.json"] if intent in ("PlayMusic", "GetWeather")
                                               else [])
        for name in names:
            files[f"{intent}/{name}"] = (intent_dir / name).read_bytes()
    return files


def gold_objects(project_name: str) -> dict[str, bytes]:
    """Gold items (known answers) mixed into the annotation batches to score the annotators: Banking77 test rows,
    or SNIPS training utterances with their entity spans, none of them in the demo's raw input."""
    from seed_model import banking77, snips

    if project_name == "banking_support":
        rows = [{"text": r["text"], "label": r["intent"]} for r in banking77("test")[::50]]
    else:
        rows = [{"text": u["text"], "label": u["intent"], "entities": u["spans"]}
                for u in snips("*/train_*_full.json")[::400]]
    return {"gold.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()}


def digits_objects() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The digits project's raw input as a user would upload it: the images under digits/images/ (outside the
    source prefix) and one image manifest (JSON Lines: key, source) under the source prefix, which is what ingest
    reads; and the gold items' images and their JSONL of known answers (image_key, label). Both as
    {key under the bucket: bytes}. The seed slice, gold and input are disjoint (tools/digits_data.py)."""
    import digits_data

    split = digits_data.demo_split()
    scans = digits_data.objects()
    raw, gold, listed = {}, {}, []
    for i in split["input"]:
        name, body, _ = scans[i]
        raw[f"digits/images/{name}"] = body
        listed.append((f"digits/images/{name}", f"UCI handwritten digits, scan {i} (CC BY 4.0)"))
    raw["digits/raw/manifest-0001.jsonl"] = digits_data.manifest(listed)
    answers = []
    for i in split["gold"]:
        name, body, label = scans[i]
        gold[f"digits/gold-images/{name}"] = body
        answers.append({"image_key": f"digits/gold-images/{name}", "label": label})
    gold["digits/gold/gold.jsonl"] = "".join(json.dumps(r) + "\n" for r in answers).encode()
    return raw, gold


def seed_models(stack: Stack, project_name: str) -> None:
    """A first champion model from a small labelled seed slice (tools/seed_model.py), so the first dispatch
    pre-annotates; skipped when the project has a champion already (a re-run of the demo adds no version)."""
    kinds = {"banking_support": [("intent", "banking77")], "digits": [("image", "digits")]}.get(
        project_name, [("intent", "snips"), ("entities", "snips")])
    for kind, data in kinds:
        version = train_seed(stack, f"{project_name}/", kind, data, SEED_ITEMS[project_name])
        if version:
            print(f"{project_name}: seed {kind} model {version} is the champion")


def train_seed(stack: Stack, project_prefix: str, kind: str, data: str, n: int) -> str | None:
    """Train, register and promote a seed model of `kind` from `n` labelled items of `data` for the project under
    `project_prefix` (tools/seed_model.py, against the stack's S3): its version; None when the project has a
    champion of that kind already."""
    import os
    import subprocess

    from labelops.models import registry
    from labelops.storage import S3Store

    if registry.champion(S3Store(stack.s3_client(), "labelops"), project_prefix, kind=kind) is not None:
        return None
    s = stack.secrets()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": s["aws_secret_access_key"],
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(REPO / "include")}
    out = subprocess.run([sys.executable, str(REPO / "tools" / "seed_model.py"), "--endpoint-url", stack.url("s3"),
                          "--bucket", "labelops", "--project-prefix", project_prefix, "--kind", kind, "--data", data,
                          "--n", str(n)], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"seed model {project_prefix}{kind} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)["version"]


def project_like(name: str, new_name: str) -> dict:
    """The raw config of demo project `name` as a new project `new_name` under prefixes of its own (bucket
    labelops): for the tests and the soak, which run the demo's settings side by side with the demo."""
    import yaml

    raw = yaml.safe_load((REPO / "include" / "configs" / "projects" / f"{name}.yaml").read_text())
    raw["name"] = new_name
    raw["storage"] = {"bucket": "labelops", "source_prefix": f"{new_name}/raw/", "project_prefix": f"{new_name}/"}
    return raw


def project_config(name: str):
    """The demo project's config, as the DAG factory reads it."""
    from labelops.config import load_project

    return load_project(REPO / "include" / "configs" / "projects" / f"{name}.yaml")


def upload_samples(stack: Stack, project_name: str) -> list[str]:
    project = project_config(project_name)
    storage = project.spec.storage
    client = stack.s3_client()
    uris = []
    if project_name == "digits":
        raw, gold = digits_objects()
        for key, body in {**raw, **gold}.items():
            client.put_object(Bucket=storage.bucket, Key=key, Body=body)
        return [f"s3://{storage.bucket}/{k}" for k in raw if k.startswith(storage.source_prefix)]
    objects = sample_objects() if project_name == "banking_support" else snips_objects()
    for name, body in objects.items():
        key = f"{storage.source_prefix}{name}"
        client.put_object(Bucket=storage.bucket, Key=key, Body=body)
        uris.append(f"s3://{storage.bucket}/{key}")
    for name, body in gold_objects(project_name).items():
        client.put_object(Bucket=storage.bucket, Key=f"{storage.project_prefix}{project.spec.dispatch.gold_prefix}{name}",
                          Body=body)
    return uris


def run_project(api: AirflowAPI, client, project: str, stamp: str, stack: Stack) -> bool:
    api.wait_for_dag(f"{project}__healthcheck", timeout=180)  # the factory's DAGs are parsed
    dag_ids = sorted(d for d in api.dag_ids(tag=f"project:{project}"))
    print(f"DAGs of {project}: {', '.join(dag_ids)}")
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())  # before unpausing: scheduled runs count too
    for dag_id in dag_ids:
        api.set_paused(dag_id, False)
    ok = True
    for stage in ENTRY_STAGES:
        dag_id = f"{project}__{stage}"
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
        if stage == "ingest":
            staged = print_manifest(api, client, dag_id, run["dag_run_id"])
            # a scheduled ingest run (its DAG was just unpaused) may have staged the batch before ours: its
            # Asset event schedules the dispatch as well
            latest = latest_manifest(client, project) or {}
            fresh = latest.get("created_at", "") >= started and latest.get("records_staged", 0) > 0
            ok = follow_dispatch(api, client, project, started, must=bool(staged) or fresh) and ok
    if ok and f"{project}__agreement" in dag_ids:
        ok = annotate_and_measure(api, stack, project, stamp)
    return ok


def annotate_and_measure(api: AirflowAPI, stack: Stack, project: str, stamp: str) -> bool:
    """The simulated annotators (tools/annotators.yaml) work on the project's Label Studio tasks, then the
    agreement stage runs at once (a real trigger: no logical date) instead of waiting for its night."""
    from label_studio_sdk.client import LabelStudio

    import annotator_sim

    cfg = project_config(project)
    ls = LabelStudio(base_url=stack.url("label_studio"), api_key=stack.secrets()["label_studio_token"])
    made = annotator_sim.simulate(ls, cfg, annotator_sim.load_truth(cfg, annotator_sim.default_data(cfg)),
                                  annotator_sim.load_profile(),
                                  seed=SEED)
    print(f"  simulated annotators ({', '.join(made['per_annotator'])}): {made['annotations']} annotations, "
          f"{made['skipped']} skips on {made['tasks_annotated']} tasks")
    dag_id = f"{project}__agreement"
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    run = api.trigger(dag_id, run_id=f"demo__{stamp}")
    final = api.wait_for_run(dag_id, run["dag_run_id"], timeout=900)
    print(f"  {dag_id}: {final['state']} (run {run['dag_run_id']})")
    for ti in api.task_instances(dag_id, run["dag_run_id"]):
        print(f"    {ti['task_id']:28} {ti['state']}")
    summary = api.xcom(dag_id, run["dag_run_id"], "compute_agreement")
    if summary:
        kappa = summary["cohen_kappa_mean"]
        print(f"      pulled {summary['annotations_pulled']} annotations; window {summary['annotations_in_window']} on "
              f"{summary['items_in_window']} items by {summary['annotators']} annotators; mean pairwise kappa "
              f"{'n/a' if kappa is None else f'{kappa:.3f}'}; {summary['alerts']} alerts; "
              f"{summary['adjudication_candidates']} items disputed")
        print(f"      report {summary['report_uri']}")
    alert = api.xcom(dag_id, run["dag_run_id"], "alert_leads")
    if alert:
        print(f"      alert email: {'sent' if alert.get('sent') else 'not sent (' + alert.get('reason', '') + ')'}")
    if final["state"] != "success":
        return False
    if f"{project}__export" in api.dag_ids(tag=f"project:{project}"):
        return follow_export(api, stack.s3_client(), project, started,
                             must=bool(summary and summary["annotations_pulled"]))
    return True


def follow_export(api: AirflowAPI, client, project: str, after: str, must: bool) -> bool:
    """The export run the agreement Asset event scheduled (the real scheduler): the dataset version it made."""
    dag_id = f"{project}__export"
    run = api.wait_for_asset_run(dag_id, after, timeout=600 if must else 20)
    if run is None:
        print(f"  {dag_id}: " + ("no run was scheduled by the agreement Asset event" if must else
                                  "not scheduled (no new annotation)"))
        return not must
    print(f"  {dag_id}: {run['state']} (run {run['dag_run_id']}, scheduled by the agreement Asset event)")
    for ti in api.task_instances(dag_id, run["dag_run_id"]):
        print(f"    {ti['task_id']:28} {ti['state']}")
    result = api.xcom(dag_id, run["dag_run_id"], "create_version")
    if result:
        if result["created"]:
            print(f"      dataset version {result['tag']} (commit {result['commit'][:12]}): {result['items']} items "
                  f"{json.dumps(result['by_split'])}, {result['held_back']} held back; by decision "
                  f"{json.dumps(result['by_decision'])}")
        else:
            print(f"      no new dataset version: {result['reason']}")
    if run["state"] != "success":
        return False
    if result and result["created"] and f"{project}__retrain" in api.dag_ids(tag=f"project:{project}"):
        return follow_retrain(api, client, project, after)
    return True


def follow_retrain(api: AirflowAPI, client, project: str, after: str) -> bool:
    """The retrain run the export Asset event scheduled: its decision, and the champion/challenger verdict; after
    a promotion, the dispatch the retrain's Asset event scheduled, pre-annotating with the new champion."""
    dag_id = f"{project}__retrain"
    run = api.wait_for_asset_run(dag_id, after, timeout=900)
    if run is None:
        print(f"  {dag_id}: no run was scheduled by the export Asset event")
        return False
    print(f"  {dag_id}: {run['state']} (run {run['dag_run_id']}, scheduled by the export Asset event)")
    tis = {ti["task_id"]: ti["state"] for ti in api.task_instances(dag_id, run["dag_run_id"])}
    for task_id, state in tis.items():
        print(f"    {task_id:28} {state}")
    if tis.get("decide") == "skipped":  # the decision is kept in S3 beside the run (a skip leaves no XCom)
        from labelops.retrain.pipeline import Paths

        key = Paths(project_config(project), run["dag_run_id"]).step("decision")
        decision = json.loads(client.get_object(Bucket="labelops", Key=key)["Body"].read())
        print(f"      no retraining: {decision['why']}")
    verdict = api.xcom(dag_id, run["dag_run_id"], "champion_challenger")
    if verdict:
        promoted = json.dumps(verdict["promoted"]) if verdict["promoted"] else "nothing (the champion stays)"
        print(f"      promoted: {promoted}; comparison in {verdict['manifest_uri']}")
        manifest = json.loads(client.get_object(Bucket="labelops", Key=verdict["manifest_uri"].split("/", 3)[3])
                              ["Body"].read())
        for kind, c in manifest["comparisons"].items():
            print(f"      {kind}: {c['reason']}")
    if run["state"] != "success":
        return False
    if verdict and verdict["promoted"]:  # the loop closes: the next batch is chosen and pre-annotated by it
        return follow_dispatch(api, client, project, after, must=True, by="retrain")
    return True


def follow_dispatch(api: AirflowAPI, client, project: str, after: str, must: bool, by: str = "ingest") -> bool:
    """The dispatch run an Asset event (the ingest's new batch, or the retrain's promoted model) scheduled since
    `after` (the real scheduler, no logical date)."""
    dag_id = f"{project}__dispatch"
    run = api.wait_for_asset_run(dag_id, after, timeout=600 if must else 20)
    if run is None:
        if must:
            print(f"  {dag_id}: no run was scheduled by the {by} Asset event")
            return False
        print(f"  {dag_id}: not scheduled (no new batch staged); the latest dispatch:")
        print_dispatch(latest_manifest(client, project, "dispatch"))
        return True
    print(f"  {dag_id}: {run['state']} (run {run['dag_run_id']}, scheduled by the {by} Asset event)")
    for ti in api.task_instances(dag_id, run["dag_run_id"]):
        print(f"    {ti['task_id']:28} {ti['state']}")
    summary = api.xcom(dag_id, run["dag_run_id"], "create_tasks")
    if summary:
        manifest = json.loads(client.get_object(Bucket="labelops", Key=summary["manifest_uri"].split("/", 3)[3])
                              ["Body"].read())
        print_dispatch(manifest)
    return run["state"] == "success"


def print_dispatch(m: dict | None) -> None:
    if not m:
        return
    print(f"      considered {m['records_considered']}, selected {m['records_selected']} "
          f"({json.dumps(m['by_strategy'])}), gold {m['gold_tasks']}, model {m['model_version'] or 'none (cold start)'}")
    print(f"      tasks created {m['tasks_created']}, already there {m['tasks_already_present']}; by queue: "
          + ", ".join(f"{q} {v['created'] + v['already_present']} (Label Studio project {v.get('project_id')})"
                      for q, v in sorted(m.get("per_queue", {}).items())))
    if m.get("drift", {}).get("low_confidence_share") is not None:
        print(f"      drift: {m['drift']['low_confidence_share']:.1%} of the pool below confidence "
              f"{m['drift']['threshold']}")
    print(f"      manifest {m['manifest_uri']}")


def manifest_objects(client, project: str, stage: str) -> list[dict]:
    """The S3 listing entries of a project's stage manifests (plans excluded)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="labelops", Prefix=f"{project}/manifests/{stage}/")
    return [o for p in pages for o in p.get("Contents", []) if not o["Key"].endswith(".plan.json")]


def manifests(client, project: str, stage: str) -> list[dict]:
    """Every manifest of a project's stage."""
    return [json.loads(client.get_object(Bucket="labelops", Key=o["Key"])["Body"].read())
            for o in manifest_objects(client, project, stage)]


def latest_manifest(client, project: str, stage: str = "ingest") -> dict | None:
    """The newest manifest of a project's stage (a scheduled run may have taken the data before the demo's run)."""
    found = manifest_objects(client, project, stage)
    if not found:
        return None
    newest = max(found, key=lambda o: o["LastModified"])
    return json.loads(client.get_object(Bucket="labelops", Key=newest["Key"])["Body"].read())


def print_manifest(api: AirflowAPI, client, dag_id: str, run_id: str) -> int:
    """Prints the run's ingest manifest (or the latest one); returns how many records this run staged."""
    summary = api.xcom(dag_id, run_id, "ingest")
    staged = summary["records_staged"] if summary else 0
    if not summary:
        summary = latest_manifest(client, dag_id.split("__")[0])
        print("      nothing new in this run: every object was taken by an earlier run"
              + (f" ({summary['run_id']}), whose manifest says:" if summary else ""))
        if not summary:
            return 0
    q = summary["quarantined"]
    print(f"      read {summary['records_read']}, staged {summary['records_staged']}, duplicates "
          f"{summary['duplicates_exact']} exact + {summary['duplicates_near']} near, quarantined {sum(q.values())}"
          f"{' ' + json.dumps(q) if q else ''}; objects read {summary['objects_read']}, quarantined "
          f"{summary['objects_quarantined']}")
    print(f"      manifest {summary['manifest_uri']}")
    return staged


def main() -> int:
    stack = Stack()
    try:
        stack.up()
    except StackError as exc:
        print(f"demo: the stack did not start: {exc}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "include"))
    for project in PROJECTS:
        uris = upload_samples(stack, project)
        if project == "digits":
            import digits_data

            print(f"{project}: image manifest {uris[0]} listing {len(digits_data.demo_split()['input'])} PNGs "
                  f"under s3://labelops/digits/images/, gold items under s3://labelops/{project}/gold/")
        else:
            print(f"{project}: {len(uris)} raw objects under {uris[0].rsplit('/', 1)[0]}/ and below, gold items "
                  f"under s3://labelops/{project}/gold/")
        seed_models(stack, project)
    s = stack.secrets()
    api = AirflowAPI(stack.url("airflow"), "admin", s["airflow_admin_password"])
    stamp = time.strftime("%Y%m%dT%H%M%S")
    try:
        client = stack.s3_client()
        ok = all([run_project(api, client, project, stamp, stack) for project in PROJECTS])
    except AirflowAPIError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        ok = False
    print(f"""
Where to look (the stack keeps running; `make stack-down` stops it):
  Airflow UI      {stack.url('airflow')}   login admin / {s['airflow_admin_password']}
  Label Studio    {stack.url('label_studio')}   login {s['label_studio_email']} / {s['label_studio_password']}
  S3 (moto)       {stack.url('s3')}   bucket labelops; browse: {stack.url('s3')}/moto-api/
  Captured email  {stack.mail_dir}/*.eml
  Manifests       s3://labelops/<project>/manifests/{{ingest,dispatch,agreement,export}}/<run>.json (quarantine/, staged/ beside them)
  Annotation      Label Studio projects "<title> · verify / expert / overlap" (one per queue), tasks pre-annotated
  Reports         s3://labelops/<project>/reports/agreement/<run>.html (the agreement stage; nightly and in the demo)
  Datasets        git clone {stack.datasets_repo}  (tags <project>/v<N>; `dvc pull` needs the S3 settings above)
  Logs            {stack.logs}/ (one file per service; task logs under {stack.state / 'airflow' / 'logs'})
  Airflow CLI     source {stack.state / 'airflow.env'} && airflow dags list
These logins are generated for this machine at first start and kept in {stack.state / 'secrets.json'}.""")
    print("demo: OK" if ok else "demo: FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
