"""Tests for bridge.atlassian_jwt: qsh canonicalisation, token round trips and refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote, urlencode

import jwt
import pytest
from atlassian_jwt import encode_token
from atlassian_jwt.url_utils import canonicalize_request, hash_url
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.atlassian_jwt import (
    CONTEXT_QSH,
    JWTAuthError,
    MalformedTokenError,
    QshMismatchError,
    TokenExpiredError,
    TokenSignatureError,
    authorization_server_for,
    canonical_request,
    decode_inbound,
    encode_outbound,
    impersonation_assertion,
    query_string_hash,
    unverified_issuer,
)

SECRET = "tenant-shared-secret-0123456789-abcdefghijklmnop"
OTHER_SECRET = "another-tenant-secret-0123456789-abcdefghijklmn"
BASE = "https://acme.atlassian.net/wiki"
URL = f"{BASE}/rest/api/content/123?expand=body.storage&status=current"
NOW = 1_728_403_475


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes = b"") -> str:
    """Build a JWT by hand (PyJWT refuses to make some of the hostile ones)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "iss": "tenant-client-key",
        "sub": "557058:account",
        "iat": NOW,
        "exp": NOW + 180,
        "qsh": query_string_hash("GET", URL, BASE),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def inbound(token: str, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "shared_secret": SECRET,
        "method": "GET",
        "url": URL,
        "base_url": BASE,
        "now": NOW + 10,
    }
    options.update(kwargs)
    return decode_inbound(token, **options)


def rejected(token: str, **kwargs: Any) -> JWTAuthError:
    with pytest.raises(JWTAuthError) as info:
        inbound(token, **kwargs)
    message = str(info.value)
    assert SECRET not in message
    assert not token or token not in message
    return info.value


# --- qsh ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", "/?param=foo", "GET&/&param=foo"),
        ("POST", "/user", "POST&/user&"),
        (
            "GET",
            "/path/to/service?zee_last=param&repeated=parameter 1&first=param&repeated=parameter 2",
            "GET&/path/to/service&first=param&repeated=parameter%201,parameter%202&zee_last=param",
        ),
    ],
)
def test_canonical_request_worked_examples(method: str, url: str, expected: str) -> None:
    assert canonical_request(method, url) == expected
    assert query_string_hash(method, url) == hashlib.sha256(expected.encode()).hexdigest()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"{BASE}/rest/api/space?jwt=abc&limit=1", "GET&/rest/api/space&limit=1"),
        (f"{BASE}/rest/api/space/?b=2&a=1", "GET&/rest/api/space&a=1&b=2"),
        (f"{BASE}", "GET&/&"),
        (f"{BASE}/", "GET&/&"),
        (f"{BASE}/a&b/c?x=a+b&y=a%2Bb", "GET&/a%26b/c&x=a%20b&y=a%2Bb"),
        (f"{BASE}/p?k=~!*'()&k=", "GET&/p&k=,~%21%2A%27%28%29"),
        (f"{BASE}/p?%C3%A9=%E2%82%AC", "GET&/p&%C3%A9=%E2%82%AC"),
    ],
)
def test_canonical_request_strips_base_path_and_encodes(url: str, expected: str) -> None:
    assert canonical_request("get", url, BASE + "/") == expected


@pytest.mark.parametrize("url", ["https://acme.atlassian.net/wikipedia/x", "/rest/api/space"])
def test_canonical_request_refuses_url_outside_base(url: str) -> None:
    with pytest.raises(ValueError, match="not under base path"):
        canonical_request("GET", url, BASE)


def test_canonical_request_fixes_atlassian_jwt_scheme_confusion() -> None:
    # atlassian_jwt parses "a:b/c" as scheme "a"; the reference keeps the whole path.
    assert canonicalize_request("GET", "/a:b/c") == "GET&/b/c&"
    assert canonical_request("GET", "/a:b/c") == "GET&/a:b/c&"


_PCHARS = "abcXYZ019-._~!$'()*+,=@%"
_SEGMENT = st.text(alphabet=_PCHARS, min_size=1, max_size=8) | st.sampled_from(
    ["%20", "%2F", "%C3%A9", "%26", "%zz"]
)


@st.composite
def relative_urls(draw: st.DrawFn) -> str:
    first = draw(_SEGMENT)
    rest = draw(st.lists(_SEGMENT | st.text(alphabet=_PCHARS + ":", min_size=1), max_size=4))
    path = "/" + "/".join([first, *rest]) + draw(st.sampled_from(["", "/"]))
    pairs = draw(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=6))
    query = draw(
        st.sampled_from(["?", ""]).map(lambda mark: mark + urlencode(pairs, quote_via=quote))
        | st.text(max_size=30).map(lambda raw: "?" + raw)
        | st.just("")
    )
    return path + query


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["GET", "post", "Put", "DELETE"]), relative_urls())
def test_qsh_matches_atlassian_jwt(method: str, url: str) -> None:
    assert canonical_request(method, url) == canonicalize_request(method, url)
    assert query_string_hash(method, url) == hash_url(method, url)
    assert query_string_hash(method, BASE + url, BASE) == hash_url(method, url)


