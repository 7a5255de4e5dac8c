"""Tests for Forge Remote callers: FIT verification, the JWKS cache, and Forge tenants."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient

from bridge.bootstrap import Bridge, build_bridge
from bridge.config import hash_api_key, load_settings
from bridge.connect import key_client
from bridge.errors import AuthenticationError, ConfigurationError
from bridge.forge import (
    PROD_JWKS_URL,
    STAGING_JWKS_URL,
    ForgeKeys,
    JWKSKeys,
    app_ari,
    is_fit,
    json_fetcher,
    verify_fit,
)
from bridge.sandbox.atlassian_keys import ForgeInvoker, ForgeJWKS
from bridge.sandbox.harness import ManualClock, ServerThread
from handlers import create_app
from handlers.auth import current_caller
from tests.test_atlassian_jwt import forge as hand_token

APP_ID = "6f1d1f0e-0000-4000-8000-000000000001"
OTHER_APP = "6f1d1f0e-0000-4000-8000-000000000002"
INSTALLATION = "ari:cloud:ecosystem::installation/11111111-2222-4333-8444-555555555555"
OTHER_INSTALLATION = "ari:cloud:ecosystem::installation/99999999-2222-4333-8444-555555555555"
API = "https://api.atlassian.com/ex/confluence/cloud-123"
ALICE = "557058:alice"
API_KEY = "ceb_forge-test-key-0123456789abcdef"
JWKS_URL = "https://jwks.invalid/.well-known/jwks.json"


@pytest.fixture(scope="module")
def jwks() -> ForgeJWKS:
    server = ForgeJWKS()
    server.new_key()
    return server


@pytest.fixture
def invoker(jwks: ForgeJWKS) -> ForgeInvoker:
    return ForgeInvoker(jwks, APP_ID)


class FakeFetch:
    """Serves the sandbox JWKS in process and counts fetches."""

    def __init__(self, jwks: ForgeJWKS) -> None:
        self.jwks = jwks
        self.urls: list[str] = []

    def __call__(self, url: str) -> object:
        self.urls.append(url)
        return self.jwks.jwks()


def check(
    token: str,
    jwks: ForgeJWKS,
    *,
    app_ids: tuple[str, ...] = (APP_ID,),
    leeway: int = 30,
    keys: ForgeKeys | None = None,
) -> Any:
    return verify_fit(
        token,
        keys=keys or ForgeKeys(JWKS_URL, FakeFetch(jwks)),
        app_ids=app_ids,
        now=time.time(),
        leeway=leeway,
    )


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(AuthenticationError) as info:
        call()
    return info.value.reason


def test_a_valid_fit_names_installation_principal_and_api(
    jwks: ForgeJWKS, invoker: ForgeInvoker
) -> None:
    invocation = check(invoker.fit(INSTALLATION, API, ALICE), jwks)
    assert invocation.installation_id == INSTALLATION
    assert invocation.principal == ALICE
    assert invocation.api_base_url == API
    assert invocation.cloud_id == "cloud-123"
    assert invocation.app_id == app_ari(APP_ID)
    # A configured full ARI works as well as the bare id; no principal is an app call.
    invocation = check(
        invoker.fit(INSTALLATION, API, cloud_id="c-9"), jwks, app_ids=(app_ari(APP_ID),)
    )
    assert invocation.principal is None and invocation.cloud_id == "c-9"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": app_ari(OTHER_APP)}, "invalid_claim:aud"),
        ({"iss": "someone-else"}, "invalid_claim:iss"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"iat": int(time.time()) + 120}, "iat_in_future"),
        ({"nbf": int(time.time()) + 120}, "not_yet_valid"),
        ({"iat": None}, "missing_claim:iat"),
        ({"app": None}, "missing_claim:app"),
        ({"app": "x"}, "invalid_claim:app"),
        (
            {"app": {"id": app_ari(OTHER_APP), "installationId": "i", "apiBaseUrl": API}},
            "invalid_claim:app.id",
        ),
        ({"app": {"id": app_ari(APP_ID), "apiBaseUrl": API}}, "missing_claim:app.installationId"),
        (
            {"app": {"id": app_ari(APP_ID), "installationId": "i", "apiBaseUrl": "nope"}},
            "invalid_claim:app.apiBaseUrl",
        ),
        ({"principal": 7}, "invalid_claim:principal"),
    ],
)
def test_fit_claim_checks(
    jwks: ForgeJWKS, invoker: ForgeInvoker, claims: dict[str, Any], reason: str
) -> None:
    token = invoker.fit(INSTALLATION, API, **{"principal": ALICE, **claims})
    assert refused(lambda: check(token, jwks)) == reason


def _claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_leeway_is_explicit(jwks: ForgeJWKS, invoker: ForgeInvoker) -> None:
    token = invoker.fit(INSTALLATION, API, ALICE, iat=int(time.time()) + 20)
    check(token, jwks, leeway=30)
    assert refused(lambda: check(token, jwks, leeway=5)) == "iat_in_future"


def test_forged_algorithms_are_refused(jwks: ForgeJWKS, invoker: ForgeInvoker) -> None:
    claims = _claims_of(invoker.fit(INSTALLATION, API, ALICE))
    pem = jwks.public_pem(jwks.current_kid)
    assert pem is not None
    header = {"kid": jwks.current_kid, "typ": "JWT"}
    unsigned = hand_token({**header, "alg": "none"}, claims)
    confused = hand_token({**header, "alg": "HS256"}, claims, pem.encode())
    for token in (unsigned, confused):
        assert is_fit(token)
        assert refused(lambda t=token: check(t, jwks)) == "alg_not_allowed"  # type: ignore[misc]
    other = ForgeJWKS()
    other.new_key(jwks.current_kid)  # same kid, another key
    assert refused(lambda: check(ForgeInvoker(other, APP_ID).fit(INSTALLATION, API), jwks)) == (
        "bad_signature"
    )
    assert refused(lambda: check(invoker.fit(INSTALLATION, API), jwks, app_ids=())) == (
        "forge_not_configured"
    )


def test_unknown_kids_refetch_at_most_once_a_minute(jwks: ForgeJWKS, invoker: ForgeInvoker) -> None:
    fetch = FakeFetch(jwks)
    clock = ManualClock(0)
    keys = JWKSKeys(JWKS_URL, fetch, clock)
    kid = jwks.current_kid
    for _ in range(3):
        keys.key(kid)
    assert len(fetch.urls) == 1
    for _ in range(5):
        assert refused(lambda: keys.key("made-up")) == "unknown_kid"
    assert len(fetch.urls) == 1  # fetched moments ago: unknown kids wait for the minute
    clock.advance(61)
    for _ in range(5):
        assert refused(lambda: keys.key("made-up")) == "unknown_kid"
    assert len(fetch.urls) == 2  # the first unknown kid refetched; the rest waited
    rotated = ForgeJWKS()
    new_kid = rotated.new_key()
    fetch.jwks = rotated
    clock.advance(61)
    keys.key(new_kid)  # a rotated-in key is picked up by the next allowed refetch
    assert len(fetch.urls) == 3


def test_staging_apps_use_the_staging_jwks(jwks: ForgeJWKS, invoker: ForgeInvoker) -> None:
    fetch = FakeFetch(jwks)
    keys = ForgeKeys(PROD_JWKS_URL, fetch)
    check(
        invoker.fit(INSTALLATION, "https://api.stg.atlassian.com/ex/confluence/c"), jwks, keys=keys
    )
    check(invoker.fit(INSTALLATION, API), jwks, keys=keys)
    assert fetch.urls == [STAGING_JWKS_URL, PROD_JWKS_URL]
    # A configured JWKS serves everyone.
    custom = ForgeKeys(JWKS_URL, fetch)
    assert custom.for_api_base_url("https://api.stg.atlassian.com/x") is custom.primary


def test_jwks_over_http_and_its_failures(
    tmp_path: Path, jwks: ForgeJWKS, invoker: ForgeInvoker
) -> None:
    settings = load_settings(encryption_key_file=str(tmp_path / "k"))
    client = key_client(settings, "forge-jwks")
    with ServerThread(jwks.app) as server:
        keys = ForgeKeys(f"{server.url}/.well-known/jwks.json", json_fetcher(client))
        check(invoker.fit(INSTALLATION, API, ALICE), jwks, keys=keys)
        broken = ForgeKeys(f"{server.url}/missing.json", json_fetcher(client))
        assert refused(lambda: check(invoker.fit(INSTALLATION, API), jwks, keys=broken)) == (
            "jwks_unavailable"
        )
    client.close()


def test_is_fit_only_for_forge_issued_jwts(invoker: ForgeInvoker) -> None:
    assert is_fit(invoker.fit(INSTALLATION, API))
    assert not is_fit(API_KEY)
    assert not is_fit("a.b.c")
    assert not is_fit(hand_token({"alg": "HS256"}, {"iss": "client"}, b"k" * 32))


# --- Forge tenants and the HTTP edge -----------------------------------------------------


def test_forge_installations_are_validated_and_unique(tmp_path: Path) -> None:
    base = {
        "encryption_key_file": str(tmp_path / "k"),
        "database_url": f"sqlite:///{tmp_path / 'd'}",
    }
    with pytest.raises(ConfigurationError, match="installation ARI"):
        load_settings(**base, tenants=[{"id": "a", "forge_installations": ["not-an-ari"]}])
    twice = [
        {"id": "a", "forge_installations": [INSTALLATION]},
        {"id": "b", "forge_installations": [INSTALLATION]},
    ]
    with pytest.raises(ConfigurationError, match="two tenants"):
        build_bridge(load_settings(**base, tenants=twice), start_worker=False)


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        artifacts_url=f"file:{tmp_path / 'artifacts'}",
        encryption_key_file=str(tmp_path / "encryption.key"),
        worker_threads=0,
        forge_app_ids=[APP_ID],
        forge_jwks_url=JWKS_URL,
        tenants=[
            {
                "id": "acme",
                "api_keys": [hash_api_key(API_KEY)],
                "forge_installations": [INSTALLATION],
            }
        ],
    )
    running = build_bridge(settings, start_worker=False)
    yield running
    running.close()


@pytest.fixture
def client(bridge: Bridge, jwks: ForgeJWKS) -> FlaskClient:
    app: Flask = create_app(bridge=bridge)
    app.extensions["forge_keys"] = ForgeKeys(JWKS_URL, FakeFetch(jwks))

    def whoami() -> Any:
        caller = current_caller()
        return jsonify(
            tenant=caller.tenant_id,
            user=caller.user,
            admin=caller.admin,
            scheme=caller.scheme,
            token=caller.product_token,
            base=caller.product_base_url,
        )

    app.add_url_rule("/ui/whoami", "whoami", whoami)
    return app.test_client()


def test_a_forge_caller_brings_its_user_and_token(
    client: FlaskClient, invoker: ForgeInvoker
) -> None:
    fit = invoker.fit(INSTALLATION, API, ALICE)
    response = client.get(
        "/ui/whoami",
        headers={"Authorization": f"Bearer {fit}", "x-forge-oauth-user": "user-token"},
    )
    assert response.get_json() == {
        "tenant": "acme",
        "user": ALICE,
        "admin": False,
        "scheme": "forge",
        "token": "user-token",
        "base": API,
    }
    app_call = client.get(
        "/ui/whoami", headers={"Authorization": f"Bearer {invoker.fit(INSTALLATION, API)}"}
    )
    assert app_call.get_json()["admin"] is True and app_call.get_json()["user"] is None
    # API keys still work beside FITs.
    by_key = client.get("/ui/whoami", headers={"Authorization": f"Bearer {API_KEY}"})
    assert by_key.get_json()["scheme"] == "api-key"


def reason_of(response: Any) -> str:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    return str(response.get_json()["reason"])


def test_forge_refusals_at_the_edge(client: FlaskClient, invoker: ForgeInvoker) -> None:
    unknown = invoker.fit(OTHER_INSTALLATION, API, ALICE)
    response = client.get("/ui/whoami", headers={"Authorization": f"Bearer {unknown}"})
    assert reason_of(response) == "unknown_installation"
    expired = invoker.fit(INSTALLATION, API, ALICE, exp=int(time.time()) - 100)
    assert reason_of(client.get("/ui/whoami", headers={"Authorization": f"Bearer {expired}"})) == (
        "expired"
    )
    other_app = ForgeInvoker(invoker.jwks, OTHER_APP).fit(INSTALLATION, API, ALICE)
    response = client.get("/ui/whoami", headers={"Authorization": f"Bearer {other_app}"})
    assert reason_of(response) == "invalid_claim:aud"
    response = client.get(
        "/ui/whoami",
        headers={
            "Authorization": f"Bearer {invoker.fit(INSTALLATION, API, ALICE)}",
            "x-forge-oauth-user": "t" * 9000,
        },
    )
    assert reason_of(response) == "invalid_product_token"
