"""Fault injection against the Scroll REST path: every fault ends in a retried success or a
clear failed job, the bridge keeps serving, and nothing is lost."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest
import requests

from bridge.config import hash_api_key
from bridge.sandbox.suite import SandboxSuite
from tests.conftest import ACME_KEY
from tests.faults import Fault, Faulty

EXPORT = {"format": "pdf", "source": {"pageId": "1002"}}


@pytest.fixture
def faulty(suite: SandboxSuite) -> Faulty:
    wrapper = Faulty(suite.scroll_dc.app)
    suite.servers["scroll-dc"].app = wrapper
    return wrapper


def run(bridge: Any, body: dict[str, Any] = EXPORT, timeout: float = 20) -> dict[str, Any]:
    session = bridge.session()
    job: dict[str, Any] = session.post(f"{bridge.url}/v1/exports", json=body).json()
    deadline = time.monotonic() + timeout
    while job["state"] not in ("complete", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = session.get(f"{bridge.url}/v1/exports/{job['id']}").json()
    assert requests.get(f"{bridge.url}/healthz").status_code == 200  # still serving
    return job


FAST_RETRY = {"retry": {"attempts": 2, "backoff_base": 0.05, "backoff_cap": 0.1, "job_attempts": 3}}


def test_connection_refused_fails_the_job_clearly(start_bridge: Any, suite: SandboxSuite) -> None:
    backends = suite.tenant_backends()
    backends["scroll-rest"]["base_url"] = "http://127.0.0.1:9/confluence"  # nothing listens
    bridge = start_bridge(
        tenants=[{"id": "acme", "api_keys": [hash_api_key(ACME_KEY)], "backends": backends}],
        poll_interval=0.05,
        **FAST_RETRY,
    )
    job = run(bridge)
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_unavailable"
    assert "unreachable" in job["error"]["message"]


def test_a_slow_answer_times_out_and_is_retried(start_bridge: Any, faulty: Faulty) -> None:
    faulty.add(Fault("sleep", "/status", times=1, seconds=1.5))
    bridge = start_bridge(upstream_timeout=0.5, **FAST_RETRY)
    job = run(bridge)
    assert job["state"] == "complete"
    assert any(hit.startswith("sleep:") for hit in faulty.hits)


def test_a_truncated_download_is_retried_and_the_file_is_whole(
    start_bridge: Any, faulty: Faulty, suite: SandboxSuite
) -> None:
    faulty.add(Fault("truncate", "/download/", times=1))
    bridge = start_bridge(**FAST_RETRY)
    job = run(bridge)
    assert job["state"] == "complete", job
    stored = bridge.bridge.store.get_job(job["id"])
    expected, _ = suite.scroll_engine.file(stored.handle["jobId"])  # type: ignore[union-attr]
    assert requests.get(job["download"]["url"]).content == expected.read()


def test_downloads_that_always_break_fail_the_job_and_keep_nothing(
    start_bridge: Any, faulty: Faulty
) -> None:
    faulty.add(Fault("truncate", "/download/", times=100))
    bridge = start_bridge(**FAST_RETRY)
    job = run(bridge)
    assert job["state"] == "failed"
    assert job["download"] is None
    leftovers = [p for p in bridge.bridge.artifacts.root.rglob("*") if p.is_file()]  # type: ignore[attr-defined]
    assert leftovers == []


def test_retry_after_as_an_http_date_is_honoured(start_bridge: Any, suite: SandboxSuite) -> None:
    when = email.utils.formatdate(time.time() + 2.5, usegmt=True)  # whole seconds
    suite.scroll_dc.inject(429, times=1, path_contains="/exports", retry_after=when)
    bridge = start_bridge()
    began = time.monotonic()
    job = run(bridge)
    assert job["state"] == "complete"
    assert time.monotonic() - began >= 1.0


def test_a_burst_of_server_errors_is_ridden_out(start_bridge: Any, suite: SandboxSuite) -> None:
    for status in (500, 502, 503):
        suite.scroll_dc.inject(status, times=2, path_contains="/status")
    bridge = start_bridge(retry={"attempts": 3, "backoff_base": 0.05, "backoff_cap": 0.1})
    assert run(bridge)["state"] == "complete"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault("body", "/status", times=100, body=b"{not json"), "upstream_bad_response"),
        (
            Fault("body", "/status", times=100, body=b'{"status": "exploded"}'),
            "upstream_bad_response",
        ),
        (Fault("body", "/status", times=100, body=b"[]"), "upstream_bad_response"),
        (
            Fault(
                "body",
                "/exports",
                times=100,
                status="200 OK",
                content_type="text/html",
                body=b"<html><body>Login required</body></html>",
            ),
            "upstream_bad_response",
        ),
        (
            Fault(
                "body",
                "/exports",
                times=100,
                status="403 Forbidden",
                body=b'{"status": 403, "message": "no permission"}',
            ),
            "upstream_rejected",
        ),
    ],
)
def test_malformed_or_refused_answers_fail_clearly(
    start_bridge: Any, faulty: Faulty, fault: Fault, code: str
) -> None:
    faulty.add(fault)
    bridge = start_bridge(**FAST_RETRY)
    job = run(bridge)
    assert job["state"] == "failed"
    assert job["error"]["code"] == code
    assert job["error"]["message"]
    assert "Traceback" not in job["error"]["message"]


def test_a_download_url_to_a_foreign_host_is_refused(start_bridge: Any, faulty: Faulty) -> None:
    faulty.add(
        Fault(
            "body",
            "/status",
            times=100,
            body=(
                b'{"status": "complete", "step": 3, "totalSteps": 3, "stepProgress": 100,'
                b' "downloadUrl": "http://169.254.169.254/latest/meta-data/"}'
            ),
        )
    )
    bridge = start_bridge(allow_loopback_upstreams=False, **FAST_RETRY)
    job = run(bridge)
    assert job["state"] == "failed"
    assert "may not fetch" in job["error"]["message"]


# --- the same wire faults on every other backend ------------------------------------------

# backend -> (request, sandbox server, path of the file download or export answer,
#             path of a status/progress call, config key naming the upstream URL)
BACKENDS: dict[str, tuple[dict[str, Any], str, str, str, str]] = {
    "scroll-macro": (
        {
            "backend": "scroll-macro",
            "format": "pdf",
            "source": {"pageId": "1002"},
            "asUser": "557058:alice",
        },
        "confluence-cloud",
        "/download/",
        "/convert/async/",
        "auth_server",
    ),
    "content-exporter": (
        {"backend": "content-exporter", "format": "pdf", "source": {"pageId": "1002"}},
        "content-exporter-us",
        "/download",
        "/poll",
        "url",
    ),
    "forge-markdown": (
        {
            "backend": "forge-markdown",
            "format": "markdown",
            "source": {"pageId": "1001", "scope": "descendants"},
        },
        "forge",
        "/bulkExport",
        "/bulkExport",
        "api_url",
    ),
}


def wrap(suite: SandboxSuite, server: str) -> Faulty:
    wrapper = Faulty(suite.servers[server].app)
    suite.servers[server].app = wrapper
    return wrapper


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_recovers_from_a_cut_download(
    start_bridge: Any, suite: SandboxSuite, backend: str
) -> None:
    request, server, download, _, _ = BACKENDS[backend]
    faulty = wrap(suite, server)
    faulty.add(Fault("truncate", download, times=1))
    job = run(start_bridge(**FAST_RETRY), request)
    assert job["state"] == "complete", job
    assert any(hit.startswith("truncate:") for hit in faulty.hits)
    assert requests.get(job["download"]["url"]).status_code == 200


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_rides_out_a_slow_answer(
    start_bridge: Any, suite: SandboxSuite, backend: str
) -> None:
    request, server, _, status, _ = BACKENDS[backend]
    faulty = wrap(suite, server)
    faulty.add(Fault("sleep", status, times=1, seconds=1.5))
    job = run(start_bridge(upstream_timeout=0.5, **FAST_RETRY), request)
    assert job["state"] == "complete", job
    assert any(hit.startswith("sleep:") for hit in faulty.hits)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_fails_clearly_when_the_upstream_is_down(
    start_bridge: Any, suite: SandboxSuite, backend: str
) -> None:
    request, _, _, _, url_key = BACKENDS[backend]
    backends = suite.tenant_backends()
    backends[backend][url_key] = "http://127.0.0.1:9"  # nothing listens there
    bridge = start_bridge(
        tenants=[{"id": "acme", "api_keys": [hash_api_key(ACME_KEY)], "backends": backends}],
        poll_interval=0.05,
        **FAST_RETRY,
    )
    job = run(bridge, request)
    assert job["state"] == "failed"
    if backend == "forge-markdown":
        # Forge fails per batch after its own retries, naming every page it could not get.
        assert job["error"]["code"] == "upstream_job_failed"
        assert "1001 'Product Handbook'" in job["error"]["message"]
    else:
        assert job["error"]["code"] == "upstream_unavailable", job["error"]
        assert "unreachable" in job["error"]["message"]
