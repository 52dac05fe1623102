"""The outcome view: recent calls by DAG run, counts per outcome and a small chart.

For the people who would rather look than read: ``GET /vonage-studio/outcomes`` (linked
from the Airflow UI's *Browse* menu and from each DAG run by the provider's plugin) renders
:func:`render_outcomes_html`; ``GET /vonage-studio/outcomes.json`` serves the same data from
:func:`outcomes_payload`.

The page is read-only, plain HTML with inline CSS and an inline SVG chart: no scripts and
no external assets, so it works offline and inside the Airflow UI's sandboxed iframe.
Phone numbers are always redacted. Who may see it is decided by the receiver app
(:func:`~airflow_provider_vonage_studio.callbacks.app.create_app`, ``outcome_view``):
inside the Airflow API server, users logged in to Airflow, for the DAGs they may read.

What the *outcome* column says: when a waiting task (``CallStatusSensor``,
``MakeCallOperator(wait_for_status=True)``, ...) decided the call's final status, that verdict
is shown, ``answered`` included (AI Studio never reports it: it is inferred when no failure
callback came within the answer window). Otherwise: AI Studio reports only calls that were not
picked up, so a placed call without a callback shows ``no failure reported``; a callback's
status (``busy``, ``timeout``, ...) is shown as it arrived (the first one, when several did);
calls the API refused show ``rejected by API``, calls whose request got no answer
``outcome unknown``. A failure reported after an ``answered`` verdict is noted under it (a
hint that the answer window is too short).

The *source* column (JSON ``outcome_source``) says where the outcome's truth came from:
``end_call`` (the agent's end-call webhook: answered, confirmed; JSON ``ended_at`` is when the
call ended), ``insights`` (answered, confirmed by reading the session), ``callback`` (AI
Studio's failure report) or ``inferred`` (no failure report within the answer window);
``—`` while nothing is known (and on rows from before schema version 5).

Pure functions of :class:`~airflow_provider_vonage_studio.store.CallRecord` lists; this
module imports nothing heavy.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.destinations import redact

if TYPE_CHECKING:
    from airflow_provider_vonage_studio.store import CallRecord

__all__ = [
    "OUTCOMES",
    "Filters",
    "outcome_of",
    "outcomes_payload",
    "render_login_needed",
    "render_outcomes_html",
]

DEFAULT_LIMIT = 500
MAX_LIMIT = 5000

#: Every outcome the view shows, in display order: (key, label, colour).
OUTCOMES: tuple[tuple[str, str, str], ...] = (
    ("answered", "answered", "#2e7d32"),
    ("no_failure_reported", "no failure reported", "#66bb6a"),
    ("busy", "busy", "#ef6c00"),
    ("timeout", "timeout", "#f9a825"),
    ("rejected", "rejected", "#c62828"),
    ("cancelled", "cancelled", "#6d4c41"),
    ("failed", "failed", "#8e24aa"),
    ("rejected_by_api", "rejected by API", "#37474f"),
    ("outcome_unknown", "outcome unknown", "#9e9e9e"),
    ("dialing", "dialing", "#1565c0"),
)
_LABELS = {key: label for key, label, _ in OUTCOMES}
_COLOURS = {key: colour for key, _, colour in OUTCOMES}
_OTHER_COLOUR = "#795548"
# Error messages come from the API, but could quote a number: hide long digit runs.
_DIGIT_RUN_RE = re.compile(r"\+?[0-9][0-9 ().-]{5,}[0-9]")


@dataclass(frozen=True)
class Filters:
    """What the page was asked to show: optional ``dag_id``/``run_id``, ``task_id``/``map_index``
    (one task instance's calls: the "Call outcomes" task link) and how many recent calls."""

    dag_id: str | None = None
    run_id: str | None = None
    limit: int = DEFAULT_LIMIT
    task_id: str | None = None
    map_index: int | None = None

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> Filters | str:
        """Read ``dag_id``, ``run_id``, ``task_id``, ``map_index`` (a whole number, ``-1`` for an
        unmapped task) and ``limit`` (1..5000) from query parameters.

        Returns the error message (naming the parameter) instead of raising.
        """
        limit_text = (params.get("limit") or "").strip()
        limit = DEFAULT_LIMIT
        if limit_text:
            if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
                return f"limit: must be a whole number from 1 to {MAX_LIMIT}"
            limit = int(limit_text)
        dag_id = (params.get("dag_id") or "").strip() or None
        run_id = (params.get("run_id") or "").strip() or None
        task_id = (params.get("task_id") or "").strip() or None
        for name, value in (("dag_id", dag_id), ("run_id", run_id), ("task_id", task_id)):
            if value is not None and len(value) > 250:
                return f"{name}: must be at most 250 characters"
        index_text = (params.get("map_index") or "").strip()
        map_index = None
        if index_text:
            if not index_text.lstrip("-").isdigit() or len(index_text) > 9 or int(index_text) < -1:
                return "map_index: must be a whole number from -1 (an unmapped task) up"
            map_index = int(index_text)
        return cls(dag_id=dag_id, run_id=run_id, limit=limit, task_id=task_id, map_index=map_index)

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"dag_id": self.dag_id, "run_id": self.run_id, "limit": self.limit}
        if self.task_id is not None or self.map_index is not None:
            shown.update(task_id=self.task_id, map_index=self.map_index)
        return shown

    @property
    def by_task(self) -> bool:
        """Whether the filters name a task (``task_id`` and/or ``map_index``)."""
        return self.task_id is not None or self.map_index is not None

    def matches_task(self, call: CallRecord) -> bool:
        """Whether ``call`` was placed by the task (and map index) the filters name. A link to an
        unmapped task (no ``map_index``) shows all of that task's calls."""
        if self.task_id is not None and call.task_id != self.task_id:
            return False
        return self.map_index is None or call.map_index == self.map_index


