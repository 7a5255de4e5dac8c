"""Simulated Atlassian OAuth 2.0 authorization server: the JWT bearer grant for Connect apps.

Contract: ``upstreams.md`` §4.4 (AOAUTH2, ACE ``internal/oauth2.js``, Atlassian's "OAuth 2.0
JWT bearer tokens for apps"). A Connect app with the ``ACT_AS_USER`` scope signs an HS256
assertion with its ``sharedSecret`` and trades it at ``POST /oauth2/token`` for a bearer
token that acts as one user on one tenant. Choices the sources leave open:

* the assertion may live at most ``max_assertion_lifetime`` (120 s) from ``iat`` to ``exp``
  (a third-party claim, UNCONFIRMED); ``iat`` and ``exp`` get ``leeway`` seconds of skew;
* tokens live ``token_lifetime`` seconds (900 s, seen only in ACE test mocks, UNCONFIRMED)
  and are opaque random strings, checked in process by :meth:`OAuthSandbox.verify_access_token`;
* ``aud`` must equal this server's base URL (set by :meth:`OAuthSandbox.set_public_url`, else
  the URL the request came in on); a trailing ``/`` on either side is ignored (UNCONFIRMED);
* ``scope`` is optional and space-separated; each scope must be one the app's descriptor
  declares, spelled exactly (uppercase, as AOAUTH2 sends it); without it the token carries
  all the app's scopes (ACE never sends ``scope``). Exact matching is UNCONFIRMED;
* errors follow RFC 6749 §5.2: 400 ``invalid_request`` / ``unsupported_grant_type`` /
  ``invalid_grant`` / ``invalid_scope`` / ``unauthorized_client``, 401 ``invalid_client``,
  each with an ``error_description`` naming the failed check.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import jwt
from flask import Flask, Response, jsonify, request

from bridge.sandbox.harness import Clock

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ISS_PREFIX = "urn:atlassian:connect:clientid:"
SUB_PREFIX = "urn:atlassian:connect:useraccountid:"
CONNECT_SCOPES = frozenset(
    {"READ", "WRITE", "DELETE", "ADMIN", "SPACE_ADMIN", "PROJECT_ADMIN", "ACT_AS_USER"}
)
DEFAULT_APP_SCOPES = frozenset({"READ", "WRITE", "ACT_AS_USER"})
_MIN_SECRET_BYTES = 32
"""HS256 keys shorter than this draw a PyJWT warning; real Connect secrets are longer."""


@dataclass(frozen=True)
class AccessTokenInfo:
    """What an issued access token stands for."""

    account_id: str
    base_url: str
    scopes: frozenset[str]
    expires_at: float
    client_id: str


@dataclass(frozen=True)
class _Client:
    """An installed Connect app as the authorization server knows it."""

    oauth_client_id: str
    shared_secret: str
    base_url: str
    users: frozenset[str]
    scopes: frozenset[str]


class GrantError(Exception):
    """A rejected token request: HTTP status, RFC 6749 error code and description."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


