"""PII redaction: each kind is replaced by its placeholder, look-alikes are kept, and hostile text runs in linear time.

Every expectation is a literal written by hand (the redacted text, the counts),
never the redactor's own detectors asked whether it did its job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from adversarial_text import adversarial_texts, budget_seconds, fastest_of, within_budget
from hypothesis import HealthCheck, example, given, settings

from privacy_pipeline import storage
from privacy_pipeline.config import load_config
from privacy_pipeline.conversations.redaction import KINDS, contains_email, iban_valid, luhn_valid, redact
from privacy_pipeline.stages import conversations_redact, conversations_validate

# Seconds per 100,000 characters: about 5x the slowest adversarial input measured on a loaded CI core.
REDACT_BUDGET_PER_100K = 5.0


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
        ("toll free 1-800-555-0199", "toll free [PHONE]"),
        ("paid with 4111 1111 1111 1111", "paid with [CARD]"),
        ("paid with 4111-1111-1111-1111 yesterday", "paid with [CARD] yesterday"),
        ("amex 378282246310005", "amex [CARD]"),
        ("logged in from 203.0.113.7.", "logged in from [IP]."),
        ("v6 2001:db8::1 and mapped ::ffff:192.0.2.1", "v6 [IP] and mapped [IP]"),
        ("refund to GB82 WEST 1234 5698 7654 32 please", "refund to [IBAN] please"),
        ("IBAN DE89370400440532013000.", "IBAN [IBAN]."),
        ("my ssn is 123-45-6789", "my ssn is [SSN]"),
        ("SSN 219 09 9999 on file", "SSN [SSN] on file"),
        ("NI number AB 12 34 56 C", "NI number [NINO]"),
        ("nino ab123456c thanks", "nino [NINO] thanks"),
        ("post it to SW1A 1AA", "post it to [POSTCODE]"),
        ("m1 1ae is my postcode", "[POSTCODE] is my postcode"),
        ("Springfield, IL 62704", "Springfield, IL [POSTCODE]"),
        ("Austin TX 78701-1234", "Austin TX [POSTCODE]"),
        ("I live at 221B Baker Street, London NW1 6XE", "I live at [ADDRESS], London [POSTCODE]"),
        ("send it to 1600 Pennsylvania Avenue NW", "send it to [ADDRESS] NW"),
        ("12 high st.", "[ADDRESS]."),
        ("write to PO Box 1234", "write to [ADDRESS]"),
    ],
    ids=[
        "email", "email-upper", "phone-us", "phone-dots", "phone-uk", "phone-mobile", "phone-bare", "phone-1-800",
        "card-spaces", "card-dashes", "card-amex", "ipv4", "ipv6", "iban-spaced", "iban-compact", "ssn-dashes",
        "ssn-spaces", "nino-spaced", "nino-lower", "uk-postcode", "uk-postcode-lower", "us-zip", "us-zip-plus-4",
        "street-and-postcode", "avenue", "street-abbreviated", "po-box",
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
        "order 62704 shipped",
        "Q3 results were the 4th best",
        "It took 3 days on the road",
        "QQ 12 34 56 C is the example NI number",
        "call 415 555 0134abc",
    ],
    ids=[
        "date-time", "prices-versions", "ticket-id", "long-tracking-number", "mac-address", "short-groups",
        "bare-five-digits", "quarter-and-ordinal", "road-in-a-sentence", "nino-never-issued-prefix",
        "digits-glued-to-letters",
    ],
)  # fmt: skip
def test_dates_prices_ids_and_short_numbers_are_kept(text: str) -> None:
    result = redact(text)
    assert result.text == text
    assert result.counts == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The check digits are off by one: not an IBAN; the digit run is still redacted, as a phone number.
        ("GB82 WEST 1234 5698 7654 33", "GB82 WEST [PHONE]"),
        # Area 666 and 9xx, group 00 and serial 0000 were never issued: not SSNs, but 9 digits are a phone.
        ("666-12-3456", "[PHONE]"),
        ("912-12-3456", "[PHONE]"),
        ("123-00-4567", "[PHONE]"),
        ("123-45-0000", "[PHONE]"),
    ],
    ids=["iban-bad-checksum", "ssn-area-666", "ssn-area-9xx", "ssn-group-00", "ssn-serial-0000"],
)
def test_a_failed_checksum_falls_back_to_the_looser_rule(text: str, expected: str) -> None:
    assert redact(text).text == expected


def test_counts_say_what_was_redacted() -> None:
    result = redact(
        "mail a@example.com or b@example.com, call 415-555-0134, from 198.51.100.4, "
        "IBAN GB82WEST12345698765432, at 10 Downing Street, SW1A 2AA"
    )
    assert result.text == (
        "mail [EMAIL] or [EMAIL], call [PHONE], from [IP], IBAN [IBAN], at [ADDRESS], [POSTCODE]"
    )  # fmt: skip
    assert dict(result.counts) == {"email": 2, "phone": 1, "ip": 1, "iban": 1, "address": 1, "postcode": 1}
    assert redact("nothing here").counts == {}


def test_back_to_back_phone_numbers_are_both_redacted() -> None:
    result = redact("either 415 555 0134 415 555 0199")
    assert result.text == "either [PHONE] [PHONE]"
    assert result.counts == {"phone": 2}


def test_card_rule_is_luhn_or_the_sixteen_digit_length() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    # A mistyped 16-digit card is still redacted; a Luhn-invalid 19-digit tracking number is not a card.
    assert redact("4111 1111 1111 1112").text == "[CARD]"
    assert redact("1234567890123456789").text == "1234567890123456789"


def test_iban_checksum_is_iso_13616_mod_97() -> None:
    # Published example IBANs (ECBS) of four countries and lengths.
    for iban in ("GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606", "NO9386011117947"):
        assert iban_valid(iban), iban
    assert not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("GB82WEST1234")


def test_redaction_is_idempotent() -> None:
    once = redact("mail jane@example.com, card 4111 1111 1111 1111, ip 10.0.0.1, phone +1 415-555-0134").text
    assert once == "mail [EMAIL], card [CARD], ip [IP], phone [PHONE]"
    twice = redact(once)
    assert twice.text == once
    assert twice.counts == {}


def test_email_check_for_ids() -> None:
    assert contains_email("jane@example.com-ticket-7")
    assert not contains_email("conv-20261120-000042")


def test_the_redact_stage_counts_each_kind_in_its_xcom(tmp_path: Path) -> None:
    partition = tmp_path / "raw" / "ds=2026-11-20"
    partition.mkdir(parents=True)
    messages = [
        ("user", "I'm jane@example.com, IBAN GB82 WEST 1234 5698 7654 32, ssn 123-45-6789"),
        ("agent", "Noted. We will write to 10 Downing Street, SW1A 2AA or call 020 7946 0958."),
        ("user", "or jim@example.org"),
    ]
    record = {
        "conversation_id": "conv-1",
        "messages": [{"role": r, "text": t, "timestamp": "2026-11-20T10:00:00Z"} for r, t in messages],
    }
    (partition / "part-0000.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    run_uri = str(tmp_path / "runs" / "r1")
    config = load_config()
    validated = conversations_validate.run(config=config, source=str(partition) + "/", run_uri=run_uri)
    # What the CLI does after a stage returns: redact reads validate's committed result.
    storage.write_json(validated.commit_uri, validated.payload())
    xcom = conversations_redact.run(config=config, run_uri=run_uri).xcom
    assert xcom["redactions"] == {
        "email": 2, "iban": 1, "ip": 0, "card": 0, "ssn": 1, "nino": 0, "postcode": 1, "address": 1, "phone": 1,
    }  # fmt: skip
    assert list(xcom["redactions"]) == list(KINDS)
    assert xcom["conversations_with_pii"] == 1


# --- hostile text -------------------------------------------------------------


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=adversarial_texts())
# The inputs that stalled the old patterns: a digit run ending in a letter (the
# phone pattern's exponential backtracking) and a long run of local-part
# characters with no "@" (the email pattern rescanning it from every start).
@example(text="4" * 60 + "a")
@example(text="12 " * 7_000 + "x")
@example(text="a" * 100_000)
def test_redaction_of_hostile_text_finishes_within_a_linear_budget(text: str) -> None:
    with within_budget(budget_seconds(text, REDACT_BUDGET_PER_100K), f"redact() of {len(text)} chars"):
        redact(text)


@pytest.mark.parametrize(
    "unit",
    ["1", "12 ", "a", "a@", "(1", "AB 12 ", "1 a "],
    ids=["digit-run", "digit-groups", "local-part", "many-ats", "parens", "nino-like", "address-like"],
)
def test_doubling_hostile_text_at_most_triples_the_redaction_time(unit: str) -> None:
    # Two doublings (25k -> 100k chars), each allowed 3x: linear time is 4x,
    # quadratic 16x, exponential never finishes (the budget stops it). Two
    # doublings rather than one keep a busy machine's noise below the margin.
    short, long = (unit * (chars // len(unit)) + "x" for chars in (25_000, 100_000))
    # Six calls, each within the per-call budget.
    with within_budget(6 * budget_seconds(long, REDACT_BUDGET_PER_100K), f"timing redact() on {unit!r} runs"):
        short_seconds, long_seconds = fastest_of(redact, short), fastest_of(redact, long)
    assert long_seconds <= 3 * 3 * short_seconds + 0.05, (short_seconds, long_seconds)
