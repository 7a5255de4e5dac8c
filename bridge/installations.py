"""Tenants created by Connect installs, kept in the shared store.

A verified ``installed`` hook (:mod:`bridge.connect`) becomes an :class:`Installation` stored
under its ``clientKey``, with the ``sharedSecret`` sealed by the
:class:`~bridge.crypto.SecretBox`; a re-install replaces it, an uninstall deletes it. Every
process of the bridge finds the tenant ``connect:<clientKey>`` through
:meth:`Installations.tenant`, the fallback of the :class:`~bridge.tenants.TenantDirectory`.

An installed tenant's backends are the ``connect_backends`` tables of the settings plus a
``scroll-macro`` table built from the install (the site's ``baseUrl``, ``clientKey``,
``oauthClientId`` and ``sharedSecret``), so its users export as themselves through Connect
impersonation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bridge.backends.base import Backend
from bridge.config import Settings
from bridge.crypto import SecretBox
from bridge.errors import ConfigurationError, FieldError, ValidationError
from bridge.models import parse_model
from bridge.stores.base import Store
from bridge.tenants import Tenant, parse_backends

log = logging.getLogger(__name__)

TENANT_PREFIX: Final = "connect:"
"""Tenant ids of installed tenants are ``connect:<clientKey>``."""
_RECORD_PREFIX: Final = "connect-installation:"
_CHECK_SITE: Final = "https://example.atlassian.net/wiki"


class InstallPayload(BaseModel):
    """The ``installed`` hook's body (upstreams.md §4.3); unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    key: str = Field(min_length=1, max_length=64)
    client_key: str = Field(alias="clientKey", pattern=r"^[A-Za-z0-9_.:-]{1,120}$")
    shared_secret: SecretStr = Field(alias="sharedSecret", min_length=32, max_length=1024)
    """Sent only on install; required here (an install without one is useless)."""
    base_url: str = Field(alias="baseUrl", min_length=1, max_length=2048)
    display_url: str | None = Field(default=None, alias="displayUrl", max_length=2048)
    oauth_client_id: str | None = Field(
        default=None, alias="oauthClientId", min_length=1, max_length=256
    )
    installation_id: str | None = Field(default=None, alias="installationId", max_length=256)
    product_type: str | None = Field(default=None, alias="productType", max_length=64)


@dataclass(frozen=True)
class Installation:
    """One Connect installation as stored."""

    client_key: str
    base_url: str
    shared_secret: str = field(repr=False)
    oauth_client_id: str | None = None
    display_url: str | None = None
    installation_id: str | None = None
    product_type: str | None = None
    installed_at: float = 0.0

    @property
    def tenant_id(self) -> str:
        """The tenant this installation is: ``connect:<clientKey>``."""
        return TENANT_PREFIX + self.client_key


