"""Tests for bridge.http (retries, Retry-After, error mapping, SSRF host policy) and for
handlers.errors (every error answer is application/problem+json)."""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import responses
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from responses import registries

from bridge.config import RetrySettings
from bridge.errors import (
    AuthenticationError,
    FieldError,
    LinkExpiredError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamResponseError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    ValidationError,
)
from bridge.http import HostPolicy, UpstreamClient, backoff_delay, parse_retry_after
from handlers import errors as error_handlers

URL = "https://upstream.test/api/thing"
NOW = 1_700_000_000.0


# --- parse_retry_after ---------------------------------------------------------------


def http_date(offset: float) -> str:
    """An IMF-fixdate *offset* seconds from NOW."""
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("3600", 3600.0),
        ("3601", 3600.0),
        (str(10**12), 3600.0),
        ("1e300", 3600.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct", None),
        ("nan", None),
        ("NaN", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW, 3600.0) == expected


def test_parse_retry_after_http_date_in_future_and_past() -> None:
    assert parse_retry_after(http_date(120), NOW, 3600.0) == pytest.approx(120.0)
    assert parse_retry_after(http_date(-120), NOW, 3600.0) == 0.0
    assert parse_retry_after(http_date(10**7), NOW, 3600.0) == 3600.0


def test_parse_retry_after_date_without_zone_is_utc() -> None:
    naive = datetime.fromtimestamp(NOW + 60, UTC).strftime("%a, %d %b %Y %H:%M:%S")
    assert parse_retry_after(naive, NOW, 3600.0) == pytest.approx(60.0)


@pytest.mark.parametrize("value", ["inf", "Infinity", "-inf", "1e400", "-1e400"])
def test_parse_retry_after_infinities_are_finite_or_none(value: str) -> None:
    result = parse_retry_after(value, NOW, 3600.0)
    assert result is None or (math.isfinite(result) and 0.0 <= result <= 3600.0)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_parse_retry_after_never_raises_and_stays_in_range(value: str) -> None:
    result = parse_retry_after(value, NOW, 3600.0)
    assert result is None or (math.isfinite(result) and 0.0 <= result <= 3600.0)


def test_backoff_delay_full_jitter_capped() -> None:
    policy = RetrySettings(backoff_base=0.5, backoff_cap=3.0)
    assert [backoff_delay(n, policy, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [
        0.5,
        1.0,
        2.0,
        3.0,
        3.0,
    ]
    assert backoff_delay(3, policy, lambda: 0.25) == 0.5
    assert backoff_delay(3, policy, lambda: 0.0) == 0.0


# --- UpstreamClient --------------------------------------------------------------------


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """A strict mock: every registered response must be used, in order."""
    with responses.RequestsMock(
        assert_all_requests_are_fired=True, registry=registries.OrderedRegistry
    ) as mock:
        yield mock


class Harness:
    """An UpstreamClient with recorded sleeps and deterministic jitter."""

    def __init__(self, **policy: Any) -> None:
        self.sleeps: list[float] = []
        self.policy = RetrySettings(**policy)
        self.client = UpstreamClient(
            "scroll-rest",
            self.policy,
            sleep=self.sleeps.append,
            clock=lambda: NOW,
            rand=lambda: 1.0,
        )


def test_503_503_200_succeeds_after_two_backoff_sleeps(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, status=503)
    rsps.get(URL, status=503)
    rsps.get(URL, json={"ok": True})
    h = Harness()
    response = h.client.request("GET", URL)
    assert response.json() == {"ok": True}
    assert h.sleeps == [0.5, 1.0]
    assert len(rsps.calls) == 3


def test_backoff_is_capped(rsps: responses.RequestsMock) -> None:
    for _ in range(3):
        rsps.get(URL, status=502)
    rsps.get(URL, body="done")
    h = Harness(backoff_base=4.0, backoff_cap=5.0, attempts=4)
    assert h.client.request("GET", URL).text == "done"
    assert h.sleeps == [4.0, 5.0, 5.0]


def test_gives_up_after_attempts_with_last_status(rsps: responses.RequestsMock) -> None:
    for _ in range(3):
        rsps.get(URL, status=503, json={"message": "maintenance"})
    h = Harness(attempts=3)
    with pytest.raises(UpstreamUnavailableError) as info:
        h.client.request("GET", URL)
    assert info.value.upstream_status == 503
    assert info.value.backend == "scroll-rest"
    assert "maintenance" in info.value.message
    assert h.sleeps == [0.5, 1.0]
    assert len(rsps.calls) == 3


def test_429_retry_after_seconds_is_slept(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, status=429, headers={"Retry-After": "2"})
    rsps.get(URL, body="ok")
    h = Harness()
    assert h.client.request("GET", URL).text == "ok"
    assert h.sleeps == [2.0]


def test_retry_after_http_date_is_slept_relative_to_clock(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, status=503, headers={"Retry-After": http_date(3)})
    rsps.get(URL, body="ok")
    h = Harness()
    h.client.request("GET", URL)
    assert h.sleeps == [pytest.approx(3.0)]


def test_retry_after_longer_than_inline_wait_is_handed_back(
    rsps: responses.RequestsMock,
) -> None:
    rsps.get(URL, status=429, headers={"Retry-After": "30"})
    h = Harness(max_inline_wait=10.0)
    with pytest.raises(UpstreamUnavailableError) as info:
        h.client.request("GET", URL)
    assert info.value.retry_after == 30.0
    assert info.value.upstream_status == 429
    assert h.sleeps == []
    assert len(rsps.calls) == 1


def test_absurd_retry_after_is_capped(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, status=503, headers={"Retry-After": str(10**12)})
    h = Harness(retry_after_cap=900.0)
    with pytest.raises(UpstreamUnavailableError) as info:
        h.client.request("GET", URL)
    assert info.value.retry_after == 900.0
    assert h.sleeps == []


def test_post_500_is_not_retried(rsps: responses.RequestsMock) -> None:
    rsps.post(URL, status=500, json={"message": "boom"})
    h = Harness()
    with pytest.raises(UpstreamUnavailableError) as info:
        h.client.request("POST", URL, json={"a": 1})
    assert info.value.upstream_status == 500
    assert h.sleeps == []
    assert len(rsps.calls) == 1


@pytest.mark.parametrize(
    ("status", "error"), [(502, UpstreamUnavailableError), (504, UpstreamTimeoutError)]
)
def test_post_other_5xx_is_not_retried(
    rsps: responses.RequestsMock, status: int, error: type[UpstreamError]
) -> None:
    rsps.post(URL, status=status)
    h = Harness()
    with pytest.raises(error):
        h.client.request("POST", URL)
    assert len(rsps.calls) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_post_429_and_503_are_retried(rsps: responses.RequestsMock, status: int) -> None:
    rsps.post(URL, status=status)
    rsps.post(URL, json={"jobId": "j1"})
    h = Harness()
    assert h.client.json(h.client.request("POST", URL)) == {"jobId": "j1"}
    assert h.sleeps == [0.5]


def test_put_500_is_retried_as_idempotent(rsps: responses.RequestsMock) -> None:
    rsps.put(URL, status=500)
    rsps.put(URL, body="ok")
    assert Harness().client.request("PUT", URL).text == "ok"


def test_idempotent_flag_overrides_the_method(rsps: responses.RequestsMock) -> None:
    rsps.post(URL, status=500)
    rsps.post(URL, body="ok")
    rsps.get(URL, status=500)
    h = Harness()
    assert h.client.request("POST", URL, idempotent=True).text == "ok"
    with pytest.raises(UpstreamUnavailableError):
        h.client.request("GET", URL, idempotent=False)
    assert len(rsps.calls) == 3


def test_connection_error_retried_then_unavailable(rsps: responses.RequestsMock) -> None:
    for _ in range(4):
        rsps.get(URL, body=requests.exceptions.ConnectionError("refused"))
    h = Harness(attempts=4)
    with pytest.raises(UpstreamUnavailableError) as info:
        h.client.request("GET", URL)
    assert info.value.upstream_status is None
    assert len(h.sleeps) == 3
    assert len(rsps.calls) == 4


def test_post_connection_refused_is_retried(rsps: responses.RequestsMock) -> None:
    rsps.post(URL, body=requests.exceptions.ConnectionError("refused"))
    rsps.post(URL, body=requests.exceptions.ConnectTimeout("connect timed out"))
    rsps.post(URL, body="ok")
    assert Harness().client.request("POST", URL).text == "ok"


def test_post_read_timeout_is_not_retried(rsps: responses.RequestsMock) -> None:
    # The upstream may have acted: a second POST could start a second export.
    rsps.post(URL, body=requests.exceptions.ReadTimeout("read timed out"))
    h = Harness()
    with pytest.raises(UpstreamTimeoutError):
        h.client.request("POST", URL)
    assert h.sleeps == []


def test_get_timeout_is_retried_then_timeout_error(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, body=requests.exceptions.ReadTimeout("slow"))
    rsps.get(URL, body=requests.exceptions.ReadTimeout("slow"))
    h = Harness(attempts=2)
    with pytest.raises(UpstreamTimeoutError) as info:
        h.client.request("GET", URL)
    assert info.value.status_code == 504
    assert h.sleeps == [0.5]


def test_404_is_rejected_with_the_upstream_message(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, status=404, json={"message": "Page  42\n not found", "code": "x"})
    h = Harness()
    with pytest.raises(UpstreamRejectedError) as info:
        h.client.request("GET", URL)
    assert info.value.upstream_status == 404
    assert "Page 42 not found" in info.value.message
    assert "404" in info.value.message
    assert h.sleeps == []


def test_plain_text_error_body_is_summarized_on_one_line(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, status=401, body="Unauthorized\n\n  please log in" + "x" * 5000)
    with pytest.raises(UpstreamRejectedError) as info:
        Harness().client.request("GET", URL)
    assert "Unauthorized please log in" in info.value.message
    assert "\n" not in info.value.message
    assert len(info.value.message) < 500


def test_unexpected_2xx_is_a_response_error(rsps: responses.RequestsMock) -> None:
    rsps.post(URL, status=201)
    rsps.post(URL, status=202)
    h = Harness()
    with pytest.raises(UpstreamResponseError) as info:
        h.client.request("POST", URL)
    assert info.value.upstream_status == 201
    assert h.client.request("POST", URL, expected=(200, 202)).status_code == 202


def test_requests_carry_timeouts_and_user_agent(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, body="ok")
    client = UpstreamClient(
        "b", RetrySettings(), timeout=12.0, connect_timeout=3.0, user_agent="bridge-test/1"
    )
    client.request("GET", URL)
    call = rsps.calls[0]
    assert call.request.headers["User-Agent"] == "bridge-test/1"
    assert call.request.req_kwargs["timeout"] == (3.0, 12.0)  # type: ignore[attr-defined]


def test_iter_body_streams_the_whole_body(rsps: responses.RequestsMock) -> None:
    body = bytes(range(256)) * 5000
    rsps.get(URL, body=body)
    h = Harness()
    assert b"".join(h.client.iter_body(h.client.request("GET", URL, stream=True))) == body


def test_iter_body_truncated_on_the_wire_is_unavailable(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, body=b"abc", headers={"Content-Length": "10"})
    h = Harness()
    response = h.client.request("GET", URL, stream=True)
    with pytest.raises(UpstreamUnavailableError):
        b"".join(h.client.iter_body(response))


def _raw_response(body: bytes, content_length: str | None) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.raw = io.BytesIO(body)
    if content_length is not None:
        response.headers["Content-Length"] = content_length
    return response


def test_iter_body_short_of_content_length_is_unavailable() -> None:
    # A transport that ends quietly (no IncompleteRead) is caught by the byte count.
    with pytest.raises(UpstreamUnavailableError) as info:
        b"".join(Harness().client.iter_body(_raw_response(b"abc", "10")))
    assert "3 of 10" in info.value.message


def test_iter_body_without_content_length_accepts_any_size() -> None:
    assert b"".join(Harness().client.iter_body(_raw_response(b"abc", None))) == b"abc"


def test_json_on_garbage_is_a_response_error(rsps: responses.RequestsMock) -> None:
    rsps.get(URL, body="<html>oops</html>", content_type="application/json")
    h = Harness()
    with pytest.raises(UpstreamResponseError) as info:
        h.client.json(h.client.request("GET", URL))
    assert info.value.upstream_status == 200
    assert "oops" in info.value.message


def _request_exception_classes() -> list[type[requests.exceptions.RequestException]]:
    return sorted(
        (
            cls
            for _, cls in inspect.getmembers(requests.exceptions, inspect.isclass)
            if issubclass(cls, requests.exceptions.RequestException)
        ),
        key=lambda cls: cls.__name__,
    )


def _instantiate(cls: type[requests.exceptions.RequestException]) -> Exception:
    try:
        return cls("simulated")
    except TypeError:  # JSONDecodeError wants (msg, doc, pos)
        return cls("simulated", "doc", 0)


def test_request_exception_classes_are_found() -> None:
    names = {cls.__name__ for cls in _request_exception_classes()}
    assert {"ConnectionError", "ReadTimeout", "SSLError", "InvalidURL"} <= names


@pytest.mark.parametrize("cls", _request_exception_classes(), ids=lambda c: c.__name__)
def test_exception_mapping_is_total(cls: type[requests.exceptions.RequestException]) -> None:
    client = Harness().client
    exc = _instantiate(cls)
    assert isinstance(exc, requests.exceptions.RequestException)
    mapped = client._map_exception(exc)
    assert isinstance(mapped, UpstreamError)
    assert mapped.backend == "scroll-rest"
    if issubclass(cls, requests.exceptions.Timeout):
        assert isinstance(mapped, UpstreamTimeoutError)
    elif issubclass(cls, requests.exceptions.ConnectionError):
        assert isinstance(mapped, UpstreamUnavailableError)


@pytest.mark.parametrize("cls", _request_exception_classes(), ids=lambda c: c.__name__)
def test_no_requests_exception_escapes_request(
    rsps: responses.RequestsMock, cls: type[requests.exceptions.RequestException]
) -> None:
    rsps.get(URL, body=_instantiate(cls))
    with pytest.raises(UpstreamError) as info:
        Harness(attempts=1).client.request("GET", URL)
    assert not isinstance(info.value, requests.exceptions.RequestException)


def test_mapped_errors_maps_inside_the_block() -> None:
    with pytest.raises(UpstreamUnavailableError), Harness().client.mapped_errors():
        raise requests.exceptions.ChunkedEncodingError("cut")


# --- HostPolicy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ({"files.example.com"}, "https://files.example.com/a.pdf"),
        ({"files.example.com"}, "http://FILES.Example.com/a.pdf"),
        ({"files.example.com"}, "https://files.example.com:8443/a.pdf"),
        ({"files.example.com:8443"}, "https://files.example.com:8443/a.pdf"),
        ({"*.atlassian.net"}, "https://acme.atlassian.net/x"),
        ({"*.atlassian.net"}, "https://a.b.atlassian.net/x"),
        ({"other.test", "*.Example.COM"}, "https://cdn.example.com/x"),
    ],
)
def test_host_policy_allows(allowed: set[str], url: str) -> None:
    HostPolicy(frozenset(allowed)).check(url, "b")


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ({"files.example.com"}, "https://evil.test/a.pdf"),
        ({"files.example.com"}, "https://files.example.com.evil.test/a.pdf"),
        ({"files.example.com"}, "https://evil.test/?u=https://files.example.com"),
        ({"files.example.com"}, "https://files.example.com@evil.test/"),
        ({"files.example.com:8443"}, "https://files.example.com:9000/a.pdf"),
        ({"files.example.com:8443"}, "https://files.example.com/a.pdf"),
        ({"*.atlassian.net"}, "https://atlassian.net.evil.test/"),
        ({"*.atlassian.net"}, "https://evilatlassian.net/"),
        ({"files.example.com"}, "ftp://files.example.com/a.pdf"),
        ({"files.example.com"}, "file:///etc/passwd"),
        ({"files.example.com"}, "//files.example.com/a.pdf"),
        ({"files.example.com"}, "https:///a.pdf"),
        ({"files.example.com"}, "not a url"),
        ({"files.example.com"}, "https://files.example.com:99999/a.pdf"),
        ({"files.example.com"}, "https://files.example.com:abc/a.pdf"),
        ({"files.example.com"}, "http://[::1/a.pdf"),
        (set(), "https://files.example.com/a.pdf"),
    ],
)
def test_host_policy_refuses(allowed: set[str], url: str) -> None:
    with pytest.raises(UpstreamResponseError) as info:
        HostPolicy(frozenset(allowed)).check(url, "scroll-rest")
    assert info.value.backend == "scroll-rest"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "10.1.2.3", "192.168.0.10", "169.254.169.254", "[::1]", "0.0.0.0"],
)
def test_internal_hosts_need_allow_loopback(host: str) -> None:
    url = f"http://{host}:8080/file.pdf"
    bare = host.strip("[]")
    allowed = frozenset({bare, f"{bare}:8080"})
    with pytest.raises(UpstreamResponseError):
        HostPolicy(allowed).check(url, "b")
    HostPolicy(allowed, allow_loopback=True).check(url, "b")