def outcome_of(call: CallRecord) -> str:
    """The outcome key of one call (see the module docstring); one of :data:`OUTCOMES`' keys
    or, should AI Studio ever post a new status, that status."""
    if call.outcome:
        return call.outcome
    if call.status:
        return call.status
    state = getattr(call.state, "value", call.state)
    return {
        "placed": "no_failure_reported",
        "rejected": "rejected_by_api",
        "unknown": "outcome_unknown",
        "queued": "dialing",
        "sending": "dialing",
        "pending": "dialing",
    }.get(state, str(state))


def _label(outcome: str) -> str:
    return _LABELS.get(outcome, outcome)


def _colour(outcome: str) -> str:
    return _COLOURS.get(outcome, _OTHER_COLOUR)


def _ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    known = [(key, counts[key]) for key, _, _ in OUTCOMES if counts.get(key)]
    others = sorted((k, v) for k, v in counts.items() if k not in _LABELS and v)
    return known + others


def _when(call: CallRecord) -> datetime:
    return (call.session_start_time or call.created_at).astimezone(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _error_text(call: CallRecord) -> str | None:
    if call.error_status is None and not call.error_message:
        return None
    message = _DIGIT_RUN_RE.sub(lambda m: redact(m.group(0)), call.error_message or "")
    if len(message) > 160:
        message = message[:160] + "…"
    if call.error_status is not None:
        return f"{call.error_status}: {message}" if message else str(call.error_status)
    return message


@dataclass(frozen=True)
class _Run:
    dag_id: str | None
    run_id: str | None
    calls: list[CallRecord]

    @property
    def counts(self) -> Counter[str]:
        return Counter(outcome_of(c) for c in self.calls)

    @property
    def latest(self) -> datetime:
        return max(c.created_at for c in self.calls)


def _group_by_run(calls: Sequence[CallRecord]) -> list[_Run]:
    groups: dict[tuple[str | None, str | None], list[CallRecord]] = {}
    for call in calls:
        groups.setdefault((call.dag_id, call.run_id), []).append(call)
    runs = []
    for (dag_id, run_id), members in groups.items():
        # Task order inside a run: by task, then map index (a mapped task's recipients in order).
        members.sort(key=lambda c: (c.task_id or "", c.map_index, c.recipient_key or "", c.created_at))
        runs.append(_Run(dag_id, run_id, members))
    runs.sort(key=lambda r: r.latest, reverse=True)
    return runs


def _timeline(calls: Sequence[CallRecord]) -> tuple[str, list[tuple[datetime, Counter[str]]]]:
    """Outcomes per hour (when the calls span at most two days) or per day.

    Returns the bucket unit and every bucket from the first call to the last, empty ones
    included (at most 48 hourly or 60 daily buckets: the newest).
    """
    if not calls:
        return "hour", []
    times = [_when(c) for c in calls]
    first, last = min(times), max(times)
    if last - first <= timedelta(hours=47):
        unit, step, cap = "hour", timedelta(hours=1), 48

        def floor(t: datetime) -> datetime:
            return t.replace(minute=0, second=0, microsecond=0)
    else:
        unit, step, cap = "day", timedelta(days=1), 60

        def floor(t: datetime) -> datetime:
            return t.replace(hour=0, minute=0, second=0, microsecond=0)

    start, end = floor(first), floor(last)
    if (end - start) / step >= cap:
        start = end - step * (cap - 1)
    buckets: dict[datetime, Counter[str]] = {}
    cursor = start
    while cursor <= end:
        buckets[cursor] = Counter()
        cursor += step
    for call, when in zip(calls, times, strict=True):
        key = floor(when)
        if key in buckets:
            buckets[key][outcome_of(call)] += 1
    return unit, list(buckets.items())


# ---------------------------------------------------------------------------- JSON


def outcomes_payload(calls: Sequence[CallRecord], *, filters: Filters | None = None) -> dict[str, Any]:
    """The view's data as a JSON-safe dict: overall counts, runs with their calls, timeline.

    Numbers are redacted; timestamps are ISO 8601 UTC.
    """
    filters = filters or Filters()
    unit, buckets = _timeline(calls)
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "filters": filters.as_dict(),
        "total": len(calls),
        "counts": dict(_ordered(Counter(outcome_of(c) for c in calls))),
        "runs": [
            {
                "dag_id": run.dag_id,
                "run_id": run.run_id,
                "counts": dict(_ordered(run.counts)),
                "calls": [_call_json(c) for c in run.calls],
            }
            for run in _group_by_run(calls)
        ],
        "timeline": {
            "unit": unit,
            "buckets": [
                {"start": _iso(start), "counts": dict(_ordered(counts))} for start, counts in buckets
            ],
        },
    }


