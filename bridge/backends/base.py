"""The one interface every upstream exporter implements.

A backend turns a normalized request into upstream calls, in three verbs the service
drives: :meth:`Backend.start` an upstream job, :meth:`Backend.poll` it until it is ready,
then :meth:`Backend.fetch` the file (streamed). What it needs to remember between calls
goes in the *handle*, a JSON-serializable dict stored with the job, so any process can
take the next step after a restart.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from bridge.config import Settings
from bridge.http import HostPolicy, UpstreamClient
from bridge.models import ExportRequest, Format, parse_model

Handle = dict[str, Any]


class BackendConfig(BaseModel):
    """Base for a backend's per-tenant configuration table."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendOptions(BaseModel):
    """Base for a backend's ``options`` in the normalized request."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(frozen=True)
class Running:
    """The upstream job is under way."""

    handle: Handle
    progress: int
    phase: str
    poll_after: float | None = None
    """Seconds until the next poll is worth making (the upstream's hint), if known."""


@dataclass(frozen=True)
class Ready:
    """The upstream has the file; :meth:`Backend.fetch` can get it."""

    handle: Handle
    phase: str = "downloading"


@dataclass(frozen=True)
class Cancelled:
    """The upstream reports the job cancelled (by us or by someone else)."""

    handle: Handle
    message: str


Step = Running | Ready | Cancelled


@dataclass
class Download:
    """A file coming from an upstream: stream ``chunks`` once."""

    chunks: Iterator[bytes]
    filename: str
    content_type: str
    size: int | None = None


@dataclass(frozen=True)
class JobContext:
    """What a backend knows about the job it is working on."""

    job_id: str
    tenant_id: str
    config: Any
    """The tenant's validated configuration for this backend (its ``Config`` model)."""
    as_user: str | None = None
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Per-job credentials handed over by the caller (e.g. a Forge user token)."""


@dataclass(frozen=True)
class BackendServices:
    """Shared things a backend is built with."""

    settings: Settings
    clock: Callable[[], float]
    make_client: Callable[[str], UpstreamClient]
    extras: dict[str, Any] = field(default_factory=dict)
    """Named services for backends that need more (token providers, stores)."""


class Backend(abc.ABC):
    """One upstream exporter."""

    name: ClassVar[str]
    formats: ClassVar[frozenset[Format]]
    Config: ClassVar[type[BackendConfig]]
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    pages_only: ClassVar[bool] = False
    """Exports pages (and their descendants) only, not whole spaces."""

    def __init__(self, services: BackendServices) -> None:
        self.services = services
        self.client = services.make_client(self.name)

    def parse_config(self, raw: dict[str, Any], where: str) -> BackendConfig:
        """Validate a tenant's configuration table for this backend."""
        return parse_model(self.Config, raw, where)

    def parse_options(self, request: ExportRequest) -> BackendOptions:
        """Validate ``request.options`` for this backend (errors name ``options.<field>``)."""
        return parse_model(self.Options, request.options, "options")

    def validate(self, config: Any, request: ExportRequest) -> None:
        """Check, before a job is stored, what only this backend knows is required.

        :raises ValidationError: naming the fields at fault.
        """
        self.parse_options(request)

    def unsupported(self, config: Any, request: ExportRequest) -> str | None:
        """Why this backend, so configured, cannot serve *request*; ``None`` if it can."""
        if request.format not in self.formats:
            return f"{self.name} does not export {request.format}"
        if self.pages_only and request.page_id is None:
            return f"{self.name} exports a page (and its descendants), not a whole space"
        return None

    @abc.abstractmethod
    def start(self, ctx: JobContext, request: ExportRequest) -> Step:
        """Start the upstream job."""

    @abc.abstractmethod
    def poll(self, ctx: JobContext, handle: Handle) -> Step:
        """Ask the upstream how the job is doing."""

    @abc.abstractmethod
    def fetch(self, ctx: JobContext, handle: Handle) -> AbstractContextManager[Download]:
        """Open the finished file as a stream."""

    def cancel(self, ctx: JobContext, handle: Handle) -> None:  # noqa: B027 - optional verb
        """Cancel the upstream job where the upstream can; by default there is nothing to do."""

    def host_policy(self, config: Any, *hosts: str) -> HostPolicy:
        """Allow upstream-supplied URLs only to *hosts* (plus configured extras)."""
        extra = getattr(config, "download_hosts", ())
        return HostPolicy(
            frozenset(h for h in (*hosts, *extra) if h),
            allow_loopback=self.services.settings.allow_loopback_upstreams,
        )

    def close(self) -> None:
        self.client.close()
