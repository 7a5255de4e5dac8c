"""Fixtures shared by the whole suite: a clean environment, the sandbox, running bridges."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.bootstrap import Bridge, build_bridge
from bridge.config import hash_api_key, load_settings
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.suite import SandboxSuite
from handlers import create_app

ACME_KEY = "ceb_acme-test-key-0123456789abcdef"
GLOBEX_KEY = "ceb_globex-test-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BRIDGE_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def suite() -> Iterator[SandboxSuite]:
    """Every sandbox upstream, running on loopback (fast jobs)."""
    with SandboxSuite(job_seconds=0.3) as running:
        yield running


@dataclass
class RunningBridge:
    """A bridge serving real HTTP on loopback, with two tenants' API keys."""

    bridge: Bridge
    server: ServerThread

    @property
    def url(self) -> str:
        return self.server.url

    def session(self, key: str | None = ACME_KEY) -> requests.Session:
        session = requests.Session()
        if key:
            session.headers["Authorization"] = f"Bearer {key}"
        return session

    def stop(self) -> None:
        self.server.stop()
        self.bridge.close()


def tenants_for(suite: SandboxSuite) -> list[dict[str, Any]]:
    backends = suite.tenant_backends()
    return [
        {"id": "acme", "api_keys": [hash_api_key(ACME_KEY)], "backends": backends},
        {"id": "globex", "api_keys": [hash_api_key(GLOBEX_KEY)], "backends": backends},
    ]


@pytest.fixture
def start_bridge(tmp_path: Path, suite: SandboxSuite) -> Iterator[Callable[..., RunningBridge]]:
    """Start a bridge on loopback against the sandbox; keyword arguments override settings."""
    running: list[RunningBridge] = []

    def start(**overrides: Any) -> RunningBridge:
        server_port = overrides.pop("port", 0)
        start_worker = overrides.pop("start_worker", True)
        clock = overrides.pop("clock", time.time)
        settings: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp_path / 'bridge.sqlite3'}",
            "artifacts_url": f"file:{tmp_path / 'artifacts'}",
            "encryption_key_file": str(tmp_path / "encryption.key"),
            "poll_interval": 0.2,
            "allow_loopback_upstreams": True,  # the sandbox is on loopback
            "tenants": tenants_for(suite),
        }
        settings.update(overrides)
        server = ServerThread(port=server_port)
        settings.setdefault("public_url", server.url)
        bridge = build_bridge(load_settings(**settings), start_worker=False, clock=clock)
        server.app = create_app(bridge=bridge)
        if start_worker:
            from bridge.worker import Worker

            bridge.worker = Worker(bridge.service, threads=2, idle_wait=0.05).start()
        server.start()
        instance = RunningBridge(bridge, server)
        running.append(instance)
        return instance

    yield start
    for instance in running:
        instance.stop()
