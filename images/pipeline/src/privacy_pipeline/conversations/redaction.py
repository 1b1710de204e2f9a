"""PII detection and redaction: the one place the pipeline's PII patterns live.

``redact`` replaces, in this order: email addresses with ``[EMAIL]``, IBANs
(ISO 13616 mod-97 checksum) with ``[IBAN]``, IPv4/IPv6 addresses with
``[IP]``, card-like numbers (Luhn, or 16 digits) with ``[CARD]``, US social
security numbers (AAA-GG-SSSS with the never-issued ranges excluded) with
``[SSN]``, UK national insurance numbers (the HMRC prefix and suffix rules)
with ``[NINO]``, UK postcodes and US ZIP codes after a state abbreviation with
``[POSTCODE]``, street addresses (a house number, up to three words, a street
suffix such as Street/Rd/Avenue) and PO boxes with ``[ADDRESS]``, and phone
numbers with ``[PHONE]``. The order matters: the later, looser patterns would
otherwise eat parts of the earlier ones (a phone pattern matches most of
``203.0.113.7``; a card or an IBAN holds long digit runs).

When in doubt the rules redact: any run of 7 to 15 digits that is not a date,
a card or one of the above is taken for a phone number, so an order number may
be redacted too, but a phone number is not kept. A number that fails its
checksum (an SSN in a never-issued range) still goes as a phone when it has the
digits of one. Not covered: names, free-form addresses without a house number
and street suffix, dates of birth, and national ids of other countries.

Hostile text: every pattern here runs in time linear in the text. Each one
starts only where the previous character cannot continue it (a lookbehind),
and each repetition either has a bounded count or is possessive (``*+``,
``{2,}+``), so a failed attempt never retries the ways a digit run could have
been split. tests/test_redaction.py checks this with generated adversarial text.

Presidio's pattern recognizers (presidio-analyzer's IbanRecognizer,
UsSsnRecognizer, UkNinoRecognizer) were tried and not used: importing them
imports spaCy (about 390 MB of packages in the stage image and 5 s at start),
for regexes and checksums of a few lines each, which are written here in the
same shape. ``phonenumbers``' matcher was not used for phones either: it finds
only numbers valid for a region, where the policy is to redact any 7-15 digit
run.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("email", "iban", "ip", "card", "ssn", "nino", "postcode", "address", "phone")
EMAIL, IBAN, IP, CARD, SSN, NINO, POSTCODE, ADDRESS, PHONE = (f"[{kind.upper()}]" for kind in KINDS)

# The lookbehind makes the scan start only at the first character of a local
# part; without it every later character of a long run is a fresh start that
# rescans the run (quadratic).
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)  # fmt: skip
# Country code, check digits, then up to 30 letters/digits in groups of four
# (space or dash between groups, as IBANs are printed); the checksum decides.
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,3})?(?![A-Za-z0-9])"
)
IBAN_LENGTHS = range(15, 35)
# Candidates only; ipaddress decides. Times like 10:30:15 match the shape and fail validation.
# A sentence's full stop may follow an address; a dot and a digit may not.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
# 13-19 digits (the ISO/IEC 7812 card lengths): contiguous, in groups of four
# (Visa, Mastercard, ...) or 4-6-5 (Amex), spaces or dashes between groups.
_CARD = re.compile(r"(?<![\w-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})(?![\w-])")
# AAA-GG-SSSS, dashes or spaces; the ranges the SSA never issues are excluded below.
_SSN = re.compile(r"(?<![\w-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-])")
# Two prefix letters (D, F, I, Q, U, V never; O not second), six digits, A-D.
_NINO = re.compile(
    r"(?<![A-Za-z0-9])([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])", re.IGNORECASE
)
_NINO_UNALLOCATED_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
# The Royal Mail formats A9, A99, A9A, AA9, AA99, AA9A then 9AA, with the
# letters each position never uses left out (that keeps "Q3 results" and the like).
_UK_POSTCODE = re.compile(
    r"(?<![A-Za-z0-9])[A-PR-UWYZ][A-HK-Y]?\d[A-HJKPSTUW\d]? ?\d[ABD-HJLNP-UW-Z]{2}(?![A-Za-z0-9])", re.IGNORECASE
)
US_STATES = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA",
    "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR",
    "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY", "PR",
)  # fmt: skip
# A bare five-digit number is an order or an amount as often as a ZIP code;
# after a state abbreviation ("Springfield, IL 62704") it is a ZIP code.
_US_ZIP = re.compile(rf"(?<![A-Za-z0-9])(?:{'|'.join(US_STATES)}),? {{1,2}}(?P<pii>\d{{5}}(?:-\d{{4}})?)(?![\w-])")
STREET_SUFFIXES = (
    "street", "st", "road", "rd", "avenue", "ave", "lane", "ln", "drive", "dr", "boulevard", "blvd", "parkway",
    "pkwy", "highway", "hwy", "terrace", "crescent", "gardens", "mews",
)  # fmt: skip
# Words a street name does not contain: without them "3 days on the road" would be an address.
_NOT_STREET_NAME_WORDS = (
    "a", "an", "the", "on", "in", "of", "to", "and", "or", "for", "at", "by", "with", "from", "my", "your", "our",
    "their", "his", "her", "is", "are", "was", "were", "per", "times", "days", "weeks", "months", "years",
)  # fmt: skip
# "221B Baker Street", "1600 Pennsylvania Avenue", "12 high st.": a house
# number, one to three words, a street suffix. The word count is bounded, so a
# failed attempt costs a few words, never the rest of the text.
_STREET_ADDRESS = re.compile(
    rf"(?<![\w-])\d{{1,5}}[A-Za-z]?"
    rf"(?:,?[ \t]+(?!(?:{'|'.join(_NOT_STREET_NAME_WORDS)})\b)[A-Za-z][A-Za-z'.-]*){{1,3}}?"
    rf"[ \t]+(?:{'|'.join(STREET_SUFFIXES)})\b",
    re.IGNORECASE,
)
_PO_BOX = re.compile(r"(?<!\w)P\.? ?O\.? ?Box[ \t]*\d{1,6}(?!\w)", re.IGNORECASE)
# An optional +country code, an optional (area code), then digit groups (two
# or more digits after the first, as in 1-800-555-0199) with common separators
# between them; not an ISO date, not the tail of an id like
# conv-20261120-000042. Each group is taken whole (possessive) and must not run
# into a letter; a group that does ends the number before it. The digit count
# is checked separately (7..15, 15 being E.164's maximum).
_PHONE = re.compile(
    r"(?<![\w+-])(?!\d{4}-\d{2}-\d{2}(?!\d))(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?"
    r"\d++(?!\w)(?:[\s.-]\d{2,}+(?!\w))*+"
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PHONE_GROUP = re.compile(r"\+?\(?\d++\)?")
MAX_PHONE_DIGITS = 15
MIN_PHONE_DIGITS = 7


@dataclass(frozen=True)
class Redaction:
    text: str
    counts: Counter[str]


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: the country code and check digits moved to the end, letters as 10..35, mod 97 is 1."""
    compact = "".join(char for char in candidate if char.isalnum()).upper()
    if len(compact) not in IBAN_LENGTHS or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _is_ipv6(match: re.Match[str]) -> bool:
    try:
        ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return False
    return True


