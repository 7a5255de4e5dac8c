"""Tests for Connect: the descriptor, signed-install verification, stored installations, the
tenant fallback, and Connect-JWT callers (Flask test client; key server over loopback)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient

from bridge.atlassian_jwt import CONTEXT_QSH, query_string_hash
from bridge.bootstrap import Bridge, build_bridge
from bridge.config import Settings, load_settings
from bridge.connect import (
    WEBHOOK_EVENTS,
    InstallKeys,
    base_url_allowed,
    build_descriptor,
    key_client,
    pem_fetcher,
    verify_install_token,
    webhook_path,
)
from bridge.errors import AuthenticationError, ConfigurationError, ValidationError
from bridge.installations import Installations
from bridge.sandbox.atlassian_keys import ConnectSite, InstallKeyServer
from bridge.sandbox.harness import ManualClock, ServerThread
from bridge.stores import open_store
from bridge.tenants import TenantDirectory
from handlers import create_app
from handlers.auth import allow_context_qsh, current_caller
from tests.test_atlassian_jwt import forge as hand_token

APP = "https://bridge.example.com/app"
CLIENT = "client-key-1"
OTHER_CLIENT = "client-key-2"
SECRET = "install-shared-secret-0123456789-abcdefghijkl"
OTHER_SECRET = "other-install-secret-0123456789-abcdefghijkl"
SITE = "https://acme.atlassian.net/wiki"
ALICE, BOB = "557058:alice", "557058:bob"
KEYS_URL = "https://keys.invalid"


@pytest.fixture(scope="module")
def keys() -> InstallKeyServer:
    """One RSA key for the module (key generation is the slow part)."""
    server = InstallKeyServer()
    server.new_key()
    return server


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "public_url": APP,
        "database_url": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "artifacts_url": f"file:{tmp_path / 'artifacts'}",
        "encryption_key_file": str(tmp_path / "encryption.key"),
        "worker_threads": 0,
    }
    values.update(overrides)
    return load_settings(**values)


def install_body(client_key: str = CLIENT, **fields: Any) -> dict[str, Any]:
    body = ConnectSite.lifecycle_payload(
        "installed",
        "confluence-export-bridge",
        client_key,
        SITE,
        sharedSecret=SECRET,
        oauthClientId="oauth-client-1",
    )
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def install_token(keys: InstallKeyServer, now: float, **claims: Any) -> str:
    base: dict[str, Any] = {
        "iss": CLIENT,
        "aud": [APP],
        "iat": int(now),
        "exp": int(now) + 180,
        "qsh": query_string_hash("POST", "/installed"),
    }
    base.update(claims)
    return keys.sign({k: v for k, v in base.items() if v is not None})


def fetcher(keys: InstallKeyServer) -> Callable[[str], Any]:
    return InstallKeys(KEYS_URL, lambda url: keys.public_pem(url.removeprefix(KEYS_URL + "/"))).key


# --- descriptor and host allow-list ----------------------------------------------------


def test_descriptor_declares_signed_install_jwt_scopes_and_webhooks(tmp_path: Path) -> None:
    descriptor = build_descriptor(settings_for(tmp_path, public_url=APP + "/", connect_app_key="k"))
    assert descriptor["key"] == "k" and descriptor["baseUrl"] == APP
    assert descriptor["authentication"] == {"type": "jwt"}
    assert descriptor["lifecycle"] == {"installed": "/installed", "uninstalled": "/uninstalled"}
    assert descriptor["scopes"] == ["READ", "WRITE", "ACT_AS_USER"]
    assert descriptor["apiMigrations"]["signed-install"] is True
    assert descriptor["apiMigrations"]["context-qsh"] is True
    hooks = descriptor["modules"]["webhooks"]
    assert [h["event"] for h in hooks] == list(WEBHOOK_EVENTS) == ["page_created", "page_updated"]
    assert hooks[0]["url"] == webhook_path("page_created") == "/webhooks/connect/page_created"


@pytest.mark.parametrize(
    ("url", "loopback", "allowed"),
    [
        ("https://acme.atlassian.net/wiki", False, True),
        ("https://acme.jira.com", False, True),
        ("http://acme.atlassian.net/wiki", False, False),
        ("https://atlassian.net.evil.com/wiki", False, False),
        ("https://evilatlassian.net", False, False),
        ("https://user@acme.atlassian.net", False, False),
        ("https://acme.atlassian.net\\@evil.com", False, False),
        ("http://127.0.0.1:8090/wiki", True, True),
        ("http://127.0.0.1:8090/wiki", False, False),
        ("http://localhost/wiki", True, True),
        ("http://10.0.0.1/wiki", True, False),
        ("ftp://acme.atlassian.net", False, False),
        ("https://acme.atlassian.net:notaport/", False, False),
        (None, True, False),
    ],
)
def test_base_url_allow_list(url: Any, loopback: bool, allowed: bool) -> None:
    assert base_url_allowed(url, ["*.atlassian.net", "*.jira.com"], loopback) is allowed


# --- verify_install_token ---------------------------------------------------------------


def verify(
    tmp_path: Path, keys: InstallKeyServer, token: str, body: Any = None, **settings: Any
) -> dict[str, Any]:
    return verify_install_token(
        token,
        install_body() if body is None else body,
        "POST",
        "/installed",
        settings_for(tmp_path, allow_loopback_upstreams=False, **settings),
        fetcher(keys),
        time.time(),
    )


def test_a_signed_install_verifies(tmp_path: Path, keys: InstallKeyServer) -> None:
    claims = verify(tmp_path, keys, install_token(keys, time.time()))
    assert claims["iss"] == CLIENT
    # The trailing slash of aud (or of our public URL) does not matter.
    verify(tmp_path, keys, install_token(keys, time.time(), aud=APP + "/"))


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(AuthenticationError) as info:
        call()
    assert SECRET not in str(info.value)
    return info.value.reason


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": ["https://other-app.example.com"]}, "invalid_claim:aud"),
        ({"aud": None}, "missing_claim:aud"),
        ({"qsh": query_string_hash("POST", "/uninstalled")}, "qsh_mismatch"),
        ({"qsh": "POST&/installed&"}, "qsh_mismatch"),
        ({"qsh": CONTEXT_QSH}, "qsh_mismatch"),
        ({"iss": OTHER_CLIENT}, "issuer_mismatch"),
        ({"exp": int(time.time()) - 31}, "expired"),
        ({"iat": int(time.time()) + 300}, "iat_in_future"),
    ],
)
def test_install_claim_checks(
    tmp_path: Path, keys: InstallKeyServer, claims: dict[str, Any], reason: str
) -> None:
    assert refused(lambda: verify(tmp_path, keys, install_token(keys, time.time(), **claims))) == (
        reason
    )


def test_install_leeway_is_explicit(tmp_path: Path, keys: InstallKeyServer) -> None:
    token = install_token(keys, time.time(), exp=int(time.time()) - 20)
    verify(tmp_path, keys, token, jwt_leeway=30)
    assert refused(lambda: verify(tmp_path, keys, token, jwt_leeway=5)) == "expired"


def test_install_header_and_body_checks(tmp_path: Path, keys: InstallKeyServer) -> None:
    now = time.time()
    payload = {"iss": CLIENT, "aud": [APP], "exp": int(now) + 60, "qsh": "x"}
    pem = keys.public_pem(keys.current_kid)
    assert pem is not None
    # HS256, and the RS/HS confusion (the public key used as an HMAC secret).
    hs256 = hand_token({"alg": "HS256", "kid": keys.current_kid}, payload, b"k" * 32)
    assert refused(lambda: verify(tmp_path, keys, hs256)) == "alg_not_allowed"
    confused = hand_token({"alg": "HS256", "kid": keys.current_kid}, payload, pem.encode())
    assert refused(lambda: verify(tmp_path, keys, confused)) == "alg_not_allowed"
    unsigned = hand_token({"alg": "none", "kid": keys.current_kid}, payload)
    assert refused(lambda: verify(tmp_path, keys, unsigned)) == "alg_not_allowed"
    no_kid = jwt.encode(payload, keys.private_key(), algorithm="RS256")
    assert refused(lambda: verify(tmp_path, keys, no_kid)) == "missing_kid"
    for kid in ("../etc/passwd", "a/../../b", "/absolute", "white space", "x" * 201, "%2e%2e"):
        token = jwt.encode(payload, keys.private_key(), algorithm="RS256", headers={"kid": kid})
        assert refused(lambda t=token: verify(tmp_path, keys, t)) == "bad_kid"  # type: ignore[misc]
    unknown = jwt.encode(payload, keys.private_key(), algorithm="RS256", headers={"kid": "nope"})
    assert refused(lambda: verify(tmp_path, keys, unknown)) == "unknown_kid"
    good = install_token(keys, now)
    assert refused(lambda: verify(tmp_path, keys, good, [])) == "invalid_body"
    body = install_body(clientKey=None)
    assert refused(lambda: verify(tmp_path, keys, good, body)) == "missing_client_key"
    for site in ("https://acme.evil.com/wiki", "http://127.0.0.1:1/wiki"):
        body = install_body(baseUrl=site)
        assert refused(lambda b=body: verify(tmp_path, keys, good, b)) == "base_url_not_allowed"  # type: ignore[misc]
    body = install_body(baseUrl="https://acme.example.org/wiki")
    verify(tmp_path, keys, good, body, connect_allowed_base_urls=["acme.example.org"])


def test_a_token_signed_by_another_key_is_refused(tmp_path: Path, keys: InstallKeyServer) -> None:
    other = InstallKeyServer()
    other.new_key(keys.current_kid)  # same kid, different key
    token = other.sign(
        {"iss": CLIENT, "aud": [APP], "exp": int(time.time()) + 60, "qsh": "x"}, keys.current_kid
    )
    assert refused(lambda: verify(tmp_path, keys, token)) == "bad_signature"


def test_install_keys_are_fetched_once_per_kid_over_http(
    tmp_path: Path, keys: InstallKeyServer
) -> None:
    settings = settings_for(tmp_path)
    client = key_client(settings, "connect-install-keys")
    with ServerThread(keys.app) as server:
        install_keys = InstallKeys(server.url, pem_fetcher(client))
        kid = keys.current_kid
        assert (
            install_keys.key(kid).public_numbers()
            == keys.private_key(kid).public_key().public_numbers()
        )
        install_keys.key(kid)
        assert keys.requests[kid] == 1
        assert refused(lambda: install_keys.key("missing-kid")) == "unknown_kid"
    # The server is gone: an unknown kid cannot be fetched, a known one is still cached.
    install_keys.key(kid)
    assert refused(lambda: install_keys.key("another")) == "install_key_unavailable"
    client.close()


# --- stored installations and the tenant fallback ---------------------------------------


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    running = build_bridge(
        settings_for(
            tmp_path,
            connect_backends={
                "scroll-macro": {"templates": {"pdf": "tpl"}, "auth_server": "https://auth.test"},
                "content-exporter": {"url": "https://cex.test", "api_key": "k"},
            },
        ),
        start_worker=False,
    )
    yield running
    running.close()


def installations_of(bridge: Bridge) -> Installations:
    value: Installations = bridge.extras["installations"]
    return value


def test_installations_seal_the_secret_and_build_the_tenant(bridge: Bridge, tmp_path: Path) -> None:
    installations = installations_of(bridge)
    saved = installations.save(install_body(installationId="ari:cloud:ecosystem::installation/x"))
    assert saved.tenant_id == f"connect:{CLIENT}" and SECRET not in repr(saved)
    assert SECRET.encode() not in (tmp_path / "db.sqlite3").read_bytes()
    loaded = installations.get(CLIENT)
    assert loaded is not None and loaded.shared_secret == SECRET and loaded.base_url == SITE
    tenant = installations.tenant_for(loaded)
    macro = tenant.backends["scroll-macro"]
    assert macro.site_url == SITE and macro.client_key == CLIENT  # type: ignore[attr-defined]
    assert macro.oauth_client_id == "oauth-client-1"  # type: ignore[attr-defined]
    assert macro.templates == {"pdf": "tpl"}  # type: ignore[attr-defined]
    assert set(tenant.backends) == {"scroll-macro", "content-exporter"}
    assert tenant.name == "acme.atlassian.net"
    assert tenant.extra["installationId"] == "ari:cloud:ecosystem::installation/x"


def test_reinstall_replaces_and_uninstall_removes(bridge: Bridge) -> None:
    installations = installations_of(bridge)
    installations.save(install_body())
    installations.save(install_body(sharedSecret=OTHER_SECRET, oauthClientId=None))
    again = installations.get(CLIENT)
    assert again is not None and again.shared_secret == OTHER_SECRET
    # No OAuth client: the install cannot impersonate, so no scroll-macro.
    assert "scroll-macro" not in installations.tenant_for(again).backends
    installations.remove(CLIENT)
    assert installations.get(CLIENT) is None
    installations.remove(CLIENT)  # idempotent


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sharedSecret": None}, "sharedSecret"),
        ({"sharedSecret": "short"}, "sharedSecret"),
        ({"key": "another-app"}, "key"),
        ({"clientKey": "bad key/../x"}, "clientKey"),
        ({"baseUrl": None}, "baseUrl"),
    ],
)
def test_an_unusable_install_body_is_a_validation_error(
    bridge: Bridge, fields: dict[str, Any], field: str
) -> None:
    body = install_body(**{k: v for k, v in fields.items() if v is not None})
    for name, value in fields.items():
        if value is None:
            body.pop(name)
    with pytest.raises(ValidationError) as info:
        installations_of(bridge).save(body)
    assert [e.field for e in info.value.errors] == [field]


def test_invalid_connect_backends_fail_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="connect_backends"):
        build_bridge(settings_for(tmp_path, connect_backends={"nope": {}}), start_worker=False)


def test_a_tenant_installed_through_one_process_is_found_by_another(
    bridge: Bridge, tmp_path: Path
) -> None:
    # "Process B": its own store connection, installations and (cached) directory.
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    other = Installations(store, bridge.extras["secret_box"], bridge.settings, bridge.backends)
    clock = ManualClock(0)
    directory = TenantDirectory([], {})
    directory.set_fallback(other.tenant, ttl=5, monotonic=clock)
    assert directory.find(f"connect:{CLIENT}") is None
    installations_of(bridge).save(install_body())
    found = directory.find(f"connect:{CLIENT}")  # a miss is not cached: found at once
    assert found is not None and directory.get(f"connect:{CLIENT}") is found  # cached
    installations_of(bridge).remove(CLIENT)
    assert directory.find(f"connect:{CLIENT}") is found  # still cached for a moment
    clock.advance(5.1)
    assert directory.find(f"connect:{CLIENT}") is None
    assert directory.find("acme") is None  # not a Connect id: the store is not consulted
    store.close()


# --- Connect-JWT callers (Flask test client) ---------------------------------------------


@pytest.fixture
def app(bridge: Bridge) -> Flask:
    flask_app = create_app(bridge=bridge)

    def whoami() -> Any:
        caller = current_caller()
        return jsonify(tenant=caller.tenant_id, user=caller.user, admin=caller.admin)

    flask_app.add_url_rule("/ui/whoami", "whoami", whoami)
    flask_app.add_url_rule("/ui/context", "context", allow_context_qsh(lambda: whoami()))
    installations_of(bridge).save(install_body())
    installations_of(bridge).save(install_body(OTHER_CLIENT, sharedSecret=OTHER_SECRET))
    return flask_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def connect_jwt(
    method: str, path: str, user: str | None = ALICE, secret: str = SECRET, **claims: Any
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": CLIENT,
        "iat": now,
        "exp": now + 180,
        "qsh": query_string_hash(method, path),
    }
    if user is not None:
        body["sub"] = user
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


def whoami(client: FlaskClient, path: str = "/ui/whoami", **headers: str) -> Any:
    return client.get(path, headers=headers)


def test_a_connect_jwt_names_tenant_and_user(client: FlaskClient) -> None:
    response = whoami(client, Authorization=f"JWT {connect_jwt('GET', '/ui/whoami')}")
    assert response.get_json() == {"tenant": f"connect:{CLIENT}", "user": ALICE, "admin": False}
    # The query parameter works too; jwt itself is left out of the qsh.
    token = connect_jwt("GET", "/ui/whoami?b=2&a=1")
    response = client.get(f"/ui/whoami?b=2&a=1&jwt={token}")
    assert response.status_code == 200 and response.get_json()["user"] == ALICE
    # Without sub: an app token, which may act for any user.
    app_token = connect_jwt("GET", "/ui/whoami", user=None)
    response = whoami(client, Authorization=f"JWT {app_token}")
    assert response.get_json() == {"tenant": f"connect:{CLIENT}", "user": None, "admin": True}


def reason_of(response: Any) -> str:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    text = response.get_data(as_text=True)
    assert SECRET not in text and OTHER_SECRET not in text
    return str(response.get_json()["reason"])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: connect_jwt("GET", "/ui/other"), "qsh_mismatch"),
        (lambda: connect_jwt("POST", "/ui/whoami"), "qsh_mismatch"),
        (lambda: connect_jwt("GET", "/ui/whoami", exp=int(time.time()) - 60), "expired"),
        (lambda: connect_jwt("GET", "/ui/whoami", iat=int(time.time()) + 120), "iat_in_future"),
        (lambda: connect_jwt("GET", "/ui/whoami", secret=OTHER_SECRET), "bad_signature"),
        (lambda: connect_jwt("GET", "/ui/whoami", iss="unknown-client"), "unknown_installation"),
        (
            lambda: connect_jwt("GET", "/ui/whoami", iss=OTHER_CLIENT),  # B's id, A's secret
            "bad_signature",
        ),
        (lambda: connect_jwt("GET", "/ui/whoami", qsh=CONTEXT_QSH), "qsh_mismatch"),
        (lambda: connect_jwt("GET", "/ui/whoami", qsh=None), "missing_claim:qsh"),
        (lambda: connect_jwt("GET", "/ui/whoami", sub=""), "invalid_claim:sub"),
        (
            lambda: hand_token({"alg": "none"}, {"iss": CLIENT, "exp": int(time.time()) + 60}, b""),
            "alg_not_allowed",
        ),
        (lambda: "not.a.jwt", "malformed"),
    ],
)
def test_bad_connect_tokens_are_refused_with_a_reason(
    client: FlaskClient, make: Callable[[], str], reason: str
) -> None:
    assert reason_of(whoami(client, Authorization=f"JWT {make()}")) == reason


def test_header_and_query_token_together_are_refused(client: FlaskClient) -> None:
    token = connect_jwt("GET", "/ui/whoami")
    response = client.get(f"/ui/whoami?jwt={token}", headers={"Authorization": f"JWT {token}"})
    assert reason_of(response) == "ambiguous_credentials"


def test_context_tokens_only_where_a_view_opts_in(client: FlaskClient) -> None:
    token = connect_jwt("GET", "/anything", qsh=CONTEXT_QSH)
    response = whoami(client, "/ui/context", Authorization=f"JWT {token}")
    assert response.get_json() == {"tenant": f"connect:{CLIENT}", "user": ALICE, "admin": False}
    # A context token without sub (an anonymous viewer) is never an admin.
    anonymous = connect_jwt("GET", "/anything", user=None, qsh=CONTEXT_QSH)
    response = whoami(client, "/ui/context", Authorization=f"JWT {anonymous}")
    assert response.get_json()["admin"] is False
    assert reason_of(whoami(client, Authorization=f"JWT {token}")) == "qsh_mismatch"
    exports = client.post("/v1/exports", json={}, headers={"Authorization": f"JWT {token}"})
    assert reason_of(exports) == "qsh_mismatch"


def test_connect_users_may_not_export_as_someone_else(client: FlaskClient) -> None:
    body = {"backend": "scroll-macro", "format": "pdf", "source": {"pageId": "1"}, "asUser": BOB}
    token = connect_jwt("POST", "/v1/exports")
    response = client.post("/v1/exports", json=body, headers={"Authorization": f"JWT {token}"})
    assert response.status_code == 403, response.get_data(as_text=True)


def test_signed_lifecycle_routes(client: FlaskClient, app: Flask, keys: InstallKeyServer) -> None:
    app.extensions["connect_install_keys"] = InstallKeys(
        KEYS_URL, lambda url: keys.public_pem(url.removeprefix(KEYS_URL + "/"))
    )
    descriptor = client.get("/atlassian-connect.json").get_json()
    assert descriptor["baseUrl"] == APP
    body = install_body("client-3", sharedSecret=OTHER_SECRET)
    token = install_token(keys, time.time(), iss="client-3")
    response = client.post("/installed", json=body, headers={"Authorization": f"JWT {token}"})
    assert response.status_code == 204, response.get_data(as_text=True)
    jwt_3 = connect_jwt("GET", "/ui/whoami", iss="client-3", secret=OTHER_SECRET)
    assert whoami(client, Authorization=f"JWT {jwt_3}").get_json()["tenant"] == "connect:client-3"
    # The uninstall token is bound to /uninstalled: the install token does not do.
    gone = {"key": "confluence-export-bridge", "clientKey": "client-3", "baseUrl": SITE}
    response = client.post("/uninstalled", json=gone, headers={"Authorization": f"JWT {token}"})
    assert reason_of(response) == "qsh_mismatch"
    token = install_token(
        keys, time.time(), iss="client-3", qsh=query_string_hash("POST", "/uninstalled")
    )
    response = client.post("/uninstalled", json=gone, headers={"Authorization": f"JWT {token}"})
    assert response.status_code == 204
    assert reason_of(whoami(client, Authorization=f"JWT {jwt_3}")) == "unknown_installation"
    assert reason_of(client.post("/installed", json=body)) == "missing_credentials"
    response = client.post("/installed", data="x", headers={"Authorization": f"JWT {token}"})
    assert response.status_code == 400


def test_the_descriptor_subscribes_the_events_connect_rules_name() -> None:
    from bridge.config import load_settings
    from bridge.connect import build_descriptor

    settings = load_settings(
        connect_rules=[{"events": ["page_removed", "page_updated"], "format": "pdf"}]
    )
    events = [hook["event"] for hook in build_descriptor(settings)["modules"]["webhooks"]]
    assert events == ["page_created", "page_updated", "page_removed"]
