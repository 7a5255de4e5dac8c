"""Atlassian Connect JWT helpers: query string hash, app↔product tokens, impersonation.

Security defaults are fixed, not options: HS256 only (``alg`` is checked against an
allow-list of one, never taken from the token), shared secrets of at least 32 bytes
(RFC 7518 §3.2), signature verified before any claim is trusted, ``exp``/``iat``/``iss``/``qsh``
required, and ``qsh`` compared in constant time. Exception messages never contain tokens or
secrets.

Exception tree::

    JWTAuthError                 .reason is a short machine word
    ├── MalformedTokenError      "malformed", "alg_not_allowed", "missing_claim:<name>",
    │                            "invalid_claim:<name>"
    ├── TokenSignatureError      "bad_signature", "invalid_key"
    ├── TokenExpiredError        "expired", "iat_in_future", "not_yet_valid"
    └── QshMismatchError         "qsh_mismatch", "bad_request_url"

QSH canonicalisation (upstreams.md §4.2) follows the reference Java/Node implementations and
agrees with the ``atlassian_jwt`` package (``url_utils.canonicalize_request``) except where
that package is wrong: it parses the relative URL with ``urlparse`` after stripping leading
slashes, so a first path segment containing ``:`` is mistaken for a URL scheme
(``/a:b`` → ``/b``), and it strips *all* leading/trailing slashes where the reference drops
one trailing slash. The query part (``parse_qsl`` with blank values, ``jwt`` dropped, keys
sorted by encoded form, repeated values sorted by decoded form and joined with ``,``, RFC 3986
encoding) matches it exactly; tests compare the two.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

import jwt

__all__ = [
    "ALGORITHM",
    "CONTEXT_QSH",
    "MAX_TOKEN_LENGTH",
    "JWTAuthError",
    "MalformedTokenError",
    "QshMismatchError",
    "TokenExpiredError",
    "TokenSignatureError",
    "authorization_server_for",
    "canonical_request",
    "decode_inbound",
    "encode_outbound",
    "impersonation_assertion",
    "query_string_hash",
    "unverified_issuer",
]

ALGORITHM: Final = "HS256"
"""The only JWT algorithm accepted or produced."""
CONTEXT_QSH: Final = "context-qsh"
"""Fixed ``qsh`` of context tokens from ``AP.context.getToken()`` (upstreams.md §4.2)."""

MAX_TOKEN_LENGTH: Final = 8192
"""Longest token accepted; real Connect tokens are well under 2 KiB."""

_REQUIRED_CLAIMS: Final = ("iss", "iat", "exp", "qsh")
_TIME_CLAIMS: Final = ("iat", "exp", "nbf")
_PROD_AUTH_SERVER: Final = "https://oauth-2-authorization-server.services.atlassian.com"
_AUTH_SERVERS_BY_HOST_SUFFIX: Final = (
    # UNCONFIRMED for FedRAMP: host patterns seen in public code, not in ACE's own tests.
    (
        ".stg.atlassian-us-gov-mod.net",
        "https://oauth-2-authorization-server.stg.services.atlassian-us-gov-mod.com",
    ),
    (
        ".stg.atlassian-us-gov-mod.com",
        "https://oauth-2-authorization-server.stg.services.atlassian-us-gov-mod.com",
    ),
    (
        ".atlassian-us-gov-mod.net",
        "https://oauth-2-authorization-server.services.atlassian-us-gov-mod.com",
    ),
    (
        ".atlassian-us-gov-mod.com",
        "https://oauth-2-authorization-server.services.atlassian-us-gov-mod.com",
    ),
    (".jira-dev.com", "https://oauth-2-authorization-server.stg.services.atlassian.com"),
)

# A private PyJWT instance so a short HMAC key is an error, not a warning.
_JWT: Final = jwt.PyJWT(options={"enforce_minimum_key_length": True})
_JWS: Final = jwt.PyJWS(options={"enforce_minimum_key_length": True})


class JWTAuthError(Exception):
    """Raised when a JWT is rejected; ``reason`` says why, in one machine word."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"JWT rejected: {reason}")
        self.reason = reason


class MalformedTokenError(JWTAuthError):
    """Raised when a token cannot be parsed, uses another alg, or lacks/garbles a claim."""


class TokenSignatureError(JWTAuthError):
    """Raised when the signature does not verify with the shared secret."""


class TokenExpiredError(JWTAuthError):
    """Raised when ``exp`` has passed or ``iat``/``nbf`` lie in the future (beyond leeway)."""


class QshMismatchError(JWTAuthError):
    """Raised when the token's ``qsh`` does not match the request it came with."""