class OAuthSandbox:
    """The authorization server: registered apps, issued tokens, and the Flask ``app``."""

    def __init__(
        self,
        clock: Clock = time.time,
        *,
        token_lifetime: int = 900,
        max_assertion_lifetime: int = 120,
        leeway: int = 30,
    ) -> None:
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.max_assertion_lifetime = max_assertion_lifetime
        self.leeway = leeway
        self.token_requests: Counter[str] = Counter()
        """Access tokens issued, per accountId."""
        self.rejections: list[str] = []
        """The ``error_description`` of every rejected token request, in order."""
        self._public_url: str | None = None
        self._clients: dict[str, _Client] = {}
        self._tokens: dict[str, AccessTokenInfo] = {}
        self._lock = threading.Lock()
        self.app = self._make_app()

    # -- setup -----------------------------------------------------------------------

    def set_public_url(self, url: str) -> None:
        """Fix the base URL clients reach this server at (the value ``aud`` must carry)."""
        self._public_url = url.rstrip("/")

    @property
    def audience(self) -> str | None:
        """The required ``aud``; ``None`` means "the base URL of each incoming request"."""
        return self._public_url

    def register_client(
        self,
        oauth_client_id: str,
        shared_secret: str,
        base_url: str,
        users: Collection[str],
        scopes: Collection[str] = DEFAULT_APP_SCOPES,
    ) -> None:
        """Record an installed Connect app: its secret, tenant, known users, descriptor scopes."""
        if len(shared_secret.encode()) < _MIN_SECRET_BYTES:
            raise ValueError(f"shared_secret must be at least {_MIN_SECRET_BYTES} bytes")
        unknown = set(scopes) - CONNECT_SCOPES
        if unknown:
            raise ValueError(f"unknown Connect scopes: {sorted(unknown)}")
        client = _Client(
            oauth_client_id,
            shared_secret,
            base_url.rstrip("/"),
            frozenset(users),
            frozenset(scopes),
        )
        with self._lock:
            self._clients[oauth_client_id] = client

    # -- in-process API for the product sandboxes ------------------------------------

    def verify_access_token(self, token: str) -> AccessTokenInfo | None:
        """The token's grant if it was issued here and has not expired, else ``None``."""
        with self._lock:
            info = self._tokens.get(token)
            if info is None:
                return None
            if self.clock() >= info.expires_at:
                del self._tokens[token]
                return None
            return info

    # -- the grant -------------------------------------------------------------------

    def grant(self, form: Mapping[str, str], request_base_url: str) -> dict[str, object]:
        """Check a token request's form fields; return the token response or raise GrantError."""
        if form.get("grant_type") != GRANT_TYPE:
            raise GrantError(400, "unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        assertion = form.get("assertion")
        if not assertion:
            raise GrantError(400, "invalid_request", "missing assertion")
        client, claims = self._verify_signature(assertion)
        account_id = self._check_claims(client, claims, request_base_url)
        scopes = self._granted_scopes(client, form.get("scope"))
        token = secrets.token_urlsafe(32)
        info = AccessTokenInfo(
            account_id=account_id,
            base_url=client.base_url,
            scopes=scopes,
            expires_at=self.clock() + self.token_lifetime,
            client_id=client.oauth_client_id,
        )
        with self._lock:
            self._tokens[token] = info
            self.token_requests[account_id] += 1
        return {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}

    def _verify_signature(self, assertion: str) -> tuple[_Client, dict[str, object]]:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise GrantError(400, "invalid_grant", f"malformed assertion: {exc}") from exc
        if header.get("alg") != "HS256":
            raise GrantError(
                400, "invalid_grant", f"unsupported assertion alg {header.get('alg')!r}"
            )
        iss = unverified.get("iss")
        client_id = iss[len(ISS_PREFIX) :] if isinstance(iss, str) else ""
        with self._lock:
            client = self._clients.get(client_id) if iss == ISS_PREFIX + client_id else None
        if client is None:
            raise GrantError(401, "invalid_client", f"unknown client (iss {iss!r})")
        try:
            claims: dict[str, object] = jwt.decode(
                assertion,
                client.shared_secret,
                algorithms=["HS256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise GrantError(400, "invalid_grant", "assertion signature is invalid") from exc
        except jwt.PyJWTError as exc:
            raise GrantError(400, "invalid_grant", f"malformed assertion: {exc}") from exc
        return client, claims

    def _check_claims(
        self, client: _Client, claims: Mapping[str, object], request_base_url: str
    ) -> str:
        """Check sub, tnt, aud and the times; return the accountId."""
        sub = claims.get("sub")
        account_id = sub[len(SUB_PREFIX) :] if isinstance(sub, str) else ""
        if sub != SUB_PREFIX + account_id or account_id not in client.users:
            raise GrantError(400, "invalid_grant", f"unknown subject {sub!r}")
        tnt = claims.get("tnt")
        if not isinstance(tnt, str) or tnt.rstrip("/") != client.base_url:
            raise GrantError(400, "invalid_grant", f"tnt {tnt!r} is not the app's tenant")
        expected_aud = self._public_url or request_base_url.rstrip("/")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a.rstrip("/") == expected_aud for a in auds):
            raise GrantError(400, "invalid_grant", f"aud {aud!r} is not {expected_aud}")
        iat, exp = _number_claim(claims, "iat"), _number_claim(claims, "exp")
        now = self.clock()
        if iat > now + self.leeway:
            raise GrantError(400, "invalid_grant", "iat is in the future")
        if exp - iat > self.max_assertion_lifetime:
            raise GrantError(
                400, "invalid_grant", f"exp - iat exceeds {self.max_assertion_lifetime} s"
            )
        if exp <= now - self.leeway:
            raise GrantError(400, "invalid_grant", "assertion has expired")
        return account_id

    def _granted_scopes(self, client: _Client, requested: str | None) -> frozenset[str]:
        if "ACT_AS_USER" not in client.scopes:
            raise GrantError(400, "unauthorized_client", "the app lacks the ACT_AS_USER scope")
        if requested is None or not requested.strip():
            return client.scopes
        wanted = frozenset(requested.split())
        missing = wanted - client.scopes
        if missing:
            raise GrantError(
                400, "invalid_scope", f"scopes not granted to the app: {sorted(missing)}"
            )
        return wanted

    # -- HTTP ------------------------------------------------------------------------

    def _make_app(self) -> Flask:
        app = Flask(__name__)

        @app.post("/oauth2/token")
        def token() -> Response:
            try:
                if request.mimetype != "application/x-www-form-urlencoded":
                    raise GrantError(
                        400, "invalid_request", "body must be application/x-www-form-urlencoded"
                    )
                body = self.grant(request.form.to_dict(), request.host_url)
            except GrantError as exc:
                with self._lock:
                    self.rejections.append(exc.description)
                reply = jsonify({"error": exc.error, "error_description": exc.description})
                reply.status_code = exc.status
            else:
                reply = jsonify(body)
            reply.headers["Cache-Control"] = "no-store"
            return reply

        return app


def _number_claim(claims: Mapping[str, object], name: str) -> float:
    value = claims.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise GrantError(400, "invalid_grant", f"{name} claim missing or not a number")
    return float(value)
