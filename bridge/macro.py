"""Scroll export-job macro codec: build the storage-format macro, read its rendered output.

Wire format (K15T-MACRO seed, upstreams.md §1.4)::

    <ac:structured-macro ac:name="scroll-word-export-job">
      <ac:parameter ac:name="issued-at">1728403475</ac:parameter>
      <ac:parameter ac:name="issued-by-app">My custom app</ac:parameter>
      <ac:parameter ac:name="export-request"><![CDATA[{"pageId": "1376263"}]]></ac:parameter>
    </ac:structured-macro>

Fragments are built with lxml in the ``ac`` namespace and serialised; the one ``xmlns:ac``
declaration lxml puts on the root start tag is then removed, because storage format leaves the
prefix undeclared. Parameter values are element text escaped by lxml, never formatted in.

The export-request JSON is compact, ASCII-only, and writes ``<``, ``>`` and ``&`` as
``\\u003c``, ``\\u003e`` and ``\\u0026``. It is still plain JSON for any parser, and a CDATA
section holding it can never contain ``]]>`` (chosen over splitting CDATA sections).

Render output: Confluence returns the macro's output in its ``export_view`` HTML, in which
``<div class="result"><code class="success|error">JSON</code></div>`` sits somewhere; the
JSON is HTML-escaped once, which the HTML parser undoes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast, get_args
from urllib.parse import urlsplit

from lxml import etree

from bridge.errors import UpstreamRejectedError, UpstreamResponseError
from bridge.scroll import ScrollStatus
from bridge.xml import UnsafeOrMalformedMarkup, parse_html, parse_xml_fragment

__all__ = [
    "AC_NS",
    "MACRO_NAMES",
    "MacroCall",
    "MacroError",
    "MacroResponseError",
    "ScrollJobState",
    "ScrollStatus",
    "build_start_macro",
    "build_status_macro",
    "parse_macro",
    "parse_render_output",
    "parse_start_result",
    "parse_status_result",
]

AC_NS: Final = "http://atlassian.com/content"
"""Namespace URI Confluence binds to the storage-format ``ac:`` prefix."""

MACRO_NAMES: Final[dict[str, str]] = {
    "docx": "scroll-word-export-job",
    "pdf": "scroll-pdf-export-job",
    "html": "scroll-html-export-job",
}
"""Export format → name of the hidden Scroll macro that produces it."""

ScrollJobState = Literal["incomplete", "complete", "error", "cancelled"]
"""Job states reported by the Scroll status operation."""

_STATES: Final[frozenset[str]] = frozenset(get_args(ScrollJobState))
_MACRO_TAG: Final = f"{{{AC_NS}}}structured-macro"
_PARAMETER_TAG: Final = f"{{{AC_NS}}}parameter"
_NAME_ATTR: Final = f"{{{AC_NS}}}name"
_DECLARED_ROOT: Final = f'<ac:structured-macro xmlns:ac="{AC_NS}"'
_JSON_XML_ESCAPES: Final = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MAX_JOB_ID_LENGTH: Final = 256
MACRO_BACKEND: Final = "scroll-macro"
"""The backend name the codec's errors carry (they surface through that backend)."""
_SNIPPET_LENGTH: Final = 160
_SECRETS: Final = re.compile(
    r"(?i)((?:jwt|token|access_token|signature|sig)=|bearer\s+)[^\s&\"'<>]+"
    r"|eyJ[\w-]{4,}(?:\.[\w-]*){0,2}"
)


def _has_class(name: str) -> str:
    return f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')"


# A result ``code`` holds text only; one wrapping another code is markup, not the result.
_RESULT_CODES: Final = etree.XPath(
    f"//div[{_has_class('result')}]"
    f"//code[({_has_class('success')} or {_has_class('error')}) and not(.//code)]"
)


class MacroError(UpstreamRejectedError):
    """Raised when the macro rendered an error object (``<code class="error">``).

    ``status`` is the HTTP-like status inside Scroll's error object (also ``upstream_status``);
    ``message`` is Scroll's own text.
    """

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(
            f"Scroll macro error (status {status}): {message}",
            backend=MACRO_BACKEND,
            upstream_status=status,
        )
        self.status = status
        self.message = message


class MacroResponseError(UpstreamResponseError):
    """Raised when render output holds no single, well-formed macro result.

    ``reason`` is a short machine word (``"no_result"``, ``"ambiguous_result"``,
    ``"empty_result"``, ``"invalid_json"``, ``"not_an_object"``, ``"unparseable_html"``,
    ``"unknown_status"``, ``"invalid_field:<name>"``); ``snippet`` is a short excerpt of the
    offending input with tokens redacted.
    """

    def __init__(self, reason: str, snippet: str) -> None:
        super().__init__(
            f"unexpected Scroll macro output ({reason}): {snippet!r}", backend=MACRO_BACKEND
        )
        self.reason = reason
        self.snippet = snippet