def canonical_request(method: str, url: str, base_url: str | None = None) -> str:
    """Return ``METHOD&canonical-uri&canonical-query`` for ``url`` (upstreams.md §4.2).

    ``url`` is absolute, or a path that includes ``base_url``'s path; with ``base_url=None``
    it is taken as already relative to the base URL (as ``atlassian_jwt`` expects).

    :raises ValueError: if ``url``'s path is not under ``base_url``'s path.
    """
    parts = urlsplit(url)
    return (
        f"{method.upper()}&{_canonical_uri(parts.path, base_url)}&{_canonical_query(parts.query)}"
    )


def query_string_hash(method: str, url: str, base_url: str | None = None) -> str:
    """Return the ``qsh`` claim value: hex SHA-256 of :func:`canonical_request`.

    :raises ValueError: if ``url``'s path is not under ``base_url``'s path.
    """
    return hashlib.sha256(canonical_request(method, url, base_url).encode("utf-8")).hexdigest()


def encode_outbound(
    method: str,
    url: str,
    *,
    base_url: str,
    client_key: str,
    shared_secret: str,
    app_key: str,
    now: int,
    lifetime: int = 180,
) -> str:
    """Return an app→product JWT for one request (claims as ACE ``createJwtPayload``).

    :raises ValueError: for a short secret, a non-positive lifetime, or a URL outside base_url.
    """
    payload = {
        "iss": app_key,
        "iat": now,
        "exp": now + _positive(lifetime),
        "qsh": query_string_hash(method, url, base_url),
        "aud": [client_key],
    }
    return _sign(payload, shared_secret)


def impersonation_assertion(
    *,
    oauth_client_id: str,
    account_id: str,
    base_url: str,
    audience: str,
    shared_secret: str,
    now: int,
    lifetime: int = 60,
) -> str:
    """Return the JWT-bearer assertion that exchanges for a user token (upstreams.md §4.4).

    A third-party client says Atlassian refuses assertions living over 120 s (UNCONFIRMED).

    :raises ValueError: for a short secret or a non-positive lifetime.
    """
    payload = {
        "iss": f"urn:atlassian:connect:clientid:{oauth_client_id}",
        "sub": f"urn:atlassian:connect:useraccountid:{account_id}",
        "tnt": base_url,
        "aud": audience,
        "iat": now,
        "exp": now + _positive(lifetime),
    }
    return _sign(payload, shared_secret)


def authorization_server_for(base_url: str) -> str:
    """Return the OAuth authorization server for a tenant ``base_url`` (prod by default).

    :raises ValueError: if ``base_url`` has no host.
    """
    host = urlsplit(base_url).hostname
    if not host:
        raise ValueError(f"base_url has no host: {base_url!r}")
    for suffix, server in _AUTH_SERVERS_BY_HOST_SUFFIX:
        if host.endswith(suffix):
            return server
    return _PROD_AUTH_SERVER


def unverified_issuer(token: str) -> str:
    """Return the ``iss`` claim WITHOUT verifying the token, to look up the tenant's secret.

    :raises JWTAuthError: for malformed tokens, another ``alg`` than HS256, or no ``iss``.
    """
    with _mapped_errors():
        _check_header(token)
        claims = _JWT.decode(token, options={"verify_signature": False})
    return _issuer(claims)