def _is_ipv4(match: re.Match[str]) -> bool:
    try:
        ipaddress.IPv4Address(match.group(0))
    except ValueError:
        return False
    return True


def _is_card(match: re.Match[str]) -> bool:
    """Luhn-valid, or 16 digits (the common card length) even with a mistyped digit.

    Other Luhn-invalid 13-19 digit runs are order or tracking numbers, not PII.
    """
    digits = _digits(match.group(0))
    return luhn_valid(digits) or len(digits) == 16


def _is_ssn(match: re.Match[str]) -> bool:
    """Area 000, 666 and 900-999, group 00 and serial 0000 were never issued."""
    area, _, group, serial = match.groups()
    return area not in {"000", "666"} and area < "900" and group != "00" and serial != "0000"


def _is_nino(match: re.Match[str]) -> bool:
    return match.group(1).upper() not in _NINO_UNALLOCATED_PREFIXES


def _always(_: re.Match[str]) -> bool:
    return True


def _is_phone(candidate: str) -> bool:
    digits = _digits(candidate)
    return MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS and not _ISO_DATE.fullmatch(candidate.strip())


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] = _always
    # The named group replaced when the match carries context that is not PII
    # (the state before a ZIP code); None replaces the whole match.
    group: str | None = None

    @property
    def placeholder(self) -> str:
        return f"[{self.kind.upper()}]"


