"""Tests for bridge.tenants: building the tenant directory from config, and lookups."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from bridge.backends.base import (
    Backend,
    BackendConfig,
    BackendServices,
    Download,
    Handle,
    JobContext,
    Step,
)
from bridge.config import RetrySettings, Settings, TenantConfig, hash_api_key
from bridge.errors import ConfigurationError, NotFoundError
from bridge.http import UpstreamClient
from bridge.models import ExportRequest
from bridge.tenants import Tenant, TenantDirectory


class FakeConfig(BackendConfig):
    """A tiny per-tenant table: one required URL, one optional number."""

    base_url: str
    limit: int = 5


class FakeBackend(Backend):
    """Only its configuration matters here; the verbs are never called."""

    name = "fake"
    formats = frozenset({"pdf"})
    Config = FakeConfig

    def start(self, ctx: JobContext, request: ExportRequest) -> Step:
        raise NotImplementedError

    def poll(self, ctx: JobContext, handle: Handle) -> Step:
        raise NotImplementedError

    def fetch(self, ctx: JobContext, handle: Handle) -> AbstractContextManager[Download]:
        raise NotImplementedError


class OtherBackend(FakeBackend):
    name = "other"


@pytest.fixture
def backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Backend]]:
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    services = BackendServices(
        settings=Settings(),
        clock=time.time,
        make_client=lambda name: UpstreamClient(name, RetrySettings()),
    )
    built: dict[str, Backend] = {"fake": FakeBackend(services), "other": OtherBackend(services)}
    yield built
    for backend in built.values():
        backend.close()


def tenant(tenant_id: str = "acme", **fields: Any) -> TenantConfig:
    return TenantConfig(id=tenant_id, **fields)


def config_error(configs: list[TenantConfig], backends: dict[str, Backend]) -> str:
    with pytest.raises(ConfigurationError) as info:
        TenantDirectory.from_config(configs, backends)
    return info.value.message


def test_from_config_validates_backend_tables(backends: dict[str, Backend]) -> None:
    directory = TenantDirectory.from_config(
        [
            tenant(
                "acme",
                name="Acme",
                api_keys=[hash_api_key("key-a")],
                backends={"fake": {"base_url": "https://acme.test"}},
                default_backend={"pdf": "fake"},
            ),
            tenant("globex", backends={"other": {"base_url": "https://g.test", "limit": 9}}),
        ],
        backends,
    )
    acme = directory.get("acme")
    assert acme.name == "Acme"
    assert isinstance(acme.backends["fake"], FakeConfig)
    assert acme.backends["fake"] == FakeConfig(base_url="https://acme.test")
    assert acme.default_backend == {"pdf": "fake"}
    globex = directory.get("globex")
    assert globex.name == "globex"  # defaults to the id
    assert globex.backends["other"] == FakeConfig(base_url="https://g.test", limit=9)
    assert {t.id for t in directory} == {"acme", "globex"}


def test_unknown_backend_is_named(backends: dict[str, Backend]) -> None:
    message = config_error([tenant(backends={"scroll-pdf-2000": {}})], backends)
    assert "scroll-pdf-2000" in message
    assert "acme" in message
    assert "fake" in message and "other" in message  # the known ones are listed


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({}, "base_url"),
        ({"base_url": "https://x.test", "limit": "lots"}, "limit"),
        ({"base_url": "https://x.test", "typo": 1}, "typo"),
    ],
)
def test_invalid_backend_table_names_tenant_and_field(
    backends: dict[str, Backend], table: dict[str, Any], field: str
) -> None:
    message = config_error(
        [
            tenant("ok", backends={"fake": {"base_url": "https://ok.test"}}),
            tenant("bad", backends={"fake": table}),
        ],
        backends,
    )
    assert "tenants[1]" in message
    assert "bad" in message
    assert f"fake.{field}" in message


def test_default_backend_must_be_configured(backends: dict[str, Backend]) -> None:
    message = config_error(
        [
            tenant(
                backends={"fake": {"base_url": "https://x.test"}},
                default_backend={"pdf": "other"},
            )
        ],
        backends,
    )
    assert "default_backend.pdf" in message
    assert "other" in message


def test_duplicate_api_key_across_tenants(backends: dict[str, Backend]) -> None:
    key = hash_api_key("shared")
    message = config_error([tenant("a", api_keys=[key]), tenant("b", api_keys=[key])], backends)
    assert "tenants[1]" in message
    assert "twice" in message
    assert key not in message


def test_duplicate_api_key_within_a_tenant(backends: dict[str, Backend]) -> None:
    key = hash_api_key("k")
    config_error([tenant("a", api_keys=[key, key])], backends)


def test_duplicate_tenant_id_is_rejected(backends: dict[str, Backend]) -> None:
    """Two tenants with one id would silently merge: the first tenant's API keys would log
    in as the second tenant, with the second tenant's upstream credentials."""
    message = config_error(
        [
            tenant("acme", api_keys=[hash_api_key("k1")]),
            tenant("acme", api_keys=[hash_api_key("k2")]),
        ],
        backends,
    )
    assert "acme" in message


def test_by_api_key(backends: dict[str, Backend]) -> None:
    directory = TenantDirectory.from_config(
        [
            tenant("a", api_keys=[hash_api_key("key-a1"), hash_api_key("key-a2")]),
            tenant("b", api_keys=[hash_api_key("key-b")]),
        ],
        backends,
    )
    assert (found := directory.by_api_key("key-a1")) is not None and found.id == "a"
    assert (found := directory.by_api_key("key-a2")) is not None and found.id == "a"
    assert (found := directory.by_api_key("key-b")) is not None and found.id == "b"
    assert directory.by_api_key("key-c") is None
    assert directory.by_api_key("") is None
    # The stored hash is not itself a key.
    assert directory.by_api_key(hash_api_key("key-b")) is None


def test_removed_tenant_keys_stop_working(backends: dict[str, Backend]) -> None:
    directory = TenantDirectory.from_config(
        [tenant("a", api_keys=[hash_api_key("key-a")])], backends
    )
    directory.remove("a")
    assert directory.by_api_key("key-a") is None
    assert directory.find("a") is None
    directory.remove("a")  # idempotent


def test_get_find_add(backends: dict[str, Backend]) -> None:
    directory = TenantDirectory.from_config([], backends)
    with pytest.raises(NotFoundError):
        directory.get("nobody")
    assert directory.find("nobody") is None
    directory.add(Tenant("site-1", "Site 1", extra={"clientKey": "ck"}))
    assert directory.get("site-1").extra == {"clientKey": "ck"}
    directory.add(Tenant("site-1", "Renamed"))
    assert directory.get("site-1").name == "Renamed"
    assert [t.id for t in directory] == ["site-1"]


def test_iteration_is_a_snapshot(backends: dict[str, Backend]) -> None:
    directory = TenantDirectory.from_config([tenant("a"), tenant("b")], backends)
    for t in directory:
        directory.remove(t.id)  # must not raise "dict changed size during iteration"
    assert list(directory) == []
