"""A small client of the bridge's own API, used by ``export-bridge export`` and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests


class ClientError(Exception):
    """A failure to report on one line: the bridge's problem detail, or why it was unreachable."""


class BridgeClient:
    """Talk to a running bridge with a tenant API key."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.session.request(
                method, self.base_url + path, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise ClientError(
                f"cannot reach the bridge at {self.base_url}: {type(exc).__name__}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            detail = body.get("detail") or response.reason
            fields = "; ".join(f"{e['field']}: {e['message']}" for e in body.get("errors", []))
            raise ClientError(
                f"HTTP {response.status_code}: {detail}" + (f" ({fields})" if fields else "")
            )
        result: dict[str, Any] = body
        return result

    def start(self, request: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """POST the normalized request; return the job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/exports", json=request, headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/exports/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/exports/{job_id}")

    def wait(
        self,
        job_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 600.0,
        interval: float = 0.5,
    ) -> dict[str, Any]:
        """Poll until the job is final; raise :class:`ClientError` unless it completed."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] == "complete":
                return job
            if job["state"] in ("failed", "cancelled"):
                error = job.get("error") or {}
                raise ClientError(
                    f"export {job['state']}: {error.get('message', 'no reason given')}"
                )
            if time.monotonic() > deadline:
                raise ClientError(f"export still {job['state']} after {timeout:.0f} s")
            time.sleep(interval)

    def download(self, url: str, target: Path) -> int:
        """Stream the signed link *url* to *target* (via a temporary file); return the size."""
        partial = target.with_name(target.name + ".part")
        size = 0
        try:
            # The link is the credential: send no Authorization header.
            with requests.get(url, stream=True, timeout=self.timeout) as response:
                if response.status_code != 200:
                    raise ClientError(f"download failed: HTTP {response.status_code}")
                with partial.open("wb") as out:
                    for chunk in response.iter_content(256 * 1024):
                        out.write(chunk)
                        size += len(chunk)
            partial.replace(target)
        except requests.RequestException as exc:
            raise ClientError(f"download failed: {type(exc).__name__}") from None
        finally:
            partial.unlink(missing_ok=True)
        return size
