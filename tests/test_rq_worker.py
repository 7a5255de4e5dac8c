"""Tests for bridge.rq_worker on a real redis-server: web processes enqueue instead of running
threads, a job waits in the queue at most once, and worker passes carry jobs to the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from rq import Queue

from bridge.bootstrap import Bridge, build_bridge
from bridge.cli import main
from bridge.config import Settings, load_settings
from bridge.errors import ConfigurationError
from bridge.models import Caller
from bridge.rq_worker import QUEUE, RQDispatcher, run_worker
from bridge.sandbox.suite import SandboxSuite
from tests.conftest import tenants_for
from tests.redis_fixtures import free_port, redis_server, redis_url  # noqa: F401

EXPORT = {"backend": "scroll-rest", "format": "pdf", "source": {"pageId": "1002"}}
ACME = Caller("acme")


@pytest.fixture
def settings(tmp_path: Path, suite: SandboxSuite, redis_url: str) -> Settings:  # noqa: F811
    return load_settings(
        database_url=redis_url,
        artifacts_url=f"file:{tmp_path / 'artifacts'}",
        background="rq",
        poll_interval=0.2,
        encryption_keys=[Fernet.generate_key().decode()],
        tenants=tenants_for(suite),
        allow_loopback_upstreams=True,
    )


@pytest.fixture
def web(settings: Settings) -> Iterator[Bridge]:
    """A web process's bridge (start_worker=True, as gunicorn builds it)."""
    bridge = build_bridge(settings)
    yield bridge
    bridge.close()


def queued(bridge: Bridge) -> int:
    dispatcher = bridge.extras["rq"]
    assert isinstance(dispatcher, RQDispatcher)
    return int(Queue(QUEUE, connection=dispatcher.connection).count)


def test_web_processes_enqueue_instead_of_running_threads(web: Bridge) -> None:
    assert web.worker is None
    job, _ = web.service.create(ACME, EXPORT)
    assert queued(web) == 1
    web.service.on_due[-1](job.id)  # announced again while still waiting: not queued twice
    assert queued(web) == 1
    assert web.store.get_job(job.id) is not None


def test_a_started_task_lets_the_job_be_queued_again(web: Bridge) -> None:
    dispatcher = web.extras["rq"]
    assert dispatcher.enqueue("job-1") is True
    assert dispatcher.enqueue("job-1") is False
    dispatcher.started("job-1")
    assert dispatcher.enqueue("job-1") is True
    assert queued(web) == 2


def test_a_lost_tasks_marker_expires(redis_url: str) -> None:  # noqa: F811
    dispatcher = RQDispatcher(redis_url, marker_ttl=0.2)
    try:
        assert dispatcher.enqueue("job-1") is True
        assert dispatcher.enqueue("job-1") is False
        time.sleep(0.3)
        assert dispatcher.enqueue("job-1") is True
    finally:
        dispatcher.close()


def test_on_due_never_raises_when_redis_is_down() -> None:
    dispatcher = RQDispatcher(f"redis://127.0.0.1:{free_port()}/0")
    dispatcher.on_due("job-1")  # logged; the scheduler catches up later
    dispatcher.close()


def test_rq_background_needs_redis(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Redis"):
        build_bridge(
            load_settings(
                database_url=f"sqlite:///{tmp_path / 'x.db'}",
                artifacts_url=f"file:{tmp_path / 'a'}",
                encryption_key_file=str(tmp_path / "key"),
                background="rq",
            )
        )


def test_worker_passes_carry_a_job_to_completion(
    web: Bridge, settings: Settings, suite: SandboxSuite
) -> None:
    job, _ = web.service.create(ACME, EXPORT)
    deadline = time.monotonic() + 15
    while not (current := web.store.get_job(job.id)) or not current.state.final:
        assert time.monotonic() < deadline
        run_worker(settings, burst=True)  # schedule what is due, work the queue, exit
        time.sleep(0.1)
    assert current.state.value == "complete"
    assert current.artifact is not None
    assert queued(web) == 0
    assert suite.scroll_dc.calls.count("POST", "/exports") == 1


def test_cli_worker_reports_configuration_errors(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path / "x.db"}"\n')
    result = CliRunner().invoke(main, ["worker", "--config", str(config)])
    assert result.exit_code == 1
    assert "Redis database_url" in result.output


def test_cli_worker_passes_burst_and_the_config(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, bool]] = []
    import bridge.rq_worker

    monkeypatch.setattr(bridge.rq_worker, "run_worker", lambda s, burst: calls.append((s, burst)))
    config = tmp_path / "bridge.toml"
    config.write_text(f'database_url = "{settings.database_url}"\nbackground = "rq"\n')
    result = CliRunner().invoke(main, ["worker", "--config", str(config), "--burst"])
    assert result.exit_code == 0, result.output
    assert calls and calls[0][1] is True and calls[0][0].background == "rq"
