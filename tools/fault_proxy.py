"""Fault-injecting proxies for the reliability tests (issue: faults injected for real, not mocked).

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

`SmtpFaultProxy` (below) does the same for SMTP at the TCP level: the server down, a 421 greeting, the message
taken but the 250 never heard or heard too late, slow replies.
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


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer gets 'connection reset', no answer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


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
                self.close_connection = True
                reset(self.connection)

        return Handler


# ----------------------------------------------------------------------------------------------- SMTP (TCP level)
SMTP_ACTIONS = ("down", "reply", "reset_after_data", "late", "slow")
END_OF_DATA = b"\r\n.\r\n"  # dot-stuffing keeps it out of a message body: it only ends one


@dataclass
class SmtpRule:
    action: str
    times: int = 1
    after: int = 0  # let this many connections through first
    reply: bytes = b"421 4.3.2 Service not available (injected by fault_proxy)\r\n"
    seconds: float = 0.0


class SmtpFaultProxy:
    """A fault-injecting TCP proxy in front of an SMTP server. The first rule with `times` left applies to a whole
    connection (after letting `after` connections through):

    - ``down``: the connection is reset as soon as it is accepted: the server is down, nothing is delivered;
    - ``reply``: the proxy answers the greeting itself (``421`` by default) and closes: a temporary refusal;
    - ``reset_after_data``: the session is relayed until the client ends DATA; the server takes the message, and
      the proxy resets the client's connection instead of passing the server's ``250`` on: delivered, not heard;
    - ``late``: as ``reset_after_data``, but the ``250`` is held for ``seconds`` (past the client's timeout);
    - ``slow``: every reply of the server is held ``seconds`` before it is passed on.

    Each connection is logged with its action ("forward" without a rule)."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.rules: list[SmtpRule] = []
        self.log: list[str] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port))
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.getsockname()[:2]

    def add(self, action: str, *, times: int = 1, after: int = 0, seconds: float = 0.0,
            reply: bytes | None = None) -> SmtpRule:
        if action not in SMTP_ACTIONS:
            raise ValueError(f"action must be one of {SMTP_ACTIONS}, not {action!r}")
        rule = SmtpRule(action, times, after, seconds=seconds)
        if reply is not None:
            rule.reply = reply
        with self._lock:
            self.rules.append(rule)
        return rule

    def fired(self) -> list[str]:
        return [a for a in self.log if a != "forward"]

    def _take(self) -> SmtpRule | None:
        with self._lock:
            for rule in self.rules:
                if rule.times > 0:
                    if rule.after > 0:
                        rule.after -= 1
                        return None
                    rule.times -= 1
                    return rule
        return None

    def start(self) -> "SmtpFaultProxy":
        self._thread = threading.Thread(target=self._accept, name="smtp-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass

    def __enter__(self) -> "SmtpFaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            rule = self._take()
            self.log.append(rule.action if rule else "forward")
            threading.Thread(target=self._session, args=(client, rule), daemon=True).start()

    def _session(self, client: socket.socket, rule: SmtpRule | None) -> None:
        action = rule.action if rule else "forward"
        if action == "down":
            reset(client)
            return
        if action == "reply":
            try:
                client.sendall(rule.reply)
            finally:
                client.close()
            return
        upstream = socket.create_connection(self.upstream, timeout=600)
        data_ended = threading.Event()

        def client_to_server() -> None:
            tail = b""
            try:
                while chunk := client.recv(65536):
                    if END_OF_DATA in tail + chunk:  # flagged before the server can answer it
                        data_ended.set()
                    upstream.sendall(chunk)
                    tail = (tail + chunk)[-len(END_OF_DATA):]
            except OSError:
                pass
            finally:
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=client_to_server, daemon=True).start()
        try:
            while chunk := upstream.recv(65536):
                if action == "slow":
                    time.sleep(rule.seconds)
                if data_ended.is_set() and action in ("reset_after_data", "late"):
                    if action == "reset_after_data":
                        reset(client)
                        return
                    time.sleep(rule.seconds)
                    action = "forward"  # the held answer goes out (to a client that may have left), then relay
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            upstream.close()
            try:
                client.close()
            except OSError:
                pass
