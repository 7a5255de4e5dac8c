"""Atlassian Connect: the app descriptor, and verification of signed install hooks.

Contract: upstreams.md §4.3 (ACE 11.5.3 ``verify-installation.js``) and peers.md §3.3. An
``installed``/``uninstalled`` hook is a POST whose ``Authorization: JWT …`` token is RS256,
signed with an Atlassian key published at ``{connect_keys_url}/{kid}`` (PEM text). The bridge
accepts it only when, in this order:

1. the body's ``baseUrl`` is an https URL on an allowed host (``connect_allowed_base_urls``;
   loopback only while ``allow_loopback_upstreams`` is on) and it names a ``clientKey``;
2. the header says RS256 and names a well-formed ``kid`` (no path tricks), whose key exists;
3. the signature verifies; ``aud`` names the bridge's base URL (a trailing ``/`` ignored);
   ``exp`` has not passed (with ``jwt_leeway``); ``iss`` is the body's ``clientKey``;
4. ``qsh`` is the hash of *this* request (``POST&/installed&``), computed, not a constant.

Keys are cached in memory per ``kid`` (Atlassian never changes the key behind a ``kid``).
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bridge import rs256
from bridge.atlassian_jwt import query_string_hash
from bridge.config import RetrySettings, Settings
from bridge.errors import UpstreamError
from bridge.http import UpstreamClient

WEBHOOK_EVENTS: Final = ("page_created", "page_updated")
"""Confluence events the descriptor subscribes to; each is POSTed to :func:`webhook_path`."""
SCOPES: Final = ("READ", "WRITE", "ACT_AS_USER")
INSTALLED_PATH: Final = "/installed"
UNINSTALLED_PATH: Final = "/uninstalled"
MAX_KEY_BYTES: Final = 16 * 1024
_KEY_CACHE_LIMIT: Final = 256
_INSTALL_CLAIMS: Final = ("iss", "exp", "qsh", "aud")

KeyFetcher = Callable[[str], RSAPublicKey]
"""Returns the install public key for a ``kid``, or raises ``AuthenticationError``."""


def webhook_path(event: str) -> str:
    """The bridge path a Connect webhook for *event* is delivered to."""
    return f"/webhooks/connect/{event}"


def build_descriptor(settings: Settings) -> dict[str, Any]:
    """The Connect app descriptor served at ``/atlassian-connect.json``.

    ``signed-install`` makes Atlassian sign lifecycle hooks with RS256; ``context-qsh`` makes
    context tokens (``AP.context.getToken()``) carry the fixed ``qsh: "context-qsh"``, so they
    cannot pass for a request-bound token on routes that did not opt in to them.
    """
    return {
        "key": settings.connect_app_key,
        "name": settings.connect_app_name,
        "description": "Exports Confluence pages to Word, PDF, HTML and Markdown.",
        "baseUrl": settings.public_url.rstrip("/"),
        "apiVersion": 1,
        "authentication": {"type": "jwt"},
        "lifecycle": {"installed": INSTALLED_PATH, "uninstalled": UNINSTALLED_PATH},
        "scopes": list(SCOPES),
        "apiMigrations": {"signed-install": True, "context-qsh": True, "gdpr": True},
        "modules": {
            "webhooks": [
                {"event": event, "url": webhook_path(event), "excludeBody": False}
                for event in subscribed_events(settings)
            ]
        },
    }


def subscribed_events(settings: Settings) -> list[str]:
    """The Connect events to subscribe: the defaults plus every event a ``connect_rules``
    rule names (a site only sends what the descriptor asks for)."""
    named = {event for rule in settings.connect_rules for event in rule.events}
    return [*WEBHOOK_EVENTS, *sorted(named - set(WEBHOOK_EVENTS))]


def base_url_allowed(url: object, patterns: list[str], allow_loopback: bool) -> bool:
    """Whether an installing site's ``baseUrl`` is https on an allowed host (``*.`` patterns
    match subdomains), or loopback over http(s) while *allow_loopback*."""
    if not isinstance(url, str) or any(c in url for c in "\\ \t\r\n") or not url.isprintable():
        return False
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        username = parts.username
        parts.port  # noqa: B018 - raises ValueError for a garbled port
    except ValueError:
        return False
    if not host or username is not None or parts.scheme not in ("http", "https"):
        return False
    if allow_loopback and _is_loopback(host):
        return True
    if parts.scheme != "https":
        return False
    for pattern in patterns:
        pattern = pattern.lower()
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def verify_install_token(
    token: str,
    body: object,
    method: str,
    path: str,
    settings: Settings,
    key_fetcher: KeyFetcher,
    now: float,
) -> dict[str, Any]:
    """Verify a signed lifecycle hook (module docstring) and return the token's claims.

    *path* is the request's path and query relative to the bridge's base URL
    (``/installed``).

    :raises AuthenticationError: ``reason`` names the failed check: ``invalid_body``,
        ``missing_client_key``, ``base_url_not_allowed``, the header and signature checks of
        :mod:`bridge.rs256`, ``unknown_kid``, ``install_key_unavailable``, ``invalid_claim:aud``,
        ``issuer_mismatch``, ``qsh_mismatch``, ``expired``.
    """
    if not isinstance(body, dict):
        raise rs256.refuse("invalid_body", "The lifecycle body must be a JSON object.")
    client_key = body.get("clientKey")
    if not isinstance(client_key, str) or not client_key:
        raise rs256.refuse("missing_client_key", "The lifecycle body has no clientKey.")
    if not base_url_allowed(
        body.get("baseUrl"), settings.connect_allowed_base_urls, settings.allow_loopback_upstreams
    ):
        raise rs256.refuse("base_url_not_allowed", "The site's baseUrl is not an allowed host.")
    key = key_fetcher(rs256.key_id(token))
    claims = rs256.decode(token, key, required=_INSTALL_CLAIMS, now=now, leeway=settings.jwt_leeway)
    if not rs256.audience_matches(claims, settings.public_url):
        raise rs256.refuse("invalid_claim:aud", "The token is meant for another app.")
    if claims.get("iss") != client_key:
        raise rs256.refuse("issuer_mismatch", "The token's issuer is not the body's clientKey.")
    qsh = claims.get("qsh")
    expected = query_string_hash(method, path)
    if not isinstance(qsh, str) or not hmac.compare_digest(qsh.encode(), expected.encode()):
        raise rs256.refuse("qsh_mismatch", "The token was made for another request.")
    return claims


class InstallKeys:
    """Install-hook public keys by ``kid``, fetched from the key server and cached."""

    def __init__(self, base_url: str, fetch: Callable[[str], str | None]) -> None:
        self.base_url = base_url.rstrip("/")
        self._fetch = fetch
        self._keys: dict[str, RSAPublicKey] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, client: UpstreamClient) -> InstallKeys:
        """Keys from ``settings.connect_keys_url``, fetched through *client*."""
        return cls(settings.connect_keys_url, pem_fetcher(client))

    def key(self, kid: str) -> RSAPublicKey:
        """The public key for *kid*.

        :raises AuthenticationError: ``unknown_kid``, ``bad_install_key`` or
            ``install_key_unavailable`` (the key server could not be asked).
        """
        with self._lock:
            cached = self._keys.get(kid)
        if cached is not None:
            return cached
        pem = self._fetch(f"{self.base_url}/{kid}")
        if pem is None:
            raise rs256.refuse("unknown_kid", "The token's signing key is unknown.")
        try:
            key = load_pem_public_key(pem.encode())
        except (ValueError, TypeError):
            raise rs256.refuse("bad_install_key", "The key server sent an unusable key.") from None
        if not isinstance(key, RSAPublicKey):
            raise rs256.refuse("bad_install_key", "The key server sent an unusable key.")
        with self._lock:
            if len(self._keys) >= _KEY_CACHE_LIMIT:
                self._keys.clear()
            self._keys[kid] = key
        return key


def pem_fetcher(client: UpstreamClient) -> Callable[[str], str | None]:
    """GET a PEM key through *client*: its text, ``None`` for 404/403, or a refusal."""

    def fetch(url: str) -> str | None:
        data = b""
        try:
            response = client.request("GET", url, expected=(200, 403, 404), stream=True)
            with response, client.mapped_errors():
                if response.status_code != 200:
                    return None
                for chunk in response.iter_content(4096):
                    data += chunk
                    if len(data) > MAX_KEY_BYTES:
                        raise rs256.refuse(
                            "bad_install_key", "The key server sent an unusable key."
                        )
        except UpstreamError:
            raise rs256.refuse(
                "install_key_unavailable", "The install key server could not be reached."
            ) from None
        return data.decode("ascii", "replace")

    return fetch


def key_client(settings: Settings, name: str) -> UpstreamClient:
    """A bounded client for fetching Atlassian's public keys (two tries, short timeouts)."""
    return UpstreamClient(
        name,
        RetrySettings(attempts=2, backoff_base=0.2, backoff_cap=1.0, max_inline_wait=1.0),
        timeout=min(settings.upstream_timeout, 10.0),
        connect_timeout=settings.connect_timeout,
        user_agent=f"confluence-export-bridge ({settings.app_name})",
    )