class Installations:
    """Save, read and remove Connect installations; build their tenants."""

    def __init__(
        self,
        store: Store,
        secret_box: SecretBox,
        settings: Settings,
        backends: Mapping[str, Backend],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.box = secret_box
        self.settings = settings
        self.backends = backends
        self.clock = clock
        self.check_settings()

    def check_settings(self) -> None:
        """Validate ``connect_backends`` once, at start-up, with a stand-in installation.

        :raises ConfigurationError: naming the backend and field at fault.
        """
        sample = Installation("check", _CHECK_SITE, "x" * 32, oauth_client_id="check")
        self.tenant_for(sample)

    def save(self, payload: object) -> Installation:
        """Store a verified ``installed`` payload (a re-install replaces the earlier one).

        :raises ValidationError: the payload lacks a field or is for another app key.
        """
        body = parse_model(InstallPayload, payload)
        if body.key != self.settings.connect_app_key:
            raise ValidationError(
                "This install is for another app.",
                [FieldError("key", f"This bridge is the app {self.settings.connect_app_key!r}.")],
            )
        installation = Installation(
            client_key=body.client_key,
            base_url=body.base_url.rstrip("/"),
            shared_secret=body.shared_secret.get_secret_value(),
            oauth_client_id=body.oauth_client_id,
            display_url=body.display_url,
            installation_id=body.installation_id,
            product_type=body.product_type,
            installed_at=self.clock(),
        )
        try:
            self.tenant_for(installation)
        except ConfigurationError as exc:
            raise ValidationError(
                "The install cannot make a usable tenant.", [FieldError("baseUrl", exc.message)]
            ) from None
        record = {
            "clientKey": installation.client_key,
            "baseUrl": installation.base_url,
            "sharedSecret": self.box.seal(installation.shared_secret),
            "oauthClientId": installation.oauth_client_id,
            "displayUrl": installation.display_url,
            "installationId": installation.installation_id,
            "productType": installation.product_type,
            "installedAt": installation.installed_at,
        }
        self.store.set_value(
            _RECORD_PREFIX + installation.client_key, json.dumps(record), self.clock()
        )
        log.info("connect app installed", extra={"tenant": installation.tenant_id})
        return installation

    def get(self, client_key: str) -> Installation | None:
        """The stored installation for *client_key*, or ``None`` (also when its secret was
        sealed under a key no longer configured)."""
        raw = self.store.get_value(_RECORD_PREFIX + client_key, self.clock())
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            return Installation(
                client_key=record["clientKey"],
                base_url=record["baseUrl"],
                shared_secret=self.box.open(record["sharedSecret"]),
                oauth_client_id=record.get("oauthClientId"),
                display_url=record.get("displayUrl"),
                installation_id=record.get("installationId"),
                product_type=record.get("productType"),
                installed_at=float(record.get("installedAt") or 0.0),
            )
        except (ValueError, KeyError, TypeError):
            log.warning(
                "unusable stored installation", extra={"tenant": TENANT_PREFIX + client_key}
            )
            return None

    def remove(self, client_key: str) -> None:
        """Forget an installation (uninstall); unknown keys are ignored."""
        self.store.delete_value(_RECORD_PREFIX + client_key)
        log.info("connect app uninstalled", extra={"tenant": TENANT_PREFIX + client_key})

    def tenant_for(self, installation: Installation) -> Tenant:
        """The tenant of *installation*, with validated backend tables.

        :raises ConfigurationError: a ``connect_backends`` table is invalid.
        """
        tables: dict[str, dict[str, Any]] = {
            name: dict(table) for name, table in self.settings.connect_backends.items()
        }
        if installation.oauth_client_id:
            tables["scroll-macro"] = {
                **tables.get("scroll-macro", {}),
                "site_url": installation.base_url,
                "client_key": installation.client_key,
                "oauth_client_id": installation.oauth_client_id,
                "shared_secret": installation.shared_secret,
            }
        else:
            # Without an OAuth client the install cannot act as its users.
            tables.pop("scroll-macro", None)
        backends = parse_backends(tables, self.backends, "connect_backends")
        return Tenant(
            id=installation.tenant_id,
            name=urlsplit(installation.display_url or installation.base_url).netloc
            or installation.client_key,
            backends=backends,
            extra={
                "clientKey": installation.client_key,
                "baseUrl": installation.base_url,
                "displayUrl": installation.display_url,
                "installationId": installation.installation_id,
                "productType": installation.product_type,
            },
        )

    def tenant(self, tenant_id: str) -> Tenant | None:
        """The installed tenant *tenant_id* (``connect:<clientKey>``), or ``None``."""
        if not tenant_id.startswith(TENANT_PREFIX):
            return None
        installation = self.get(tenant_id[len(TENANT_PREFIX) :])
        if installation is None:
            return None
        try:
            return self.tenant_for(installation)
        except ConfigurationError:
            log.warning(
                "installed tenant has an invalid configuration", extra={"tenant": tenant_id}
            )
            return None
