"""Tenants: who may call the bridge, and each tenant's validated backend configuration."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.backends.base import Backend, BackendConfig
from bridge.config import TenantConfig, hash_api_key
from bridge.errors import ConfigurationError, NotFoundError, ValidationError


@dataclass(frozen=True)
class Tenant:
    """A tenant with its backend configurations already validated."""

    id: str
    name: str
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    default_backend: dict[str, str] = field(default_factory=dict)
    callback_secret: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    """Installation data for tenants that came through an Atlassian install."""
    forge_installations: tuple[str, ...] = ()
    """Forge installation ARIs whose invocations act for this tenant."""


_CACHE_LIMIT = 4096

TenantLookup = Callable[[str], "Tenant | None"]
"""Finds a tenant that is not in the configuration (e.g. a Connect install in the store)."""


def parse_backends(
    tables: Mapping[str, dict[str, Any]], backends: Mapping[str, Backend], where: str
) -> dict[str, BackendConfig]:
    """Validate backend tables against the backends' config models.

    :raises ConfigurationError: naming *where*, the backend and the field at fault.
    """
    validated: dict[str, BackendConfig] = {}
    for name, raw in tables.items():
        if name not in backends:
            raise ConfigurationError(
                f"{where}: unknown backend {name!r}; known: {', '.join(sorted(backends))}"
            )
        try:
            validated[name] = backends[name].parse_config(raw, name)
        except ValidationError as exc:
            fields = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
            raise ConfigurationError(f"{where} backends.{fields}") from None
    return validated


class TenantDirectory:
    """Look tenants up by id, API key or Forge installation.

    Tenants not in the configuration come from a *fallback* lookup (Connect installs kept in
    the shared store). A tenant found is cached for a few seconds (an uninstall through
    another process is seen once that passes); one not found is asked for again each time,
    so a fresh install through another process is found at once.
    """

    def __init__(self, tenants: Iterable[Tenant], api_keys: Mapping[str, str]) -> None:
        self._tenants = {tenant.id: tenant for tenant in tenants}
        self._api_keys = dict(api_keys)  # sha256:<hex> -> tenant id
        self._forge: dict[str, str] = {}  # installation ARI -> tenant id
        for tenant in self._tenants.values():
            for ari in tenant.forge_installations:
                if self._forge.setdefault(ari, tenant.id) != tenant.id:
                    raise ConfigurationError(f"Forge installation {ari!r} is listed by two tenants")
        self._fallback: TenantLookup | None = None
        self._fallback_ttl = 0.0
        self._monotonic: Callable[[], float] = time.monotonic
        self._cache: dict[str, tuple[float, Tenant]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls, configs: Iterable[TenantConfig], backends: Mapping[str, Backend]
    ) -> TenantDirectory:
        """Validate every tenant's backend tables against the backends' config models.

        :raises ConfigurationError: naming the tenant, backend and field at fault.
        """
        tenants: list[Tenant] = []
        keys: dict[str, str] = {}
        for index, config in enumerate(configs):
            if any(t.id == config.id for t in tenants):
                raise ConfigurationError(f"tenants[{index}]: tenant id {config.id!r} is used twice")
            validated = parse_backends(config.backends, backends, f"tenants[{index}] ({config.id})")
            for fmt, name in config.default_backend.items():
                if name not in validated:
                    raise ConfigurationError(
                        f"tenants[{index}] ({config.id}): default_backend.{fmt} = {name!r} "
                        "is not configured for this tenant"
                    )
            secret = config.callback_secret.get_secret_value() if config.callback_secret else None
            tenants.append(
                Tenant(
                    config.id,
                    config.name or config.id,
                    validated,
                    dict(config.default_backend),
                    secret,
                    forge_installations=tuple(config.forge_installations),
                )
            )
            for key_hash in config.api_keys:
                if key_hash in keys:
                    raise ConfigurationError(f"tenants[{index}]: an API key is used twice")
                keys[key_hash] = config.id
        return cls(tenants, keys)

    def get(self, tenant_id: str) -> Tenant:
        """:raises NotFoundError: unknown tenant."""
        tenant = self.find(tenant_id)
        if tenant is None:
            raise NotFoundError(f"unknown tenant {tenant_id!r}")
        return tenant

    def find(self, tenant_id: str) -> Tenant | None:
        """The configured tenant *tenant_id*, else what the fallback lookup finds (cached)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is not None or self._fallback is None:
            return tenant
        now = self._monotonic()
        with self._lock:
            cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = self._fallback(tenant_id)
        if found is not None:
            with self._lock:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[tenant_id] = (now + self._fallback_ttl, found)
        return found

    def set_fallback(
        self,
        lookup: TenantLookup,
        ttl: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Consult *lookup* for ids that are not configured; remember answers *ttl* seconds."""
        with self._lock:
            self._fallback = lookup
            self._fallback_ttl = ttl
            self._monotonic = monotonic
            self._cache.clear()

    def by_forge_installation(self, installation_id: str) -> Tenant | None:
        """The configured tenant that lists the Forge installation *installation_id*."""
        tenant_id = self._forge.get(installation_id)
        return self._tenants.get(tenant_id) if tenant_id else None

    def by_api_key(self, key: str) -> Tenant | None:
        """The tenant owning API key *key*, looked up by the key's hash (keys are random,
        so the hash reveals nothing and lookup timing leaks nothing useful)."""
        tenant_id = self._api_keys.get(hash_api_key(key))
        return self._tenants.get(tenant_id) if tenant_id else None

    def add(self, tenant: Tenant) -> None:
        """Add or replace a tenant for the life of this process."""
        self._tenants[tenant.id] = tenant

    def remove(self, tenant_id: str) -> None:
        """Forget a tenant, and any cached fallback answer for it (an install changed)."""
        self._tenants.pop(tenant_id, None)
        with self._lock:
            self._cache.pop(tenant_id, None)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(list(self._tenants.values()))
