"""Job and key-value stores: SQLite embedded by default, Redis when scaled out."""

from __future__ import annotations

from urllib.parse import urlsplit

from bridge.errors import ConfigurationError
from bridge.stores.base import IdempotencyRecord, Store
from bridge.stores.sqlite import SQLiteStore

__all__ = ["IdempotencyRecord", "SQLiteStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """Build the store for ``database_url`` (``sqlite:///…``, ``redis://…``, ``rediss://…``
    or ``unix://…``)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return SQLiteStore.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        from bridge.stores.redis import RedisStore  # only scaled-out installs have redis-py

        return RedisStore.from_url(url)
    raise ConfigurationError(
        f"database_url {url!r}: use sqlite:///, redis://, rediss:// or unix://"
    )
