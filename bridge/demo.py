"""``export-bridge demo``: the sandbox and a bridge on loopback, and real exports through them.

Then the webhook story: a simulated Cloud site installs the bridge as a Connect app, a user
edits a page, Confluence sends ``page_updated``, a ``connect_rules`` rule exports the page as
that user, the PDF is attached to the page and a signed callback reaches a small receiver.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from bridge.bootstrap import build_bridge
from bridge.client import BridgeClient
from bridge.config import Settings, hash_api_key, load_settings, new_api_key
from bridge.delivery import sign_webhook
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.suite import (
    CLIENT_KEY,
    DEMO_TEMPLATES,
    OAUTH_CLIENT_ID,
    SHARED_SECRET,
    USERS,
    SandboxSuite,
)
from bridge.sandbox.webhooks import connect_page_payload
from handlers import create_app

WEBHOOK_PAGE = "1002"
WEBHOOK_TIMEOUT = 10.0

# (label, request) pairs the demo runs, one per backend it can show.
DEMO_EXPORTS: list[tuple[str, dict[str, Any]]] = [
    (
        "Scroll PDF (REST, Data Center)",
        {
            "backend": "scroll-rest",
            "source": {"pageId": "1001", "scope": "descendants"},
            "format": "pdf",
        },
    ),
    (
        "Scroll Word (REST, sync export)",
        {
            "backend": "scroll-rest",
            "source": {"pageId": "1002"},
            "format": "docx",
            "options": {"mode": "sync"},
        },
    ),
    (
        "Scroll HTML (macro, Confluence Cloud, as user 557058:alice)",
        {
            "backend": "scroll-macro",
            "source": {"pageId": "1001"},
            "format": "html",
            "asUser": "557058:alice",
        },
    ),
    (
        "Content Exporter PDF (Remote API, US region)",
        {
            "backend": "content-exporter",
            "source": {"pageId": "1001", "scope": "descendants"},
            "format": "pdf",
            "options": {
                "tocTitle": "Contents",
                "pageSettings": {"size": "A4", "orientation": "LANDSCAPE"},
            },
        },
    ),
    (
        "Forge Markdown (a page tree as one ZIP)",
        {
            "backend": "forge-markdown",
            "source": {"pageId": "1001", "scope": "descendants"},
            "format": "markdown",
            "options": {"includeAttachments": True},
        },
    ),
]


class CallbackReceiver:
    """A callback endpoint that checks each delivery's Standard Webhooks signature."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.app = Flask(__name__)
        self.app.add_url_rule("/hook", "hook", self._hook, methods=["POST"])

    def _hook(self) -> Response:
        msg_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "")
        body = request.get_data()
        if not timestamp.isdigit():
            return Response("no timestamp", status=400)
        expected = sign_webhook(self.secret, msg_id, int(timestamp), body)
        if request.headers.get("webhook-signature") != expected:
            return Response("bad signature", status=400)
        with self._lock:
            self.received.append(json.loads(body))
        return Response(status=204)


