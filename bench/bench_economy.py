"""Upstream economy: how many upstream calls many callers cost.

The sandbox runs in this process (so its call logs can be read); the bridge is
``export-bridge serve`` as a child process, by default 2 gunicorn workers x 8 threads, so
callers land on different processes that coordinate only through the shared store.

1. CALLERS threads poll one running Scroll REST job (the sandbox export never finishes)
   through the bridge for SECONDS seconds, as fast as they can. Counts the upstream status
   calls (``GET …/status`` in the Scroll DC sandbox's call log, timestamped as they arrive)
   per ``poll_interval``, and the shortest gap between two of them. Goal: 1 per interval.
2. EXPORTS scroll-macro exports as one user (``asUser``), all started at once, run to the
   end. Counts the OAuth sandbox's token requests. Goal: 1 (one impersonation token per
   user per token lifetime, shared by every process). Each export is of its own page; with
   ``--same-page`` all export one page, which makes the Confluence Cloud sandbox answer
   some identical concurrent convert calls with 500 (a race in the sandbox's render-task
   cache, not in the bridge), so fewer exports complete.

    .venv/bin/python bench/bench_economy.py
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import API_KEY, bridge_process, free_port, write_config
from bridge.sandbox.pages import demo_tree
from bridge.sandbox.scroll_rest import Call, CallLog
from bridge.sandbox.suite import USERS, SandboxSuite

NEVER = 1e9  # seconds a sandbox export runs while it is polled
FINAL = ("complete", "failed", "cancelled")


class TimedCallLog(CallLog):
    """A call log that also notes when each request arrived (``time.monotonic``)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, Call]] = []

    def append(self, call: Call) -> None:
        """Record one request and its arrival time."""
        super().append(call)
        with self._lock:
            self.times.append((time.monotonic(), call))

    def arrivals(self, method: str, path_contains: str, since: float, until: float) -> list[float]:
        """Arrival times of the matching requests from *since* to *until*."""
        with self._lock:
            return [
                t
                for t, call in self.times
                if since <= t <= until and call.method == method and path_contains in call.path
            ]


def page_id(i: int) -> str:
    """The id of the i-th extra page the token bench exports."""
    return str(5000 + i)


def session() -> requests.Session:
    """A session authenticated with the bench tenant's API key."""
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {API_KEY}"
    return s


def start(url: str, body: dict[str, Any]) -> str:
    """Start an export; return its id."""
    with session() as s:
        response = s.post(f"{url}/v1/exports", json=body, timeout=60)
    if response.status_code != 202:
        raise RuntimeError(f"export refused: {response.status_code} {response.text}")
    return str(response.json()["id"])


