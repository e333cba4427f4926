"""A small client for Airflow 3's REST API (v2), as a data engineer's script or the UI would use it."""

from __future__ import annotations

import time

import requests

TERMINAL = {"success", "failed"}


class AirflowAPIError(RuntimeError):
    pass


class AirflowAPI:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.timeout = timeout
        resp = self.session.post(f"{self.base_url}/auth/token", json={"username": username, "password": password},
                                 timeout=timeout)
        if resp.status_code not in (200, 201):
            raise AirflowAPIError(f"login to {self.base_url} as {username!r} failed: HTTP {resp.status_code}")
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def _call(self, method: str, path: str, ok=(200,), **kwargs):
        resp = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=self.timeout, **kwargs)
        if resp.status_code not in ok:
            raise AirflowAPIError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def dag_ids(self, tag: str | None = None) -> list[str]:
        params = {"limit": 1000, **({"tags": tag} if tag else {})}
        return [d["dag_id"] for d in self._call("GET", "/dags", params=params)["dags"]]

    def import_errors(self) -> list[dict]:
        return self._call("GET", "/importErrors")["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            resp = self.session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=self.timeout)
            if resp.status_code == 200:
                return resp.json()
            if time.monotonic() > deadline:
                raise AirflowAPIError(f"DAG {dag_id} not parsed after {timeout:.0f}s (import errors: "
                                      f"{self.import_errors()})")
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": paused}, params={"update_mask": "is_paused"})

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None) -> dict:
        """A manual run exactly as the UI makes it: no logical date."""
        body = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str, limit: int = 20) -> list[dict]:
        """The newest runs of a DAG first."""
        return self._call("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": limit})[
            "dag_runs"]

    def wait_for_asset_run(self, dag_id: str, after: str, timeout: float = 300.0) -> dict | None:
        """The first run of `dag_id` scheduled by an Asset event after the time `after` (ISO), once it ended;
        None if none was scheduled within the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in self.runs(dag_id) if r.get("run_type") == "asset_triggered"
                    and (r.get("run_after") or "") >= after]
            if runs:
                run = min(runs, key=lambda r: r["run_after"])
                # `timeout` bounds the wait for a run to appear; once there, it gets the time a run needs
                return self.wait_for_run(dag_id, run["dag_run_id"], timeout=max(900.0, deadline - time.monotonic()))
            time.sleep(2)
        return None

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise AirflowAPIError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f}s")
            time.sleep(2)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        resp = self.session.get(f"{self.base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
                                f"/xcomEntries/{key}", params={"deserialize": "true"}, timeout=self.timeout)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise AirflowAPIError(f"xcom {dag_id}/{run_id}/{task_id}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log as text (one line per structured log event)."""
        body = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                          headers={"Accept": "application/json"})
        lines = []
        for entry in body.get("content", []):
            if isinstance(entry, dict):
                lines.append(" ".join(str(entry.get(k, "")) for k in ("timestamp", "level", "event")).strip())
                for err in entry.get("error_detail") or []:
                    lines.append(f"  {err.get('exc_type')}: {err.get('exc_value')}")
            else:
                lines.append(str(entry))
        return "\n".join(lines)
