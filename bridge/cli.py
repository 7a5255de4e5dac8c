"""``export-bridge``: serve the bridge, run the sandbox or the demo, export from a shell."""

from __future__ import annotations

import base64
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bridge.client import BridgeClient, ClientError
from bridge.config import hash_api_key, load_settings, new_api_key
from bridge.crypto import new_encryption_key
from bridge.errors import ConfigurationError


@click.group()
@click.version_option(package_name="confluence-export-bridge")
def main() -> None:
    """confluence-export-bridge: one export API in front of the Confluence exporters."""


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML config file (default: $BRIDGE_CONFIG).",
)
@click.option("--bind", default="127.0.0.1:8080", show_default=True)
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes.")
@click.option("--threads", default=8, show_default=True, help="Threads per worker.")
def serve(config_file: str | None, bind: str, workers: int, threads: int) -> None:
    """Serve the bridge with gunicorn."""
    from bridge.server import run_gunicorn

    try:
        settings = load_settings(config_file)
    except ConfigurationError as exc:
        raise click.ClickException(exc.message) from None
    run_gunicorn(settings, bind=bind, workers=workers, threads=threads)


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML config file (default: $BRIDGE_CONFIG).",
)
@click.option("--burst", is_flag=True, help="Take the steps due now, then exit.")
def worker(config_file: str | None, burst: bool) -> None:
    """Run an RQ worker for background steps (background = "rq", a Redis database_url)."""
    from bridge.rq_worker import run_worker

    try:
        run_worker(load_settings(config_file), burst=burst)
    except ConfigurationError as exc:
        raise click.ClickException(exc.message) from None


@main.command()
@click.option(
    "--show-config/--no-show-config",
    default=True,
    help="Print the tenant backends table that points at the sandbox.",
)
def sandbox(show_config: bool) -> None:
    """Run every simulated upstream on loopback until interrupted."""
    from bridge.sandbox.suite import SandboxSuite

    with SandboxSuite() as suite:
        for name, server in suite.servers.items():
            click.echo(f"{name:>20}  {server.url}")
        if show_config:
            click.echo("\n# tenant backends for these upstreams:")
            click.echo(json.dumps(suite.tenant_backends(), indent=2))
        click.echo("\nCtrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@main.command()
def keygen() -> None:
    """Print fresh secrets: a tenant API key (and its hash for the config), a callback
    secret, a link-signing key and an encryption key."""
    key = new_api_key()
    click.echo(f"api key (give to the caller):  {key}")
    click.echo(f"api_keys entry (config):       {hash_api_key(key)}")
    click.echo(
        f"callback_secret (tenant):      whsec_{base64.b64encode(secrets.token_bytes(32)).decode()}"
    )
    click.echo(f"signing_keys secret:           {secrets.token_urlsafe(48)}")
    click.echo(f"encryption_keys entry:         {new_encryption_key()}")


@main.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the state and downloads in this folder (default: a temporary one).",
)
def demo(keep: str | None) -> None:
    """Start the sandbox and a bridge on loopback and run real exports end to end."""
    from bridge.demo import run_demo

    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="export-bridge-demo-"))
    try:
        run_demo(workdir, click.echo)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("export")
@click.option("--url", envvar="BRIDGE_URL", required=True, help="The bridge's base URL.")
@click.option("--api-key", envvar="BRIDGE_API_KEY", required=True, help="Tenant API key.")
@click.option("--page", "page_id", help="Page id to export.")
@click.option("--space", "space_key", help="Space key to export (instead of --page).")
@click.option("--scope", type=click.Choice(["current", "descendants"]), default="current")
@click.option(
    "--format", "fmt", type=click.Choice(["docx", "pdf", "html", "markdown"]), required=True
)
@click.option("--backend", default="auto", show_default=True)
@click.option("--template", default=None)
@click.option("--as-user", default=None)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A backend option (repeatable); VALUE is parsed as JSON when it can be.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where to write the file (default: the file's own name).",
)
def export_command(
    url: str,
    api_key: str,
    page_id: str | None,
    space_key: str | None,
    scope: str,
    fmt: str,
    backend: str,
    template: str | None,
    as_user: str | None,
    options: tuple[str, ...],
    output: str | None,
) -> None:
    """Export through a running bridge, with a progress bar, and write the file."""
    if bool(page_id) == bool(space_key):
        raise click.UsageError("give exactly one of --page and --space")
    source: dict[str, Any] = (
        {"pageId": page_id, "scope": scope} if page_id else {"spaceKey": space_key}
    )
    request: dict[str, Any] = {
        "backend": backend,
        "source": source,
        "format": fmt,
        "options": _parse_options(options),
    }
    if template:
        request["template"] = template
    if as_user:
        request["asUser"] = as_user
    client = BridgeClient(url, api_key)
    try:
        job = client.start(request)
        with click.progressbar(length=100, label=f"export {job['id'][:8]}", file=sys.stderr) as bar:
            shown = 0

            def progress(current: dict[str, Any]) -> None:
                nonlocal shown
                bar.update(max(0, current["progress"] - shown))
                shown = max(shown, current["progress"])

            job = client.wait(job["id"], progress)
        download = job["download"]
        target = Path(output or download["filename"])
        size = client.download(download["url"], target)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {target} ({size} bytes)")


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


if __name__ == "__main__":
    main()
