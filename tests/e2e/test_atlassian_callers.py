"""End to end over loopback: a simulated Confluence Cloud site installs the bridge as a Connect
app (signed install, keys from the sandbox key server), its users export as themselves with
Connect JWTs; a Forge app exports as its invoking user with a FIT and the user's own token."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests

from bridge.atlassian_jwt import impersonation_assertion, query_string_hash
from bridge.installations import Installations
from bridge.sandbox.atlassian_keys import ConnectSite, ForgeInvoker
from bridge.sandbox.oauth_server import GRANT_TYPE
from bridge.sandbox.suite import (
    CLIENT_KEY,
    DEMO_TEMPLATES,
    OAUTH_CLIENT_ID,
    SHARED_SECRET,
    USERS,
    SandboxSuite,
)
from tests.conftest import RunningBridge, tenants_for
from tests.test_atlassian_jwt import forge as hand_token

ALICE, BOB = USERS
APP_KEY = "confluence-export-bridge"
FORGE_APP = "0b1c2d3e-0000-4000-8000-00000000f00d"
INSTALLATION = "ari:cloud:ecosystem::installation/0b1c2d3e-1111-4000-8000-000000000001"
NEW_SECRET = "reinstalled-shared-secret-0123456789-abcdefghij"
EXPORT = {"backend": "scroll-macro", "format": "pdf", "source": {"pageId": "1002"}}


@pytest.fixture
def bridge(start_bridge: Callable[..., RunningBridge], suite: SandboxSuite) -> RunningBridge:
    """A bridge trusting the sandbox's Atlassian keys; tenant acme has the Forge install."""
    tenants = tenants_for(suite)
    tenants[0]["forge_installations"] = [INSTALLATION]
    return start_bridge(
        tenants=tenants,
        connect_keys_url=suite.url("connect-install-keys"),
        forge_jwks_url=f"{suite.url('forge-jwks')}/.well-known/jwks.json",
        forge_app_ids=[FORGE_APP],
        connect_backends={
            "scroll-macro": {"auth_server": suite.url("oauth"), "templates": DEMO_TEMPLATES}
        },
    )


def install(suite: SandboxSuite, bridge: RunningBridge, secret: str = SHARED_SECRET) -> None:
    response = suite.connect_site.install(
        bridge.url, APP_KEY, CLIENT_KEY, secret, suite.site_url, OAUTH_CLIENT_ID
    )
    assert response.status_code == 204, response.text


def stored(bridge: RunningBridge) -> Installations:
    value: Installations = bridge.bridge.extras["installations"]
    return value


def as_connect_user(
    suite: SandboxSuite, bridge: RunningBridge, method: str, path: str, user: str | None = ALICE
) -> requests.Response:
    """One request as the site's user, with a Connect JWT made for exactly this request."""
    token = suite.connect_site.jwt_for(method, path, user)
    body = {**EXPORT} if method == "POST" else None
    return requests.request(
        method, bridge.url + path, json=body, headers={"Authorization": f"JWT {token}"}, timeout=10
    )


