"""A real HTTP server on 127.0.0.1 for the pool and preloader tests.

Each path answers from a script of responses (the last one repeats); every request is recorded
with its arrival time, so tests can count hits and requests per interval at the server.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (timeouts, slow APIs)

    @classmethod
    def json(cls, data: object, status: int = 200, **kwargs) -> "Response":
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return cls(status, json.dumps(data).encode(), headers, **kwargs)

    @classmethod
    def text(cls, text: str, status: int = 200, **kwargs) -> "Response":
        headers = {"Content-Type": "text/plain; charset=utf-8", **kwargs.pop("headers", {})}
        return cls(status, text.encode(), headers, **kwargs)


@dataclass
class Request:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Responder = Callable[[Request], Response]


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # bursts of concurrent connections are what the tests make


class LoopbackServer:
    """`server.script("/path", Response.json(...), ...)`, then request `server.url("/path")`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._scripts: dict[str, list[Response | Responder]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *responses: Response | Responder) -> None:
        """Answer `path` with these responses in turn; the last one repeats."""
        with self._lock:
            self._scripts[path] = list(responses)

    def hits(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def start(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # delayed answers end now
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
            script = self._scripts.get(request.path)
            if not script:
                return Response.text("no such path", status=404)
            step = script.pop(0) if len(script) > 1 else script[0]
        return step(request) if callable(step) else step

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    time.monotonic(), self.command, parts.path, parse_qs(parts.query),
                    dict(self.headers.items()), self.rfile.read(length) if length else b"",
                )
                response = server._answer(request)
                if response.delay:
                    server._stopping.wait(response.delay)  # a slow server; the client under test is not
                try:
                    self.send_response(response.status)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(response.body)))
                    self.end_headers()
                    self.wfile.write(response.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
