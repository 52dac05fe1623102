"""Pacing: the shared slot and send gate every dial passes before its request, and the
feedback (a 429 widens the spacing for every process, success narrows it back).

The state lives in the call store (``reserve_slot``, ``pace_send``, ``pace_feedback``); this
mixin is the hook's side of it, and the ledger's queued -> sending step that comes with leave.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from airflow_provider_vonage_studio.exceptions import CallOutcomeUnknown
from airflow_provider_vonage_studio.hooks.base import HookParts

__all__ = ["PacingMixin"]


@dataclass
class _LedgerRow:
    """Internal: where one dial's ledger row stands while the hook works on it."""

    call_ref: str
    #: True from the queued -> sending step until the answer (or a definite "not placed").
    sending: bool = False
    #: The dial ended without a request in flight and the row must stay ``queued`` (429 time bound).
    keep_queued: bool = False


class PacingMixin(HookParts):
    """The hook's pacing steps around each request."""

    def pacing_key(self, agent_id: str) -> str:
        """The shared slot a dial must reserve: per agent, or per key with ``pace_scope=key``."""
        cfg = self.config
        if cfg.pace_scope == "key":
            fingerprint = hashlib.sha256(cfg.api_key.encode()).hexdigest()[:16]
            return f"{cfg.base_url}|key:{fingerprint}"
        return f"{cfg.base_url}|agent:{agent_id}"

    def pacing_interval(self) -> float:
        """The floor of the spacing between two dials of one pacing key, in seconds:
        ``(1 / calls_per_second) * (1 + pacing_margin)``. The store widens it after 429s."""
        cfg = self.config
        return (1.0 / cfg.calls_per_second) * (1.0 + cfg.pacing_margin)

    def _before_send(self, agent_id: str, ledger: _LedgerRow | None) -> float | None:
        """Wait for this dial's shared slot, then take leave to send: the row becomes ``sending``.

        Returns the request's ``sent_at`` in the shared pacer (``None`` without the pacer, a
        testing knob: then only the ledger step is taken).
        """
        store = self.store if (self.pace or ledger is not None) else None
        if store is None:
            return None
        doing = "before dialing" if ledger is None else f"before dialing call {ledger.call_ref}"
        if not self.pace:
            assert ledger is not None
            with store.unavailable_as_error(doing):

                def mark_sending() -> tuple[float, float | None]:
                    store.mark_sending(ledger.call_ref)
                    return 0.0, None

                self._claim(mark_sending, ledger)
            return None
        key, interval = self.pacing_key(agent_id), self.pacing_interval()
        limit = self.config.calls_per_second
        with store.unavailable_as_error(doing):
            slot = store.reserve_slot(key, interval)
        delay = slot - time.time()
        if delay > 0:
            self._sleep(delay)
        while True:
            # The gate: a request leaves only once those older than the last `limit - 1` have been
            # answered a full second ago, so arrival jitter cannot put limit + 1 calls in one window.
            # Leave comes in advance, for the gate's opening time: the row is already `sending`
            # then, so nothing but this process's wake-up stands between that time and the request.
            with store.unavailable_as_error(doing):
                wait, sent_at = self._claim(
                    lambda: store.pace_send(
                        key, interval, limit=limit, call_ref=None if ledger is None else ledger.call_ref
                    ),
                    ledger,
                )
            if sent_at is not None:
                self._sleep_until(sent_at)
                return sent_at
            self._sleep(wait)

    def _sleep_until(self, at: float) -> None:
        """Sleep until the epoch time ``at``, never waking before it: a coarse sleep, then the last
        couple of milliseconds yielding in a loop (a plain sleep may overshoot by a scheduler tick,
        and every millisecond late here is lost from every dialing cycle)."""
        while (left := at - time.time()) > 0:
            if left > 0.002:
                self._sleep(left - 0.002)
            else:
                time.sleep(0)

    def _claim(
        self, step: Callable[[], tuple[float, float | None]], ledger: _LedgerRow | None
    ) -> tuple[float, float | None]:
        """Run the ledger's queued -> sending step; a row no longer queued is another try's."""
        from airflow_provider_vonage_studio.store import CallStateConflict

        try:
            wait, sent_at = step()
        except CallStateConflict as exc:
            raise CallOutcomeUnknown(
                f"{exc.message}: another try of this call is dialing it or has dialed it, so its "
                "outcome is unknown to this try, which does not send it again"
            ) from None
        if ledger is not None and (wait <= 0 or sent_at is not None):
            ledger.sending = True
        return wait, sent_at

    def _pace_feedback(
        self,
        agent_id: str,
        *,
        sent_at: float,
        answered_at: float,
        rate_limited: bool,
        narrow: bool = True,
        retry_after: float | None = None,
    ) -> None:
        """Tell the shared pacer the request was answered (a 429 widens the spacing for everyone,
        an accepted call narrows it back)."""
        try:
            factor = self.store.pace_feedback(
                self.pacing_key(agent_id),
                self.pacing_interval(),
                rate_limited=rate_limited,
                sent_at=sent_at,
                answered_at=answered_at,
                narrow=narrow,
                retry_after=retry_after,
            )
        except Exception as exc:  # adapting is best effort: it must never fail a placed call
            self.log.warning("Could not update the shared pacing state: %s", type(exc).__name__)
            return
        if rate_limited:
            self.log.warning(
                "Spacing of agent %s widened to %.2fx the floor (%.3fs) after a 429",
                agent_id,
                factor,
                factor * self.pacing_interval(),
            )
