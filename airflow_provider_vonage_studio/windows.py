"""Calling windows: the local hours in which a callee may be phoned.

A window is a pair of local wall-clock times ``(start, end)``, start included and end
excluded, in the callee's time zone; ``("20:00", "02:00")`` crosses midnight. Asked for
without times, a window is 08:00-21:00 (the US TCPA hours; stricter local rules are the
DAG author's to set).

Everything is computed on wall-clock time with :mod:`zoneinfo`, so daylight-saving
switches are handled: a window that opens at 08:00 opens at 08:00 local time on the day
the clocks change too, and a window whose start falls into the hour skipped in spring
opens when the clocks jump.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

__all__ = [
    "DEFAULT_CALLING_WINDOW",
    "WINDOW_CLOSING_MARGIN",
    "check_zone",
    "dial_window_opening",
    "next_window_open",
    "parse_calling_window",
    "recipient_timezone",
]

#: The window used when one is asked for without times (``True`` or ``()``).
DEFAULT_CALLING_WINDOW: tuple[time, time] = (time(8, 0), time(21, 0))

_TIME_RE = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?")
_WINDOW_RULE = 'give a pair of local times ("08:00", "21:00"), True for 08:00-21:00, or None for no window'

# The next opening is at most about a day away; look a few days ahead so that days made
# shorter or longer by clock changes (or skipped entirely, as Samoa did in 2011) are covered.
_LOOKAHEAD_DAYS = 4
# Offsets are sampled this far apart to find clock changes: no zone changes its offset
# twice within six hours, so one change between two samples is found by bisection.
_SCAN_STEP = timedelta(hours=6)


def parse_calling_window(
    window: tuple[str, str] | Sequence[str | time] | str | bool | None,
) -> tuple[time, time] | None:
    """Return ``window`` as ``(start, end)`` local times, or ``None`` for no window.

    Accepts ``None``/``False`` (no window), ``True`` or an empty tuple/list (08:00-21:00),
    or a pair of ``"HH:MM"`` / ``"HH:MM:SS"`` strings or naive :class:`datetime.time`
    objects (a list is fine too: Airflow turns tuples into lists when it serialises), or
    one ``"HH:MM-HH:MM"`` string (handy from an environment variable or a DAG param).
    ``end`` before ``start`` means the window crosses midnight.

    :raises VonageStudioConfigError: naming ``calling_window``, when the value has another
        shape, a time is malformed or has a time zone, or start equals end.
    """
    if window is None or window is False:
        return None
    if window is True:
        return DEFAULT_CALLING_WINDOW
    if isinstance(window, str) and window.count("-") == 1:
        window = tuple(part.strip() for part in window.split("-"))
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence):
        raise VonageStudioConfigError(f"calling_window {window!r} is not a pair of times: {_WINDOW_RULE}")
    if len(window) == 0:
        return DEFAULT_CALLING_WINDOW
    if len(window) != 2:
        raise VonageStudioConfigError(
            f"calling_window {window!r} has {len(window)} items, not 2 (start, end): {_WINDOW_RULE}"
        )
    start = _parse_time(window[0], "start")
    end = _parse_time(window[1], "end")
    if start == end:
        raise VonageStudioConfigError(
            f"calling_window start and end are both {start.isoformat()}: an empty (or 24-hour) window "
            f"is ambiguous; {_WINDOW_RULE}"
        )
    return start, end


def next_window_open(
    now: datetime,
    window: tuple[time, time] | tuple[str, str] | None,
    tz: str,
) -> datetime | None:
    """Return when ``window`` next opens in zone ``tz``, or ``None`` if it is open at ``now``.

    ``now`` must be timezone-aware. ``window`` is a ``(start, end)`` pair as returned by
    :func:`parse_calling_window` (anything that function accepts is accepted; ``None``
    means no window, so it is always open). ``tz`` is an IANA zone name such as
    ``"Europe/London"``. The result is the first instant after ``now`` at which the
    local wall-clock time is inside the window, as an aware UTC datetime.

    :raises VonageStudioConfigError: naming ``now`` when it is naive, ``calling_window``
        when the window is malformed, or ``timezone`` when ``tz`` is not a known zone.
    """
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise VonageStudioConfigError(f"now must be a timezone-aware datetime, got {now!r}")
    # Validates an already parsed pair too (naive times, start != end).
    parsed = parse_calling_window(window)
    if parsed is None:
        return None
    start, end = parsed
    zone = _zone(tz)

    def inside(instant: datetime) -> bool:
        wall = instant.astimezone(zone).time()
        if start < end:
            return start <= wall < end
        return wall >= start or wall < end

    now_utc = now.astimezone(timezone.utc)
    if inside(now_utc):
        return None

    # Outside now. Whether the window is open only changes when the wall clock reaches
    # `start` (or `end`) or jumps at a clock change, so the opening is the earliest of
    # these instants after `now` at which the window is open:
    #  - `start` on each nearby local day, at both readings of a repeated hour (fold 0
    #    and 1; for a time skipped in spring both readings land beside the gap);
    #  - every clock change, which covers a `start` inside the skipped hour (the window
    #    opens when the clocks jump past it) and a clock set back into the window.
    today = now_utc.astimezone(zone).date()
    # Converted to UTC before comparing: ordering datetimes of different zones around a
    # repeated hour is easy to get subtly wrong.
    candidates = [
        datetime.combine(today + timedelta(days=days), start, tzinfo=zone)
        .replace(fold=fold)
        .astimezone(timezone.utc)
        for days in range(-1, _LOOKAHEAD_DAYS)
        for fold in (0, 1)
    ]
    candidates.extend(_offset_changes(zone, now_utc, now_utc + timedelta(days=_LOOKAHEAD_DAYS)))
    opening = min((c for c in candidates if c > now_utc and inside(c)), default=None)
    if opening is None:  # pragma: no cover - a daily window always opens within the lookahead
        raise RuntimeError(
            f"calling_window {start}-{end} does not open within {_LOOKAHEAD_DAYS} days in {tz}"
        )
    return opening


def _parse_time(value: object, which: str) -> time:
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise VonageStudioConfigError(
                f"calling_window {which} {value} must be a local time without tzinfo"
            )
        return value
    if isinstance(value, str):
        match = _TIME_RE.fullmatch(value.strip())
        if match:
            hours, minutes, seconds = match.groups()
            return time(int(hours), int(minutes), int(seconds or 0))
        hint = ' (use "23:59" for the end of the day)' if value.strip().startswith("24") else ""
        raise VonageStudioConfigError(
            f'calling_window {which} {value!r} is not a time "HH:MM" from 00:00 to 23:59{hint}: '
            f"{_WINDOW_RULE}"
        )
    raise VonageStudioConfigError(
        f'calling_window {which} must be a str "HH:MM" or a datetime.time, got {type(value).__name__}: '
        f"{_WINDOW_RULE}"
    )


def _zone(tz: str) -> tzinfo:
    """Return the ZoneInfo for ``tz`` or raise naming ``timezone``."""
    if isinstance(tz, str) and tz.strip():
        try:
            return ZoneInfo(tz.strip())
        # ValueError: malformed keys ("../x"); OSError: a directory such as "America".
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise VonageStudioConfigError(
        f"timezone {tz!r} is not a known IANA time zone name (e.g. 'Europe/London', 'America/New_York')"
    )


def _offset_changes(zone: tzinfo, begin: datetime, end: datetime) -> list[datetime]:
    """Return the instants (aware UTC) in ``[begin, end]`` at which ``zone`` changes offset."""
    # Whole epoch seconds: clock changes happen on whole seconds, so bisection ends exactly
    # on the first second with the new offset.
    step = int(_SCAN_STEP.total_seconds())
    lo_bound = int(begin.timestamp())
    hi_bound = int(end.timestamp()) + 1

    def offset(epoch: int) -> timedelta | None:
        return datetime.fromtimestamp(epoch, timezone.utc).astimezone(zone).utcoffset()

    changes = []
    left = lo_bound
    left_offset = offset(left)
    while left < hi_bound:
        right = min(left + step, hi_bound)
        right_offset = offset(right)
        if right_offset != left_offset:
            lo, hi = left, right
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == left_offset:
                    lo = mid
                else:
                    hi = mid
            changes.append(datetime.fromtimestamp(hi, timezone.utc))
        left, left_offset = right, right_offset
    return changes


# ------------------------------------------------------------ when a batch may dial a callee


#: A dial starts only when the calling window is still open this much later: pacing waits
#: and the hook's retries happen after the check and must not carry the call past the end.
WINDOW_CLOSING_MARGIN = timedelta(seconds=60)


def check_zone(name: Any, field_name: str) -> None:
    """Check that ``name`` is a known IANA zone.

    :raises VonageStudioConfigError: naming ``field_name``, for anything else.
    """
    if isinstance(name, str) and name.strip():
        try:
            ZoneInfo(name.strip())
            return
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise VonageStudioConfigError(
        f"{field_name}: {name!r} is not a known IANA time zone name "
        "(e.g. 'Europe/London', 'America/New_York')"
    )


def recipient_timezone(destination: str | None, explicit: str | None, fallback: str) -> str:
    """The zone a callee's calling window is read in: ``explicit`` when given, else the one
    zone ``phonenumbers`` knows for the number, else ``fallback``."""
    if explicit:
        return explicit
    if destination:
        from airflow_provider_vonage_studio.destinations import timezone_for_number

        zone = timezone_for_number(destination)
        if zone:
            return zone
    return fallback


def dial_window_opening(
    now: datetime,
    window: tuple[time, time] | None,
    tz: str,
    *,
    margin: timedelta = WINDOW_CLOSING_MARGIN,
) -> datetime | None:
    """``None`` when a dial may start at ``now``, else when it may (aware UTC).

    A dial may start when ``now`` is inside the window in zone ``tz`` and the window is
    still open ``margin`` later (so that a pacing wait or a retry cannot carry the call past
    the end); otherwise the answer is the window's next opening. The margin is capped at a
    quarter of the window's length, so a short window still gets calls.

    :raises VonageStudioConfigError: ``now`` is naive, ``tz`` is not a known zone.
    """
    if window is None:
        return None
    opening = next_window_open(now, window, tz)
    if opening is not None:
        return opening
    margin = min(margin, _window_length(window) / 4)
    if margin > timedelta(0):
        later = next_window_open(now + margin, window, tz)
        if later is not None:  # closes within the margin: wait for the next opening
            return later
    return None


def _window_length(window: tuple[time, time]) -> timedelta:
    start, end = window

    def seconds(t: time) -> int:
        return t.hour * 3600 + t.minute * 60 + t.second

    return timedelta(seconds=(seconds(end) - seconds(start)) % 86400)
