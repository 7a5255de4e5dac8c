"""What the Scroll exporters say about a job, read the same way for the REST API and the
macro route (the macro's output "corresponds to" the REST operation's response)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bridge.errors import UpstreamResponseError

STATUSES = frozenset({"incomplete", "complete", "error", "cancelled"})


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return int(value)


@dataclass(frozen=True)
class ScrollStatus:
    """A Scroll job status: ``status``, ``step`` of ``totalSteps``, ``stepProgress`` %."""

    status: str
    step: int = 0
    total_steps: int = 0
    step_progress: int = 0
    download_url: str | None = None

    @classmethod
    def from_json(cls, data: object, backend: str = "scroll") -> ScrollStatus:
        """Read a status object; missing numbers count as 0.

        :raises UpstreamResponseError: not an object, or an unknown ``status``.
        """
        if not isinstance(data, dict):
            raise UpstreamResponseError(
                f"Scroll sent a {type(data).__name__} where a job status belongs", backend=backend
            )
        status = data.get("status")
        if not isinstance(status, str) or status not in STATUSES:
            raise UpstreamResponseError(
                f"Scroll sent an unknown job status {str(status)[:40]!r}", backend=backend
            )
        url = data.get("downloadUrl")
        return cls(
            status=status,
            step=_int(data, "step"),
            total_steps=_int(data, "totalSteps"),
            step_progress=_int(data, "stepProgress"),
            download_url=url if isinstance(url, str) and url else None,
        )

    @property
    def is_finished(self) -> bool:
        """True once the job will not change any more (complete, error or cancelled)."""
        return self.status != "incomplete"

    @property
    def progress_percent(self) -> int:
        """Overall progress 0-100; below 100 until the job is complete."""
        if self.status == "complete":
            return 100
        if self.total_steps <= 0:
            return 0
        done = (
            max(0, min(self.step, self.total_steps) - 1)
            + min(max(self.step_progress, 0), 100) / 100
        )
        return max(0, min(99, int(100 * done / self.total_steps)))

    @property
    def phase(self) -> str:
        """A human-readable phase such as ``step 2 of 3``."""
        if self.total_steps > 0 and self.step > 0:
            return f"exporting (step {self.step} of {self.total_steps})"
        return "exporting"
