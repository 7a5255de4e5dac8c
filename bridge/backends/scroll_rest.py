"""``scroll-rest``: the Scroll Word/PDF/HTML Exporter REST API (Data Center, Server and Cloud).

Async: ``POST …/api/public/1/exports`` → ``jobId``; ``GET …/exports/{jobId}/status`` until
``complete``; then the file at ``downloadUrl``. Sync: ``GET …/export-sync?…`` returns the
file itself. Scroll forgets a job 10 minutes after it completes, which is why the service
fetches the file as soon as :meth:`ScrollRestBackend.poll` says it is ready.

Cookies the upstream sets (an anonymous session, a multi-node load balancer's affinity
cookie) are kept per job in the handle and sent on every later call for that job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, model_validator

from bridge.backends.base import (
    Backend,
    BackendConfig,
    BackendOptions,
    Cancelled,
    Download,
    Handle,
    JobContext,
    Ready,
    Running,
    Step,
)
from bridge.errors import (
    FieldError,
    UpstreamJobFailedError,
    UpstreamResponseError,
    ValidationError,
)
from bridge.models import ExportRequest, Format
from bridge.scroll import ScrollStatus

# Data Center servlet names and Cloud host names of the three products, by format.
DC_SERVLETS: dict[str, str] = {"docx": "scroll-office", "pdf": "scroll-pdf", "html": "scroll-html"}
CLOUD_HOSTS: dict[str, str] = {"docx": "scroll-word", "pdf": "scroll-pdf", "html": "scroll-html"}
EXTENSIONS: dict[str, str] = {"docx": "docx", "pdf": "pdf", "html": "zip"}
CONTENT_TYPES: dict[str, str] = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "pdf": "application/pdf",
    "html": "application/zip",
}


class ScrollAuth(BackendConfig):
    """How the bridge authenticates to Scroll: a bearer token (DC PAT or Scroll Cloud API
    token), HTTP basic, or anonymous (session cookie carried per job)."""

    type: Literal["bearer", "basic", "anonymous"] = "bearer"
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> ScrollAuth:
        if self.type == "bearer" and not self.token:
            raise ValueError("auth.token is required for bearer auth")
        if self.type == "basic" and not (self.username and self.password):
            raise ValueError("auth.username and auth.password are required for basic auth")
        return self


class ScrollRestConfig(BackendConfig):
    """A tenant's Scroll REST upstream."""

    flavor: Literal["dc", "cloud"] = "dc"
    base_url: str | None = None
    """Data Center/Server: the Confluence base URL including its context path."""
    region: str = Field(default="us", pattern=r"^[a-z]{2}$")
    """Cloud: the exporter region (``us``; others UNCONFIRMED)."""
    urls: dict[Format, str] = Field(default_factory=dict)
    """Explicit API prefixes per format (``…/api/public/1``); override the defaults."""
    auth: ScrollAuth = Field(default_factory=lambda: ScrollAuth(type="anonymous"))
    templates: dict[Format, str] = Field(default_factory=dict)
    """Default template id per format, used when the request names none."""
    download_hosts: list[str] = Field(default_factory=list)
    """Extra hosts ``downloadUrl`` may point at (the API host is always allowed)."""

    @model_validator(mode="after")
    def _where(self) -> ScrollRestConfig:
        if self.flavor == "dc" and not self.base_url and not self.urls:
            raise ValueError("base_url is required for a Data Center/Server Scroll upstream")
        return self

    def api_prefix(self, fmt: str) -> str:
        """The ``…/api/public/1`` URL of the product that exports *fmt*."""
        if fmt in self.urls:
            return self.urls[fmt].rstrip("/")
        if self.flavor == "dc":
            assert self.base_url is not None
            return f"{self.base_url.rstrip('/')}/plugins/servlet/{DC_SERVLETS[fmt]}/api/public/1"
        return f"https://{CLOUD_HOSTS[fmt]}.{self.region}.exporter.k15t.app/api/public/1"


class ScrollRestOptions(BackendOptions):
    """Scroll export parameters beyond page, scope and template."""

    mode: Literal["async", "sync"] = "async"
    locale: str | None = Field(default=None, max_length=35)
    version_id: str | None = Field(default=None, alias="versionId", max_length=128)
    variant_id: str | None = Field(default=None, alias="variantId", max_length=128)
    language_key: str | None = Field(default=None, alias="languageKey", max_length=64)
    time_zone: str | None = Field(default=None, alias="timeZone", max_length=64)


