"""``make demo ARGS=--campaign``: the ``reminder_campaign`` scenario and its report.

The demo's steps (:mod:`~airflow_provider_vonage_studio.testing.demo`, its ``CampaignDemo``)
are those of ``make demo``, with this scenario: the emulator scripts each recipient per
attempt (busy, busy, answered; never reached; answered at once), the waves are a few seconds
apart instead of an hour, and the report prints each recipient's attempts, disposition, and
the calls and messages the emulator received. While the campaign task waits between waves it
must be ``deferred`` with no task process running for it: the demo checks that on every wait
it sees.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_vonage_studio.testing.demo_scenario import AGENT_ID, CALLBACK_DELAY

__all__ = [
    "AIRFLOW_SETTINGS",
    "CAMPAIGN_DAG_ID",
    "CAMPAIGN_SCRIPT",
    "EXIT_GRACE",
    "EXPECTED",
    "DeferralCheck",
    "campaign_rows",
    "describe_script",
    "emulator_args",
    "follow_step",
    "report",
    "task_processes",
]

CAMPAIGN_DAG_ID = "reminder_campaign"
CAMPAIGN_TASK = "call_customers"
MESSAGE_AGENT_ID = "agent-messages"
#: Each recipient's outcome per attempt (the last repeats), by the number as the provider
#: sends it. Keep in step with the DAG's list.
CAMPAIGN_SCRIPT: dict[str, list[str]] = {
    "447700900123": ["busy", "busy", "answered"],
    "12125550100": ["busy", "timeout", "busy"],
    "447700900456": ["answered"],
}
#: The DAG's keys, by number.
KEYS = {"447700900123": "appt-1001", "12125550100": "appt-1002", "447700900456": "appt-1003"}
#: What the campaign must end with per number: calls received, disposition, messages received.
EXPECTED: dict[str, tuple[int, str, int]] = {
    "447700900123": (3, "reached", 0),
    "12125550100": (3, "not_reached", 1),
    "447700900456": (1, "reached", 0),
}
#: Seconds between waves (an hour in the DAG) and without a failure report before "answered".
#: Each wait the task defers for is kept several seconds long: when a trigger fires before the
#: scheduler has processed the exit of the process that deferred (seconds on a loaded
#: machine), Airflow takes that exit for the resumed task's and fails it (see below).
SPACING = 20.0
ANSWER_WINDOW = 10.0
POKE_INTERVAL = 0.5


#: Seconds the process that deferred may take to exit: it reports ``deferred`` first and then
#: winds down (seconds on a loaded machine). A process still running the task later than this
#: into a wait would be a worker slot held while waiting.
EXIT_GRACE = 15.0


@dataclass(frozen=True)
class DeferralCheck:
    """What the demo saw once while the campaign task was ``deferred``: the task instance's id,
    the processes running it, and how long into that wait (seconds) it looked."""

    ti_id: str
    processes: tuple[int, ...]
    after: float = 0.0

    @property
    def held(self) -> bool:
        """A process ran the task past :data:`EXIT_GRACE` into the wait."""
        return bool(self.processes) and self.after > EXIT_GRACE


def task_processes(ti_id: str, proc: Path = Path("/proc")) -> list[int]:
    """Processes running task instance ``ti_id``: Airflow's task runner titles itself
    ``airflow worker -- <ti id>``."""
    wanted = f"airflow worker -- {ti_id}"
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if wanted in cmdline:
            found.append(int(entry.name))
    return found


def emulator_args() -> list[str]:
    """The emulator's options for the campaign: both agents and the per-attempt script."""
    args = ["--agent", AGENT_ID, "--agent", MESSAGE_AGENT_ID, "--calls-per-second", "1"]
    args += ["--callback-delay", str(CALLBACK_DELAY)]
    for to, outcomes in CAMPAIGN_SCRIPT.items():
        args += ["--script", f"{to}={','.join(outcomes)}"]
    return args


#: The DAG's settings for the demo (added to the Airflow components' environment).
AIRFLOW_SETTINGS = {
    "VONAGE_STUDIO_CAMPAIGN_MESSAGE_AGENT_ID": MESSAGE_AGENT_ID,
    "VONAGE_STUDIO_CAMPAIGN_SPACING": str(SPACING),
    # The demo runs at any hour: a window open all day but the last minute.
    "VONAGE_STUDIO_CAMPAIGN_CALLING_WINDOW": "00:00-23:59",
    "VONAGE_STUDIO_DEMO_ANSWER_WINDOW": str(ANSWER_WINDOW),
    "VONAGE_STUDIO_DEMO_POKE_INTERVAL": str(POKE_INTERVAL),
    # Airflow 3.3's scheduler may still fail a task that resumed before it processed the exit of
    # the process that deferred (apache/airflow#72716, fix proposed in #71579), more often on a
    # loaded machine; a retry resumes the campaign from the ledger, so the demo allows several.
    "VONAGE_STUDIO_CAMPAIGN_RETRIES": "6",
    "VONAGE_STUDIO_CAMPAIGN_RETRY_DELAY": "2",
}


