"""What ``MakeCallsOperator`` makes of a batch pass: per-recipient results with their final
statuses, and whether the task fails (``fail_on_rejected``, ``fail_on``).

Loaded inside the operator's methods (never at DAG parse time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.batch import ResultKind
from airflow_provider_vonage_studio.outcome import record_verdicts

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.batch import BatchReport, RecipientResult
    from airflow_provider_vonage_studio.store import CallStore

__all__ = ["batch_problem", "batch_results"]


def batch_results(
    report: BatchReport,
    statuses: Mapping[str, tuple[str | None, str | None]] | None,
    store: Callable[[], CallStore],
    log: Any,
) -> list[RecipientResult]:
    """The report's results, each placed call with its ``status`` (or why it has none) when
    ``statuses`` were waited for; those statuses are stored as the calls' verdicts (one
    transaction, never raising) so the outcome view shows what the task reported."""
    results = list(report.results)
    if statuses is None:
        return results
    for position, result in enumerate(results):
        status, why = statuses.get(result.call_ref or "", (None, None))
        if result.result is not ResultKind.PLACED:
            status, why = None, None
        results[position] = replace(result, with_status=True, status=status, reason=result.reason or why)
    # "answered" included, before fail_on may fail the task.
    record_verdicts(store, {r.call_ref: r.status for r in results if r.call_ref and r.status}, log=log)
    return results


def batch_problem(
    report: BatchReport,
    results: Sequence[RecipientResult],
    *,
    fail_on: Sequence[str],
    fail_on_rejected: bool,
) -> str | None:
    """Why the task fails after this pass (the message names no full number), or ``None``."""
    failed = [r for r in results if r.result in (ResultKind.REJECTED, ResultKind.UNKNOWN)]
    bad_status = [r for r in results if r.status is not None and r.status in fail_on]
    if not ((fail_on_rejected and failed) or bad_status):
        return None
    problems = []
    if fail_on_rejected and failed:
        problems.append(
            f"{len(failed)} recipient(s) rejected or of unknown outcome (e.g. "
            + "; ".join(f"#{r.index} {r.to}: {r.result.value}: {r.reason}" for r in failed[:3])
            + ")"
        )
    if bad_status:
        problems.append(f"{len(bad_status)} call(s) ended with a status in fail_on={list(fail_on)!r}")
    hint = "; pass fail_on_rejected=False to succeed anyway" if failed else ""
    return (
        f"MakeCallsOperator: {' and '.join(problems)}; {report.summary()}. Per-recipient results "
        f"are in the XCom 'results'{hint}"
    )