def decode_inbound(
    token: str,
    *,
    shared_secret: str,
    method: str,
    url: str,
    base_url: str,
    now: int | None = None,
    leeway: int = 30,
    allow_context_qsh: bool = False,
    audience: str | None = None,
) -> dict[str, Any]:
    """Verify a product→app JWT for the request ``method url`` and return its claims.

    ``now`` defaults to the current time. ``aud`` is only checked when ``audience`` is given
    (Connect request tokens usually carry none).

    :raises JWTAuthError: (a subclass, see the module docstring) when the token is rejected;
        a request URL outside ``base_url`` (or unparseable) gives ``"bad_request_url"``.
    """
    try:
        expected_qsh = query_string_hash(method, url, base_url)
    except ValueError as exc:
        raise QshMismatchError("bad_request_url") from exc
    with _mapped_errors():
        _check_header(token)
        claims = _JWT.decode(
            token,
            shared_secret,
            algorithms=[ALGORITHM],
            audience=audience,
            options={
                "require": list(_REQUIRED_CLAIMS),
                "verify_aud": audience is not None,
                # Time claims are checked below against the injectable clock.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    _issuer(claims)
    _check_times(claims, now=int(time.time()) if now is None else now, leeway=leeway)
    _check_qsh(claims, expected_qsh, allow_context_qsh=allow_context_qsh)
    return claims


def _canonical_uri(path: str, base_url: str | None) -> str:
    """Return the path relative to ``base_url``'s path, ``&`` encoded, one trailing ``/`` cut."""
    base_path = urlsplit(base_url).path.rstrip("/") if base_url else ""
    if base_path:
        if path != base_path and not path.startswith(base_path + "/"):
            raise ValueError(f"URL path {path!r} is not under base path {base_path!r}")
        path = path[len(base_path) :]
    path = path.replace("&", "%26")
    if not path.startswith("/"):
        path = "/" + path
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path


def _canonical_query(query: str) -> str:
    """Return the sorted, RFC 3986-encoded query without ``jwt`` (repeated values joined)."""
    values: defaultdict[str, list[str]] = defaultdict(list)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "jwt":
            values[key].append(value)
    pairs = sorted(
        (_encode(key), ",".join(_encode(value) for value in sorted(items)))
        for key, items in values.items()
    )
    return "&".join(f"{key}={value}" for key, value in pairs)


def _encode(text: str) -> str:
    return quote(text, safe="~")


def _sign(payload: dict[str, Any], shared_secret: str) -> str:
    """Sign ``payload`` with HS256, refusing secrets shorter than 32 bytes."""
    try:
        return _JWT.encode(payload, shared_secret, algorithm=ALGORITHM)
    except jwt.InvalidKeyError as exc:
        raise ValueError("shared secret unusable for HS256 (at least 32 bytes needed)") from exc


def _positive(lifetime: int) -> int:
    if lifetime <= 0:
        raise ValueError(f"lifetime must be positive, not {lifetime!r}")
    return lifetime


def _check_header(token: str) -> None:
    """Refuse oversized tokens and any ``alg`` but HS256 before touching keys or claims."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise MalformedTokenError("malformed")
    header = _JWS.get_unverified_header(token)
    if header.get("alg") != ALGORITHM:
        raise MalformedTokenError("alg_not_allowed")


def _issuer(claims: dict[str, Any]) -> str:
    """Return the ``iss`` claim, which must be a non-empty string."""
    issuer = claims.get("iss")
    if issuer is None:
        raise MalformedTokenError("missing_claim:iss")
    if not isinstance(issuer, str) or not issuer:
        raise MalformedTokenError("invalid_claim:iss")
    return issuer


def _check_times(claims: dict[str, Any], *, now: int, leeway: int) -> None:
    """Check ``exp``, ``iat`` and ``nbf`` (if present) against ``now`` with ``leeway``."""
    times: dict[str, float] = {}
    for name in _TIME_CLAIMS:
        value = claims.get(name)
        if value is None:
            continue
        finite = isinstance(value, float) and math.isfinite(value)
        if not finite and (isinstance(value, bool) or not isinstance(value, int)):
            raise MalformedTokenError(f"invalid_claim:{name}")
        times[name] = value
    if times["exp"] + leeway <= now:
        raise TokenExpiredError("expired")
    if times["iat"] - leeway > now:
        raise TokenExpiredError("iat_in_future")
    if "nbf" in times and times["nbf"] - leeway > now:
        raise TokenExpiredError("not_yet_valid")


def _check_qsh(claims: dict[str, Any], expected: str, *, allow_context_qsh: bool) -> None:
    """Compare the ``qsh`` claim with ``expected`` in constant time."""
    qsh = claims.get("qsh")
    if not isinstance(qsh, str):
        raise MalformedTokenError("invalid_claim:qsh")
    if allow_context_qsh and qsh == CONTEXT_QSH:
        return
    if not hmac.compare_digest(qsh.encode("utf-8"), expected.encode("utf-8")):
        raise QshMismatchError("qsh_mismatch")


@contextmanager
def _mapped_errors() -> Iterator[None]:
    """Translate PyJWT exceptions into this module's tree (their messages hold no secrets)."""
    try:
        yield
    except jwt.MissingRequiredClaimError as exc:
        raise MalformedTokenError(f"missing_claim:{exc.claim}") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise MalformedTokenError("alg_not_allowed") from exc
    except jwt.InvalidSignatureError as exc:
        raise TokenSignatureError("bad_signature") from exc
    except jwt.InvalidKeyError as exc:
        raise TokenSignatureError("invalid_key") from exc
    except jwt.InvalidAudienceError as exc:
        raise MalformedTokenError("invalid_claim:aud") from exc
    except jwt.PyJWTError as exc:
        raise MalformedTokenError("malformed") from exc
