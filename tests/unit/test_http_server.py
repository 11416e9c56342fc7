"""The /metrics, /healthz and /readyz server (issue 11)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from bridge.agent.http_server import MetricsServer, parse_address


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_serves_metrics_and_checks_then_stops():
    registry = CollectorRegistry()
    Counter("libvirt_kafka_bridge_things", "Things.", registry=registry).inc(3)
    state = {"ready": (False, "libvirt not connected\nsecond line is dropped")}

    def broken() -> tuple[bool, str]:
        raise RuntimeError("bug")

    server = MetricsServer(("127.0.0.1", 0), registry, health=broken, ready=lambda: state["ready"])
    server.start()
    try:
        port = server.address[1]
        status, ctype, body = get(port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain") and "libvirt_kafka_bridge_things_total 3.0" in body
        assert get(port, "/readyz") == (503, "text/plain; charset=utf-8", "libvirt not connected\n")
        state["ready"] = (True, "ready")
        assert get(port, "/readyz?verbose")[::2] == (200, "ready\n")
        assert get(port, "/healthz")[::2] == (503, "check failed: bug\n")
        assert get(port, "/")[0] == 404
    finally:
        server.stop()
    with pytest.raises(OSError):
        get(port, "/metrics")
    server.stop()  # idempotent


def test_parse_address():
    assert parse_address("127.0.0.1:9731") == ("127.0.0.1", 9731)
    assert parse_address(":9731") == ("", 9731)
    assert parse_address("[::1]:9731") == ("::1", 9731)
    for bad in ("9731x", "localhost", "host:99999", "::1:9731", "host:"):
        with pytest.raises(ValueError, match=r"HOST:PORT|brackets"):
            parse_address(bad)
