"""Unit and property tests for calling windows."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError
from airflow_provider_vonage_studio.windows import (
    DEFAULT_CALLING_WINDOW,
    dial_window_opening,
    next_window_open,
    parse_calling_window,
    recipient_timezone,
)

UTC = timezone.utc
NY = "America/New_York"
FAST = settings(max_examples=200, deadline=None)
DAY = (time(8), time(21))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- parse_calling_window -----------------------------------------------------------


@pytest.mark.parametrize("value", [None, False])
def test_no_window(value: Any) -> None:
    assert parse_calling_window(value) is None


@pytest.mark.parametrize("value", [True, (), []])
def test_default_window(value: Any) -> None:
    assert parse_calling_window(value) == DEFAULT_CALLING_WINDOW == (time(8, 0), time(21, 0))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (("08:00", "21:00"), (time(8), time(21))),
        (["9:30", "17:45"], (time(9, 30), time(17, 45))),  # a list, as after serialisation
        ((" 07:05 ", "23:59:30"), (time(7, 5), time(23, 59, 30))),
        (("20:00", "02:00"), (time(20), time(2))),  # crosses midnight
        (("00:00", "23:59"), (time(0), time(23, 59))),
        ((time(8), time(21)), (time(8), time(21))),
        ((time(8), "21:00"), (time(8), time(21))),
        ("08:00-21:00", (time(8), time(21))),  # one string, e.g. from an environment variable
        (" 20:00 - 02:00 ", (time(20), time(2))),
    ],
)
def test_parse_pairs(value: Any, expected: tuple[time, time]) -> None:
    assert parse_calling_window(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("08:00", "not a pair"),
        ("08:00-12:00-21:00", "not a pair"),
        ("08:00-", "''"),
        (b"08:00", "not a pair"),
        (8, "not a pair"),
        ({"start": "08:00"}, "not a pair"),
        (("08:00",), "1 items"),
        (("08:00", "12:00", "21:00"), "3 items"),
        (("8", "21:00"), "'8'"),
        (("08:00", "24:00"), "23:59"),
        (("25:00", "21:00"), "'25:00'"),
        (("08:60", "21:00"), "'08:60'"),
        (("8am", "9pm"), "'8am'"),
        (("", "21:00"), "''"),
        ((8, 21), "got int"),
        ((None, "21:00"), "got NoneType"),
        (("08:00", "08:00"), "both 08:00"),
        ((time(8), time(8)), "both 08:00"),
        ((time(8, tzinfo=UTC), time(21)), "without tzinfo"),
    ],
)
def test_bad_windows_name_calling_window(value: Any, fragment: str) -> None:
    with pytest.raises(VonageStudioConfigError) as info:
        parse_calling_window(value)
    assert "calling_window" in str(info.value)
    assert fragment in str(info.value)


# --- next_window_open: basics -------------------------------------------------------


def test_inside_returns_none() -> None:
    # 15:00 UTC = 10:00 in New York (EST, winter).
    assert next_window_open(utc(2026, 1, 15, 15, 0), DAY, NY) is None


def test_start_is_inside_and_end_is_outside() -> None:
    assert next_window_open(utc(2026, 1, 15, 13, 0), DAY, NY) is None  # 08:00 EST sharp
    assert next_window_open(utc(2026, 1, 16, 2, 0), DAY, NY) == utc(2026, 1, 16, 13, 0)  # 21:00 EST sharp


def test_before_opening_same_day() -> None:
    # 11:00 UTC = 06:00 EST -> opens 08:00 EST = 13:00 UTC.
    assert next_window_open(utc(2026, 1, 15, 11, 0), DAY, NY) == utc(2026, 1, 15, 13, 0)


def test_after_closing_opens_next_day() -> None:
    # 03:00 UTC on the 16th = 22:00 EST on the 15th -> opens the 16th 08:00 EST.
    assert next_window_open(utc(2026, 1, 16, 3, 0), DAY, NY) == utc(2026, 1, 16, 13, 0)


def test_result_is_aware_utc_for_any_aware_now() -> None:
    now = datetime(2026, 1, 15, 6, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 2026-01-14 21:00 UTC
    opening = next_window_open(now, DAY, "Europe/London")
    assert opening == utc(2026, 1, 15, 8, 0)
    assert opening is not None
    assert opening.tzinfo is UTC


def test_accepts_unparsed_windows() -> None:
    now = utc(2026, 1, 15, 11, 0)
    assert next_window_open(now, ("08:00", "21:00"), NY) == utc(2026, 1, 15, 13, 0)
    assert next_window_open(now, True, NY) == utc(2026, 1, 15, 13, 0)  # type: ignore[arg-type]
    assert next_window_open(now, None, NY) is None  # no window: always open


def test_seconds_in_window_times() -> None:
    now = utc(2026, 1, 15, 13, 0, 0)
    assert next_window_open(now, (time(8, 0, 30), time(21)), NY) == utc(2026, 1, 15, 13, 0, 30)


def test_zone_ahead_of_utc_date_boundary() -> None:
    # 23:30 UTC on the 14th is already 08:30 on the 15th in Tokyo: inside.
    assert next_window_open(utc(2026, 1, 14, 23, 30), DAY, "Asia/Tokyo") is None
    # 12:30 UTC = 21:30 in Tokyo -> opens 08:00 JST the next day = 23:00 UTC today.
    assert next_window_open(utc(2026, 1, 15, 12, 30), DAY, "Asia/Tokyo") == utc(2026, 1, 15, 23, 0)


def test_half_hour_offset_zone() -> None:
    # India is UTC+05:30: 08:00 IST = 02:30 UTC.
    assert next_window_open(utc(2026, 1, 15, 1, 0), DAY, "Asia/Kolkata") == utc(2026, 1, 15, 2, 30)


# --- crossing midnight --------------------------------------------------------------

NIGHT = (time(20), time(2))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 1, 16, 1, 0), None),  # 20:00 EST
        (utc(2026, 1, 16, 4, 0), None),  # 23:00 EST
        (utc(2026, 1, 16, 5, 0), None),  # 00:00 EST
        (utc(2026, 1, 16, 6, 59), None),  # 01:59 EST
        (utc(2026, 1, 16, 7, 0), utc(2026, 1, 17, 1, 0)),  # 02:00 EST: closed until 20:00
        (utc(2026, 1, 16, 15, 0), utc(2026, 1, 17, 1, 0)),  # 10:00 EST
        (utc(2026, 1, 17, 0, 59), utc(2026, 1, 17, 1, 0)),  # 19:59 EST
    ],
)
def test_window_crossing_midnight(now: datetime, expected: datetime | None) -> None:
    assert next_window_open(now, NIGHT, NY) == expected


# --- daylight saving time (America/New_York) ----------------------------------------
# 2026-03-08: 02:00 EST -> 03:00 EDT (07:00 UTC). 2026-11-01: 02:00 EDT -> 01:00 EST (06:00 UTC).


def test_spring_forward_day_opens_at_local_eight() -> None:
    # 06:00 UTC = 01:00 EST; 08:00 that day is EDT (UTC-4) = 12:00 UTC, not 13:00.
    assert next_window_open(utc(2026, 3, 8, 6, 0), DAY, NY) == utc(2026, 3, 8, 12, 0)


def test_evening_before_spring_forward() -> None:
    # 02:30 UTC on the 8th = 21:30 EST on the 7th -> 08:00 EDT on the 8th.
    assert next_window_open(utc(2026, 3, 8, 2, 30), DAY, NY) == utc(2026, 3, 8, 12, 0)


def test_fall_back_day_opens_at_local_eight() -> None:
    # 05:30 UTC = 01:30 EDT; 08:00 that day is EST (UTC-5) = 13:00 UTC.
    assert next_window_open(utc(2026, 11, 1, 5, 30), DAY, NY) == utc(2026, 11, 1, 13, 0)


def test_evening_before_fall_back() -> None:
    # 02:00 UTC on Nov 1 = 22:00 EDT on Oct 31 -> 08:00 EST on Nov 1.
    assert next_window_open(utc(2026, 11, 1, 2, 0), DAY, NY) == utc(2026, 11, 1, 13, 0)


def test_closing_on_dst_days_follows_local_time() -> None:
    # 21:00 EDT on Mar 8 = 01:00 UTC Mar 9: closed then.
    assert next_window_open(utc(2026, 3, 9, 0, 59), DAY, NY) is None
    assert next_window_open(utc(2026, 3, 9, 1, 0), DAY, NY) == utc(2026, 3, 9, 12, 0)
    # 21:00 EST on Nov 1 = 02:00 UTC Nov 2.
    assert next_window_open(utc(2026, 11, 2, 1, 59), DAY, NY) is None
    assert next_window_open(utc(2026, 11, 2, 2, 0), DAY, NY) == utc(2026, 11, 2, 13, 0)


def test_start_inside_skipped_hour_opens_when_clocks_jump() -> None:
    # 02:30 does not exist on Mar 8: the window opens at 03:00 EDT (07:00 UTC), the
    # first instant whose local time is past 02:30.
    assert next_window_open(utc(2026, 3, 8, 6, 0), (time(2, 30), time(5)), NY) == utc(2026, 3, 8, 7, 0)
    assert next_window_open(utc(2026, 3, 8, 7, 0), (time(2, 30), time(5)), NY) is None


def test_start_inside_repeated_hour_opens_at_first_occurrence() -> None:
    # 01:30 happens twice on Nov 1: first at 05:30 UTC (EDT).
    assert next_window_open(utc(2026, 11, 1, 4, 0), (time(1, 30), time(5)), NY) == utc(2026, 11, 1, 5, 30)


def test_clock_set_back_into_window_reopens_it() -> None:
    # Window 20:00-01:30. At 01:45 EDT (05:45 UTC) it is closed; at 06:00 UTC the clocks
    # go back to 01:00 EST, inside the window again by the local clock.
    assert next_window_open(utc(2026, 11, 1, 5, 45), (time(20), time(1, 30)), NY) == utc(2026, 11, 1, 6, 0)
    assert next_window_open(utc(2026, 11, 1, 6, 10), (time(20), time(1, 30)), NY) is None
    # ...and closes again at 01:30 EST = 06:30 UTC.
    assert next_window_open(utc(2026, 11, 1, 6, 30), (time(20), time(1, 30)), NY) == utc(2026, 11, 2, 1, 0)


def test_southern_hemisphere_dst() -> None:
    # Sydney 2026-04-05: 03:00 AEDT -> 02:00 AEST. 08:00 AEST (UTC+10) = 22:00 UTC Apr 4.
    assert next_window_open(utc(2026, 4, 4, 15, 0), DAY, "Australia/Sydney") == utc(2026, 4, 4, 22, 0)


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tz", ["Mars/Olympus_Mons", "", "   ", "America", "../etc/passwd", "Europe/Londres", None, 5]
)
def test_unknown_timezone_names_timezone(tz: Any) -> None:
    with pytest.raises(VonageStudioConfigError, match="timezone") as info:
        next_window_open(utc(2026, 1, 15, 3, 0), DAY, tz)
    assert "calling_window" not in str(info.value)


def test_timezone_is_checked_even_inside_the_window() -> None:
    with pytest.raises(VonageStudioConfigError, match="timezone"):
        next_window_open(utc(2026, 1, 15, 15, 0), DAY, "No/Such_Zone")


def test_naive_now_is_refused() -> None:
    with pytest.raises(VonageStudioConfigError, match="now"):
        next_window_open(datetime(2026, 1, 15, 15, 0), DAY, NY)


@pytest.mark.parametrize("window", [("08:00", "08:00"), ("x", "21:00"), "08:00", (time(8),)])
def test_bad_window_in_next_window_open_names_calling_window(window: Any) -> None:
    with pytest.raises(VonageStudioConfigError, match="calling_window"):
        next_window_open(utc(2026, 1, 15, 15, 0), window, NY)


# --- properties ---------------------------------------------------------------------

ZONES = ["America/New_York", "Europe/London", "Australia/Sydney", "Asia/Kolkata", "Pacific/Chatham", "UTC"]
times = st.times().map(lambda t: t.replace(microsecond=0))


def _inside(instant: datetime, start: time, end: time, zone: str) -> bool:
    wall = instant.astimezone(ZoneInfo(zone)).time()
    return start <= wall < end if start < end else (wall >= start or wall < end)


@FAST
@given(
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)),
    times,
    times,
    st.sampled_from(ZONES),
)
def test_opening_is_the_first_instant_inside(now: datetime, start: time, end: time, zone: str) -> None:
    if start == end:
        return
    opening = next_window_open(now, (start, end), zone)
    if opening is None:
        assert _inside(now, start, end, zone)
        return
    assert not _inside(now, start, end, zone)
    assert opening > now
    assert opening.tzinfo is UTC
    assert _inside(opening, start, end, zone)
    # Closed all the way up to the opening (sampled every minute, and just before it).
    probe = now
    while probe < opening - timedelta(seconds=1):
        assert not _inside(probe, start, end, zone)
        probe += timedelta(minutes=1)
    assert not _inside(opening - timedelta(seconds=1), start, end, zone)
    assert opening - now <= timedelta(hours=26)


def _transitions(zone: str, year: int) -> list[datetime]:
    """Hour-precision instants at which ``zone`` changes its UTC offset during ``year``."""
    info = ZoneInfo(zone)
    found = []
    instant = datetime(year, 1, 1, tzinfo=UTC)
    previous = instant.astimezone(info).utcoffset()
    while instant.year == year:
        instant += timedelta(hours=1)
        offset = instant.astimezone(info).utcoffset()
        if offset != previous:
            found.append(instant)
        previous = offset
    return found


DST_ZONES = ["America/New_York", "Europe/London", "Australia/Sydney", "Pacific/Chatham"]
NEAR_DST = [(zone, instant) for zone in DST_ZONES for instant in _transitions(zone, 2026)]
TRICKY_TIMES = [time(h, m) for h in (0, 1, 2, 3, 4) for m in (0, 30, 45)]


def test_dst_zones_have_transitions() -> None:
    assert len(NEAR_DST) == 2 * len(DST_ZONES)


@FAST
@given(
    st.sampled_from(NEAR_DST),
    st.integers(min_value=-30 * 60, max_value=30 * 60),
    st.one_of(times, st.sampled_from(TRICKY_TIMES)),
    st.one_of(times, st.sampled_from(TRICKY_TIMES)),
)
def test_opening_near_dst_switches(near: tuple[str, datetime], minutes: int, start: time, end: time) -> None:
    zone, switch = near
    now = switch + timedelta(minutes=minutes)
    if start == end:
        return
    opening = next_window_open(now, (start, end), zone)
    if opening is None:
        assert _inside(now, start, end, zone)
        return
    assert opening > now
    assert _inside(opening, start, end, zone)
    probe = now
    while probe < opening:
        assert not _inside(probe, start, end, zone)
        probe += timedelta(minutes=1)
    # The switch itself is a probe point too: a window reopened by the clock going back
    # must be reported at the switch, not later.
    if now < switch < opening:
        assert not _inside(switch, start, end, zone)
    assert not _inside(opening - timedelta(seconds=1), start, end, zone)


WINDOW = (time(9, 0), time(20, 0))


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# --- dial_window_opening (moved here from batch) -----------------------------------------------


def test_window_open_closed_and_next_opening_with_an_injected_now():
    # 10:00 in London (BST, UTC+1) is inside 09:00-20:00.
    assert dial_window_opening(_utc(2026, 6, 1, 9, 0), WINDOW, "Europe/London") is None
    # 06:00 in London: opens at 09:00 local = 08:00 UTC the same day.
    assert dial_window_opening(_utc(2026, 6, 1, 5, 0), WINDOW, "Europe/London") == _utc(2026, 6, 1, 8, 0)
    # 22:00 in New York (EDT, UTC-4): opens the next morning at 13:00 UTC.
    assert dial_window_opening(_utc(2026, 6, 2, 2, 0), WINDOW, "America/New_York") == _utc(2026, 6, 2, 13, 0)
    assert dial_window_opening(_utc(2026, 6, 1, 5, 0), None, "Europe/London") is None


def test_no_dial_starts_in_the_last_minute_of_a_window():
    # 19:59:30 London: the window is still open but closes within the margin -> next morning.
    now = _utc(2026, 6, 1, 18, 59, 30)
    assert dial_window_opening(now, WINDOW, "Europe/London") == _utc(2026, 6, 2, 8, 0)
    assert dial_window_opening(now, WINDOW, "Europe/London", margin=timedelta(0)) is None
    # A window shorter than four margins still gets calls (the margin shrinks with it).
    short = (time(9, 0), time(9, 2))
    assert dial_window_opening(_utc(2026, 1, 5, 9, 0, 10), short, "UTC") is None


def test_dial_window_crossing_midnight():
    night = (time(22, 0), time(2, 0))
    assert dial_window_opening(_utc(2026, 1, 5, 23, 30), night, "UTC") is None
    assert dial_window_opening(_utc(2026, 1, 5, 3, 0), night, "UTC") == _utc(2026, 1, 5, 22, 0)


def test_recipient_timezone_explicit_then_inferred_then_fallback():
    assert recipient_timezone("447700900123", "Asia/Tokyo", "UTC") == "Asia/Tokyo"
    assert recipient_timezone("442079460123", None, "UTC") == "Europe/London"
    assert recipient_timezone("447700900123", None, "UTC") == "UTC"  # UK mobiles span several zones
    assert recipient_timezone(None, None, "UTC") == "UTC"


def test_window_names_stay_importable_from_batch():
    from airflow_provider_vonage_studio import batch, windows

    assert batch.dial_window_opening is windows.dial_window_opening
    assert batch.recipient_timezone is windows.recipient_timezone
    assert batch.WINDOW_CLOSING_MARGIN is windows.WINDOW_CLOSING_MARGIN
