"""The soak: the whole loop on a local stack of its own, at load, with the counts reconciled end to end.

    make soak                      # 100,000 records, about 30,000 simulated annotations
    python tools/soak.py --records 20000 --annotations 3000 --state var/soak-small --port-base 8890

It starts a stack (S3, Label Studio, SMTP catcher, fake Scale, `airflow standalone`; state `var/soak`, ports
8880+ unless told otherwise, so the demo's stack on 8780 is left alone) with one project, `soak_banking`: the
Banking77 demo project's settings under its own prefixes, nothing scheduled by time, and no dispatch after a
promotion (the soak ends with the retrain). Then:

1. `--records` labelled records built from the real Banking77 utterances (bench/corpus.py, Banking77 kinds only,
   with planted exact and near duplicates) are uploaded as JSON Lines objects, with the demo's gold items and a
   seed model of 2,000 Banking77 items;
2. the ingest is triggered as from the UI; its Asset event schedules the dispatch, whose batch is sized so that
   the simulated annotators make about `--annotations` annotations (overlap tasks get two);
3. the simulated annotators (tools/annotator_sim.py, tools/annotators.yaml) answer every task on Label Studio;
4. the agreement stage is triggered (pulling everything), and schedules the export, which schedules the retrain.

Meanwhile the memory of every process of each service is sampled every two seconds (PSS per service, RSS of the
largest process per role). The soak checks:

- records in = staged + exact duplicates + near duplicates + quarantined (the ingest manifest), and records in =
  records uploaded;
- tasks created = tasks selected (the dispatch manifest: selected records and gold tasks), and the tasks on Label
  Studio, listed by key, are exactly those: none twice, none missing;
- annotations pulled = annotations made (the simulator's annotations and skips);
- dataset items = consolidated items (the version's dataset.jsonl lines = the export manifest's items), and items
  + held back = the records with an annotation;
- every run succeeded, and the largest Airflow task process stayed under `--task-memory-mib` (2 GiB).

It prints a table of stages (seconds, throughput) and of memory peaks, writes `<state>/soak.json`, and exits 1
when a count does not reconcile or a run failed. The stack keeps running (`python tools/stack.py down` with the
same LABELOPS_STATE and LABELOPS_PORT_BASE stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO / "include", REPO / "tools", REPO / "bench"):
    sys.path.insert(0, str(p))

from airflow_api import AirflowAPI  # noqa: E402
from demo import project_like, train_seed  # noqa: E402
from stack import Stack  # noqa: E402

PROJECT = "soak_banking"
OBJECTS = 20
SEED = 77


# ------------------------------------------------------------------------------------------------- memory
class MemorySampler:
    """Every `interval` seconds, the memory of every process of the stack: those in each service's process group
    (the stack starts each service in a group of its own) and their descendants that left it (Airflow runs each
    task in a process group of its own, under a worker in Airflow's group: they count as Airflow's). Keeps per
    service the peak of its processes' summed proportional set size (PSS: shared pages counted once, so forked
    workers do not count their shared pages again), and per role (an Airflow task, the scheduler, Label Studio,
    ...) the peak resident set size (RSS) of its largest process."""

    TASK = re.compile(r"^airflow worker -- [0-9a-f-]{36}$")  # Airflow's task runner process (its title)

    def __init__(self, stack: Stack, interval: float = 2.0) -> None:
        self.stack, self.interval = stack, interval
        self.groups: dict[str, int] = {}  # service -> peak PSS of its group
        self.roles: dict[str, int] = {}  # role -> peak RSS of its largest process
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def role(self, service: str, title: str) -> str:
        if self.TASK.match(title.strip()):
            return "airflow task (one task's process)"
        if service != "airflow":
            return service
        words = title.replace("/", " ").split()
        return " ".join(w for w in words if w in ("airflow", "api_server", "scheduler", "dag-processor", "triggerer",
                                                   "standalone", "worker", "serve-logs", "supervisor:")) or title[:40]

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            pgids = self.stack.process_groups()
            pss: dict[str, int] = {}
            procs = {p.info["pid"]: {"proc": p, **p.info} for p in psutil.process_iter(["pid", "ppid", "name",
                                                                                        "cmdline"])}
            for pid, info in procs.items():
                proc = info["proc"]
                try:
                    service = self._service_of(pid, procs, pgids)
                    if service is None:
                        continue
                    mem = proc.memory_full_info()
                except (psutil.Error, ProcessLookupError, PermissionError):
                    continue
                pss[service] = pss.get(service, 0) + getattr(mem, "pss", mem.rss)
                role = self.role(service, " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"]))
                self.roles[role] = max(self.roles.get(role, 0), mem.rss)
            for service, value in pss.items():
                self.groups[service] = max(self.groups.get(service, 0), value)
            self.samples += 1
            self._stop.wait(self.interval)

    @staticmethod
    def _service_of(pid: int, procs: dict[int, dict], pgids: dict[int, str]) -> str | None:
        """The service whose process group holds `pid` or one of its ancestors (a task's process left Airflow's
        group, but its parent, a LocalExecutor worker, is in it)."""
        seen = 0
        while pid in procs and seen < 64:
            try:
                service = pgids.get(os.getpgid(pid))
            except (ProcessLookupError, PermissionError):
                return None
            if service is not None:
                return service
            pid, seen = procs[pid]["ppid"], seen + 1
        return None

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


# ------------------------------------------------------------------------------------------------- setup
def project_yaml(batch_size: int) -> str:
    import yaml

    raw = project_like("banking_support", PROJECT)
    raw.update(description="Soak of the whole loop: Banking77-derived records at load.", tags=["soak"],
               schedules={"ingest": None, "agreement": None})
    raw["dispatch"] = {**raw.get("dispatch", {}), "batch_size": batch_size, "after_promotion": False}
    raw["label_studio"] = {**raw["label_studio"], "project_title": "Soak banking intents"}
    raw["export"] = {k: v for k, v in raw.get("export", {}).items() if k != "split"}  # the default split
    return yaml.safe_dump(raw, sort_keys=False)


def batch_for(annotations: int, overlap_share: float, overlap_annotators: int) -> int:
    """Records per dispatch so that their tasks get about `annotations` annotations: a batch of B records makes B
    tasks, of which the overlap share gets `overlap_annotators` annotations each. The gold tasks mixed in (at
    most one per gold item: 62 here) and the skips move the total a little."""
    return max(1, round(annotations / (1 + overlap_share * (overlap_annotators - 1))))


def upload(stack: Stack, records: list[dict]) -> list[str]:
    from corpus import write_jsonl_objects

    from demo import gold_objects

    client = stack.s3_client()
    keys = []
    for name, body in write_jsonl_objects(records, OBJECTS):
        key = f"{PROJECT}/raw/{name.rsplit('/', 1)[-1]}"
        client.put_object(Bucket="labelops", Key=key, Body=body)
        keys.append(key)
    for name, body in gold_objects("banking_support").items():
        client.put_object(Bucket="labelops", Key=f"{PROJECT}/gold/{name}", Body=body)
    return keys


def s3_json(client, uri: str) -> dict:
    return json.loads(client.get_object(Bucket="labelops", Key=uri.split("/", 3)[3])["Body"].read())


# ------------------------------------------------------------------------------------------------- soak
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--annotations", type=int, default=30_000, help="about this many simulated annotations")
    ap.add_argument("--workers", type=int, default=8, help="threads of the simulated annotators")
    ap.add_argument("--task-memory-mib", type=int, default=2048, help="bound on one Airflow task's RSS")
    ap.add_argument("--state", default=os.environ.get("LABELOPS_SOAK_STATE", str(REPO / "var" / "soak")))
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("LABELOPS_SOAK_PORT_BASE", "8880")))
    args = ap.parse_args(argv)

    from label_studio_sdk.client import LabelStudio

    import annotator_sim
    from corpus import build_corpus
    from labelops.config import load_project

    state = Path(args.state).resolve()
    projects_dir = state / "projects"
    projects_dir.mkdir(parents=True, exist_ok=True)
    base_cfg = load_project(REPO / "include" / "configs" / "projects" / "banking_support.yaml").spec.dispatch
    batch = batch_for(args.annotations, base_cfg.overlap_share, base_cfg.overlap_annotators)
    (projects_dir / f"{PROJECT}.yaml").write_text(project_yaml(batch))
    project = load_project(projects_dir / f"{PROJECT}.yaml")
    stack = Stack(state=state, port_base=args.port_base,
                  extra_airflow_env={"LABELOPS_PROJECTS_DIR": str(projects_dir)})
    stack.up()
    client = stack.s3_client()
    if client.list_objects_v2(Bucket="labelops", Prefix=f"{PROJECT}/manifests/", MaxKeys=1).get("KeyCount"):
        print(f"soak: {state} holds an earlier soak (its counts would not start from zero): stop that stack "
              f"(LABELOPS_STATE={state} LABELOPS_PORT_BASE={args.port_base} python tools/stack.py down) and delete "
              f"the folder, or give --state another one", file=sys.stderr)
        return 2
    s = stack.secrets()
    api = AirflowAPI(stack.url("airflow"), "admin", s["airflow_admin_password"])
    ls = LabelStudio(base_url=stack.url("label_studio"), api_key=s["label_studio_token"], timeout=600)
    stages: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    failures: list[str] = []

    def stage(name: str, started: float, **figures) -> None:
        stages[name] = {"seconds": round(time.monotonic() - started, 1), **figures}
        print(f"  {name}: {json.dumps(stages[name])}", flush=True)

    def check(name: str, left, right) -> None:
        checks[name] = {"left": left, "right": right, "ok": left == right}
        print(f"  check {name}: {left} == {right}: {'ok' if left == right else 'NO'}", flush=True)
        if left != right:
            failures.append(name)

    def ran(dag_id: str, run: dict | None) -> dict | None:
        ok = run is not None and run["state"] == "success"
        print(f"  {dag_id}: {run['state'] if run else 'no run'}" + (f" ({run['dag_run_id']})" if run else ""),
              flush=True)
        if not ok:
            failures.append(f"{dag_id} run")
        return run

    t0 = time.monotonic()
    records, planted = build_corpus(args.records, seed=SEED, banking_only=True)
    keys = upload(stack, records)
    stage("generate and upload", t0, records=len(records), objects=len(keys),
          planted_exact=len(planted["exact_pairs"]), planted_near=len(planted["near_pairs"]))
    seed = train_seed(stack, f"{PROJECT}/", "intent", "banking77", 2000)
    if seed:
        print(f"  seed model {seed} is the champion", flush=True)

    with MemorySampler(stack) as memory:
        api.wait_for_dag(f"{PROJECT}__ingest", timeout=300)
        for dag_id in api.dag_ids(tag=f"project:{PROJECT}"):
            api.set_paused(dag_id, False)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())

        t0 = time.monotonic()
        run = ran(f"{PROJECT}__ingest", api.wait_for_run(
            f"{PROJECT}__ingest", api.trigger(f"{PROJECT}__ingest", run_id=f"soak__{stamp}")["dag_run_id"], 3600))
        ingest = s3_json(client, f"s3://labelops/{PROJECT}/manifests/ingest/{run['dag_run_id']}.json")
        stage("ingest", t0, records_read=ingest["records_read"], staged=ingest["records_staged"],
              per_second=round(ingest["records_read"] / (time.monotonic() - t0)))
        check("records in = staged + duplicates + quarantined", ingest["records_read"],
              ingest["records_staged"] + ingest["duplicates_exact"] + ingest["duplicates_near"]
              + sum(ingest["quarantined"].values()))
        check("records read = records uploaded", ingest["records_read"], len(records))

        t0 = time.monotonic()
        run = ran(f"{PROJECT}__dispatch", api.wait_for_asset_run(f"{PROJECT}__dispatch", started_at, timeout=3600))
        summary = api.xcom(f"{PROJECT}__dispatch", run["dag_run_id"], "create_tasks") if run else None
        dispatch = s3_json(client, summary["manifest_uri"])
        stage("dispatch", t0, selected=dispatch["records_selected"], gold=dispatch["gold_tasks"],
              tasks_created=dispatch["tasks_created"])
        check("tasks created = tasks selected (records + gold)",
              dispatch["tasks_created"] + dispatch["tasks_already_present"],
              dispatch["records_selected"] + dispatch["gold_tasks"])

        t0 = time.monotonic()
        queues = annotator_sim.find_queues(ls, PROJECT)
        on_ls = [str((t.data or {}).get("labelops_key")) for q in queues.values()
                 for t in ls.tasks.list(project=int(q.id), page_size=1000, fields="all")]
        stage("list tasks on Label Studio", t0, tasks=len(on_ls), per_second=round(len(on_ls) / (time.monotonic() - t0)))
        check("tasks on Label Studio (distinct keys) = tasks created", len(set(on_ls)),
              dispatch["tasks_created"] + dispatch["tasks_already_present"])
        check("tasks on Label Studio twice", len(on_ls) - len(set(on_ls)), 0)

        t0 = time.monotonic()
        truth = annotator_sim.build_truth(project, [{"text": r["text"], "label": r["label"]} for r in records]
                                          + annotator_sim.source_rows("banking77"))
        made = annotator_sim.simulate(ls, project, truth, annotator_sim.load_profile(), seed=SEED,
                                      workers=args.workers)
        n_made = made["annotations"] + made["skipped"]
        stage("simulated annotators", t0, annotations=made["annotations"], skips=made["skipped"],
              tasks=made["tasks_annotated"], per_second=round(n_made / (time.monotonic() - t0), 1))

        t0 = time.monotonic()
        after = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        run = ran(f"{PROJECT}__agreement", api.wait_for_run(
            f"{PROJECT}__agreement", api.trigger(f"{PROJECT}__agreement", conf={"full": True},
                                                 run_id=f"soak__{stamp}")["dag_run_id"], 3600))
        agreement_run = run["dag_run_id"]
        agreement = s3_json(client, f"s3://labelops/{PROJECT}/manifests/agreement/{agreement_run}.json")
        stage("agreement (full pull)", t0, pulled=agreement["annotations_pulled"],
              kappa=agreement.get("cohen_kappa_mean"), adjudication=agreement.get("adjudication_candidates"))
        check("annotations pulled = annotations made", agreement["annotations_pulled"], n_made)

        t0 = time.monotonic()
        run = ran(f"{PROJECT}__export", api.wait_for_asset_run(f"{PROJECT}__export", after, timeout=3600))
        version = api.xcom(f"{PROJECT}__export", run["dag_run_id"], "create_version") if run else None
        stage("export", t0, items=version and version["items"], held_back=version and version["held_back"],
              tag=version and version.get("tag"))
        if version and version.get("created"):
            export = s3_json(client, version["manifest_uri"])
            check("dataset items (dataset.jsonl lines) = consolidated items", count_dataset_lines(client, export),
                  version["items"])
            check("items + held back = records in the pulled annotations", version["items"] + version["held_back"],
                  len(annotated_records(client, project, agreement_run)))
        else:
            failures.append("export made no version")

        t0 = time.monotonic()
        run = ran(f"{PROJECT}__retrain", api.wait_for_asset_run(f"{PROJECT}__retrain", after, timeout=3600))
        verdict = api.xcom(f"{PROJECT}__retrain", run["dag_run_id"], "champion_challenger") if run else None
        stage("retrain", t0, promoted=verdict and verdict.get("promoted"))

    task_peak = memory.roles.get("airflow task (one task's process)", 0)
    check(f"Airflow task processes sampled, the largest under {args.task_memory_mib} MiB",
          0 < task_peak < args.task_memory_mib * 2**20, True)
    result = {"records": args.records, "annotations_target": args.annotations, "batch_size": batch,
              "stages": stages, "checks": checks, "memory_samples": memory.samples,
              "memory_peak_pss_by_service": memory.groups, "memory_peak_rss_by_role": memory.roles,
              "failures": failures}
    (state / "soak.json").write_text(json.dumps(result, indent=1))
    print("\n| stage | seconds | figures |\n|---|---|---|")
    for name, st in stages.items():
        print(f"| {name} | {st['seconds']} | " + ", ".join(f"{k} {v}" for k, v in st.items() if k != "seconds") + " |")
    print("\n| service | peak PSS of its processes (MiB) |\n|---|---|")
    for name, value in sorted(memory.groups.items()):
        print(f"| {name} | {value / 2**20:.0f} |")
    print("\n| process | peak RSS of the largest (MiB) |\n|---|---|")
    for name, value in sorted(memory.roles.items()):
        print(f"| {name} | {value / 2**20:.0f} |")
    print(f"\nsoak: {'OK' if not failures else 'FAILED: ' + ', '.join(failures)} (details in {state / 'soak.json'})")
    return 0 if not failures else 1


def count_dataset_lines(client, export: dict) -> int:
    """Lines of the dataset.jsonl the export staged for its version."""
    prefix = export["files_uri"].split("/", 3)[3].rstrip("/")
    body = client.get_object(Bucket="labelops", Key=f"{prefix}/dataset.jsonl")["Body"].read()
    return sum(1 for line in body.splitlines() if line.strip())


def annotated_records(client, project, run_id: str) -> set[str]:
    """The record ids of the annotation rows (adjudication rows excluded) an agreement run pulled."""
    from labelops.agreement import pipeline
    from labelops.storage import S3Store

    store = S3Store(client, "labelops")
    paths = pipeline.Paths(project, run_id)
    rows = pipeline.read_rows(store, pipeline.snapshot_keys(store, paths, runs={paths.run}),
                              columns=["record_id", "task_key"])
    return {r["record_id"] for r in rows if r["record_id"] and not pipeline.is_adjudication(r)}


if __name__ == "__main__":
    sys.exit(main())
