"""Forge Remote: verifying Forge Invocation Tokens (FITs).

Contract: upstreams.md §5.4 (Atlassian's Forge Remote invocation contract; ACE
``verify-forge-invocation-token.js``). A Forge app calls the bridge with
``Authorization: Bearer <FIT>``: an RS256 JWT signed with a key from Atlassian's JWKS
(``forge_jwks_url``; the staging JWKS when ``app.apiBaseUrl`` is on ``api.stg.atlassian.com``
and the URL is left at its default), with ``iss = "forge/invocation-token"`` and
``aud = "ari:cloud:ecosystem::app/<appId>"`` for an app listed in ``forge_app_ids``.
``exp``, ``iat`` and ``app`` are required; ``nbf`` is checked when present (a third-party
verifier requires it; whether Atlassian always sends it is UNCONFIRMED). The claims used:
``app.id``, ``app.installationId``, ``app.apiBaseUrl`` and ``principal`` (the user's
accountId; absent for app-level invocations such as scheduled triggers).

JWKS are cached per URL; an unknown ``kid`` refetches them at most once per ``min_refetch``
seconds (60), so a stream of made-up ``kid`` values cannot turn into a stream of fetches.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from bridge import rs256
from bridge.config import Settings
from bridge.errors import AuthenticationError, UpstreamError
from bridge.http import UpstreamClient

FIT_ISSUER: Final = "forge/invocation-token"
APP_ARI_PREFIX: Final = "ari:cloud:ecosystem::app/"
PROD_JWKS_URL: Final = "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json"
STAGING_JWKS_URL: Final = "https://forge.cdn.stg.atlassian-dev.net/.well-known/jwks.json"
STAGING_API_PREFIX: Final = "https://api.stg.atlassian.com/"
MAX_JWKS_BYTES: Final = 256 * 1024
_REQUIRED: Final = ("iss", "aud", "exp", "iat", "app")
_RETRY_FAILED_FETCH: Final = 5.0


def app_ari(app_id: str) -> str:
    """The app's ARI (``aud`` of its FITs); a bare app id gets the ARI prefix, as in ACE."""
    return app_id if app_id.startswith(APP_ARI_PREFIX) else APP_ARI_PREFIX + app_id


def is_fit(token: str) -> bool:
    """Whether *token* looks like a FIT (a JWT whose unverified ``iss`` is Forge's); used only
    to choose how to authenticate, never to trust it."""
    if token.count(".") != 2:
        return False
    try:
        return rs256.unverified_claims(token).get("iss") == FIT_ISSUER
    except AuthenticationError:
        return False


@dataclass(frozen=True)
class ForgeInvocation:
    """A verified Forge invocation."""

    app_id: str
    installation_id: str
    """``ari:cloud:ecosystem::installation/<uuid>``: decides the tenant."""
    api_base_url: str
    """Where product calls for this invocation go (``https://api.atlassian.com/ex/confluence/…``)."""
    principal: str | None
    """The user's accountId; ``None`` for an app-level invocation."""
    cloud_id: str | None
    claims: dict[str, Any]