def test_allow_loopback_does_not_allow_unlisted_hosts() -> None:
    with pytest.raises(UpstreamResponseError):
        HostPolicy(frozenset({"127.0.0.1"}), allow_loopback=True).check("http://10.0.0.1/", "b")


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.test\\@files.example.com/a.pdf",
        "https://evil.test:80\\@files.example.com/a.pdf",
        "http://127.0.0.1:8080\\@files.example.com/a.pdf",
        " https://evil.test\\@files.example.com/a.pdf",
        "https://evil.test\t@files.example.com/a.pdf",
        "https://evil.test%40@files.example.com/a.pdf",
        "https://evil.test?@files.example.com/a.pdf",
        "https://evil.test#@files.example.com/a.pdf",
    ],
)
def test_host_policy_checks_the_host_requests_will_connect_to(url: str) -> None:
    """The policy must judge the host ``requests`` (urllib3's parser) actually connects to,
    not the one ``urllib.parse`` sees: the two disagree on backslashes."""
    policy = HostPolicy(frozenset({"files.example.com"}))
    try:
        policy.check(url, "b")
    except UpstreamResponseError:
        return
    connects_to = urlsplit(requests.Request("GET", url).prepare().url or "").hostname
    assert connects_to == "files.example.com"


# --- handlers.errors: problem+json --------------------------------------------------------


