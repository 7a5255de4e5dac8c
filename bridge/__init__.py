"""confluence-export-bridge: one normalized export API in front of the Confluence exporters."""

__version__ = "0.1.0"
