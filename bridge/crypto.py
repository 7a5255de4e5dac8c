"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with key rotation.

Tenant shared secrets, cached user tokens and per-job credentials are stored encrypted.
The first key encrypts; every key decrypts (``MultiFernet``), so keys rotate like the link
keys do. With no key configured, one is generated once into a 0600 file beside the data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bridge.errors import ConfigurationError


class SecretBox:
    """Encrypt and decrypt short secrets for storage."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ConfigurationError("at least one encryption key is required")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except ValueError:
            raise ConfigurationError(
                "encryption keys must be Fernet keys (32 url-safe base64-encoded bytes); "
                "make one with `export-bridge keygen --encryption`"
            ) from None

    def seal(self, plaintext: str) -> str:
        """Encrypt *plaintext*; the result is ASCII, safe to store."""
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        """Decrypt what :meth:`seal` produced.

        :raises ValueError: tampered, or sealed under a key no longer configured.
        """
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise ValueError("cannot decrypt a stored secret (tampered or unknown key)") from None


def load_or_create_key_file(path: str | os.PathLike[str]) -> str:
    """Read a Fernet key from *path*, creating it (mode 0600) the first time."""
    key_path = Path(path)
    if key_path.exists():
        return key_path.read_text().strip()
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode("ascii")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def new_encryption_key() -> str:
    """A fresh Fernet key for the ``encryption_keys`` setting."""
    return Fernet.generate_key().decode("ascii")