def wait_all(url: str, job_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Read each job until all are final."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    with session() as s:
        while len(done) < len(job_ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(job_ids) - len(done)} exports did not finish")
            for job_id in job_ids:
                if job_id not in done:
                    job = s.get(f"{url}/v1/exports/{job_id}", timeout=60).json()
                    if job["state"] in FINAL:
                        done[job_id] = job
            time.sleep(0.2)
    return [done[job_id] for job_id in job_ids]


@dataclass
class Storm:
    """What the callers saw: (latency in seconds, answered 200?) for each read."""

    reads: list[tuple[float, bool]] = field(default_factory=list)
    began: float = 0.0
    """When the callers were let go (``time.monotonic``)."""
    stopped: float = 0.0
    """When they were told to stop."""

    @property
    def failed(self) -> int:
        """Reads that did not answer 200."""
        return sum(not ok for _, ok in self.reads)

    def percentile(self, q: float) -> float:
        """The *q*-th percentile latency in milliseconds."""
        ordered = sorted(latency for latency, _ in self.reads)
        return 1e3 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def poll_storm(url: str, job_id: str, callers: int, seconds: float) -> Storm:
    """*callers* threads, one connection each, read the job as fast as they can for
    *seconds* (reads under way then are finished and counted)."""
    go, stop = threading.Event(), threading.Event()
    storm = Storm()

    def caller() -> None:
        with session() as s:
            go.wait()
            while not stop.is_set():
                began = time.monotonic()
                try:
                    ok = s.get(f"{url}/v1/exports/{job_id}", timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                storm.reads.append((time.monotonic() - began, ok))  # list.append is atomic

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    # All start together: starting threads one by one among busy ones takes seconds (GIL).
    storm.began = time.monotonic()
    go.set()
    time.sleep(seconds)
    stop.set()
    storm.stopped = time.monotonic()
    for thread in threads:
        thread.join(timeout=120)
    return storm


def bench_polling(
    suite: SandboxSuite, log: TimedCallLog, url: str, args: argparse.Namespace
) -> bool:
    """Part 1; print its figures and return whether the goal is met."""
    suite.scroll_engine.job_seconds = NEVER
    job_id = start(url, {"backend": "scroll-rest", "format": "pdf", "source": {"pageId": "1002"}})
    time.sleep(args.poll_interval)  # the job is started upstream and polled at least once
    storm = poll_storm(url, job_id, args.callers, args.seconds)
    reads, failed = len(storm.reads), storm.failed
    elapsed = storm.stopped - storm.began
    arrivals = log.arrivals("GET", "/status", storm.began, storm.stopped)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    intervals = elapsed / args.poll_interval
    per_interval = len(arrivals) / intervals
    met = failed == 0 and (not gaps or min(gaps) >= args.poll_interval)
    print(
        f"1. {args.callers} callers polling one running job for {elapsed:.1f} s "
        f"(poll_interval {args.poll_interval} s, {intervals:.1f} intervals)"
    )
    print(f"   reads served by the bridge:  {reads} ({reads / elapsed:.0f}/s), {failed} failed")
    print(
        f"   read latency: p50 {storm.percentile(50):.0f} ms, p99 {storm.percentile(99):.0f} ms, "
        f"max {storm.percentile(100):.0f} ms"
    )
    print(
        f"   upstream status calls:       {len(arrivals)} = {per_interval:.2f} per interval; "
        f"shortest gap {min(gaps) if gaps else float('nan'):.2f} s"
    )
    print(f"   upstream calls per 1000 reads: {1000 * len(arrivals) / max(1, reads):.2f}")
    print(f"   goal (at most 1 per interval): {'met' if met else 'NOT met'}")
    return met


def bench_tokens(suite: SandboxSuite, url: str, args: argparse.Namespace) -> bool:
    """Part 2; print its figures and return whether the goal is met."""
    suite.scroll_engine.job_seconds = args.job_seconds
    user = USERS[0]
    before = sum(suite.oauth.token_requests.values())

    def export(i: int) -> str:
        page = "1002" if args.same_page else page_id(i)
        source = {"pageId": page}
        return start(
            url, {"backend": "scroll-macro", "format": "pdf", "source": source, "asUser": user}
        )

    began = time.monotonic()
    with ThreadPoolExecutor(args.exports) as pool:
        job_ids = list(pool.map(export, range(args.exports)))
    jobs = wait_all(url, job_ids, timeout=300)
    elapsed = time.monotonic() - began
    states = Counter(job["state"] for job in jobs)
    tokens = sum(suite.oauth.token_requests.values()) - before
    met = states["complete"] == args.exports and tokens == 1
    print(
        f"2. {args.exports} scroll-macro exports as {user} "
        f"({'one page' if args.same_page else 'one page each'}), started at once: "
        f"{dict(states)} in {elapsed:.1f} s"
    )
    errors = Counter(job["error"]["code"] for job in jobs if job["error"])
    for code, count in errors.items():
        sample = next(
            job["error"]["message"] for job in jobs if (job["error"] or {}).get("code") == code
        )
        print(f"   {count} x {code}, e.g.: {sample[:160]}")
    print(f"   token requests to the OAuth server: {tokens} ({dict(suite.oauth.token_requests)})")
    print(f"   goal (1 token request): {'met' if met else 'NOT met'}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long callers poll")
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--exports", type=int, default=50)
    parser.add_argument("--job-seconds", type=float, default=0.3, help="macro export length")
    parser.add_argument("--same-page", action="store_true", help="all exports of one page")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker")
    args = parser.parse_args()

    with ExitStack() as stack:
        pages = demo_tree()
        for i in range(args.exports):
            pages.add(page_id(i), f"Bench page {i}", parent_id="1001", body=f"Page {i}.")
        suite = stack.enter_context(SandboxSuite(pages=pages, job_seconds=NEVER))
        log = TimedCallLog()
        suite.scroll_dc.calls = log
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        backends = suite.tenant_backends()
        config = write_config(
            workdir / "bridge.toml",
            workdir,
            url,
            {name: backends[name] for name in ("scroll-rest", "scroll-macro")},
            poll_interval=args.poll_interval,
        )
        stack.enter_context(bridge_process(config, port, args.workers, args.threads))
        print(f"bridge: export-bridge serve, {args.workers} workers x {args.threads} threads\n")
        polling = bench_polling(suite, log, url, args)
        print()
        tokens = bench_tokens(suite, url, args)
    if not (polling and tokens):
        print("\nat least one goal is NOT met")


if __name__ == "__main__":
    main()
