"""The simulated Atlassian OAuth 2.0 server: JWT bearer grant, over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.sandbox.harness import ManualClock, ServerThread
from bridge.sandbox.oauth_server import GRANT_TYPE, OAuthSandbox

SECRET = "shared-secret-of-the-connect-app-0123456789abcdef"
TENANT = "http://127.0.0.1:9/wiki"
CLIENT_ID = "oauth-client-1"
T0 = 1_700_000_000.0


@dataclass
class Server:
    sandbox: OAuthSandbox
    url: str
    clock: ManualClock

    def claims(self, **overrides: object) -> dict[str, object]:
        now = int(self.clock())
        claims: dict[str, object] = {
            "iss": f"urn:atlassian:connect:clientid:{CLIENT_ID}",
            "sub": "urn:atlassian:connect:useraccountid:acc-1",
            "tnt": TENANT,
            "aud": self.url,
            "iat": now,
            "exp": now + 60,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def post(self, assertion: str, **fields: str) -> requests.Response:
        data = {"grant_type": GRANT_TYPE, "assertion": assertion, **fields}
        return requests.post(f"{self.url}/oauth2/token", data=data, timeout=5)


class SwappableApp:
    """One loopback server for the module; each test plugs in a fresh sandbox app."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def loopback() -> Iterator[tuple[SwappableApp, str]]:
    swap = SwappableApp()
    with ServerThread(swap) as thread:
        yield swap, thread.url


@pytest.fixture
def server(loopback: tuple[SwappableApp, str]) -> Server:
    swap, url = loopback
    clock = ManualClock(T0)
    sandbox = OAuthSandbox(clock)
    sandbox.set_public_url(url)
    sandbox.register_client(CLIENT_ID, SECRET, TENANT, ["acc-1", "acc-2"])
    swap.app = sandbox.app
    return Server(sandbox, url, clock)


