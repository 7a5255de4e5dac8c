"""The HTTP edge: the Flask app factory and one blueprint per resource."""

from __future__ import annotations

from flask import Flask

from bridge.bootstrap import Bridge, build_bridge
from bridge.config import Settings, load_settings
from handlers import connect, downloads, errors, exports, health, metrics, openapi, proxy, webhooks


def create_app(settings: Settings | None = None, *, bridge: Bridge | None = None) -> Flask:
    """Create the WSGI app; build the bridge from *settings* unless one is given."""
    if bridge is None:
        bridge = build_bridge(settings or load_settings())
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = bridge.settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["bridge"] = bridge
    errors.register(app)
    metrics.init_app(app)
    for module in (exports, downloads, health, openapi, connect, webhooks):
        app.register_blueprint(module.bp)
    app.register_blueprint(proxy.scroll)
    app.register_blueprint(proxy.content_exporter)
    return app