@pytest.fixture
def problem_app() -> Flask:
    app = Flask("problem-test")
    error_handlers.register(app)

    @app.get("/validation")
    def validation() -> str:
        raise ValidationError(
            "The request body is invalid.",
            [FieldError("source.pageId", "bad id"), FieldError("format", "bad format")],
        )

    @app.get("/auth")
    def auth() -> str:
        raise AuthenticationError("No API key.", reason="missing_credentials")

    @app.get("/expired")
    def expired() -> str:
        raise LinkExpiredError("The download link has expired.", 1_700_000_000)

    @app.get("/upstream")
    def upstream() -> str:
        raise UpstreamUnavailableError(
            "scroll down", backend="scroll-rest", upstream_status=503, retry_after=5
        )

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError("db password is hunter2")

    return app


def _problem(app: Flask, method: str, path: str, status: int) -> dict[str, Any]:
    response = app.test_client().open(path, method=method)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert isinstance(body, dict)
    assert body["status"] == status
    assert body["type"].startswith(error_handlers.PROBLEM_TYPE_BASE)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def test_validation_problem_lists_fields(problem_app: Flask) -> None:
    body = _problem(problem_app, "GET", "/validation", 400)
    assert body["type"].endswith("/validation_error")
    assert body["errors"] == [
        {"field": "source.pageId", "message": "bad id"},
        {"field": "format", "message": "bad format"},
    ]