def sign(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def test_grant_issues_a_bearer_token_for_the_user(server: Server) -> None:
    reply = server.post(sign(server.claims()))

    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert reply.headers["Cache-Control"] == "no-store"
    info = server.sandbox.verify_access_token(body["access_token"])
    assert info is not None
    assert (info.account_id, info.base_url, info.client_id) == ("acc-1", TENANT, CLIENT_ID)
    assert info.scopes == frozenset({"READ", "WRITE", "ACT_AS_USER"})
    assert info.expires_at == T0 + 900
    assert server.sandbox.token_requests == {"acc-1": 1}


def test_token_expires_by_the_clock(server: Server) -> None:
    token = server.post(sign(server.claims())).json()["access_token"]

    server.clock.advance(899)
    assert server.sandbox.verify_access_token(token) is not None
    server.clock.advance(1)
    assert server.sandbox.verify_access_token(token) is None
    assert server.sandbox.verify_access_token("made-up") is None


def test_requested_scopes_narrow_the_token(server: Server) -> None:
    token = server.post(sign(server.claims()), scope="READ ACT_AS_USER").json()["access_token"]
    info = server.sandbox.verify_access_token(token)
    assert info is not None
    assert info.scopes == frozenset({"READ", "ACT_AS_USER"})

    reply = server.post(sign(server.claims()), scope="READ ADMIN")
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_scope"


def _rsa_signed(claims: dict[str, object]) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256")


@pytest.mark.parametrize(
    ("make_assertion", "described_as"),
    [
        (lambda s: sign(s.claims(), "another-secret-that-is-long-enough-000000"), "signature"),
        (lambda s: sign(s.claims(aud="https://auth.atlassian.io")), "aud"),
        (lambda s: sign(s.claims(tnt="http://127.0.0.1:9/other")), "tnt"),
        (
            lambda s: sign(s.claims(sub="urn:atlassian:connect:useraccountid:stranger")),
            "subject",
        ),
        (lambda s: sign(s.claims(sub="urn:atlassian:connect:userkey:acc-1")), "subject"),
        (lambda s: sign(s.claims(iat=int(s.clock()) - 100, exp=int(s.clock()) - 40)), "expired"),
        (lambda s: sign(s.claims(exp=int(s.clock()) + 121)), "exp - iat"),
        (lambda s: sign(s.claims(exp=None)), "exp claim"),
        (lambda s: sign(s.claims(iat=int(s.clock()) + 31, exp=int(s.clock()) + 60)), "future"),
        (lambda s: jwt.encode(s.claims(), "", algorithm="none"), "alg"),
        (lambda s: _rsa_signed(s.claims()), "alg"),
        (lambda s: "not-a-jwt", "malformed"),
    ],
    ids=[
        "bad-signature",
        "wrong-aud",
        "wrong-tnt",
        "unknown-sub",
        "legacy-userkey-sub",
        "expired",
        "lifetime-too-long",
        "no-exp",
        "iat-in-future",
        "alg-none",
        "rs256",
        "garbage",
    ],
)
def test_bad_assertions_are_invalid_grants(
    server: Server, make_assertion: Callable[[Server], str], described_as: str
) -> None:
    reply = server.post(make_assertion(server))

    assert reply.status_code == 400
    body = reply.json()
    assert body["error"] == "invalid_grant"
    assert described_as in body["error_description"]
    assert server.sandbox.token_requests == {}
    assert server.sandbox.rejections == [body["error_description"]]


def test_leeway_tolerates_small_clock_skew(server: Server) -> None:
    now = int(server.clock())
    assert server.post(sign(server.claims(iat=now + 30, exp=now + 90))).status_code == 200
    assert server.post(sign(server.claims(iat=now - 80, exp=now - 20))).status_code == 200


def test_unknown_client_is_invalid_client(server: Server) -> None:
    claims = server.claims(iss="urn:atlassian:connect:clientid:nobody")
    reply = server.post(sign(claims))

    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"


def test_request_must_be_a_form_with_the_jwt_bearer_grant(server: Server) -> None:
    as_json = requests.post(
        f"{server.url}/oauth2/token",
        json={"grant_type": GRANT_TYPE, "assertion": sign(server.claims())},
        timeout=5,
    )
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "invalid_request"

    wrong_grant = server.post(sign(server.claims()), grant_type="client_credentials")
    assert wrong_grant.status_code == 400
    assert wrong_grant.json()["error"] == "unsupported_grant_type"

    missing = requests.post(
        f"{server.url}/oauth2/token", data={"grant_type": GRANT_TYPE}, timeout=5
    )
    assert missing.json()["error"] == "invalid_request"


def test_app_without_act_as_user_cannot_impersonate(server: Server) -> None:
    server.sandbox.register_client(CLIENT_ID, SECRET, TENANT, ["acc-1"], scopes={"READ"})
    reply = server.post(sign(server.claims()))

    assert reply.status_code == 400
    assert reply.json()["error"] == "unauthorized_client"


def test_aud_defaults_to_the_url_the_request_came_in_on() -> None:
    sandbox = OAuthSandbox(ManualClock(T0))
    sandbox.register_client(CLIENT_ID, SECRET, TENANT, ["acc-1"])
    client = sandbox.app.test_client()
    claims: dict[str, object] = {
        "iss": f"urn:atlassian:connect:clientid:{CLIENT_ID}",
        "sub": "urn:atlassian:connect:useraccountid:acc-1",
        "tnt": TENANT,
        "iat": int(T0),
        "exp": int(T0) + 60,
    }

    def grant(aud: str) -> int:
        data = {"grant_type": GRANT_TYPE, "assertion": sign({**claims, "aud": aud})}
        return client.post("/oauth2/token", data=data).status_code

    assert sandbox.audience is None
    assert grant("http://localhost") == 200
    assert grant("https://oauth-2-authorization-server.services.atlassian.com") == 400


def test_register_client_rejects_weak_secrets_and_unknown_scopes() -> None:
    sandbox = OAuthSandbox()
    with pytest.raises(ValueError, match="at least"):
        sandbox.register_client(CLIENT_ID, "short", TENANT, ["acc-1"])
    with pytest.raises(ValueError, match="scopes"):
        sandbox.register_client(CLIENT_ID, SECRET, TENANT, ["acc-1"], scopes={"read"})
