"""Figures of a pacing run as the API side saw it: rate achieved, shortest gaps and spans, repeats.

Pure functions of the emulator's arrival times (and of Airflow's task intervals), used by
:mod:`~airflow_provider_vonage_studio.testing.scheduled` and its benchmark.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Figures", "RunResult", "figures"]


@dataclass(frozen=True)
class Figures:
    """What the API side saw of one client's calls (arrival times from the emulator)."""

    client: str
    allowed: int
    calls: int
    refused: int
    achieved: float
    min_gap: float
    min_window: float
    duplicates: int

    @property
    def ratio(self) -> float:
        """achieved / allowed."""
        return self.achieved / self.allowed

    def line(self) -> str:
        return (
            f"{self.client:>14} at {self.allowed}/s: {self.calls} calls, {self.refused} x 429, "
            f"achieved/allowed {self.ratio:.3f}, min gap {self.min_gap:.3f} s, "
            f"shortest span of {self.allowed + 1} calls {self.min_window:.3f} s, "
            f"{self.duplicates} number(s) called twice"
        )


def figures(
    client: str, allowed: int, arrivals: Sequence[float], refused: int, numbers: Sequence[str]
) -> Figures:
    """Figures from accepted-call arrival times (monotonic seconds) and the numbers called.

    ``achieved`` = (accepted - 1) / (last accepted arrival - first); ``min_window`` is the
    shortest time spanned by ``allowed + 1`` consecutive accepted calls (a strict limiter needs
    it >= 1.0 s); ``min_gap`` the shortest gap between two consecutive ones.
    """
    times = sorted(arrivals)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    achieved = (len(times) - 1) / span if span > 0 else float("nan")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    windows = [times[i + allowed] - times[i] for i in range(len(times) - allowed)]
    repeats = sum(1 for count in Counter(numbers).values() if count > 1)
    return Figures(
        client=client,
        allowed=allowed,
        calls=len(times),
        refused=refused,
        achieved=achieved,
        min_gap=min(gaps) if gaps else float("nan"),
        min_window=min(windows) if windows else float("nan"),
        duplicates=repeats,
    )


@dataclass
class RunResult:
    """The outcome of one :meth:`ScheduledPacing.run`."""

    executor: str
    allowed: int
    state: str
    ours: Figures
    naive: Figures | None
    max_overlap: int
    task_count: int
    numbers: list[str]
    called: Counter[str]
    wall: float
    hosts: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = (
            f"{self.executor} executor, {self.allowed} call(s)/s: run {self.state}, {self.task_count} task "
            f"instances, at most {self.max_overlap} running at once"
            + (f" on {len(set(self.hosts))} worker host(s)" if self.hosts else "")
            + f", {self.wall:.0f} s"
        )
        out = [head, self.ours.line()]
        if self.naive is not None:
            out.append(self.naive.line())
        return out


def _max_overlap(intervals: Sequence[tuple[datetime, datetime]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
