"""RS256 tokens Atlassian signs: Connect install hooks and Forge Invocation Tokens.

Both are checked the same way, with fixed security defaults: the header must say ``RS256``
and carry a ``kid`` (anything else, ``none`` and HS256 included, is refused before a key is
looked up, so an RSA public key can never be used as an HMAC secret), the key is the one
published for that ``kid``, and ``exp``/``iat``/``nbf`` are compared with an injectable clock
and an explicit leeway. Every failure is an :class:`~bridge.errors.AuthenticationError` whose
``reason`` names the failed check and never a key or a token.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from bridge.errors import AuthenticationError

ALGORITHM: Final = "RS256"
MAX_TOKEN_LENGTH: Final = 16384
"""Longest token accepted (FITs carry a few context claims; far below this)."""
KID_PATTERN: Final = re.compile(r"[A-Za-z0-9._/-]{1,200}")

_JWS: Final = jwt.PyJWS()
_JWT: Final = jwt.PyJWT()


def refuse(reason: str, message: str = "The token is not valid.") -> AuthenticationError:
    """The error for a failed check (*reason* is a short machine word)."""
    return AuthenticationError(message, reason=reason)


def key_id(token: str) -> str:
    """Return the ``kid`` of an RS256 token after checking its header shape.

    ``kid`` becomes part of a key URL, so only plain path characters are allowed, with no
    ``..`` segment and no leading ``/``.

    :raises AuthenticationError: ``malformed``, ``alg_not_allowed``, ``missing_kid``, ``bad_kid``.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise refuse("malformed")
    try:
        header = _JWS.get_unverified_header(token)
    except jwt.PyJWTError:
        raise refuse("malformed") from None
    if header.get("alg") != ALGORITHM:
        raise refuse("alg_not_allowed")
    kid = header.get("kid")
    if kid is None:
        raise refuse("missing_kid")
    if (
        not isinstance(kid, str)
        or not KID_PATTERN.fullmatch(kid)
        or ".." in kid
        or kid.startswith("/")
    ):
        raise refuse("bad_kid")
    return kid


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims WITHOUT verification, only to pick which keys to verify with.

    :raises AuthenticationError: ``malformed``.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise refuse("malformed")
    try:
        claims = _JWT.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise refuse("malformed") from None
    return claims


def decode(
    token: str,
    key: RSAPublicKey,
    *,
    required: Collection[str],
    now: float,
    leeway: int,
    audience: str | Collection[str] | None = None,
    issuer: str | None = None,
) -> dict[str, Any]:
    """Verify *token*'s RS256 signature with *key* and check its claims.

    ``aud`` (when *audience* is given: one of them must be in the token's ``aud``) and ``iss``
    are checked by PyJWT; the times by :func:`check_times` against *now*.

    :raises AuthenticationError: ``bad_signature``, ``missing_claim:<name>``,
        ``invalid_claim:<name>``, ``expired``, ``iat_in_future``, ``not_yet_valid``, ``malformed``.
    """
    key_id(token)
    audiences = [audience] if isinstance(audience, str) else list(audience or [])
    try:
        claims = _JWT.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audiences or None,
            issuer=issuer,
            options={
                "require": list(required),
                "verify_aud": audience is not None,
                "verify_iss": issuer is not None,
                # Times are checked below, against the injectable clock.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.MissingRequiredClaimError as exc:
        raise refuse(f"missing_claim:{exc.claim}") from None
    except jwt.InvalidSignatureError:
        raise refuse("bad_signature") from None
    except jwt.InvalidAudienceError:
        raise refuse("invalid_claim:aud") from None
    except jwt.InvalidIssuerError:
        raise refuse("invalid_claim:iss") from None
    except jwt.PyJWTError:
        raise refuse("malformed") from None
    check_times(claims, now=now, leeway=leeway)
    return claims


def check_times(claims: dict[str, Any], *, now: float, leeway: int) -> None:
    """Check ``exp`` (required), and ``iat``/``nbf`` when present, with *leeway* seconds.

    :raises AuthenticationError: ``missing_claim:exp``, ``invalid_claim:<name>``, ``expired``,
        ``iat_in_future``, ``not_yet_valid``.
    """
    times: dict[str, float] = {}
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise refuse(f"invalid_claim:{name}")
        times[name] = float(value)
    if "exp" not in times:
        raise refuse("missing_claim:exp")
    if times["exp"] + leeway <= now:
        raise refuse("expired", "The token has expired.")
    if "iat" in times and times["iat"] - leeway > now:
        raise refuse("iat_in_future", "The token was issued in the future (check clocks).")
    if "nbf" in times and times["nbf"] - leeway > now:
        raise refuse("not_yet_valid", "The token is not valid yet (check clocks).")


def audience_matches(claims: dict[str, Any], expected: str) -> bool:
    """Whether the token's ``aud`` (a string or a list) names *expected*, ignoring one
    trailing ``/`` on either side (Connect install hooks name the app's base URL)."""
    aud = claims.get("aud")
    values = aud if isinstance(aud, list) else [aud]
    want = expected.rstrip("/")
    return any(isinstance(value, str) and value.rstrip("/") == want for value in values)
