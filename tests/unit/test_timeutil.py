"""The one datetime normaliser, ``timeutil.to_utc``: every form Airflow, templates, users and the
API hand the provider becomes the same aware stdlib UTC instant (property tests with hypothesis),
and anything else is refused naming the field."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pendulum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.hooks.vonage_studio import INSIGHTS_MAX_RANGE, parse_api_time
from airflow_provider_vonage_studio.timeutil import is_date_only, to_utc

ZONES = [
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "America/New_York",
    "America/St_Johns",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
]

# Instants well inside datetime's range, so a +14:00 offset or 60 days more never overflow.
instants = st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2199, 12, 31)).map(
    lambda naive: naive.replace(tzinfo=timezone.utc)
)
fixed_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


def _forms(instant: datetime, zone: str, offset: timezone) -> dict[str, object]:
    """The same instant as every kind of value the provider is handed."""
    wall_utc = instant.replace(tzinfo=None)
    in_pendulum = pendulum.instance(instant)
    return {
        "stdlib aware UTC": instant,
        "stdlib aware zoneinfo": instant.astimezone(ZoneInfo(zone)),
        "stdlib aware fixed offset": instant.astimezone(offset),
        "stdlib naive (UTC)": wall_utc,
        "pendulum UTC": in_pendulum,
        "pendulum in a zone": in_pendulum.in_timezone(zone),
        # What the reported bug built: pendulum carrying stdlib timezone.utc, which loses its
        # tzinfo on `+ timedelta` under pendulum 3.3.
        "pendulum astimezone(timezone.utc)": in_pendulum.astimezone(timezone.utc),
        "ISO string with offset": instant.astimezone(offset).isoformat(),
        "ISO string in a zone, space separated": instant.astimezone(ZoneInfo(zone)).isoformat(sep=" "),
        "ISO string with Z": wall_utc.isoformat() + "Z",
        "ISO string naive (UTC)": wall_utc.isoformat(),
        "rendered template": str(in_pendulum.in_timezone(zone)),
    }


def _check_aware_utc(value: datetime) -> None:
    assert type(value) is datetime  # a plain stdlib datetime, never pendulum
    assert value.tzinfo is timezone.utc


@settings(max_examples=300, deadline=None)
@given(instant=instants, zone=st.sampled_from(ZONES), offset=fixed_offsets)
def test_every_form_of_an_instant_normalises_to_the_same_aware_utc_datetime(instant, zone, offset):
    for name, value in _forms(instant, zone, offset).items():
        result = to_utc(value, field="from_date")
        _check_aware_utc(result)
        assert result == instant, name
        # What the hook does with bounds: add the 60-day window, compare, subtract.
        later = result + INSIGHTS_MAX_RANGE
        _check_aware_utc(later)
        assert min(later, to_utc(instant + timedelta(days=61), field="to_date")) == later
        assert later - result == INSIGHTS_MAX_RANGE
        assert (result - timedelta(days=1)).tzinfo is timezone.utc


@settings(max_examples=200, deadline=None)
@given(day=st.dates(min_value=date(1901, 1, 1), max_value=date(2199, 12, 31)))
def test_a_date_in_any_form_means_its_midnight_utc(day):
    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    for value in (day, pendulum.date(day.year, day.month, day.day), day.isoformat()):
        result = to_utc(value, field="session_start_time")
        _check_aware_utc(result)
        assert result == midnight
        assert result + timedelta(days=1) > result
        assert is_date_only(value)


@settings(max_examples=100, deadline=None)
@given(instant=instants, zone=st.sampled_from(ZONES), offset=fixed_offsets)
def test_normalising_twice_changes_nothing(instant, zone, offset):
    for value in _forms(instant, zone, offset).values():
        once = to_utc(value, field="x")
        assert to_utc(once, field="x") == once
        assert to_utc(once.isoformat(), field="x") == once
        assert not is_date_only(value)


def test_the_reported_pendulum_bug_is_gone():
    start = pendulum.datetime(2026, 3, 10, tz="UTC")
    # The cause: under pendulum 3.3, start.astimezone(timezone.utc) + timedelta(days=60) is naive.
    fixed = to_utc(start, field="from_date") + timedelta(days=60)
    assert fixed == datetime(2026, 5, 9, tzinfo=timezone.utc)
    assert fixed.tzinfo is timezone.utc


def test_api_timestamps_use_the_same_normaliser():
    assert parse_api_time("2020-10-14T09:42:07.151657") == datetime(
        2020, 10, 14, 9, 42, 7, 151657, tzinfo=timezone.utc
    )
    with pytest.raises(ValueError, match="session_start_time"):
        parse_api_time("not a time")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(None, "is required", id="none"),
        pytest.param(True, "got bool", id="bool"),
        pytest.param(1773100800, "got int", id="epoch-int"),
        pytest.param(1773100800.5, "got float", id="epoch-float"),
        pytest.param(math.nan, "got float", id="nan"),
        pytest.param(math.inf, "got float", id="infinity"),
        pytest.param(Decimal("1773100800"), "got Decimal", id="decimal"),
        pytest.param(["2026-03-10"], "got list", id="list"),
        pytest.param(timedelta(days=1), "got timedelta", id="timedelta"),
        pytest.param("", "empty string", id="empty"),
        pytest.param("   ", "empty string", id="blank"),
        pytest.param("yesterday", "'yesterday' is not an ISO-8601", id="word"),
        pytest.param("2026-02-30", "is not an ISO-8601", id="impossible-day"),
        pytest.param("2026-03-10T25:00:00", "is not an ISO-8601", id="impossible-hour"),
        pytest.param("nan", "is not an ISO-8601", id="nan-string"),
        pytest.param("{{ data_interval_start }}", "is not an ISO-8601", id="unrendered-template"),
    ],
)
def test_anything_else_is_refused_naming_the_field(value, problem):
    with pytest.raises(VonageStudioConfigError, match="to_date") as info:
        to_utc(value, field="to_date")
    assert problem in str(info.value)


def test_a_long_garbage_string_is_shortened_in_the_message():
    with pytest.raises(VonageStudioConfigError) as info:
        to_utc("x" * 500, field="from_date")
    assert len(str(info.value)) < 120


def test_out_of_range_after_conversion_is_a_clear_error():
    earliest = datetime.min.replace(tzinfo=timezone(timedelta(hours=2)))
    with pytest.raises(VonageStudioConfigError, match="from_date is out of range"):
        to_utc(earliest, field="from_date")
