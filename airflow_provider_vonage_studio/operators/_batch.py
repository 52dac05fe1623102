"""What ``MakeCallsOperator`` makes of a batch pass: per-recipient results with their final
statuses (in the store, chunk by chunk, and in XCom for small batches), the XCom value, and
whether the task fails (``fail_on_rejected``, ``fail_on``).

Loaded inside the operator's methods (never at DAG parse time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.batch import ResultKind
from airflow_provider_vonage_studio.outcome import record_verdicts

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.batch import BatchReport, RecipientResult
    from airflow_provider_vonage_studio.calls import TaskIdentity
    from airflow_provider_vonage_studio.store import CallStore

__all__ = [
    "FULL_RESULTS_MAX",
    "batch_problem",
    "batch_results",
    "results_reference",
    "results_sink",
    "results_xcom",
]

#: Batches of up to this many recipients return the full per-recipient list as their XCom
#: (about 300 bytes each: some 300 KB at most, well within what an XCom backend takes);
#: larger ones return a summary with a reference to the results in the call store.
FULL_RESULTS_MAX = 1000

#: Where the receiver's outcome view is mounted in the Airflow API server (the plugin's prefix).
OUTCOMES_PATH = "/vonage-studio/outcomes/batches"


def results_sink(store: CallStore, task: TaskIdentity) -> Callable[[Sequence[RecipientResult]], None]:
    """Stores one chunk's results (``BatchDialer.run(sink=...)``).

    :raises CallStoreUnavailable: the store cannot be reached (retryable; the ledger, not these
        rows, is what a retry resumes from).
    """

    def sink(results: Sequence[RecipientResult]) -> None:
        with store.unavailable_as_error("storing the batch results"):
            store.write_batch_results(task, [r.to_row() for r in results])

    return sink


def results_reference(task: TaskIdentity) -> dict[str, Any]:
    """Where a batch's per-recipient results are and how to fetch them (JSON-safe)."""
    from urllib.parse import quote

    path = f"{OUTCOMES_PATH}/{quote(task.dag_id, safe='')}/{quote(task.run_id, safe='')}"
    return {
        "dag_id": task.dag_id,
        "run_id": task.run_id,
        "task_id": task.task_id,
        "map_index": task.map_index,
        "cli": (
            f"vonage-studio calls results --dag-id {task.dag_id} --run-id {task.run_id} "
            f"--task-id {task.task_id} --map-index {task.map_index}"
        ),
        "url_path": f"{path}?task_id={quote(task.task_id, safe='')}&map_index={task.map_index}",
    }


def results_xcom(
    report: BatchReport,
    statuses: Mapping[str, tuple[str | None, str | None]] | None,
    task: TaskIdentity,
    results: Sequence[RecipientResult] | None = None,
) -> list[dict[str, Any]] | dict[str, Any]:
    """The XCom of a pass: the full list (``results``, else the report's) when the report holds
    every recipient, else a summary of counts and a :func:`results_reference`."""
    if report.complete:
        return [r.to_dict() for r in (report.results if results is None else results)]
    value: dict[str, Any] = {
        "recipients": report.size,
        "counts": report.counts(),
        "dialed": report.dialed,
        "rate_limited": report.rate_limited,
        "results": results_reference(task),
    }
    if statuses is not None:
        placed = set(report.placed_refs())
        value["statuses"] = dict(Counter(s or "none" for ref, (s, _) in statuses.items() if ref in placed))
    return value


def batch_results(
    report: BatchReport,
    statuses: Mapping[str, tuple[str | None, str | None]] | None,
    store: Callable[[], CallStore],
    log: Any,
    *,
    task: TaskIdentity | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[RecipientResult]:
    """The report's results, each placed call with its ``status`` (or why it has none) when
    ``statuses`` were waited for; those statuses are stored as the calls' verdicts (one
    transaction, never raising) so the outcome view shows what the task reported, and, with
    ``task``, in the batch's stored results. ``sources`` (call_ref → where its status came
    from) fill each result's ``outcome_source`` and are stored with the verdicts."""
    sources = sources or {}
    results = list(report.results)
    if statuses is None:
        return results
    if not report.complete:
        placed = report.placed_refs()
        verdicts = {ref: status for ref in placed if (status := statuses.get(ref, (None, None))[0])}
        record_verdicts(store, verdicts, sources=sources, log=log)
        _store_statuses(store, task, verdicts, log)
        return results
    for position, result in enumerate(results):
        status, why = statuses.get(result.call_ref or "", (None, None))
        if result.result is not ResultKind.PLACED:
            status, why = None, None
        source = sources.get(result.call_ref or "") if status else None
        results[position] = replace(
            result, with_status=True, status=status, reason=result.reason or why, outcome_source=source
        )
    # "answered" included, before fail_on may fail the task.
    reported: dict[str, str] = {r.call_ref: r.status for r in results if r.call_ref and r.status}
    record_verdicts(store, reported, sources=sources, log=log)
    _store_statuses(store, task, reported, log)
    return results


def _store_statuses(
    store: Callable[[], CallStore], task: TaskIdentity | None, verdicts: Mapping[str, str], log: Any
) -> None:
    """The statuses in the batch's stored results; a failure is logged, never raised (the ledger's
    verdicts, written first, are what the outcome view and retries read)."""
    if task is None or not verdicts:
        return
    try:
        store().set_batch_statuses(task, verdicts)
    except Exception as exc:
        log.warning("Could not store the statuses in the batch results: %s", type(exc).__name__)


def batch_problem(
    report: BatchReport,
    results: Sequence[RecipientResult],
    *,
    fail_on: Sequence[str],
    fail_on_rejected: bool,
    statuses: Mapping[str, tuple[str | None, str | None]] | None = None,
) -> str | None:
    """Why the task fails after this pass (the message names no full number), or ``None``.

    For a report without the full list the counts, its first ``problems`` and ``statuses``
    (of its placed calls) stand in for the results.
    """
    if report.complete:
        failed = [r for r in results if r.result in (ResultKind.REJECTED, ResultKind.UNKNOWN)]
        n_failed, examples = len(failed), failed[:3]
        n_bad = len([r for r in results if r.status is not None and r.status in fail_on])
    else:
        counts = report.counts()
        n_failed = counts[ResultKind.REJECTED.value] + counts[ResultKind.UNKNOWN.value]
        examples = list(report.problems[:3])
        placed = set(report.placed_refs())
        n_bad = sum(1 for ref, (s, _) in (statuses or {}).items() if ref in placed and s in fail_on)
    if not ((fail_on_rejected and n_failed) or n_bad):
        return None
    problems = []
    if fail_on_rejected and n_failed:
        problems.append(
            f"{n_failed} recipient(s) rejected or of unknown outcome (e.g. "
            + "; ".join(f"#{r.index} {r.to}: {r.result.value}: {r.reason}" for r in examples)
            + ")"
        )
    if n_bad:
        problems.append(f"{n_bad} call(s) ended with a status in fail_on={list(fail_on)!r}")
    hint = "; pass fail_on_rejected=False to succeed anyway" if n_failed else ""
    where = "the XCom 'results'" if report.complete else "the call store (see the XCom 'results')"
    return (
        f"MakeCallsOperator: {' and '.join(problems)}; {report.summary()}. Per-recipient results "
        f"are in {where}{hint}"
    )