def wait_done(poll: Callable[[], requests.Response], timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = poll()
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["state"] in ("complete", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def download(job: dict[str, Any]) -> bytes:
    response = requests.get(job["download"]["url"], timeout=10)
    assert response.status_code == 200
    return response.content


def test_an_installed_site_exports_as_its_user(suite: SandboxSuite, bridge: RunningBridge) -> None:
    descriptor = requests.get(f"{bridge.url}/atlassian-connect.json", timeout=10).json()
    assert descriptor["baseUrl"] == bridge.url and descriptor["key"] == APP_KEY
    install(suite, bridge)
    response = as_connect_user(suite, bridge, "POST", "/v1/exports")  # no asUser
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    job = wait_done(lambda: as_connect_user(suite, bridge, "GET", f"/v1/exports/{job_id}"))
    assert job["state"] == "complete", job
    assert job["asUser"] == ALICE
    assert download(job).startswith(b"%PDF-")
    renders = [c for c in suite.cloud.calls if "/contentbody/convert" in c.path]
    assert renders and {c.account_id for c in renders} == {ALICE}
    # A Connect user (not an admin) may not export as someone else.
    token = suite.connect_site.jwt_for("POST", "/v1/exports", ALICE)
    response = requests.post(
        f"{bridge.url}/v1/exports",
        json={**EXPORT, "asUser": BOB},
        headers={"Authorization": f"JWT {token}"},
        timeout=10,
    )
    assert response.status_code == 403, response.text


def test_a_forge_app_exports_as_its_principal(suite: SandboxSuite, bridge: RunningBridge) -> None:
    now = int(time.time())
    assertion = impersonation_assertion(
        oauth_client_id=OAUTH_CLIENT_ID,
        account_id=BOB,
        base_url=suite.site_url,
        audience=suite.url("oauth"),
        shared_secret=SHARED_SECRET,
        now=now,
    )
    grant = suite.oauth.grant(
        {"grant_type": GRANT_TYPE, "assertion": assertion}, suite.url("oauth")
    )
    user_token = str(grant["access_token"])
    minted = suite.oauth.token_requests[BOB]
    invoker = ForgeInvoker(suite.forge_jwks, FORGE_APP)
    api_base = suite.url("confluence-cloud")  # the backend adds /wiki/rest/api

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        fit = invoker.fit(INSTALLATION, api_base, BOB)
        return invoker.invoke(method, bridge.url + path, fit, user_token=user_token, **kwargs)

    response = call("POST", "/v1/exports", json=EXPORT)
    assert response.status_code == 202, response.text
    job = wait_done(lambda: call("GET", f"/v1/exports/{response.json()['id']}"))
    assert job["state"] == "complete" and job["asUser"] == BOB, job
    assert download(job).startswith(b"%PDF-")
    assert suite.oauth.token_requests[BOB] == minted  # the caller's token, no impersonation
    renders = [c for c in suite.cloud.calls if "/contentbody/convert" in c.path]
    assert renders and {c.account_id for c in renders} == {BOB}
    # The sandbox key server and JWKS were really asked (and the JWKS only once).
    assert suite.forge_jwks.requests["jwks"] == 1


def reason(response: requests.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert SHARED_SECRET not in response.text
    return str(response.json()["reason"])


def test_bad_caller_tokens_are_refused(suite: SandboxSuite, bridge: RunningBridge) -> None:
    install(suite, bridge)
    site = suite.connect_site
    now = int(time.time())
    pem = suite.forge_jwks.public_pem(suite.forge_jwks.current_kid)
    assert pem is not None
    invoker = ForgeInvoker(suite.forge_jwks, FORGE_APP)
    fit = invoker.fit(INSTALLATION, suite.url("confluence-cloud"), ALICE)
    fit_claims = jwt.decode(fit, options={"verify_signature": False})
    connect_claims = {"iss": CLIENT_KEY, "sub": ALICE, "iat": now, "exp": now + 60}
    qsh = query_string_hash("GET", "/v1/exports/x")
    cases = {
        "qsh_mismatch": f"JWT {site.jwt_for('GET', '/v1/exports/y', ALICE)}",
        "expired": f"JWT {site.jwt_for('GET', '/v1/exports/x', ALICE, exp=now - 100)}",
        "bad_signature": "JWT "
        + jwt.encode({**connect_claims, "qsh": qsh}, "another-secret-" * 3, algorithm="HS256"),
        "alg_not_allowed": f"JWT {hand_token({'alg': 'none'}, {**connect_claims, 'qsh': qsh})}",
        "iat_in_future": f"JWT {site.jwt_for('GET', '/v1/exports/x', ALICE, iat=now + 300)}",
        "unknown_installation": f"JWT {site.jwt_for('GET', '/v1/exports/x', ALICE, iss='other')}",
    }
    for expected, header in cases.items():
        response = requests.get(
            f"{bridge.url}/v1/exports/x", headers={"Authorization": header}, timeout=10
        )
        assert reason(response) == expected, expected
    forge_cases = {
        # RS/HS confusion: HS256 signed with the JWKS public key as the secret.
        "alg_not_allowed": hand_token(
            {"alg": "HS256", "kid": suite.forge_jwks.current_kid}, fit_claims, pem.encode()
        ),
        "expired": invoker.fit(INSTALLATION, suite.url("confluence-cloud"), ALICE, exp=now - 100),
        "unknown_installation": invoker.fit(
            INSTALLATION.replace("0001", "0002"), suite.url("confluence-cloud"), ALICE
        ),
    }
    for expected, token in forge_cases.items():
        response = requests.get(
            f"{bridge.url}/v1/exports/x", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert reason(response) == expected, expected


def test_bad_installs_store_nothing(suite: SandboxSuite, bridge: RunningBridge) -> None:
    site: ConnectSite = suite.connect_site
    payload = site.lifecycle_payload(
        "installed",
        APP_KEY,
        CLIENT_KEY,
        suite.site_url,
        sharedSecret=SHARED_SECRET,
        oauthClientId=OAUTH_CLIENT_ID,
    )
    now = int(time.time())
    hs256 = jwt.encode(
        {"iss": CLIENT_KEY, "aud": [bridge.url], "exp": now + 60, "qsh": "x"},
        SHARED_SECRET,
        algorithm="HS256",
    )
    cases = {
        "invalid_claim:aud": site.lifecycle_token("http://elsewhere", "installed", CLIENT_KEY),
        "qsh_mismatch": site.lifecycle_token(bridge.url, "uninstalled", CLIENT_KEY),
        "issuer_mismatch": site.lifecycle_token(bridge.url, "installed", "another-client"),
        "alg_not_allowed": hs256,
        # Signed by a key the key server never published.
        "unknown_kid": jwt.encode(
            {"iss": CLIENT_KEY, "aud": [bridge.url], "exp": now + 60, "qsh": "x"},
            suite.install_keys.private_key(),
            algorithm="RS256",
            headers={"kid": "sandbox-install/never-published"},
        ),
    }
    for expected, token in cases.items():
        assert reason(site.post_lifecycle(bridge.url, "installed", payload, token)) == expected
    assert stored(bridge).get(CLIENT_KEY) is None
    assert suite.install_keys.requests["sandbox-install/never-published"] == 1


def test_reinstall_updates_uninstall_removes_and_the_secret_is_sealed(
    suite: SandboxSuite, bridge: RunningBridge, tmp_path: Any
) -> None:
    install(suite, bridge)
    old = suite.connect_site.jwt_for("GET", "/v1/exports/x", ALICE)
    install(suite, bridge, secret=NEW_SECRET)
    installation = stored(bridge).get(CLIENT_KEY)
    assert installation is not None and installation.shared_secret == NEW_SECRET
    response = requests.get(
        f"{bridge.url}/v1/exports/x", headers={"Authorization": f"JWT {old}"}, timeout=10
    )
    assert reason(response) == "bad_signature"
    fresh = suite.connect_site.jwt_for("GET", "/v1/exports/x", ALICE)
    response = requests.get(
        f"{bridge.url}/v1/exports/x", headers={"Authorization": f"JWT {fresh}"}, timeout=10
    )
    assert response.status_code == 404  # authenticated; there is no such job
    database = (tmp_path / "bridge.sqlite3").read_bytes()
    assert NEW_SECRET.encode() not in database and SHARED_SECRET.encode() not in database
    response = suite.connect_site.uninstall(CLIENT_KEY)
    assert response.status_code == 204, response.text
    assert stored(bridge).get(CLIENT_KEY) is None
    token = jwt.encode(
        {
            "iss": CLIENT_KEY,
            "sub": ALICE,
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
            "qsh": query_string_hash("GET", "/v1/exports/x"),
        },
        NEW_SECRET,
        algorithm="HS256",
    )
    response = requests.get(
        f"{bridge.url}/v1/exports/x", headers={"Authorization": f"JWT {token}"}, timeout=10
    )
    assert reason(response) == "unknown_installation"
