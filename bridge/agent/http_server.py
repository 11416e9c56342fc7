"""The ``--metrics-address`` endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` on one small HTTP server.

- ``/metrics``: the agent's registry in the Prometheus text format (OpenMetrics when the scraper asks).
- ``/healthz``: 200 while the agent's threads are alive, else 503.
- ``/readyz``: 200 while the agent can do its job (libvirt connected, Kafka reachable, first resync
  published), else 503.

The health bodies are one line saying why. :class:`MetricsServer` owns the ``metrics-http`` thread
(a stdlib ``ThreadingHTTPServer``; each request runs on a short-lived thread of its own).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
"""(ok, one-line reason)."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (every IPv4 address) or ``[IPv6]:PORT``; ValueError otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (example: 127.0.0.1:9731, or :9731 for every address)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:9731")
    return host, int(port_text)


class MetricsServer:
    """Serves ``registry`` and the two health checks on ``address`` from the ``metrics-http`` thread."""

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, health: Check, ready: Check) -> None:
        self._address = address
        self._registry = registry
        self._health = health
        self._ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when asked for port 0)."""
        if self._server is None:
            return self._address
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and start serving; OSError if the address cannot be bound."""
        server = _Server(self._address, _Handler)
        server.routes = {
            "/metrics": self._metrics,
            "/healthz": lambda _accept: _check(self._health),
            "/readyz": lambda _accept: _check(self._ready),
        }
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        host, port = self.address
        log.info("serving /metrics, /healthz and /readyz on http://%s:%d",
                 f"[{host}]" if ":" in host else host or "0.0.0.0", port)  # noqa: S104 - what it binds, shown

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _metrics(self, accept: str) -> tuple[int, str, bytes]:
        encoder, content_type = choose_encoder(accept)
        return HTTPStatus.OK, content_type, encoder(self._registry)


def _check(check: Check) -> tuple[int, str, bytes]:
    try:
        ok, reason = check()
    except Exception as exc:  # a bug in a check must answer 503, not hang up on the prober
        log.exception("health check failed")
        ok, reason = False, f"check failed: {exc}"
    status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
    return status, "text/plain; charset=utf-8", (reason.splitlines()[0] if reason else "").encode() + b"\n"


Route = Callable[[str], tuple[int, str, bytes]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        route = self.server.routes.get(self.path.split("?", 1)[0])
        status: int
        if route is None:
            status, content_type, body = (HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8",
                                          b"not found: try /metrics, /healthz or /readyz\n")
        else:
            status, content_type, body = route(self.headers.get("Accept", ""))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
