"""A small fake of Scale AI's v1 REST API for the local stack and the tests (Scale has no local server).

    python tools/fake_scale.py --host 127.0.0.1 --port 8784 --state var/stack/scale --api-key-env VAR

Implements what labelops uses, following Scale's documented v1 API: HTTP Basic auth with the API key as user
name (401 otherwise), `GET /v1/projects`, `GET /v1/projects/<name>`, `POST /v1/projects`. State is kept in
<state>/state.json so it survives a restart. Later work extends it (tasks with `unique_id`, batches).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeScale:
    def __init__(self, state_dir: Path, api_key: str) -> None:
        self.state_dir, self.api_key = state_dir, api_key
        self.lock = threading.Lock()
        self.path = state_dir / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"projects": {}}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def make_handler(fake: FakeScale):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fake-scale/0.1"

        def log_message(self, fmt, *args):  # one line per request, never the Authorization header
            print(f"{self.command} {urlparse(self.path).path} -> {fmt % args}", flush=True)

        def _send(self, status: int, body) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                try:
                    user = base64.b64decode(header[6:]).decode().split(":", 1)[0]
                except (ValueError, UnicodeDecodeError):
                    user = ""
                if user == fake.api_key:
                    return True
            self._send(401, {"status_code": 401, "error": "Unauthorized: invalid or missing API key"})
            return False

        def _route(self) -> list[str]:
            parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/") if p]
            return parts[1:] if parts[:1] == ["v1"] else ["<not v1>"]

        def do_GET(self):  # noqa: N802
            if not self._authorized():
                return
            route = self._route()
            with fake.lock:
                if route == ["projects"]:
                    return self._send(200, list(fake.data["projects"].values()))
                if len(route) == 2 and route[0] == "projects":
                    project = fake.data["projects"].get(route[1])
                    if project is None:
                        return self._send(404, {"status_code": 404, "error": f"Project {route[1]} not found"})
                    return self._send(200, project)
            self._send(404, {"status_code": 404, "error": "not found"})

        def do_POST(self):  # noqa: N802
            if not self._authorized():
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                return self._send(400, {"status_code": 400, "error": "body is not JSON"})
            if self._route() == ["projects"]:
                name = body.get("name")
                if not name or not body.get("type"):
                    return self._send(400, {"status_code": 400, "error": "name and type are required"})
                with fake.lock:
                    if name in fake.data["projects"]:
                        return self._send(409, {"status_code": 409, "error": f"Project {name} already exists"})
                    now = datetime.now(timezone.utc).isoformat()
                    params = {**(body.get("params") or {}), "version": 0, "created_at": now}
                    project = {"name": name, "type": body["type"], "param_history": [params], "created_at": now}
                    fake.data["projects"][name] = project
                    fake.save()
                return self._send(200, project)
            self._send(404, {"status_code": 404, "error": "not found"})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--api-key-env", required=True, help="environment variable holding the accepted API key")
    args = parser.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)
    api_key = os.environ.get(args.api_key_env, "")
    if not api_key:
        raise SystemExit(f"fake_scale: ${args.api_key_env} is empty")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(FakeScale(args.state, api_key)))
    print(f"fake_scale: listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
