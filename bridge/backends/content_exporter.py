"""``content-exporter``: meta-inf's Content Exporter for Confluence, through its Remote API.

Async (seeds/content-exporter-remote-api.md, upstreams.md §2): ``POST
{url}/api/remoteExport/{pageId}/init`` with the ``CEX-API-KEY`` header answers a hash;
``GET …/poll?hash=`` reports ``{done, progressData: {phase, progressValue}}`` until 100;
``GET …/download?hash=`` is the file. Exports run as the admin who generated the key.

The init body is built in layers, later ones winning: :data:`DEFAULTS` (the documented
example) < the Export Profile JSON passed as ``template`` (or a profile configured under
that name) < ``options``. ``outputFormat`` and ``exportType``, when neither the profile nor
the options give them, follow the request's format and scope. ``rootContentId`` is always
the page. UNCONFIRMED (only the example body is documented): the enums, and that an
exported profile's keys are init-body fields (its :data:`PROFILE_METADATA` keys are not
sent); the init answer is read as JSON ``{"hash": …}`` or as plain text.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from typing import Annotated, Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from bridge.backends.base import (
    Backend,
    BackendConfig,
    BackendOptions,
    Download,
    Handle,
    JobContext,
    Ready,
    Running,
    Step,
)
from bridge.errors import FieldError, UpstreamError, UpstreamResponseError, ValidationError
from bridge.models import ContentId, ExportRequest

APPLICATION_URLS: dict[str, str] = {
    "us": "https://content-exporter-new.addon.meta-inf.hu",
    "eu": "https://content-exporter-new.addon-eu.meta-inf.hu",
}
API_KEY_HEADER = "CEX-API-KEY"
OUTPUT_FORMATS: dict[str, str] = {"pdf": "PDF_MERGE", "docx": "WORD_MERGE", "html": "HTML_ZIP"}
FORMAT_FAMILIES: dict[str, str] = {"PDF": "pdf", "WORD": "docx", "HTML": "html"}
EXPORT_TYPES: dict[str, str] = {"current": "CURRENT_PAGE", "descendants": "ALL_CHILD"}
DEFAULTS: dict[str, Any] = {
    "pageSettings": {"size": "A4", "orientation": "PORTRAIT"},
    "margins": [{"top": 1, "bottom": 1, "right": 0.5, "left": 0.5}],
    "unit": "IN",
    "tocLevel": 6,
    "tocTitle": "Table of Contents",
    "tocMode": "FLAT",
    "fontResize": True,
    "headingNumbering": False,
    "pageNumbersArea": {"numbersFrom": "COVER_PAGE", "numbersTo": "BACK_COVER_PAGE"},
    "labels": None,
    "selectedContentIdList": [],
}
PROFILE_METADATA = frozenset({"id", "name", "profileName", "description", "rootContentId"})
EXTENSIONS: dict[str, str] = {"PDF_MERGE": "pdf", "WORD_MERGE": "docx"}

Enum = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]


class ContentExporterConfig(BackendConfig):
    """A tenant's Content Exporter Remote API: its key, and the region or an explicit URL."""

    api_key: SecretStr
    region: Literal["us", "eu"] = "us"
    url: str | None = None
    """The application URL; overrides ``region`` (e.g. a proxy or a new region)."""
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Export Profile JSONs by name, for requests that name a ``template``."""

    @property
    def application_url(self) -> str:
        return (self.url or APPLICATION_URLS[self.region]).rstrip("/")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PageSettings(_Part):
    """Paper size and orientation."""

    size: Enum
    orientation: Enum


class Margins(_Part):
    """Page margins, in ``unit``."""

    top: float = Field(ge=0)
    bottom: float = Field(ge=0)
    left: float = Field(ge=0)
    right: float = Field(ge=0)


class PageNumbersArea(_Part):
    """Which pages carry page numbers."""

    numbers_from: Enum = Field(alias="numbersFrom")
    numbers_to: Enum = Field(alias="numbersTo")


class ContentExporterOptions(BackendOptions):
    """Init-body fields; camelCase as the Remote API spells them, or snake_case."""

    page_settings: PageSettings | None = Field(default=None, alias="pageSettings")
    margins: list[Margins] | None = None
    unit: Enum | None = None
    toc_level: int | None = Field(default=None, alias="tocLevel", ge=1, le=6)
    toc_title: str | None = Field(default=None, alias="tocTitle", max_length=200)
    toc_mode: Enum | None = Field(default=None, alias="tocMode")
    font_resize: bool | None = Field(default=None, alias="fontResize")
    heading_numbering: bool | None = Field(default=None, alias="headingNumbering")
    page_numbers_area: PageNumbersArea | None = Field(default=None, alias="pageNumbersArea")
    output_format: Enum | None = Field(default=None, alias="outputFormat")
    export_type: Enum | None = Field(default=None, alias="exportType")
    front_cover: ContentId | None = Field(default=None, alias="frontCover")
    labels: list[Annotated[str, StringConstraints(min_length=1, max_length=255)]] | None = None
    selected_content_id_list: list[ContentId] | None = Field(
        default=None, alias="selectedContentIdList"
    )


class ContentExporterBackend(Backend):
    """Exports PDF, Word and HTML through the Content Exporter Remote API."""

    name = "content-exporter"
    formats = frozenset({"pdf", "docx", "html"})
    Config = ContentExporterConfig
    Options = ContentExporterOptions
    pages_only = True

    def validate(self, config: Any, request: ExportRequest) -> None:
        options = self.parse_options(request)
        assert isinstance(options, ContentExporterOptions)
        init_body(config, request, options)

    # --- the three verbs -------------------------------------------------------------

    def start(self, ctx: JobContext, request: ExportRequest) -> Step:
        config: ContentExporterConfig = ctx.config
        options = ContentExporterOptions.model_validate(request.options)
        body = init_body(config, request, options)
        url = f"{config.application_url}/api/remoteExport/{request.page_id}/init"
        response = self._call(config, "POST", url, f"page {request.page_id}", json=body)
        handle: Handle = {
            "url": config.application_url,
            "hash": _hash(response, self.name),
            "pageId": request.page_id,
            "outputFormat": body["outputFormat"],
            "format": request.format,
        }
        return Running(handle, progress=0, phase="starting")

    def poll(self, ctx: JobContext, handle: Handle) -> Step:
        response = self._call(
            ctx.config,
            "GET",
            f"{handle['url']}/api/remoteExport/poll",
            "the export",
            params={"hash": handle["hash"]},
        )
        data = self.client.json(response)
        if not isinstance(data, dict):
            raise UpstreamResponseError(
                "Content Exporter's poll answer is not an object", backend=self.name
            )
        progress_data = data.get("progressData")
        progress_data = progress_data if isinstance(progress_data, dict) else {}
        value = progress_data.get("progressValue")
        progress = int(value) if isinstance(value, int | float) else 0
        phase = str(progress_data.get("phase") or "exporting").lower().replace("_", " ")
        if data.get("done") is True or progress >= 100:
            return Ready(handle)
        return Running(handle, progress=max(0, min(progress, 99)), phase=phase)

    @contextmanager
    def fetch(self, ctx: JobContext, handle: Handle) -> Iterator[Download]:
        response = self._call(
            ctx.config,
            "GET",
            f"{handle['url']}/api/remoteExport/download",
            "the export",
            params={"hash": handle["hash"]},
            stream=True,
        )
        extension = EXTENSIONS.get(handle["outputFormat"], "zip")
        fallback = f"page-{handle['pageId']}.{extension}"
        size = response.headers.get("Content-Length")
        yield Download(
            chunks=self.client.iter_body(response),
            filename=_filename(response.headers.get("Content-Disposition")) or fallback,
            content_type=response.headers.get("Content-Type", "application/octet-stream"),
            size=int(size) if size and size.isdigit() else None,
        )

    # --- helpers ---------------------------------------------------------------------

    def _call(
        self,
        config: ContentExporterConfig,
        method: str,
        url: str,
        subject: str,
        **kwargs: Any,
    ) -> requests.Response:
        headers = {API_KEY_HEADER: config.api_key.get_secret_value()}
        try:
            return self.client.request(
                method, url, headers=headers, expected=(200, 201, 202), **kwargs
            )
        except UpstreamError as exc:
            raise _explained(exc, subject) from exc


def init_body(
    config: ContentExporterConfig, request: ExportRequest, options: ContentExporterOptions
) -> dict[str, Any]:
    """The ``init`` request body for *request*.

    :raises ValidationError: an unknown profile name, or an ``outputFormat`` of another format.
    """
    profile = _profile(config, request.template)
    given = options.model_dump(by_alias=True, exclude_unset=True)
    body = _merged(_merged(DEFAULTS, profile), given)
    body.setdefault("outputFormat", OUTPUT_FORMATS[request.format])
    body.setdefault("exportType", EXPORT_TYPES[request.scope])
    assert request.page_id is not None
    body["rootContentId"] = int(request.page_id)
    family = FORMAT_FAMILIES.get(str(body["outputFormat"]).split("_", 1)[0])
    if family is not None and family != request.format:
        where = "options.outputFormat" if "outputFormat" in given else "template.outputFormat"
        raise ValidationError(
            "The Content Exporter output format does not match the requested format.",
            [FieldError(where, f"{body['outputFormat']} does not make {request.format} files.")],
        )
    return body


def _profile(
    config: ContentExporterConfig, template: str | dict[str, Any] | None
) -> dict[str, Any]:
    if template is None:
        return {}
    if isinstance(template, str):
        if template not in config.profiles:
            known = ", ".join(sorted(config.profiles)) or "none are configured"
            raise ValidationError(
                "Unknown Content Exporter profile.",
                [
                    FieldError(
                        "template",
                        f"Pass an Export Profile JSON object, or a configured profile name "
                        f"({known}).",
                    )
                ],
            )
        template = config.profiles[template]
    return {k: v for k, v in template.items() if k not in PROFILE_METADATA}


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """*base* with *over* on top; nested objects are merged key by key, lists replaced."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = value
    return result


