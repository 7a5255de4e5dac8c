"""A status read through the bridge vs. the same status read straight from the upstream.

Both servers run as child processes under the same server class with the same options:
the bridge is ``export-bridge serve`` (gunicorn, gthread), and the Scroll REST sandbox
(Data Center flavour, one job that never finishes) is served by a gunicorn application
built exactly like the bridge's (``bridge.server.gunicorn_options``; one worker, as its
jobs live in memory, and as many threads). An export is started through the bridge so the
bridge holds a running job, and one job is started on the sandbox directly; then
``wrk --latency`` reads, one after the other in the same run:

(a) ``GET /v1/exports/{id}`` on the bridge (API key), and
(b) ``GET …/scroll-pdf/api/public/1/exports/{jobId}/status`` on the sandbox (PAT),

first under load (default 2 threads, 16 connections, 10 s each), then one connection at a
time (the added latency of one request without queueing). Prints p50/p99 latency and
requests/s of both, the latency the bridge adds and its share of the upstream's throughput.
While (a) runs, the bridge still polls the upstream for its job, at most once per
``poll_interval`` (2 s): almost every read is the store read plus the JSON view.

    .venv/bin/python bench/bench_overhead.py
    .venv/bin/python bench/bench_overhead.py --profile 3000   # also cProfile the read path
    .venv/bin/python bench/bench_overhead.py --worker-threads 0  # background worker off
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from gunicorn.app.base import BaseApplication

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import API_KEY, bridge_process, child_process, free_port, write_config
from bridge.sandbox.pages import demo_tree
from bridge.sandbox.scroll_engine import ScrollJobEngine
from bridge.sandbox.scroll_rest import ScrollRestSandbox
from bridge.sandbox.suite import DEMO_TEMPLATES, SCROLL_PAT
from bridge.server import gunicorn_options

ROOT = Path(__file__).resolve().parent.parent
CONTEXT_PATH = "/confluence"
STATUS_PATH = f"{CONTEXT_PATH}/plugins/servlet/scroll-pdf/api/public/1/exports"
NEVER = 1e9  # seconds a sandbox export runs: the job stays "running" for the whole bench


def sandbox_app(job_seconds: float = NEVER) -> Flask:
    """The Scroll REST sandbox (DC flavour) as a WSGI app, with its own job engine."""
    engine = ScrollJobEngine(demo_tree(), time.time, job_seconds=job_seconds)
    return ScrollRestSandbox(engine, flavor="dc", context_path=CONTEXT_PATH, pats=(SCROLL_PAT,)).app


class SandboxServer(BaseApplication):  # type: ignore[misc]
    """The sandbox under gunicorn, configured exactly like ``bridge.server.BridgeServer``."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return sandbox_app()


