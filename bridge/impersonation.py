"""User-impersonation tokens for Connect apps: the OAuth 2.0 JWT bearer grant (upstreams.md §4.4).

A Connect installation (``clientKey``, ``sharedSecret``, ``baseUrl``, ``oauthClientId``) may act
as any of its site's users: it signs an assertion (``iss``/``sub``/``tnt``/``aud``/``iat``/``exp``,
HS256 with the shared secret), posts it form-encoded to ``{auth_server}/oauth2/token`` and gets a
bearer token for that user back.

Tokens are cached per (tenant, user, scopes) in the shared :class:`~bridge.stores.base.Store`,
sealed with the :class:`~bridge.crypto.SecretBox`, until ``margin`` seconds before they expire,
so every process of the bridge reuses them and N exports by one user cost one token request
per token lifetime. Concurrent first requests for one key cost one token request too: the first
caller takes a short lock (``store.add_value``), the others poll the cache until the token
appears, the lock goes away (then they try for it themselves), or ``lock_seconds`` pass (then
they mint their own rather than wait longer).

Tokens never appear in logs, errors or the store in plain text; cache keys are hashes, so the
store does not even name the user.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import requests

from bridge.atlassian_jwt import authorization_server_for, impersonation_assertion
from bridge.crypto import SecretBox
from bridge.errors import UpstreamRejectedError, UpstreamResponseError
from bridge.http import UpstreamClient
from bridge.stores.base import Store

log = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_LIFETIME = 900
"""Assumed token lifetime when the answer has no usable ``expires_in`` (ACE mocks; UNCONFIRMED)."""
ASSERTION_LIFETIME = 60
"""Seconds an assertion lives (AOAUTH2 uses 60; a longer one may be refused)."""
_KEY_PREFIX = "impersonation:"


@dataclass(frozen=True)
class ConnectInstallation:
    """What the bridge knows of one Connect installation that may act as its users."""

    client_key: str
    base_url: str
    """The site's base URL as the install hook gave it (``https://x.atlassian.net/wiki``)."""
    oauth_client_id: str
    shared_secret: str = field(repr=False)
    auth_server: str | None = None
    """Override of the authorization server; by default chosen by the site's host."""

    @property
    def authorization_server(self) -> str:
        """The authorization server's base URL (also the assertion's ``aud``)."""
        return (self.auth_server or authorization_server_for(self.base_url)).rstrip("/")


