"""Scale-out end to end: two bridge processes (``export-bridge serve``) and one RQ worker
(``export-bridge worker``), separate OS processes sharing a real Redis and an artifact
folder, against the sandbox upstreams in this test process.

A job started on one instance is read, cancelled and downloaded on the other; the web
processes never copy files (``background = "rq"``), so a complete job proves the worker
did; and SIGKILL of the instance a job was started through loses nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from cryptography.fernet import Fernet

from bridge.sandbox.suite import SandboxSuite
from bridge.stores.redis import RedisStore
from tests.conftest import ACME_KEY, tenants_for
from tests.redis_fixtures import free_port, redis_server  # noqa: F401

AUTH = {"Authorization": f"Bearer {ACME_KEY}"}
EXPORT = {"backend": "scroll-rest", "format": "pdf", "source": {"pageId": "1001"}}
FINAL = ("complete", "failed", "cancelled")


def toml_value(value: Any) -> str:
    """*value* as TOML (inline tables and arrays; strings in TOML's JSON-compatible form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML for {value!r}")


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items()))
    return path


def entry_point() -> list[str]:
    """The installed ``export-bridge`` script, as the Dockerfile and the docs run it."""
    script = Path(sys.executable).parent / "export-bridge"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from bridge.cli import main; main()"]


@dataclass
class Process:
    """One child process in its own process group, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def tail(self) -> str:
        return f"--- {self.name} log ---\n" + self.log.read_text(errors="replace")[-3000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def wait_or_kill(self, timeout: float = 15.0) -> None:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait(timeout=15)


@dataclass
class Cluster:
    """Bridges ``a`` and ``b``, the ``worker``, and a store to look at the shared state."""

    store: RedisStore
    config: Path
    workdir: Path
    env: dict[str, str]
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def a(self) -> str:
        return self.processes["a"].url

    @property
    def b(self) -> str:
        return self.processes["b"].url

    def start_web(self, name: str) -> Process:
        """Start (or restart) bridge *name* with ``export-bridge serve`` on a free port."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = ["serve", "--config", str(self.config), "--bind", f"127.0.0.1:{port}"]
        env = {**self.env, "BRIDGE_PUBLIC_URL": url}
        process = start(name, [*args, "--workers", "1", "--threads", "4"], self.workdir, env)
        process.url = url
        self.processes[name] = process
        return process

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes.values())

    def upstream_job(self, job_id: str) -> str:
        job = self.store.get_job(job_id)
        assert job is not None
        return str(job.handle["jobId"])


