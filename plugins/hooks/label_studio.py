"""Label Studio hook on an Airflow connection (default `label_studio_default`).

The connection is of type http: host, port and schema give the server, the password field holds the API token
(a legacy token, or a personal access token which the SDK exchanges itself).
"""

from __future__ import annotations

from airflow.sdk import BaseHook


def base_url_of(conn) -> str:
    host = conn.host or "127.0.0.1"
    if "://" in host:
        return host.rstrip("/")
    scheme = conn.schema or "http"
    return f"{scheme}://{host}:{conn.port}" if conn.port else f"{scheme}://{host}"


class LabelStudioHook(BaseHook):
    conn_name_attr = "label_studio_conn_id"
    default_conn_name = "label_studio_default"
    conn_type = "http"
    hook_name = "Label Studio"

    def __init__(self, label_studio_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label_studio_conn_id = label_studio_conn_id

    def _conn(self):
        return self.get_connection(self.label_studio_conn_id)

    def base_url(self) -> str:
        return base_url_of(self._conn())

    def get_client(self, timeout: float = 60.0):
        """A `label_studio_sdk` client; always with an explicit base_url (the SDK's default is port 8000)."""
        from label_studio_sdk.client import LabelStudio

        conn = self._conn()
        return LabelStudio(base_url=base_url_of(conn), api_key=conn.password, timeout=timeout)

    def check(self) -> str:
        from labelops.health import check_label_studio

        conn = self._conn()
        return check_label_studio(base_url_of(conn), conn.password or "")
