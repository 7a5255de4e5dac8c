"""Tests for bridge.config: defaults, the TOML file, BRIDGE_* overrides, hashed API keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bridge.config import (
    API_KEY_PREFIX,
    RetrySettings,
    Settings,
    TenantConfig,
    hash_api_key,
    load_settings,
    new_api_key,
)
from bridge.errors import ConfigurationError

SECRET = "s" * 40


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BRIDGE_* variable from the outside (or another test) may leak in; run in tmp."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_toml(tmp_path: Path, text: str, name: str = "bridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.database_url == "sqlite:///var/bridge.sqlite3"
    assert settings.artifacts_url == "file:var/artifacts"
    assert settings.signing_keys == []
    assert settings.link_ttl == 3600
    assert settings.retry == RetrySettings()
    assert settings.retry.attempts == 4
    assert settings.tenants == []
    assert settings.worker_threads == 4


def test_toml_file_is_read(tmp_path: Path) -> None:
    api_hash = hash_api_key("k-one")
    path = write_toml(
        tmp_path,
        f"""
public_url = "https://bridge.example"
link_ttl = 600

[[signing_keys]]
id = "k1"
secret = "{SECRET}"

[retry]
attempts = 2
backoff_base = 1.5

[[tenants]]
id = "acme"
api_keys = ["{api_hash}"]
default_backend = {{ pdf = "scroll-rest" }}

[tenants.backends.scroll-rest]
base_url = "https://confluence.acme.test"
""",
    )
    settings = load_settings(path)
    assert settings.public_url == "https://bridge.example"
    assert settings.link_ttl == 600
    assert settings.signing_keys[0].id == "k1"
    assert settings.signing_keys[0].secret.get_secret_value() == SECRET
    assert settings.retry.attempts == 2 and settings.retry.backoff_base == 1.5
    tenant = settings.tenants[0]
    assert tenant.id == "acme"
    assert tenant.api_keys == [api_hash]
    assert tenant.default_backend == {"pdf": "scroll-rest"}
    assert tenant.backends == {"scroll-rest": {"base_url": "https://confluence.acme.test"}}


def test_config_file_from_bridge_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(tmp_path, 'public_url = "https://via-env.example"\n')
    monkeypatch.setenv("BRIDGE_CONFIG", str(path))
    assert load_settings().public_url == "https://via-env.example"


def test_env_beats_file_and_nested_values_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(
        tmp_path,
        'public_url = "https://file.example"\nlink_ttl = 120\n'
        "[retry]\nattempts = 2\nbackoff_base = 1.5\n",
    )
    monkeypatch.setenv("BRIDGE_PUBLIC_URL", "https://env.example")
    monkeypatch.setenv("BRIDGE_RETRY__ATTEMPTS", "6")
    settings = load_settings(path)
    assert settings.public_url == "https://env.example"
    assert settings.retry.attempts == 6
    assert settings.retry.backoff_base == 1.5  # the file's other retry values survive
    assert settings.link_ttl == 120


def test_explicit_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PUBLIC_URL", "https://env.example")
    assert load_settings(public_url="https://arg.example").public_url == "https://arg.example"


def test_tenants_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    tenants = [
        {"id": "acme", "api_keys": [hash_api_key("a")], "backends": {"scroll-rest": {"x": 1}}},
        {"id": "globex", "name": "Globex Corp"},
    ]
    monkeypatch.setenv("BRIDGE_TENANTS", json.dumps(tenants))
    settings = load_settings()
    assert [t.id for t in settings.tenants] == ["acme", "globex"]
    assert settings.tenants[0].backends == {"scroll-rest": {"x": 1}}
    assert settings.tenants[1].name == "Globex Corp"


def test_signing_keys_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [{"id": "new", "secret": SECRET}, {"id": "old", "secret": "o" * 32}]
    monkeypatch.setenv("BRIDGE_SIGNING_KEYS", json.dumps(keys))
    assert [k.id for k in load_settings().signing_keys] == ["new", "old"]


def test_plain_api_key_is_rejected_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TENANTS", json.dumps([{"id": "acme", "api_keys": ["ceb_plain"]}]))
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = info.value.message
    assert "tenants.0.api_keys" in message
    assert "sha256:" in message
    assert "ceb_plain" not in message  # never echo a credential into logs


@pytest.mark.parametrize(
    "key",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "SHA256:" + "a" * 64,
        "sha1:" + "a" * 40,
    ],
)
def test_malformed_key_hashes_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="sha256:"):
        TenantConfig(id="acme", api_keys=[key])


def test_missing_config_file_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigurationError) as info:
        load_settings(missing)
    assert "nope.toml" in info.value.message


def test_missing_config_file_from_env_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigurationError, match=r"gone\.toml"):
        load_settings()


def test_every_invalid_key_is_named(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'publik_url = "typo"\nlink_ttl = 5\n[retry]\nattempts = 0\n'
        '[[signing_keys]]\nid = "bad id!"\nsecret = "short"\n',
    )
    with pytest.raises(ConfigurationError) as info:
        load_settings(path)
    message = info.value.message
    for fragment in ("publik_url", "link_ttl", "retry.attempts", "signing_keys.0.id"):
        assert fragment in message
    assert "signing_keys.0.secret" in message
    assert "'short'" not in message  # secrets are not echoed


def test_invalid_env_value_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_RETRY__ATTEMPTS", "many")
    with pytest.raises(ConfigurationError, match=r"retry\.attempts"):
        load_settings()


def test_toml_syntax_error_is_a_configuration_error(tmp_path: Path) -> None:
    """Start-up reports ConfigurationError (the CLI turns it into a clean message); a
    broken file must not escape as a raw TOMLDecodeError traceback."""
    path = write_toml(tmp_path, "public_url = \n")
    with pytest.raises(ConfigurationError):
        load_settings(path)


def test_env_json_syntax_error_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same for a BRIDGE_TENANTS that is not JSON (pydantic-settings raises SettingsError)."""
    monkeypatch.setenv("BRIDGE_TENANTS", "[{id: acme}]")
    with pytest.raises(ConfigurationError, match="tenants"):
        load_settings()


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.public_url = "https://other.example"  # type: ignore[misc]


def test_load_settings_does_not_change_the_settings_class(tmp_path: Path) -> None:
    # The per-file subclass must not leak toml_file into Settings itself.
    load_settings(write_toml(tmp_path, 'public_url = "https://file.example"\n'))
    assert Settings().public_url == "http://127.0.0.1:8080"
    assert "toml_file" not in Settings.model_config or not Settings.model_config["toml_file"]


def test_hash_api_key() -> None:
    hashed = hash_api_key("ceb_abc")
    assert hashed == hash_api_key("ceb_abc")
    assert hashed != hash_api_key("ceb_abd")
    assert hashed.startswith(API_KEY_PREFIX)
    assert len(hashed) == len(API_KEY_PREFIX) + 64
    assert TenantConfig(id="t", api_keys=[hashed]).api_keys == [hashed]
    # Known vector: sha256("abc").
    assert hash_api_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_new_api_key() -> None:
    keys = {new_api_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("ceb_")
        assert len(key) >= 40
        assert all(c.isalnum() or c in "-_" for c in key)
