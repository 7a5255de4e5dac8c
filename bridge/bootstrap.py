"""Build a running bridge from settings: the one place where the parts are wired together."""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, SecretStr

from bridge.artifacts import ArtifactStore, open_artifact_store
from bridge.attachments import PageAttachments
from bridge.backends import build_backends
from bridge.backends.base import Backend, BackendServices
from bridge.config import Settings
from bridge.crypto import SecretBox, load_or_create_key_file
from bridge.delivery import Deliveries
from bridge.errors import ConfigurationError
from bridge.http import UpstreamClient
from bridge.impersonation import ImpersonationTokens
from bridge.installations import Installations
from bridge.rules import WebhookRules
from bridge.service import ExportService
from bridge.signing import LinkSigner
from bridge.stores import Store, open_store
from bridge.tenants import Tenant, TenantDirectory
from bridge.views import job_view
from bridge.worker import Worker

GENERATED_KEY = "signing-key:generated"


@dataclass
class Bridge:
    """The assembled parts of one bridge process."""

    settings: Settings
    store: Store
    artifacts: ArtifactStore
    backends: dict[str, Backend]
    tenants: TenantDirectory
    service: ExportService
    worker: Worker | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)
    """Called by :meth:`close` (e.g. the RQ dispatcher's connection)."""

    def close(self) -> None:
        """Stop the worker and release connections."""
        if self.worker is not None:
            self.worker.stop()
        for closer in self.closers:
            closer()
        for backend in self.backends.values():
            backend.close()
        self.store.close()


def signing_keys(
    settings: Settings, store: Store, clock: Callable[[], float]
) -> list[tuple[str, bytes]]:
    """The configured link keys; with none configured, one generated once and kept in the store."""
    if settings.signing_keys:
        return [(k.id, k.secret.get_secret_value().encode()) for k in settings.signing_keys]
    secret = store.add_value(GENERATED_KEY, secrets.token_urlsafe(48), clock())
    return [("auto", secret.encode())]


def encryption_keys(settings: Settings) -> list[str]:
    """The configured encryption keys, or the generated key file's key."""
    if settings.encryption_keys:
        return [key.get_secret_value() for key in settings.encryption_keys]
    if not settings.database_url.startswith("sqlite:"):
        raise ConfigurationError(
            "encryption_keys must be configured when the store is shared (not SQLite)"
        )
    return [load_or_create_key_file(settings.encryption_key_file)]


_SECRET_NAME = re.compile(r"(token|secret|password|key)$", re.IGNORECASE)


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret in the settings (for log redaction): ``SecretStr`` values anywhere, and
    string values of backend-table keys named like secrets (``token``, ``password``, ...)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for item in value.__dict__.values():
                walk(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str) and _SECRET_NAME.search(str(key)):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(settings)
    return [secret for secret in found if secret]


def installed_tenants(
    installations: Installations, settings: Settings
) -> Callable[[str], Tenant | None]:
    """The tenant lookup for Connect installs, giving them ``connect_callback_secret``."""
    secret = settings.connect_callback_secret

    def lookup(tenant_id: str) -> Tenant | None:
        tenant = installations.tenant(tenant_id)
        if tenant is None or secret is None or tenant.callback_secret:
            return tenant
        return dataclasses.replace(tenant, callback_secret=secret.get_secret_value())

    return lookup


def build_bridge(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    start_worker: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Bridge:
    """Assemble store, artifacts, backends, tenants, service and (optionally) the worker."""
    store = open_store(settings.database_url)
    artifacts = open_artifact_store(
        settings.artifacts_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
    )

    def make_client(backend: str) -> UpstreamClient:
        return UpstreamClient(
            backend,
            settings.retry,
            timeout=settings.upstream_timeout,
            connect_timeout=settings.connect_timeout,
            sleep=sleep,
            clock=clock,
            user_agent=f"confluence-export-bridge ({settings.app_name})",
        )

    secret_box = SecretBox(encryption_keys(settings))
    services = BackendServices(
        settings=settings,
        clock=clock,
        make_client=make_client,
        extras={"store": store, "secret_box": secret_box},
    )
    backends = build_backends(services)
    tenants = TenantDirectory.from_config(settings.tenants, backends)
    webhook_rules = WebhookRules.from_settings(settings)
    installations = Installations(store, secret_box, settings, backends, clock)
    tenants.set_fallback(installed_tenants(installations, settings))
    service = ExportService(
        settings,
        store,
        artifacts,
        LinkSigner(signing_keys(settings, store, clock)),
        backends,
        tenants,
        clock,
        secret_box,
    )
    # One try per upload: the delivery schedule retries (a streamed body cannot be replayed).
    attach_client = UpstreamClient(
        "confluence-attachments",
        settings.retry.model_copy(update={"attempts": 1}),
        timeout=settings.upstream_timeout,
        connect_timeout=settings.connect_timeout,
        clock=clock,
        user_agent=f"confluence-export-bridge ({settings.app_name})",
    )
    attachments = PageAttachments(
        settings,
        artifacts,
        tenants,
        installations,
        ImpersonationTokens(attach_client, store, secret_box, clock),
        attach_client,
        job_secrets=lambda job: service.context(job, None).secrets,
        clock=clock,
    )
    service.deliveries = Deliveries(
        settings,
        store,
        clock,
        render=lambda job: job_view(job, service),
        secret_for=lambda tenant_id: getattr(tenants.find(tenant_id), "callback_secret", None),
        attach=attachments,
    )
    bridge = Bridge(
        settings,
        store,
        artifacts,
        backends,
        tenants,
        service,
        extras={
            "secret_box": secret_box,
            "installations": installations,
            "webhook_rules": webhook_rules,
        },
        closers=[attach_client.close],
    )
    if settings.background == "rq":
        from bridge.rq_worker import attach  # RQ workers take the steps; no threads here

        attach(bridge)
    elif start_worker and settings.worker_threads > 0:
        bridge.worker = Worker(service, settings.worker_threads).start()
    return bridge
