"""End to end over loopback: callers → bridge → Scroll REST sandbox → signed download."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from typing import Any

import pytest
import requests

from bridge.sandbox.scroll_rest import ScrollRestSandbox
from bridge.sandbox.suite import SandboxSuite
from tests.conftest import ACME_KEY, GLOBEX_KEY, RunningBridge

PROBLEM = "application/problem+json"


def start_export(
    bridge: RunningBridge, body: dict[str, Any], key: str = ACME_KEY, **headers: str
) -> requests.Response:
    return bridge.session(key).post(f"{bridge.url}/v1/exports", json=body, headers=headers)


def wait_for(
    bridge: RunningBridge, job_id: str, key: str = ACME_KEY, timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    session = bridge.session(key)
    while True:
        job: dict[str, Any] = session.get(f"{bridge.url}/v1/exports/{job_id}").json()
        if job["state"] in ("complete", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def upstream_job_id(bridge: RunningBridge, job_id: str) -> str:
    job = bridge.bridge.store.get_job(job_id)
    assert job is not None
    return str(job.handle["jobId"])


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("pdf", lambda data: data.startswith(b"%PDF-")),
        ("docx", lambda data: "word/document.xml" in zipfile.ZipFile(io.BytesIO(data)).namelist()),
        ("html", lambda data: "index.html" in zipfile.ZipFile(io.BytesIO(data)).namelist()),
    ],
)
def test_async_export_of_each_product_downloads_the_upstream_bytes(
    start_bridge: Any, suite: SandboxSuite, fmt: str, check: Any
) -> None:
    bridge = start_bridge()
    response = start_export(
        bridge,
        {
            "backend": "scroll-rest",
            "format": fmt,
            "source": {"pageId": "1001", "scope": "descendants"},
        },
    )
    assert response.status_code == 202
    assert response.headers["Location"] == f"/v1/exports/{response.json()['id']}"
    assert response.json()["state"] == "queued"

    job = wait_for(bridge, response.json()["id"])
    assert job["state"] == "complete", job
    assert job["progress"] == 100
    download = job["download"]
    expected, filename = suite.scroll_engine.file(upstream_job_id(bridge, job["id"]))
    assert download["filename"] == filename
    assert download["url"].endswith("/" + filename)  # the file name is the last segment

    fetched = requests.get(download["url"])  # no credentials: the link is the credential
    assert fetched.status_code == 200
    assert fetched.content == expected.read()
    assert check(fetched.content)
    assert int(fetched.headers["Content-Length"]) == download["size"] == expected.size
    assert filename in fetched.headers["Content-Disposition"]


def test_sync_export_streams_the_file_from_export_sync(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge()
    response = start_export(
        bridge,
        {
            "backend": "scroll-rest",
            "format": "pdf",
            "source": {"pageId": "1002"},
            "options": {"mode": "sync"},
        },
    )
    job = wait_for(bridge, response.json()["id"])
    assert job["state"] == "complete"
    assert suite.scroll_dc.calls.count("GET", "export-sync") == 1
    assert suite.scroll_dc.calls.count("POST", "/exports") == 0
    assert requests.get(job["download"]["url"]).content.startswith(b"%PDF-")


def test_prefer_wait_answers_with_the_finished_job(start_bridge: Any) -> None:
    bridge = start_bridge()
    response = start_export(
        bridge, {"format": "pdf", "source": {"pageId": "1002"}}, Prefer="wait=20"
    )
    assert response.status_code == 201
    assert response.json()["state"] == "complete"
    assert response.headers["Preference-Applied"] == "wait=20"
    assert "Retry-After" not in response.headers


def test_running_job_carries_retry_after(start_bridge: Any, suite: SandboxSuite) -> None:
    suite.scroll_engine.job_seconds = 30
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    response = bridge.session().get(f"{bridge.url}/v1/exports/{job_id}")
    assert response.status_code == 200
    assert response.json()["state"] in ("queued", "running")
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_cancel_cancels_upstream_and_is_idempotent(start_bridge: Any, suite: SandboxSuite) -> None:
    suite.scroll_engine.job_seconds = 60
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "docx", "source": {"pageId": "1001"}}).json()["id"]
    deadline = time.monotonic() + 5
    while bridge.bridge.store.get_job(job_id).state.value != "running":  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)

    response = bridge.session().delete(f"{bridge.url}/v1/exports/{job_id}")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert suite.scroll_dc.calls.count("DELETE", f"/exports/{upstream_job_id(bridge, job_id)}") == 1
    again = bridge.session().delete(f"{bridge.url}/v1/exports/{job_id}")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    time.sleep(0.5)  # the worker must not resurrect it
    assert wait_for(bridge, job_id)["state"] == "cancelled"


def test_cancelling_a_finished_job_is_a_conflict(start_bridge: Any) -> None:
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    assert wait_for(bridge, job_id)["state"] == "complete"
    response = bridge.session().delete(f"{bridge.url}/v1/exports/{job_id}")
    assert response.status_code == 409
    assert response.headers["Content-Type"] == PROBLEM


def test_links_are_fresh_on_every_read_and_expire(start_bridge: Any) -> None:
    bridge = start_bridge(link_ttl=30)
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    first = wait_for(bridge, job_id)["download"]["url"]
    time.sleep(1.1)
    second = wait_for(bridge, job_id)["download"]["url"]
    assert first != second
    assert requests.get(first).status_code == 200

    bridge.bridge.service.clock = lambda: time.time() + 31  # type: ignore[method-assign]
    expired = requests.get(second)
    assert expired.status_code == 410
    assert expired.headers["Content-Type"] == PROBLEM
    assert expired.json()["status"] == 410


@pytest.mark.parametrize("part", [0, 1, 2])
def test_tampered_links_are_refused(start_bridge: Any, part: int) -> None:
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    url = wait_for(bridge, job_id)["download"]["url"]
    prefix, token, filename = url.rsplit("/", 2)
    pieces = token.split(".")
    pieces[part] = pieces[part][:-2] + ("AA" if not pieces[part].endswith("AA") else "BB")
    response = requests.get(f"{prefix}/{'.'.join(pieces)}/{filename}")
    assert response.status_code == 403
    assert response.headers["Content-Type"] == PROBLEM


def test_tenants_never_see_each_others_jobs_or_files(start_bridge: Any) -> None:
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    url = wait_for(bridge, job_id)["download"]["url"]

    other = bridge.session(GLOBEX_KEY)
    assert other.get(f"{bridge.url}/v1/exports/{job_id}").status_code == 404
    assert other.delete(f"{bridge.url}/v1/exports/{job_id}").status_code == 404
    response = other.get(url)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == PROBLEM
    # The owning tenant may re-send its own credential with the link (vendor scripts do).
    assert bridge.session(ACME_KEY).get(url).status_code == 200


def test_range_requests_resume_downloads(start_bridge: Any) -> None:
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1001"}}).json()["id"]
    url = wait_for(bridge, job_id)["download"]["url"]
    whole = requests.get(url).content
    part = requests.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == whole[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
    tail = requests.get(url, headers={"Range": "bytes=-5"})
    assert tail.content == whole[-5:]
    bad = requests.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert bad.status_code == 416
    assert bad.headers["Content-Range"] == f"bytes */{len(whole)}"


def test_file_outlives_the_upstreams_ten_minute_retention(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    url = wait_for(bridge, job_id)["download"]["url"]
    upstream = upstream_job_id(bridge, job_id)
    suite.scroll_engine.clock = lambda: time.time() + 11 * 60  # type: ignore[method-assign]
    gone = requests.get(
        f"{suite.url('scroll-dc')}/confluence/plugins/servlet/scroll-pdf/api/"
        f"public/1/exports/{upstream}/status",
        headers={"Authorization": "Bearer sandbox-pat"},
    )
    assert gone.status_code == 404  # Scroll forgot the job...
    assert requests.get(url).status_code == 200  # ...the bridge did not.


def test_idempotency_key_returns_the_same_job_and_refuses_a_different_body(
    start_bridge: Any,
) -> None:
    bridge = start_bridge()
    body = {"format": "pdf", "source": {"pageId": "1002"}}
    first = start_export(bridge, body, **{"Idempotency-Key": "order-42"})
    again = start_export(bridge, body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other_body = start_export(bridge, {**body, "format": "docx"}, **{"Idempotency-Key": "order-42"})
    assert other_body.status_code == 422
    assert other_body.headers["Content-Type"] == PROBLEM
    # Keys are per tenant: another tenant's same key is a new job.
    globex = start_export(bridge, body, GLOBEX_KEY, **{"Idempotency-Key": "order-42"})
    assert globex.status_code == 202 and globex.json()["id"] != first.json()["id"]


def test_concurrent_readers_cause_one_upstream_poll_per_interval(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    suite.scroll_engine.job_seconds = 60
    bridge = start_bridge(poll_interval=1.0, start_worker=False)
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    bridge.bridge.service.advance(job_id)  # start it upstream
    suite.scroll_dc.calls.clear()

    def reader() -> None:
        session = bridge.session()
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            assert session.get(f"{bridge.url}/v1/exports/{job_id}").status_code == 200

    threads = [threading.Thread(target=reader) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    polls = suite.scroll_dc.calls.count("GET", "/status")
    assert 1 <= polls <= 3  # 2.5 s at one poll per second, however many readers


def test_rate_limited_upstream_is_retried_after_retry_after(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge()
    suite.scroll_dc.inject(429, times=2, path_contains="/status", retry_after="1")
    suite.scroll_dc.inject(503, times=2, path_contains="/exports")
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    job = wait_for(bridge, job_id, timeout=30)
    assert job["state"] == "complete", job


def test_huge_retry_after_reschedules_instead_of_sleeping(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge(start_worker=False)
    suite.scroll_dc.inject(429, times=1, path_contains="/exports", retry_after="99999999999")
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}}).json()["id"]
    began = time.monotonic()
    bridge.bridge.service.advance(job_id)
    assert time.monotonic() - began < 2
    job = bridge.bridge.store.get_job(job_id)
    assert job is not None and job.state.value == "queued" and job.attempts == 1
    cap = bridge.bridge.settings.retry.retry_after_cap
    assert job.next_poll_at - time.time() == pytest.approx(cap, abs=5)


def test_upstream_job_error_fails_the_job_with_a_message(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    suite.scroll_engine.failing_pages.add("1003")
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "1003"}}).json()["id"]
    job = wait_for(bridge, job_id)
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_job_failed"
    assert "step" in job["error"]["message"]
    assert job["download"] is None


def test_unknown_page_fails_with_the_upstream_status(start_bridge: Any) -> None:
    bridge = start_bridge()
    job_id = start_export(bridge, {"format": "pdf", "source": {"pageId": "9999"}}).json()["id"]
    job = wait_for(bridge, job_id)
    assert job["state"] == "failed"
    assert job["error"]["upstreamStatus"] == 404


def test_a_job_started_before_a_restart_finishes_after_it(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    first = start_bridge(start_worker=False)
    job_id = start_export(first, {"format": "pdf", "source": {"pageId": "1001"}}).json()["id"]
    first.bridge.service.advance(job_id)  # the upstream job is started...
    first.stop()  # ...and the process goes away.

    second = start_bridge()  # same database and artifact folder
    job = wait_for(second, job_id)
    assert job["state"] == "complete"
    assert requests.get(job["download"]["url"]).content.startswith(b"%PDF-")
    assert suite.scroll_dc.calls.count("POST", "/exports") == 1  # not started twice


def test_anonymous_multi_node_data_center_keeps_each_jobs_cookies(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    sticky = ScrollRestSandbox(suite.scroll_engine, flavor="dc", allow_anonymous=True, nodes=3)
    suite.servers["scroll-dc"].app = sticky.app
    backends = suite.tenant_backends()
    backends["scroll-rest"]["auth"] = {"type": "anonymous"}
    bridge = start_bridge(
        tenants=[
            {
                "id": "acme",
                "api_keys": [
                    __import__("bridge.config", fromlist=["hash_api_key"]).hash_api_key(ACME_KEY)
                ],
                "backends": backends,
            }
        ]
    )
    ids = [
        start_export(bridge, {"format": "pdf", "source": {"pageId": p}}).json()["id"]
        for p in ("1001", "1002", "1003")
    ]
    for job_id in ids:
        assert wait_for(bridge, job_id)["state"] == "complete"
