"""Tests for bridge.signing: signed, expiring, key-rotating download-link tokens."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import BadSignatureError, ConfigurationError, LinkExpiredError
from bridge.signing import LinkClaims, LinkSigner

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OLD = ("k1", b"old-secret-old-secret-old-secret-0000")
NEW = ("k2", b"new-secret-new-secret-new-secret-1111")
CLAIMS = LinkClaims(job_id="job-123", tenant_id="acme", expires_at=2_000_000_000)
NOW = 1_900_000_000.0


def b64(data: bytes) -> str:
    """Unpadded base64url, as tokens use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_parts(token: str) -> tuple[str, str, str]:
    """The three dot-separated parts of a token."""
    kid, payload, signature = token.split(".")
    return kid, payload, signature


def test_round_trip_returns_the_same_claims() -> None:
    signer = LinkSigner([NEW])
    assert signer.verify(signer.sign(CLAIMS), NOW) == CLAIMS


def test_token_is_three_base64url_parts_led_by_the_signing_kid() -> None:
    token = LinkSigner([NEW, OLD]).sign(CLAIMS)
    kid, payload, signature = token_parts(token)
    assert kid == "k2"
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert set(payload) <= alphabet and set(signature) <= alphabet
    assert "=" not in token


def test_no_keys_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        LinkSigner([])


@pytest.mark.parametrize(
    "claims",
    [
        LinkClaims("j", "t", 2_000_000_000),
        LinkClaims("a.b.c", "tenant:with.dots", 2_000_000_000),
        LinkClaims("ü-nicode-✓", 't"quote', 2_000_000_000),
        LinkClaims("", "", 2_000_000_000),
    ],
)
def test_round_trip_preserves_awkward_ids(claims: LinkClaims) -> None:
    signer = LinkSigner([NEW])
    token = signer.sign(claims)
    assert token.count(".") == 2
    assert signer.verify(token, NOW) == claims


