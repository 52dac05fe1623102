"""Unit and property tests for session parameter normalisation."""

from __future__ import annotations

import re
from collections import OrderedDict
from datetime import date
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_vonage_studio.exceptions import InvalidSessionParameter, VonageStudioConfigError
from airflow_provider_vonage_studio.params import PARAMETER_NAME_RULE, normalize_session_parameters

FAST = settings(max_examples=200, deadline=None)
NAME_RE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def test_none_and_empty() -> None:
    assert normalize_session_parameters(None) == []
    assert normalize_session_parameters({}) == []
    assert normalize_session_parameters([]) == []
    assert normalize_session_parameters(()) == []


def test_mapping_with_rendered_templates() -> None:
    # What Airflow hands execute() after rendering {"CALLER_NAME": "{{ params.name }}"}.
    params = {"CALLER_NAME": "Diane Miller", "PROPERTY_VALUE": "500", "APPOINTMENT_AT": "2026-03-08 09:30"}
    assert normalize_session_parameters(params) == [
        {"name": "CALLER_NAME", "value": "Diane Miller"},
        {"name": "PROPERTY_VALUE", "value": "500"},
        {"name": "APPOINTMENT_AT", "value": "2026-03-08 09:30"},
    ]


def test_seed_list_form_passes_through() -> None:
    params = [{"name": "PROPERTY_VALUE", "value": "500"}]
    assert normalize_session_parameters(params) == params


def test_result_is_a_new_list_of_plain_dicts() -> None:
    source = [{"name": "A", "value": "1"}]
    result = normalize_session_parameters(source)
    assert result == source
    assert result is not source
    assert result[0] is not source[0]
    assert list(result[0]) == ["name", "value"]


def test_other_mapping_and_sequence_types() -> None:
    assert normalize_session_parameters(MappingProxyType({"A": 1})) == [{"name": "A", "value": "1"}]
    assert normalize_session_parameters(OrderedDict([("B", 2), ("A", 1)])) == [
        {"name": "B", "value": "2"},
        {"name": "A", "value": "1"},
    ]
    assert normalize_session_parameters(({"name": "A", "value": 1},)) == [{"name": "A", "value": "1"}]
    assert normalize_session_parameters([MappingProxyType({"name": "A", "value": "x"})]) == [
        {"name": "A", "value": "x"}
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Diane", "Diane"),
        ("", ""),
        ("  padded  ", "  padded  "),
        (500, "500"),
        (-3, "-3"),
        (10**30, str(10**30)),
        (0, "0"),
        (1.5, "1.5"),
        (500.0, "500.0"),
        (0.1, "0.1"),
        (1e20, "100000000000000000000"),
        (1e-7, "0.0000001"),
        (Decimal("500"), "500"),
        (Decimal("12.50"), "12.50"),
        (Decimal("1E+2"), "100"),
        (True, "true"),
        (False, "false"),
    ],
)
def test_values_become_strings(value: Any, expected: str) -> None:
    assert normalize_session_parameters({"X": value}) == [{"name": "X", "value": expected}]
    assert normalize_session_parameters([{"name": "X", "value": value}]) == [{"name": "X", "value": expected}]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "no value"),
        ({"a": 1}, "dict"),
        ([1, 2], "list"),
        ((1,), "tuple"),
        ({1}, "set"),
        (b"bytes", "bytes"),
        (date(2026, 3, 8), "date"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "Infinity"),
        (object(), "object"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(value: Any, fragment: str) -> None:
    with pytest.raises(InvalidSessionParameter) as info:
        normalize_session_parameters({"CALLER_NAME": value})
    message = str(info.value)
    assert "'CALLER_NAME'" in message
    assert fragment in message
    assert "str, int, float, Decimal or bool" in message


def test_value_is_not_quoted_in_errors() -> None:
    with pytest.raises(InvalidSessionParameter) as info:
        normalize_session_parameters({"PATIENT": {"diagnosis": "very private"}})
    assert "very private" not in str(info.value)


@pytest.mark.parametrize(
    "name",
    ["CALLER_NAME", "A", "X1", "A1_B2", "PROPERTY_VALUE", "ABC_1_DEF", "A_1"],
)
def test_valid_names(name: str) -> None:
    assert normalize_session_parameters({name: "v"}) == [{"name": name, "value": "v"}]


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("caller_name", "CALLER_NAME"),
        ("callerName", "CALLER_NAME"),
        ("Caller Name", "CALLER_NAME"),
        ("CALLER-NAME", "CALLER_NAME"),
        ("CALLER__NAME", "CALLER_NAME"),
        ("_CALLER", "CALLER"),
        ("CALLER_", "CALLER"),
        ("$CALLER_NAME", "CALLER_NAME"),
        ("1ST_CALL", None),
        ("CALLÉ", None),
        ("名前", None),
    ],
)
def test_invalid_names_are_refused_with_the_rule(name: str, suggestion: str | None) -> None:
    with pytest.raises(InvalidSessionParameter) as info:
        normalize_session_parameters({name: "v"})
    message = str(info.value)
    assert repr(name) in message
    assert PARAMETER_NAME_RULE in message
    assert "strict_parameter_names=False" in message
    if suggestion:
        assert f"did you mean {suggestion!r}" in message
    else:
        assert "did you mean" not in message


def test_invalid_name_in_list_form() -> None:
    with pytest.raises(InvalidSessionParameter, match=r"'caller_name'.*naming rule"):
        normalize_session_parameters([{"name": "OK", "value": "1"}, {"name": "caller_name", "value": "2"}])


