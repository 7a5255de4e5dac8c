"""The command line: keygen's output is usable config, and `export` is a working client
with one-line errors and a non-zero exit on failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from bridge.cli import main
from bridge.config import load_settings
from bridge.crypto import SecretBox
from tests.conftest import ACME_KEY


def test_keygen_prints_values_the_config_accepts() -> None:
    result = CliRunner().invoke(main, ["keygen"])
    assert result.exit_code == 0
    values = {line.split(":")[0].strip(): line.split()[-1] for line in result.output.splitlines()}
    settings = load_settings(
        signing_keys=[{"id": "k", "secret": values["signing_keys secret"]}],
        encryption_keys=[values["encryption_keys entry"]],
        tenants=[
            {
                "id": "t",
                "api_keys": [values["api_keys entry (config)"]],
                "callback_secret": values["callback_secret (tenant)"],
            }
        ],
    )
    box = SecretBox([k.get_secret_value() for k in settings.encryption_keys])
    assert box.open(box.seal("x")) == "x"


def test_export_writes_the_file(start_bridge: Any, tmp_path: Path) -> None:
    bridge = start_bridge()
    target = tmp_path / "out.pdf"
    result = CliRunner().invoke(
        main,
        [
            "export",
            "--url",
            bridge.url,
            "--api-key",
            ACME_KEY,
            "--page",
            "1001",
            "--scope",
            "descendants",
            "--format",
            "pdf",
            "--backend",
            "scroll-rest",
            "--option",
            "locale=de",
            "-o",
            str(target),
        ],
    )
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(b"%PDF-")
    assert f"wrote {target}" in result.output


def test_export_failures_are_one_line_and_non_zero(start_bridge: Any, tmp_path: Path) -> None:
    bridge = start_bridge()
    runner = CliRunner()
    bad_key = runner.invoke(
        main, ["export", "--url", bridge.url, "--api-key", "nope", "--page", "1", "--format", "pdf"]
    )
    assert bad_key.exit_code != 0
    assert "HTTP 401" in bad_key.output and "Traceback" not in bad_key.output

    failed = runner.invoke(
        main,
        [
            "export",
            "--url",
            bridge.url,
            "--api-key",
            ACME_KEY,
            "--page",
            "4242",
            "--format",
            "pdf",
            "-o",
            str(tmp_path / "x.pdf"),
        ],
    )
    assert failed.exit_code != 0
    assert "export failed" in failed.output

    unreachable = runner.invoke(
        main,
        [
            "export",
            "--url",
            "http://127.0.0.1:9",
            "--api-key",
            ACME_KEY,
            "--page",
            "1",
            "--format",
            "pdf",
        ],
    )
    assert unreachable.exit_code != 0
    assert "cannot reach the bridge" in unreachable.output

    usage = runner.invoke(
        main, ["export", "--url", bridge.url, "--api-key", ACME_KEY, "--format", "pdf"]
    )
    assert usage.exit_code == 2
