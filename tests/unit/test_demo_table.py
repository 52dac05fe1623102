"""The plain demo's final table says where each status came from (the Source column)."""

from __future__ import annotations

import io
import re

from airflow_provider_vonage_studio.testing import demo_scenario
from airflow_provider_vonage_studio.testing.harness import Console

CALLS = [
    {"session_id": "s1", "to": "447700900123"},
    {"session_id": "s2", "to": "12125550100"},
    {"session_id": "s3", "to": "972541116037"},
]


def test_each_row_takes_the_carried_source_then_the_given_one_then_the_status_rule() -> None:
    results = [
        {"key": "a", "session_id": "s1", "status": "answered", "outcome_source": "end_call"},
        {"key": "b", "session_id": "s2", "status": "busy"},
        {"key": "c", "session_id": "s3", "status": "timeout"},
    ]
    rows = demo_scenario.observed_rows(CALLS, results, sources={"s3": "callback"})
    assert [(r.key, r.source) for r in rows[:3]] == [("a", "end_call"), ("b", "callback"), ("c", "callback")]
    # Nothing carried: an unconfirmed answer was inferred; a number never dialed has no source.
    (plain,) = demo_scenario.observed_rows(
        CALLS[:1], [{"key": "a", "session_id": "s1", "status": "answered"}]
    )[:1]
    assert plain.source == "inferred"
    never = [r for r in demo_scenario.observed_rows([], []) if r.observed == "not dialed"]
    assert never and all(r.source is None for r in never)


def test_the_table_prints_a_source_column() -> None:
    out = io.StringIO()
    calls = [{"session_id": "0" * 36, "to": "447700900123"}, {"session_id": "1" * 36, "to": "12125550100"}]
    rows = demo_scenario.observed_rows(
        calls,
        [
            {"key": "appt-1", "session_id": "0" * 36, "status": "answered"},
            {"key": "appt-2", "session_id": "1" * 36, "status": "busy"},
        ],
    )
    demo_scenario.print_table(Console(out), rows[:2])
    text = out.getvalue()
    assert re.search(r"^recipient\s+number\s+scripted\s+observed\s+source\s+session id\s+ok$", text, re.M)
    assert re.search(r"^appt-1\s+\S+\s+answered\s+answered\s+inferred\s+0{36}\s+yes$", text, re.M)
    assert re.search(r"^appt-2\s+\S+\s+busy\s+busy\s+callback\s+1{36}\s+yes$", text, re.M)