def _replace_part(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


def _forged_payload(token: str) -> str:
    """A payload naming another job, re-encoded correctly but not re-signed."""
    data = {"j": "someone-elses-job", "t": "acme", "e": 2_000_000_000}
    return _replace_part(token, 1, b64(json.dumps(data, separators=(",", ":")).encode()))


def _tampered_tokens() -> list[tuple[str, str]]:
    token = LinkSigner([NEW]).sign(CLAIMS)
    kid, payload, signature = token_parts(token)
    flipped_sig = ("A" if signature[0] != "A" else "B") + signature[1:]
    return [
        ("unknown kid", _replace_part(token, 0, "k9")),
        ("empty kid", _replace_part(token, 0, "")),
        ("forged payload", _forged_payload(token)),
        ("payload appended", _replace_part(token, 1, payload + "AA")),
        ("signature flipped", _replace_part(token, 2, flipped_sig)),
        ("signature truncated", _replace_part(token, 2, signature[:-1])),
        ("signature empty", _replace_part(token, 2, "")),
        ("token truncated", token[: len(token) // 2]),
        ("extra dot at end", token + "."),
        ("extra part", token + ".xyz"),
        ("two parts", f"{kid}.{payload}"),
        ("one part", kid),
        ("empty", ""),
        ("non-base64 payload", _replace_part(token, 1, "!!!***")),
        ("non-base64 signature", _replace_part(token, 2, "@@@@")),
        ("padded signature", token + "="),
        ("whitespace", " " + token),
    ]


@pytest.mark.parametrize(("label", "token"), _tampered_tokens())
def test_tampered_token_is_a_bad_signature(label: str, token: str) -> None:
    with pytest.raises(BadSignatureError):
        LinkSigner([NEW]).verify(token, NOW)


def test_a_token_signed_with_another_secret_under_the_same_kid_fails() -> None:
    impostor = LinkSigner([("k2", b"x" * 40)])
    with pytest.raises(BadSignatureError):
        LinkSigner([NEW]).verify(impostor.sign(CLAIMS), NOW)


def test_a_correctly_signed_but_malformed_payload_is_a_bad_signature() -> None:
    # Someone holding the key signed garbage: still a BadSignatureError, never a crash.
    import hashlib
    import hmac

    kid, secret = NEW
    for raw in (b"not json", b"[1,2,3]", b'{"j":"x"}', b'{"j":"x","t":"y","e":"soon"}', b"\xff"):
        signed = f"{kid}.{b64(raw)}"
        mac = b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())
        with pytest.raises(BadSignatureError):
            LinkSigner([NEW]).verify(f"{signed}.{mac}", NOW)


def test_expiry_boundary() -> None:
    signer = LinkSigner([NEW])
    token = signer.sign(CLAIMS)
    assert signer.verify(token, CLAIMS.expires_at - 0.001) == CLAIMS
    with pytest.raises(LinkExpiredError) as at_expiry:
        signer.verify(token, CLAIMS.expires_at)
    assert at_expiry.value.expired_at == CLAIMS.expires_at
    assert at_expiry.value.status_code == 410
    with pytest.raises(LinkExpiredError) as later:
        signer.verify(token, CLAIMS.expires_at + 86400)
    assert later.value.expired_at == CLAIMS.expires_at


def test_expired_and_tampered_is_a_bad_signature_not_expired() -> None:
    # An expired link must not confirm that a forged one "would have been" valid.
    token = _forged_payload(LinkSigner([NEW]).sign(CLAIMS))
    with pytest.raises(BadSignatureError):
        LinkSigner([NEW]).verify(token, CLAIMS.expires_at + 10)


def test_rotation_old_key_second_still_verifies() -> None:
    old_token = LinkSigner([OLD]).sign(CLAIMS)
    rotated = LinkSigner([NEW, OLD])
    assert rotated.verify(old_token, NOW) == CLAIMS
    # ... and the rotated signer signs with the new key.
    assert token_parts(rotated.sign(CLAIMS))[0] == "k2"
    assert LinkSigner([NEW]).verify(rotated.sign(CLAIMS), NOW) == CLAIMS


def test_rotation_removed_key_no_longer_verifies() -> None:
    old_token = LinkSigner([OLD]).sign(CLAIMS)
    with pytest.raises(BadSignatureError):
        LinkSigner([NEW]).verify(old_token, NOW)


def test_kid_cannot_pick_another_keys_secret() -> None:
    # A token signed by OLD but relabelled with NEW's kid must not verify.
    token = LinkSigner([OLD]).sign(CLAIMS)
    with pytest.raises(BadSignatureError):
        LinkSigner([NEW, OLD]).verify(_replace_part(token, 0, "k2"), NOW)


@PROPERTY
@given(data=st.data())
def test_single_byte_flips_never_verify_as_other_claims(data: st.DataObject) -> None:
    """Flip one byte of a valid token (as it might arrive, decoded, from a URL path): the
    result is never accepted, and the only error is BadSignatureError."""
    signer = LinkSigner([NEW, OLD])
    claims = LinkClaims(
        data.draw(st.text(min_size=1, max_size=20), label="job"),
        data.draw(st.text(min_size=1, max_size=20), label="tenant"),
        data.draw(st.integers(min_value=int(NOW) + 1, max_value=2**40), label="exp"),
    )
    raw = bytearray(signer.sign(claims).encode("ascii"))
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    raw[index] ^= mask
    tampered = raw.decode("latin-1")
    with pytest.raises(BadSignatureError):
        signer.verify(tampered, NOW)


@pytest.mark.parametrize("part", [0, 1, 2])
def test_non_ascii_character_in_any_part_is_a_bad_signature(part: int) -> None:
    """Tokens reach verify() from a URL path, already percent-decoded, so they can hold any
    character; a non-ASCII one must be refused like any other tampering, not crash."""
    token = LinkSigner([NEW]).sign(CLAIMS)
    value = token.split(".")[part]
    with pytest.raises(BadSignatureError):
        LinkSigner([NEW]).verify(_replace_part(token, part, value[:-1] + "é"), NOW)
