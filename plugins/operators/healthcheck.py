"""One operator per service a project uses; the task fails for good, with a message naming the service."""

from __future__ import annotations

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException, AirflowSkipException

SERVICES = ("s3", "label_studio", "smtp", "scale")


def _check_s3(conn_id: str, bucket: str, prefixes: list[str]) -> str:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from labelops.health import check_s3

    return check_s3(S3Hook(aws_conn_id=conn_id).get_conn(), bucket, prefixes)


def _check_smtp(conn_id: str) -> str:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    from labelops.health import HealthCheckError

    hook = SmtpHook(smtp_conn_id=conn_id)
    ok, message = hook.test_connection()
    conn = hook.get_connection(conn_id)
    where = f"SMTP server {conn.host}:{conn.port}"
    if not ok:
        raise HealthCheckError(f"{where} does not accept a connection: {message}")
    return f"{where}: accepts connections ({message})"


class ConnectionCheckOperator(BaseOperator):
    """Checks that one service answers through one Airflow connection. Safe to repeat: it only reads."""

    ui_color = "#d4f0d4"

    def __init__(self, *, service: str, conn_id: str, bucket: str | None = None,
                 prefixes: list[str] | None = None, **kwargs) -> None:
        if service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}, got {service!r}")
        super().__init__(**kwargs)
        self.service, self.conn_id = service, conn_id
        self.bucket, self.prefixes = bucket, list(prefixes or [])

    def _run_check(self) -> str:
        if self.service == "s3":
            return _check_s3(self.conn_id, self.bucket, self.prefixes)
        if self.service == "smtp":
            return _check_smtp(self.conn_id)
        if self.service == "label_studio":
            from hooks.label_studio import LabelStudioHook

            return LabelStudioHook(self.conn_id).check()
        from hooks.scale import ScaleHook

        return ScaleHook(self.conn_id).check()

    def execute(self, context) -> str:
        from labelops.health import HealthCheckError

        selected = (context.get("params") or {}).get("services")
        if selected is not None and self.service not in selected:
            raise AirflowSkipException(f"{self.service} not selected in this run's 'services' param")
        try:
            message = self._run_check()
        except AirflowNotFoundException:
            raise AirflowFailException(
                f"{self.service}: Airflow connection {self.conn_id!r} is not defined "
                f"(set it in the UI or as AIRFLOW_CONN_{self.conn_id.upper()})"
            ) from None
        except HealthCheckError as exc:
            raise AirflowFailException(f"{self.service} (connection {self.conn_id!r}) is broken: {exc}") from None
        self.log.info("%s", message)
        return message
