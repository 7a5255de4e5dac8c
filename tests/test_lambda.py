"""The Lambda entry points, driven with real API Gateway event payloads (HTTP API v2 and REST
API v1) and an EventBridge scheduled event; configured only by BRIDGE_* variables, as
serverless.yml does."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bridge.sandbox.suite import SandboxSuite
from handlers import lambda_handler
from tests.conftest import ACME_KEY, tenants_for

HOST = "abc123defg.execute-api.eu-west-1.amazonaws.com"
PUBLIC_URL = f"https://{HOST}"


class FakeContext:
    """What Lambda passes as ``context`` (the parts the bridge and apig-wsgi read)."""

    function_name = "export-bridge-dev-api"
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"

    def __init__(self, seconds: float = 30.0) -> None:
        self._deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def http_api_event(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    base64_body: bool = False,
    query: str = "",
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event, as Lambda receives it."""
    all_headers = {
        "accept": "*/*",
        "content-length": str(len(body or b"")),
        "host": HOST,
        "user-agent": "curl/8.5.0",
        "x-amzn-trace-id": "Root=1-6745a1b2-0123456789abcdef01234567",
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": all_headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123defg",
            "domainName": HOST,
            "domainPrefix": "abc123defg",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "Cd9Kfj0pIAMEVFQ=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "26/Nov/2026:03:41:00 +0000",
            "timeEpoch": 1795664460000,
        },
        "isBase64Encoded": base64_body,
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if base64_body else body.decode()
    return event


def rest_api_event(
    method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> dict[str, Any]:
    """An API Gateway REST API (payload format 1.0) proxy event on stage ``prod``."""
    all_headers = {
        "Accept": "*/*",
        "Host": HOST,
        "User-Agent": "python-requests/2.32.3",
        "X-Amzn-Trace-Id": "Root=1-6745a1b2-abcdef0123456789abcdef01",
        "X-Forwarded-For": "198.51.100.4",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **(headers or {}),
    }
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "2gxmpl",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "extendedRequestId": "lBQ_ZFbVIAMFUfQ=",
            "requestTime": "26/Nov/2026:03:41:00 +0000",
            "path": f"/prod{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": "prod",
            "domainPrefix": "abc123defg",
            "requestTimeEpoch": 1795664460000,
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "198.51.100.4", "userAgent": "python-requests/2.32.3"},
            "domainName": HOST,
            "apiId": "abc123defg",
        },
        "body": None if body is None else body.decode(),
        "isBase64Encoded": False,
    }


SCHEDULED_EVENT = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-26T03:41:00Z",
    "region": "eu-west-1",
    "resources": ["arn:aws:events:eu-west-1:123456789012:rule/export-bridge-dev-worker"],
    "detail": {},
}

AUTH = {"Authorization": f"Bearer {ACME_KEY}"}
EXPORT = json.dumps(
    {"backend": "scroll-rest", "format": "pdf", "source": {"pageId": "1002"}}
).encode()


