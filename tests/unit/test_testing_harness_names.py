"""The demo and the scheduled pacing runs in rooms: their old names stay importable for one release."""

from __future__ import annotations

from airflow_provider_vonage_studio.testing import demo, demo_scenario, harness, pacing_figures, scheduled


def test_demo_keeps_the_names_it_defined_before_the_harness_moved_out() -> None:
    for name in (
        "RUN_ID_ENV",
        "COMPONENTS",
        "Component",
        "Console",
        "DemoError",
        "free_port",
        "stop_all",
        "tagged_processes",
    ):
        assert getattr(demo, name) is getattr(harness, name), name
    for name in (
        "DAG_ID",
        "AGENT_ID",
        "SCRIPT",
        "ANSWER_WINDOW",
        "CALLBACK_DELAY",
        "POKE_INTERVAL",
        "Observed",
    ):
        assert getattr(demo, name) is getattr(demo_scenario, name), name
    assert issubclass(demo.Demo, harness.AirflowProcesses)


def test_scheduled_keeps_its_figures_and_helpers() -> None:
    for name in ("Figures", "RunResult", "figures", "_max_overlap", "_parse_time"):
        assert getattr(scheduled, name) is getattr(pacing_figures, name), name
    assert scheduled._free_port is harness.free_port


def test_observed_rows_links_results_to_the_script_and_reports_numbers_never_dialed() -> None:
    calls = [{"session_id": "s1", "to": "447700900123"}, {"session_id": "s2", "to": "12125550100"}]
    results = [
        {"key": "a", "session_id": "s1", "status": "answered"},
        {"key": "b", "session_id": "s2", "result": "busy"},
    ]
    rows = demo_scenario.observed_rows(calls, results)
    assert [(r.key, r.destination, r.observed, r.ok) for r in rows[:2]] == [
        ("a", "447700900123", "answered", True),
        ("b", "12125550100", "busy", True),
    ]
    never = {r.destination: r.observed for r in rows[2:]}
    assert never == {"972541116037": "not dialed", "447700900456": "not dialed"}
    assert not any(r.ok for r in rows[2:])
