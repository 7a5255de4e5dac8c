"""End to end over loopback: Confluence events reach the bridge as webhooks (Connect JWT,
Data Center HMAC, Forge FIT), tenant rules turn them into exports, and the finished files
are attached to their pages in the simulated Cloud site and announced by callback."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from flask import Flask, Response, request

from bridge.atlassian_jwt import query_string_hash
from bridge.demo import run_demo
from bridge.models import Job
from bridge.sandbox.atlassian_keys import ForgeInvoker
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.pages import Page
from bridge.sandbox.suite import (
    CLIENT_KEY,
    DEMO_TEMPLATES,
    OAUTH_CLIENT_ID,
    SHARED_SECRET,
    USERS,
    SandboxSuite,
)
from bridge.sandbox.webhooks import (
    DataCenterWebhooks,
    connect_page_payload,
    dc_page_payload,
    forge_page_event,
)
from tests.conftest import ACME_KEY, RunningBridge, tenants_for

ALICE, BOB = USERS
APP_KEY = "confluence-export-bridge"
FORGE_APP = "0b1c2d3e-0000-4000-8000-00000000f00d"
INSTALLATION = "ari:cloud:ecosystem::installation/0b1c2d3e-1111-4000-8000-000000000001"
DC_SECRET = "dc-webhook-secret-0123456789abcdef"
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"webhook-callback-secret-32-bytes").decode()


class Receiver:
    """A callback endpoint recording what it is sent."""

    def __init__(self) -> None:
        self.url = ""
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = Flask(__name__)
        self.app.add_url_rule("/hook", view_func=self.hook, methods=["POST"])

    def hook(self) -> Response:
        with self.lock:
            self.received.append(json.loads(request.get_data()))
        return Response(status=204)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    with ServerThread(hook.app) as server:
        hook.url = f"{server.url}/hook"
        yield hook


@pytest.fixture
def bridge(
    start_bridge: Callable[..., RunningBridge], suite: SandboxSuite, receiver: Receiver
) -> RunningBridge:
    """Tenant acme: DC webhooks and a Forge install, exporting page_updated in DOCS with
    scroll-rest and attaching as the app. Installed tenants: scroll-macro PDFs as the
    editing user, attached and called back."""
    tenants = tenants_for(suite)
    tenants[0].update(
        forge_installations=[INSTALLATION],
        dc_webhook_secret=DC_SECRET,
        rules=[
            {
                "events": ["page_updated"],
                "spaces": ["DOCS"],
                "backend": "scroll-rest",
                "format": "pdf",
                "run_as": "app",
                "attach_to_page": True,
            },
            {
                "events": ["avi:confluence:created:page"],
                "labels": ["release"],
                "backend": "scroll-rest",
                "format": "docx",
                "run_as": "app",
            },
        ],
    )
    suite.cloud.register_app(APP_KEY, CLIENT_KEY, SHARED_SECRET)
    running = start_bridge(
        tenants=tenants,
        connect_keys_url=suite.url("connect-install-keys"),
        forge_jwks_url=f"{suite.url('forge-jwks')}/.well-known/jwks.json",
        forge_app_ids=[FORGE_APP],
        connect_backends={
            "scroll-macro": {"auth_server": suite.url("oauth"), "templates": DEMO_TEMPLATES}
        },
        connect_rules=[
            {
                "events": ["page_updated"],
                "spaces": ["DOCS"],
                "backend": "scroll-macro",
                "format": "pdf",
                "attach_to_page": True,
                "callback_url": receiver.url,
            }
        ],
        connect_callback_secret=CALLBACK_SECRET,
        allow_private_callbacks=True,
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


def install(suite: SandboxSuite, bridge: RunningBridge) -> None:
    response = suite.connect_site.install(
        bridge.url, APP_KEY, CLIENT_KEY, SHARED_SECRET, suite.site_url, OAUTH_CLIENT_ID
    )
    assert response.status_code == 204, response.text


def page(suite: SandboxSuite, page_id: str) -> Page:
    found = suite.pages.get(page_id)
    assert found is not None
    return found


def wait_until(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def artifact_bytes(bridge: RunningBridge, job: Job) -> bytes:
    assert job.artifact is not None
    return b"".join(bridge.bridge.artifacts.open(job.artifact.key))


def uploads(suite: SandboxSuite) -> list[int]:
    return [c.status for c in suite.cloud.calls if c.path.endswith("/child/attachment")]


def problem_reason(response: requests.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    return str(response.json()["reason"])


def test_install_then_page_updated_attaches_the_pdf_and_calls_back(
    suite: SandboxSuite, bridge: RunningBridge, receiver: Receiver
) -> None:
    install(suite, bridge)
    started = time.monotonic()
    response = suite.connect_site.send_webhook(
        bridge.url, "page_updated", connect_page_payload(page(suite, "1002"), ALICE, version=3)
    )
    assert response.status_code == 204, response.text
    assert time.monotonic() - started < 2.0
    wait_until(lambda: suite.cloud.attachments.get("1002") and receiver.received)
    [job] = finished(bridge)
    assert job.state.value == "complete" and job.as_user == ALICE
    assert job.tenant_id == f"connect:{CLIENT_KEY}"
    [attached] = suite.cloud.attachments["1002"]
    assert attached.data == artifact_bytes(bridge, job) and attached.data.startswith(b"%PDF-")
    assert job.artifact is not None and attached.filename == job.artifact.filename
    assert attached.uploader == ALICE  # uploaded as the editing user, not the app
    [callback] = receiver.received
    assert callback["type"] == "export.complete" and callback["data"]["id"] == job.id
    assert callback["data"]["asUser"] == ALICE


def test_a_redelivered_webhook_starts_one_export(
    suite: SandboxSuite, bridge: RunningBridge
) -> None:
    install(suite, bridge)
    edited = page(suite, "1003")
    first = connect_page_payload(edited, BOB, version=7)
    # The same event again, and once more in the newer shape (id as a string, extra keys).
    again = connect_page_payload(edited, BOB, version=7, id_as_string=True, surprise={"x": 1})
    for payload in (first, first, again):
        response = suite.connect_site.send_webhook(bridge.url, "page_updated", payload)
        assert response.status_code == 204, response.text
    wait_until(lambda: suite.cloud.attachments.get("1003"))
    time.sleep(0.5)
    assert len(finished(bridge)) == 1
    assert suite.scroll_engine.jobs_started == 1
    assert uploads(suite) == [200]
    # A new version of the page is a new event: a second export (Scroll names files by time).
    response = suite.connect_site.send_webhook(
        bridge.url, "page_updated", connect_page_payload(edited, BOB, version=8)
    )
    assert response.status_code == 204
    wait_until(lambda: len(uploads(suite)) == 2)
    assert suite.scroll_engine.jobs_started == 2


def test_connect_webhook_tokens_are_checked(suite: SandboxSuite, bridge: RunningBridge) -> None:
    install(suite, bridge)
    payload = connect_page_payload(page(suite, "1002"), ALICE)
    site = suite.connect_site
    cases = {
        "qsh_mismatch": site.send_webhook(bridge.url, "page_updated", payload, qsh="0" * 64),
        "bad_signature": site.send_webhook(
            bridge.url, "page_updated", payload, shared_secret="another-shared-secret-" * 2
        ),
        "unknown_installation": site.send_webhook(
            bridge.url, "page_updated", payload, iss="someone-else"
        ),
    }
    for reason, response in cases.items():
        assert problem_reason(response) == reason, reason
    # A token made for another webhook's path does not pass for this one.
    stolen = site.send_webhook(
        bridge.url, "page_updated", payload, qsh=query_string_hash("POST", "/webhooks/connect/x")
    )
    assert problem_reason(stolen) == "qsh_mismatch"
    # Context tokens and API keys are not webhook credentials.
    context = site.send_webhook(bridge.url, "page_updated", payload, qsh="context-qsh")
    assert problem_reason(context) == "qsh_mismatch"
    api_key = requests.post(
        f"{bridge.url}/webhooks/connect/page_updated",
        json=payload,
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        timeout=10,
    )
    assert problem_reason(api_key) == "wrong_credential_type"
    time.sleep(0.3)
    assert finished(bridge) == [] and suite.scroll_engine.jobs_started == 0


def test_events_matching_no_rule_start_nothing(suite: SandboxSuite, bridge: RunningBridge) -> None:
    install(suite, bridge)
    site = suite.connect_site
    created = site.send_webhook(
        bridge.url, "page_created", connect_page_payload(page(suite, "1002"), ALICE)
    )
    other_space = site.send_webhook(
        bridge.url, "page_updated", connect_page_payload(page(suite, "2001"), ALICE)
    )
    no_page = site.send_webhook(bridge.url, "page_updated", {"userAccountId": ALICE})
    for response in (created, other_space, no_page):
        assert response.status_code == 204, response.text
    unsubscribed = site.send_webhook(
        bridge.url, "page_updated", {}, path="/webhooks/connect/comment_created"
    )
    assert unsubscribed.status_code == 404
    invoker = ForgeInvoker(suite.forge_jwks, FORGE_APP)
    unlabelled = invoker.send_event(
        f"{bridge.url}/webhooks/forge",
        INSTALLATION,
        suite.url("confluence-cloud"),
        forge_page_event(page(suite, "1003"), ALICE, event_type="avi:confluence:created:page"),
    )
    assert unlabelled.status_code == 202
    assert unlabelled.json() == {"matched": 0, "created": 0, "jobs": []}
    dc = DataCenterWebhooks(DC_SECRET).send(
        f"{bridge.url}/webhooks/dc/acme", dc_page_payload(page(suite, "1002"), "page_removed")
    )
    assert dc.status_code == 204
    time.sleep(0.3)
    assert finished(bridge) == [] and suite.scroll_engine.jobs_started == 0


def test_a_signed_data_center_webhook_exports_and_attaches_as_the_app(
    suite: SandboxSuite, bridge: RunningBridge
) -> None:
    sender = DataCenterWebhooks(DC_SECRET)
    url = f"{bridge.url}/webhooks/dc/acme"
    payload = dc_page_payload(page(suite, "1002"), version=4)
    refused = {
        "bad_signature": sender.send(url, payload, signature="sha256=" + "0" * 64),
        "missing_signature": sender.send(url, payload, signed=False),
    }
    other_secret = DataCenterWebhooks("not-the-secret-0123456789").send(url, payload)
    refused["bad_signature "] = other_secret
    refused["webhook_not_configured"] = sender.send(f"{bridge.url}/webhooks/dc/globex", payload)
    refused["webhook_not_configured "] = sender.send(f"{bridge.url}/webhooks/dc/nobody", payload)
    for reason, response in refused.items():
        assert problem_reason(response) == reason.strip(), reason
    time.sleep(0.3)
    assert finished(bridge) == [] and suite.scroll_engine.jobs_started == 0

    assert sender.send(url, payload).status_code == 204
    assert sender.send(url, payload).status_code == 204  # redelivered: same export
    wait_until(lambda: suite.cloud.attachments.get("1002"))
    [job] = finished(bridge)
    assert job.backend == "scroll-rest" and job.as_user is None and job.tenant_id == "acme"
    [attached] = suite.cloud.attachments["1002"]
    assert attached.uploader == f"557058:app-{APP_KEY}"  # no user: the app's own JWT
    assert attached.data == artifact_bytes(bridge, job)


def test_a_forge_event_is_accepted_fast_and_exports(
    suite: SandboxSuite, bridge: RunningBridge
) -> None:
    invoker = ForgeInvoker(suite.forge_jwks, FORGE_APP)
    release = page(suite, "1004")
    release.labels.append("release")
    started = time.monotonic()
    response = invoker.send_event(
        f"{bridge.url}/webhooks/forge",
        INSTALLATION,
        suite.url("confluence-cloud"),
        forge_page_event(release, ALICE, event_type="avi:confluence:created:page"),
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert elapsed < 5.0  # Forge Remote gives events 5 s
    body = response.json()
    assert body["matched"] == 1 and body["created"] == 1
    wait_until(lambda: finished(bridge))
    [job] = finished(bridge)
    assert job.id == body["jobs"][0] and job.state.value == "complete"
    assert job.request["format"] == "docx" and job.request["source"]["pageId"] == "1004"
    assert artifact_bytes(bridge, job).startswith(b"PK")
    # A FIT that does not verify starts nothing.
    forged = jwt.encode(
        {"iss": "forge/invocation-token", "aud": f"ari:cloud:ecosystem::app/{FORGE_APP}"},
        "guess-the-key-0123456789abcdef-0123",
        algorithm="HS256",
    )
    refused = requests.post(
        f"{bridge.url}/webhooks/forge",
        json=forge_page_event(release, ALICE, event_type="avi:confluence:created:page"),
        headers={"Authorization": f"Bearer {forged}"},
        timeout=10,
    )
    assert refused.status_code == 401
    # A user's invocation cannot speak for another user (its body is the user's to craft).
    spoofed = invoker.send_event(
        f"{bridge.url}/webhooks/forge",
        INSTALLATION,
        suite.url("confluence-cloud"),
        forge_page_event(release, ALICE, event_type="avi:confluence:created:page", version=9),
        principal=BOB,
    )
    assert spoofed.status_code == 403, spoofed.text
    time.sleep(0.3)
    assert len(finished(bridge)) == 1


def test_the_demo_tells_the_webhook_story(tmp_path: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()
    run_demo(tmp_path, lines.append)
    assert time.monotonic() - started < 15.0
    text = "\n".join(lines)
    assert "POST /installed (RS256-signed" in text and ") -> 204" in text
    attached = r"attached to page 1002: \S+\.pdf \(\d+ bytes, PDF document\), uploaded as "
    assert re.search(attached + ALICE, text)
    assert "callback export.complete (signature verified)" in text
    assert lines[-1].endswith("every export went through the bridge end to end.")