def describe_script() -> str:
    """The script, one ``<redacted number> <outcomes>`` per recipient, and the spacing."""
    from airflow_provider_vonage_studio.destinations import redact

    script = "; ".join(f"{redact(to)} {', '.join(o)}" for to, o in CAMPAIGN_SCRIPT.items())
    return f"{script} (waves {SPACING:g}s apart)"


def follow_step(
    console: Any, tis: Sequence[Mapping[str, Any]], seen: dict[str, str], deferrals: list[DeferralCheck]
) -> None:
    """One look at the run's task instances: print state changes; while the campaign task is
    deferred, note which processes run it (none, when no worker slot is held)."""
    now = time.monotonic()
    for ti in tis:
        task_id, state = ti["task_id"], ti.get("state")
        if state == "deferred" and task_id == CAMPAIGN_TASK:
            first = seen.get(task_id) != state
            if first:
                seen["deferred since"] = str(now)
            processes = tuple(task_processes(str(ti.get("id"))))
            since = now - float(seen["deferred since"])
            deferrals.append(DeferralCheck(str(ti.get("id")), processes, since))
            if first:
                held = "the deferring process is still exiting" if processes else "no task process runs it"
                console.step(f"  task {task_id}: deferred -- waiting in the triggerer, {held}")
        if state is None or seen.get(task_id) == state:
            continue
        seen[task_id] = state
        if state != "deferred":
            console.step(f"  task {task_id}: {state}")


def report(
    console: Any,
    results: Sequence[Mapping[str, Any]],
    calls: Sequence[Mapping[str, Any]],
    messages: Sequence[Mapping[str, Any]],
    deferrals: Sequence[DeferralCheck],
) -> bool:
    """Print the per-recipient table; True when the run matches :data:`EXPECTED` and every wait
    seen was deferred without a task process."""
    rows = campaign_rows(
        results, Counter(str(c.get("to")) for c in calls), Counter(str(m.get("to")) for m in messages)
    )
    print_campaign(console, rows)
    clean = bool(deferrals) and not any(d.held for d in deferrals)
    console.step(
        f"the campaign task was seen deferred {len(deferrals)} time(s); "
        + (
            f"never with a task process running it later than {EXIT_GRACE:g}s into a wait"
            if clean
            else f"NOT always without a task process {EXIT_GRACE:g}s into a wait"
        )
    )
    return clean and all(row["ok"] for row in rows)


def campaign_rows(
    results: Sequence[Mapping[str, Any]], calls: Mapping[str, int], messages: Mapping[str, int]
) -> list[dict[str, Any]]:
    """One row per scripted number: attempts and disposition from the task, calls and messages
    from the emulator, and whether all match :data:`EXPECTED`."""
    by_key = {str(r.get("key")): r for r in results}
    rows = []
    for to, (want_calls, want_disposition, want_messages) in EXPECTED.items():
        result = by_key.get(KEYS[to], {})
        attempts = [str(a.get("outcome")) for a in result.get("attempts") or []]
        disposition = result.get("disposition")
        got = (calls.get(to, 0), disposition, messages.get(to, 0))
        rows.append(
            {
                "key": KEYS[to],
                "to": to,
                "attempts": attempts,
                "disposition": disposition,
                "calls": got[0],
                "messages": got[2],
                "ok": got == (want_calls, want_disposition, want_messages),
            }
        )
    return rows


def print_campaign(console: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """The campaign's table: one line per recipient, numbers redacted."""
    from airflow_provider_vonage_studio.destinations import redact

    console.raw()
    header = f"{'recipient':<10} {'number':<14} {'attempts':<32} {'disposition':<12} calls messages  ok"
    console.raw(header)
    console.raw("-" * len(header))
    for row in rows:
        attempts = " > ".join(row["attempts"]) or "-"
        console.raw(
            f"{row['key']:<10} {redact(row['to']):<14} {attempts:<32} {row['disposition'] or '-':<12} "
            f"{row['calls']:>5} {row['messages']:>8}  {'yes' if row['ok'] else 'NO'}"
        )
    console.raw()
