"""The bridge's exception tree. Every failure the bridge reports is one of these.

::

    BridgeError                      base; carries an HTTP status and a problem ``type``
    ├── ValidationError              a request field is wrong (400, lists the fields)
    │   └── UnprocessableError       well-formed, but not doable as asked (422, lists them)
    ├── AuthenticationError          no or bad caller credential (401)
    ├── PermissionDeniedError        authenticated, but not allowed (403)
    ├── NotFoundError                no such job/resource for this caller (404)
    ├── ConflictError                conflicts with the resource's state (409)
    │   └── IdempotencyKeyReusedError  an Idempotency-Key reused with another body (422)
    ├── UnsupportedRequestError      no configured backend can serve the request (422)
    ├── PayloadTooLargeError         request body over the limit (413)
    ├── LinkError                    a download link is unusable
    │   ├── BadSignatureError        tampered or unknown key (403)
    │   └── LinkExpiredError         past its expiry (410); carries ``expired_at``
    ├── ConfigurationError           the bridge's own configuration is wrong (500 at start-up)
    └── UpstreamError                an upstream call failed (``backend``, ``upstream_status``)
        ├── UpstreamUnavailableError connect refused/reset, 5xx, 429 (``retry_after`` when known)
        ├── UpstreamTimeoutError     the upstream did not answer in time
        ├── UpstreamResponseError    the upstream answered something we cannot read
        ├── UpstreamRejectedError    the upstream refused the request (4xx other than 429)
        └── UpstreamJobFailedError   the upstream job itself ended in error

``UpstreamError`` subclasses map to 502/504 when they surface in a request; inside a job
they become the job's ``error``. Nothing from ``requests`` or ``lxml`` escapes a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a request: a JSON-pointer-ish dotted path and a message."""

    field: str
    message: str


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    status_code = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(BridgeError):
    """Raised when a request is malformed; ``errors`` names each bad field."""

    status_code = 400
    code = "validation_error"
    title = "Invalid request"

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class UnprocessableError(ValidationError):
    """Raised when a well-formed request cannot be done as asked: a backend option it
    refuses, a callback it may not call, a template it needs (422, fields named)."""

    status_code = 422
    code = "unprocessable_request"
    title = "Request cannot be processed"


class AuthenticationError(BridgeError):
    """Raised when the caller's credential is missing or fails a check (named in ``reason``)."""

    status_code = 401
    code = "unauthenticated"
    title = "Authentication failed"

    def __init__(self, message: str, reason: str = "invalid_credentials") -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDeniedError(BridgeError):
    """Raised when an authenticated caller may not do what it asked."""

    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class NotFoundError(BridgeError):
    """Raised when a resource does not exist or belongs to another tenant."""

    status_code = 404
    code = "not_found"
    title = "Not found"


class ConflictError(BridgeError):
    """Raised when a request conflicts with the resource's state (cancel a finished job)."""

    status_code = 409
    code = "conflict"
    title = "Conflict"


class IdempotencyKeyReusedError(ConflictError):
    """Raised when an Idempotency-Key comes back with a different request body."""

    status_code = 422
    code = "idempotency_key_reused"
    title = "Idempotency-Key reused"


class UnsupportedRequestError(BridgeError):
    """Raised when no configured backend can serve a valid request."""

    status_code = 422
    code = "unsupported"
    title = "No backend can serve this request"


class PayloadTooLargeError(BridgeError):
    """Raised when a request body is over the configured limit."""

    status_code = 413
    code = "payload_too_large"
    title = "Request body too large"


class LinkError(BridgeError):
    """Base for unusable download links."""

    status_code = 403
    code = "bad_link"
    title = "Invalid download link"


class BadSignatureError(LinkError):
    """Raised when a link's signature does not verify under any known key."""


class LinkExpiredError(LinkError):
    """Raised when a link is past its expiry; ``expired_at`` says since when (Unix time)."""

    status_code = 410
    code = "link_expired"
    title = "Download link expired"

    def __init__(self, message: str, expired_at: int) -> None:
        super().__init__(message)
        self.expired_at = expired_at


class ConfigurationError(BridgeError):
    """Raised when the bridge's configuration is invalid."""

    code = "configuration_error"
    title = "Configuration error"


@dataclass
class UpstreamContext:
    """What we know about the upstream call that failed."""

    backend: str = ""
    upstream_status: int | None = None
    retry_after: float | None = None
    details: dict[str, str] = field(default_factory=dict)


class UpstreamError(BridgeError):
    """Raised when an upstream call fails. ``retryable`` says if trying later may help."""

    status_code = 502
    code = "upstream_error"
    title = "Upstream error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        backend: str = "",
        upstream_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.backend = backend
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class UpstreamUnavailableError(UpstreamError):
    """Raised for connection failures, 5xx answers and 429s; worth retrying later."""

    code = "upstream_unavailable"
    title = "Upstream unavailable"
    retryable = True


class UpstreamTimeoutError(UpstreamError):
    """Raised when the upstream does not answer within the timeout."""

    status_code = 504
    code = "upstream_timeout"
    title = "Upstream timeout"
    retryable = True


class UpstreamResponseError(UpstreamError):
    """Raised when the upstream answers with something the bridge cannot interpret."""

    code = "upstream_bad_response"
    title = "Unreadable upstream response"


class UpstreamRejectedError(UpstreamError):
    """Raised when the upstream refuses the request (a 4xx other than 429)."""

    code = "upstream_rejected"
    title = "Upstream rejected the request"


class UpstreamJobFailedError(UpstreamError):
    """Raised when the upstream's export job itself ends in error."""

    code = "upstream_job_failed"
    title = "Upstream export failed"