# --- outbound / impersonation ------------------------------------------------------------


def test_encode_outbound_claims_and_round_trip() -> None:
    token = encode_outbound(
        "GET",
        URL,
        base_url=BASE,
        client_key="tenant-client-key",
        shared_secret=SECRET,
        app_key="com.example.bridge",
        now=NOW,
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    decoded = inbound(token, now=NOW + 100)
    assert decoded == {
        "iss": "com.example.bridge",
        "iat": NOW,
        "exp": NOW + 180,
        "qsh": hash_url("GET", "/rest/api/content/123?expand=body.storage&status=current"),
        "aud": ["tenant-client-key"],
    }
    assert inbound(token, audience="tenant-client-key")["iss"] == "com.example.bridge"
    assert rejected(token, audience="someone-else").reason == "invalid_claim:aud"


def test_decode_inbound_accepts_atlassian_jwt_tokens() -> None:
    token = encode_token("POST", "/installed?x=1", "tenant-client-key", SECRET)
    decoded = decode_inbound(
        token,
        shared_secret=SECRET,
        method="POST",
        url="https://bridge.example.com/installed?x=1&jwt=" + token,
        base_url="https://bridge.example.com",
    )
    assert decoded["iss"] == "tenant-client-key"


@pytest.mark.parametrize("lifetime", [0, -5])
def test_encode_refuses_non_positive_lifetime(lifetime: int) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        encode_outbound(
            "GET",
            URL,
            base_url=BASE,
            client_key="c",
            shared_secret=SECRET,
            app_key="a",
            now=NOW,
            lifetime=lifetime,
        )


def test_encode_refuses_short_secret() -> None:
    with pytest.raises(ValueError, match="32 bytes") as info:
        impersonation_assertion(
            oauth_client_id="id",
            account_id="aaid",
            base_url=BASE,
            audience="aud",
            shared_secret="too-short",
            now=NOW,
        )
    assert "too-short" not in str(info.value)


def test_impersonation_assertion_claims() -> None:
    token = impersonation_assertion(
        oauth_client_id="oauth-client-1",
        account_id="557058:f00d",
        base_url=BASE,
        audience="https://oauth-2-authorization-server.services.atlassian.com",
        shared_secret=SECRET,
        now=NOW,
    )
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        audience="https://oauth-2-authorization-server.services.atlassian.com",
        options={"verify_exp": False, "verify_iat": False},
    ) == {
        "iss": "urn:atlassian:connect:clientid:oauth-client-1",
        "sub": "urn:atlassian:connect:useraccountid:557058:f00d",
        "tnt": BASE,
        "aud": "https://oauth-2-authorization-server.services.atlassian.com",
        "iat": NOW,
        "exp": NOW + 60,
    }


@pytest.mark.parametrize(
    ("base_url", "server"),
    [
        (
            "https://acme.atlassian.net/wiki",
            "https://oauth-2-authorization-server.services.atlassian.com",
        ),
        ("https://acme.jira.com", "https://oauth-2-authorization-server.services.atlassian.com"),
        (
            "https://unknown.example.org",
            "https://oauth-2-authorization-server.services.atlassian.com",
        ),
        (
            "https://test.jira-dev.com/wiki",
            "https://oauth-2-authorization-server.stg.services.atlassian.com",
        ),
        (
            "https://acme.atlassian-us-gov-mod.net/wiki",
            "https://oauth-2-authorization-server.services.atlassian-us-gov-mod.com",
        ),
        (
            "https://acme.stg.atlassian-us-gov-mod.net",
            "https://oauth-2-authorization-server.stg.services.atlassian-us-gov-mod.com",
        ),
        (
            "https://jira-dev.com.evil.example",
            "https://oauth-2-authorization-server.services.atlassian.com",
        ),
    ],
)
def test_authorization_server_for(base_url: str, server: str) -> None:
    assert authorization_server_for(base_url) == server


def test_authorization_server_for_requires_host() -> None:
    with pytest.raises(ValueError, match="no host"):
        authorization_server_for("/wiki")


# --- inbound refusals ----------------------------------------------------------------------


def test_decode_inbound_round_trip_and_leeway_edges() -> None:
    token = sign(claims())
    assert inbound(token)["sub"] == "557058:account"
    assert inbound(token, now=NOW + 180 + 29)["iss"] == "tenant-client-key"
    assert inbound(token, now=NOW - 30)["iss"] == "tenant-client-key"
    error = rejected(token, now=NOW + 180 + 30)
    assert isinstance(error, TokenExpiredError) and error.reason == "expired"
    error = rejected(token, now=NOW - 31)
    assert isinstance(error, TokenExpiredError) and error.reason == "iat_in_future"
    assert rejected(token, now=NOW + 180, leeway=0).reason == "expired"


