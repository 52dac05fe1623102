"""Unit and property tests for destination normalisation, redaction and time zones."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import phonenumbers
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from airflow_provider_vonage_studio.destinations import (
    DESTINATION_RULE,
    normalize_destination,
    redact,
    timezone_for_number,
)
from airflow_provider_vonage_studio.exceptions import (
    InvalidDestination,
    VonageStudioConfigError,
)

FAST = settings(max_examples=200, deadline=None)
ONLY_DIGITS = re.compile(r"[0-9]+")


def _digits(text: str) -> str:
    return "".join(ch for ch in text if "0" <= ch <= "9")


# --- accepted phone numbers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+44 7700 900123", "447700900123"),
        ("0044-7700-900123", "447700900123"),
        ("(+1) 212 555 0100", "12125550100"),
        ("+1 (212) 555-0100", "12125550100"),
        ("+1.212.555.0100", "12125550100"),
        ("447700900123", "447700900123"),
        ("tel:+44-7700-900123", "447700900123"),
        ("TEL:+447700900123", "447700900123"),
        ("  +44 7700 900123\n", "447700900123"),
        ("+44\u00a07700\u00a0900123", "447700900123"),  # no-break spaces from a spreadsheet
        ("+44 7700\u2013900123", "447700900123"),  # en dash from a word processor
        ("+44 (0) 7700 900123", "447700900123"),  # UK habit: trunk 0 in parentheses
        ("+39 06 1234 5678", "390612345678"),  # Italian leading zero is kept
        ("+49 30 1234567", "49301234567"),
        ("+800 1234 5678", "80012345678"),  # international freephone, no region
    ],
)
def test_international_forms(value: str, expected: str) -> None:
    assert normalize_destination(value) == expected


def test_seed_example_number_passes_unchanged() -> None:
    # Possible but not valid by phonenumbers' metadata: possibility is what counts.
    assert not phonenumbers.is_valid_number(phonenumbers.parse("+9725411116037"))
    assert normalize_destination("9725411116037") == "9725411116037"


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("07700 900123", "GB", "447700900123"),
        ("07700 900123", "gb", "447700900123"),
        (" 07700-900-123 ", " GB ", "447700900123"),
        ("020 7946 0000", "GB", "442079460000"),
        ("(212) 555-0100", "US", "12125550100"),
        ("212-555-0100", "US", "12125550100"),
        ("1 212 555 0100", "US", "12125550100"),
        # The default country's own code is recognised.
        ("12125550100", "US", "12125550100"),
        ("447700900123", "GB", "447700900123"),
        # A 10-digit US number must stay in the US even though "+41 55550100" would be a
        # possible Swiss number: national first when default_country is given.
        ("4155550100", "US", "14155550100"),
        # Too long for a national number of the default country: has a country code.
        ("447700900123", "US", "447700900123"),
        ("9725411116037", "US", "9725411116037"),
        # + and 00 always mean international, whatever the default country.
        ("+44 7700 900123", "US", "447700900123"),
        ("0044 7700 900123", "US", "447700900123"),
        # The default country's own international prefix works too.
        ("011 44 7700 900123", "US", "447700900123"),
    ],
)
def test_national_forms_with_default_country(value: str, country: str, expected: str) -> None:
    assert normalize_destination(value, default_country=country) == expected


@pytest.mark.parametrize("value", ["07700 900123", "07700900123", "020 7946 0000", "(0)20 7946 0000"])
def test_national_number_without_default_country_is_refused(value: str) -> None:
    with pytest.raises(InvalidDestination) as info:
        normalize_destination(value)
    message = str(info.value)
    assert "country code" in message
    assert "default_country" in message


def test_short_digits_without_default_country_hint_at_default_country() -> None:
    # "+212 5550100" is too short for Morocco: most likely a US national number.
    with pytest.raises(InvalidDestination, match="default_country"):
        normalize_destination("2125550100")


# --- refused phone numbers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "missing"),
        (447700900123, "must be a string"),
        (["447700900123"], "must be a string"),
        ("abc", "not a phone number"),
        ("1-800-FLOWERS", "not a phone number"),
        ("+44 7700 900123 ext. 12", "not a phone number"),
        ("+44 7700 900123 x12", "not a phone number"),
        ("++447700900123", "not a phone number"),
        ("44+7700900123", "not a phone number"),
        ("+", "not a phone number"),
        ("tel:", "not a phone number"),
        ("+44 7700 900123;ext=1", "not a phone number"),
        ("447700900123#", "not a phone number"),
        ("\u0664\u0664\u0667\u0667", "not a phone number"),  # Arabic-Indic digits
        ("+0 7700 900123", "country code is unknown"),
        ("+999 123456789", "country code is unknown"),
        ("+44 12", "too short"),
        ("+44 7700 900123 4567 8901", "too long"),
        ("+1 555 0100", "area code is missing"),
        ("1", "possible"),
        ("0" * 40, "country code"),
        ("9" * 300, "possible"),
    ],
)
def test_refused_with_rule_in_message(value: Any, fragment: str) -> None:
    with pytest.raises(InvalidDestination) as info:
        normalize_destination(value)
    message = str(info.value)
    assert message.startswith("to ")
    assert fragment in message
    assert DESTINATION_RULE in message
    assert info.value.status is None
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("value", "country", "fragment"),
    [
        ("555 0100", "US", "area code is missing"),
        ("12", "GB", "too short"),
        ("1" * 30, "GB", "too long"),
        ("07700 900123 99999999", "GB", "too long"),
    ],
)
def test_refused_national_numbers(value: str, country: str, fragment: str) -> None:
    with pytest.raises(InvalidDestination, match=fragment):
        normalize_destination(value, default_country=country)


def test_message_has_redacted_value_and_rule_never_the_number() -> None:
    with pytest.raises(InvalidDestination) as info:
        normalize_destination("+44 7700 900123 x")
    message = str(info.value)
    assert "'+44•••••0123'" in message
    assert DESTINATION_RULE in message
    assert "7700900" not in _digits(message.replace(DESTINATION_RULE, ""))


def test_example_message_wording() -> None:
    with pytest.raises(InvalidDestination) as info:
        normalize_destination("+44 7700 900123 4567")
    assert str(info.value) == (
        "to '+44•••••4567' is not a possible phone number (too long): give digits with the country "
        "code (447700900123) or +44 7700 900123, or a SIP URI sip:user@host[:port]"
    )


@pytest.mark.parametrize("country", ["XX", "ZZ", "GBR", "", "001", "uk", 44, "G"])
def test_invalid_default_country_is_a_config_error(country: Any) -> None:
    with pytest.raises(VonageStudioConfigError, match="default_country") as info:
        normalize_destination("+44 7700 900123", default_country=country)
    # Not a per-recipient problem: batches must not skip it as one bad number.
    assert not isinstance(info.value, InvalidDestination)


def test_invalid_destination_is_a_config_error_and_value_error() -> None:
    assert issubclass(InvalidDestination, VonageStudioConfigError)
    assert issubclass(InvalidDestination, ValueError)


# --- SIP ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "sip:alice@example.com",
        "sip:sipnumber@sipaddress",
        "sip:+447700900123@sip.example.com:5060",
        "sip:1234@10.0.0.1",
        "sip:1234@10.0.0.1:65535",
        "sip:user@[2001:db8::1]",
        "sip:user@[2001:db8::1]:5061",
        "sip:user@[::ffff:10.0.0.1]",
        "sips:secure@example.com:5061",
        "SIP:Upper.Case@Example.COM",
        "sip:a%40b@host",
        "sip:first.last-1_x!~*'()&=+$,;?/@host",
        "sip:user@localhost",
        "sip:user@example.com.",
        "sip:user@a-b.c-d.example",
        "sip:user@123.example.com",
    ],
)
def test_valid_sip_passes_unchanged(value: str) -> None:
    assert normalize_destination(value) == value
    assert normalize_destination(f"  {value}\t") == value
    assert normalize_destination(value, default_country="GB") == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("sip:", "no user@"),
        ("sip:example.com", "no user@"),
        ("sip:@example.com", "user part is empty"),
        ("sip:alice@", "host is missing"),
        ("sip:alice@:5060", "host must be"),
        ("sip:alice@-bad.example.com", "host must be"),
        ("sip:alice@bad-.example.com", "host must be"),
        ("sip:alice@bad_host.example.com", "host must be"),
        ("sip:alice@exa mple.com", "host must be"),
        ("sip:alice@ex..ample.com", "host must be"),
        ("sip:alice@1.2.3", "host must be"),
        ("sip:alice@256.1.1.1", "host must be"),
        ("sip:alice@999.1.1.1", "host must be"),
        ("sip:alice@example.123", "host must be"),
        ("sip:alice@" + "a" * 64 + ".com", "host must be"),
        ("sip:alice@bücher.example", "host must be"),
        ("sip:alice@[2001:db8::zz]", "IPv6"),
        ("sip:alice@[10.0.0.1]", "IPv6"),
        ("sip:alice@2001:db8::1", "host must be"),
        ("sip:alice@example.com:0", "port"),
        ("sip:alice@example.com:65536", "port"),
        ("sip:alice@example.com:", "port"),
        ("sip:alice@example.com:50a", "port"),
        ("sip:alice@example.com:123456", "port"),
        ("sip:alice:secret@example.com", "user part"),
        ("sip:al ice@example.com", "user part"),
        ("sip:al%4@example.com", "user part"),
        ("sip:alice@bob@example.com", "host must be"),
        ("sip:alice@example.com;transport=tcp", "host must be"),
        ("sip:alice@example.com?subject=x", "host must be"),
        ("sip:" + "a" * 600 + "@example.com", "longer than"),
    ],
)
def test_invalid_sip_is_refused(value: str, fragment: str) -> None:
    with pytest.raises(InvalidDestination) as info:
        normalize_destination(value)
    message = str(info.value)
    assert "not a valid SIP URI" in message
    assert fragment in message
    assert DESTINATION_RULE in message


def test_sip_message_hides_user_part() -> None:
    with pytest.raises(InvalidDestination) as info:
        normalize_destination("sip:+447700900123@example.com:0")
    message = str(info.value)
    assert "sip:•••@example.com:0" in message
    assert "7700900123" not in message.replace(DESTINATION_RULE, "")


# --- redact -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("447700900123", "+44•••••0123"),
        ("+44 7700 900123", "+44•••••0123"),
        ("9725411116037", "+97•••••6037"),
        ("07700 900123", "07•••••0123"),
        ("12345", "•••••45"),
        ("123456789", "•••••89"),
        ("1234", "•••••"),
        ("abc", "•••••"),
        ("", ""),
        ("   ", ""),
        (None, ""),
        (447700900123, "+44•••••0123"),
        ("sip:alice@example.com", "sip:•••@example.com"),
        ("sips:alice@example.com:5061", "sips:•••@example.com:5061"),
        ("SIP:alice@example.com", "SIP:•••@example.com"),
        ("sip:alice", "sip:•••"),
        ("sip:alice@447700900123", "sip:•••@•••"),
        ("sip:a@10.0.0.1", "sip:•••@10.0.0.1"),
    ],
)
def test_redact(value: Any, expected: str) -> None:
    assert redact(value) == expected


def test_redact_mask_hides_length() -> None:
    assert len(redact("4477009001")) == len(redact("44770090012345"))


def test_redact_truncates_long_sip_hosts() -> None:
    assert len(redact("sip:a@" + "h" * 500)) < 120


# --- time zones ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digits", "zone"),
    [
        ("442079460000", "Europe/London"),  # London landline
        ("+442079460000", "Europe/London"),
        ("441212345678", "Europe/London"),  # Birmingham
        ("12125550100", "America/New_York"),  # the area code gives one zone
        ("14155550100", "America/Los_Angeles"),
        ("33612345678", "Europe/Paris"),
        ("81312345678", "Asia/Tokyo"),
    ],
)
def test_timezone_for_number_single_zone(digits: str, zone: str) -> None:
    assert timezone_for_number(digits) == zone


@pytest.mark.parametrize(
    "digits",
    [
        "18005550100",  # US toll-free: every NANP zone
        "447400123456",  # GB mobile: London, Jersey, Guernsey, Isle of Man
        "61412345678",  # AU mobile: several zones
        "9725411116037",  # possible but unknown to the metadata: Etc/Unknown
        "sip:alice@example.com",
        "",
        "abc",
        "+",
        "0447700900123",
        "\u0664\u0664\u0667\u0667\u0660\u0660\u0669\u0660\u0660\u0661\u0662\u0663",
    ],
)
def test_timezone_for_number_unknown_or_ambiguous(digits: str) -> None:
    assert timezone_for_number(digits) is None


def test_timezone_for_number_non_str() -> None:
    assert timezone_for_number(None) is None  # type: ignore[arg-type]
    assert timezone_for_number(442079460000) is None  # type: ignore[arg-type]


def test_timezone_missing_from_tz_database_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    from phonenumbers import timezone as pn_timezone

    monkeypatch.setattr(pn_timezone, "time_zones_for_number", lambda number: ("Mars/Olympus_Mons",))
    assert timezone_for_number("442079460000") is None


# --- import cost --------------------------------------------------------------------


def test_importing_does_not_load_phonenumbers() -> None:
    code = (
        "import sys\n"
        "import airflow_provider_vonage_studio.destinations\n"
        "assert 'phonenumbers' not in sys.modules, 'phonenumbers imported at module level'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- properties ---------------------------------------------------------------------

_TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
_EXAMPLES = sorted(
    {
        (region, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:])
        for region in phonenumbers.SUPPORTED_REGIONS
        for kind in _TYPES
        if (number := phonenumbers.example_number_for_type(region, kind)) is not None
    }
)
_SEPARATORS = st.sampled_from(["", "", "", " ", "-", ".", " - ", "\u00a0", "/"])


@st.composite
def formatted_international(draw: st.DrawFn) -> tuple[str, str]:
    """An example number of some region in random international formatting, and its digits."""
    _, digits = draw(st.sampled_from(_EXAMPLES))
    number = phonenumbers.parse("+" + digits)
    cc = str(number.country_code)
    rest = digits[len(cc) :]
    pieces = []
    position = 0
    while position < len(rest):
        size = draw(st.integers(min_value=1, max_value=4))
        pieces.append(rest[position : position + size])
        position += size
    if len(pieces) > 1 and draw(st.booleans()):
        pieces[0] = f"({pieces[0]})"
    body = "".join(piece + draw(_SEPARATORS) for piece in pieces).strip(" -./\u00a0")
    prefix = draw(st.sampled_from(["+", "00", "+", "(+", "tel:+", ""]))
    if prefix == "(+":
        head = f"(+{cc})"
    elif prefix == "":
        # Digits only (the API's own form): no separators at all.
        return digits, digits
    else:
        head = prefix + cc
    spacer = draw(st.sampled_from([" ", "-", "", " "]))
    return head + spacer + body, digits


@FAST
@given(formatted_international())
def test_formatted_example_numbers_give_their_digits(case: tuple[str, str]) -> None:
    text, digits = case
    assert normalize_destination(text) == digits


@FAST
@given(formatted_international(), st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)))
def test_plus_or_00_ignore_default_country(case: tuple[str, str], country: str) -> None:
    text, digits = case
    assume(text.lstrip("(").startswith(("+", "00", "tel:")))
    assert normalize_destination(text, default_country=country) == digits


@FAST
@given(st.sampled_from(_EXAMPLES), st.sampled_from([phonenumbers.PhoneNumberFormat.NATIONAL, "digits"]))
def test_national_example_numbers_with_their_country(example: tuple[str, str], style: Any) -> None:
    region, digits = example
    number = phonenumbers.parse("+" + digits)
    if style == "digits":
        text = phonenumbers.national_significant_number(number)
    else:
        text = phonenumbers.format_number(number, style)
    # Some regions' national formats carry letters or carrier codes; those are not
    # something people type, and are refused by design.
    assume(re.fullmatch(r"[0-9 ()\-./]+", text))
    try:
        result = normalize_destination(text, default_country=region)
    except InvalidDestination:
        # A handful of regions need their trunk prefix to read the national number back.
        reparsed = phonenumbers.parse(text, region)
        assume(phonenumbers.format_number(reparsed, phonenumbers.PhoneNumberFormat.E164)[1:] == digits)
        raise
    assert result == digits


@FAST
@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"(tel:)?[ +(]{0,2}[0-9][0-9 ()\-.]{0,24}", fullmatch=True),
        st.from_regex(r"sips?:[a-z0-9%@:.\[\]-]{0,30}", fullmatch=True),
    ),
    st.sampled_from([None, "GB", "US", "DE", "IN", "BR"]),
)
def test_output_is_digits_or_sip_and_idempotent(text: str, country: str | None) -> None:
    try:
        result = normalize_destination(text, default_country=country)
    except InvalidDestination as exc:
        message = str(exc)
        digits = _digits(text)
        if len(digits) >= 7 and digits not in DESTINATION_RULE and not text.lower().startswith("sip"):
            assert digits not in message
        return
    assert ONLY_DIGITS.fullmatch(result) or result.lower().startswith(("sip:", "sips:"))
    assert normalize_destination(result) == result
    if ONLY_DIGITS.fullmatch(result):
        assert 2 <= len(result) <= 17


@FAST
@given(st.from_regex(r"[0-9]{10,20}", fullmatch=True), st.sampled_from(["", "+", "tel:", "00", "x "]))
def test_redact_never_contains_middle_digits(digits: str, prefix: str) -> None:
    out = redact(prefix + digits)
    all_digits = _digits(prefix) + digits
    assert _digits(out) == all_digits[:2] + all_digits[-4:]


@FAST
@given(st.text(max_size=60))
def test_redact_reveals_at_most_six_digits_of_any_text(text: str) -> None:
    assume(not text.strip().lower().startswith(("sip:", "sips:")))
    digits = _digits(text)
    shown = _digits(redact(text))
    if len(digits) >= 10:
        assert shown == digits[:2] + digits[-4:]
    elif len(digits) >= 5:
        assert shown == digits[-2:]
    else:
        assert shown == ""


@FAST
@given(st.from_regex(r"[A-Za-z0-9+._-]{1,20}", fullmatch=True), st.sampled_from(["example.com", "10.0.0.1"]))
def test_redact_sip_hides_user(user: str, host: str) -> None:
    assert redact(f"sip:{user}@{host}") == f"sip:•••@{host}"