class ScrollRestBackend(Backend):
    """Exports through Scroll's REST API with a dedicated account's credentials."""

    name = "scroll-rest"
    formats = frozenset({"docx", "pdf", "html"})
    Config = ScrollRestConfig
    Options = ScrollRestOptions
    pages_only = True

    def validate(self, config: Any, request: ExportRequest) -> None:
        options = self.parse_options(request)
        assert isinstance(options, ScrollRestOptions)
        export_parameters(config, request, options)

    # --- the three verbs -------------------------------------------------------------

    def start(self, ctx: JobContext, request: ExportRequest) -> Step:
        config: ScrollRestConfig = ctx.config
        options = ScrollRestOptions.model_validate(request.options)
        params = export_parameters(config, request, options)
        prefix = config.api_prefix(request.format)
        handle: Handle = {"prefix": prefix, "format": request.format, "cookies": {}}
        if options.mode == "sync":
            return Ready({**handle, "sync": params}, phase="exporting")
        response = self.client.request(
            "POST", f"{prefix}/exports", json=params, **self._auth(config, handle)
        )
        _keep_cookies(handle, response.cookies.get_dict())
        job_id = self.client.json(response).get("jobId") if response.content else None
        if not isinstance(job_id, str) or not job_id:
            raise UpstreamResponseError("Scroll's start answer has no jobId", backend=self.name)
        handle["jobId"] = job_id
        return Running(handle, progress=0, phase="exporting")

    def poll(self, ctx: JobContext, handle: Handle) -> Step:
        config: ScrollRestConfig = ctx.config
        if "sync" in handle:
            return Ready(handle, phase="exporting")
        response = self.client.request(
            "GET",
            f"{handle['prefix']}/exports/{handle['jobId']}/status",
            **self._auth(config, handle),
        )
        handle = {**handle}
        _keep_cookies(handle, response.cookies.get_dict())
        status = ScrollStatus.from_json(self.client.json(response), backend=self.name)
        return status_step(status, handle, self.name)

    @contextmanager
    def fetch(self, ctx: JobContext, handle: Handle) -> Iterator[Download]:
        config: ScrollRestConfig = ctx.config
        fmt = handle["format"]
        if "sync" in handle:
            url = f"{handle['prefix']}/export-sync"
            kwargs = {"params": handle["sync"], **self._auth(config, handle)}
        else:
            url = handle["downloadUrl"]
            self.host_policy(config, urlsplit(handle["prefix"]).netloc).check(url, self.name)
            # Scroll Cloud's downloadUrl carries its own token: send no credentials there.
            kwargs = self._auth(config, handle) if config.flavor == "dc" else {}
        response = self.client.request("GET", url, stream=True, allow_redirects=False, **kwargs)
        filename = _filename(response.headers.get("Content-Disposition"), response.url, fmt)
        size = response.headers.get("Content-Length")
        yield Download(
            chunks=self.client.iter_body(response),
            filename=filename,
            content_type=response.headers.get("Content-Type", CONTENT_TYPES[fmt]).split(";")[0],
            size=int(size) if size and size.isdigit() else None,
        )

    def cancel(self, ctx: JobContext, handle: Handle) -> None:
        if "jobId" not in handle:
            return
        self.client.request(
            "DELETE",
            f"{handle['prefix']}/exports/{handle['jobId']}",
            expected=(200, 202, 204, 404),
            **self._auth(ctx.config, handle),
        )

    # --- helpers ---------------------------------------------------------------------

    @staticmethod
    def _auth(config: ScrollRestConfig, handle: Handle) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cookies": dict(handle.get("cookies", {}))}
        auth = config.auth
        if auth.type == "bearer" and auth.token is not None:
            kwargs["headers"] = {"Authorization": f"Bearer {auth.token.get_secret_value()}"}
        elif auth.type == "basic" and auth.password is not None:
            kwargs["auth"] = (auth.username, auth.password.get_secret_value())
        return kwargs


def status_step(status: ScrollStatus, handle: Handle, backend: str) -> Step:
    """The job step a Scroll status means, for the REST and the macro route alike.

    :raises UpstreamResponseError: complete without a ``downloadUrl``.
    :raises UpstreamJobFailedError: Scroll's own job ended in ``error``.
    """
    if status.status == "complete":
        if not status.download_url:
            raise UpstreamResponseError(
                "Scroll reports complete without a downloadUrl", backend=backend
            )
        return Ready({**handle, "downloadUrl": status.download_url})
    if status.status == "cancelled":
        return Cancelled(handle, "The export was cancelled in Scroll.")
    if status.status == "error":
        raise UpstreamJobFailedError(
            f"Scroll's export failed at step {status.step} of {status.total_steps}.",
            backend=backend,
        )
    return Running(handle, progress=status.progress_percent, phase=status.phase)


def export_parameters(
    config: ScrollRestConfig, request: ExportRequest, options: ScrollRestOptions
) -> dict[str, str]:
    """The Scroll export parameters for *request* (the POST body, or export-sync's query).

    :raises ValidationError: no template named and none configured for the format.
    """
    template = request.template if isinstance(request.template, str) else None
    template = template or config.templates.get(request.format)
    if not template:
        raise ValidationError(
            "A Scroll template is required.",
            [
                FieldError(
                    "template",
                    f"Name a Scroll template id; none is configured for {request.format} exports.",
                )
            ],
        )
    assert request.page_id is not None
    params = {"pageId": request.page_id, "scope": request.scope, "templateId": template}
    extras = options.model_dump(by_alias=True, exclude_none=True, exclude={"mode"})
    params.update({key: str(value) for key, value in extras.items()})
    return params


def _keep_cookies(handle: Handle, cookies: dict[str, str]) -> None:
    if cookies:
        handle["cookies"] = {**handle.get("cookies", {}), **cookies}


def _filename(disposition: str | None, url: str, fmt: str) -> str:
    """The file's name: from Content-Disposition, else the URL's last path segment."""
    if disposition:
        from email.message import Message

        message = Message()
        message["Content-Disposition"] = disposition
        name = message.get_filename()
        if name:
            return _safe_name(name, fmt)
    return _safe_name(unquote(urlsplit(url).path.rsplit("/", 1)[-1]), fmt)


def _safe_name(name: str, fmt: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip().strip(".")
    cleaned = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')[:200]
    return cleaned or f"export.{EXTENSIONS[fmt]}"
