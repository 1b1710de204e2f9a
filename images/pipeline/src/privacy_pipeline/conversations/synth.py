"""Synthetic support conversations for a day: user/agent turns, ~15% privacy requests, PII sprinkled in.

Deterministic for (seed, day); a different day gives different conversations
with ids unique to that day (``conv-20261120-000042``). Each record carries
``synthetic_intent``, the intent the generator wrote it for, so demos and
tests can check search results; the job itself ignores the field. The
requests are written from the training synth's templates (``stages/synth.py``),
so a champion trained on ``synth`` data meets the phrasing it learned.

The PII is fake by construction: emails at reserved example domains, phone
numbers from the 555-01xx / Ofcom drama ranges, card numbers with a test BIN
and a valid Luhn digit, IPs from the documentation ranges (RFC 5737 / 3849).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

# The training data's phrasing, so the champion meets the requests it was trained on.
from privacy_pipeline.conversations.redaction import luhn_valid
from privacy_pipeline.stages import synth as training_synth

NEGATIVE = training_synth.NEGATIVE
PRIVACY_SHARE = 0.15
PII_SHARE = 0.45

PII_SENTENCES: tuple[tuple[str, str], ...] = (
    ("email", "my email is {email}"),
    ("email", "the account is registered under {email}"),
    ("phone", "you can call me on {phone}"),
    ("phone", "my phone number is {phone}"),
    ("card", "the card I paid with is {card}"),
    ("ip", "I was logged in from {ip} when it happened"),
    ("ip", "your site blocked my IP address {ip}"),
)

AGENT_OPENERS = (
    "Thanks for reaching out! I can help with that.",
    "Hi, thanks for contacting support.",
    "Sorry to hear that, let me look into it.",
    "Happy to help with this.",
)
AGENT_ASKS = (
    "Could you confirm the email address on the account?",
    "Can you share your order number so I can check?",
    "Could you tell me a bit more about what happened?",
)
AGENT_CLOSERS = (
    "All done. Is there anything else I can help with?",
    "I've passed this to the right team; you'll hear from us within 30 days.",
    "That's sorted now. Have a great day!",
    "I've submitted the request and you'll get a confirmation shortly.",
)
USER_CLOSERS = ("thanks!", "ok thank you", "great, thanks for the help", "that's all", "cheers")
GREETINGS = ("", "hi, ", "hello, ", "hey there, ", "good morning, ")
FIRST_NAMES = ("jane", "omar", "li", "maria", "sam", "priya", "lucas", "amara", "noah", "yuki")
LAST_NAMES = ("doe", "haddad", "chen", "garcia", "smith", "patel", "martin", "okafor", "berg", "tanaka")
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example")


@dataclass(frozen=True)
class SyntheticDay:
    records: list[dict[str, Any]]
    # conversation_id -> every PII string put into it (for tests that check redaction).
    pii: dict[str, list[str]]


def _luhn_digit(partial: str) -> str:
    """The check digit that makes ``partial`` + it pass the Luhn checksum redaction tests cards with."""
    return next(digit for digit in "0123456789" if luhn_valid(partial + digit))


class _Generator:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def email(self) -> str:
        first, last = self.pick(FIRST_NAMES), self.pick(LAST_NAMES)
        style = int(self.rng.integers(3))
        local = (f"{first}.{last}", f"{first}{last[0]}{int(self.rng.integers(10, 99))}", f"{first}_{last}")[style]
        return f"{local}@{self.pick(EMAIL_DOMAINS)}"

    def phone(self) -> str:
        line = f"{int(self.rng.integers(100)):02d}"
        style = int(self.rng.integers(4))
        return (
            f"+1 415-555-01{line}",
            f"(212) 555-01{line}",
            f"+44 20 7946 00{line}",
            f"07700 9000{line}",
        )[style]

    def card(self) -> str:
        body = "411111" + "".join(str(int(d)) for d in self.rng.integers(0, 10, size=9))
        digits = body + _luhn_digit(body)
        return " ".join(digits[i : i + 4] for i in range(0, 16, 4))

    def ip(self) -> str:
        if self.rng.random() < 0.3:
            return f"2001:db8::{int(self.rng.integers(1, 0xFFFF)):x}"
        return f"{self.pick(('203.0.113', '198.51.100', '192.0.2'))}.{int(self.rng.integers(1, 255))}"

    def request(self, intent: str) -> str:
        """The user's request in ``intent``, from the training synth's templates and slot values."""
        return self.pick(training_synth.TEMPLATES[intent]).format(
            ask=self.pick(training_synth.ASKS),
            data_kind=self.pick(training_synth.DATA_KINDS),
            product=self.pick(training_synth.PRODUCTS),
            channel=self.pick(training_synth.CHANNELS),
            time=self.pick(training_synth.TIME_PHRASES),
            order=f"#{int(self.rng.integers(10_000, 99_999))}",
            years=int(self.rng.integers(2, 16)),
        )


def _intent(rng: np.random.Generator) -> str:
    if rng.random() >= PRIVACY_SHARE:
        return NEGATIVE
    # Among privacy requests, intents occur as often as in the training data.
    names = list(training_synth.PRIVACY_WEIGHTS)
    weights = np.array([training_synth.PRIVACY_WEIGHTS[n] for n in names])
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def generate_day(day: str, conversations: int, seed: int) -> SyntheticDay:
    """``conversations`` synthetic conversations of ``day`` (YYYY-MM-DD)."""
    start_of_day = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
    rng = np.random.default_rng([seed, start_of_day.toordinal()])
    make = _Generator(rng)
    records: list[dict[str, Any]] = []
    pii: dict[str, list[str]] = {}
    for number in range(conversations):
        conversation_id = f"conv-{start_of_day:%Y%m%d}-{number:06d}"
        intent = _intent(rng)
        request = make.request(intent)
        turns: list[tuple[str, str]] = []
        if rng.random() < 0.3:
            turns += [
                ("user", make.pick(GREETINGS) + "I have a question about my account"),
                ("agent", "Sure, what can I do for you?"),
            ]
            turns.append(("user", request))
        else:
            turns.append(("user", make.pick(GREETINGS) + request))
        turns.append(("agent", make.pick(AGENT_OPENERS) + " " + make.pick(AGENT_ASKS)))
        planted: list[str] = []
        if rng.random() < PII_SHARE:
            kind, template = PII_SENTENCES[int(rng.integers(len(PII_SENTENCES)))]
            value = getattr(make, kind)()
            planted.append(value)
            turns.append(("user", template.format(**{kind: value})))
            if rng.random() < 0.3:
                # Agents repeat what they were told; redaction must cover their turns too.
                turns.append(("agent", f"Thanks, I have noted {value} on the ticket."))
        turns += [("agent", make.pick(AGENT_CLOSERS)), ("user", make.pick(USER_CLOSERS))]
        moment = start_of_day + timedelta(seconds=int(rng.integers(0, 86_400 - 3_600)))
        messages = []
        for role, text in turns:
            messages.append({"role": role, "text": text, "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ")})
            moment += timedelta(seconds=int(rng.integers(5, 240)))
        record: dict[str, Any] = {
            "conversation_id": conversation_id,
            "messages": messages,
            "synthetic_intent": intent,
        }
        if rng.random() < 0.9:
            record["user_id"] = f"user-{int(rng.integers(0, 5_000)):05d}"
        records.append(record)
        if planted:
            pii[conversation_id] = planted
    return SyntheticDay(records=records, pii=pii)
