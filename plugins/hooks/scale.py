"""Scale AI hook on an Airflow connection (default `scale_default`).

Connection of type http: the password field holds the API key; host/port/schema give the API server
(`https://api.scale.com` in production, the local fake in tests). Extra `api_path` defaults to `/v1`.
"""

from __future__ import annotations

from airflow.sdk import BaseHook


def api_instance_url_of(conn) -> str:
    host = conn.host or "api.scale.com"
    if "://" not in host:
        scheme = conn.schema or "https"
        host = f"{scheme}://{host}:{conn.port}" if conn.port else f"{scheme}://{host}"
    return host.rstrip("/") + conn.extra_dejson.get("api_path", "/v1")


class ScaleHook(BaseHook):
    conn_name_attr = "scale_conn_id"
    default_conn_name = "scale_default"
    conn_type = "http"
    hook_name = "Scale AI"

    def __init__(self, scale_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale_conn_id = scale_conn_id

    def get_client(self):
        import scaleapi

        conn = self.get_connection(self.scale_conn_id)
        return scaleapi.ScaleClient(conn.password, api_instance_url=api_instance_url_of(conn))

    def check(self) -> str:
        from labelops.health import check_scale

        conn = self.get_connection(self.scale_conn_id)
        return check_scale(api_instance_url_of(conn), conn.password or "")
