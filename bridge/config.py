"""Settings: code defaults, then a TOML file, then ``BRIDGE_*`` environment variables.

Read once at start-up (:func:`load_settings`); nothing reads the environment later.
Nested values come from the environment as JSON (``BRIDGE_TENANTS='[...]'``) or with
``__`` between levels (``BRIDGE_RETRY__ATTEMPTS=6``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from bridge.errors import ConfigurationError
from bridge.models import BackendName, ContentId, ExportRequest, Format, SpaceKey

API_KEY_PREFIX = "sha256:"
FORGE_INSTALLATION_ARI = re.compile(r"ari:cloud:ecosystem::installation/[A-Za-z0-9-]{1,64}")
_FORGE_EVENT = re.compile(r"avi:confluence:([a-z_]{1,32}):([a-z_]{1,32})")
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def hash_api_key(key: str) -> str:
    """The stored form of a tenant API key (keys are random, so a plain SHA-256 suffices)."""
    return API_KEY_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh random tenant API key."""
    return "ceb_" + secrets.token_urlsafe(32)


def normalize_event(name: str) -> str | None:
    """A webhook event name in the bridge's vocabulary (Connect's and Data Center's
    ``page_updated``); Forge's ``avi:confluence:updated:page`` becomes ``page_updated``.
    ``None`` for anything else."""
    name = name.strip()
    forge = _FORGE_EVENT.fullmatch(name)
    if forge is not None:
        return f"{forge.group(2)}_{forge.group(1)}"
    return name if _EVENT_NAME.fullmatch(name) else None


def _check_whsec(secret: SecretStr | None) -> SecretStr | None:
    """Refuse a callback secret that is not ``whsec_`` + base64 of 24 to 64 bytes."""
    if secret is not None:
        value = secret.get_secret_value()
        try:
            raw = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except ValueError:
            raw = b""
        if not value.startswith("whsec_") or not 24 <= len(raw) <= 64:
            raise ValueError(
                "use 'whsec_' + base64 of 24 to 64 random bytes (`export-bridge keygen` prints one)"
            )
    return secret


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportRule(_Strict):
    """Which webhook events start which export (``[[tenants.rules]]``, ``[[connect_rules]]``).

    An event matches when its name is in ``events`` and it is about a page that passes every
    filter given: its space is in ``spaces``, its id is in ``page_ids`` (exact ids; webhook
    payloads carry no ancestry), and, with ``labels``, the payload lists at least one of them
    (events whose payload lists no labels never match a rule with ``labels``).
    """

    events: list[str] = Field(min_length=1)
    """``page_created``, ``page_updated``, ...; Forge names (``avi:confluence:updated:page``)
    are accepted and stored normalized."""
    spaces: list[SpaceKey] = Field(default_factory=list)
    page_ids: list[ContentId] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    backend: BackendName = "auto"
    format: Format
    template: str | dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    scope: Literal["current", "descendants"] = "current"
    run_as: Literal["event_user", "app"] = "event_user"
    """``event_user``: export (and attach) as the user the event names, when it names one;
    ``app``: as nobody in particular (the backend must not need a user; scroll-macro does)."""
    attach_to_page: bool = False
    callback_url: str | None = None
    """Also POST the finished job here (signed with the tenant's ``callback_secret``)."""

    @field_validator("events")
    @classmethod
    def _normalized(cls, events: list[str]) -> list[str]:
        names = []
        for event in events:
            name = normalize_event(event)
            if name is None:
                raise ValueError(
                    f"unknown event {event[:80]!r}: use page_created, page_updated, ... "
                    "or a Forge event such as avi:confluence:updated:page"
                )
            names.append(name)
        return names

    @model_validator(mode="after")
    def _exportable(self) -> ExportRule:
        # The export a match makes must be a valid request (checked once, at start-up).
        try:
            ExportRequest.model_validate(self.export_body("1", None))
        except PydanticValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ValueError(f"the rule makes an invalid export request ({problems})") from None
        return self

    def export_body(self, page_id: str, as_user: str | None) -> dict[str, Any]:
        """The normalized export request this rule makes for a page."""
        body: dict[str, Any] = {
            "backend": self.backend,
            "format": self.format,
            "source": {"pageId": page_id, "scope": self.scope},
            "options": dict(self.options),
        }
        if self.template is not None:
            body["template"] = self.template
        if as_user is not None and self.run_as == "event_user":
            body["asUser"] = as_user
        if self.attach_to_page:
            body["attachToPage"] = True
        if self.callback_url is not None:
            body["callback"] = {"url": self.callback_url}
        return body


