"""The shipped example configuration is valid: it loads and every backend table validates."""

from __future__ import annotations

from pathlib import Path

from bridge.backends import BACKEND_CLASSES
from bridge.backends.base import BackendServices
from bridge.config import load_settings
from bridge.http import UpstreamClient
from bridge.tenants import TenantDirectory

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_config_loads_and_validates() -> None:
    settings = load_settings(EXAMPLE)
    services = BackendServices(
        settings=settings,
        clock=lambda: 0.0,
        make_client=lambda name: UpstreamClient(name, settings.retry),
    )
    backends = {name: cls(services) for name, cls in BACKEND_CLASSES.items()}
    directory = TenantDirectory.from_config(settings.tenants, backends)
    tenant = directory.get("acme")
    # Every backend is documented with a table that validates.
    assert set(tenant.backends) == set(BACKEND_CLASSES)
    assert settings.public_url.startswith("https://")