class JWKSKeys:
    """The RSA keys of one JWKS URL, by ``kid``."""

    def __init__(
        self,
        url: str,
        fetch: Callable[[str], object],
        clock: Callable[[], float] = time.monotonic,
        min_refetch: float = 60.0,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self.min_refetch = min_refetch
        self._keys: dict[str, RSAPublicKey] = {}
        self._next_fetch: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def key(self, kid: str) -> RSAPublicKey:
        """The key for *kid*, refetching the set (rate-limited) when *kid* is unknown.

        :raises AuthenticationError: ``unknown_kid`` or ``jwks_unavailable``.
        """
        with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            now = self._clock()
            if self._next_fetch is not None and now < self._next_fetch:
                raise rs256.refuse("unknown_kid", "The token's signing key is unknown.")
            # Fetch under the lock: concurrent callers with a new kid cost one fetch.
            self.fetches += 1
            try:
                data = self._fetch(self.url)
            except AuthenticationError:
                self._next_fetch = now + min(_RETRY_FAILED_FETCH, self.min_refetch)
                raise
            self._next_fetch = now + self.min_refetch
            self._keys = _rsa_keys(data)
            key = self._keys.get(kid)
        if key is None:
            raise rs256.refuse("unknown_kid", "The token's signing key is unknown.")
        return key


def _rsa_keys(data: object) -> dict[str, RSAPublicKey]:
    """The usable RSA signing keys of a JWKS document (others are skipped)."""
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise rs256.refuse("jwks_unavailable", "The Forge key set is unreadable.")
    keys: dict[str, RSAPublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        try:
            key = jwt.PyJWK(entry).key
        except jwt.PyJWTError:
            continue
        if isinstance(kid, str) and isinstance(key, RSAPublicKey):
            keys[kid] = key
    return keys


class ForgeKeys:
    """The JWKS a FIT is verified with: the configured one, or staging for staging apps."""

    def __init__(
        self,
        jwks_url: str,
        fetch: Callable[[str], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = JWKSKeys(jwks_url, fetch, clock)
        self.staging = (
            JWKSKeys(STAGING_JWKS_URL, fetch, clock) if jwks_url == PROD_JWKS_URL else None
        )

    @classmethod
    def from_settings(cls, settings: Settings, client: UpstreamClient) -> ForgeKeys:
        """Keys from ``settings.forge_jwks_url``, fetched through *client*."""
        return cls(settings.forge_jwks_url, json_fetcher(client))

    def for_api_base_url(self, api_base_url: object) -> JWKSKeys:
        """The key set for an invocation whose (unverified) ``app.apiBaseUrl`` is given."""
        staging = isinstance(api_base_url, str) and api_base_url.startswith(STAGING_API_PREFIX)
        return self.staging if staging and self.staging is not None else self.primary


def json_fetcher(client: UpstreamClient) -> Callable[[str], object]:
    """GET a JSON document of at most ``MAX_JWKS_BYTES`` through *client*."""

    def fetch(url: str) -> object:
        try:
            response = client.request("GET", url, stream=True)
            with response, client.mapped_errors():
                data = b""
                for chunk in response.iter_content(16384):
                    data += chunk
                    if len(data) > MAX_JWKS_BYTES:
                        raise rs256.refuse("jwks_unavailable", "The Forge key set is too large.")
            return _json(data)
        except UpstreamError:
            raise rs256.refuse(
                "jwks_unavailable", "The Forge key set could not be fetched."
            ) from None

    return fetch


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        raise rs256.refuse("jwks_unavailable", "The Forge key set is unreadable.") from None


def verify_fit(
    token: str,
    *,
    keys: ForgeKeys,
    app_ids: Collection[str],
    now: float,
    leeway: int,
) -> ForgeInvocation:
    """Verify a Forge Invocation Token and return who invoked what.

    :raises AuthenticationError: ``forge_not_configured`` (no ``forge_app_ids``), the checks of
        :mod:`bridge.rs256` (``invalid_claim:aud`` for another app, ``invalid_claim:iss``...),
        ``unknown_kid``, ``jwks_unavailable``, ``missing_claim:app.<name>``,
        ``invalid_claim:app.<name>``, ``invalid_claim:principal``.
    """
    audiences = [app_ari(app_id) for app_id in app_ids]
    if not audiences:
        raise rs256.refuse("forge_not_configured", "This bridge accepts no Forge apps.")
    kid = rs256.key_id(token)
    unverified_app = rs256.unverified_claims(token).get("app")
    api_hint = unverified_app.get("apiBaseUrl") if isinstance(unverified_app, dict) else None
    key = keys.for_api_base_url(api_hint).key(kid)
    claims = rs256.decode(
        token,
        key,
        required=_REQUIRED,
        now=now,
        leeway=leeway,
        audience=audiences,
        issuer=FIT_ISSUER,
    )
    app = claims["app"]
    if not isinstance(app, dict):
        raise rs256.refuse("invalid_claim:app")
    app_id = _text(app, "id")
    if app_ari(app_id) not in audiences:
        raise rs256.refuse("invalid_claim:app.id")
    api_base_url = _text(app, "apiBaseUrl")
    parts = urlsplit(api_base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise rs256.refuse("invalid_claim:app.apiBaseUrl")
    principal = claims.get("principal")
    if principal is not None and (not isinstance(principal, str) or not 0 < len(principal) <= 128):
        raise rs256.refuse("invalid_claim:principal")
    return ForgeInvocation(
        app_id=app_id,
        installation_id=_text(app, "installationId"),
        api_base_url=api_base_url.rstrip("/"),
        principal=principal,
        cloud_id=_cloud_id(claims, api_base_url),
        claims=claims,
    )


def _text(app: dict[str, Any], name: str) -> str:
    value = app.get(name)
    if value is None:
        raise rs256.refuse(f"missing_claim:app.{name}")
    if not isinstance(value, str) or not 0 < len(value) <= 2048:
        raise rs256.refuse(f"invalid_claim:app.{name}")
    return value


def _cloud_id(claims: dict[str, Any], api_base_url: str) -> str | None:
    """``context.cloudId`` when sent, else the id in ``…/ex/<product>/<cloudId>``."""
    context = claims.get("context")
    if isinstance(context, dict) and isinstance(context.get("cloudId"), str):
        return str(context["cloudId"])
    segments = [s for s in urlsplit(api_base_url).path.split("/") if s]
    if len(segments) >= 3 and segments[0] == "ex":
        return segments[2]
    return None
