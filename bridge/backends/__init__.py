"""The upstream exporters, one module each, behind :class:`~bridge.backends.base.Backend`."""

from __future__ import annotations

from bridge.backends.base import Backend, BackendServices
from bridge.backends.content_exporter import ContentExporterBackend
from bridge.backends.forge_markdown import ForgeMarkdownBackend
from bridge.backends.scroll_macro import ScrollMacroBackend
from bridge.backends.scroll_rest import ScrollRestBackend

BACKEND_CLASSES: dict[str, type[Backend]] = {
    cls.name: cls
    for cls in (ScrollRestBackend, ScrollMacroBackend, ContentExporterBackend, ForgeMarkdownBackend)
}


def build_backends(services: BackendServices) -> dict[str, Backend]:
    """One instance of every backend, sharing *services*."""
    return {name: cls(services) for name, cls in BACKEND_CLASSES.items()}
