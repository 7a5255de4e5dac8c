"""Bad input of every kind gets a 4xx problem+json naming what is wrong — never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from bridge.bootstrap import build_bridge
from bridge.config import hash_api_key, load_settings
from handlers import create_app
from handlers.openapi import build_spec
from tests.conftest import ACME_KEY

AUTH = {"Authorization": f"Bearer {ACME_KEY}"}
SCROLL = {
    "flavor": "dc",
    "base_url": "http://127.0.0.1:9/confluence",
    "auth": {"type": "bearer", "token": "t"},
}


@pytest.fixture
def client(tmp_path: Any) -> Any:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        artifacts_url=f"file:{tmp_path / 'artifacts'}",
        max_request_bytes=4096,
        encryption_key_file=str(tmp_path / "encryption.key"),
        tenants=[
            {
                "id": "acme",
                "api_keys": [hash_api_key(ACME_KEY)],
                "backends": {"scroll-rest": SCROLL},
            },
        ],
    )
    bridge = build_bridge(settings, start_worker=False)
    yield create_app(bridge=bridge).test_client()
    bridge.close()


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body.get("errors", [])}


VALID = {"format": "pdf", "source": {"pageId": "1001"}, "template": "t"}


@pytest.mark.parametrize(
    ("body", "expected_fields"),
    [
        ({**VALID, "format": "rtf"}, {"format"}),
        ({**VALID, "source": {"pageId": "12ab"}}, {"source.pageId"}),
        ({**VALID, "source": {"pageId": "1", "scope": "all"}}, {"source.scope"}),
        ({**VALID, "source": {"spaceKey": "has space"}}, {"source.spaceKey"}),
        ({**VALID, "source": {}}, {"source.pageId"}),
        ({"source": {"pageId": "1"}}, {"format"}),
        ({**VALID, "backend": "nope"}, {"backend"}),
        ({**VALID, "colour": "red"}, {"colour"}),
        ({**VALID, "callback": {"url": "not a url"}}, {"callback.url"}),
        ({**VALID, "template": 7}, {"template"}),
        ({**VALID, "asUser": ""}, {"asUser"}),
        ([], {"body"}),
        ("just a string", {"body"}),
    ],
)
def test_invalid_requests_name_each_bad_field(
    client: FlaskClient, body: Any, expected_fields: set[str]
) -> None:
    response = client.post("/v1/exports", json=body, headers=AUTH)
    assert fields(problem(response, 400)) == expected_fields


def test_several_bad_fields_are_all_named(client: FlaskClient) -> None:
    response = client.post(
        "/v1/exports", json={"format": "x", "source": {"pageId": "y"}, "z": 1}, headers=AUTH
    )
    assert fields(problem(response, 400)) == {"format", "source.pageId", "z"}


def test_not_json(client: FlaskClient) -> None:
    response = client.post(
        "/v1/exports", data="{oops", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert fields(problem(response, 400)) == {"body"}
    response = client.post(
        "/v1/exports", data="a=b", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert fields(problem(response, 400)) == {"body"}


def test_body_too_large(client: FlaskClient) -> None:
    response = client.post(
        "/v1/exports",
        data=json.dumps({**VALID, "template": "x" * 8000}),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    problem(response, 413)


def test_no_backend_can_serve_is_422(client: FlaskClient) -> None:
    response = client.post("/v1/exports", json={**VALID, "format": "markdown"}, headers=AUTH)
    body = problem(response, 422)
    assert "markdown" in body["detail"] or "forge-markdown" in body["detail"]
    response = client.post(
        "/v1/exports", json={**VALID, "source": {"spaceKey": "DOCS"}}, headers=AUTH
    )
    assert "space" in problem(response, 422)["detail"]
    response = client.post(
        "/v1/exports", json={**VALID, "backend": "content-exporter"}, headers=AUTH
    )
    assert "content-exporter" in problem(response, 422)["detail"]


@pytest.mark.parametrize(
    ("body", "expected_fields"),
    [
        ({**VALID, "options": {"mode": "fast"}}, {"options.mode"}),
        ({**VALID, "options": {"unknown": 1}}, {"options.unknown"}),
        ({**VALID, "callback": {"url": "https://example.com/hook"}}, {"callback"}),
    ],
)
def test_well_formed_but_undoable_requests_are_422_naming_the_field(
    client: FlaskClient, body: Any, expected_fields: set[str]
) -> None:
    response = client.post("/v1/exports", json=body, headers=AUTH)
    assert fields(problem(response, 422)) == expected_fields


def test_missing_template_names_the_field(client: FlaskClient) -> None:
    response = client.post(
        "/v1/exports", json={"format": "pdf", "source": {"pageId": "1"}}, headers=AUTH
    )
    assert fields(problem(response, 422)) == {"template"}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_credentials"),
        ({"Authorization": "Bearer wrong"}, "unknown_api_key"),
        ({"Authorization": "Basic YTpi"}, "unsupported_scheme"),
        ({"Authorization": "Bearer"}, "unsupported_scheme"),
    ],
)
def test_authentication_failures_say_which_check_failed(
    client: FlaskClient, headers: dict[str, str], reason: str
) -> None:
    response = client.post("/v1/exports", json=VALID, headers=headers)
    body = problem(response, 401)
    assert body["reason"] == reason
    assert "WWW-Authenticate" in response.headers
    assert ACME_KEY not in response.get_data(as_text=True)


def test_idempotency_key_must_be_sane(client: FlaskClient) -> None:
    response = client.post(
        "/v1/exports", json=VALID, headers={**AUTH, "Idempotency-Key": "x" * 300}
    )
    assert fields(problem(response, 400)) == {"Idempotency-Key"}


def test_unknown_job_and_routes(client: FlaskClient) -> None:
    problem(client.get("/v1/exports/nope", headers=AUTH), 404)
    problem(client.get("/nowhere"), 404)
    response = client.put("/v1/exports", headers=AUTH)
    problem(response, 405)
    assert "POST" in response.headers["Allow"]
    problem(client.get("/v1/downloads/garbage"), 403)
    problem(client.get("/v1/downloads/a.b.c/file.pdf"), 403)


def test_openapi_documents_exactly_the_routes(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec == json.loads(json.dumps(build_spec()))
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    app = client.application
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<path:", "{").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method))
    assert documented == served


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {
        "store": "ok",
        "artifacts": "ok",
    }
