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

import functools
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Asset, Param, task

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
    """What triggers a stage: its upstream stage's Asset, or its cron from the config (None: manual only).
    The dispatch also runs on the retrain's Asset (a promoted model) unless `dispatch.after_promotion` is off."""
    if stage == "dispatch" and project.spec.dispatch.after_promotion:
        return stage_asset(project, UPSTREAM[stage]) | stage_asset(project, "retrain")
    if stage in UPSTREAM:
        return [stage_asset(project, UPSTREAM[stage])]
    if stage in CRON_STAGES:
        return getattr(project.spec.schedules, stage)
    raise KeyError(stage)


FAILURE_BODY = """<p>The <b>{{ dag_id }}</b> run <code>{{ run_id }}</code> failed{% if reason %}: {{ reason }}{% endif %}.</p>
{% if task_id %}<p>Task: <code>{{ task_id }}</code>{% if try_number %} (try {{ try_number }}){% endif %}.</p>{% endif %}
<p>Open the run in Airflow: <a href="{{ url }}">{{ dag_id }} / {{ run_id }}</a>. Fix the cause and clear the failed
task: every step is safe to re-run.</p>
<p>You receive this as a lead of the labelops project {{ project }}.</p>"""


def notify_failure(project_name: str, emails: tuple[str, ...], conn_id: str, context) -> None:
    """DAG failure callback: email the project leads through the project's SMTP connection (the SMTP
    provider's hook). Imported lazily: the DAG file stays light. Every value is escaped (autoescape)."""
    from urllib.parse import quote

    import jinja2
    from airflow.configuration import conf
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    dag_run, ti = context.get("dag_run"), context.get("ti")
    dag_id = getattr(dag_run, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    run_id = getattr(dag_run, "run_id", "?")
    base = conf.get("api", "base_url", fallback="").rstrip("/")
    html = jinja2.Environment(autoescape=True).from_string(FAILURE_BODY).render(
        dag_id=dag_id, run_id=run_id, reason=context.get("reason"), task_id=getattr(ti, "task_id", None),
        try_number=getattr(ti, "try_number", None), project=project_name,
        url=f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}")
    subject = " ".join(f"[labelops] {dag_id} failed ({run_id})".split())  # one line, whatever the ids hold
    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(to=list(emails), subject=subject, html_content=html,
                             custom_headers={"X-Labelops-Project": project_name})


def dag_kwargs(project: ProjectConfig, stage: str, doc: str) -> dict:
    """The arguments every labelops DAG shares: id, owner, tags, doc, defaults."""
    spec = project.spec
    return {
        "dag_id": project.dag_id(stage),
        "description": f"{spec.name}: {stage}",
        "start_date": START_DATE,
        "catchup": False,
        "default_args": default_args(project),
        "on_failure_callback": functools.partial(notify_failure, spec.name, tuple(spec.alerts.emails),
                                                 spec.alerts.connection_id),
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
    kwargs.pop("on_failure_callback")  # run by hand by whoever debugs: its failure is shown to them, not mailed
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


def _s3_store(project: ProjectConfig):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from labelops.storage import S3Store

    return S3Store(S3Hook(aws_conn_id=project.spec.aws_connection_id).get_conn(), project.spec.storage.bucket)


def build_ingest(project: ProjectConfig) -> DAG:
    storage = project.spec.storage
    asset = stage_asset(project, "ingest")
    kwargs = dag_kwargs(
        project,
        "ingest",
        f"Reads the objects under `s3://{storage.bucket}/{storage.source_prefix}` that no earlier run took (a "
        "changed object is new input), normalises the records, validates them against the data contract "
        f"`{project.spec.ingest.contract}` (Great Expectations), removes exact and near duplicates within the "
        "batch and against every record staged before, quarantines every rejected record or object with its "
        "reason, and stages the rest as Parquet with a manifest whose counts reconcile. Emits an Asset event "
        "naming the staged batch and the manifest, which schedules the dispatch stage. Re-running a run creates "
        "nothing new.",
    )
    with DAG(
        schedule=stage_schedule(project, "ingest"),
        max_active_runs=1,
        params={
            "prefix": Param(
                storage.source_prefix,
                type="string",
                title="Prefix to ingest",
                description=f"Only objects under this prefix; it must lie under {storage.source_prefix}.",
            ),
            "max_megabytes": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                title="At most this many MB of new objects",
                description="Empty: the project's ingest.max_bytes_per_run "
                f"({project.spec.ingest.max_bytes_per_run / 2**20:g} MB). The rest is left for the next run.",
            ),
        },
        **kwargs,
    ) as dag:

        @task
        def plan_objects(params=None, run_id=None) -> dict:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from labelops.ingest.pipeline import PrefixNotAllowed, plan

            max_mb = params.get("max_megabytes")
            try:
                result = plan(_s3_store(project), project, run_id, params.get("prefix"),
                              max_bytes=max_mb * 2**20 if max_mb else None)
            except PrefixNotAllowed as exc:
                raise AirflowFailException(str(exc)) from None
            if not result["objects"]:
                raise AirflowSkipException(f"nothing new under s3://{storage.bucket}/{result['prefix']}")
            if result.get("objects_deferred"):
                log.info("%d new objects (%d bytes) are over this run's byte budget: left for the next run",
                         result["objects_deferred"], result["bytes_deferred"])
            return {"plan_uri": result["plan_uri"], "objects": len(result["objects"]),
                    "objects_deferred": result.get("objects_deferred", 0)}

        @task
        def ingest(planned: dict, run_id=None) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from labelops.ingest.contract import BatchRejected, ContractError
            from labelops.ingest.pipeline import MANIFEST_KEYS, run

            try:
                manifest = run(_s3_store(project), project, run_id)
            except (BatchRejected, ContractError) as exc:
                raise AirflowFailException(str(exc)) from None
            return {k: manifest[k] for k in (*MANIFEST_KEYS, "manifest_uri")}  # XCom: counts and URIs, no data

        @task(outlets=[asset])
        def publish(summary: dict, outlet_events=None) -> None:
            from airflow.sdk.exceptions import AirflowSkipException

            if not summary["records_staged"]:
                raise AirflowSkipException("no new record was staged: no Asset event, dispatch is not scheduled")
            outlet_events[asset].extra = {
                "manifest_uri": summary["manifest_uri"],
                "staged_uri": summary["staged_uri"],
                "records_staged": summary["records_staged"],
            }

        publish(ingest(plan_objects()))
    return dag


STAGE_BUILDERS["ingest"] = build_ingest


def _platform(project: ProjectConfig, store, run_id: str):
    """The project's annotation platform, on its Airflow connection."""
    from labelops.dispatch.pipeline import Paths

    paths = Paths(project, run_id)
    if project.spec.platform == "scale":
        from hooks.scale import ScaleHook

        from labelops.dispatch.scale import ScalePlatform

        return ScalePlatform(ScaleHook(scale_conn_id=project.spec.scale.connection_id).get_client(), project, run_id,
                             s3_client=store.client)  # presigns image attachments
    from hooks.label_studio import LabelStudioHook

    from labelops.dispatch.label_studio import LabelStudioPlatform

    client = LabelStudioHook(label_studio_conn_id=project.spec.label_studio.connection_id).get_client()
    s3_access = None
    if project.spec.modality == "image":  # Label Studio reads the images from S3 on the same connection
        from hooks.dvc import DvcHook

        s3_access = DvcHook(aws_conn_id=project.spec.aws_connection_id).s3_env()
    return LabelStudioPlatform(client, project, store, paths, s3_access=s3_access)


def _triggering_manifests(context) -> list[str]:
    """The manifests named by the Asset events that scheduled this run (none for a manual run): the ingest
    batches, or the retrain run that promoted a model."""
    from operators.events import event_extras

    return sorted(set(event_extras(context, "manifest_uri")))


def build_dispatch(project: ProjectConfig) -> DAG:
    spec = project.spec
    asset = stage_asset(project, "dispatch")
    platform = "Label Studio" if spec.platform == "label_studio" else "Scale AI"
    kwargs = dag_kwargs(
        project,
        "dispatch",
        "Scheduled by each new staged batch (the ingest Asset)"
        + (", by each promoted model (the retrain Asset)" if spec.dispatch.after_promotion else "")
        + ", or by hand. The champion model pre-annotates "
        "every staged record not yet dispatched (none before the first model: cold start), active learning "
        f"selects `dispatch.batch_size` of them ({spec.dispatch.strategy}, {spec.dispatch.random_share:.0%} at "
        "random, diversity and class stratification), confidence routes them to the verify / expert / overlap "
        f"queues, gold tasks are mixed in, and the tasks are created on {platform} exactly once: a re-run, a "
        "retry or a crash between chunks leaves one task per record. The manifest is under "
        f"`{project.s3_uri('manifests/dispatch/')}`.",
    )
    with DAG(
        schedule=stage_schedule(project, "dispatch"),
        max_active_runs=1,
        params={
            "batch_size": Param(None, type=["null", "integer"], minimum=1, title="Records to select",
                                description=f"Empty: the config's dispatch.batch_size ({spec.dispatch.batch_size})."),
        },
        **kwargs,
    ) as dag:

        @task
        def plan_tasks(params=None, run_id=None) -> dict:
            from airflow.sdk import get_current_context
            from airflow.sdk.exceptions import AirflowSkipException

            from labelops.dispatch import pipeline

            store = _s3_store(project)
            for earlier in pipeline.unfinished_runs(store, project, run_id):
                log.info("finishing dispatch run %s first (it has a plan but no manifest)", earlier)
                pipeline.run(store, project, earlier, _platform(project, store, earlier))
            result = pipeline.plan(store, project, run_id, triggers=_triggering_manifests(get_current_context()),
                                   batch_size=params.get("batch_size"))
            if result.get("skip"):
                raise AirflowSkipException(result["skip"])
            if not result["tasks"]:
                raise AirflowSkipException("no staged record is waiting to be dispatched")
            return {k: result[k] for k in ("plan_uri", "records_considered", "records_selected", "by_route",
                                           "gold_tasks", "model_version")}

        @task
        def create_tasks(planned: dict, run_id=None) -> dict:
            from labelops.dispatch import pipeline

            store = _s3_store(project)
            manifest = pipeline.run(store, project, run_id, _platform(project, store, run_id))
            return {k: manifest[k] for k in ("manifest_uri", "tasks", "tasks_created", "tasks_already_present",
                                             "model_version")}

        @task(outlets=[asset])
        def publish(summary: dict, outlet_events=None) -> None:
            outlet_events[asset].extra = dict(summary)

        publish(create_tasks(plan_tasks()))
    return dag


STAGE_BUILDERS["dispatch"] = build_dispatch


def _label_studio_source(project: ProjectConfig, store):
    from hooks.label_studio import LabelStudioHook

    from labelops.agreement.pull import LabelStudioSource
    from labelops.dispatch.label_studio import label_config_names
    from labelops.dispatch.pipeline import Paths as DispatchPaths

    client = LabelStudioHook(label_studio_conn_id=project.spec.label_studio.connection_id).get_client(timeout=600)
    queues = store.get_json(DispatchPaths(project, "x").label_studio) or {}
    return LabelStudioSource(client, queues, label_config_names(project.label_config_xml),
                             chunk_tasks=project.spec.agreement.pull_chunk_tasks,
                             workers=project.spec.agreement.pull_workers)


def _annotation_source(project: ProjectConfig, store):
    if project.spec.platform == "scale":
        from hooks.scale import ScaleHook

        from labelops.agreement.scale_pull import ScaleSource

        return ScaleSource(ScaleHook(scale_conn_id=project.spec.scale.connection_id).get_client(), project, store)
    return _label_studio_source(project, store)


def send_alert(project: ProjectConfig, alert: dict) -> None:
    """The alert email through the project's SMTP connection (Airflow's SMTP provider), the chart attached
    and shown inline. Raises when the server does not take it: the task fails and is retried."""
    import tempfile
    from pathlib import Path

    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        if alert["chart"]:
            chart = Path(tmp) / "trend.png"  # Content-ID <trend.png>: the HTML shows it as cid:trend.png
            chart.write_bytes(alert["chart"])
            files.append(str(chart))
        with SmtpHook(smtp_conn_id=project.spec.alerts.connection_id) as hook:
            hook.send_email_smtp(to=alert["to"], subject=alert["subject"], html_content=alert["html"], files=files,
                                 custom_headers={"Message-ID": alert["message_id"],
                                                 "X-Labelops-Project": project.name})


def alert_once(project: ProjectConfig, store, run_id: str) -> dict:
    """The alert task: the run's alert email, unless no threshold was crossed or it was sent already. Marked sent
    only after the SMTP server took it: a failed send raises (Airflow retries the task) and loses nothing. A send
    whose answer was lost (the server took it, the connection broke before its 250) is sent again on the retry
    with the same Message-ID, which mail clients show once: at least once, never lost."""
    from labelops.agreement import pipeline

    alert = pipeline.pending_alert(store, project, run_id)
    if alert is None:
        summary = store.get_json(pipeline.Paths(project, run_id).summary) or {}
        reason = "no threshold crossed" if not summary.get("alerts") else "sent already for this run"
        log.info("no alert email: %s", reason)
        return {"sent": False, "reason": reason}
    send_alert(project, alert)
    pipeline.mark_alerted(store, project, run_id, alert)
    log.info("alert email sent to %d project leads: %s", len(alert["to"]), alert["subject"])
    return {"sent": True, "alerts": alert["alerts"]}


def build_agreement(project: ProjectConfig) -> DAG:
    spec = project.spec
    asset = stage_asset(project, "agreement")
    platform = "Label Studio" if spec.platform == "label_studio" else "Scale AI"
    th = spec.thresholds
    kwargs = dag_kwargs(
        project,
        "agreement",
        f"Nightly ({spec.schedules.agreement or 'manual only'}). Pulls the annotations made or changed on {platform} "
        "since the last run (all of them with the `full` param) into a Parquet snapshot, computes inter-annotator "
        "agreement over the items touched (Cohen's kappa per pair with CIs, Fleiss, Krippendorff, per-label "
        "agreement, span agreement for entities, gold accuracy per annotator), writes the HTML report to "
        f"`{project.s3_uri('reports/agreement/')}`, emails the project leads when a threshold is crossed (mean "
        f"kappa < {th.min_cohen_kappa}, gold accuracy < {th.min_gold_accuracy}, an annotator "
        f"{th.annotator_kappa_margin} below the team) once per run, and sends disputed items to the expert queue "
        "for adjudication, each item once. Emits an Asset event (schedules the export) when annotations came in.",
    )
    with DAG(
        schedule=stage_schedule(project, "agreement"),
        max_active_runs=1,
        params={"full": Param(False, type="boolean", title="Pull every annotation",
                              description="Off: only what changed since the last run. On: the whole project.")},
        **kwargs,
    ) as dag:

        @task
        def pull_annotations(params=None, run_id=None) -> dict:
            from labelops.agreement import pipeline

            store = _s3_store(project)
            record = pipeline.pull(store, project, run_id, _annotation_source(project, store),
                                   full=bool(params.get("full")))
            log.info("pulled %d annotation rows since %s in %.1f s", record["rows"], record["since"] or "the start",
                     record["seconds"])
            return {k: record[k] for k in ("rows", "since", "watermark", "snapshot_uri", "full")}

        @task
        def compute_agreement(pulled: dict, run_id=None) -> dict:
            from labelops.agreement import pipeline

            manifest = pipeline.compute(_s3_store(project), project, run_id)
            log.info("agreement: %d ratings in the window, mean kappa %s, %d alerts, report %s",
                     manifest["annotations_in_window"], manifest["cohen_kappa_mean"], manifest["alerts"],
                     manifest["report_uri"])
            return {k: manifest[k] for k in (*pipeline.MANIFEST_KEYS, "manifest_uri", "cohen_kappa_mean",
                                             "gold_accuracy")}

        @task
        def alert_leads(summary: dict, run_id=None) -> dict:
            return alert_once(project, _s3_store(project), run_id)

        @task
        def adjudicate(summary: dict, run_id=None) -> dict:
            from labelops.agreement import pipeline

            if not spec.agreement.adjudicate or not summary["adjudication_candidates"]:
                return {"sent": 0, "already_sent": 0}
            if spec.platform != "label_studio":
                log.warning("adjudication tasks are created on Label Studio only; %d disputed items are listed in "
                            "the report", summary["adjudication_candidates"])
                return {"sent": 0, "already_sent": 0}
            store = _s3_store(project)
            return pipeline.adjudicate(store, project, run_id, _platform(project, store, run_id))

        @task(outlets=[asset])
        def publish(summary: dict, alerted: dict, adjudicated: dict, outlet_events=None) -> None:
            from airflow.sdk.exceptions import AirflowSkipException

            if not summary["annotations_pulled"]:
                raise AirflowSkipException("no new annotation: no Asset event, the export is not scheduled")
            outlet_events[asset].extra = {**{k: summary[k] for k in ("manifest_uri", "report_uri", "snapshot_uri",
                                                                      "annotations_pulled", "cohen_kappa_mean")},
                                          "alert_sent": alerted.get("sent", False),
                                          "adjudication_sent": adjudicated.get("sent", 0)}

        summary = compute_agreement(pull_annotations())
        publish(summary, alert_leads(summary), adjudicate(summary))
    return dag


STAGE_BUILDERS["agreement"] = build_agreement


def build_export(project: ProjectConfig) -> DAG:
    from operators.dataset_version import DatasetVersionOperator

    spec = project.spec
    asset = stage_asset(project, "export")
    kwargs = dag_kwargs(
        project,
        "export",
        "Scheduled by each agreement run that pulled new annotations (the agreement Asset), or by hand. "
        "Consolidates one label per item (the adjudicated answer, else a vote weighted by each annotator's gold "
        "accuracy; ties and low-agreement items held back, gold items once with their known answer), splits "
        f"train/validation/test with a fixed seed, and versions the dataset with DVC in `{spec.export.repo}` "
        f"(remote {spec.export.remote or project.s3_uri('dvc/')}): dvc add + push, verified, a commit and the "
        f"annotated tag `{spec.name}/v<N>` pushed together. No change since the last version: no version, and "
        "the run says so. A re-run of a run creates nothing. The Asset event names the tag and schedules retrain.",
    )
    with DAG(schedule=stage_schedule(project, "export"), max_active_runs=1, **kwargs) as dag:

        @task
        def consolidate(run_id=None) -> dict:
            from labelops.export import pipeline

            prepared = pipeline.prepare(_s3_store(project), project, run_id)
            log.info("consolidated %d items (%s), %d held back (%s)", prepared["items"], prepared["by_decision"],
                     prepared["held_back"], prepared["held_back_by_reason"])
            return {k: prepared[k] for k in ("items", "held_back", "by_split", "by_decision", "files_uri")}

        version = DatasetVersionOperator(task_id="create_version", project=project,
                                         aws_conn_id=spec.aws_connection_id)

        @task(outlets=[asset])
        def publish(result: dict, outlet_events=None) -> None:
            from airflow.sdk.exceptions import AirflowSkipException

            if not result["created"] and not (result["reason"] or "").startswith("this run created"):
                raise AirflowSkipException(f"no new dataset version: {result['reason']}")
            outlet_events[asset].extra = {k: result[k] for k in ("tag", "commit", "version", "items", "held_back",
                                                                  "by_split", "manifest_uri")}

        consolidate() >> version
        publish(version.output)
    return dag


STAGE_BUILDERS["export"] = build_export


def build_retrain(project: ProjectConfig) -> DAG:
    from operators.retrain import ChampionChallengerOperator, RetrainTriggerOperator, TrainChallengerOperator

    spec = project.spec
    asset = stage_asset(project, "retrain")
    kwargs = dag_kwargs(
        project,
        "retrain",
        "Scheduled by each new dataset version (the export Asset), or by hand with a reason. Retrains when the "
        f"version holds at least {spec.thresholds.retrain_min_new_labels} more labelled items than the champion "
        f"was trained on and the period's mean kappa passes the gate ({spec.thresholds.min_cohen_kappa}); trains "
        "the challengers on the version's train split, evaluates them on its fixed test split, and promotes a "
        f"challenger only if it beats the champion on {spec.retrain.metric} without falling on "
        f"{', '.join(spec.retrain.guarded)} by more than {spec.retrain.tolerance}. The comparison is kept in the "
        f"registry (`{project.s3_uri('models/')}`). A promotion emits this stage's Asset event: the next dispatch "
        "pre-annotates with the new champion"
        + (" and runs at once, choosing from the waiting pool." if spec.dispatch.after_promotion else "."),
    )
    with DAG(
        schedule=stage_schedule(project, "retrain"),
        max_active_runs=1,
        params={"reason": Param("", type="string", title="Reason (manual run)",
                                description="Given: retrain now whatever the thresholds say, for this reason.")},
        **kwargs,
    ) as dag:
        conn = {"project": project, "aws_conn_id": spec.aws_connection_id}
        verdict = ChampionChallengerOperator(task_id="champion_challenger", **conn)
        RetrainTriggerOperator(task_id="decide", **conn) >> TrainChallengerOperator(task_id="train", **conn) >> verdict

        @task(outlets=[asset])
        def publish(result: dict, outlet_events=None) -> None:
            """The Asset event (it schedules the next dispatch) only when a model was promoted."""
            from airflow.sdk.exceptions import AirflowSkipException

            if not result["promoted"]:
                raise AirflowSkipException("nothing promoted: the champion stays")
            outlet_events[asset].extra = {k: result[k] for k in ("promoted", "dataset_tag", "manifest_uri")}

        publish(verdict.output)
    return dag


STAGE_BUILDERS["retrain"] = build_retrain


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
