"""All sandbox upstreams at once, on loopback, sharing one page catalogue and clock.

``export-bridge sandbox`` and ``export-bridge demo`` run this; tests use it too. It
also writes the tenant configuration that points a bridge at these upstreams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bridge.sandbox.atlassian_keys import ConnectSite, ForgeJWKS, InstallKeyServer
from bridge.sandbox.confluence_cloud import ConfluenceCloudSandbox
from bridge.sandbox.confluence_v2 import ConfluenceV2Sandbox
from bridge.sandbox.content_exporter import ContentExporterSandbox
from bridge.sandbox.forge_markdown import ForgeMarkdownSandbox
from bridge.sandbox.harness import Clock, ServerThread
from bridge.sandbox.oauth_server import OAuthSandbox
from bridge.sandbox.pages import PageTree, demo_tree
from bridge.sandbox.scroll_engine import ScrollJobEngine
from bridge.sandbox.scroll_rest import ScrollRestSandbox

SCROLL_PAT = "sandbox-pat"
CEX_KEY = "sandbox-cex-key"
FORGE_TOKEN = "sandbox-forge-token"
# The Connect installation the cloud site knows: the bridge impersonates its users.
OAUTH_CLIENT_ID = "sandbox-oauth-client"
CLIENT_KEY = "sandbox-connect-client-key"
SHARED_SECRET = "sandbox-shared-secret-0123456789abcdef-0123456789"
USERS = ("557058:alice", "557058:bob")
DEMO_TEMPLATES = {
    "docx": "com.k15t.scroll.office.default-template-1",
    "pdf": "com.k15t.scroll.pdf.default-template-documentation",
    "html": "com.k15t.scroll.html.helpcenter",
}


@dataclass
class SandboxSuite:
    """The running sandbox upstreams and the servers they listen on."""

    pages: PageTree = field(default_factory=demo_tree)
    clock: Clock = time.time
    job_seconds: float = 1.0
    servers: dict[str, ServerThread] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scroll_engine = ScrollJobEngine(self.pages, self.clock, job_seconds=self.job_seconds)
        self.scroll_dc = ScrollRestSandbox(self.scroll_engine, flavor="dc", pats=(SCROLL_PAT,))
        self.oauth = OAuthSandbox(self.clock)
        self.cloud = ConfluenceCloudSandbox(self.oauth, self.scroll_engine, self.pages, self.clock)
        self.content_exporter = {
            region: ContentExporterSandbox(
                self.pages,
                self.clock,
                api_key=CEX_KEY,
                region=region,
                export_seconds=self.job_seconds,
            )
            for region in ("us", "eu")
        }
        self.forge = ForgeMarkdownSandbox(self.pages, self.clock, tokens=(FORGE_TOKEN,))
        self.confluence_v2 = ConfluenceV2Sandbox(self.pages, tokens=(FORGE_TOKEN,))
        # Atlassian's signing keys, and the cloud site acting as a Connect host toward a bridge.
        self.install_keys = InstallKeyServer()
        self.forge_jwks = ForgeJWKS()
        self.connect_site = ConnectSite(self.install_keys, self.clock)

    def start(self) -> SandboxSuite:
        """Serve every upstream on its own loopback port and connect them to each other."""
        apps = {
            "scroll-dc": self.scroll_dc.app,
            "oauth": self.oauth.app,
            "confluence-cloud": self.cloud.app,
            "content-exporter-us": self.content_exporter["us"].app,
            "content-exporter-eu": self.content_exporter["eu"].app,
            "forge": self.forge.app,
            "confluence-v2": self.confluence_v2.app,
            "connect-install-keys": self.install_keys.app,
            "forge-jwks": self.forge_jwks.app,
        }
        for name, app in apps.items():
            self.servers[name] = ServerThread(app).start()
        self.oauth.set_public_url(self.url("oauth"))
        self.cloud.set_public_url(self.url("confluence-cloud"))
        self.oauth.register_client(OAUTH_CLIENT_ID, SHARED_SECRET, self.site_url, USERS)
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def __enter__(self) -> SandboxSuite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, name: str) -> str:
        return self.servers[name].url

    @property
    def site_url(self) -> str:
        """The simulated Confluence Cloud site's base URL (``…/wiki``)."""
        return f"{self.url('confluence-cloud')}/wiki"

    def tenant_backends(self) -> dict[str, dict[str, Any]]:
        """The ``backends`` table of a tenant that uses every sandbox upstream."""
        return {
            "scroll-rest": {
                "flavor": "dc",
                "base_url": f"{self.url('scroll-dc')}{self.scroll_dc.context_path}",
                "auth": {"type": "bearer", "token": SCROLL_PAT},
                "templates": DEMO_TEMPLATES,
            },
            "scroll-macro": {
                "site_url": self.site_url,
                "client_key": CLIENT_KEY,
                "oauth_client_id": OAUTH_CLIENT_ID,
                "shared_secret": SHARED_SECRET,
                "auth_server": self.url("oauth"),
                "templates": DEMO_TEMPLATES,
            },
            "content-exporter": {
                "url": self.url("content-exporter-us"),
                "api_key": CEX_KEY,
            },
            "forge-markdown": {
                "cloud_id": self.forge.cloud_id,
                "api_url": self.url("forge"),
                "token": FORGE_TOKEN,
                # The gateway form: the walker must re-add /ex/confluence/{cloudId} to next links.
                "confluence_url": (
                    f"{self.url('confluence-v2')}/ex/confluence/{self.confluence_v2.cloud_id}"
                ),
            },
        }