def normalize_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes as the grant sends them: upper-cased, unique, sorted."""
    return tuple(sorted({scope.strip().upper() for scope in scopes if scope.strip()}))


def cache_key(installation: ConnectInstallation, account_id: str, scopes: Iterable[str]) -> str:
    """The store key of one (tenant, user, scopes) token: a hash, so it names no one."""
    parts = (
        installation.client_key,
        installation.base_url.rstrip("/"),
        installation.oauth_client_id,
        account_id,
        " ".join(normalize_scopes(scopes)),
    )
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return _KEY_PREFIX + digest


class ImpersonationTokens:
    """Mints user tokens with the JWT bearer grant and caches them, sealed, in the store."""

    def __init__(
        self,
        client: UpstreamClient,
        store: Store,
        secret_box: SecretBox,
        clock: Callable[[], float] = time.time,
        *,
        margin: float = 60.0,
        lock_seconds: float = 10.0,
        wait_step: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.store = store
        self.box = secret_box
        self.clock = clock
        self.margin = margin
        self.lock_seconds = lock_seconds
        self.wait_step = wait_step
        self._sleep = sleep
        self._monotonic = monotonic

    def token(
        self, installation: ConnectInstallation, account_id: str, scopes: Iterable[str] = ()
    ) -> str:
        """A bearer token acting as *account_id* on the installation's site.

        :raises UpstreamRejectedError: the authorization server refused (unknown user, bad
            secret, missing ``ACT_AS_USER``, a clock too far off…), with its reason.
        :raises UpstreamError: it could not be reached or answered nonsense.
        """
        scopes = normalize_scopes(scopes)
        key = cache_key(installation, account_id, scopes)
        lock = key + ":lock"
        deadline = self._monotonic() + self.lock_seconds
        while True:
            cached = self._cached(key)
            if cached is not None:
                return cached
            owner = uuid.uuid4().hex
            if self.store.add_value(lock, owner, self.clock(), ttl=self.lock_seconds) == owner:
                try:
                    # Someone may have cached it between our look and our lock.
                    return self._cached(key) or self._mint(installation, account_id, scopes, key)
                finally:
                    if self.store.get_value(lock, self.clock()) == owner:
                        self.store.delete_value(lock)
            if self._monotonic() >= deadline:
                # The lock holder is stuck: a token of our own beats waiting any longer.
                return self._mint(installation, account_id, scopes, key)
            self._sleep(self.wait_step)

    def forget(
        self, installation: ConnectInstallation, account_id: str, scopes: Iterable[str] = ()
    ) -> None:
        """Drop a cached token (e.g. after the product refused it with 401)."""
        self.store.delete_value(cache_key(installation, account_id, scopes))

    def _cached(self, key: str) -> str | None:
        sealed = self.store.get_value(key, self.clock())
        if sealed is None:
            return None
        try:
            entry = json.loads(self.box.open(sealed))
            token, expires_at = entry["access_token"], float(entry["expires_at"])
        except (ValueError, KeyError, TypeError):
            return None  # sealed under a retired key, or garbage: mint afresh
        if not isinstance(token, str) or expires_at - self.margin <= self.clock():
            return None
        return token

    def _mint(
        self,
        installation: ConnectInstallation,
        account_id: str,
        scopes: tuple[str, ...],
        key: str,
    ) -> str:
        server = installation.authorization_server
        now = self.clock()
        try:
            assertion = impersonation_assertion(
                oauth_client_id=installation.oauth_client_id,
                account_id=account_id,
                base_url=installation.base_url,
                audience=server,
                shared_secret=installation.shared_secret,
                now=int(now),
                lifetime=ASSERTION_LIFETIME,
            )
        except ValueError as exc:
            raise UpstreamRejectedError(
                f"cannot sign an impersonation assertion for {installation.client_key}: {exc}",
                backend=self.client.backend,
            ) from None
        form = {"grant_type": GRANT_TYPE, "assertion": assertion}
        if scopes:
            form["scope"] = " ".join(scopes)
        response = self.client.request(
            "POST",
            f"{server}/oauth2/token",
            data=form,
            headers={"Accept": "application/json"},
            expected=(200, 400, 401, 403),
            # Minting a token has no side effect worth protecting: retry 5xx like a GET.
            idempotent=True,
        )
        if response.status_code != 200:
            raise self._refused(response, account_id)
        token, lifetime = self._read_token(response)
        ttl = lifetime - self.margin
        if ttl > 0:
            entry = json.dumps({"access_token": token, "expires_at": now + lifetime})
            self.store.set_value(key, self.box.seal(entry), now, ttl=ttl)
        log.info(
            "impersonation token minted",
            extra={"tenant": installation.client_key, "user": account_id, "expires_in": lifetime},
        )
        return token

    def _refused(self, response: requests.Response, account_id: str) -> UpstreamRejectedError:
        try:
            body = response.json()
        except ValueError:
            body = None
        reason = "no reason given"
        if isinstance(body, dict):
            error, description = body.get("error"), body.get("error_description")
            reason = ": ".join(str(part) for part in (error, description) if part) or reason
        return UpstreamRejectedError(
            f"Atlassian's authorization server refused a user token for {account_id!r} "
            f"(HTTP {response.status_code}: {' '.join(reason.split())[:300]})",
            backend=self.client.backend,
            upstream_status=response.status_code,
        )

    def _read_token(self, response: requests.Response) -> tuple[str, int]:
        body = self.client.json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamResponseError(
                "Atlassian's authorization server answered without an access_token",
                backend=self.client.backend,
                upstream_status=response.status_code,
            )
        lifetime = body.get("expires_in")
        usable = isinstance(lifetime, int | float) and not isinstance(lifetime, bool)
        if not (usable and math.isfinite(lifetime) and lifetime > 0):
            lifetime = DEFAULT_LIFETIME
        return token, int(min(lifetime, 86400))