def test_authentication_problem_has_www_authenticate(problem_app: Flask) -> None:
    response = problem_app.test_client().get("/auth")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    body = _problem(problem_app, "GET", "/auth", 401)
    assert body["reason"] == "missing_credentials"


def test_link_expired_problem_is_410_with_expiry(problem_app: Flask) -> None:
    body = _problem(problem_app, "GET", "/expired", 410)
    assert body["expiredAt"] == 1_700_000_000


def test_upstream_problem_carries_retry_after(problem_app: Flask) -> None:
    response = problem_app.test_client().get("/upstream")
    assert response.headers["Retry-After"] == "5"
    body = _problem(problem_app, "GET", "/upstream", 502)
    assert body["backend"] == "scroll-rest"
    assert body["upstreamStatus"] == 503


def test_unexpected_error_is_a_bare_500(
    problem_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    response = problem_app.test_client().get("/crash")
    text = response.get_data(as_text=True)
    assert "hunter2" not in text
    assert "RuntimeError" not in text
    assert "Traceback" not in text
    _problem(problem_app, "GET", "/crash", 500)
    assert "hunter2" in caplog.text  # logged for operators, not shown to callers


def test_unknown_route_is_problem_404(problem_app: Flask) -> None:
    body = _problem(problem_app, "GET", "/nope", 404)
    assert body["type"].endswith("/not_found")


def test_wrong_method_is_problem_405_with_allow(problem_app: Flask) -> None:
    response = problem_app.test_client().post("/auth")
    assert "GET" in response.headers["Allow"]
    _problem(problem_app, "POST", "/auth", 405)


def test_too_large_body_is_problem_413(problem_app: Flask) -> None:
    problem_app.config["MAX_CONTENT_LENGTH"] = 10

    @problem_app.post("/upload")
    def upload() -> str:
        from flask import request

        return str(len(request.get_data()))

    response = problem_app.test_client().post("/upload", data=b"x" * 100)
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