class _NotAnObjectError(ValueError):
    """Raised internally when well-formed JSON is not an object."""


@dataclass(frozen=True)
class MacroCall:
    """A parsed export-job macro: its name, raw parameters and decoded export request."""

    name: str
    params: dict[str, str]
    export_request: dict[str, object] | None

    @property
    def fmt(self) -> str | None:
        """Return the export format this macro produces, or None for an unknown macro."""
        return next((fmt for fmt, name in MACRO_NAMES.items() if name == self.name), None)


def build_start_macro(
    fmt: str, export_request: Mapping[str, object], *, app_name: str, issued_at: int
) -> str:
    """Return the storage-format macro that starts an export ("Start Export" mode).

    :raises ValueError: for an unknown format, a bad timestamp, an empty or non-XML app
        name, or an export request that is not a JSON object.
    """
    return _render_macro(
        fmt,
        [
            ("issued-at", _timestamp(issued_at)),
            ("issued-by-app", _xml_text("issued-by-app", app_name)),
            ("export-request", _encode_request(export_request)),
        ],
        cdata_param="export-request",
    )


def build_status_macro(fmt: str, job_id: str, *, issued_at: int) -> str:
    """Return the storage-format macro that reports a job's status ("Get Export Status").

    :raises ValueError: for an unknown format, a bad timestamp, or an empty or non-XML id.
    """
    return _render_macro(
        fmt,
        [("issued-at", _timestamp(issued_at)), ("export-job-id", _xml_text("job id", job_id))],
    )


def parse_macro(fragment: str) -> MacroCall:
    """Parse a storage-format fragment holding exactly one export-job macro.

    :raises ValueError: if the fragment is unsafe, malformed, or not a single macro.
    """
    wrapper = parse_xml_fragment(fragment, namespaces={"ac": AC_NS})
    if len(wrapper) != 1 or _has_text(wrapper.text) or _has_text(wrapper[0].tail):
        raise ValueError("fragment must hold exactly one macro and nothing else")
    macro = wrapper[0]
    name = macro.get(_NAME_ATTR)
    if macro.tag != _MACRO_TAG or not name:
        raise ValueError("fragment is not a named ac:structured-macro")
    if _has_text(macro.text):
        raise ValueError("macro holds text outside its parameters")
    params: dict[str, str] = {}
    for parameter in macro:
        param_name = parameter.get(_NAME_ATTR)
        if parameter.tag != _PARAMETER_TAG or not param_name or len(parameter):
            raise ValueError("macro children must be named, text-only ac:parameter elements")
        if param_name in params:
            raise ValueError(f"duplicate macro parameter {param_name!r}")
        if _has_text(parameter.tail):
            raise ValueError("macro holds text outside its parameters")
        params[param_name] = parameter.text or ""
    raw_request = params.get("export-request")
    export_request = None if raw_request is None else _loads_object(raw_request)
    return MacroCall(name=name, params=params, export_request=export_request)


def parse_render_output(html: str) -> dict[str, object]:
    """Return the success object of a rendered macro found anywhere in ``html``.

    :raises MacroError: if the macro rendered an error object.
    :raises MacroResponseError: if there is no single, well-formed result object.
    """
    code = _result_code(html)
    classes = set((code.get("class") or "").split())
    text = "".join(str(part) for part in code.itertext()).strip()
    if {"success", "error"} <= classes:
        raise MacroResponseError("ambiguous_result", _snippet(text))
    if not text:
        raise MacroResponseError("empty_result", _snippet(html))
    try:
        payload = _loads_object(text)
    except _NotAnObjectError as exc:
        raise MacroResponseError("not_an_object", _snippet(text)) from exc
    except ValueError as exc:
        raise MacroResponseError("invalid_json", _snippet(text)) from exc
    if "error" in classes:
        raise MacroError(_error_status(payload), _error_message(payload))
    return payload


def parse_start_result(html: str) -> str:
    """Return the job id from a rendered "Start Export" macro.

    :raises MacroError: if the macro rendered an error object.
    :raises MacroResponseError: if the output holds no usable job id.
    """
    payload = parse_render_output(html)
    job_id = payload.get("jobId")
    if (
        not isinstance(job_id, str)
        or not 0 < len(job_id) <= _MAX_JOB_ID_LENGTH
        or not job_id.isprintable()
        or job_id != job_id.strip()
    ):
        raise MacroResponseError("invalid_field:jobId", _snippet(repr(job_id)))
    return job_id


def parse_status_result(html: str) -> ScrollStatus:
    """Return the job status from a rendered "Get Export Status" macro.

    :raises MacroError: if the macro rendered an error object.
    :raises MacroResponseError: if the output holds no usable status.
    """
    payload = parse_render_output(html)
    status = payload.get("status")
    if not isinstance(status, str) or status not in _STATES:
        raise MacroResponseError("unknown_status", _snippet(repr(status)))
    return ScrollStatus(
        status=status,
        step=_count(payload, "step"),
        total_steps=_count(payload, "totalSteps"),
        step_progress=_count(payload, "stepProgress"),
        download_url=_download_url(payload),
    )


