"""PII redaction of conversation text before anything derived from it is stored.

Replaces email addresses with ``[EMAIL]``, IPv4/IPv6 addresses with ``[IP]``,
card-like numbers with ``[CARD]`` and phone numbers with ``[PHONE]``. The
detectors run in that order because the later, looser patterns would
otherwise eat parts of the earlier ones (a phone pattern matches most of
``203.0.113.7``; a card is a long digit run). When in doubt the rules redact:
any run of 7 to 15 digits that is not a date or a card is taken for a phone
number, so an order number may be redacted too, but a phone number is not kept.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IP = "[IP]"
KINDS = ("email", "ip", "card", "phone")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Candidates only; ipaddress decides. Times like 10:30:15 match the shape and fail validation.
# A sentence's full stop may follow an address; a dot and a digit may not.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
# 13-19 digits (the ISO/IEC 7812 card lengths): contiguous, in groups of four
# (Visa, Mastercard, ...) or 4-6-5 (Amex), spaces or dashes between groups.
_CARD = re.compile(r"(?<![\w-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})(?![\w-])")
# An optional +country code, an optional (area code), then digit groups with
# common separators; not an ISO date, not the tail of an id like
# conv-20261120-000042. The digit count is checked separately (7..15, 15 being
# E.164's maximum).
_PHONE = re.compile(
    r"(?<![\w+-])(?!\d{4}-\d{2}-\d{2}(?!\d))(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]?\d{2,5})*(?![\w])"
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


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


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _is_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _is_ipv4(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def _is_card(candidate: str) -> bool:
    """Luhn-valid, or 16 digits (the common card length) even with a mistyped digit.

    Other Luhn-invalid 13-19 digit runs are order or tracking numbers, not PII.
    """
    digits = _digits(candidate)
    return luhn_valid(digits) or len(digits) == 16


def _is_phone(candidate: str) -> bool:
    digits = _digits(candidate)
    return MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS and not _ISO_DATE.fullmatch(candidate.strip())


_PHONE_GROUP = re.compile(r"\+?\(?\d+\)?")
MAX_PHONE_DIGITS = 15
MIN_PHONE_DIGITS = 7


def _redact_phones(match: re.Match[str], counts: Counter[str]) -> str:
    """One phone number, or several written back to back: the pattern cannot tell where one ends.

    A run with more digits than any phone number is cut, group by group, into
    pieces of at most 15 digits, and each piece long enough to be a phone is
    redacted.
    """
    candidate = match.group(0)
    if _is_phone(candidate):
        counts["phone"] += 1
        return PHONE
    pieces: list[list[re.Match[str]]] = [[]]
    piece_digits = 0
    for group in _PHONE_GROUP.finditer(candidate):
        digits = len(_digits(group.group(0)))
        if pieces[-1] and piece_digits + digits > MAX_PHONE_DIGITS:
            pieces.append([])
            piece_digits = 0
        pieces[-1].append(group)
        piece_digits += digits
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


_VALIDATED_DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool], str], ...] = (
    ("email", _EMAIL, lambda _: True, EMAIL),
    ("ip", _IPV6, _is_ipv6, IP),
    ("ip", _IPV4, _is_ipv4, IP),
    ("card", _CARD, _is_card, CARD),
)


def redact(text: str) -> Redaction:
    """``text`` with every detected email, IP, card and phone number replaced by its placeholder."""
    counts: Counter[str] = Counter()
    for kind, pattern, accept, placeholder in _VALIDATED_DETECTORS:

        def replace(
            match: re.Match[str],
            kind: str = kind,
            accept: Callable[[str], bool] = accept,
            placeholder: str = placeholder,
        ) -> str:
            if not accept(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return placeholder

        text = pattern.sub(replace, text)
    text = _PHONE.sub(lambda match: _redact_phones(match, counts), text)
    return Redaction(text=text, counts=counts)


def contains_pii(text: str) -> bool:
    """Whether ``redact`` would change ``text``."""
    return bool(redact(text).counts)


def contains_email(text: str) -> bool:
    return bool(_EMAIL.search(text))
