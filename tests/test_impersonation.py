"""User-impersonation tokens: the JWT bearer grant on the wire, caching, sharing, locking."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
import responses

from bridge.config import RetrySettings
from bridge.crypto import SecretBox, new_encryption_key
from bridge.errors import UpstreamRejectedError, UpstreamResponseError
from bridge.http import UpstreamClient
from bridge.impersonation import ConnectInstallation, ImpersonationTokens, cache_key
from bridge.sandbox.harness import ManualClock, ServerThread
from bridge.sandbox.oauth_server import OAuthSandbox
from bridge.stores.sqlite import SQLiteStore

SITE = "https://acme.atlassian.net/wiki"
CLIENT_ID = "acme-oauth-client"
SECRET = "acme-shared-secret-0123456789abcdef-0123456789"
ALICE, BOB = "557058:alice", "557058:bob"
PROD_AUTH = "https://oauth-2-authorization-server.services.atlassian.com"


class OAuth:
    """The OAuth sandbox on loopback, optionally answering slowly."""

    def __init__(self, clock: Callable[[], float], delay: float = 0.0) -> None:
        self.sandbox = OAuthSandbox(clock)
        self.delay = delay
        self.server = ServerThread(self._app).start()
        self.sandbox.set_public_url(self.server.url)
        self.sandbox.register_client(CLIENT_ID, SECRET, SITE, (ALICE, BOB))

    def _app(self, environ: Any, start_response: Any) -> Any:
        time.sleep(self.delay)
        return self.sandbox.app(environ, start_response)

    def installation(self, client_key: str = "acme") -> ConnectInstallation:
        return ConnectInstallation(client_key, SITE, CLIENT_ID, SECRET, self.server.url)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def oauth(clock: ManualClock) -> Iterator[OAuth]:
    running = OAuth(clock)
    yield running
    running.server.stop()


@pytest.fixture
def box() -> SecretBox:
    return SecretBox([new_encryption_key()])


@pytest.fixture
def make(tmp_path: Path, clock: ManualClock, box: SecretBox) -> Callable[..., ImpersonationTokens]:
    """A provider on the shared store file (a new store instance stands for a new process)."""

    def build(secret_box: SecretBox = box, **kwargs: Any) -> ImpersonationTokens:
        client = UpstreamClient("scroll-macro", RetrySettings(), sleep=lambda _: None)
        store = SQLiteStore(str(tmp_path / "store.sqlite3"))
        return ImpersonationTokens(client, store, secret_box, clock, **kwargs)

    return build


def test_the_token_acts_as_the_user_on_the_site(oauth: OAuth, make: Any) -> None:
    token = make().token(oauth.installation(), ALICE, ["READ"])
    info = oauth.sandbox.verify_access_token(token)
    assert info is not None
    assert (info.account_id, info.base_url, info.scopes) == (ALICE, SITE, frozenset({"READ"}))


@responses.activate
def test_the_grant_request_is_exactly_as_documented(make: Any, clock: ManualClock) -> None:
    responses.post(
        f"{PROD_AUTH}/oauth2/token",
        json={"access_token": "tok", "expires_in": 900, "token_type": "Bearer"},
    )
    installation = ConnectInstallation("acme", SITE, CLIENT_ID, SECRET)  # default server
    assert make().token(installation, ALICE, ["write", "READ", "read"]) == "tok"

    (call,) = responses.calls
    assert call.request.headers["Accept"] == "application/json"
    assert call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in call.request.headers
    form = {k: v[0] for k, v in parse_qs(str(call.request.body)).items()}
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert form["scope"] == "READ WRITE"
    assert jwt.get_unverified_header(form["assertion"])["alg"] == "HS256"
    claims = jwt.decode(
        form["assertion"], SECRET, algorithms=["HS256"], audience=PROD_AUTH, leeway=10**9
    )
    assert claims == {
        "iss": f"urn:atlassian:connect:clientid:{CLIENT_ID}",
        "sub": f"urn:atlassian:connect:useraccountid:{ALICE}",
        "tnt": SITE,
        "aud": PROD_AUTH,
        "iat": int(clock()),
        "exp": int(clock()) + 60,
    }


@responses.activate
def test_no_scopes_sends_no_scope_field(make: Any) -> None:
    responses.post(f"{PROD_AUTH}/oauth2/token", json={"access_token": "t", "expires_in": 900})
    make().token(ConnectInstallation("acme", SITE, CLIENT_ID, SECRET), ALICE, [])
    assert "scope" not in parse_qs(str(responses.calls[0].request.body))


def test_cached_until_shortly_before_expiry(oauth: OAuth, make: Any, clock: ManualClock) -> None:
    tokens = make(margin=60)
    first = tokens.token(oauth.installation(), ALICE, ["READ"])
    clock.advance(839)  # tokens live 900 s; 60 s margin
    assert tokens.token(oauth.installation(), ALICE, ["READ"]) == first
    clock.advance(2)
    assert tokens.token(oauth.installation(), ALICE, ["READ"]) != first
    assert oauth.sandbox.token_requests == Counter({ALICE: 2})


def test_each_tenant_user_and_scope_set_has_its_own_token(oauth: OAuth, make: Any) -> None:
    tokens = make()
    asks = [
        ("acme", ALICE, ["READ"]),
        ("acme", ALICE, ["read"]),  # the same scopes, spelled otherwise
        ("acme", ALICE, ["READ", "WRITE"]),
        ("acme", BOB, ["READ"]),
        ("other-install", ALICE, ["READ"]),
    ]
    got = [tokens.token(oauth.installation(key), user, scopes) for key, user, scopes in asks]
    assert got[0] == got[1]
    assert len(set(got)) == 4
    assert oauth.sandbox.token_requests == Counter({ALICE: 3, BOB: 1})


def test_processes_share_the_cache_through_the_store(oauth: OAuth, make: Any) -> None:
    first = make().token(oauth.installation(), ALICE, ["READ"])
    assert make().token(oauth.installation(), ALICE, ["READ"]) == first
    assert oauth.sandbox.token_requests[ALICE] == 1


def test_concurrent_first_requests_cost_one_token_request(clock: ManualClock, make: Any) -> None:
    slow = OAuth(clock, delay=0.3)
    try:
        results: list[str] = []
        providers = [make() for _ in range(8)]  # eight "processes"

        def ask(provider: ImpersonationTokens) -> None:
            results.append(provider.token(slow.installation(), ALICE, ["READ"]))

        threads = [threading.Thread(target=ask, args=(p,)) for p in providers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 8 and len(set(results)) == 1
        assert slow.sandbox.token_requests == Counter({ALICE: 1})
    finally:
        slow.server.stop()


def test_a_stuck_lock_holder_is_not_waited_for_forever(
    oauth: OAuth, make: Any, clock: ManualClock
) -> None:
    tokens = make(lock_seconds=0.3)
    key = cache_key(oauth.installation(), ALICE, ["READ"])
    tokens.store.add_value(key + ":lock", "a-crashed-process", clock(), ttl=600)
    began = time.monotonic()
    assert tokens.token(oauth.installation(), ALICE, ["READ"])
    assert 0.3 <= time.monotonic() - began < 3
    assert oauth.sandbox.token_requests[ALICE] == 1


def test_a_refused_grant_says_why_and_releases_the_lock(
    oauth: OAuth, make: Any, clock: ManualClock
) -> None:
    tokens = make()
    with pytest.raises(UpstreamRejectedError) as info:
        tokens.token(oauth.installation(), "557058:mallory", ["READ"])
    assert info.value.upstream_status == 400
    assert "557058:mallory" in info.value.message
    assert "invalid_grant: unknown subject" in info.value.message
    key = cache_key(oauth.installation(), "557058:mallory", ["READ"])
    assert tokens.store.get_value(key + ":lock", clock()) is None
    assert tokens.store.get_value(key, clock()) is None


def test_a_scope_the_app_lacks_is_refused(oauth: OAuth, make: Any) -> None:
    with pytest.raises(UpstreamRejectedError, match="invalid_scope"):
        make().token(oauth.installation(), ALICE, ["ADMIN"])


def test_the_store_holds_tokens_sealed_under_keys_that_name_no_one(
    oauth: OAuth, make: Any, tmp_path: Path
) -> None:
    token = make().token(oauth.installation(), ALICE, ["READ"])
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        rows = db.execute("SELECT key, value FROM kv").fetchall()
    assert len(rows) == 1
    key, value = rows[0]
    assert key.startswith("impersonation:") and ALICE not in key and "acme" not in key
    assert token not in value and ALICE not in value


def test_a_cache_sealed_under_a_retired_key_is_minted_afresh(oauth: OAuth, make: Any) -> None:
    make().token(oauth.installation(), ALICE, ["READ"])
    rotated = make(secret_box=SecretBox([new_encryption_key()]))
    assert rotated.token(oauth.installation(), ALICE, ["READ"])
    assert oauth.sandbox.token_requests[ALICE] == 2


def test_forget_drops_the_cached_token(oauth: OAuth, make: Any) -> None:
    tokens = make()
    first = tokens.token(oauth.installation(), ALICE, ["READ"])
    tokens.forget(oauth.installation(), ALICE, ["READ"])
    assert tokens.token(oauth.installation(), ALICE, ["READ"]) != first


def test_tokens_and_assertions_never_reach_the_logs(
    oauth: OAuth, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = make().token(oauth.installation(), ALICE, ["READ"])
    assert caplog.records and token not in caplog.text
    assert SECRET not in caplog.text and "eyJ" not in caplog.text


@responses.activate
@pytest.mark.parametrize(
    "body",
    [
        '{"access_token": "t", "expires_in": "soon"}',
        '{"access_token": "t", "expires_in": NaN}',
        '{"access_token": "t"}',
    ],
)
def test_an_unusable_lifetime_assumes_the_usual_one(make: Any, body: str) -> None:
    responses.post(f"{PROD_AUTH}/oauth2/token", body=body, content_type="application/json")
    tokens = make()
    installation = ConnectInstallation("acme", SITE, CLIENT_ID, SECRET)
    assert tokens.token(installation, ALICE) == tokens.token(installation, ALICE) == "t"
    assert len(responses.calls) == 1


@responses.activate
def test_a_token_too_short_lived_to_cache_is_still_used(make: Any) -> None:
    responses.post(f"{PROD_AUTH}/oauth2/token", json={"access_token": "t", "expires_in": 30})
    tokens = make(margin=60)
    installation = ConnectInstallation("acme", SITE, CLIENT_ID, SECRET)
    assert tokens.token(installation, ALICE) == tokens.token(installation, ALICE) == "t"
    assert len(responses.calls) == 2


@responses.activate
def test_a_busy_authorization_server_is_retried(make: Any) -> None:
    url = f"{PROD_AUTH}/oauth2/token"
    responses.post(url, status=503)
    responses.post(url, status=500)
    responses.post(url, json={"access_token": "t", "expires_in": 900})
    assert make().token(ConnectInstallation("acme", SITE, CLIENT_ID, SECRET), ALICE) == "t"
    assert len(responses.calls) == 3


@responses.activate
@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, {"token_type": "Bearer"}, UpstreamResponseError),
        (200, ["t"], UpstreamResponseError),
        (401, {"error": "invalid_client"}, UpstreamRejectedError),
        (403, "<html>denied</html>", UpstreamRejectedError),
    ],
)
def test_unusable_answers_are_errors(make: Any, status: int, body: Any, error: type) -> None:
    kwargs = {"json": body} if not isinstance(body, str) else {"body": body}
    responses.post(f"{PROD_AUTH}/oauth2/token", status=status, **kwargs)
    with pytest.raises(error) as info:
        make().token(ConnectInstallation("acme", SITE, CLIENT_ID, SECRET), ALICE)
    assert info.value.backend == "scroll-macro"


def test_a_short_shared_secret_cannot_sign(make: Any) -> None:
    installation = ConnectInstallation("acme", SITE, CLIENT_ID, "too-short")
    with pytest.raises(UpstreamRejectedError, match="cannot sign"):
        make().token(installation, ALICE)


@pytest.mark.parametrize(
    ("site", "override", "server"),
    [
        (SITE, None, PROD_AUTH),
        ("https://acme.jira-dev.com/wiki", None, PROD_AUTH.replace(".services", ".stg.services")),
        (SITE, "https://auth.atlassian.io/", "https://auth.atlassian.io"),
    ],
)
def test_the_authorization_server_follows_the_host_unless_overridden(
    site: str, override: str | None, server: str
) -> None:
    installation = ConnectInstallation("acme", site, CLIENT_ID, SECRET, override)
    assert installation.authorization_server == server
    assert SECRET not in repr(installation)
