"""PII redaction: every kind is replaced by its placeholder, and look-alikes that are not PII are kept."""

from __future__ import annotations

import pytest

from privacy_pipeline.conversations.redaction import contains_email, contains_pii, luhn_valid, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+news@mail.example.co.uk please", "write to [EMAIL] please"),
        ("JOHN_SMITH42@EXAMPLE.ORG is mine", "[EMAIL] is mine"),
        ("call me on +1 (415) 555-0134.", "call me on [PHONE]."),
        ("my number is 415.555.0134", "my number is [PHONE]"),
        ("ring +44 20 7946 0958 after six", "ring [PHONE] after six"),
        ("mobile 07700 900123", "mobile [PHONE]"),
        ("5550134", "[PHONE]"),
        ("paid with 4111 1111 1111 1111", "paid with [CARD]"),
        ("paid with 4111-1111-1111-1111 yesterday", "paid with [CARD] yesterday"),
        ("amex 378282246310005", "amex [CARD]"),
        ("logged in from 203.0.113.7.", "logged in from [IP]."),
        ("v6 2001:db8::1 and mapped ::ffff:192.0.2.1", "v6 [IP] and mapped [IP]"),
    ],
    ids=[
        "email", "email-upper", "phone-us", "phone-dots", "phone-uk", "phone-mobile", "phone-bare", "card-spaces",
        "card-dashes", "card-amex", "ipv4", "ipv6",
    ],
)  # fmt: skip
def test_each_kind_of_pii_is_replaced_by_its_placeholder(text: str, expected: str) -> None:
    assert redact(text).text == expected


@pytest.mark.parametrize(
    "text",
    [
        "my order arrived on 2026-11-20 at 10:15:30",
        "I bought 3 items for 1,299.00 and version 1.2.3 crashed",
        "ticket conv-20261120-000042 is still open",
        "tracking number 1234567890123456789 looks wrong",
        "the mac address is aa:bb:cc:dd:ee:ff",
        "room 12 34 56",
    ],
    ids=["date-time", "prices-versions", "ticket-id", "long-tracking-number", "mac-address", "short-groups"],
)
def test_dates_prices_ids_and_short_numbers_are_kept(text: str) -> None:
    assert redact(text).text == text
    assert not contains_pii(text)


def test_counts_say_what_was_redacted() -> None:
    result = redact("mail a@example.com or b@example.com, call 415-555-0134, from 198.51.100.4")
    assert dict(result.counts) == {"email": 2, "phone": 1, "ip": 1}
    assert redact("nothing here").counts == {}


def test_back_to_back_phone_numbers_are_both_redacted() -> None:
    result = redact("either 415 555 0134 415 555 0199")
    assert "0134" not in result.text and "0199" not in result.text
    assert result.counts["phone"] == 2


def test_card_rule_is_luhn_or_the_sixteen_digit_length() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    # A mistyped 16-digit card is still redacted; a Luhn-invalid 19-digit tracking number is not a card.
    assert redact("4111 1111 1111 1112").text == "[CARD]"
    assert "[CARD]" not in redact("1234567890123456789").text


def test_redaction_is_idempotent() -> None:
    once = redact("mail jane@example.com, card 4111 1111 1111 1111, ip 10.0.0.1, phone +1 415-555-0134").text
    assert redact(once).text == once
    assert not contains_pii(once)


def test_email_check_for_ids() -> None:
    assert contains_email("jane@example.com-ticket-7")
    assert not contains_email("conv-20261120-000042")
