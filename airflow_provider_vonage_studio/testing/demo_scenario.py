"""What ``make demo`` runs and how it reports it: the scripted outcomes, the run's timing, the final table.

The demo's steps (:mod:`~airflow_provider_vonage_studio.testing.demo`) bring up the emulator
and Airflow and trigger ``reminder_calls``; this module holds what the emulator is scripted to
do with each of its recipients and turns what the run observed into the rows it prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_vonage_studio.testing.harness import Console

DAG_ID = "reminder_calls"
AGENT_ID = "agent-1"
#: What the emulated callee does with each call of ``reminder_calls`` (the numbers as the
#: provider sends them: digits with the country code). Keep in step with the DAG's list.
SCRIPT: dict[str, str] = {
    "447700900123": "answered",
    "12125550100": "busy",
    "972541116037": "timeout",
    "447700900456": "rejected",
}
#: Seconds without a failure report after which a call counts as answered. The emulator
#: reports failures after CALLBACK_DELAY, so 5 s leaves a wide margin on a loaded machine
#: while keeping the run short.
ANSWER_WINDOW = 5.0
CALLBACK_DELAY = 0.5
#: Seconds between the trigger's reads of the call store.
POKE_INTERVAL = 1.0


@dataclass
class Observed:
    """One recipient's row in the final table."""

    key: str
    destination: str | None
    scripted: str | None
    observed: str | None
    session_id: str | None
    #: Where the observed status came from: ``callback``, ``end_call``, ``insights`` or
    #: ``inferred`` (an ``OutcomeSource`` value); ``None`` when nothing was observed.
    source: str | None = None

    @property
    def ok(self) -> bool:
        return self.scripted is not None and self.observed == self.scripted


def observed_rows(
    calls: Sequence[Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
    sources: Mapping[str, str] | None = None,
) -> list[Observed]:
    """One row per scripted recipient: what was scripted and what the run observed.

    ``calls`` is the emulator's record of each call (full number, session id); it links the
    DAG's ``results`` (redacted number, session id, status) to the script. Each row's source is
    the result's ``outcome_source``, else ``sources[session_id]`` (e.g. read from the outcome
    view), else what the status alone tells (:func:`_source_of`).
    """
    to_by_session = {c.get("session_id"): c.get("to") for c in calls}
    rows: list[Observed] = []
    seen: set[str] = set()
    for result in results:
        destination = to_by_session.get(result.get("session_id"))
        if destination:
            seen.add(destination)
        observed = result.get("status") or result.get("result")
        session_id = result.get("session_id")
        source = result.get("outcome_source") or (sources or {}).get(str(session_id))
        rows.append(
            Observed(
                key=str(result.get("key")),
                destination=destination,
                scripted=SCRIPT.get(destination or ""),
                observed=observed,
                session_id=session_id,
                source=source or _source_of(observed),
            )
        )
    # A scripted number the run never dialed is a failure too.
    for destination, outcome in SCRIPT.items():
        if destination not in seen:
            rows.append(Observed("-", destination, outcome, "not dialed", None))
    return rows


def _source_of(status: str | None) -> str | None:
    """The source a final status implies when none was carried: a failure status only ever comes
    from AI Studio's callback; an ``answered`` nobody confirmed was inferred (the rule of
    :func:`~airflow_provider_vonage_studio.outcome.source_of_verdict`)."""
    from airflow_provider_vonage_studio.outcome import FINAL_STATUSES, source_of_verdict

    return source_of_verdict(None, status) if status in FINAL_STATUSES else None


def print_table(console: Console, rows: Sequence[Observed]) -> None:
    """The final table: one line per recipient, numbers redacted, where each status came from
    (``source``: callback, end_call, insights, inferred), ``ok`` when as scripted."""
    from airflow_provider_vonage_studio.destinations import redact

    console.raw()
    header = (
        f"{'recipient':<11} {'number':<14} {'scripted':<9} {'observed':<11} {'source':<9} "
        f"{'session id':<36}  ok"
    )
    console.raw(header)
    console.raw("-" * len(header))
    for row in rows:
        number = redact(row.destination) if row.destination else "?"
        console.raw(
            f"{row.key:<11} {number:<14} {row.scripted or '?':<9} {row.observed or '-':<11} "
            f"{row.source or '-':<9} {row.session_id or '-':<36}  {'yes' if row.ok else 'NO'}"
        )
    console.raw()


def print_received(console: Console, calls: Sequence[Mapping[str, Any]]) -> None:
    """What reached the emulator, one line per request it accepted: number (redacted),
    agent, session id and the session parameters the agent was given."""
    from airflow_provider_vonage_studio.destinations import redact

    console.raw(f"calls received by the emulator: {len(calls)}")
    for call in calls:
        params = ", ".join(f"{p.get('name')}={p.get('value')}" for p in call.get("session_parameters") or [])
        number, agent, session = redact(str(call.get("to"))), call.get("agent_id"), call.get("session_id")
        console.raw(f"  {number:<14} {agent!s:<9} {session!s:<36}  {params}")
    console.raw()
