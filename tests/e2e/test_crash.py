"""kill -9 in the middle of a job step: a restarted bridge finishes the job and delivers
its callback exactly once. Real processes (``export-bridge serve``), real SIGKILL."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import requests
from cryptography.fernet import Fernet

from bridge.config import hash_api_key
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.suite import SandboxSuite
from tests.conftest import ACME_KEY
from tests.e2e.test_callbacks import SECRET, Receiver, verify
from tests.e2e.test_multi_instance import Process, start, wait_healthy, write_config
from tests.faults import Fault, Faulty
from tests.redis_fixtures import free_port, redis_server, redis_url  # noqa: F401


def serve(name: str, config: Path, workdir: Path) -> Process:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BRIDGE_PUBLIC_URL": url}
    process = start(
        name,
        [
            "serve",
            "--config",
            str(config),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
        ],
        workdir,
        env,
    )
    process.url = url
    wait_healthy(process)
    return process


def test_sigkill_mid_download_loses_neither_the_job_nor_its_callback(
    suite: SandboxSuite, tmp_path: Path
) -> None:
    faulty = Faulty(suite.scroll_dc.app)
    suite.servers["scroll-dc"].app = faulty
    # The first download hangs, so the bridge is killed while it holds the job mid-step.
    faulty.add(Fault("sleep", "/download/", times=1, seconds=30))
    receiver = Receiver()
    with ServerThread(receiver.app) as hook:
        config = write_config(
            tmp_path / "bridge.toml",
            {
                "database_url": f"sqlite:///{tmp_path / 'bridge.sqlite3'}",
                "artifacts_url": f"file:{tmp_path / 'artifacts'}",
                "encryption_key_file": str(tmp_path / "encryption.key"),
                "poll_interval": 0.2,
                "job_lease": 3.0,
                "allow_loopback_upstreams": True,
                "allow_private_callbacks": True,
                "callback_schedule": [0, 0.5, 0.5, 0.5],
                "tenants": [
                    {
                        "id": "acme",
                        "api_keys": [hash_api_key(ACME_KEY)],
                        "callback_secret": SECRET,
                        "backends": suite.tenant_backends(),
                    }
                ],
            },
        )
        auth = {"Authorization": f"Bearer {ACME_KEY}"}
        first = serve("first", config, tmp_path)
        try:
            job = requests.post(
                f"{first.url}/v1/exports",
                headers=auth,
                json={
                    "backend": "scroll-rest",
                    "format": "pdf",
                    "source": {"pageId": "1001"},
                    "callback": {"url": f"{hook.url}/hook"},
                },
            ).json()
            deadline = time.monotonic() + 20
            while not any(hit.startswith("sleep:") for hit in faulty.hits):
                assert time.monotonic() < deadline, first.tail()
                time.sleep(0.05)
        finally:
            first.kill()  # SIGKILL the whole process group, mid-download
            first.wait_or_kill()
        assert receiver.attempts == []

        second = serve("second", config, tmp_path)
        try:
            deadline = time.monotonic() + 30
            state: dict[str, Any] = {}
            while time.monotonic() < deadline:
                state = requests.get(f"{second.url}/v1/exports/{job['id']}", headers=auth).json()
                if state["state"] == "complete" and receiver.received:
                    break
                time.sleep(0.1)
            assert state["state"] == "complete", second.tail()
            assert requests.get(state["download"]["url"]).content.startswith(b"%PDF-")
            time.sleep(1.0)  # nothing further arrives
        finally:
            second.kill()
            second.wait_or_kill()
    assert len(receiver.received) == 1
    body = verify(receiver.received[0])
    assert body["data"]["id"] == job["id"] and body["data"]["state"] == "complete"


def test_sigkill_of_an_rq_worker_mid_download_loses_nothing(
    suite: SandboxSuite,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    """Scaled out: the web process only enqueues, an ``export-bridge worker`` takes the
    step; killing that worker mid-download and starting another finishes the job."""
    faulty = Faulty(suite.scroll_dc.app)
    suite.servers["scroll-dc"].app = faulty
    faulty.add(Fault("sleep", "/download/", times=1, seconds=30))
    config = write_config(
        tmp_path / "bridge.toml",
        {
            "database_url": redis_url,
            "artifacts_url": f"file:{tmp_path / 'artifacts'}",
            "encryption_keys": [Fernet.generate_key().decode()],
            "signing_keys": [{"id": "k1", "secret": "s" * 40}],
            "background": "rq",
            "poll_interval": 0.2,
            "job_lease": 3.0,
            "allow_loopback_upstreams": True,
            "tenants": [
                {
                    "id": "acme",
                    "api_keys": [hash_api_key(ACME_KEY)],
                    "backends": suite.tenant_backends(),
                }
            ],
        },
    )
    auth = {"Authorization": f"Bearer {ACME_KEY}"}
    web = serve("web", config, tmp_path)
    workers: list[Process] = []
    try:
        workers.append(
            start("worker-1", ["worker", "--config", str(config)], tmp_path, dict(os.environ))
        )
        job = requests.post(
            f"{web.url}/v1/exports",
            headers=auth,
            json={"backend": "scroll-rest", "format": "pdf", "source": {"pageId": "1001"}},
        ).json()
        deadline = time.monotonic() + 30
        while not any(hit.startswith("sleep:") for hit in faulty.hits):
            assert time.monotonic() < deadline, workers[0].tail()
            time.sleep(0.05)
        workers[0].kill()  # SIGKILL, mid-download
        workers[0].wait_or_kill()

        workers.append(
            start("worker-2", ["worker", "--config", str(config)], tmp_path, dict(os.environ))
        )
        deadline = time.monotonic() + 40
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = requests.get(f"{web.url}/v1/exports/{job['id']}", headers=auth).json()
            if state["state"] in ("complete", "failed"):
                break
            time.sleep(0.1)
        assert state["state"] == "complete", workers[1].tail()
        assert requests.get(state["download"]["url"]).content.startswith(b"%PDF-")
    finally:
        for process in [web, *workers]:
            process.kill()
            process.wait_or_kill()