def test_decode_inbound_checks_nbf() -> None:
    assert rejected(sign(claims(nbf=NOW + 100))).reason == "not_yet_valid"
    assert inbound(sign(claims(nbf=NOW)))["nbf"] == NOW


def test_alg_none_is_refused() -> None:
    token = forge({"alg": "none", "typ": "JWT"}, claims())
    error = rejected(token)
    assert isinstance(error, MalformedTokenError) and error.reason == "alg_not_allowed"
    with pytest.raises(MalformedTokenError, match="alg_not_allowed"):
        unverified_issuer(token)
    no_alg = forge({"typ": "JWT"}, claims(), SECRET.encode())
    assert rejected(no_alg).reason == "alg_not_allowed"


def _rsa_pair() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public_pem


def test_hs_rs_confusion_is_refused() -> None:
    private_key, public_pem = _rsa_pair()
    rs_token = jwt.encode(claims(), private_key, algorithm="RS256")
    assert rejected(rs_token).reason == "alg_not_allowed"
    assert rejected(rs_token, shared_secret=public_pem.decode()).reason == "alg_not_allowed"
    # The classic attack: HS256 keyed with the (public) PEM.
    confused = forge({"alg": "HS256", "typ": "JWT"}, claims(), public_pem)
    assert rejected(confused).reason == "bad_signature"
    error = rejected(confused, shared_secret=public_pem.decode())
    assert isinstance(error, TokenSignatureError) and error.reason == "invalid_key"


def test_other_secret_and_tampering_are_refused() -> None:
    assert rejected(sign(claims(), OTHER_SECRET)).reason == "bad_signature"
    header, _payload, signature = sign(claims()).split(".")
    evil = b64(json.dumps(claims(iss="other-tenant")).encode())
    error = rejected(f"{header}.{evil}.{signature}")
    assert isinstance(error, TokenSignatureError) and error.reason == "bad_signature"


def test_qsh_mismatch_and_context_qsh() -> None:
    token = sign(claims())
    for kwargs in (
        {"method": "POST"},
        {"url": URL + "&extra=1"},
        {"url": f"{BASE}/rest/api/content/124?expand=body.storage&status=current"},
    ):
        error = rejected(token, **kwargs)
        assert isinstance(error, QshMismatchError) and error.reason == "qsh_mismatch"
    context_token = sign(claims(qsh=CONTEXT_QSH))
    assert rejected(context_token).reason == "qsh_mismatch"
    assert inbound(context_token, allow_context_qsh=True)["qsh"] == CONTEXT_QSH
    assert rejected(sign(claims(qsh="é" * 64))).reason == "qsh_mismatch"
    assert rejected(sign(claims(qsh=123))).reason == "invalid_claim:qsh"


def test_request_url_outside_base_is_a_qsh_failure() -> None:
    error = rejected(sign(claims()), url="https://acme.atlassian.net/other/x")
    assert isinstance(error, QshMismatchError) and error.reason == "bad_request_url"


@pytest.mark.parametrize("claim", ["iss", "iat", "exp", "qsh"])
def test_missing_claims_are_refused(claim: str) -> None:
    payload = claims()
    del payload[claim]
    error = rejected(sign(payload))
    assert isinstance(error, MalformedTokenError) and error.reason == f"missing_claim:{claim}"


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", "soon"), ("exp", True), ("iat", [1]), ("exp", float("nan")), ("exp", float("inf"))],
)
def test_garbled_time_claims_are_refused(claim: str, value: object) -> None:
    token = sign(claims(**{claim: value}))
    assert rejected(token).reason == f"invalid_claim:{claim}"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "!!!.???.###",
        b64(b"not json") + "." + b64(b"{}") + ".",
        b64(b'["HS256"]') + "." + b64(b"{}") + ".",
        forge({"alg": "HS256"}, claims(), SECRET.encode()).replace(".", "..", 1),
        "x" * 10_000,
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    error = rejected(token)
    assert isinstance(error, MalformedTokenError) and error.reason == "malformed"
    with pytest.raises(MalformedTokenError):
        unverified_issuer(token)


def test_non_object_payload_is_refused() -> None:
    token = forge({"alg": "HS256", "typ": "JWT"}, [1, 2], SECRET.encode())  # type: ignore[arg-type]
    assert rejected(token).reason == "malformed"


def test_short_secret_on_decode_is_invalid_key() -> None:
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(), b"short")
    assert rejected(token, shared_secret="short").reason == "invalid_key"


def test_unverified_issuer() -> None:
    assert unverified_issuer(sign(claims(), OTHER_SECRET)) == "tenant-client-key"
    with pytest.raises(MalformedTokenError, match="missing_claim:iss"):
        unverified_issuer(sign(claims(iss=None)))
    for bad_issuer in ("", 42):
        token = forge({"alg": "HS256", "typ": "JWT"}, claims(iss=bad_issuer), SECRET.encode())
        with pytest.raises(MalformedTokenError, match="invalid_claim:iss"):
            unverified_issuer(token)
        assert rejected(token).reason == "invalid_claim:iss"
