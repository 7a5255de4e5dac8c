"""Signed, expiring download links: HMAC-SHA256 under a key id, so keys can rotate.

A token is ``<kid>.<payload>.<signature>``, each part base64url without padding. The
payload binds the job, the tenant and the expiry. The first key signs; every configured
key verifies, so a new key can be rolled in before the old one is dropped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import BadSignatureError, ConfigurationError, LinkExpiredError


@dataclass(frozen=True)
class LinkClaims:
    """What a download link grants: one job's artifact, for one tenant, until ``expires_at``."""

    job_id: str
    tenant_id: str
    expires_at: int


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """Mint and verify link tokens with a list of ``(key_id, secret)``; the first one signs."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigurationError("at least one signing key is required")
        self._signing_kid, self._signing_secret = keys[0]
        self._keys = dict(keys)

    def sign(self, claims: LinkClaims) -> str:
        """Return the token for *claims*."""
        payload = _b64encode(
            json.dumps(
                {"j": claims.job_id, "t": claims.tenant_id, "e": claims.expires_at},
                separators=(",", ":"),
            ).encode()
        )
        signed = f"{self._signing_kid}.{payload}"
        return f"{signed}.{self._mac(self._signing_secret, signed)}"

    def verify(self, token: str, now: float) -> LinkClaims:
        """Return the claims of a valid token.

        :raises BadSignatureError: malformed, unknown key, or signature mismatch.
        :raises LinkExpiredError: genuine, but past its expiry.
        """
        parts = token.split(".")
        if not token.isascii() or len(parts) != 3:
            raise BadSignatureError("The download link is malformed.")
        kid, payload, signature = parts
        secret = self._keys.get(kid)
        if secret is None or not hmac.compare_digest(
            self._mac(secret, f"{kid}.{payload}"), signature
        ):
            raise BadSignatureError("The download link's signature is not valid.")
        try:
            data = json.loads(_b64decode(payload))
            claims = LinkClaims(str(data["j"]), str(data["t"]), int(data["e"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise BadSignatureError("The download link is malformed.") from None
        if now >= claims.expires_at:
            raise LinkExpiredError("The download link has expired.", claims.expires_at)
        return claims

    @staticmethod
    def _mac(secret: bytes, message: str) -> str:
        return _b64encode(hmac.new(secret, message.encode("ascii"), hashlib.sha256).digest())
