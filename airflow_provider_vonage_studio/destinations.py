"""Phone number and SIP destination normalisation.

AI Studio wants ``to`` as the country code followed by the national number, digits only
(``447700900123``), or a SIP URI (``sip:user@host``). People type numbers in many other
ways, and a malformed ``to`` costs a failed task at best and a call to a stranger at worst,
so every destination goes through :func:`normalize_destination` before anything is sent.

Only *possibility* (a plausible length for the country) is checked, not validity:
numbering plans change faster than any metadata, and the API's own example number
(``9725411116037``) is possible but not valid by ``phonenumbers``' rules.

``phonenumbers`` is imported inside the functions: DAG files import the operator modules
that import this one, and its metadata must not load at DAG-parse time.

Phone numbers never appear whole in messages: :func:`redact` keeps at most the first two
and last four digits.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any

from airflow_provider_vonage_studio.exceptions import InvalidDestination, VonageStudioConfigError

if TYPE_CHECKING:
    from phonenumbers import PhoneNumber

__all__ = ["normalize_destination", "parse_number_list", "redact", "split_number_list", "timezone_for_number"]

#: What a destination must look like; ends every InvalidDestination message.
DESTINATION_RULE = (
    "give digits with the country code (447700900123) or +44 7700 900123, or a SIP URI sip:user@host[:port]"
)

_MASK = "•••••"
_SIP_USER_MASK = "•••"

# Characters people put between digits: whitespace (including the no-break spaces that
# spreadsheets and web pages paste), "-", ".", "/", parentheses and the Unicode dashes
# word processors substitute for "-".
_SEPARATORS_RE = re.compile(r"[\s().\-/\u2010-\u2015\u2212]+")
# After separators are gone: an optional leading "+" then ASCII digits only. Letters are
# refused on purpose although phonenumbers would accept them: "1-800-FLOWERS" style
# vanity numbers and "ext. 12" suffixes are far more often a wrong column than intended.
_PHONE_RE = re.compile(r"\+?[0-9]+")
_SIP_SCHEME_RE = re.compile(r"(sips?):", re.IGNORECASE)
# RFC 3261 user part: unreserved (alphanum and - _ . ! ~ * ' ( )), user-unreserved
# (& = + $ , ; ? /) and %HH escapes. ":" (a password) and "@" are not allowed.
_SIP_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IPV6_HOSTPORT_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]+))?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_LONG_DIGIT_RUN_RE = re.compile(r"[0-9]{5,}")
# A SIP URI longer than this is a mistake, not an address; also bounds the work done.
_MAX_SIP_LENGTH = 512
# Separators of a number list given as one string: commas and line breaks.
_LIST_SEPARATORS_RE = re.compile(r"[,\r\n]+")
# Most digits a phone number can have, with an international prefix (00 + 15 of E.164).
_MAX_PHONE_DIGITS = 17

#: How a list of numbers (``do_not_call``) may be given; ends every list error.
NUMBER_LIST_RULE = (
    "give a list of numbers or SIP URIs, or one string of them separated by commas or line breaks"
)


def redact(value: Any) -> str:
    """Return ``value`` with enough hidden to be safe in logs and error messages.

    Phone numbers keep at most their first two digits (usually the country code) and last
    four, ``"447700900123"`` -> ``"+44•••••0123"``; shorter digit strings keep fewer
    (two digits when 5-9 long, none below). The mask has a fixed width, so the length
    is not revealed either. SIP URIs keep scheme and host, ``"sip:•••@pbx.example.com"``.
    Anything else is reduced to the digits it contains, redacted the same way.

    Never raises.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    text = text.strip()
    if not text:
        return ""
    scheme = _SIP_SCHEME_RE.match(text)
    if scheme:
        rest = text[scheme.end() :]
        if "@" not in rest:
            return f"{text[: scheme.end()]}{_SIP_USER_MASK}"
        host = rest.split("@", 1)[1]
        # Hosts are not personal data, but a mistyped URI may carry a number where the
        # host should be: hide long digit runs (IPv4 parts never exceed 3 digits).
        host = _LONG_DIGIT_RUN_RE.sub(_SIP_USER_MASK, host)
        if len(host) > 100:
            host = host[:100] + "…"
        return f"{text[: scheme.end()]}{_SIP_USER_MASK}@{host}"
    # Only ASCII digits are copied to the output; everything else is dropped, so nothing
    # but these few digits can ever leak.
    digits = "".join(ch for ch in text if "0" <= ch <= "9")
    if len(digits) >= 10:
        plus = "" if digits.startswith("0") else "+"
        return f"{plus}{digits[:2]}{_MASK}{digits[-4:]}"
    if len(digits) >= 5:
        return f"{_MASK}{digits[-2:]}"
    return _MASK


