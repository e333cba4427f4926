"""The export stage's versioning step as an operator: the run's prepared dataset files become one DVC dataset
version (`<project>/v<N>`) in the project's dataset repository, or nothing when nothing changed."""

from __future__ import annotations

from airflow.sdk import BaseOperator


class DatasetVersionOperator(BaseOperator):
    """Creates the DVC dataset version of this run's prepared export (`labelops.export.pipeline.version`).

    Safe to retry and to re-run: a run that created its version finds it (by the run id in the tag) and creates
    nothing; a failure before the atomic push of commit and tag leaves no version. Returns the manifest's
    counts, tag and commit (XCom: no data, no secret)."""

    ui_color = "#e8e0f8"

    def __init__(self, *, project, aws_conn_id: str = "aws_default", **kwargs) -> None:
        super().__init__(**kwargs)
        self.project = project
        self.aws_conn_id = aws_conn_id

    def execute(self, context) -> dict:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from hooks.dvc import DvcHook

        from labelops.export import pipeline
        from labelops.storage import S3Store

        store = S3Store(S3Hook(aws_conn_id=self.aws_conn_id).get_conn(), self.project.spec.storage.bucket)
        repo = DvcHook(aws_conn_id=self.aws_conn_id).dataset_repo(self.project)
        manifest = pipeline.version(store, self.project, context["run_id"], repo)
        if manifest["created"]:
            self.log.info("dataset version %s (commit %s): %d items, %d held back", manifest["tag"],
                          manifest["commit"], manifest["items"], manifest["held_back"])
        else:
            self.log.info("no new dataset version: %s", manifest["reason"])
        return {k: manifest[k] for k in (*pipeline.MANIFEST_KEYS, "manifest_uri")}