_VALIDATED_DETECTORS = (
    _Detector("email", _EMAIL),
    _Detector("iban", _IBAN, lambda match: iban_valid(match.group(0))),
    _Detector("ip", _IPV6, _is_ipv6),
    _Detector("ip", _IPV4, _is_ipv4),
    _Detector("card", _CARD, _is_card),
    _Detector("ssn", _SSN, _is_ssn),
    _Detector("nino", _NINO, _is_nino),
    _Detector("postcode", _UK_POSTCODE),
    _Detector("postcode", _US_ZIP, group="pii"),
    _Detector("address", _STREET_ADDRESS),
    _Detector("address", _PO_BOX),
)


def _redact_phones(match: re.Match[str], counts: Counter[str]) -> str:
    """One phone number, or several written back to back: the pattern cannot tell where one ends.

    A run with more digits than any phone number is cut, group by group, into
    pieces of at most 15 digits, and each piece long enough to be a phone is
    redacted.
    """
    candidate = match.group(0)
    digits = _digits(candidate)
    if len(digits) < MIN_PHONE_DIGITS:
        # Most candidates: a short number in a sentence, nothing to cut.
        return candidate
    if _is_phone(candidate):
        counts["phone"] += 1
        return PHONE
    pieces: list[list[re.Match[str]]] = [[]]
    piece_digits = 0
    for group in _PHONE_GROUP.finditer(candidate):
        group_digits = len(_digits(group.group(0)))
        if pieces[-1] and piece_digits + group_digits > MAX_PHONE_DIGITS:
            pieces.append([])
            piece_digits = 0
        pieces[-1].append(group)
        piece_digits += group_digits
    redacted, position = [], 0
    for piece in pieces:
        # A single group longer than any phone number (a tracking number) is left alone.
        if not MIN_PHONE_DIGITS <= len(_digits("".join(g.group(0) for g in piece))) <= MAX_PHONE_DIGITS:
            continue
        redacted.append(candidate[position : piece[0].start()])
        redacted.append(PHONE)
        counts["phone"] += 1
        position = piece[-1].end()
    redacted.append(candidate[position:])
    return "".join(redacted)


def _apply(detector: _Detector, text: str, counts: Counter[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if not detector.accept(match):
            return match.group(0)
        counts[detector.kind] += 1
        if detector.group is None:
            return detector.placeholder
        start, end = match.span(detector.group)
        offset = match.start()
        whole = match.group(0)
        return whole[: start - offset] + detector.placeholder + whole[end - offset :]

    return detector.pattern.sub(replace, text)


def redact(text: str) -> Redaction:
    """``text`` with every detected piece of PII replaced by its placeholder, and the count per kind."""
    counts: Counter[str] = Counter()
    for detector in _VALIDATED_DETECTORS:
        text = _apply(detector, text, counts)
    text = _PHONE.sub(lambda match: _redact_phones(match, counts), text)
    return Redaction(text=text, counts=counts)


def contains_email(text: str) -> bool:
    return bool(_EMAIL.search(text))
