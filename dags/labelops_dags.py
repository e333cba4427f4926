"""Airflow DAG file and factory of labelops: every project config in include/configs/projects/*.yaml becomes a set of DAGs.

Per project `<p>` the factory creates `<p>__healthcheck` and, as later work adds them, the five stage DAGs
`<p>__ingest`, `<p>__dispatch`, `<p>__agreement`, `<p>__export`, `<p>__retrain`, chained by Airflow Assets:
each stage's DAG is scheduled on the Asset its upstream stage emits (agreement runs nightly on a cron).
A stage with no builder registered in STAGE_BUILDERS has no DAG: it is absent, not faked.

A broken config never breaks the other projects: it becomes a `<file>__config_error` DAG whose description and
only task carry the validation error (file and field), and the error is logged by the dag-processor.

This is the only DAG file. Keep it light: heavy libraries are imported inside tasks, never here (parse time is tested).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Asset, Param

from labelops.config import STAGES, ProjectConfig, load_all_projects

log = logging.getLogger(__name__)

START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Upstream stage whose Asset schedules each stage; the others run on their configured cron.
UPSTREAM = {"dispatch": "ingest", "export": "agreement", "retrain": "export"}
CRON_STAGES = ("ingest", "agreement")

# Filled by the modules that build the stages: stage name -> function(project, **dag_kwargs) -> DAG.
STAGE_BUILDERS: dict[str, Callable[..., DAG]] = {}


def default_args(project: ProjectConfig) -> dict:
    return {
        "owner": project.spec.owner,
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=2),
    }


def stage_asset(project: ProjectConfig, stage: str) -> Asset:
    """The Asset a stage emits when it produced something new."""
    return Asset(uri=project.asset_uri(stage), name=project.dag_id(stage), group="labelops")


def stage_schedule(project: ProjectConfig, stage: str):
    """What triggers a stage: its upstream stage's Asset, or its cron from the config (None: manual only)."""
    if stage in UPSTREAM:
        return [stage_asset(project, UPSTREAM[stage])]
    if stage in CRON_STAGES:
        return getattr(project.spec.schedules, stage)
    raise KeyError(stage)


def dag_kwargs(project: ProjectConfig, stage: str, doc: str) -> dict:
    """The arguments every labelops DAG shares: id, owner, tags, doc, defaults."""
    spec = project.spec
    return {
        "dag_id": project.dag_id(stage),
        "description": f"{spec.name}: {stage}",
        "start_date": START_DATE,
        "catchup": False,
        "default_args": default_args(project),
        "tags": sorted({"labelops", f"project:{spec.name}", f"stage:{stage}", *spec.tags}),
        "doc_md": (
            f"## {spec.name} · {stage}\n\n{spec.description}\n\n{doc}\n\n"
            f"Config: `{project.source_file.name}` (include/configs/projects). "
            f"Data: `{project.s3_uri()}`; source `s3://{spec.storage.bucket}/{spec.storage.source_prefix}`."
        ),
    }


def build_healthcheck(project: ProjectConfig) -> DAG:
    from operators.healthcheck import ConnectionCheckOperator

    services = list(project.connection_ids())
    kwargs = dag_kwargs(
        project,
        "healthcheck",
        "Checks every connection this project uses, one task per service: the S3 bucket and prefixes, Label "
        "Studio with its token, the SMTP server, and Scale when configured. Run it first when something is wrong: "
        "the failing task names the broken service and connection.",
    )
    kwargs["default_args"] = {**kwargs["default_args"], "retries": 0}
    with DAG(
        schedule=None,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=10),
        params={
            "services": Param(
                services,
                type="array",
                items={"type": "string", "enum": services},
                title="Services to check",
                description="Uncheck a service to skip it in this run.",
            )
        },
        **kwargs,
    ) as dag:
        storage = project.spec.storage
        for service, conn_id in project.connection_ids().items():
            ConnectionCheckOperator(
                task_id=f"check_{service}",
                service=service,
                conn_id=conn_id,
                bucket=storage.bucket if service == "s3" else None,
                prefixes=[storage.source_prefix, storage.project_prefix] if service == "s3" else None,
                execution_timeout=timedelta(minutes=2),
            )
    return dag


def build_config_error(name: str, message: str) -> DAG:
    from airflow.providers.standard.operators.python import PythonOperator

    with DAG(
        dag_id=re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "__config_error",
        description="This project's config is invalid: see the doc or run the DAG for the error.",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        tags=["labelops", "config-error"],
        default_args={"owner": "labelops", "retries": 0},
        doc_md=f"## Invalid project config\n\nNo DAG of this project was created. Fix the file:\n\n```\n{message}\n```",
    ) as dag:
        PythonOperator(task_id="report_config_error", python_callable=_raise_config_error, op_args=[message])
    return dag


def _raise_config_error(message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def build_dags() -> dict[str, DAG]:
    """All DAGs of all projects, by dag_id. Never raises for one project's mistake."""
    projects, errors = load_all_projects()
    dags: dict[str, DAG] = {}
    for project in projects:
        try:
            built = [build_healthcheck(project)]
            built += [STAGE_BUILDERS[s](project) for s in STAGES if s in STAGE_BUILDERS]
        except Exception as exc:  # a bug in one project's DAGs must not hide the other projects
            log.exception("labelops: could not build the DAGs of %s", project.source_file)
            errors[project.source_file] = f"{project.source_file}: DAG construction failed: {exc!r}"
            continue
        dags.update({d.dag_id: d for d in built})
    for path, message in errors.items():
        log.error("labelops: %s", message)
        error_dag = build_config_error(path.stem, message)
        dags[error_dag.dag_id] = error_dag
    return dags


# Airflow collects the DAGs it finds in this module's globals.
globals().update(build_dags())
