"""DAG parse time, as the dag-processor sees it: a fresh interpreter with Airflow already imported, then
DagBag on the file or folder; the figure is the sum of Airflow's own per-file parse durations (FileLoadStat).

- per file: our factory file (all projects' DAGs) against a minimal hand-written DAG file (one DAG, one task).
- whole folder: our dags/ against a folder of hand-written static DAG files, one per DAG our factory builds,
  each with as many tasks as ours (what the same DAGs cost without a factory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import Benchmark

REPO = Path(__file__).resolve().parents[1]
PROBE = r"""
import json, os
import airflow.sdk
# Warm what any DAG with an Asset pays inside Airflow itself: the providers' asset URI handlers (boto3 among them).
airflow.sdk.Asset(uri="s3://warm/up", name="warmup")
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
assert not bag.import_errors, bag.import_errors
print("PROBE" + json.dumps({"seconds": sum(s.duration.total_seconds() for s in bag.dagbag_stats),
                            "dags": {d: len(bag.dags[d].tasks) for d in bag.dag_ids}}))
"""
MINIMAL = '''from datetime import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["baseline"]):
{tasks}
'''


def parse(folder: Path) -> dict:
    home = tempfile.mkdtemp(prefix="bench-airflow-")
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "PYTHONPATH": f"{REPO / 'include'}{os.pathsep}{REPO / 'plugins'}"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE")]
    if out.returncode or not line:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(line[-1][5:])


def static_folder(dags: dict[str, int]) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bench-static-dags-"))
    for dag_id, n_tasks in dags.items():
        tasks = "\n".join(f"    EmptyOperator(task_id='t{i}')" for i in range(n_tasks))
        (folder / f"{dag_id}.py").write_text(MINIMAL.format(dag_id=f"static_{dag_id}", tasks=tasks))
    return folder


OURS_FILE = Path(tempfile.mkdtemp(prefix="bench-ours-"))
(OURS_FILE / "labelops_dags.py").write_text((REPO / "dags" / "labelops_dags.py").read_text())
OUR_DAGS = parse(REPO / "dags")["dags"]
MINIMAL_FOLDER = static_folder({"minimal": 1})
STATIC_FOLDER = static_folder(OUR_DAGS)

BENCHMARKS = [
    Benchmark("DAG parse, per file (labelops_dags.py)", "minimal 1-task DAG file",
              lambda: parse(MINIMAL_FOLDER)["seconds"], lambda: parse(OURS_FILE)["seconds"]),
    Benchmark(f"DAG parse, whole folder ({len(OUR_DAGS)} DAGs)", f"{len(OUR_DAGS)} static DAG files",
              lambda: parse(STATIC_FOLDER)["seconds"], lambda: parse(REPO / "dags")["seconds"]),
]
