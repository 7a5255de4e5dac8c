"""The normalized export request, the job, and the caller: the bridge's vocabulary."""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError

from bridge.errors import FieldError, ValidationError

Format = Literal["docx", "pdf", "html", "markdown"]
BackendName = Literal["auto", "scroll-macro", "scroll-rest", "content-exporter", "forge-markdown"]
FORMATS: tuple[Format, ...] = ("docx", "pdf", "html", "markdown")
M = TypeVar("M", bound=BaseModel)


def _id_to_str(value: object) -> object:
    """Accept numeric ids (Confluence sends both forms) and keep them as strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return str(int(value))  # JSON's 2.0 is the integer 2
    return value


ContentId = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{1,20}$"),
    BeforeValidator(_id_to_str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": "^[0-9]{1,20}$"},
                {"type": "integer", "minimum": 0, "maximum": 99999999999999999999},
            ],
            "description": "A Confluence content id, as a string or a number.",
        }
    ),
]
TemplateId = Annotated[str, StringConstraints(min_length=1, max_length=512)]
SpaceKey = Annotated[str, StringConstraints(pattern=r"^[~A-Za-z0-9_.-]{1,255}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class PageSource(_Model):
    """Export one page, or a page and its descendants."""

    page_id: ContentId = Field(alias="pageId")
    scope: Literal["current", "descendants"] = "current"


class SpaceSource(_Model):
    """Export a whole space."""

    space_key: SpaceKey = Field(alias="spaceKey")


class Callback(_Model):
    """Where to POST the finished job (signed, retried)."""

    url: Annotated[
        HttpUrl,
        WithJsonSchema(
            {
                "type": "string",
                "format": "uri",
                "maxLength": 2083,
                "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][!-~]*)?$",
            }
        ),
    ]


class ExportRequest(_Model):
    """One normalized export request, whichever exporter serves it."""

    backend: BackendName = "auto"
    source: PageSource | SpaceSource
    format: Format
    template: (
        Annotated[str, StringConstraints(min_length=1, max_length=512)] | dict[str, Any] | None
    ) = None
    options: dict[str, Any] = Field(default_factory=dict)
    as_user: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, alias="asUser"
    )
    callback: Callback | None = None
    attach_to_page: StrictBool = Field(default=False, alias="attachToPage")
    """Also attach the file to the exported page (as the job's user, else as the app)."""

    @field_validator("source", mode="before")
    @classmethod
    def _pick_source(cls, value: object) -> object:
        # Choose the variant explicitly so errors name the right fields (not both unions).
        if isinstance(value, dict):
            if "spaceKey" in value or "space_key" in value:
                return SpaceSource.model_validate(value)
            return PageSource.model_validate(value)
        return value

    @property
    def page_id(self) -> str | None:
        return self.source.page_id if isinstance(self.source, PageSource) else None

    @property
    def space_key(self) -> str | None:
        return self.source.space_key if isinstance(self.source, SpaceSource) else None

    @property
    def scope(self) -> str:
        return self.source.scope if isinstance(self.source, PageSource) else "space"

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_model(model: type[M], data: object, prefix: str = "") -> M:
    """Validate *data* as *model*, turning pydantic's errors into our :class:`ValidationError`."""
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise ValidationError("The request body is invalid.", field_errors(exc, prefix)) from None


def field_errors(exc: PydanticValidationError, prefix: str = "") -> list[FieldError]:
    """One :class:`FieldError` per bad field, with dotted paths (``source.pageId``).

    A union (``template`` is a string or an object) fails once per member; those messages
    are merged so each field is named once.
    """
    merged: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        parts = _field_path(error["loc"])
        path = ".".join(([prefix] if prefix else []) + parts) or (prefix or "body")
        message = "Unknown field." if error["type"] == "extra_forbidden" else error["msg"]
        if message not in merged.setdefault(path, []):
            merged[path].append(message)
    return [FieldError(path, " Or: ".join(messages)) for path, messages in merged.items()]


_UNION_FIELDS = frozenset({"source", "template", "as_user", "asUser"})
_UNION_TAG = re.compile(r"^(PageSource|SpaceSource|constrained-\w+|\w+\[.*\]|str|int)$")


def _field_path(loc: tuple[int | str, ...]) -> list[str]:
    """The field names in an error location, without the union member pydantic tried
    (which it inserts right after a union-typed field such as ``template``)."""
    parts: list[str] = []
    for index, part in enumerate(loc):
        after_union = index > 0 and str(loc[index - 1]) in _UNION_FIELDS
        if after_union and isinstance(part, str) and _UNION_TAG.match(part):
            continue
        parts.append(str(part))
    return parts


class JobState(enum.StrEnum):
    """Where a job is in its life; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED)


@dataclass
class JobError:
    """Why a job failed, in words a caller can act on."""

    code: str
    message: str
    upstream_status: int | None = None


@dataclass
class Artifact:
    """The exported file, kept in the bridge's artifact store."""

    key: str
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass
class Job:
    """An export job as stored. ``handle`` is the backend's private upstream state."""

    id: str
    tenant_id: str
    backend: str
    request: dict[str, Any]
    created_at: float
    updated_at: float
    state: JobState = JobState.QUEUED
    progress: int = 0
    phase: str = "queued"
    as_user: str | None = None
    handle: dict[str, Any] = field(default_factory=dict)
    error: JobError | None = None
    artifact: Artifact | None = None
    ready: bool = False
    """The upstream has finished; the file still has to be copied into the artifact store."""
    next_poll_at: float = 0.0
    attempts: int = 0
    expires_at: float | None = None
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Per-job credentials from the caller (e.g. a Forge user token), sealed at rest."""
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        data = dict(data)
        data["state"] = JobState(data["state"])
        if data.get("error") is not None:
            data["error"] = JobError(**data["error"])
        if data.get("artifact") is not None:
            data["artifact"] = Artifact(**data["artifact"])
        return cls(**data)


@dataclass(frozen=True)
class Caller:
    """Who is calling: a tenant, maybe a user, and whether it may act for other users."""

    tenant_id: str
    user: str | None = None
    admin: bool = False
    scheme: str = "api-key"
    product_token: str | None = field(default=None, repr=False)
    """A user token for product calls handed to us by the caller (Forge ``x-forge-oauth-user``)."""
    product_base_url: str | None = None
