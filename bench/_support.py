"""Helpers for the benchmarks: run a bridge as its own process and watch its memory."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import requests

from bridge.config import hash_api_key

API_KEY = "ceb_bench-key-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(type(value))


def write_config(
    path: Path, workdir: Path, public_url: str, backends: dict[str, dict[str, Any]], **settings: Any
) -> Path:
    lines = [
        f"public_url = {toml_value(public_url)}",
        f"database_url = {toml_value('sqlite:///' + str(workdir / 'bridge.sqlite3'))}",
        f"artifacts_url = {toml_value('file:' + str(workdir / 'artifacts'))}",
        f"encryption_key_file = {toml_value(str(workdir / 'encryption.key'))}",
        "allow_loopback_upstreams = true",
        *(f"{k} = {toml_value(v)}" for k, v in settings.items()),
        "[[tenants]]",
        'id = "bench"',
        f"api_keys = [{toml_value(hash_api_key(API_KEY))}]",
    ]
    for name, table in backends.items():
        lines.append(f'[tenants.backends."{name}"]')
        lines.extend(f'"{k}" = {toml_value(v)}' for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def bridge_process(
    config: Path, port: int, workers: int = 1, threads: int = 8
) -> Iterator[subprocess.Popen[bytes]]:
    """``export-bridge serve`` as a child process, ready when /readyz answers."""
    command = [
        sys.executable,
        "-m",
        "bridge.cli",
        "serve",
        "--config",
        str(config),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]
    with child_process(command, f"http://127.0.0.1:{port}/readyz") as process:
        yield process


@contextmanager
def child_process(
    command: list[str], ready_url: str, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run *command* as a child; yield it once *ready_url* answers 2xx; stop it after."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(ready_url, timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command[1:3]} did not start")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PeakRSS:
    """Sample the resident memory of a process tree until stopped; keep the peak."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child may exit while we look
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
