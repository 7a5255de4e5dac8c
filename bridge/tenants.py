"""Tenants: who may call the bridge, and each tenant's validated backend configuration."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
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


class TenantDirectory:
    """Look tenants up by id or by API key."""

    def __init__(self, tenants: Iterable[Tenant], api_keys: Mapping[str, str]) -> None:
        self._tenants = {tenant.id: tenant for tenant in tenants}
        self._api_keys = dict(api_keys)  # sha256:<hex> -> tenant id

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
            validated: dict[str, BackendConfig] = {}
            for name, raw in config.backends.items():
                if name not in backends:
                    raise ConfigurationError(
                        f"tenants[{index}] ({config.id}): unknown backend {name!r}; "
                        f"known: {', '.join(sorted(backends))}"
                    )
                try:
                    validated[name] = backends[name].parse_config(raw, name)
                except ValidationError as exc:
                    fields = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
                    raise ConfigurationError(
                        f"tenants[{index}] ({config.id}) backends.{fields}"
                    ) from None
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
                )
            )
            for key_hash in config.api_keys:
                if key_hash in keys:
                    raise ConfigurationError(f"tenants[{index}]: an API key is used twice")
                keys[key_hash] = config.id
        return cls(tenants, keys)

    def get(self, tenant_id: str) -> Tenant:
        """:raises NotFoundError: unknown tenant."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise NotFoundError(f"unknown tenant {tenant_id!r}")
        return tenant

    def find(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(tenant_id)

    def by_api_key(self, key: str) -> Tenant | None:
        """The tenant owning API key *key*, looked up by the key's hash (keys are random,
        so the hash reveals nothing and lookup timing leaks nothing useful)."""
        tenant_id = self._api_keys.get(hash_api_key(key))
        return self._tenants.get(tenant_id) if tenant_id else None

    def add(self, tenant: Tenant) -> None:
        """Add or replace a tenant (Atlassian installs)."""
        self._tenants[tenant.id] = tenant

    def remove(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(list(self._tenants.values()))