def normalize_destination(value: str, default_country: str | None = None, *, field: str = "to") -> str:
    """Return ``value`` in the form AI Studio's ``to`` wants.

    Phone numbers come back as the country code plus the national number, digits only
    (E.164 without ``+``): ``"+44 7700 900123"``, ``"0044-7700-900123"``,
    ``"(+1) 212 555 0100"``, ``"+1 (212) 555-0100"``, ``"tel:+447700900123"`` and
    ``"447700900123"`` are all accepted. Without ``default_country``, digits without
    ``+`` or ``00`` are read as digits with a country code (the API's own form), so a
    result of this function normalises to itself.

    National numbers (``"07700 900123"``, ``"(212) 555-0100"``) need ``default_country``
    (ISO 3166 alpha-2, e.g. ``"GB"``). With it, digits without ``+``/``00`` are first read
    as a national number of that country (which also recognises its own country code,
    ``"12125550100"`` for ``"US"``), and only when they are too long for one as digits
    with a country code. Give foreign numbers with ``+`` or ``00`` then: without either,
    a foreign number that also fits the default country's numbering would be read as
    that country's.

    The number must be *possible* (right length for its country), not necessarily
    *valid*; numbers that only work inside their area (no area code) are refused.

    SIP destinations ``sip:user@host[:port]`` (or ``sips:``) are checked, user part per
    RFC 3261, host a name, IPv4 address or ``[IPv6]``, port 1-65535, and returned
    unchanged apart from surrounding whitespace.

    :raises InvalidDestination: when ``value`` is not a string, is empty, or is neither a
        possible phone number nor a SIP URI. The message names ``field`` (default ``to``),
        the redacted value and the rule.
    :raises VonageStudioConfigError: when ``default_country`` is not a region code known
        to ``phonenumbers``.
    """
    region = _check_default_country(default_country)
    if value is None:
        raise InvalidDestination(f"{field} is missing: {DESTINATION_RULE}")
    if not isinstance(value, str):
        raise InvalidDestination(
            f"{field} {redact(value)!r} must be a string, not {type(value).__name__}: {DESTINATION_RULE}"
        )
    text = value.strip()
    if not text:
        raise InvalidDestination(f"{field} is empty: {DESTINATION_RULE}")
    if _SIP_SCHEME_RE.match(text):
        return _check_sip(text, field)
    return _normalize_phone(text, region, field)


def split_number_list(value: Any, *, field: str) -> tuple[str, ...]:
    """Return the entries of a list of numbers (``do_not_call``), checked without metadata.

    ``value`` is one of:

    * ``None`` or an empty string: no entries;
    * a string: one number, or several separated by commas or line breaks
      (``"+44 7700 900123, +44 7700 900124"``). A string that is a JSON or Python list
      (``'["+44 7700 900123"]'``, as a template renders an XCom list) is read as that list;
    * a list, tuple or set of strings.

    Entries are stripped; empty ones (a trailing comma, a blank line) are dropped. Each entry
    must look like a phone number (digits with the separators :func:`normalize_destination`
    accepts, an optional leading ``+``, at most 17 digits) or be a valid SIP URI. This check
    loads no ``phonenumbers`` metadata, so it runs when a DAG file is parsed; whether a
    number is *possible* is checked by :func:`parse_number_list`.

    :raises VonageStudioConfigError: ``value`` is another type (a mapping, a number, a bool,
        bytes), a list holds something other than strings, or a string that starts like a
        list cannot be read as one. The message names ``field``.
    :raises InvalidDestination: an entry is neither a phone number nor a SIP URI; the message
        names ``field[index]`` and the entry, redacted.
    """
    return tuple(entry for _, entry in _split_numbers(value, field))


