"""The one place where datetimes handed to the provider become aware UTC ``datetime`` values.

Airflow gives tasks pendulum ``DateTime`` values (data intervals, logical dates), templates
render them as ISO-8601 strings, users pass stdlib datetimes (aware or naive) or dates, and
AI Studio answers with naive ISO timestamps meaning UTC. Everything that compares, adds to or
sends such a value first passes it through :func:`to_utc`, so mixing them can never raise
"can't compare offset-naive and offset-aware datetimes".

Standard library only: imported at DAG-parse time by the operators module.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from airflow_provider_vonage_studio.exceptions import VonageStudioConfigError

__all__ = ["is_date_only", "to_utc"]


def to_utc(value: Any, *, field: str) -> datetime:
    """``value`` as an aware stdlib ``datetime`` in UTC (``tzinfo is timezone.utc``).

    Accepted: a ``datetime`` of any kind (stdlib or a subclass such as pendulum's ``DateTime``;
    naive means UTC), a ``date`` (its midnight UTC), or an ISO-8601 string of either (``Z``,
    ``+02:00`` or no offset, which means UTC; ``T`` or a space between date and time).

    The result is always a plain stdlib ``datetime``, never a subclass: pendulum 3.3 loses the
    tzinfo when a ``timedelta`` is added to a ``DateTime`` that carries stdlib ``timezone.utc``,
    so a converted pendulum value must not stay pendulum.

    :param field: the argument's name, used in error messages.
    :raises VonageStudioConfigError: ``None``, a bool or number, any other type, an empty or
        unparseable string, or a value outside the representable range — naming ``field``.
    """
    if isinstance(value, str):
        value = _parse(value, field)
    elif isinstance(value, datetime):
        pass
    elif isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    elif value is None:
        raise VonageStudioConfigError(f"{field} is required: expected a datetime, date or ISO-8601 string")
    else:
        # bool, int, float (NaN and infinity included), Decimal, ...: an epoch number is ambiguous
        # (seconds or milliseconds?), so none is guessed at.
        raise VonageStudioConfigError(
            f"{field} must be a datetime, date or ISO-8601 string, got {type(value).__name__}"
        )
    # Fields, not astimezone(): the result must be a stdlib datetime whatever class came in.
    naive = datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond
    )
    try:
        offset = value.utcoffset()
    except Exception as exc:  # a broken tzinfo implementation
        raise VonageStudioConfigError(f"{field} has a tzinfo that gives no UTC offset ({exc})") from None
    try:
        if offset:
            naive -= offset
    except OverflowError:
        raise VonageStudioConfigError(f"{field} is out of range once converted to UTC") from None
    return naive.replace(tzinfo=timezone.utc)


def is_date_only(value: Any) -> bool:
    """Whether ``value`` names a day rather than an instant: a ``date`` that is not a
    ``datetime``, or a ``YYYY-MM-DD`` string. (Validity is :func:`to_utc`'s to check.)"""
    if isinstance(value, str):
        return len(value.strip()) == 10
    return isinstance(value, date) and not isinstance(value, datetime)


def _parse(text: str, field: str) -> datetime:
    stripped = text.strip()
    if not stripped:
        raise VonageStudioConfigError(f"{field} is an empty string: expected an ISO-8601 date or datetime")
    # Python 3.10's fromisoformat does not read "Z".
    if stripped[-1] in "Zz":
        stripped = stripped[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(stripped)
    except ValueError:
        # The value is shown only shortened: a mistyped template can render anything.
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise VonageStudioConfigError(f"{field} {shown!r} is not an ISO-8601 date or datetime") from None
