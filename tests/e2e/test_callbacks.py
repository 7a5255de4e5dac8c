"""Finished jobs are delivered to callbacks: signed the Standard Webhooks way, retried,
de-duplicable, and never lost to a crash."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from typing import Any

import pytest
from flask import Flask, Response, request

from bridge.config import hash_api_key
from bridge.delivery import check_callback_url
from bridge.errors import ValidationError
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.suite import SandboxSuite
from tests.conftest import ACME_KEY

SECRET = "whsec_" + base64.b64encode(b"callback-secret-for-tests-32b!!").decode()


class Receiver:
    """A callback endpoint that fails its first *failures* deliveries, then records them."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.failures = failures
        self.status = status
        self.attempts: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = Flask(__name__)
        self.app.add_url_rule("/hook", view_func=self.hook, methods=["POST"])

    def hook(self) -> Response:
        entry = {"headers": dict(request.headers), "body": request.get_data()}
        with self.lock:
            self.attempts.append(entry)
            if len(self.attempts) <= self.failures:
                return Response("try later", status=self.status)
            self.received.append(entry)
        return Response(status=204)


def verify(entry: dict[str, Any]) -> dict[str, Any]:
    headers = entry["headers"]
    msg_id, timestamp = headers["Webhook-Id"], headers["Webhook-Timestamp"]
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + entry["body"], hashlib.sha256).digest()
    ).decode()
    assert headers["Webhook-Signature"] == f"v1,{expected}"
    assert abs(int(timestamp) - time.time()) < 60
    body: dict[str, Any] = json.loads(entry["body"])
    return body


def tenants(suite: SandboxSuite) -> list[dict[str, Any]]:
    return [
        {
            "id": "acme",
            "api_keys": [hash_api_key(ACME_KEY)],
            "callback_secret": SECRET,
            "backends": suite.tenant_backends(),
        }
    ]


def wait_until(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_callback_is_signed_and_retried_until_delivered_once(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    receiver = Receiver(failures=3)
    with ServerThread(receiver.app) as hook:
        bridge = start_bridge(
            tenants=tenants(suite),
            allow_private_callbacks=True,
            callback_schedule=[0, 0.2, 0.2, 0.2, 0.2],
        )
        job = (
            bridge.session()
            .post(
                f"{bridge.url}/v1/exports",
                json={
                    "format": "pdf",
                    "source": {"pageId": "1002"},
                    "callback": {"url": f"{hook.url}/hook"},
                },
            )
            .json()
        )
        wait_until(lambda: receiver.received)
        time.sleep(0.6)  # nothing more arrives after the success
    assert len(receiver.attempts) == 4
    assert len(receiver.received) == 1
    ids = {a["headers"]["Webhook-Id"] for a in receiver.attempts}
    assert len(ids) == 1  # the same message id on every retry, for de-duplication
    body = verify(receiver.received[0])
    assert body["type"] == "export.complete"
    assert body["data"]["id"] == job["id"]
    assert body["data"]["download"]["url"].startswith(bridge.url)


def test_gone_stops_deliveries(start_bridge: Any, suite: SandboxSuite) -> None:
    receiver = Receiver(failures=100, status=410)
    with ServerThread(receiver.app) as hook:
        bridge = start_bridge(
            tenants=tenants(suite),
            allow_private_callbacks=True,
            callback_schedule=[0, 0.1, 0.1, 0.1],
        )
        bridge.session().post(
            f"{bridge.url}/v1/exports",
            json={
                "format": "pdf",
                "source": {"pageId": "1002"},
                "callback": {"url": f"{hook.url}/hook"},
            },
        )
        wait_until(lambda: receiver.attempts)
        time.sleep(0.6)
    assert len(receiver.attempts) == 1


def test_failed_jobs_are_delivered_too(start_bridge: Any, suite: SandboxSuite) -> None:
    receiver = Receiver()
    with ServerThread(receiver.app) as hook:
        bridge = start_bridge(tenants=tenants(suite), allow_private_callbacks=True)
        bridge.session().post(
            f"{bridge.url}/v1/exports",
            json={
                "format": "pdf",
                "source": {"pageId": "4242"},
                "callback": {"url": f"{hook.url}/hook"},
            },
        )
        wait_until(lambda: receiver.received)
    body = verify(receiver.received[0])
    assert body["type"] == "export.failed"
    assert body["data"]["error"]["upstreamStatus"] == 404


def test_a_crash_loses_neither_the_job_nor_its_delivery(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    receiver = Receiver()
    with ServerThread(receiver.app) as hook:
        first = start_bridge(
            tenants=tenants(suite), allow_private_callbacks=True, start_worker=False
        )
        job = (
            first.session()
            .post(
                f"{first.url}/v1/exports",
                json={
                    "format": "pdf",
                    "source": {"pageId": "1001"},
                    "callback": {"url": f"{hook.url}/hook"},
                },
            )
            .json()
        )
        first.bridge.service.advance(job["id"])  # started upstream, then the process dies
        first.stop()
        assert receiver.attempts == []
        start_bridge(tenants=tenants(suite), allow_private_callbacks=True)
        wait_until(lambda: receiver.received)
        time.sleep(0.3)
    assert len(receiver.received) == 1
    assert verify(receiver.received[0])["data"]["state"] == "complete"


def test_callbacks_need_a_secret_and_a_public_url(start_bridge: Any, suite: SandboxSuite) -> None:
    bridge = start_bridge()  # tenants without a callback_secret
    response = bridge.session().post(
        f"{bridge.url}/v1/exports",
        json={
            "format": "pdf",
            "source": {"pageId": "1002"},
            "callback": {"url": "https://example.com/hook"},
        },
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "callback"

    other = start_bridge(tenants=tenants(suite))  # private callbacks not allowed
    response = other.session().post(
        f"{other.url}/v1/exports",
        json={
            "format": "pdf",
            "source": {"pageId": "1002"},
            "callback": {"url": "http://127.0.0.1:9/hook"},
        },
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "callback.url"


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("https://internal.example/hook", ["10.0.0.5"]),
        ("https://meta.example/hook", ["169.254.169.254"]),
        ("https://v6.example/hook", ["::1"]),
        ("https://mixed.example/hook", ["93.184.216.34", "192.168.1.1"]),
        ("http://public.example/hook", ["93.184.216.34"]),
        ("ftp://public.example/hook", ["93.184.216.34"]),
        ("https://nowhere.example/hook", []),
    ],
)
def test_callback_url_ssrf_guard(url: str, addresses: list[str]) -> None:
    with pytest.raises(ValidationError):
        check_callback_url(url, allow_private=False, resolve=lambda host: addresses)


def test_public_https_callback_is_allowed() -> None:
    check_callback_url(
        "https://hooks.example/x", allow_private=False, resolve=lambda host: ["93.184.216.34"]
    )
