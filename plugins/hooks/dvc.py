"""DVC hook: the dataset repository of a project, with DVC's S3 access taken from the project's AWS connection.

DVC runs in its own venv (its S3 plugin pins a botocore older than Airflow's amazon provider needs): the
`dvc` CLI is called by `labelops.export.dvc_repo`. The credentials go to it only through the environment of
that subprocess: never into the repository, its config files, logs or XCom.
"""

from __future__ import annotations

from airflow.sdk import BaseHook


class DvcHook(BaseHook):
    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "DVC (dataset repository, S3 remote)"

    def __init__(self, aws_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id

    def s3_env(self) -> dict[str, str]:
        """DVC's S3 settings from the AWS connection: keys when the connection has them (else the default
        credential chain), region, and the endpoint of a non-AWS S3 (MinIO, the local moto)."""
        conn = self.get_connection(self.aws_conn_id)
        extra = conn.extra_dejson
        env = {"AWS_DEFAULT_REGION": extra.get("region_name") or "us-east-1"}
        if conn.login:
            env["AWS_ACCESS_KEY_ID"] = conn.login
        if conn.password:
            env["AWS_SECRET_ACCESS_KEY"] = conn.password
        token = extra.get("aws_session_token")
        if token:
            env["AWS_SESSION_TOKEN"] = token
        endpoint = extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
        if endpoint:
            env["AWS_ENDPOINT_URL"] = endpoint
        return env

    def dataset_repo(self, project, workdir=None):
        """The project's dataset repository (`export` section of its config)."""
        from labelops.export.dvc_repo import DatasetRepo
        from labelops.export.pipeline import repo_settings

        s = repo_settings(project)
        return DatasetRepo(s["repo_url"], branch=s["branch"], path=s["path"], remote_url=s["remote_url"],
                           s3_env=self.s3_env(), workdir=workdir)