def start(name: str, args: list[str], tmp_path: Path, env: dict[str, str]) -> Process:
    log = tmp_path / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [*entry_point(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,  # its own group: SIGKILL takes gunicorn's workers too
        )
    return Process(name, popen, log)


def wait_healthy(process: Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.popen.poll() is None, process.tail()
        try:
            if requests.get(f"{process.url}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or gunicorn still booting
            pass
        time.sleep(0.1)
    pytest.fail(f"{process.name} did not become healthy\n{process.tail()}")


@pytest.fixture(scope="module")
def suite() -> Iterator[SandboxSuite]:
    """The sandbox upstreams, shared by this module's tests (the processes' config names
    their ports)."""
    with SandboxSuite(job_seconds=0.3) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_upstreams(suite: SandboxSuite) -> None:
    """Every test starts with fast upstream jobs and an empty call log."""
    suite.scroll_engine.job_seconds = 0.3
    suite.scroll_dc.calls.clear()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    suite: SandboxSuite,
    redis_server: str,  # noqa: F811
) -> Iterator[Cluster]:
    """Bridges a and b and a worker, started once for the module."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    flush = redis.Redis.from_url(redis_server)
    flush.flushall()
    flush.close()
    config = write_config(
        tmp_path / "bridge.toml",
        {
            "database_url": redis_server,
            "artifacts_url": f"file:{tmp_path / 'artifacts'}",
            "background": "rq",
            "poll_interval": 0.2,
            "allow_loopback_upstreams": True,
            "encryption_keys": [Fernet.generate_key().decode()],
            "signing_keys": [{"id": "k1", "secret": "s" * 40}],
            "tenants": tenants_for(suite),
        },
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    base_env["PYTHONUNBUFFERED"] = "1"
    cluster = Cluster(RedisStore.from_url(redis_server), config, tmp_path, base_env)
    try:
        for name in ("a", "b"):
            cluster.start_web(name)
        cluster.processes["worker"] = start(
            "worker", ["worker", "--config", str(config)], tmp_path, base_env
        )
        for name in ("a", "b"):
            wait_healthy(cluster.processes[name])
        yield cluster
    finally:
        for process in cluster.processes.values():
            process.kill(signal.SIGTERM)  # graceful: steps under way finish
        for process in cluster.processes.values():
            process.wait_or_kill()
        cluster.store.close()


def start_export(base: str, body: dict[str, Any] = EXPORT, **headers: str) -> requests.Response:
    return requests.post(f"{base}/v1/exports", json=body, headers={**AUTH, **headers}, timeout=10)


def read(base: str, job_id: str) -> dict[str, Any]:
    response = requests.get(f"{base}/v1/exports/{job_id}", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_final(cluster: Cluster, base: str, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = read(base, job_id)
        if job["state"] in FINAL:
            return job
        assert time.monotonic() < deadline, f"job still {job['state']}\n{cluster.logs()}"
        time.sleep(0.1)


def test_a_job_started_on_one_instance_is_read_and_downloaded_on_the_other(
    cluster: Cluster, suite: SandboxSuite
) -> None:
    created = start_export(cluster.a)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    job = wait_final(cluster, cluster.b, job_id)
    assert job["state"] == "complete", cluster.logs()
    expected, filename = suite.scroll_engine.file(cluster.upstream_job(job_id))
    data = expected.read()

    from_b = job["download"]["url"]
    assert from_b.startswith(cluster.b)
    assert requests.get(from_b, timeout=10).content == data
    # A link minted by one instance is honoured by the other (shared signing keys, store
    # and artifact folder), as behind a load balancer.
    from_a = read(cluster.a, job_id)["download"]["url"]
    response = requests.get(from_a.replace(cluster.a, cluster.b), timeout=10)
    assert response.status_code == 200
    assert response.content == data
    assert filename in response.headers["Content-Disposition"]
    assert suite.scroll_dc.calls.count("POST", "/exports") == 1  # started exactly once


def test_the_worker_finishes_jobs_nobody_polls(cluster: Cluster) -> None:
    job_id = start_export(cluster.a).json()["id"]
    deadline = time.monotonic() + 20
    while (job := cluster.store.get_job(job_id)) is None or not job.state.final:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)
    assert job.state.value == "complete"
    assert job.artifact is not None and job.artifact.size > 0
    assert (cluster.workdir / "artifacts" / job.artifact.key).is_file()


def test_cancel_on_the_other_instance(cluster: Cluster, suite: SandboxSuite) -> None:
    suite.scroll_engine.job_seconds = 60
    job_id = start_export(cluster.a).json()["id"]
    deadline = time.monotonic() + 15
    while read(cluster.b, job_id)["state"] != "running":
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)

    response = requests.delete(f"{cluster.b}/v1/exports/{job_id}", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    upstream = cluster.upstream_job(job_id)
    assert suite.scroll_dc.calls.count("DELETE", f"/exports/{upstream}") == 1
    time.sleep(0.6)  # neither the worker nor the other instance resurrects it
    assert read(cluster.a, job_id)["state"] == "cancelled"


def test_an_idempotency_key_spans_instances(cluster: Cluster) -> None:
    first = start_export(cluster.a, **{"Idempotency-Key": "order-7"})
    again = start_export(cluster.b, **{"Idempotency-Key": "order-7"})
    assert first.status_code == 202
    assert again.status_code in (200, 201)
    assert again.json()["id"] == first.json()["id"]
    assert wait_final(cluster, cluster.b, first.json()["id"])["state"] == "complete"


def test_sigkill_of_an_instance_loses_nothing(cluster: Cluster, suite: SandboxSuite) -> None:
    suite.scroll_engine.job_seconds = 1.5
    job_id = start_export(cluster.a).json()["id"]
    assert read(cluster.a, job_id)["state"] in ("queued", "running")
    a = cluster.processes["a"]
    a.kill(signal.SIGKILL)
    a.popen.wait(timeout=10)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{cluster.a}/healthz", timeout=2)

    job = wait_final(cluster, cluster.b, job_id)
    assert job["state"] == "complete", cluster.logs()
    response = requests.get(job["download"]["url"], timeout=10)
    assert response.status_code == 200
    assert response.content.startswith(b"%PDF-")
    assert suite.scroll_dc.calls.count("POST", "/exports") == 1

    wait_healthy(cluster.start_web("a"))  # back in service; it sees the same state
    assert read(cluster.a, job_id)["state"] == "complete"
