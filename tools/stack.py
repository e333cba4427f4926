"""The local labelops stack, every service bound to 127.0.0.1, all state under one folder (default var/stack).

    python tools/stack.py up | status | down | env

Services (ports from LABELOPS_PORT_BASE, default 8780):
  airflow       base+0  `airflow standalone` (SQLite, LocalExecutor), dags/ and plugins/ from this repo
  label_studio  base+1  the `label-studio` pip package from its own venv (.venv-ls), SQLite (WAL), fresh data dir,
                        served by gunicorn worker processes (tools/ls_serve.py)
  s3            base+2  moto in server mode; buckets of every project config created at start
  smtp          base+3  tools/mailcatcher.py: stores every message it receives as an .eml file
  scale         base+4  tools/fake_scale.py: a small fake of Scale's v1 API (no local Scale server exists)

Each service runs in its own process group (stopped as a group by `down`), logs to <state>/logs/<name>.log, and
must answer a readiness check on the port it was given: a service that ends up on another port, or listens on
anything but loopback, is an error. Secrets are generated at first `up` into <state>/secrets.json (mode 600)
and reach Airflow only as AIRFLOW_CONN_* connections; <state>/airflow.env holds the environment for the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets as secrets_mod
import signal
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUCKETS = ("labelops",)
LOOPBACK = {"127.0.0.1", "::1"}


class StackError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    port: int
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    # Extra listening ports the service is known to open on all interfaces (see README, "Known limits").
    extra_ports: tuple[int, ...] = ()


class Stack:
    def __init__(self, state: str | os.PathLike | None = None, port_base: int | None = None,
                 venv: str | os.PathLike | None = None, ls_venv: str | os.PathLike | None = None,
                 extra_airflow_env: dict[str, str] | None = None):
        self.state = Path(state or os.environ.get("LABELOPS_STATE") or REPO / "var" / "stack").resolve()
        base = int(port_base or os.environ.get("LABELOPS_PORT_BASE") or 8780)
        self.ports = {"airflow": base, "label_studio": base + 1, "s3": base + 2, "smtp": base + 3, "scale": base + 4,
                      "airflow_worker_logs": base + 5, "airflow_trigger_logs": base + 6}
        self.venv = Path(venv or os.environ.get("LABELOPS_VENV") or REPO / ".venv").resolve()
        self.ls_venv = Path(ls_venv or os.environ.get("LABELOPS_LS_VENV") or REPO / ".venv-ls").resolve()
        self.stack_id = str(self.state)
        # e.g. LABELOPS_PROJECTS_DIR or extra AIRFLOW_CONN_* for the tests
        self.extra_airflow_env = dict(extra_airflow_env or {})

    # ---- locations ---------------------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def mail_dir(self) -> Path:
        return self.state / "mail"

    @property
    def run_dir(self) -> Path:
        return self.state / "run"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    # ---- secrets and connections -------------------------------------------------------------------------
    def secrets(self) -> dict[str, str]:
        path = self.state / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        from cryptography.fernet import Fernet

        values = {
            "airflow_admin_password": secrets_mod.token_urlsafe(12),
            "airflow_fernet_key": Fernet.generate_key().decode(),
            "airflow_jwt_secret": secrets_mod.token_hex(32),
            "airflow_api_secret_key": secrets_mod.token_hex(32),
            "label_studio_email": "admin@labelops.local",
            "label_studio_password": secrets_mod.token_urlsafe(12),
            "label_studio_token": secrets_mod.token_hex(20),
            "aws_access_key_id": "labelops-local",
            "aws_secret_access_key": secrets_mod.token_hex(20),
            "scale_api_key": "live_" + secrets_mod.token_hex(16),
        }
        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh, indent=1)
        return values

    def connections(self) -> dict[str, str]:
        s = self.secrets()
        conns = {
            "aws_default": {"conn_type": "aws", "login": s["aws_access_key_id"], "password": s["aws_secret_access_key"],
                            "extra": {"endpoint_url": self.url("s3"), "region_name": "us-east-1"}},
            "label_studio_default": {"conn_type": "http", "host": "127.0.0.1", "port": self.ports["label_studio"],
                                     "schema": "http", "password": s["label_studio_token"]},
            "smtp_default": {"conn_type": "smtp", "host": "127.0.0.1", "port": self.ports["smtp"],
                             "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "labelops@localhost",
                                       "timeout": 10, "retry_limit": 1}},
            "scale_default": {"conn_type": "http", "host": "127.0.0.1", "port": self.ports["scale"], "schema": "http",
                              "password": s["scale_api_key"]},
        }
        return {f"AIRFLOW_CONN_{k.upper()}": json.dumps(v) for k, v in conns.items()}

    def airflow_env(self) -> dict[str, str]:
        """Environment for Airflow processes and the `airflow` CLI against this stack."""
        s = self.secrets()
        home = self.state / "airflow"
        port = self.ports["airflow"]
        env = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__FERNET_KEY": s["airflow_fernet_key"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__SECRET_KEY": s["airflow_api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": s["airflow_jwt_secret"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports["airflow_worker_logs"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports["airflow_trigger_logs"]),
            "PYTHONPATH": str(REPO / "include"),
            "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_PROXY": "127.0.0.1,localhost",
            "LABELOPS_STATE": str(self.state),
            "LABELOPS_DATASETS_REPO": str(self.datasets_repo),
        }
        env.update(self.connections())
        env.update(self.extra_airflow_env)
        return env

    def write_env_file(self) -> Path:
        """<state>/airflow.env: `source` it to use the airflow CLI against this stack (holds secrets: mode 600)."""
        import shlex

        path = self.state / "airflow.env"
        lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.airflow_env().items())]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# generated by tools/stack.py: the local stack's Airflow environment\n" + "\n".join(lines) + "\n")
        return path

    # ---- services ----------------------------------------------------------------------------------------
    def services(self) -> list[Service]:
        s = self.secrets()
        py = str(self.venv / "bin" / "python")
        ls_env = {
            "LABEL_STUDIO_USERNAME": s["label_studio_email"],
            "LABEL_STUDIO_PASSWORD": s["label_studio_password"],
            "LABEL_STUDIO_USER_TOKEN": s["label_studio_token"],
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_HOST": self.url("label_studio"),
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            # no error reports to Label Studio's public Sentry project (on by default in the pip package: its
            # events carry request data)
            "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
            # SSRF protection stays on, but with loopback allowed (the local S3 lives there); every other private,
            # link-local and reserved range stays banned.
            "SSRF_PROTECTION_ENABLED": "true",
            "USE_DEFAULT_BANNED_SUBNETS": "false",
            "USER_ADDITIONAL_BANNED_SUBNETS": ",".join([
                "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
                "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4", "fc00::/7", "fe80::/10",
            ]),
            "PATH": f"{self.ls_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        return [
            Service("s3", self.ports["s3"],
                    [str(self.venv / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(self.ports["s3"])],
                    ready=self._s3_ready, timeout=60),
            Service("smtp", self.ports["smtp"],
                    [py, str(REPO / "tools" / "mailcatcher.py"), "--host", "127.0.0.1", "--port",
                     str(self.ports["smtp"]), "--dir", str(self.mail_dir)],
                    ready=self._smtp_ready, timeout=30),
            Service("scale", self.ports["scale"],
                    [py, str(REPO / "tools" / "fake_scale.py"), "--host", "127.0.0.1", "--port",
                     str(self.ports["scale"]), "--state", str(self.state / "scale"), "--api-key-env",
                     "LABELOPS_SCALE_API_KEY"],
                    env={"LABELOPS_SCALE_API_KEY": s["scale_api_key"]},
                    ready=self._scale_ready, timeout=30),
            Service("label_studio", self.ports["label_studio"],
                    [str(self.ls_venv / "bin" / "python"), str(REPO / "tools" / "ls_serve.py"), "start",
                     "--no-browser", "--internal-host",
                     "127.0.0.1", "--port", str(self.ports["label_studio"]), "--data-dir",
                     str(self.state / "label-studio"), "--log-level", "WARNING", "--enable-legacy-api-token"],
                    env=ls_env, ready=self._label_studio_ready, timeout=300),
            Service("airflow", self.ports["airflow"], [str(self.venv / "bin" / "airflow"), "standalone"],
                    env=self.airflow_env(), ready=self._airflow_ready, timeout=360,
                    extra_ports=(self.ports["airflow_worker_logs"], self.ports["airflow_trigger_logs"])),
        ]

    # readiness checks: each returns True only when the service does its job on its own port
    def _http_ok(self, url: str, **kw) -> requests.Response | None:
        try:
            return requests.get(url, timeout=3, **kw)
        except requests.RequestException:
            return None

    def _s3_ready(self) -> bool:
        r = self._http_ok(self.url("s3") + "/")
        return r is not None and r.status_code == 200 and b"ListAllMyBucketsResult" in r.content

    def _smtp_ready(self) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=3) as smtp:
                return smtp.noop()[0] == 250
        except OSError:
            return False

    def _scale_ready(self) -> bool:
        r = self._http_ok(self.url("scale") + "/v1/projects", auth=(self.secrets()["scale_api_key"], ""))
        return r is not None and r.status_code == 200

    def _label_studio_ready(self) -> bool:
        r = self._http_ok(self.url("label_studio") + "/health")
        if r is None or r.status_code != 200:
            return False
        r = self._http_ok(self.url("label_studio") + "/api/current-user/whoami",
                          headers={"Authorization": f"Token {self.secrets()['label_studio_token']}"})
        return r is not None and r.status_code == 200

    def _airflow_ready(self) -> bool:
        r = self._http_ok(self.url("airflow") + "/api/v2/monitor/health")
        if r is None or r.status_code != 200:
            return False
        health = r.json()
        return all(health.get(c, {}).get("status") == "healthy"
                   for c in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    # ---- process management ------------------------------------------------------------------------------
    def _run_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _record(self, name: str) -> dict | None:
        path = self._run_file(name)
        return json.loads(path.read_text()) if path.exists() else None

    @staticmethod
    def group_members(pgid: int) -> list:
        """The live processes of a process group (psutil.Process, with `status` and `cmdline` info; zombies do not
        count; the leader is reaped first if it is our own dead child)."""
        import psutil

        try:
            os.waitpid(pgid, os.WNOHANG)
        except ChildProcessError:
            pass
        found = []
        for proc in psutil.process_iter(["status", "cmdline"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return found

    @classmethod
    def _group_alive(cls, pgid: int) -> bool:
        """Whether any process of the group still runs."""
        return bool(cls.group_members(pgid))

    def _listeners(self, port: int) -> list[tuple[str, int | None]]:
        import psutil

        return [(c.laddr.ip, c.pid) for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port]

    def _port_free(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    def verify_binding(self, svc: Service, pgid: int) -> None:
        """The service's port is held by a process of the group we started, on loopback only."""
        listeners = self._listeners(svc.port)
        if not listeners:
            raise StackError(f"{svc.name}: nothing listens on port {svc.port}; did it move to another port? "
                             f"See {self.logs / (svc.name + '.log')}")
        for ip, pid in listeners:
            if pid is not None:
                try:
                    owner = os.getpgid(pid)
                except ProcessLookupError:
                    continue
                if owner != pgid:
                    raise StackError(f"{svc.name}: port {svc.port} is held by pid {pid}, not by the service we started")
            if ip not in LOOPBACK:
                raise StackError(f"{svc.name}: listens on {ip}:{svc.port}, expected loopback only")

    def start(self, svc: Service) -> None:
        rec = self._record(svc.name)
        if rec and self._group_alive(rec["pgid"]):
            if svc.ready():
                print(f"  {svc.name:13} already running (pid {rec['pid']}) on {self.url_for(svc)}")
                return
            raise StackError(f"{svc.name} is running (pid {rec['pid']}) but not ready: see "
                             f"{self.logs / (svc.name + '.log')}, or run `make stack-down` first")
        for port in (svc.port, *svc.extra_ports):
            if not self._port_free(port):
                raise StackError(f"{svc.name}: port {port} on 127.0.0.1 is busy. Stop what uses it or choose other "
                                 f"ports with LABELOPS_PORT_BASE (now {self.ports['airflow']}).")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **svc.env, "LABELOPS_STACK_ID": self.stack_id}
        env.pop("VIRTUAL_ENV", None)
        log = open(self.logs / f"{svc.name}.log", "ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {svc.name} ===\n".encode())
        log.flush()
        proc = subprocess.Popen(svc.argv, cwd=self.state, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self._run_file(svc.name).write_text(json.dumps({"pid": proc.pid, "pgid": proc.pid, "port": svc.port,
                                                        "argv": svc.argv, "started": time.time()}))
        deadline = time.monotonic() + svc.timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{svc.name} exited with code {proc.returncode} during start; last log lines:\n"
                                 + self.tail(svc.name))
            if svc.ready():
                break
            time.sleep(1)
        else:
            raise StackError(f"{svc.name} not ready after {svc.timeout:.0f}s; last log lines:\n" + self.tail(svc.name))
        self.verify_binding(svc, proc.pid)
        print(f"  {svc.name:13} ready on {self.url_for(svc)} (pid {proc.pid})")

    def url_for(self, svc: Service) -> str:
        return f"smtp://127.0.0.1:{svc.port}" if svc.name == "smtp" else self.url(svc.name)

    def tail(self, name: str, n: int = 25) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, name: str, grace: float = 20.0) -> bool:
        rec = self._record(name)
        if rec is None:
            return False
        pgid = rec["pgid"]
        if self._group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while self._group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.3)
            if self._group_alive(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                time.sleep(0.5)
        self._run_file(name).unlink(missing_ok=True)
        return True

    def process_groups(self) -> dict[int, str]:
        """The process group of each service this stack started (from its run files): pgid -> service name."""
        return {int(rec["pgid"]): svc.name for svc in self.services() if (rec := self._record(svc.name))}

    def stray_processes(self) -> list[int]:
        """Processes started by this stack (they carry its LABELOPS_STACK_ID) that are still running."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != os.getpid() and proc.environ().get("LABELOPS_STACK_ID") == self.stack_id:
                    found.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    # ---- commands ----------------------------------------------------------------------------------------
    def up(self) -> None:
        for d in (self.state, self.logs, self.mail_dir, self.state / "airflow"):
            d.mkdir(parents=True, exist_ok=True)
        self._write_airflow_passwords()
        self.ensure_datasets_repo()
        self.write_env_file()
        print(f"labelops stack in {self.state}")
        for svc in self.services():
            self.start(svc)
            if svc.name == "s3":
                self.create_buckets()

    @property
    def datasets_repo(self) -> Path:
        """The demo's dataset repository: a local bare git repository standing in for the team's remote."""
        return self.state / "datasets.git"

    def ensure_datasets_repo(self) -> None:
        if not (self.datasets_repo / "HEAD").exists():
            subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(self.datasets_repo)],
                           check=True)

    def _write_airflow_passwords(self) -> None:
        path = self.state / "airflow" / "passwords.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"admin": self.secrets()["airflow_admin_password"]}, fh)

    def s3_client(self):
        import boto3

        s = self.secrets()
        return boto3.client("s3", endpoint_url=self.url("s3"), region_name="us-east-1",
                            aws_access_key_id=s["aws_access_key_id"], aws_secret_access_key=s["aws_secret_access_key"])

    def project_buckets(self) -> list[str]:
        sys.path.insert(0, str(REPO / "include"))
        from labelops.config import load_all_projects

        projects, _ = load_all_projects()
        return sorted({*DEFAULT_BUCKETS, *(p.spec.storage.bucket for p in projects)})

    def create_buckets(self) -> None:
        client = self.s3_client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in self.project_buckets():
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
        print(f"  {'':13} buckets: {', '.join(self.project_buckets())}")

    def down(self) -> None:
        for svc in reversed(self.services()):
            if self.stop(svc.name):
                print(f"  {svc.name:13} stopped")
        strays = self.stray_processes()
        for pid in strays:  # a process that left its group (setsid) but still carries our stack id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if strays:
            print(f"  killed {len(strays)} stray process(es) of this stack: {strays}")

    def status(self) -> dict[str, dict]:
        result = {}
        for svc in self.services():
            rec = self._record(svc.name)
            running = bool(rec and self._group_alive(rec["pgid"]))
            result[svc.name] = {"running": running, "ready": running and svc.ready(), "url": self.url_for(svc),
                                "pid": rec["pid"] if rec else None, "log": str(self.logs / f"{svc.name}.log")}
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args(argv)
    stack = Stack()
    try:
        if args.command == "up":
            stack.up()
            print(f"all services ready; environment for the airflow CLI: source {stack.state / 'airflow.env'}")
        elif args.command == "down":
            stack.down()
        elif args.command == "env":
            print(stack.write_env_file())
        else:
            status = stack.status()
            for name, st in status.items():
                state = "ready" if st["ready"] else ("running, NOT ready" if st["running"] else "stopped")
                print(f"{name:13} {state:20} {st['url']:28} log {st['log']}")
            return 0 if all(st["ready"] for st in status.values()) else 3
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