def _call_json(call: CallRecord) -> dict[str, Any]:
    return {
        "call_ref": call.call_ref,
        "dag_id": call.dag_id,
        "run_id": call.run_id,
        "task_id": call.task_id,
        "map_index": call.map_index,
        "recipient_key": call.recipient_key,
        "to": redact(call.destination),
        "agent_id": call.agent_id,
        "state": getattr(call.state, "value", call.state),
        "status": call.status,
        "outcome": outcome_of(call),
        "verdict": call.outcome,
        "verdict_at": _iso(call.outcome_at),
        "outcome_source": call.outcome_source,
        "ended_at": _iso(call.ended_at),
        "error": _error_text(call),
        "session_id": call.session_id,
        "session_start_time": _iso(call.session_start_time),
        "status_at": _iso(call.status_at),
        "created_at": _iso(call.created_at),
    }


# ---------------------------------------------------------------------------- HTML

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px 32px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  "DejaVu Sans", sans-serif; color: #1f2933; background: #f7f8fa; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 0; }
.sub { color: #52606d; margin: 0 0 14px; }
.card { background: #fff; border: 1px solid #e1e5ea; border-radius: 8px; padding: 12px 14px;
  margin: 0 0 14px; }
.counts { display: flex; flex-wrap: wrap; gap: 6px; margin: 6px 0 0; padding: 0; list-style: none; }
.pill { display: inline-flex; align-items: center; gap: 6px; padding: 2px 10px; border-radius: 999px;
  background: #eef1f4; white-space: nowrap; }
.dot { width: 10px; height: 10px; border-radius: 50%; display: inline-block; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #edf0f3; vertical-align: top; }
th { font-weight: 600; color: #52606d; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.num { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.outcome { font-weight: 600; }
.outcome .muted { font-weight: 400; }
svg.chart { display: block; max-width: 900px; margin-top: 8px; }
.muted { color: #7b8794; }
form { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; }
label { display: flex; flex-direction: column; font-size: 12px; color: #52606d; }
input { font: inherit; padding: 3px 6px; border: 1px solid #cbd2d9; border-radius: 4px; }
button, a.button { font: inherit; padding: 4px 12px; border-radius: 4px; border: 1px solid #1565c0;
  background: #1565c0; color: #fff; text-decoration: none; }
a.button.secondary { background: #fff; color: #1565c0; }
svg text { font: 11px system-ui, sans-serif; fill: #52606d; }
.empty { padding: 24px; text-align: center; color: #52606d; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _counts_html(counts: Mapping[str, int], *, test_id: str) -> str:
    items = "".join(
        f'<li class="pill" data-outcome="{_e(key)}">'
        f'<span class="dot" style="background:{_colour(key)}"></span>'
        f'{_e(_label(key))} <strong data-count="{_e(key)}">{n}</strong></li>'
        for key, n in _ordered(counts)
    )
    return f'<ul class="counts" data-testid="{_e(test_id)}">{items}</ul>'


def _chart_svg(calls: Sequence[CallRecord]) -> str:
    """Stacked bars of outcomes per hour or day, as inline SVG with a legend."""
    unit, buckets = _timeline(calls)
    if not buckets:
        return ""
    width, height, left, bottom, top = 760, 190, 34, 34, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max((sum(c.values()) for _, c in buckets), default=0) or 1
    slot = plot_w / len(buckets)
    bar_w = max(2.0, min(36.0, slot * 0.7))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" data-testid="chart" width="100%" '
        f'viewBox="0 0 {width} {height}" preserveAspectRatio="xMinYMin meet" '
        f'aria-label="Call outcomes per {unit}">',
        f"<title>Call outcomes per {unit} (UTC)</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#cbd2d9"/>',
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    label_every = max(1, round(len(buckets) / 8))
    for i, (start, counts) in enumerate(buckets):
        x = left + i * slot + (slot - bar_w) / 2
        y = float(top + plot_h)
        for key, n in _ordered(counts):
            h = plot_h * n / peak
            y -= h
            when = start.strftime("%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d")
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{_colour(key)}" '
                f'data-outcome="{_e(key)}"><title>{_e(when)} UTC: {n} {_e(_label(key))}</title></rect>'
            )
        if i % label_every == 0:
            text = start.strftime("%H:00" if unit == "hour" else "%m-%d")
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{text}</text>'
            )
    parts.append(
        f'<text x="{left}" y="{height - 4}">per {unit}, UTC, from '
        f"{_e(buckets[0][0].strftime('%Y-%m-%d'))}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _outcome_cell(call: CallRecord) -> str:
    key = outcome_of(call)
    extra = ""
    error = _error_text(call)
    if error:
        extra = f'<div class="muted">{_e(error)}</div>'
    elif call.outcome and call.status and call.status != call.outcome:
        # A failure callback that came after the verdict: the answer window may be too short.
        extra = f'<div class="muted" data-col="late-status">{_e(call.status)} reported later</div>'
    elif call.status and call.status_at:
        extra = f'<div class="muted">{_e(call.status_at.strftime("%Y-%m-%d %H:%M:%S"))} UTC</div>'
    return (
        f'<td class="outcome" data-col="outcome" data-outcome="{_e(key)}">'
        f'<span class="dot" style="background:{_colour(key)}"></span> {_e(_label(key))}{extra}</td>'
    )


#: How the source column names each ``outcome_source`` (calls.OutcomeSource values).
_SOURCE_LABELS = {
    "end_call": "end-call webhook",
    "insights": "Insights",
    "callback": "status callback",
    "inferred": "inferred",
}


def _run_html(run: _Run) -> str:
    rows = []
    for call in run.calls:
        task = call.task_id or "—"
        if call.map_index is not None and call.map_index >= 0:
            task = f"{task}[{call.map_index}]"
        started = call.session_start_time or call.created_at
        rows.append(
            f'<tr data-call-ref="{_e(call.call_ref)}">'
            f'<td data-col="task">{_e(task)}</td>'
            f'<td class="num" data-col="to">{_e(redact(call.destination))}</td>'
            f'<td data-col="agent">{_e(call.agent_id)}</td>'
            f'<td data-col="state">{_e(getattr(call.state, "value", call.state))}</td>'
            f"{_outcome_cell(call)}"
            f'<td data-col="source" data-source="{_e(call.outcome_source or "")}">'
            f"{_e(_SOURCE_LABELS.get(call.outcome_source or '', call.outcome_source or '—'))}</td>"
            f'<td class="muted" data-col="started">{_e(started.strftime("%Y-%m-%d %H:%M:%S"))}</td>'
            "</tr>"
        )
    dag = run.dag_id or "(no DAG)"
    run_id = run.run_id or "—"
    return (
        f'<section class="card run" data-dag-id="{_e(run.dag_id or "")}" '
        f'data-run-id="{_e(run.run_id or "")}">'
        f'<h2><span data-col="dag_id">{_e(dag)}</span> <span class="muted">/</span> '
        f'<span data-col="run_id">{_e(run_id)}</span> <span class="muted">· {len(run.calls)} '
        f"call{'s' if len(run.calls) != 1 else ''}</span></h2>"
        f"{_counts_html(run.counts, test_id='run-counts')}"
        "<table><thead><tr><th>Task</th><th>To</th><th>Agent</th><th>Placement</th><th>Outcome</th>"
        "<th>Source</th><th>Started (UTC)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def render_outcomes_html(
    calls: Sequence[CallRecord], *, filters: Filters | None = None, now: datetime | None = None
) -> str:
    """The whole outcome page for ``calls`` (newest first, as the store returns them)."""
    filters = filters or Filters()
    now = now or datetime.now(timezone.utc)
    totals = Counter(outcome_of(c) for c in calls)
    scope = []
    if filters.dag_id:
        scope.append(f"DAG <strong>{_e(filters.dag_id)}</strong>")
    if filters.run_id:
        scope.append(f"run <strong>{_e(filters.run_id)}</strong>")
    if filters.task_id:
        scope.append(f"task <strong>{_e(filters.task_id)}</strong>")
    if filters.map_index is not None and filters.map_index >= 0:
        scope.append(f"map index <strong>{filters.map_index}</strong>")
    scope_text = " · ".join(scope) if scope else f"the {filters.limit} most recent calls"
    if calls:
        body = (
            f'<section class="card"><h2>All outcomes · {len(calls)} call{"s" if len(calls) != 1 else ""}</h2>'
            f"{_counts_html(totals, test_id='total-counts')}{_chart_svg(calls)}</section>"
            + "".join(_run_html(run) for run in _group_by_run(calls))
        )
    else:
        body = '<section class="card empty" data-testid="empty">No calls recorded yet.</section>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty inline icon: otherwise the browser fetches /favicon.ico (a 404 in the logs).
        '<link rel="icon" href="data:,">'
        "<title>Call outcomes · Vonage AI Studio</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Call outcomes</h1>"
        f'<p class="sub">Vonage AI Studio calls placed by Airflow: {scope_text}. Numbers are redacted. '
        "<em>Answered</em> is the verdict of the task that waited for the call: no failure callback "
        "within its answer window. “No failure reported” means AI Studio sent no failure callback "
        "and no task has decided yet. Generated "
        f"{_e(now.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S'))} UTC.</p>"
        '<section class="card"><form method="get" action="">'
        f'<label>DAG id<input name="dag_id" value="{_e(filters.dag_id or "")}"></label>'
        f'<label>Run id<input name="run_id" value="{_e(filters.run_id or "")}"></label>'
        f'<label>Task id<input name="task_id" value="{_e(filters.task_id or "")}"></label>'
        + (
            f'<input type="hidden" name="map_index" value="{filters.map_index}">'
            if filters.map_index is not None
            else ""
        )
        + f'<label>Recent calls<input name="limit" type="number" min="1" max="{MAX_LIMIT}" '
        f'value="{filters.limit}"></label>'
        '<button type="submit">Show</button><a class="button secondary" href="?">All</a>'
        "</form></section>"
        f"{body}</body></html>"
    )


def render_login_needed() -> str:
    """The small page answered (401) when the view needs an Airflow login and there is none."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Call outcomes</title>'
        f"<style>{_CSS}</style></head><body><h1>Call outcomes</h1>"
        '<section class="card">Log in to Airflow, then reload this page.</section></body></html>'
    )
