"""Session parameters: the values an AI Studio agent reads as ``$NAME`` during the call.

The make-call API takes them as a list of ``{"name": ..., "value": ...}`` objects with
string values. DAG authors more naturally write a mapping, often with Jinja templates
for the values (rendered by Airflow before ``execute``), so both shapes are accepted and
turned into the API's list here, before any request is made.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from airflow_provider_vonage_studio.exceptions import InvalidSessionParameter

__all__ = [
    "MAX_PARAMETER_VALUE_LENGTH",
    "MAX_SESSION_PARAMETERS",
    "PARAMETER_NAME_RULE",
    "normalize_session_parameters",
]

_NAME_RE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")

#: AI Studio's naming rule for parameters, quoted in every name error.
PARAMETER_NAME_RULE = (
    "capital letters and digits, starting with a letter, with single '_' between words "
    "(e.g. CALLER_NAME; pattern ^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$)"
)

_VALUE_RULE = "values must be str, int, float, Decimal or bool (sent as strings)"

#: Most parameters one call may carry. An agent reads each as ``$NAME`` in its flow; a
#: voice conversation that needs more than this is passing a data set, which belongs in
#: a lookup (a Webhook node) rather than in the call's start.
MAX_SESSION_PARAMETERS = 50

#: Most characters of one parameter value (after conversion to a string). What an agent
#: says or compares is a name, a date, a short sentence; 2,000 characters is about two
#: minutes of speech. A longer value is a document pasted by mistake (and personal data
#: the call does not need).
MAX_PARAMETER_VALUE_LENGTH = 2000


def normalize_session_parameters(
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    *,
    strict_names: bool = True,
) -> list[dict[str, str]]:
    """Return ``params`` as the API's ``session_parameters`` list, in the given order.

    ``params`` is ``None`` (no parameters), a mapping ``{"CALLER_NAME": "Diane"}`` (values
    may be already rendered templates), or the API's own list
    ``[{"name": "CALLER_NAME", "value": "Diane"}]``. Values are converted to strings:
    ``int``/``float``/``Decimal`` as written in decimal, ``bool`` as ``"true"``/``"false"``.

    With ``strict_names`` (the default) every name must follow AI Studio's rule
    (:data:`PARAMETER_NAME_RULE`); pass ``strict_names=False`` for accounts that use other
    names, and any non-empty string is accepted.

    :raises InvalidSessionParameter: when ``params`` has another shape (including a str:
        a template rendered to text rather than a native object), there are more than
        :data:`MAX_SESSION_PARAMETERS` parameters, an item is not a ``{"name", "value"}``
        mapping, a name is not a str, is empty, breaks the rule or is repeated, or a value
        is ``None``, a container, non-finite, another type, or longer than
        :data:`MAX_PARAMETER_VALUE_LENGTH` characters.
        The message names the parameter and the rule; values are never quoted, as they
        often hold personal data.
    """
    if params is None:
        return []
    if isinstance(params, Mapping):
        items = [(repr(name), name, value) for name, value in params.items()]
    elif isinstance(params, Sequence) and not isinstance(params, (str, bytes, bytearray)):
        items = [_list_item(index, item) for index, item in enumerate(params)]
    else:
        hint = (
            " (a template rendered to text: set render_template_as_native_obj=True on the DAG "
            "or pass a mapping)"
            if isinstance(params, (str, bytes, bytearray))
            else ""
        )
        raise InvalidSessionParameter(
            "session_parameters must be a mapping {NAME: value} or a list of "
            f'{{"name": ..., "value": ...}} objects, got {type(params).__name__}{hint}'
        )

    if len(items) > MAX_SESSION_PARAMETERS:
        raise InvalidSessionParameter(
            f"session_parameters: {len(items)} parameters given; a call carries at most "
            f"{MAX_SESSION_PARAMETERS}"
        )
    result: list[dict[str, str]] = []
    seen: set[str] = set()
    for where, name, value in items:
        _check_name(where, name, strict_names)
        if name in seen:
            raise InvalidSessionParameter(f"session_parameters: {name!r} is given more than once")
        seen.add(name)
        text = _value_to_str(name, value)
        if len(text) > MAX_PARAMETER_VALUE_LENGTH:
            # The value itself is never quoted: it often holds personal data.
            raise InvalidSessionParameter(
                f"session parameter {name!r} has a value of {len(text)} characters; at most "
                f"{MAX_PARAMETER_VALUE_LENGTH} are sent"
            )
        result.append({"name": name, "value": text})
    return result


def _list_item(index: int, item: Any) -> tuple[str, Any, Any]:
    """Return ``(where, name, value)`` of one ``{"name", "value"}`` item, or raise."""
    where = f"session_parameters[{index}]"
    if not isinstance(item, Mapping):
        raise InvalidSessionParameter(
            f'{where} must be a {{"name": ..., "value": ...}} object, got {type(item).__name__}'
        )
    keys = set(item)
    if keys != {"name", "value"}:
        # Extra keys are refused too: a typo such as "val" must not silently drop a value.
        missing = sorted({"name", "value"} - keys)
        extra = sorted(str(key) for key in keys - {"name", "value"})
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected {', '.join(extra)}")
        raise InvalidSessionParameter(
            f'{where} must have exactly the keys "name" and "value" ({"; ".join(problems)})'
        )
    return where, item["name"], item["value"]


def _check_name(where: str, name: Any, strict: bool) -> None:
    if not isinstance(name, str):
        raise InvalidSessionParameter(
            f"session parameter name {where} must be a str, got {type(name).__name__}: {PARAMETER_NAME_RULE}"
        )
    if not name:
        raise InvalidSessionParameter(f"session parameter name {where} is empty: {PARAMETER_NAME_RULE}")
    if strict and not _NAME_RE.fullmatch(name):
        suggestion = _suggest(name)
        did_you_mean = f"; did you mean {suggestion!r}?" if suggestion else ""
        raise InvalidSessionParameter(
            f"session parameter name {name!r} breaks AI Studio's naming rule: {PARAMETER_NAME_RULE}"
            f"{did_you_mean} (strict_parameter_names=False sends other names unchecked)"
        )


def _suggest(name: str) -> str | None:
    """Return a rule-abiding spelling of ``name`` (``caller-name`` -> ``CALLER_NAME``), if any."""
    if not name.isascii():
        # Dropping accented letters would suggest a different word ("CALLÉ" -> "CALL").
        return None
    # Split camelCase too, so "callerName" becomes CALLER_NAME rather than CALLERNAME.
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    candidate = "_".join(part for part in re.split(r"[^A-Za-z0-9]+", spaced) if part).upper()
    return candidate if _NAME_RE.fullmatch(candidate) and candidate != name else None


def _value_to_str(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    # bool before int: bool is an int subclass and str(True) would give "True".
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSessionParameter(f"session parameter {name!r} is {value!r}: {_VALUE_RULE}")
        # Shortest round-tripping digits, without exponent notation: 1e+20 would be read
        # out oddly by the agent.
        return format(Decimal(repr(value)), "f")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidSessionParameter(f"session parameter {name!r} is {value}: {_VALUE_RULE}")
        # "f" avoids exponent notation ("1E+2") that an agent would read out oddly.
        return format(value, "f")
    if value is None:
        raise InvalidSessionParameter(
            f'session parameter {name!r} has no value (None): {_VALUE_RULE}; pass "" for an empty value'
        )
    raise InvalidSessionParameter(
        f"session parameter {name!r} has a {type(value).__name__} value: {_VALUE_RULE}; "
        "format it as a string first"
    )