def _hash(response: requests.Response, backend: str) -> str:
    """The export hash from ``init``: JSON ``{"hash": …}``, a JSON string, or plain text."""
    text = response.text.strip()
    value: Any = text
    if text.startswith(("{", '"')):
        try:
            value = response.json()
        except ValueError:
            value = None
        if isinstance(value, dict):
            value = value.get("hash")
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 512
        or any(c.isspace() for c in value)
    ):
        raise UpstreamResponseError(
            f"Content Exporter's init answer holds no export hash: {text[:100]!r}", backend=backend
        )
    return value


def _explained(exc: UpstreamError, subject: str) -> UpstreamError:
    """*exc* again, its message saying what the status means for the Remote API."""
    explanations = {
        401: "Content Exporter wants its API key: configure api_key for content-exporter",
        403: "Content Exporter refused the API key: it was regenerated or the Remote API was "
        "switched off; update the tenant's content-exporter api_key",
        404: f"Content Exporter does not know {subject}: no such page or export, or the admin "
        "who generated the API key cannot see it",
        400: f"Content Exporter refused the settings for {subject}",
    }
    explanation = explanations.get(exc.upstream_status or 0)
    if explanation is None:
        return exc
    return type(exc)(
        f"{explanation} ({exc.message}).",
        backend=exc.backend,
        upstream_status=exc.upstream_status,
        retry_after=exc.retry_after,
    )


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    message = Message()
    message["Content-Disposition"] = disposition
    name = (message.get_filename() or "").replace("\\", "/").rsplit("/", 1)[-1].strip(" .")
    cleaned = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')[:200]
    return cleaned or None
