"""The broker seam: the testcontainers source says why it cannot run, instead of failing or vanishing."""

from __future__ import annotations

import pytest

from devenv.kafka_source import SOURCE_ENV, Unavailable, kafka_broker


def test_testcontainers_without_docker_or_the_package_is_unavailable_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(SOURCE_ENV, "testcontainers")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # no engine, wherever this runs
    expected = f"{SOURCE_ENV}=testcontainers: (no Docker engine|the testcontainers)"
    with pytest.raises(Unavailable, match=expected), kafka_broker(tmp_path):
        pass


def test_an_unknown_source_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(SOURCE_ENV, "kraft-on-mars")
    with pytest.raises(Unavailable, match="'kraft-on-mars'"), kafka_broker(tmp_path):
        pass