class SigningKey(_Strict):
    """One link-signing key. The first key in ``signing_keys`` signs; all of them verify."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    secret: SecretStr = Field(min_length=32)


class RetrySettings(_Strict):
    """How upstream calls are retried: capped, jittered exponential backoff."""

    attempts: int = Field(default=4, ge=1, le=20)
    """Tries per upstream call within one step (the first try included)."""
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_cap: float = Field(default=8.0, ge=0)
    max_inline_wait: float = Field(default=10.0, ge=0)
    """Longest wait slept inside a step; a longer Retry-After reschedules the job instead."""
    retry_after_cap: float = Field(default=3600.0, gt=0)
    """A Retry-After larger than this is treated as this (never slept, never overflowing)."""
    job_attempts: int = Field(default=8, ge=1)
    """Consecutive failed steps (each already retried) after which a job fails."""


class TenantConfig(_Strict):
    """A tenant: who may call (hashed API keys) and which upstreams it has configured."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    name: str = ""
    api_keys: list[str] = Field(default_factory=list)
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """One table per backend name (``scroll-rest``, ...), validated by that backend."""
    callback_secret: SecretStr | None = None
    """Signs this tenant's callbacks (Standard Webhooks: ``whsec_`` + base64 of 24-64 bytes)."""
    default_backend: dict[str, str] = Field(default_factory=dict)
    """Per format, the backend ``auto`` picks first (e.g. ``{pdf = "scroll-macro"}``)."""
    forge_installations: list[str] = Field(default_factory=list)
    """Forge installations whose invocations (FITs) act for this tenant
    (``ari:cloud:ecosystem::installation/<uuid>``)."""

    rules: list[ExportRule] = Field(default_factory=list)
    """Webhook events that start exports for this tenant."""
    dc_webhook_secret: SecretStr | None = Field(default=None, min_length=16)
    """The secret of this tenant's Confluence Data Center webhooks (``X-Hub-Signature``),
    delivered to ``/webhooks/dc/<id>``."""

    @field_validator("callback_secret")
    @classmethod
    def _whsec(cls, secret: SecretStr | None) -> SecretStr | None:
        return _check_whsec(secret)

    @field_validator("forge_installations")
    @classmethod
    def _installation_aris(cls, aris: list[str]) -> list[str]:
        for ari in aris:
            if not FORGE_INSTALLATION_ARI.fullmatch(ari):
                raise ValueError(
                    "use the installation ARI, 'ari:cloud:ecosystem::installation/<uuid>'"
                )
        return aris

    @field_validator("api_keys")
    @classmethod
    def _hashed(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not (key.startswith(API_KEY_PREFIX) and len(key) == len(API_KEY_PREFIX) + 64):
                raise ValueError(
                    "API keys are stored hashed: use 'sha256:<hex>' "
                    "(`export-bridge keygen` prints a key and its hash)"
                )
        return keys


class Settings(BaseSettings):
    """Everything the bridge reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    public_url: str = "http://127.0.0.1:8080"
    """The URL callers reach the bridge at; download links are built on it."""
    database_url: str = "sqlite:///var/bridge.sqlite3"
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``redis://host:port/db``."""
    artifacts_url: str = "file:var/artifacts"
    """``file:relative/folder``, ``file:///absolute/folder`` or ``s3://bucket/prefix``."""
    signing_keys: list[SigningKey] = Field(default_factory=list)
    encryption_keys: list[SecretStr] = Field(default_factory=list)
    """Fernet keys for secrets at rest; the first encrypts, all decrypt. Required when
    several machines share the store (Redis); otherwise generated into ``encryption_key_file``."""
    encryption_key_file: str = "var/encryption.key"
    link_ttl: int = Field(default=3600, ge=30)
    """Seconds a minted download link stays valid (never past the artifact's retention)."""
    artifact_ttl: int = Field(default=7 * 86400, ge=60)
    """Seconds an exported file is kept after its job completes."""
    job_lease: float = Field(default=120.0, ge=1)
    """Seconds a process holds a job while it takes a step (renewed during long downloads).
    A process that dies mid-step is taken over by another once this runs out."""
    poll_interval: float = Field(default=2.0, gt=0)
    """Least time between two status calls to an upstream for one job."""
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    upstream_timeout: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    worker_threads: int = Field(default=4, ge=0)
    """In-process background threads; 0 disables the in-process worker."""
    max_wait: int = Field(default=60, ge=0)
    """Largest ``Prefer: wait=N`` honoured."""
    background: Literal["threads", "rq"] = "threads"
    """Where background steps run: in-process threads, or RQ workers started with
    ``export-bridge worker`` (needs a ``redis://`` ``database_url``)."""
    s3_endpoint_url: str | None = None
    """An S3-compatible endpoint (MinIO, LocalStack); default: AWS, or ``$AWS_ENDPOINT_URL``."""
    s3_region: str | None = None
    """The bucket's region; default: the standard AWS configuration (``$AWS_REGION``)."""
    download_mode: Literal["bridge", "presigned"] = "bridge"
    """``bridge`` streams files through signed bridge links; ``presigned`` hands out
    pre-signed S3 URLs instead (needs an ``s3://`` ``artifacts_url``; for Lambda)."""
    retry: RetrySettings = Field(default_factory=RetrySettings)
    tenants: list[TenantConfig] = Field(default_factory=list)
    app_name: str = "confluence-export-bridge"
    """The app name reported to upstreams (e.g. Scroll's ``issued-by-app``)."""
    allow_private_callbacks: bool = False
    """Let callback URLs point at loopback/private addresses (tests only)."""
    callback_schedule: list[float] = Field(
        default_factory=lambda: [0.0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    )
    """Seconds before each delivery attempt (Standard Webhooks' example schedule)."""
    callback_timeout: float = Field(default=15.0, gt=0)
    allow_loopback_upstreams: bool = False
    """Let upstream-supplied URLs (download links, installing sites) point at loopback or
    private addresses: only for the sandbox (the demo and the tests turn it on)."""
    connect_app_key: str = Field(
        default="confluence-export-bridge", pattern=r"^[A-Za-z0-9._-]{1,64}$"
    )
    """The Connect app key in the descriptor (``/atlassian-connect.json``)."""
    connect_app_name: str = Field(default="Confluence Export Bridge", min_length=1, max_length=80)
    connect_keys_url: str = "https://connect-install-keys.atlassian.com"
    """Where the public keys of signed install/uninstall hooks are fetched (``{url}/{kid}``)."""
    connect_allowed_base_urls: list[str] = Field(
        default_factory=lambda: ["*.atlassian.net", "*.jira.com"]
    )
    """Hosts an installing site's ``baseUrl`` may have (``*.`` matches subdomains); loopback
    is allowed too while ``allow_loopback_upstreams`` is on."""
    connect_backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Backend tables for tenants created by a Connect install. ``scroll-macro`` is always
    built from the install (site, client key, OAuth client, secret); a ``scroll-macro`` table
    here adds settings to it (``templates``, ``auth_server``, ...)."""
    connect_rules: list[ExportRule] = Field(default_factory=list)
    """Webhook rules of every tenant created by a Connect install."""
    connect_callback_secret: SecretStr | None = None
    """Signs the callbacks of tenants created by a Connect install (``whsec_...``)."""
    forge_jwks_url: str = "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json"
    """The keys Forge Invocation Tokens are signed with (staging tokens use Atlassian's
    staging JWKS while this is left at its default)."""
    forge_app_ids: list[str] = Field(default_factory=list)
    """Forge apps whose invocations are accepted: app ids or ``ari:cloud:ecosystem::app/<id>``."""
    jwt_leeway: int = Field(default=30, ge=0, le=120)
    """Seconds of clock skew allowed on Atlassian JWTs' ``exp``/``iat``/``nbf``."""

    @field_validator("connect_callback_secret")
    @classmethod
    def _connect_whsec(cls, secret: SecretStr | None) -> SecretStr | None:
        return _check_whsec(secret)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then environment, then the TOML file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings from *config_file* (or ``$BRIDGE_CONFIG``), the environment and *overrides*.

    :raises ConfigurationError: naming every invalid key.
    """
    path = config_file or os.environ.get("BRIDGE_CONFIG")
    if path is not None and not Path(path).is_file():
        raise ConfigurationError(f"config file {str(path)!r} does not exist")
    settings_cls: type[Settings] = Settings
    if path is not None:

        class FileSettings(Settings):
            model_config = SettingsConfigDict(toml_file=str(path))

        settings_cls = FileSettings
    try:
        return settings_cls(**overrides)
    except (tomllib.TOMLDecodeError, SettingsError) as exc:
        raise ConfigurationError(f"invalid configuration: {exc}") from None
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None