def _render_macro(fmt: str, params: list[tuple[str, str]], cdata_param: str = "") -> str:
    """Build the macro element, serialise it, and drop the root's namespace declaration."""
    try:
        macro_name = MACRO_NAMES[fmt]
    except KeyError:
        raise ValueError(
            f"unsupported export format {fmt!r}; use one of {sorted(MACRO_NAMES)}"
        ) from None
    root = etree.Element(_MACRO_TAG, nsmap={"ac": AC_NS})
    root.set(_NAME_ATTR, macro_name)
    for name, value in params:
        parameter = etree.SubElement(root, _PARAMETER_TAG)
        parameter.set(_NAME_ATTR, name)
        # lxml accepts a CDATA object as element text; its stubs only know str.
        parameter.text = cast(str, etree.CDATA(value)) if name == cdata_param else value
    markup = etree.tostring(root, encoding="unicode")
    if not markup.startswith(_DECLARED_ROOT):
        raise AssertionError(f"unexpected lxml serialisation: {markup[:80]!r}")
    return "<ac:structured-macro" + markup[len(_DECLARED_ROOT) :]


def _timestamp(issued_at: int) -> str:
    """Return ``issued_at`` as decimal text after checking it is a non-negative int."""
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or issued_at < 0:
        raise ValueError(f"issued_at must be non-negative Unix seconds, not {issued_at!r}")
    return str(issued_at)


def _xml_text(label: str, value: str) -> str:
    """Return ``value`` after checking it is a non-empty string XML can hold."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{label} must be a non-empty string")
    bad = _NOT_XML_CHAR.search(value)
    if bad:
        raise ValueError(f"{label} holds U+{ord(bad.group()):04X}, which XML cannot represent")
    return value


def _encode_request(export_request: Mapping[str, object]) -> str:
    """Return the export request as XML-safe JSON (see the module docstring)."""
    if not isinstance(export_request, Mapping):
        raise ValueError("export_request must be a mapping (a JSON object)")
    try:
        text = json.dumps(
            dict(export_request), ensure_ascii=True, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"export_request is not representable as JSON: {exc}") from exc
    return text.translate(_JSON_XML_ESCAPES)


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-standard JSON constant {name}")


def _loads_object(text: str) -> dict[str, object]:
    """Parse strict JSON and require an object.

    :raises ValueError: (``_NotAnObjectError`` for a non-object) on any failure.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    if not isinstance(value, dict):
        raise _NotAnObjectError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _result_code(html: str) -> etree._Element:
    """Return the one ``div.result code.success|error`` element of the render output."""
    try:
        root = parse_html(html)
    except (UnsafeOrMalformedMarkup, TypeError) as exc:
        raise MacroResponseError("unparseable_html", _snippet(str(html))) from exc
    found = _RESULT_CODES(root)
    codes = (
        [node for node in found if isinstance(node, etree._Element)]
        if isinstance(found, list)
        else []
    )
    if not codes:
        raise MacroResponseError("no_result", _snippet(html))
    if len(codes) > 1:
        raise MacroResponseError("ambiguous_result", _snippet(html))
    return codes[0]


def _error_status(payload: Mapping[str, object]) -> int | None:
    status = payload.get("status")
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def _error_message(payload: Mapping[str, object]) -> str:
    message = payload.get("message")
    if isinstance(message, str) and message:
        return message
    return "Scroll macro reported an error without a message"


def _count(payload: Mapping[str, object], key: str) -> int:
    """Return a non-negative integer field, 0 when absent."""
    value = payload.get(key)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MacroResponseError(f"invalid_field:{key}", _snippet(repr(value)))
    return max(value, 0)


def _download_url(payload: Mapping[str, object]) -> str | None:
    """Return an absolute http(s) ``downloadUrl``, or None when absent or empty.

    Which hosts may be fetched is the downloading adapter's decision, not this codec's.
    """
    url = payload.get("downloadUrl")
    if url is None or url == "":
        return None
    if isinstance(url, str) and url.isprintable() and " " not in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts and parts.scheme in ("http", "https") and parts.hostname:
            return url
    raise MacroResponseError("invalid_field:downloadUrl", _snippet(repr(url)))


def _has_text(text: str | None) -> bool:
    return bool(text and text.strip())


def _snippet(text: str) -> str:
    """Return a short single-line excerpt of ``text`` with tokens redacted."""
    flat = " ".join(_SECRETS.sub(_redact, text[: _SNIPPET_LENGTH * 4]).split())
    printable = "".join(ch if ch.isprintable() else "\ufffd" for ch in flat)
    if len(printable) <= _SNIPPET_LENGTH:
        return printable
    return printable[: _SNIPPET_LENGTH - 1] + "…"


def _redact(match: re.Match[str]) -> str:
    return f"{match.group(1)}<redacted>" if match.group(1) else "<redacted-jwt>"