@contextmanager
def sandbox_process(port: int, workers: int, threads: int) -> Iterator[str]:
    """Serve the sandbox from a child process; yield its base URL once it answers."""
    command = [
        sys.executable,
        __file__,
        "--serve-sandbox",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]
    url = f"http://127.0.0.1:{port}"
    with child_process(command, f"{url}{CONTEXT_PATH}/rest/api/user/current"):
        yield url


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    bad: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str, token: str, seconds: int, threads: int, connections: int, wrk: str
) -> WrkResult:
    """Run ``wrk --latency`` against *url* with a bearer *token*; parse its summary."""
    command = [
        wrk,
        "--latency",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    requests_done = re.search(r"^\s+(\d+) requests in", out, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if len(percentiles) != 2 or requests_done is None or rps is None:
        raise RuntimeError(f"unreadable wrk output:\n{out}")
    bad = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|timeout):?\s+(\d+)", out))
    return WrkResult(
        _ms(percentiles["50"]),
        _ms(percentiles["99"]),
        float(rps.group(1)),
        int(requests_done.group(1)),
        bad,
    )


def start_bridge_job(bridge_url: str) -> str:
    """Start an export through the bridge; return its id once the upstream job runs."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    body = {"backend": "scroll-rest", "format": "pdf", "source": {"pageId": "1002"}}
    job = session.post(f"{bridge_url}/v1/exports", json=body, timeout=30).json()
    deadline = time.monotonic() + 30
    while job["state"] != "running":
        if job["state"] in ("complete", "failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"the bridge job did not start running: {job}")
        time.sleep(0.1)
        job = session.get(f"{bridge_url}/v1/exports/{job['id']}", timeout=30).json()
    return str(job["id"])


def start_upstream_job(sandbox_url: str) -> str:
    """Start an export on the sandbox directly (the job read in (b))."""
    response = requests.post(
        f"{sandbox_url}{STATUS_PATH}",
        json={"templateId": DEMO_TEMPLATES["pdf"], "pageId": "1002", "scope": "current"},
        headers={"Authorization": f"Bearer {SCROLL_PAT}"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["jobId"])


def profile_read_path(config: Path, job_id: str, reads: int) -> str:
    """Time, then cProfile, *reads* status reads through the bridge's WSGI app in this
    process (Flask's test client, no server); list the bridge's own heaviest calls.

    Logging is set up as ``export-bridge serve`` sets it up (JSON lines, redacted), into
    /dev/null, so the access log line each request writes is in the profile too.
    """
    from bridge.bootstrap import configured_secrets
    from bridge.config import load_settings
    from bridge.observability import configure_logging
    from handlers import create_app

    settings = load_settings(str(config))
    with ExitStack() as cleanup:
        app = create_app(settings)
        cleanup.callback(app.extensions["bridge"].close)
        devnull = cleanup.enter_context(open(os.devnull, "w"))
        with contextlib.redirect_stderr(devnull):
            configure_logging(configured_secrets(settings))
        cleanup.callback(_drop_bridge_log_handlers)
        client = app.test_client()
        headers = {"Authorization": f"Bearer {API_KEY}"}

        def read_all(n: int) -> float:
            began = time.perf_counter()
            for _ in range(n):
                client.get(f"/v1/exports/{job_id}", headers=headers)
            return (time.perf_counter() - began) / n * 1e3

        read_all(50)  # warm up imports and the store connection
        plain = read_all(reads)
        profiler = cProfile.Profile()
        profiler.enable()
        profiled = read_all(reads)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(rf"{ROOT}/(bridge|handlers)/", 16)
    stats.sort_stats("tottime").print_stats(8)
    return (
        f"{reads} reads in-process through the test client: {plain:.3f} ms each "
        f"({profiled:.3f} ms profiled)\n{out.getvalue()}"
    )


def _drop_bridge_log_handlers() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_bridge", False)]:
        root.removeHandler(handler)


def compare(name: str, bridge: WrkResult, upstream: WrkResult) -> None:
    """Print one side-by-side table."""
    print(f"\n{name}")
    print(f"  {'':<10}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'requests':>10}{'bad':>6}")
    for label, r in (("bridge", bridge), ("upstream", upstream)):
        print(
            f"  {label:<10}{r.p50_ms:>10.2f}{r.p99_ms:>10.2f}{r.rps:>10.0f}"
            f"{r.requests:>10}{r.bad:>6}"
        )
    print(
        f"  added latency: p50 {bridge.p50_ms - upstream.p50_ms:+.2f} ms, "
        f"p99 {bridge.p99_ms - upstream.p99_ms:+.2f} ms; "
        f"throughput ratio {bridge.rps / upstream.rps:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration under load")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads under load")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--single-seconds", type=int, default=5, help="one-connection run")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="the bridge's gunicorn workers (the sandbox keeps its jobs in memory: always 1)",
    )
    parser.add_argument("--server-threads", type=int, default=8, help="gunicorn threads (both)")
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=None,
        help="the bridge's in-process background threads (default: the bridge's default; "
        "0 is a diagnostic: nothing then fetches finished files)",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also cProfile N in-process reads"
    )
    parser.add_argument("--serve-sandbox", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sandbox:
        options = gunicorn_options(args.serve_sandbox, args.workers, args.server_threads)
        SandboxServer(options).run()
        return
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sandbox_url = stack.enter_context(sandbox_process(free_port(), 1, args.server_threads))
        port = free_port()
        bridge_url = f"http://127.0.0.1:{port}"
        backend = {
            "flavor": "dc",
            "base_url": f"{sandbox_url}{CONTEXT_PATH}",
            "auth": {"type": "bearer", "token": SCROLL_PAT},
            "templates": DEMO_TEMPLATES,
        }
        config = write_config(
            workdir / "bridge.toml",
            workdir,
            bridge_url,
            {"scroll-rest": backend},
            poll_interval=args.poll_interval,
            **({} if args.worker_threads is None else {"worker_threads": args.worker_threads}),
        )
        stack.enter_context(
            bridge_process(config, port, workers=args.workers, threads=args.server_threads)
        )
        job_id = start_bridge_job(bridge_url)
        upstream_id = start_upstream_job(sandbox_url)
        targets = (
            (f"{bridge_url}/v1/exports/{job_id}", API_KEY),
            (f"{sandbox_url}{STATUS_PATH}/{upstream_id}/status", SCROLL_PAT),
        )
        for url, token in targets:  # warm both up
            run_wrk(url, token, 2, args.threads, args.connections, wrk)
        loaded = [
            run_wrk(url, token, args.seconds, args.threads, args.connections, wrk)
            for url, token in targets
        ]
        single = [run_wrk(url, token, args.single_seconds, 1, 1, wrk) for url, token in targets]
        profile = profile_read_path(config, job_id, args.profile) if args.profile else ""

    background = "default" if args.worker_threads is None else args.worker_threads
    print(
        f"status read, bridge vs upstream (gunicorn gthread, {args.server_threads} threads per "
        f"worker; bridge {args.workers} worker(s), sandbox 1; poll_interval "
        f"{args.poll_interval} s; bridge worker_threads {background})"
    )
    compare(f"under load: wrk -t{args.threads} -c{args.connections} -d{args.seconds}s", *loaded)
    compare(f"one connection: wrk -t1 -c1 -d{args.single_seconds}s", *single)
    p50_added = single[0].p50_ms - single[1].p50_ms
    ratio = loaded[0].rps / loaded[1].rps
    print(
        f"\ngoals: <= 1 ms added at p50 (one connection): {p50_added:+.2f} ms -> "
        f"{'met' if p50_added <= 1.0 else 'NOT met'}; "
        f">= 0.5x upstream throughput: {ratio:.2f}x -> {'met' if ratio >= 0.5 else 'NOT met'}"
    )
    if any(r.bad for r in (*loaded, *single)):
        print("warning: some responses were errors or timeouts (see 'bad')")
    if profile:
        print(f"\n{profile}")


if __name__ == "__main__":
    main()