@pytest.mark.parametrize("name", [1, None, ("A",), b"A"])
def test_non_str_names_are_refused(name: Any) -> None:
    with pytest.raises(InvalidSessionParameter, match="must be a str"):
        normalize_session_parameters({name: "v"})
    with pytest.raises(InvalidSessionParameter, match=r"session_parameters\[0\].*must be a str"):
        normalize_session_parameters([{"name": name, "value": "v"}])
    with pytest.raises(InvalidSessionParameter, match="must be a str"):
        normalize_session_parameters({name: "v"}, strict_names=False)


def test_empty_name_is_refused_even_when_not_strict() -> None:
    with pytest.raises(InvalidSessionParameter, match="empty"):
        normalize_session_parameters({"": "v"}, strict_names=False)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(InvalidSessionParameter, match="'CALLER_NAME' is given more than once"):
        normalize_session_parameters(
            [{"name": "CALLER_NAME", "value": "a"}, {"name": "CALLER_NAME", "value": "b"}]
        )
    with pytest.raises(InvalidSessionParameter, match="more than once"):
        normalize_session_parameters(
            [{"name": "caller", "value": "a"}, {"name": "caller", "value": "b"}], strict_names=False
        )


def test_names_differing_in_case_are_distinct_when_not_strict() -> None:
    result = normalize_session_parameters({"name": "a", "Name": "b"}, strict_names=False)
    assert [p["name"] for p in result] == ["name", "Name"]


def test_strict_names_false_accepts_other_names() -> None:
    params = {"callerName": "Diane", "my-param": 1, "名前": True, " spaced ": "x"}
    assert normalize_session_parameters(params, strict_names=False) == [
        {"name": "callerName", "value": "Diane"},
        {"name": "my-param", "value": "1"},
        {"name": "名前", "value": "true"},
        {"name": " spaced ", "value": "x"},
    ]


def test_strict_names_false_still_checks_values() -> None:
    with pytest.raises(InvalidSessionParameter, match="no value"):
        normalize_session_parameters({"anything": None}, strict_names=False)


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("CALLER_NAME", "got str"),
        (["CALLER_NAME", "x"], "got list"),
        (None, "got NoneType"),
        ({"name": "A"}, "missing value"),
        ({"value": "x"}, "missing name"),
        ({"name": "A", "val": "x"}, "missing value; unexpected val"),
        ({"name": "A", "value": "x", "extra": 1}, "unexpected extra"),
        ({}, "missing name, value"),
    ],
)
def test_malformed_list_items(item: Any, fragment: str) -> None:
    with pytest.raises(InvalidSessionParameter) as info:
        normalize_session_parameters([{"name": "OK", "value": "1"}, item])
    message = str(info.value)
    assert "session_parameters[1]" in message
    assert fragment in message


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ("{'CALLER_NAME': 'Diane'}", "render_template_as_native_obj"),
        (b"x", "render_template_as_native_obj"),
        (42, "got int"),
        ({"name", "value"}, "got set"),
    ],
)
def test_wrong_container_types(params: Any, fragment: str) -> None:
    with pytest.raises(InvalidSessionParameter) as info:
        normalize_session_parameters(params)
    assert "session_parameters must be a mapping" in str(info.value)
    assert fragment in str(info.value)


def test_error_class_is_a_non_retryable_config_error() -> None:
    with pytest.raises(VonageStudioConfigError) as info:
        normalize_session_parameters({"bad name": 1})
    assert isinstance(info.value, ValueError)
    assert info.value.retryable is False


# --- properties ---------------------------------------------------------------------

valid_names = st.from_regex(r"[A-Z][A-Z0-9]{0,5}(_[A-Z0-9]{1,5}){0,3}", fullmatch=True)
simple_values = st.one_of(st.text(max_size=30), st.integers(), st.booleans())


@FAST
@given(st.dictionaries(valid_names, simple_values, max_size=12))
def test_mapping_property(params: dict[str, Any]) -> None:
    result = normalize_session_parameters(params)
    assert len(result) == len(params)
    assert [item["name"] for item in result] == list(params)
    for item, value in zip(result, params.values(), strict=True):
        assert isinstance(item["value"], str)
        if isinstance(value, bool):
            assert item["value"] == ("true" if value else "false")
        else:
            assert item["value"] == str(value)
    # The list form is a fixed point.
    assert normalize_session_parameters(result) == result


@FAST
@given(st.text(min_size=1, max_size=20).filter(lambda name: not NAME_RE.match(name)), simple_values)
def test_invalid_names_property(name: str, value: Any) -> None:
    with pytest.raises(InvalidSessionParameter) as info:
        normalize_session_parameters({name: value})
    assert PARAMETER_NAME_RULE in str(info.value)
    # ...and the same name goes through untouched when strict checking is off.
    assert normalize_session_parameters({name: value}, strict_names=False)[0]["name"] == name


@FAST
@given(st.dictionaries(st.text(min_size=1, max_size=20), simple_values, max_size=12))
def test_non_strict_accepts_any_non_empty_str_name(params: dict[str, Any]) -> None:
    result = normalize_session_parameters(params, strict_names=False)
    assert [item["name"] for item in result] == list(params)
    assert all(isinstance(item["value"], str) for item in result)


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_strings_round_trip_without_exponent(value: float) -> None:
    text = normalize_session_parameters({"X": value})[0]["value"]
    assert "e" not in text.lower()
    assert float(text) == value
