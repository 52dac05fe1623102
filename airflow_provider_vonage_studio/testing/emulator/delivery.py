"""Posting callbacks from timer threads: a call's status, a message's statuses, the
agent's end-call webhook.

Each delivery POSTs its payloads in order, retries a payload once when the receiver cannot
be reached at all, and records every attempt in the list it was given. Deliveries made
after :meth:`Emulator.reset` or :meth:`Emulator.stop` are abandoned, so they never leak
into the next test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.testing.emulator.records import CallbackAttempt, utcnow

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.testing.emulator.state import EmulatorState

#: Builds one payload at posting time (so timestamps say when it was sent).
PayloadFactory = Callable[[], Mapping[str, Any]]

#: Seconds between the payloads of one delivery (a message's ``delivered`` then ``read``).
STEP_SECONDS = 0.05


def schedule(
    emulator: EmulatorState,
    delay: float,
    url: str,
    payloads: Sequence[PayloadFactory],
    attempts: list[CallbackAttempt],
) -> None:
    """POST ``payloads`` to ``url`` after ``delay`` seconds, recording into ``attempts``.

    Call with the emulator's lock held (it registers the timer so stop() can cancel it).
    """
    generation = emulator._generation
    timer = threading.Timer(delay, _deliver, args=(emulator, generation, url, payloads, attempts))
    timer.daemon = True
    emulator._timers.add(timer)
    timer.start()


def _deliver(
    emulator: EmulatorState,
    generation: int,
    url: str,
    payloads: Sequence[PayloadFactory],
    attempts: list[CallbackAttempt],
) -> None:
    import requests

    with emulator._lock:
        emulator._timers = {
            t for t in emulator._timers if t.is_alive() and t is not threading.current_thread()
        }
    with requests.Session() as session:
        session.trust_env = False  # loopback receivers must not go through a proxy
        for index, build in enumerate(payloads):
            if index and emulator._stopping.wait(STEP_SECONDS):
                return
            if not _post(emulator, generation, session, url, dict(build()), attempts):
                return


def _post(
    emulator: EmulatorState,
    generation: int,
    session: Any,
    url: str,
    payload: dict[str, Any],
    attempts: list[CallbackAttempt],
) -> bool:
    """POST one payload (one retry when unreachable); False when the delivery is abandoned."""
    import requests

    for attempt in (1, 2):
        if emulator._stopping.is_set() or generation != emulator._generation:
            return False
        status: int | None = None
        error: str | None = None
        unreachable = False
        try:
            response = session.post(url, json=payload, timeout=5)
            status = response.status_code
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
            unreachable = isinstance(exc, requests.ConnectionError)
        with emulator._changed:
            if generation != emulator._generation:
                return False
            attempts.append(CallbackAttempt(url, payload, attempt, status, error, utcnow()))
            emulator._changed.notify_all()
        # One retry, and only when the receiver could not be reached at all.
        if not unreachable:
            return True
        if attempt == 2 or emulator._stopping.wait(0.2):
            return attempt == 2 and not emulator._stopping.is_set()
    return True