def _split_numbers(value: Any, field: str) -> list[tuple[int, str]]:
    """``(index as given, entry)`` of each non-empty entry; see :func:`split_number_list`."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            items: Any = _literal_list(text, field)
        else:
            items = _LIST_SEPARATORS_RE.split(text)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
    else:
        raise VonageStudioConfigError(
            f"{field}: expected a list of numbers or one string, got {type(value).__name__}: "
            f"{NUMBER_LIST_RULE}"
        )
    entries: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if not isinstance(item, str):
            # bool, int and nested lists alike: an int would lose a leading 0 or +, and a
            # value that can never match must not be kept as if it could.
            raise VonageStudioConfigError(
                f"{where}: expected a string, got {type(item).__name__}: {NUMBER_LIST_RULE}"
            )
        entry = item.strip()
        if not entry:
            continue
        if _SIP_SCHEME_RE.match(entry):
            _check_sip(entry, where)
        else:
            body = entry[4:].strip() if entry[:4].lower() == "tel:" else entry
            compact = _SEPARATORS_RE.sub("", body)
            digits = len(compact.lstrip("+"))
            if not _PHONE_RE.fullmatch(compact) or digits > _MAX_PHONE_DIGITS:
                raise InvalidDestination(
                    f"{where} {redact(entry)!r} is not a phone number or SIP URI: {DESTINATION_RULE}"
                )
        entries.append((index, entry))
    return entries


def parse_number_list(value: Any, *, field: str, default_country: str | None = None) -> tuple[str, ...]:
    """Return a list of numbers (``do_not_call``) normalised like ``to``, duplicates dropped.

    ``value`` takes the shapes :func:`split_number_list` describes; every entry is then
    normalised by :func:`normalize_destination` with ``default_country`` (national numbers
    need it), so it compares equal to the ``to`` of the same person.

    :raises VonageStudioConfigError: as :func:`split_number_list`, or ``default_country`` is
        not a known region.
    :raises InvalidDestination: an entry is not a possible phone number or a valid SIP URI;
        the message names ``field[index]`` and the entry, redacted.
    """
    normalized = [
        normalize_destination(entry, default_country=default_country, field=f"{field}[{index}]")
        for index, entry in _split_numbers(value, field)
    ]
    return tuple(dict.fromkeys(normalized))


def _literal_list(text: str, field: str) -> list[Any]:
    """A list written as JSON or as a Python literal (a rendered XCom), or raise naming ``field``."""
    import ast
    import json

    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise VonageStudioConfigError(
                f"{field}: starts like a list ('[') but is neither JSON nor a Python list: {NUMBER_LIST_RULE}"
            ) from None
    if not isinstance(parsed, (list, tuple)):
        raise VonageStudioConfigError(
            f"{field}: expected a list, got {type(parsed).__name__}: {NUMBER_LIST_RULE}"
        )
    return list(parsed)


def timezone_for_number(digits: str) -> str | None:
    """Return the IANA time zone of a normalised number, or ``None`` when it is not known.

    ``digits`` is a result of :func:`normalize_destination` (a leading ``+`` is tolerated).
    A zone is returned only when ``phonenumbers`` names exactly one for the number, e.g.
    ``"Europe/London"`` for a London landline or ``"America/New_York"`` for a 212 number;
    mobile and toll-free numbers of countries spanning several zones, SIP URIs, unknown
    numbers and zones missing from the local tz database give ``None``.

    Never raises.
    """
    if not isinstance(digits, str):
        return None
    text = digits.strip().removeprefix("+")
    if not text.isascii() or not text.isdigit():
        return None

    import phonenumbers
    from phonenumbers import timezone as pn_timezone

    try:
        number = phonenumbers.parse("+" + text, None)
    except phonenumbers.NumberParseException:
        return None
    zones = pn_timezone.time_zones_for_number(number)
    if len(zones) != 1 or zones[0] == pn_timezone.UNKNOWN_TIMEZONE:
        return None
    zone: str = zones[0]

    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    # phonenumbers' metadata may name a zone this machine's tz database lacks; callers
    # would fail later building a ZoneInfo from it, so treat it as unknown here.
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return zone


def _check_default_country(default_country: str | None) -> str | None:
    """Return ``default_country`` upper-cased, or raise naming ``default_country``."""
    if default_country is None:
        return None
    import phonenumbers

    if isinstance(default_country, str):
        region = default_country.strip().upper()
        if len(region) == 2 and region in phonenumbers.SUPPORTED_REGIONS:
            return region
    raise VonageStudioConfigError(
        f"default_country {default_country!r} is not an ISO 3166 alpha-2 country code "
        "with a telephone numbering plan (e.g. 'GB', 'US', 'DE')"
    )


_REASONS = {
    # phonenumbers.ValidationResult values, kept here so the module imports nothing.
    1: "the country code is unknown",
    2: "too short",
    3: "too long",
    4: "the area code is missing",
    5: "wrong length for its country",
}


def _normalize_phone(text: str, region: str | None, field: str = "to") -> str:
    import phonenumbers

    shown = f"{field} {redact(text)!r}"
    body = text[4:].strip() if text[:4].lower() == "tel:" else text
    compact = _SEPARATORS_RE.sub("", body)
    if not _PHONE_RE.fullmatch(compact):
        raise InvalidDestination(
            f"{shown} is not a phone number (only digits, spaces, '-', '.', '/', "
            f"parentheses and a leading '+' are allowed): {DESTINATION_RULE}"
        )
    if compact.startswith("+"):
        return _international(compact, shown)
    if compact.startswith("00"):
        # 00 is the international prefix almost everywhere; it is never the start of a
        # national number, so it is read the same with or without default_country.
        return _international("+" + compact[2:], shown)

    if region is not None:
        try:
            number = phonenumbers.parse(compact, region)
        except phonenumbers.NumberParseException as exc:
            reason = _parse_error_reason(exc)
        else:
            reason = phonenumbers.is_possible_number_with_reason(number)
            if reason == phonenumbers.ValidationResult.IS_POSSIBLE:
                return _e164_digits(number)
        if reason != phonenumbers.ValidationResult.TOO_LONG:
            # Falling back to "digits with a country code" here would turn a national
            # number with a typo into somebody's number abroad: refuse instead.
            raise InvalidDestination(
                f"{shown} is not a possible phone number in {region} "
                f"({_REASONS.get(reason, 'not a phone number')}): {DESTINATION_RULE}"
            )
        # Longer than any national number of the region: it must carry a country code.
        return _international("+" + compact, shown, too_long_for=region)

    if compact.startswith("0"):
        # No country code starts with 0: this is a national number (trunk prefix).
        raise InvalidDestination(_no_country_code_message(shown))
    return _international("+" + compact, shown, digits_only=True)


def _international(
    candidate: str, shown: str, *, too_long_for: str | None = None, digits_only: bool = False
) -> str:
    """Parse ``+<digits>`` and return its E.164 digits if possible, else raise.

    ``too_long_for`` names the default country the digits were too long for;
    ``digits_only`` says the user typed neither ``+`` nor ``00`` (so the digits may well
    be a national number, and the message says how to give one).
    """
    import phonenumbers

    try:
        number = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException as exc:
        reason = _parse_error_reason(exc)
    else:
        reason = phonenumbers.is_possible_number_with_reason(number)
        if reason == phonenumbers.ValidationResult.IS_POSSIBLE:
            return _e164_digits(number)
    if too_long_for is not None:
        raise InvalidDestination(
            f"{shown} is not a possible phone number: too long for {too_long_for} and "
            f"not a possible number with a country code either: {DESTINATION_RULE}"
        )
    if digits_only and reason == phonenumbers.ValidationResult.INVALID_COUNTRY_CODE:
        raise InvalidDestination(_no_country_code_message(shown))
    hint = "; for national numbers set default_country (e.g. 'GB')" if digits_only else ""
    raise InvalidDestination(
        f"{shown} is not a possible phone number ({_REASONS.get(reason, 'not a phone number')}): "
        f"{DESTINATION_RULE}{hint}"
    )


def _parse_error_reason(exc: Exception) -> int:
    """Map a ``NumberParseException`` to the ``ValidationResult`` that best explains it."""
    import phonenumbers

    error_type = getattr(exc, "error_type", None)
    if error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
        return phonenumbers.ValidationResult.INVALID_COUNTRY_CODE
    if error_type == phonenumbers.NumberParseException.TOO_LONG:
        return phonenumbers.ValidationResult.TOO_LONG
    return phonenumbers.ValidationResult.TOO_SHORT


def _no_country_code_message(shown: str) -> str:
    return (
        f"{shown} has no country code: {DESTINATION_RULE}; "
        "for national numbers set default_country (e.g. 'GB')"
    )


def _e164_digits(number: PhoneNumber) -> str:
    import phonenumbers

    # format_number keeps the Italian-style leading zero that national_number drops.
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]


def _check_sip(text: str, field: str = "to") -> str:
    """Return ``text`` if it is ``sip(s):user@host[:port]``, else raise InvalidDestination."""
    shown = f"{field} {redact(text)!r}"

    def bad(problem: str) -> InvalidDestination:
        return InvalidDestination(f"{shown} is not a valid SIP URI ({problem}): {DESTINATION_RULE}")

    if len(text) > _MAX_SIP_LENGTH:
        raise bad(f"longer than {_MAX_SIP_LENGTH} characters")
    scheme = _SIP_SCHEME_RE.match(text)
    assert scheme is not None  # guaranteed by the caller
    rest = text[scheme.end() :]
    user, at, hostport = rest.partition("@")
    if not at:
        raise bad("no user@ before the host")
    if not user:
        raise bad("the user part is empty")
    if not _SIP_USER_RE.fullmatch(user):
        raise bad("the user part may hold only letters, digits, -_.!~*'()&=+$,;?/ and %HH escapes")
    if not hostport:
        raise bad("the host is missing")

    ipv6 = _IPV6_HOSTPORT_RE.fullmatch(hostport)
    if ipv6:
        try:
            ipaddress.IPv6Address(ipv6.group(1))
        except ValueError:
            raise bad("the host is not a valid [IPv6] address") from None
        port = ipv6.group(2)
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
        if not _valid_host(host):
            raise bad("the host must be a host name, an IPv4 address or an [IPv6] address")
    if port is not None and not (_PORT_RE.fullmatch(port) and 1 <= int(port) <= 65535):
        raise bad("the port must be a number from 1 to 65535")
    return text


def _valid_host(host: str) -> bool:
    """Whether ``host`` is a DNS host name or a dotted IPv4 address (RFC 3261 ``host``)."""
    if not host or len(host) > 254:
        return False
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if all(label.isascii() and label.isdigit() for label in labels):
        # All-numeric must be a real IPv4 address: "999.1.1.1" is neither that nor a name.
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return False
        return True
    if len(name) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        return False
    # RFC 3261 toplabel starts with a letter, which keeps "1.2.3" out.
    return labels[-1][0].isalpha()
