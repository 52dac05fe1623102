"""Bad arguments are refused with the field named, at construction or before any request.

Do-not-call lists, connection extras of the wrong type, durations (NaN, infinity, negative,
absurd), agent ids with whitespace or control characters, malformed status URLs, and
session parameters over the documented limits. Hook cases use ``requests-mock`` to prove
that no request was made; the same paths over real HTTP are in
``tests/integration/test_input_validation.py``.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_vonage_studio.batch import BatchDialer
from airflow_provider_vonage_studio.destinations import parse_number_list, split_number_list
from airflow_provider_vonage_studio.exceptions import (
    DoNotCall,
    InvalidDestination,
    InvalidSessionParameter,
    VonageStudioConfigError,
)
from airflow_provider_vonage_studio.hooks.vonage_studio import VonageStudioHook
from airflow_provider_vonage_studio.notifications.vonage_studio import VonageStudioCallNotifier
from airflow_provider_vonage_studio.operators.vonage_studio import (
    ExportSessionsOperator,
    MakeCallOperator,
    MakeCallsOperator,
)
from airflow_provider_vonage_studio.params import (
    MAX_PARAMETER_VALUE_LENGTH,
    MAX_SESSION_PARAMETERS,
    normalize_session_parameters,
)
from airflow_provider_vonage_studio.sensors.vonage_studio import CallStatusSensor
from airflow_provider_vonage_studio.triggers.vonage_studio import CallResultTrigger, CallStatusTrigger
from airflow_provider_vonage_studio.validation import (
    check_agent_id,
    check_duration,
    check_status_url,
    has_control_characters,
    is_templated,
)
from tests.conftest import conn_json

URL = "https://studio.test/telephony/make-call"
OK = {
    "session_id": "5a61cc84-4c89-4ef9-a983-5349c7112fdb",
    "session_start_time": "2020-10-14T09:42:07.151657",
}
NUMBER = "+447700900313"
DIGITS = "447700900313"


@pytest.fixture
def hook(vs_conn: str, tmp_path: Any) -> Any:
    from airflow_provider_vonage_studio.store import CallStore

    store = CallStore(f"sqlite:///{tmp_path}/store.db")
    yield VonageStudioHook(store=store, pace=False, retry_backoff=0.01)
    store.dispose()


def _op(**kwargs: Any) -> MakeCallOperator:
    return MakeCallOperator(**{"task_id": "call", "to": NUMBER, "agent_id": "agent-1", **kwargs})


# -- do-not-call lists -----------------------------------------------------------------------------


def test_one_string_is_one_number_not_its_characters() -> None:
    assert _op(do_not_call=NUMBER).do_not_call == (NUMBER,)
    assert MakeCallsOperator(task_id="c", recipients=[], agent_id="a", do_not_call=NUMBER).do_not_call == (
        NUMBER,
    )
    assert parse_number_list(NUMBER, field="do_not_call") == (DIGITS,)


@pytest.mark.parametrize(
    "value",
    [
        "+44 7700 900313, +44 7700 900314",
        "+44 7700 900313\n+44 7700 900314\n",
        "+44 7700 900313,\r\n,+44 7700 900314,",
        '["+44 7700 900313", "+44 7700 900314"]',  # a JSON list, as a template renders one
        "['+44 7700 900313', '+44 7700 900314']",  # a Python list, as str() of an XCom renders
        ["+44 7700 900313", "", "+44 7700 900314"],
        ("+44 7700 900313", "+44 7700 900314"),
        {"+44 7700 900313", "+44 7700 900314"},
    ],
)
def test_number_list_shapes(value: Any) -> None:
    assert sorted(parse_number_list(value, field="do_not_call")) == [DIGITS, "447700900314"]


def test_empty_lists_and_duplicates() -> None:
    for empty in (None, "", "  ", (), [], "[]"):
        assert parse_number_list(empty, field="do_not_call") == ()
    assert parse_number_list([NUMBER, DIGITS, "0044 7700 900313"], field="do_not_call") == (DIGITS,)
    assert parse_number_list("07700 900313", field="do_not_call", default_country="GB") == (DIGITS,)
    assert parse_number_list("sip:desk@pbx.example.com", field="do_not_call") == ("sip:desk@pbx.example.com",)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ({"to": NUMBER}, "got dict"),
        (447700900313, "got int"),
        (True, "got bool"),
        (NUMBER.encode(), "got bytes"),
        ([NUMBER, 447700900314], r"do_not_call\[1\]: expected a string, got int"),
        ([NUMBER, None], r"do_not_call\[1\]: expected a string, got NoneType"),
        ([[NUMBER]], r"do_not_call\[0\]: expected a string, got list"),
        ('{"a": 1}', "do_not_call"),  # not a list: read as a (bad) number
        ("[+44 7700 900313", "do_not_call"),
        ("['+44 7700 900313',", "do_not_call"),
    ],
)
def test_number_list_of_the_wrong_type_is_refused_naming_the_field(value: Any, kind: str) -> None:
    with pytest.raises(VonageStudioConfigError, match=kind) as info:
        split_number_list(value, field="do_not_call")
    assert "do_not_call" in str(info.value)
    # The same at operator, batch and notifier construction.
    for build in (
        lambda: _op(do_not_call=value),
        lambda: MakeCallsOperator(task_id="c", recipients=[], agent_id="a", do_not_call=value),
        lambda: VonageStudioCallNotifier(to=NUMBER, agent_id="a", do_not_call=value),
    ):
        with pytest.raises(VonageStudioConfigError, match="do_not_call"):
            build()


@pytest.mark.parametrize(
    "entry", ["call me maybe", "+44 7700 9OO313", "sip:@pbx.example.com", "12345678901234567890"]
)
def test_an_entry_that_is_no_number_is_refused_at_construction_redacted(entry: str) -> None:
    with pytest.raises(InvalidDestination, match=r"do_not_call\[1\]") as info:
        _op(do_not_call=[NUMBER, entry])
    assert "90031" not in str(info.value)  # the other entries are never shown
    assert entry not in str(info.value) or not any(ch.isdigit() for ch in entry)


@pytest.mark.parametrize("entry", ["+44 7711", "0044 123", "07700 900313"])
def test_an_impossible_number_is_refused_with_the_field_named(entry: str) -> None:
    # Impossible numbers need phonenumbers' metadata: refused once the task runs, before dialing.
    with pytest.raises(InvalidDestination, match=r"do_not_call\[0\]") as info:
        parse_number_list([entry], field="do_not_call")
    assert entry not in str(info.value)


def test_templated_lists_are_checked_after_rendering() -> None:
    assert _op(do_not_call="{{ var.value.dnc }}").do_not_call == "{{ var.value.dnc }}"
    assert _op(do_not_call=["{{ params.dnc }}"]).do_not_call == ["{{ params.dnc }}"]
    assert "do_not_call" in MakeCallOperator.template_fields
    assert "do_not_call" in MakeCallsOperator.template_fields
    assert "do_not_call" in VonageStudioCallNotifier.template_fields


def test_hook_extra_do_not_call_as_one_string_is_not_dialed(hook: Any, requests_mock: Any) -> None:
    requests_mock.post(URL, json=OK)
    with pytest.raises(DoNotCall):
        hook.make_call(NUMBER, "agent-1", extra_do_not_call=NUMBER)
    with pytest.raises(DoNotCall):
        hook.make_call(
            NUMBER, "agent-1", call_ref="vs-ref-dnc", extra_do_not_call=f"+1 212 555 0100,{NUMBER}"
        )
    assert requests_mock.request_history == []
    assert hook.store.get_call("vs-ref-dnc") is None  # refused before the ledger


@pytest.mark.parametrize("extra", [["+44 7700"], "call me", {"n": NUMBER}, 447700900313])
def test_hook_refuses_a_malformed_extra_list_before_the_ledger(
    hook: Any, requests_mock: Any, extra: Any
) -> None:
    requests_mock.post(URL, json=OK)
    with pytest.raises(VonageStudioConfigError, match="extra_do_not_call"):
        hook.make_call("+1 212 555 0100", "agent-1", call_ref="vs-ref-x", extra_do_not_call=extra)
    assert requests_mock.request_history == []
    assert hook.store.get_call("vs-ref-x") is None


def test_batch_dialer_reads_one_string_as_one_number(hook: Any) -> None:
    dialer = BatchDialer(hook, "agent-1", dag_id="d", run_id="r", task_id="t", do_not_call=NUMBER)
    assert dialer.do_not_call == (DIGITS,)
    gb = BatchDialer(
        hook, "agent-1", dag_id="d", run_id="r", task_id="t", do_not_call="07700 900313", default_country="GB"
    )
    assert gb.do_not_call == (DIGITS,)
    with pytest.raises(InvalidDestination, match=r"do_not_call\[0\]"):
        BatchDialer(hook, "agent-1", dag_id="d", run_id="r", task_id="t", do_not_call=["+44 7700"])


# -- connection extras -----------------------------------------------------------------------------


def _config(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> Any:
    monkeypatch.setenv("AIRFLOW_CONN_VS_TEST", conn_json(**extra))
    return VonageStudioHook("vs_test", pace=False).config


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"callback_secret": 1234567890123456789}, "extra 'callback_secret' must be a string, got int"),
        ({"callback_secret": ["a" * 20]}, "extra 'callback_secret' must be a string, got list"),
        ({"callback_base_url": 5}, "extra 'callback_base_url' must be a string, got int"),
        ({"callback_base_url": {"url": "https://x"}}, "extra 'callback_base_url' must be a string, got dict"),
        ({"callback_base_url": "https:///vonage"}, "extra 'callback_base_url'.*host is missing"),
        ({"callback_base_url": "https://exa mple.com"}, "extra 'callback_base_url'.*whitespace"),
        ({"callback_base_url": "https://example.com:70000"}, "extra 'callback_base_url'"),
        ({"region": 1}, "extra 'region' must be a string"),
        ({"pace_scope": True}, "extra 'pace_scope' must be a string"),
        ({"calls_per_second": True}, "extra 'calls_per_second' is True"),
        ({"calls_per_second": False}, "extra 'calls_per_second' is False"),
        ({"calls_per_second": math.inf}, "extra 'calls_per_second'"),
        ({"calls_per_second": math.nan}, "extra 'calls_per_second'"),
        ({"timeout": "thirty"}, "extra 'timeout': 'thirty' is not a number"),
        ({"timeout": "inf"}, "extra 'timeout': must be a finite duration"),
        ({"timeout": math.nan}, "extra 'timeout': must be a finite duration"),
        ({"timeout": True}, "extra 'timeout': expected a timedelta or a number of seconds, got bool"),
        ({"timeout": 0}, "extra 'timeout': must be more than"),
        ({"timeout": 86400}, "extra 'timeout': must be at most 2 min"),
        ({"callback_secret": "s3cret"}, "extra 'callback_secret' has 6 characters; .* at least 16"),
        ({"callback_secret": "fifteen-chars-x"}, "at least 16"),
    ],
)
def test_connection_extras_of_the_wrong_type_or_value(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(VonageStudioConfigError, match=message) as info:
        _config(monkeypatch, **extra)
    assert "connection 'vs_test'" in str(info.value)
    assert not info.value.retryable  # an operator turns it into AirflowFailException


def test_good_connection_extras_still_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(
        monkeypatch,
        timeout="12.5",
        calls_per_second="3",
        callback_secret="  sixteen-chars-ok  ",
        callback_base_url="https://receiver.example.com/vonage/",
    )
    assert (cfg.timeout, cfg.calls_per_second, cfg.callback_secret) == (12.5, 3, "sixteen-chars-ok")
    assert cfg.callback_base_url == "https://receiver.example.com/vonage"
    assert (
        _config(monkeypatch, calls_per_second=5.0, callback_base_url="http://127.0.0.1:8793").calls_per_second
        == 5
    )


@pytest.mark.parametrize("timeout", ["abc", "30", True, math.nan, math.inf, -1, 0, 10_000])
def test_hook_timeout_argument_is_checked_at_construction(timeout: Any) -> None:
    with pytest.raises(VonageStudioConfigError, match="timeout"):
        VonageStudioHook("vs_test", timeout=timeout)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retry_seconds": math.inf}, "max_retry_seconds"),
        ({"max_retry_seconds": -1}, "max_retry_seconds"),
        ({"max_retry_seconds": 86400}, "max_retry_seconds"),
        ({"retry_backoff": math.nan}, "retry_backoff"),
        ({"retry_backoff": 3600}, "retry_backoff"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_rate_limited_seconds": math.inf}, "max_rate_limited_seconds"),
        ({"store_retry_seconds": True}, "store_retry_seconds"),
        ({"store_retry_seconds": 2 * 86400}, "store_retry_seconds"),
    ],
)
def test_hook_retry_arguments_are_checked(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(VonageStudioConfigError, match=field):
        VonageStudioHook("vs_test", **kwargs)


# -- durations ------------------------------------------------------------------------------------

BAD_DURATIONS = [
    math.nan,
    math.inf,
    -math.inf,
    -1,
    timedelta(seconds=-1),
    timedelta(days=2),
    2 * 86400,
    1e300,
    True,
    "90",
    None,
]


@pytest.mark.parametrize("value", BAD_DURATIONS)
def test_check_duration_refuses_with_the_field_named(value: Any) -> None:
    with pytest.raises(VonageStudioConfigError, match=r"^answer_window: "):
        check_duration(value, field="answer_window")


def test_check_duration_accepts_within_bounds() -> None:
    assert check_duration(0, field="x") == timedelta(0)
    assert check_duration(90, field="x") == timedelta(seconds=90)
    assert check_duration(0.25, field="x") == timedelta(seconds=0.25)
    assert check_duration(timedelta(days=1), field="x") == timedelta(days=1)
    with pytest.raises(VonageStudioConfigError, match="more than 0 s"):
        check_duration(0, field="x", exclusive_minimum=True)


@pytest.mark.parametrize("value", BAD_DURATIONS[:8])
@pytest.mark.parametrize(
    ("field", "build"),
    [
        ("answer_window", lambda v: _op(answer_window=v)),
        (
            "answer_window",
            lambda v: MakeCallsOperator(task_id="c", recipients=[], agent_id="a", answer_window=v),
        ),
        ("answer_window", lambda v: CallStatusSensor(task_id="s", call_ref="vs-1", answer_window=v)),
        ("answer_window", lambda v: CallStatusTrigger(call_ref="vs-1", answer_window=v)),
        ("pending_timeout", lambda v: CallStatusTrigger(call_ref="vs-1", pending_timeout=v)),
        ("poll_interval", lambda v: CallStatusTrigger(call_ref="vs-1", poll_interval=v)),
        ("poll_interval", lambda v: CallResultTrigger(call_ref="vs-1", poll_interval=v)),
        ("poke_interval", lambda v: _op(poke_interval=v)),
        (
            "progress_interval",
            lambda v: MakeCallsOperator(task_id="c", recipients=[], agent_id="a", progress_interval=v),
        ),
        ("timeout", lambda v: _op(timeout=v)),
        ("timeout", lambda v: MakeCallsOperator(task_id="c", recipients=[], agent_id="a", timeout=v)),
        ("timeout", lambda v: VonageStudioCallNotifier(to=NUMBER, agent_id="a", timeout=v)),
        ("lookback", lambda v: ExportSessionsOperator(task_id="e", destination="/tmp/x.jsonl", lookback=v)),
    ],
)
def test_duration_arguments_are_refused_at_construction(field: str, build: Any, value: Any) -> None:
    if field == "lookback" and value in (timedelta(days=2), 2 * 86400):
        value = timedelta(days=400)  # a lookback may span months, not years
    with pytest.raises(VonageStudioConfigError, match=rf"^{field}: "):
        build(value)


def test_batch_dialer_durations(hook: Any) -> None:
    ident = {"dag_id": "d", "run_id": "r", "task_id": "t"}
    with pytest.raises(VonageStudioConfigError, match=r"^window_margin: "):
        BatchDialer(hook, "agent-1", **ident, window_margin=timedelta(days=3))
    with pytest.raises(VonageStudioConfigError, match=r"^progress_interval: "):
        BatchDialer(hook, "agent-1", **ident, progress_interval=math.nan)


def test_trigger_round_trip_keeps_valid_durations() -> None:
    trigger = CallStatusTrigger(call_ref="vs-1", answer_window=timedelta(hours=2), pending_timeout=600)
    _, kwargs = trigger.serialize()
    again = CallStatusTrigger(**kwargs)
    assert (again.answer_window, again.pending_timeout) == (timedelta(hours=2), timedelta(minutes=10))


# -- agent ids --------------------------------------------------------------------------------------

BAD_AGENT_IDS = [
    "agent 1",
    "agent\t1",
    "agent\u00a01",  # no-break space
    "agent-1\x00",
    "agent\x1b[31m-1",
    "agent-1\u0085x",
    "agent-1\u2028x",
    "agent-1\u2029x",
    "agent\u202e1-tnega",
    "agent\u20661",
    "\u200bagent-1",
    "\ufeffagent-1",
    "agent-1\u2028",
    "\u00a0agent-1",
    "",
    "   ",
    "a" * 129,
]


@pytest.mark.parametrize("agent_id", BAD_AGENT_IDS)
def test_bad_agent_ids_are_refused(agent_id: str) -> None:
    with pytest.raises(VonageStudioConfigError, match=r"^agent_id: "):
        check_agent_id(agent_id)
    with pytest.raises(VonageStudioConfigError, match=r"^agent_id: "):
        _op(agent_id=agent_id)
    with pytest.raises(VonageStudioConfigError, match=r"^agent_id: "):
        MakeCallsOperator(task_id="c", recipients=[], agent_id=agent_id)
    with pytest.raises(VonageStudioConfigError, match=r"^agent_id: "):
        VonageStudioCallNotifier(to=NUMBER, agent_id=agent_id)


@pytest.mark.parametrize("agent_id", ["agent 1", "agent-1\u2028", "agent\n1", 5, None])
def test_hook_refuses_bad_agent_ids_before_any_request(hook: Any, requests_mock: Any, agent_id: Any) -> None:
    requests_mock.post(URL, json=OK)
    with pytest.raises(VonageStudioConfigError, match=r"^agent_id: "):
        hook.make_call(NUMBER, agent_id, call_ref="vs-ref-agent")
    assert requests_mock.request_history == []
    assert hook.store.get_call("vs-ref-agent") is None


def test_agent_id_checks_keep_good_and_templated_ids() -> None:
    assert check_agent_id("  60c09d70e6a68858f4220848\n") == "60c09d70e6a68858f4220848"
    assert _op(agent_id="{{ var.value.agent_id }}").agent_id == "{{ var.value.agent_id }}"
    with pytest.raises(VonageStudioConfigError, match=r"^agent_id: expected a string"):
        _op(agent_id=12345)


def test_control_character_classes() -> None:
    for ch in ("\x00", "\x7f", "\x85", "\u2028", "\u2029", "\u202a", "\u202e", "\u2066", "\u2069", "\u200b"):
        assert has_control_characters(f"a{ch}b"), repr(ch)
    assert not has_control_characters("Zoë O'Brien – 09:30")


# -- status URLs ------------------------------------------------------------------------------------

BAD_STATUS_URLS = [
    "",
    "receiver.example.com/status",
    "ftp://receiver.example.com/status",
    "http://",
    "https:///calls/x/status",
    "http:/receiver.example.com/status",
    "https://receiver example.com/status",
    "https://receiver.example.com/calls/a b/status",
    "https://receiver.example.com/sta\ntus",
    "https://receiver.example.com/status\u2028",
    "https://receiver.example.com/st\u2028atus",
    "https://receiver.example.com/\u202estatus",
    "https://receiver.example.com:0/status",
    "https://receiver.example.com:99999/status",
    "https://receiver.example.com:/status",
    "https://user:password@receiver.example.com/status",
    "https://[not-ipv6]/status",
    "https://-bad-.example.com/status",
    "https://rec*eiver.example.com/status",
    "https://receiver.example.com/" + "x" * 2100,
]


@pytest.mark.parametrize("url", BAD_STATUS_URLS)
def test_bad_status_urls_are_refused(url: str) -> None:
    with pytest.raises(VonageStudioConfigError, match=r"^status_url: not a well-formed absolute http"):
        check_status_url(url)
    with pytest.raises(VonageStudioConfigError, match=r"^status_url: "):
        _op(status_url=url or "x")
    with pytest.raises(VonageStudioConfigError, match=r"^status_url: "):
        VonageStudioCallNotifier(to=NUMBER, agent_id="a", status_url=url or "x")


@pytest.mark.parametrize(
    "url", ["http://", "https:///x", "https://receiver example.com/x", "https://h:99999/x"]
)
def test_hook_refuses_bad_status_urls_before_any_request(hook: Any, requests_mock: Any, url: str) -> None:
    requests_mock.post(URL, json=OK)
    with pytest.raises(VonageStudioConfigError, match=r"^status_url: "):
        hook.make_call(NUMBER, "agent-1", status_url=url, call_ref="vs-ref-url")
    assert requests_mock.request_history == []
    assert hook.store.get_call("vs-ref-url") is None


@pytest.mark.parametrize(
    "url",
    [
        "https://receiver.example.com/calls/vs-1.sig/status",
        "http://127.0.0.1:8793/calls/t/status?x=1",
        "http://[::1]:8080/status",
        "https://my_receiver:8443/status",
        "https://bücher.example/status",
        "{{ var.value.status_url }}",
    ],
)
def test_good_status_urls_pass(url: str) -> None:
    if not is_templated(url):
        assert check_status_url(url) == url
    assert _op(status_url=url).status_url == url


# -- session parameters ------------------------------------------------------------------------------


def test_session_parameter_limits() -> None:
    at_limit = {f"P_{n}": "x" * MAX_PARAMETER_VALUE_LENGTH for n in range(MAX_SESSION_PARAMETERS)}
    assert len(normalize_session_parameters(at_limit)) == MAX_SESSION_PARAMETERS
    with pytest.raises(
        InvalidSessionParameter, match=f"51 parameters given; a call carries at most {MAX_SESSION_PARAMETERS}"
    ):
        normalize_session_parameters({**at_limit, "ONE_MORE": "x"})
    listed = [{"name": f"P_{n}", "value": n} for n in range(MAX_SESSION_PARAMETERS + 1)]
    with pytest.raises(InvalidSessionParameter, match="session_parameters: 51 parameters"):
        normalize_session_parameters(listed)
    secret = "Zoë" + "y" * MAX_PARAMETER_VALUE_LENGTH
    with pytest.raises(
        InvalidSessionParameter, match="'NOTES' has a value of 2003 characters; at most 2000"
    ) as info:
        normalize_session_parameters({"NOTES": secret})
    assert "yyyy" not in str(info.value)  # values are never quoted


def test_session_parameter_limits_at_construction_and_in_the_hook(hook: Any, requests_mock: Any) -> None:
    too_many = {f"P_{n}": "x" for n in range(MAX_SESSION_PARAMETERS + 1)}
    with pytest.raises(InvalidSessionParameter, match="at most 50"):
        _op(session_parameters=too_many)
    with pytest.raises(InvalidSessionParameter, match="at most 50"):
        MakeCallsOperator(task_id="c", recipients=[], agent_id="a", session_parameters=too_many)
    with pytest.raises(InvalidSessionParameter, match="at most 50"):
        VonageStudioCallNotifier(to=NUMBER, agent_id="a", session_parameters=too_many)
    # A templated value may grow when rendered: checked again in execute (by the hook).
    assert _op(session_parameters={"NOTES": "{{ ti.xcom_pull('notes') }}"}).session_parameters
    requests_mock.post(URL, json=OK)
    with pytest.raises(InvalidSessionParameter, match="at most 2000"):
        hook.make_call(NUMBER, "agent-1", session_parameters={"NOTES": "x" * 2001}, call_ref="vs-ref-p")
    assert requests_mock.request_history == []
    assert hook.store.get_call("vs-ref-p") is None


def test_is_templated() -> None:
    assert is_templated("{{ ds }}") and is_templated(["a", "{% if x %}"]) and is_templated({"A": "{# c #}"})
    assert not is_templated("+44 7700 900313") and not is_templated([NUMBER]) and not is_templated(None)

    class _Ref:
        def resolve(self, context: Any) -> Any:
            return [NUMBER]

    assert is_templated(_Ref())
    assert _op(do_not_call=_Ref()).do_not_call.__class__ is _Ref


def test_errors_are_config_errors_not_raw_value_errors() -> None:
    # The classes the operators turn into AirflowFailException (no task retries).
    for build in (
        lambda: _op(answer_window=math.nan),
        lambda: _op(do_not_call={"x": 1}),
        lambda: _op(agent_id="a b"),
        lambda: _op(status_url="http://"),
    ):
        with pytest.raises(VonageStudioConfigError) as info:
            build()
        assert not info.value.retryable
    assert json.dumps(parse_number_list(NUMBER, field="do_not_call"))


def test_construction_checks_load_no_phone_number_metadata() -> None:
    # Operators are built when DAG files are parsed: their checks must not import phonenumbers.
    # (Airflow 3.1 itself loads it through sqlalchemy_utils: only what we add counts.)
    import subprocess
    import sys

    code = """
import sys
import airflow
before = set(sys.modules)
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallOperator, MakeCallsOperator
from airflow_provider_vonage_studio.notifications.vonage_studio import VonageStudioCallNotifier
MakeCallOperator(task_id="a", to="+44 7700 900123", agent_id="agent-1", do_not_call="+44 7700 900313",
    status_url="https://r.example.com/s", session_parameters={"A": "b"}, answer_window=90, timeout=30)
MakeCallsOperator(task_id="b", recipients=[], agent_id="agent-1", do_not_call=["sip:a@b.example.com"])
VonageStudioCallNotifier(to="+44 7700 900123", agent_id="agent-1", do_not_call="+44 7700 900313")
print("phonenumbers" in set(sys.modules) - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False", out