@pytest.fixture
def lambda_env(
    tmp_path: Path, suite: SandboxSuite, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxSuite]:
    """The environment serverless.yml would set, pointing at the sandbox and tmp_path."""
    env = {
        "BRIDGE_PUBLIC_URL": PUBLIC_URL,
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.sqlite3'}",
        "BRIDGE_ARTIFACTS_URL": f"file:{tmp_path / 'artifacts'}",
        "BRIDGE_ENCRYPTION_KEY_FILE": str(tmp_path / "encryption.key"),
        "BRIDGE_TENANTS": json.dumps(tenants_for(suite)),
        "BRIDGE_WORKER_THREADS": "0",
        "BRIDGE_MAX_WAIT": "20",
        "BRIDGE_POLL_INTERVAL": "0.2",
        "BRIDGE_ALLOW_LOOPBACK_UPSTREAMS": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lambda_handler.reset()
    yield suite
    lambda_handler.reset()


def header(response: dict[str, Any], name: str) -> str:
    """A response header: v2 answers with ``headers``, v1 (multi-value events) with
    ``multiValueHeaders``."""
    if "multiValueHeaders" in response:
        values = {k.lower(): v for k, v in response["multiValueHeaders"].items()}
        return ",".join(values[name.lower()])
    return str({k.lower(): v for k, v in response["headers"].items()}[name.lower()])


def json_body(response: dict[str, Any]) -> Any:
    assert response["isBase64Encoded"] is False
    return json.loads(response["body"])


@pytest.mark.parametrize("make_event", [http_api_event, rest_api_event])
def test_healthz(lambda_env: SandboxSuite, make_event: Any) -> None:
    response = lambda_handler.handler(make_event("GET", "/healthz"), FakeContext())
    assert response["statusCode"] == 200
    assert header(response, "Content-Type") == "application/json"
    assert json_body(response) == {"status": "ok"}


def test_the_app_is_built_once_per_container(lambda_env: SandboxSuite) -> None:
    first = lambda_handler.app()
    lambda_handler.handler(http_api_event("GET", "/healthz"), FakeContext())
    assert lambda_handler.app() is first
    assert first.extensions["bridge"].worker is None  # BRIDGE_WORKER_THREADS=0


@pytest.mark.parametrize(
    "event",
    [
        http_api_event(
            "POST", "/v1/exports", headers={**AUTH, "content-type": "application/json"}, body=EXPORT
        ),
        # HTTP APIs base64-encode bodies they do not recognise as text.
        http_api_event(
            "POST",
            "/v1/exports",
            headers={**AUTH, "content-type": "application/json"},
            body=EXPORT,
            base64_body=True,
        ),
        rest_api_event(
            "POST", "/v1/exports", headers={**AUTH, "Content-Type": "application/json"}, body=EXPORT
        ),
    ],
    ids=["http-api", "http-api-base64-body", "rest-api"],
)
def test_create_export(lambda_env: SandboxSuite, event: dict[str, Any]) -> None:
    response = lambda_handler.handler(event, FakeContext())
    assert response["statusCode"] == 202, response
    assert header(response, "Content-Type") == "application/json"
    job = json_body(response)
    assert job["state"] == "queued"
    assert header(response, "Location") == f"/v1/exports/{job['id']}"
    assert job["error"] is None


@pytest.mark.parametrize("make_event", [http_api_event, rest_api_event])
def test_missing_credentials_is_a_problem_document(
    lambda_env: SandboxSuite, make_event: Any
) -> None:
    response = lambda_handler.handler(make_event("GET", "/v1/exports/nope"), FakeContext())
    assert response["statusCode"] == 401
    assert header(response, "Content-Type") == "application/problem+json"
    assert json_body(response)["status"] == 401


def test_scheduled_worker_finishes_jobs_and_downloads_come_back_base64(
    lambda_env: SandboxSuite,
) -> None:
    created = lambda_handler.handler(
        http_api_event(
            "POST", "/v1/exports", headers={**AUTH, "content-type": "application/json"}, body=EXPORT
        ),
        FakeContext(),
    )
    job_id = json_body(created)["id"]

    result = lambda_handler.scheduled(SCHEDULED_EVENT, FakeContext(seconds=25))
    assert result["steps"] >= 2  # start, then poll(s) until ready and the copy
    assert result["swept"] == 0

    read = lambda_handler.handler(
        rest_api_event("GET", f"/v1/exports/{job_id}", headers=AUTH), FakeContext()
    )
    job = json_body(read)
    assert job["state"] == "complete", job
    link = urlsplit(job["download"]["url"])
    assert f"{link.scheme}://{link.netloc}" == PUBLIC_URL

    stored = lambda_handler.app().extensions["bridge"].store.get_job(job_id)
    expected, filename = lambda_env.scroll_engine.file(stored.handle["jobId"])
    for make_event in (rest_api_event, http_api_event):
        response = lambda_handler.handler(make_event("GET", link.path), FakeContext())
        assert response["statusCode"] == 200
        assert response["isBase64Encoded"] is True
        assert header(response, "Content-Type") == "application/pdf"
        assert filename in header(response, "Content-Disposition")
        data = base64.b64decode(response["body"])
        assert data == expected.read()
        assert data.startswith(b"%PDF-")
        assert int(header(response, "Content-Length")) == len(data)


def test_scheduled_run_stops_early_when_nothing_is_due(lambda_env: SandboxSuite) -> None:
    began = time.monotonic()
    assert lambda_handler.scheduled(SCHEDULED_EVENT, FakeContext(seconds=60)) == {
        "steps": 0,
        "swept": 0,
    }
    assert time.monotonic() - began < 2


def test_scheduled_run_leaves_its_safety_margin(lambda_env: SandboxSuite) -> None:
    lambda_env.scroll_engine.job_seconds = 60  # the job stays due every poll interval
    lambda_handler.handler(
        http_api_event(
            "POST", "/v1/exports", headers={**AUTH, "content-type": "application/json"}, body=EXPORT
        ),
        FakeContext(),
    )
    began = time.monotonic()
    result = lambda_handler.scheduled(SCHEDULED_EVENT, FakeContext(seconds=12))
    took = time.monotonic() - began
    assert 1.5 <= took <= 3.5  # 12 s left minus the 10 s margin
    assert result["steps"] >= 2
