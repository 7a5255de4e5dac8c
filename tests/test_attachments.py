"""Finished exports are attached to their page: streamed, as the right identity, retried when
Confluence is unwell, and given up (loudly) when it refuses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.formparser import parse_form_data
from werkzeug.test import EnvironBuilder

from bridge.atlassian_jwt import impersonation_assertion
from bridge.attachments import MultipartUpload
from bridge.models import Job
from bridge.sandbox.atlassian_keys import ForgeInvoker
from bridge.sandbox.oauth_server import GRANT_TYPE
from bridge.sandbox.suite import CLIENT_KEY, OAUTH_CLIENT_ID, SHARED_SECRET, USERS, SandboxSuite
from tests.conftest import RunningBridge, tenants_for

ALICE, BOB = USERS
APP_KEY = "confluence-export-bridge"
FORGE_APP = "0b1c2d3e-0000-4000-8000-00000000f00d"
INSTALLATION = "ari:cloud:ecosystem::installation/0b1c2d3e-1111-4000-8000-000000000001"


# --- the streamed multipart body ----------------------------------------------------------


def parse(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, Any]]:
    builder = EnvironBuilder(method="PUT", data=body, content_type=content_type)
    _, form, files = parse_form_data(builder.get_environ())
    return form.to_dict(), {name: files[name] for name in files}


def test_the_multipart_body_streams_the_file_with_a_known_length() -> None:
    chunk = b"x" * 65536
    opened = []

    def chunks() -> Iterator[bytes]:
        opened.append(1)
        for _ in range(80):  # 5 MiB, never joined by the body itself
            yield chunk

    upload = MultipartUpload(
        {"minorEdit": "true", "comment": "Exported"},
        'Quarterly "report" ü.pdf',
        "application/pdf",
        80 * len(chunk),
        chunks,
    )
    pieces = list(upload)
    assert max(len(piece) for piece in pieces) <= len(chunk)
    body = b"".join(pieces)
    assert len(body) == len(upload)
    assert list(upload) == pieces and len(opened) == 2  # each send opens the file afresh
    form, files = parse(body, upload.content_type)
    assert form == {"minorEdit": "true", "comment": "Exported"}
    stored = files["file"]
    assert stored.filename == 'Quarterly "report" ü.pdf'
    assert stored.mimetype == "application/pdf"
    assert stored.read() == chunk * 80


# --- end to end against the sandbox site -----------------------------------------------------


@pytest.fixture
def bridge(start_bridge: Callable[..., RunningBridge], suite: SandboxSuite) -> RunningBridge:
    tenants = tenants_for(suite)
    tenants[0]["forge_installations"] = [INSTALLATION]
    tenants[1]["backends"] = {"scroll-rest": tenants[1]["backends"]["scroll-rest"]}
    suite.cloud.register_app(APP_KEY, CLIENT_KEY, SHARED_SECRET)
    running = start_bridge(
        tenants=tenants,
        forge_jwks_url=f"{suite.url('forge-jwks')}/.well-known/jwks.json",
        forge_app_ids=[FORGE_APP],
        callback_schedule=[0, 0.2, 0.2, 0.2],
    )
    jobs: list[Job] = []
    running.bridge.service.on_finished.append(jobs.append)
    running.bridge.extras["finished_jobs"] = jobs
    return running


def finished(bridge: RunningBridge) -> list[Job]:
    """The jobs that reached a final state, in order."""
    jobs: list[Job] = bridge.bridge.extras["finished_jobs"]
    return jobs


def export(bridge: RunningBridge, key: str | None = None, **fields: Any) -> dict[str, Any]:
    body = {"format": "pdf", "source": {"pageId": "1002"}, "attachToPage": True, **fields}
    session = bridge.session() if key is None else bridge.session(key)
    response = session.post(f"{bridge.url}/v1/exports", json=body, timeout=10)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def uploads(suite: SandboxSuite) -> list[tuple[str, int]]:
    return [(c.method, c.status) for c in suite.cloud.calls if c.path.endswith("/child/attachment")]


def wait_until(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stored_bytes(bridge: RunningBridge) -> bytes:
    [job] = finished(bridge)
    assert job.artifact is not None
    return b"".join(bridge.bridge.artifacts.open(job.artifact.key))


def test_a_server_error_is_retried_and_the_file_attached_once(
    suite: SandboxSuite, bridge: RunningBridge
) -> None:
    suite.cloud.inject(500, path_contains="/child/attachment")
    export(bridge, backend="scroll-macro", asUser=ALICE)
    wait_until(lambda: suite.cloud.attachments.get("1002"))
    time.sleep(0.5)
    assert uploads(suite) == [("PUT", 500), ("PUT", 200)]
    [attached] = suite.cloud.attachments["1002"]
    assert attached.uploader == ALICE and attached.data == stored_bytes(bridge)


def test_a_refused_token_is_renewed_once(suite: SandboxSuite, bridge: RunningBridge) -> None:
    suite.cloud.inject(401, path_contains="/child/attachment")
    export(bridge, backend="scroll-macro", asUser=BOB)
    wait_until(lambda: suite.cloud.attachments.get("1002"))
    assert uploads(suite) == [("PUT", 401), ("PUT", 200)]
    # READ for the export, WRITE for the upload, and a fresh WRITE after the 401.
    assert suite.oauth.token_requests[BOB] == 3


def test_forbidden_stops_the_delivery_and_says_why(
    suite: SandboxSuite, bridge: RunningBridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.delivery")
    suite.cloud.inject(403, times=10, path_contains="/child/attachment")
    job = export(bridge, backend="scroll-rest")  # no user: uploaded as the app
    wait_until(lambda: uploads(suite))
    time.sleep(0.8)
    assert uploads(suite) == [("PUT", 403)]
    assert suite.cloud.attachments == {}
    [stopped] = [r for r in caplog.records if r.getMessage() == "delivery stopped"]
    reason = str(stopped.reason)  # type: ignore[attr-defined]
    assert "page 1002 as the app" in reason and "HTTP 403" in reason and job["id"] in reason
    assert SHARED_SECRET not in caplog.text


def test_without_a_user_the_app_attaches_with_its_own_jwt(
    suite: SandboxSuite, bridge: RunningBridge
) -> None:
    export(bridge, backend="scroll-rest", format="docx")
    wait_until(lambda: suite.cloud.attachments.get("1002"))
    [attached] = suite.cloud.attachments["1002"]
    assert attached.uploader == f"557058:app-{APP_KEY}"
    assert attached.data == stored_bytes(bridge) and attached.filename.endswith(".docx")
    # The same file name again becomes a new version of that attachment (PUT).
    job = finished(bridge)[0]
    bridge.bridge.service.deliveries.queue_for(job)  # type: ignore[union-attr]
    wait_until(lambda: len(uploads(suite)) == 2)
    assert uploads(suite) == [("PUT", 200), ("PUT", 200)]
    assert len(suite.cloud.attachments["1002"]) == 1


def test_a_forge_callers_job_is_attached_with_its_own_user_token(
    suite: SandboxSuite, bridge: RunningBridge
) -> None:
    grant = suite.oauth.grant(
        {
            "grant_type": GRANT_TYPE,
            "assertion": impersonation_assertion(
                oauth_client_id=OAUTH_CLIENT_ID,
                account_id=BOB,
                base_url=suite.site_url,
                audience=suite.url("oauth"),
                shared_secret=SHARED_SECRET,
                now=int(time.time()),
            ),
        },
        suite.url("oauth"),
    )
    minted = suite.oauth.token_requests[BOB]
    invoker = ForgeInvoker(suite.forge_jwks, FORGE_APP)
    fit = invoker.fit(INSTALLATION, suite.url("confluence-cloud"), BOB)
    response = invoker.invoke(
        "POST",
        f"{bridge.url}/v1/exports",
        fit,
        user_token=str(grant["access_token"]),
        json={
            "backend": "scroll-macro",
            "format": "pdf",
            "source": {"pageId": "1003"},
            "attachToPage": True,
        },
    )
    assert response.status_code == 202, response.text
    wait_until(lambda: suite.cloud.attachments.get("1003"))
    [attached] = suite.cloud.attachments["1003"]
    assert attached.uploader == BOB
    assert suite.oauth.token_requests[BOB] == minted  # no impersonation: the caller's token


def test_a_tenant_without_a_cloud_site_cannot_attach(
    suite: SandboxSuite, bridge: RunningBridge, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import GLOBEX_KEY

    caplog.set_level(logging.WARNING, logger="bridge.delivery")
    export(bridge, GLOBEX_KEY, backend="scroll-rest")
    wait_until(lambda: [r for r in caplog.records if r.getMessage() == "delivery stopped"])
    [stopped] = [r for r in caplog.records if r.getMessage() == "delivery stopped"]
    assert "no Confluence Cloud site" in str(stopped.reason)  # type: ignore[attr-defined]
    assert uploads(suite) == []


def test_a_crashing_sender_is_retried_on_schedule_then_given_up(tmp_path: Any) -> None:
    from bridge.config import load_settings
    from bridge.delivery import Deliveries
    from bridge.models import JobState
    from bridge.sandbox.harness import ManualClock
    from bridge.stores import open_store

    clock = ManualClock()
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    calls: list[str] = []

    def attach(job: Job) -> None:
        calls.append(job.id)
        raise RuntimeError("bug")

    settings = load_settings(callback_schedule=[0, 1, 1])
    deliveries = Deliveries(settings, store, clock, lambda job: {}, lambda t: None, attach)
    job = Job("j1", "acme", "scroll-rest", {"attachToPage": True}, clock(), clock())
    job.state = JobState.COMPLETE
    store.insert_job(job)
    deliveries.queue_for(job)
    for _ in range(4):
        deliveries.run_due()
        clock.advance(1.5)
    assert calls == ["j1"] * 3  # the schedule's three attempts, then it gave up
    assert store.due_items("deliveries", clock() + 3600, 10) == []
    store.close()
