"""Recording verified status callbacks: batched store writes off the event loop, one answer each."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from fastapi.responses import Response

from airflow_provider_vonage_studio.callbacks.body import StatusCallback, destinations_match
from airflow_provider_vonage_studio.callbacks.responses import (
    _error,
    _result_body,
    _store_unavailable,
    _too_late,
)
from airflow_provider_vonage_studio.callbacks.settings import LOGGER_NAME
from airflow_provider_vonage_studio.destinations import redact
from airflow_provider_vonage_studio.signing import VerifiedToken

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallStore, RecordOutcome

log = logging.getLogger(LOGGER_NAME)

_Pending = tuple[VerifiedToken, StatusCallback, "asyncio.Future[Response]"]


class _Recorder:
    """Records verified callbacks in small batches, off the event loop.

    Callbacks that arrive while a batch is being written queue up and go together into
    the next one: the whole batch is one store transaction (one query for its calls, one
    commit) and one hop to a worker thread. Under light load a batch is a single
    callback, so nothing waits for company.

    At most ``workers`` batches run at once, each on a thread of the recorder's own; by
    default 1 on SQLite, which serialises writes anyway: a second writer would only take
    half of the waiting callbacks and then wait for the lock, so every batch would be
    smaller and pay the per-transaction cost (BEGIN, savepoint, commit, log line) for fewer
    callbacks, and the two threads would fight for the GIL; one writer cut the server CPU
    per callback by about a third (``benchmarks/callbacks.py``). On a server database 4,
    where each statement waits on a round trip that other batches can use.
    """

    def __init__(
        self,
        get_store: Callable[[], CallStore],
        max_age: timedelta,
        *,
        workers: int | None = None,
        max_batch: int = 64,
        min_batch: int = 8,
    ) -> None:
        self._get_store = get_store
        self._max_age = max_age
        self._workers = workers
        self._max_batch = max_batch
        self._min_batch = min_batch
        self._pending: list[_Pending] = []
        self._running = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Strong references: the event loop keeps only weak ones to tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, verified: VerifiedToken, callback: StatusCallback) -> Response:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending.append((verified, callback, future))
        if self._workers is None:
            try:
                self._workers = 1 if self._get_store().url.startswith("sqlite") else 4
            except Exception:  # the batch itself will report the store problem
                self._workers = 2
        if self._executor is None:
            # Threads of our own, as many as batches may run: a batch goes straight to one, without
            # the bookkeeping (and the capacity shared with every other blocking call) of the
            # generic thread pool.
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="vonage-studio-callbacks"
            )
        # Another writer only once a batch's worth waits: the writers that run pick up what
        # arrives meanwhile when their batch is done, and a writer of one callback would pay a
        # whole transaction (and its round trips) for it.
        if self._running == 0 or (self._running < self._workers and len(self._pending) >= self._min_batch):
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a client that hangs up must not cancel a write another batch member shares.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    answers = await asyncio.get_running_loop().run_in_executor(
                        self._executor, _record_batch, self._get_store, batch, self._max_age
                    )
                except Exception as exc:  # pragma: no cover - _record_batch answers per item
                    log.error("callbacks not recorded: %s", type(exc).__name__)
                    answers = [_store_unavailable() for _ in batch]
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._running -= 1


def _record_batch(
    get_store: Callable[[], CallStore], batch: list[_Pending], max_age: timedelta
) -> list[Response]:
    """Check and record a batch of callbacks (in a worker thread: the store blocks).

    The whole batch is one store transaction (``record_statuses``), the checks included:
    placed calls only, within ``max_age``, with the call's destination, within the history
    cap. Never raises: a store failure answers 503 for every callback of the batch, as
    none of them was recorded. The log names the exception type only, as a database error
    message may quote the payload.
    """
    from airflow_provider_vonage_studio.store import StatusUpdate

    updates = [
        StatusUpdate(
            verified.call_ref,
            callback.status,
            callback.conversation_uuid or None,
            callback.event_time(),
            callback.model_dump(),
            to=callback.to,
            issued_at=verified.issued_at,
        )
        for verified, callback, _ in batch
    ]
    try:
        outcomes = get_store().record_statuses(
            updates, destination_matches=destinations_match, placed_only=True, max_age=max_age
        )
    except Exception as exc:
        log.error("%d callback(s) not recorded: call store error %s", len(batch), type(exc).__name__)
        return [_store_unavailable() for _ in batch]
    answers = [
        _answer(verified.call_ref, callback, outcome, max_age)
        for (verified, callback, _), outcome in zip(batch, outcomes, strict=True)
    ]
    # One line per batch, not per callback: under load, a log record per callback costs more than
    # recording it. The line still names each call and what became of its callback; refusals
    # keep a warning each (above), and the redacted number of each stored one is at DEBUG.
    stored = [
        f"{verified.call_ref} {callback.status} ({outcome.value})"
        for (verified, callback, _), outcome in zip(batch, outcomes, strict=True)
        if outcome.value in ("recorded", "history", "duplicate")
    ]
    if stored:
        log.info("%d callback(s) stored: %s", len(stored), ", ".join(stored))
    return answers


def _answer(call_ref: str, callback: StatusCallback, outcome: RecordOutcome, max_age: timedelta) -> Response:
    """The response (and log line) for one callback the store has dealt with."""
    from airflow_provider_vonage_studio.store import MAX_STATUS_HISTORY, RecordOutcome

    if outcome is RecordOutcome.UNKNOWN_CALL:
        log.warning("callback for %s refused: no such call in the store", call_ref)
        return _error(404, "unknown call")
    if outcome is RecordOutcome.NOT_PLACED:
        log.warning("callback for %s refused: the call was not placed", call_ref)
        return _error(409, "the call was not placed: no status is accepted for it")
    if outcome is RecordOutcome.STALE:
        log.warning("callback for %s refused: more than %s after the call started", call_ref, max_age)
        return _too_late(max_age)
    if outcome is RecordOutcome.HISTORY_FULL:
        log.warning("callback for %s refused: its status history is full", call_ref)
        return _error(409, f"the call already has {MAX_STATUS_HISTORY} statuses: no more are kept")
    if outcome is RecordOutcome.MISMATCH:
        log.warning(
            "callback for %s refused: to %s is not the call's destination", call_ref, redact(callback.to)
        )
        return _error(409, "the callback's 'to' is not the destination of this call")
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "callback for %s: status %s for %s (%s)",
            call_ref,
            callback.status,
            redact(callback.to),
            outcome.value,
        )
    return Response(_result_body(outcome.value), media_type="application/json")