def run_demo(workdir: Path, say: Callable[[str], None]) -> None:
    """Run every demo export and check each file; raise on the first failure."""
    api_key = new_api_key()
    callback_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = CallbackReceiver(callback_secret)
    with SandboxSuite(job_seconds=0.5) as suite, ServerThread(receiver.app) as hook:
        say(f"sandbox upstreams: {', '.join(f'{n} {s.url}' for n, s in suite.servers.items())}")
        server = ServerThread()
        settings = load_settings(
            public_url=server.url,
            database_url=f"sqlite:///{workdir / 'bridge.sqlite3'}",
            artifacts_url=f"file:{workdir / 'artifacts'}",
            encryption_key_file=str(workdir / "encryption.key"),
            allow_loopback_upstreams=True,  # the sandbox upstreams are on loopback
            poll_interval=0.5,
            tenants=[
                {
                    "id": "demo",
                    "api_keys": [hash_api_key(api_key)],
                    "backends": suite.tenant_backends(),
                }
            ],
            # Sites installing the bridge as a Connect app, and what their webhooks start.
            connect_keys_url=suite.url("connect-install-keys"),
            connect_backends={
                "scroll-macro": {"auth_server": suite.url("oauth"), "templates": DEMO_TEMPLATES}
            },
            connect_rules=[
                {
                    "events": ["page_updated"],
                    "backend": "scroll-macro",
                    "format": "pdf",
                    "attach_to_page": True,
                    "callback_url": f"{hook.url}/hook",
                }
            ],
            connect_callback_secret=callback_secret,
            allow_private_callbacks=True,
            callback_schedule=[0, 0.5, 1, 2, 4],
        )
        bridge = build_bridge(settings)
        server.app = create_app(bridge=bridge)
        with server:
            say(f"bridge:            {server.url}  (state in {workdir})")
            client = BridgeClient(server.url, api_key)
            for label, request in DEMO_EXPORTS:
                say(f"\n== {label}")
                say(f"POST /v1/exports {request}")
                job = client.start(request)
                say(f"  -> 202 job {job['id']} ({job['backend']}, {job['state']})")
                job = client.wait(
                    job["id"], lambda j: say(f"  {j['state']:>9} {j['progress']:3d}%  {j['phase']}")
                )
                link = job["download"]
                target = workdir / link["filename"]
                size = client.download(link["url"], target)
                say(f"  signed link {link['url'][:70]}... (expires {link['expiresAt']})")
                say(f"  downloaded {size} bytes -> {target}  [{_describe(target.read_bytes())}]")
            _webhook_demo(suite, settings, server.url, receiver, say)
        bridge.close()
    say("\ndemo complete: every export went through the bridge end to end.")


def _webhook_demo(
    suite: SandboxSuite,
    settings: Settings,
    bridge_url: str,
    receiver: CallbackReceiver,
    say: Callable[[str], None],
) -> None:
    """Install → page updated → PDF attached, callback received."""
    user = USERS[0]
    say("\n== Webhook: install -> page updated -> PDF attached, callback received")
    site = suite.connect_site
    installed = site.install(
        bridge_url,
        settings.connect_app_key,
        CLIENT_KEY,
        SHARED_SECRET,
        suite.site_url,
        OAUTH_CLIENT_ID,
    )
    say(f"POST /installed (RS256-signed by the site {suite.site_url}) -> {installed.status_code}")
    page = suite.pages.get(WEBHOOK_PAGE)
    if installed.status_code != 204 or page is None:
        raise RuntimeError(f"the install failed: {installed.status_code} {installed.text[:200]}")
    sent = site.send_webhook(
        bridge_url, "page_updated", connect_page_payload(page, user, version=3)
    )
    say(f"POST /webhooks/connect/page_updated ({page.title!r} edited by {user})")
    say(f"  -> {sent.status_code} (Connect JWT verified, a rule matched, the export is queued)")
    deadline = time.monotonic() + WEBHOOK_TIMEOUT
    while not (suite.cloud.attachments.get(WEBHOOK_PAGE) and receiver.received):
        if sent.status_code != 204 or time.monotonic() > deadline:
            raise RuntimeError("the webhook export was not attached and called back in time")
        time.sleep(0.1)
    attached = suite.cloud.attachments[WEBHOOK_PAGE][-1]
    say(
        f"  attached to page {WEBHOOK_PAGE}: {attached.filename} ({len(attached.data)} bytes, "
        f"{_describe(attached.data)}), uploaded as {attached.uploader}"
    )
    callback = receiver.received[0]
    job = callback["data"]
    say(
        f"  callback {callback['type']} (signature verified): job {job['id']} "
        f"({job['backend']}, as {job['asUser']})"
    )


def _describe(data: bytes) -> str:
    head = data[:8]
    if head.startswith(b"%PDF-"):
        return "PDF document"
    if head.startswith(b"PK"):
        return "ZIP container (DOCX / zipped HTML)"
    return "text"
