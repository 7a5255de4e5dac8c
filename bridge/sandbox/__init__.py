"""Simulated upstreams, written from the vendors' documented contracts.

Each module holds one upstream as a Flask application factory that takes an injectable
clock, so tests can expire jobs without sleeping. They are as strict as the real services:
they reject what the real ones reject. ``export-bridge sandbox`` serves them on loopback.
"""
