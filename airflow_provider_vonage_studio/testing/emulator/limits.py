"""The emulator's rate limiter: strict, exactly as documented ("any call made over the
limit will fail and return a 429").

A request is refused when ``limit`` requests were already admitted on the same budget
within the trailing window (1.0 s unless a test opts into tolerance): a sliding window over
the arrival times of admitted requests; refused requests do not count. A client spacing
its requests exactly ``1 / limit`` apart can see them *arrive* a few milliseconds closer
together, and those are refused: clients must leave their own margin.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

#: The documented window: N calls per second.
WINDOW_SECONDS = 1.0


class StrictLimiter:
    """Sliding-window admission per budget (an agent, or an agent and a channel family).

    Not thread-safe on its own: the emulator calls it under its lock, between checking
    room and the request's last refusal reason, so a request refused for another reason
    (a 500 after the rate check) leaves no trace.
    """

    def __init__(self) -> None:
        self._admitted: dict[Hashable, deque[float]] = {}

    def has_room(self, budget: Hashable, limit: int, now: float, *, tolerance: float = 0.0) -> bool:
        """Whether one more request on ``budget`` at ``now`` (monotonic) stays within ``limit``
        requests per ``WINDOW_SECONDS - tolerance`` seconds."""
        window = WINDOW_SECONDS - tolerance
        admitted = self._admitted.setdefault(budget, deque())
        while admitted and now - admitted[0] >= window:
            admitted.popleft()
        return len(admitted) < limit

    def admit(self, budget: Hashable, now: float) -> None:
        """Count a request on ``budget`` at ``now`` (after :meth:`has_room` said yes)."""
        self._admitted.setdefault(budget, deque()).append(now)

    def reset(self) -> None:
        """Forget every admission."""
        self._admitted.clear()
