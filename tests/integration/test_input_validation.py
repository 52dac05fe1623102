"""Bad arguments never reach AI Studio, over real HTTP: the emulator records every request.

The do-not-call cases are the issue's own: ``do_not_call="+447700900313"`` given as one string
used to be split into its characters, none of which matched, and the number was dialed.
Templated values are rendered by Airflow's own template rendering, as in a task.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_vonage_studio._compat import AirflowFailException
from airflow_provider_vonage_studio.batch import BatchDialer, plan_recipients
from airflow_provider_vonage_studio.exceptions import DoNotCall, VonageStudioConfigError
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.notifications.vonage_studio import VonageStudioCallNotifier
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator, MakeCallsOperator
from airflow_provider_vonage_studio.store import CallStore
from airflow_provider_vonage_studio.testing.emulator import Emulator
from tests.integration.dial_workers import FakeTI

KEY = "input-validation-key-3a9c1e"
AGENT = "agent-1"
LISTED = "+447700900313"
LISTED_DIGITS = "447700900313"
OTHER_DIGITS = "447700900314"


class Live:
    def __init__(self, emulator: Emulator, store: CallStore) -> None:
        self.emulator, self.store = emulator, store


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", url)
    store = CallStore(url)
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=5) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json(calls_per_second=5))
        yield Live(emulator, store)
    store.dispose()
    CallStore._clear_default_cache(url)


def _ctx(task_id: str = "call", **extra: Any) -> dict[str, Any]:
    return {"ti": FakeTI("it_inputs", "manual__1", task_id, -1), **extra}


def _render(op: Any, **context: Any) -> None:
    """Render the operator's template fields the way a task run does (Airflow's own Jinja)."""
    op.render_template_fields(context)


# -- the case -----------------------------------------------------------------------------


def test_make_call_with_do_not_call_as_one_string_never_reaches_the_api(live: Live) -> None:
    op = MakeCallOperator(task_id="call", to=LISTED, agent_id=AGENT, do_not_call=LISTED)
    with pytest.raises(AirflowFailException, match="is on the do-not-call list; not dialed"):
        op.execute(_ctx())
    assert live.emulator.calls == []
    assert live.emulator.requests == []


@pytest.mark.parametrize(
    "template",
    [
        "{{ params.dnc }}",  # "+447700900313"
        "{{ params.dnc_list }}",  # a list rendered as text: "['+44 7700 900314', '+447700900313']"
        "{{ params.dnc_list | tojson }}",  # the same as JSON
        "{{ params.dnc_lines }}",  # one number a line
    ],
)
def test_templated_do_not_call_is_read_after_rendering(live: Live, template: str) -> None:
    params = {
        "dnc": LISTED,
        "dnc_list": ["+44 7700 900314", LISTED],
        "dnc_lines": "+44 7700 900314\n+44 7700 900313\n",
    }
    op = MakeCallOperator(task_id="call", to=LISTED, agent_id=AGENT, do_not_call=template)
    assert op.do_not_call == template  # not split before rendering
    _render(op, params=params)
    with pytest.raises(AirflowFailException, match="do-not-call list"):
        op.execute(_ctx(params=params))
    assert live.emulator.requests == []


def test_an_xcom_list_given_to_do_not_call_is_honoured(live: Live) -> None:
    class _Pulled:
        """Stands for ``upstream.output``: resolved when the task runs."""

        def resolve(self, context: Any) -> Any:
            return [LISTED]

    op = MakeCallOperator(task_id="call", to=LISTED, agent_id=AGENT, do_not_call=_Pulled())
    op.do_not_call = op.do_not_call.resolve({})  # what Airflow's rendering does with an XComArg
    with pytest.raises(AirflowFailException, match="do-not-call list"):
        op.execute(_ctx())
    assert live.emulator.requests == []


def test_a_bad_rendered_entry_fails_before_any_request(live: Live) -> None:
    op = MakeCallOperator(task_id="call", to=OTHER_DIGITS, agent_id=AGENT, do_not_call="{{ params.dnc }}")
    _render(op, params={"dnc": "+44 7700"})  # too short to be anyone's number
    with pytest.raises(AirflowFailException, match=r"do_not_call\[0\] .* is not a possible phone number"):
        op.execute(_ctx())
    assert live.store.get_call(op.call_ref(_ctx())) is None  # refused before the ledger
    assert live.emulator.requests == []


def test_other_numbers_are_still_dialed(live: Live) -> None:
    op = MakeCallOperator(
        task_id="call", to=OTHER_DIGITS, agent_id=AGENT, do_not_call=f"{LISTED}, +1 212 555 0100"
    )
    result = op.execute(_ctx())
    assert [c.to for c in live.emulator.calls] == [OTHER_DIGITS]
    assert result["session_id"] == live.emulator.calls[0].session_id


def test_national_entries_use_default_country(live: Live) -> None:
    op = MakeCallOperator(
        task_id="call", to="07700 900313", agent_id=AGENT, default_country="GB", do_not_call="07700 900313"
    )
    with pytest.raises(AirflowFailException, match="do-not-call list"):
        op.execute(_ctx())
    assert live.emulator.requests == []


def test_make_calls_with_do_not_call_as_one_string(live: Live) -> None:
    op = MakeCallsOperator(
        task_id="calls",
        recipients=[LISTED, OTHER_DIGITS],
        agent_id=AGENT,
        do_not_call="{{ params.dnc }}",
    )
    _render(op, params={"dnc": LISTED})
    results = op.execute(_ctx("calls"))
    assert [(r["result"], r["reason"]) for r in results] == [("skipped", "do-not-call"), ("placed", None)]
    assert [c.to for c in live.emulator.calls] == [OTHER_DIGITS]


def test_make_calls_with_a_bad_entry_dials_nobody(live: Live) -> None:
    op = MakeCallsOperator(
        task_id="calls", recipients=[OTHER_DIGITS], agent_id=AGENT, do_not_call="{{ params.d }}"
    )
    _render(op, params={"d": "0044 12"})
    with pytest.raises(AirflowFailException, match=r"do_not_call\[0\]"):
        op.execute(_ctx("calls"))
    assert live.emulator.requests == []


def test_batch_dialer_and_hook_read_one_string_as_one_number(live: Live) -> None:
    hook = VonageStudioHook(retry_backoff=0.01)
    plan = plan_recipients([LISTED, OTHER_DIGITS])
    report = BatchDialer(hook, AGENT, dag_id="d", run_id="r", task_id="t", do_not_call=LISTED).run(plan)
    assert [r.reason for r in report.results] == ["do-not-call", None]
    with pytest.raises(DoNotCall):
        hook.make_call(LISTED, AGENT, call_ref="vs-inputs-1", extra_do_not_call=LISTED)
    assert [c.to for c in live.emulator.calls] == [OTHER_DIGITS]


def test_notifier_do_not_call(live: Live) -> None:
    from datetime import datetime, timezone

    from airflow.sdk import DAG

    dag = DAG("it_inputs", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
    ti = FakeTI("it_inputs", "manual__1", "load", -1)
    ti.try_number = 1
    notifier = VonageStudioCallNotifier(to=[LISTED, OTHER_DIGITS], agent_id=AGENT, do_not_call=LISTED)
    with pytest.raises(DoNotCall):
        notifier.place_calls({"ti": ti, "dag": dag})
    assert [c.to for c in live.emulator.calls] == [OTHER_DIGITS]  # the other number still rang


# -- other bad input: never sent ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agent_id": "{{ params.agent }}"}, "agent_id: holds whitespace"),
        ({"status_url": "{{ params.url }}"}, "status_url: not a well-formed absolute http"),
        ({"session_parameters": {"NOTES": "{{ params.notes }}"}}, "'NOTES' has a value of 2001 characters"),
    ],
)
def test_rendered_arguments_are_checked_before_the_request(
    live: Live, kwargs: dict[str, Any], message: str
) -> None:
    params = {"agent": "agent 1", "url": "https://", "notes": "x" * 2001}
    op = MakeCallOperator(task_id="call", **{"to": OTHER_DIGITS, "agent_id": AGENT, **kwargs})
    _render(op, params=params)
    with pytest.raises(AirflowFailException, match=message):
        op.execute(_ctx())
    assert live.emulator.requests == []


@pytest.mark.parametrize(
    ("extras", "message"),
    [
        ({"callback_secret": 12345678901234567}, "extra 'callback_secret' must be a string"),
        ({"callback_base_url": 8080}, "extra 'callback_base_url' must be a string"),
        ({"callback_secret": "short-secret"}, "at least 16"),
        ({"calls_per_second": True}, "extra 'calls_per_second' is True"),
        ({"timeout": "soon"}, "extra 'timeout': 'soon' is not a number"),
        ({"timeout": "NaN"}, "extra 'timeout': must be a finite duration"),
    ],
)
def test_bad_connection_extras_fail_the_task_without_retries_and_without_a_request(
    live: Live, monkeypatch: pytest.MonkeyPatch, extras: dict[str, Any], message: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", live.emulator.connection_json(**extras))
    with pytest.raises(AirflowFailException, match=message):
        MakeCallOperator(task_id="call", to=OTHER_DIGITS, agent_id=AGENT).execute(_ctx())
    with pytest.raises(AirflowFailException, match=message):
        MakeCallsOperator(task_id="calls", recipients=[OTHER_DIGITS], agent_id=AGENT).execute(_ctx("calls"))
    assert live.emulator.requests == []


def test_bad_duration_fails_at_construction_not_after_dialing(live: Live) -> None:
    # Before, answer_window=inf raised OverflowError only after the call was placed.
    with pytest.raises(VonageStudioConfigError, match="answer_window"):
        MakeCallOperator(
            task_id="call", to=OTHER_DIGITS, agent_id=AGENT, wait_for_status=True, answer_window=float("inf")
        )
    assert live.emulator.requests == []
