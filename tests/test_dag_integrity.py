"""The DAG folder: loads with zero import errors, builds every expected DAG per project, parses fast, and a
project config with a mistake leaves the other projects' DAGs loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
# boto3 is not listed: Airflow's own asset URI handlers (the amazon provider's) import it for any Asset.
HEAVY = ("pandas", "great_expectations", "dvc", "sklearn", "label_studio_sdk", "scaleapi", "pyarrow", "numpy",
         "PIL", "datasketch")

# Runs in a fresh interpreter, as the dag-processor does: Airflow's own imports are warmed first, so the time
# measured per file (Airflow's own FileLoadStat) is what our DAG files add. Heavy modules are looked for only
# among those the DAG file brought in (sys.modules before the DagBag is subtracted).
PROBE = r"""
import json, os, sys, time
import airflow.sdk
# Warm what any DAG with an Asset pays inside Airflow itself: the providers' asset URI handlers (boto3 among them).
airflow.sdk.Asset(uri="s3://warm/up", name="warmup")
from airflow.dag_processing.dagbag import DagBag
warm = set(sys.modules)
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
heavy = sorted(m for m in set(sys.modules) - warm if m.split(".")[0] in sys.argv[1].split(","))
print("PROBE" + json.dumps({
    "dag_ids": sorted(bag.dag_ids),
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    "stats": [{"file": s.file, "seconds": s.duration.total_seconds(), "dags": s.dag_num} for s in bag.dagbag_stats],
    "heavy": sorted({m.split(".")[0] for m in heavy}),
    "dags": {d: {"owner": bag.dags[d].owner, "tags": sorted(bag.dags[d].tags), "doc": bag.dags[d].doc_md or "",
                 "max_active_runs": bag.dags[d].max_active_runs,
                 "schedule": type(bag.dags[d].timetable).__name__} for d in bag.dag_ids},
}))
"""


def probe(tmp_path: Path, projects_dir: Path | None = None) -> dict:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "home"), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": f"{REPO / 'include'}{os.pathsep}{REPO / 'plugins'}"}
    if projects_dir:
        env["LABELOPS_PROJECTS_DIR"] = str(projects_dir)
    out = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY)], env=env, capture_output=True, text=True,
                         timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(lines[-1][len("PROBE"):])


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("dagbag"))


def expected_dag_ids() -> set[str]:
    from labelops.config import STAGES, load_all_projects
    from labelops_dags import STAGE_BUILDERS

    projects, errors = load_all_projects()
    assert not errors, errors
    stages = ["healthcheck", *[s for s in STAGES if s in STAGE_BUILDERS]]
    return {p.dag_id(s) for p in projects for s in stages}


def test_zero_import_errors(bag):
    assert bag["import_errors"] == {}


def test_every_expected_dag_exists(bag):
    expected = expected_dag_ids()
    assert "banking_support__healthcheck" in expected
    assert expected <= set(bag["dag_ids"]), expected - set(bag["dag_ids"])
    assert not [d for d in bag["dag_ids"] if d.endswith("__config_error")]


def test_tags_owner_and_doc(bag):
    for dag_id, d in bag["dags"].items():
        project = dag_id.split("__")[0]
        assert d["owner"] not in ("", "airflow"), dag_id
        assert "labelops" in d["tags"] and f"project:{project}" in d["tags"], dag_id
        assert len(d["doc"]) > 80 and project in d["doc"], dag_id


def test_each_dag_file_parses_without_heavy_imports(bag):
    """What keeps parsing fast: no heavy module at DAG top level. The parse time itself is measured in
    `make bench` (bench_dag_parse), not asserted here: a timed test fails on a loaded machine."""
    assert bag["stats"] and all(s["dags"] for s in bag["stats"]), "no DAG file was parsed"
    assert bag["heavy"] == [], f"DAG parsing imported heavy modules: {bag['heavy']}"


def test_no_stage_runs_twice_at_once(bag):
    """Two runs of one stage at once could select the same pool records, pull into the same state or number the
    same dataset version: Airflow queues a second run of every stage DAG until the first has ended."""
    stages = [d for d in bag["dag_ids"] if d.split("__")[-1] in ("ingest", "dispatch", "agreement", "export",
                                                                  "retrain")]
    assert len(stages) >= 10 and all(bag["dags"][d]["max_active_runs"] == 1 for d in stages), stages


def test_healthcheck_dag_shape(bag):
    d = bag["dags"]["banking_support__healthcheck"]
    assert d["max_active_runs"] == 1
    assert d["schedule"] == "NullTimetable"  # run by hand, never on a schedule


def test_a_broken_config_leaves_the_other_projects_loaded(tmp_path):
    projects = tmp_path / "projects"
    projects.mkdir()
    demo = REPO / "include" / "configs" / "projects" / "banking_support.yaml"
    (projects / demo.name).write_text(demo.read_text())
    broken = yaml.safe_load(demo.read_text()) | {"name": "typo_project"}
    broken["storage"] = {"bucket": "labelops", "source_prefix": "typo/raw/", "project_prefix": "typo/"}
    broken["thresholds"] = {**broken["thresholds"], "min_cohen_kapa": 0.5}  # misspelt field
    (projects / "typo_project.yaml").write_text(yaml.safe_dump(broken))
    (projects / "not_yaml.yaml").write_text("name: [oops\n")

    result = probe(tmp_path, projects)
    assert result["import_errors"] == {}
    assert "banking_support__healthcheck" in result["dag_ids"]
    assert not [d for d in result["dag_ids"] if d.startswith("typo_project__") and "config_error" not in d]
    error_doc = result["dags"]["typo_project__config_error"]["doc"]
    assert "typo_project.yaml" in error_doc and "thresholds.min_cohen_kapa" in error_doc
    assert "not valid YAML" in result["dags"]["not_yaml__config_error"]["doc"]


def test_stage_chaining_by_assets():
    import dataclasses

    from airflow.sdk import Asset

    from labelops.config import load_project
    from labelops_dags import UPSTREAM, stage_schedule

    project = load_project(REPO / "include" / "configs" / "projects" / "banking_support.yaml")
    ingest = Asset(uri=project.asset_uri("ingest"), name="banking_support__ingest", group="labelops")
    retrain = Asset(uri=project.asset_uri("retrain"), name="banking_support__retrain", group="labelops")
    # a new staged batch or a promoted model schedules the dispatch (the closed loop) ...
    assert stage_schedule(project, "dispatch") == ingest | retrain
    # ... or only the batch, when the project turns that off
    manual = dataclasses.replace(project, spec=project.spec.model_copy(update={
        "dispatch": project.spec.dispatch.model_copy(update={"after_promotion": False})}))
    assert stage_schedule(manual, "dispatch") == [ingest]
    assert UPSTREAM == {"dispatch": "ingest", "export": "agreement", "retrain": "export"}
    assert stage_schedule(project, "agreement") == "0 2 * * *"
    with pytest.raises(KeyError):
        stage_schedule(project, "healthcheck")


def test_event_extras_reads_every_triggering_event_in_order():
    from types import SimpleNamespace

    from operators.events import event_extras

    ingest = [SimpleNamespace(extra={"manifest_uri": "s3://b/p/manifests/ingest/1.json"}),
              SimpleNamespace(extra={"records_staged": 0}), SimpleNamespace(extra=None)]
    retrain = [SimpleNamespace(extra={"manifest_uri": "s3://b/p/manifests/retrain/r.json", "tag": "p/v2"})]
    context = {"triggering_asset_events": {"ingest": ingest, "retrain": retrain}}
    assert event_extras(context, "manifest_uri") == ["s3://b/p/manifests/ingest/1.json",
                                                     "s3://b/p/manifests/retrain/r.json"]
    assert event_extras(context, "tag") == ["p/v2"]
    assert event_extras({}, "tag") == [] and event_extras({"triggering_asset_events": None}, "tag") == []
