"""The retrain stage's custom operators: decide, train the challengers, champion against challenger.

Thin adapters over `labelops.retrain.pipeline`: each step keeps its result in S3 under the run, so a retry or a
cleared task returns what the run decided, trained or promoted already (no second model, no second promotion).
XCom carries versions, counts and reasons only.
"""

from __future__ import annotations

from airflow.sdk import BaseOperator


def _store(project, aws_conn_id: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from labelops.storage import S3Store

    return S3Store(S3Hook(aws_conn_id=aws_conn_id).get_conn(), project.spec.storage.bucket)


def _repo(project, aws_conn_id: str):
    from hooks.dvc import DvcHook

    return DvcHook(aws_conn_id=aws_conn_id).dataset_repo(project)


class _RetrainStep(BaseOperator):
    def __init__(self, *, project, aws_conn_id: str = "aws_default", **kwargs) -> None:
        super().__init__(**kwargs)
        self.project, self.aws_conn_id = project, aws_conn_id


class RetrainTriggerOperator(_RetrainStep):
    """Decides whether this run retrains: enough new labelled items since the champion's training set and the
    period's agreement above the quality gate, or a manual run with a reason (Params `reason`). Skips cleanly
    otherwise (the downstream steps are skipped too), saying why in the log and the XCom."""

    ui_color = "#fdf2d0"

    def execute(self, context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from labelops.retrain import pipeline
        from operators.events import event_extras

        tags = event_extras(context, "tag")
        tag = tags[-1] if tags else None  # the newest dataset version that scheduled this run
        reason = ((context.get("params") or {}).get("reason") or "").strip() or None
        decision = pipeline.decide(_store(self.project, self.aws_conn_id), self.project, context["run_id"],
                                   dataset_tag=tag, manual_reason=reason)
        self.log.info("retrain: %s (dataset %s)", decision["why"], decision.get("dataset_tag"))
        if not decision["retrain"]:
            raise AirflowSkipException(f"no retraining: {decision['why']}")
        return {k: decision.get(k) for k in ("why", "dataset_tag", "new_items", "champion")}


class TrainChallengerOperator(_RetrainStep):
    """Trains the challengers on the dataset version's train split, evaluates them on its test split, saves them
    in the registry (not promoted)."""

    ui_color = "#e0ecf8"

    def execute(self, context) -> dict:
        from labelops.retrain import pipeline

        trained = pipeline.train(_store(self.project, self.aws_conn_id), self.project, context["run_id"],
                                 _repo(self.project, self.aws_conn_id))
        made = [kind for kind in self.project.model_kinds() if kind in trained]
        for kind in made:
            self.log.info("challenger %s %s: %s", kind, trained[kind]["version"], trained[kind]["metrics"])
        for kind, why in (trained.get("skipped") or {}).items():
            self.log.info("no %s challenger: %s", kind, why)
        return {"dataset_tag": trained["dataset_tag"], "n_train": trained["n_train"],
                **{kind: trained[kind]["version"] for kind in made}}


class ChampionChallengerOperator(_RetrainStep):
    """Evaluates the champion on the same test split and promotes a challenger only if it beats the champion on
    the configured metric without falling on the guarded ones. The comparison goes to the registry and the log."""

    ui_color = "#e4f4e4"

    def execute(self, context) -> dict:
        from labelops.retrain import pipeline

        manifest = pipeline.promote(_store(self.project, self.aws_conn_id), self.project, context["run_id"],
                                    _repo(self.project, self.aws_conn_id))
        for kind, c in manifest["comparisons"].items():
            self.log.info("%s: challenger %s vs champion %s on %s: %s (champion %s, challenger %s)", kind,
                          c["challenger"], c["champion"], c["metric"], c["reason"], c["champion_metrics"],
                          c["challenger_metrics"])
        return {"promoted": manifest["promoted"], "dataset_tag": manifest["dataset_tag"],
                "manifest_uri": manifest["manifest_uri"]}
