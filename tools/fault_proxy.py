"""A fault-injecting HTTP reverse proxy for the reliability tests (issue: faults injected for real, not mocked).

It sits between a client (the pipeline's Label Studio SDK, boto3, ...) and a real server on 127.0.0.1, forwards
every request unchanged, and applies the first matching rule of its fault schedule:

- ``status``: answer with a status (503, 429 with ``Retry-After``, ...) without forwarding: nothing took effect;
- ``reset``: reset the connection before forwarding: nothing took effect, the client sees a connection error;
- ``reset_after``: forward, let the server apply the request, then reset the connection: the request took
  effect but the client never hears it;
- ``late``: forward, then hold the answer for ``seconds`` before sending it: with a shorter client timeout the
  request took effect after the client gave up;
- ``slow``: wait ``seconds``, then forward (a slow network or server).

A rule matches a method and a path regex, lets the first ``after`` matching requests through, then fires
``times`` times (then it is spent). Every request is logged
as (method, path, action). In-process use::

    with FaultProxy("http://127.0.0.1:8781") as proxy:
        proxy.add("POST", r"/api/projects/\\d+/import", "reset_after", times=1)
        client = LabelStudio(base_url=proxy.url, api_key=token)
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ACTIONS = ("status", "reset", "reset_after", "late", "slow")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length"}


@dataclass
class Rule:
    method: str
    path: re.Pattern
    action: str
    times: int = 1
    status: int = 503
    retry_after: float | None = None
    seconds: float = 0.0
    after: int = 0  # let this many matching requests through first (a failure half-way)

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and bool(self.path.search(path))


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, method: str, path: str, action: str, *, times: int = 1, status: int = 503,
            retry_after: float | None = None, seconds: float = 0.0, after: int = 0) -> Rule:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
        rule = Rule(method.upper(), re.compile(path), action, times, status, retry_after, seconds, after)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def fired(self, action: str | None = None) -> list[tuple[str, str, str]]:
        return [e for e in self.log if e[2] != "forward" and (action is None or e[2] == action)]

    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    if rule.after > 0:
                        rule.after -= 1
                        continue
                    rule.times -= 1
                    return rule
        return None

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def finish(self) -> None:  # after a reset there is nothing left to flush
                try:
                    super().finish()
                except OSError:
                    pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = proxy._take(self.command, self.path)
                action = rule.action if rule else "forward"
                proxy.log.append((self.command, self.path, action))
                if action == "status":
                    self._answer(rule.status, {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after else {},
                                 b'{"detail": "injected by fault_proxy"}')
                    return
                if action == "reset":
                    self._reset()
                    return
                if action == "slow":
                    time.sleep(rule.seconds)
                status, headers, payload = self._forward(body)
                if action == "reset_after":
                    self._reset()
                    return
                if action == "late":
                    time.sleep(rule.seconds)
                try:
                    self._answer(status, headers, payload)
                except OSError:  # the client gave up meanwhile (late): the request took effect all the same
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

            def _forward(self, body: bytes) -> tuple[int, dict, bytes]:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    return resp.status, {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}, payload
                finally:
                    conn.close()

            def _answer(self, status: int, headers: dict, payload: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _reset(self) -> None:
                """Close with a TCP RST (SO_LINGER 0): the client gets 'connection reset', no answer."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                try:
                    self.connection.close()
                except OSError:
                    pass

        return Handler
