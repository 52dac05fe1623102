"""The pacer's promises against the strict emulator: a 429 never loses a call, the margin and its
validation, and the time bound that leaves a call queued for a later try.

Every figure here is the emulator's: it records each request and refuses (429) any call that
would put N + 1 accepted calls in a trailing second, with no tolerance.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError, VonageStudioRateLimited
from airflow_provider_vonage_studio.hooks.vonage_studio import DEFAULT_PACING_MARGIN, VonageStudioHook
from airflow_provider_vonage_studio.operators.vonage_studio import MakeCallsOperator
from airflow_provider_vonage_studio.store import CallState, CallStore
from airflow_provider_vonage_studio.testing.emulator import MAKE_CALL_PATH, Emulator
from tests.conftest import conn_json
from tests.integration.dial_workers import FakeTI

KEY = "adaptive-key-1f2e3d4c"
AGENT = "agent-1"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CallStore]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("AIRFLOW__VONAGE_STUDIO__STORE_URL", url)
    opened = CallStore(url)
    yield opened
    opened.dispose()
    CallStore._clear_default_cache(url)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(api_keys=(KEY,), agents=(AGENT,), calls_per_second=1) as running:
        yield running


def _statuses(emulator: Emulator) -> Counter[int | None]:
    return Counter(r.status for r in emulator.requests if r.path == MAKE_CALL_PATH)


def test_no_call_ends_rate_limited_while_the_pacer_is_in_use(
    emulator: Emulator, store: CallStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection claims 5 calls/s, the agent is granted 1: AI Studio answers 429s. Only two
    # attempts per request are allowed, yet every call is placed once: under the pacer a 429
    # widens the shared spacing and the call waits for a new slot, it is never given up.
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json(calls_per_second=5))
    monkeypatch.setattr(
        MakeCallsOperator, "hook", property(lambda self: VonageStudioHook(max_attempts=2, retry_backoff=0.01))
    )
    numbers = [f"44770090030{n}" for n in range(5)]
    context: dict[str, Any] = {"ti": FakeTI("adaptive_dag", "manual__429", "calls", -1)}
    results = MakeCallsOperator(task_id="calls", recipients=numbers, agent_id=AGENT).execute(context)  # type: ignore[arg-type]

    assert [r["result"] for r in results] == ["placed"] * len(numbers)
    assert sorted(c.to for c in emulator.calls) == numbers  # each exactly once
    assert _statuses(emulator)[429] >= 1  # it did hit the limit, and widened the spacing
    state = store.pacing_state(VonageStudioHook().pacing_key(AGENT))
    assert state is not None and state.factor > 1.0


def test_the_time_bound_leaves_the_call_queued_and_a_later_try_dials_it_once(
    emulator: Emulator, store: CallStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VONAGE_STUDIO_DEFAULT", emulator.connection_json())
    number = "447700900310"
    emulator.inject("429", count=3, to=number)
    hook = VonageStudioHook(store=store, max_rate_limited_seconds=0.5)
    with pytest.raises(VonageStudioRateLimited, match="max_rate_limited_seconds") as info:
        hook.make_call(number, AGENT, call_ref="vs-bound")
    assert info.value.retryable
    record = store.get_call("vs-bound")
    assert record is not None and record.state is CallState.QUEUED  # not placed, not given up
    assert record.error_status == 429
    assert emulator.calls == []

    # The task's next try dials it (through the last injected 429), exactly once.
    result = VonageStudioHook(store=store).make_call(number, AGENT, call_ref="vs-bound")
    assert [c.session_id for c in emulator.calls] == [result.session_id]
    assert store.get_call("vs-bound").state is CallState.PLACED  # type: ignore[union-attr]


def test_the_margin_spaces_slots_and_defaults_to_a_small_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VS_M", conn_json(calls_per_second=3, pacing_margin=0.1))
    assert VonageStudioHook("vs_m").pacing_interval() == pytest.approx(1 / 3 * 1.1)
    monkeypatch.setenv("AIRFLOW_CONN_VS_M", conn_json(calls_per_second=1, pacing_margin="0"))
    assert VonageStudioHook("vs_m").pacing_interval() == 1.0
    monkeypatch.setenv("AIRFLOW_CONN_VS_M", conn_json())
    assert VonageStudioHook("vs_m").config.pacing_margin == DEFAULT_PACING_MARGIN
    assert 0 < DEFAULT_PACING_MARGIN < 0.05  # >= 0.95 of the allowed rate stays reachable


@pytest.mark.parametrize(
    "bad", [True, False, "lots", math.nan, math.inf, -0.01, 1.5, [0.1], {"m": 1}, None, "nan"]
)
def test_a_bad_pacing_margin_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch, bad: Any) -> None:
    raw = conn_json(pacing_margin=bad) if not (isinstance(bad, float) and not math.isfinite(bad)) else None
    if raw is None:  # JSON has no NaN/Infinity literals; Airflow's extra parser takes Python's
        raw = conn_json().replace(
            '"extra": {}', f'"extra": {{"pacing_margin": {"NaN" if math.isnan(bad) else "Infinity"}}}'
        )
    monkeypatch.setenv("AIRFLOW_CONN_VS_M", raw)
    with pytest.raises(VonageStudioConfigError, match="extra 'pacing_margin'"):
        VonageStudioHook("vs_m").config  # noqa: B018
