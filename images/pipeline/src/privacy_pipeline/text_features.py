"""Handcrafted text features: cheap, stateless signals the sentence embedding blurs.

Every feature is a pure function of one text (no fitting, no downloads), so
training, the holdout and inference featurize identically. Each column is
``hc_<name>`` in float32; ratios are 0.0 when their denominator is empty, so an
empty string gives a row of finite values.

All keyword lists live here as named constants. Patterns are compiled once,
case-insensitive, anchored on word boundaries, and written so that every scan
is linear in the text: each starts only where a match can begin (a lookbehind)
and gives nothing back once a run is taken (possessive), so a 1 MB message, or
a hostile one, cannot stall a pod. The email, phone and card cues are the
redactor's own detectors (conversations/redaction.py), so "has a phone number"
means the same thing here as in what gets redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline.conversations.redaction import redact

FEATURE_PREFIX = "hc_"

# --- keyword lexicons -------------------------------------------------------
# Privacy intents, one list per intent. Phrases are matched as whole words and
# longest first, so "withdraw my consent" counts once, not also as "consent".
DELETION_KEYWORDS: tuple[str, ...] = (
    "delete",
    "deleted",
    "deleting",
    "deletion",
    "erase",
    "erased",
    "erasure",
    "remove",
    "removed",
    "removal",
    "forget",
    "right to be forgotten",
    "wipe",
    "purge",
    "close my account",
    "destroy",
)
ACCESS_KEYWORDS: tuple[str, ...] = (
    "access",
    "copy of my data",
    "copy of my information",
    "copy of my personal data",
    "download",
    "export",
    "what data",
    "what information",
    "what personal data",
    "subject access",
    "subject access request",
    "dsar",
    "sar",
    "data portability",
    "see my data",
    "data you hold",
    "data you have",
)
OPT_OUT_KEYWORDS: tuple[str, ...] = (
    "opt out",
    "opt-out",
    "opting out",
    "do not sell",
    "don't sell",
    "do not share",
    "don't share",
    "unsubscribe",
    "marketing",
    "newsletter",
    "share",
    "sharing",
    "third parties",
    "third party",
    "advertising",
    "targeted ads",
    "stop sending",
)
CONSENT_KEYWORDS: tuple[str, ...] = (
    "withdraw consent",
    "withdraw my consent",
    "withdrawing my consent",
    "revoke consent",
    "revoke my consent",
    "revoking my consent",
    "no longer consent",
    "do not consent",
    "don't consent",
    "consent",
    "permission",
    "take back my permission",
)
POLICY_KEYWORDS: tuple[str, ...] = (
    "privacy policy",
    "privacy notice",
    "gdpr",
    "ccpa",
    "cookie",
    "cookies",
    "how do you use",
    "how is my data used",
    "how do you process",
    "data protection",
    "terms of service",
    "retention",
    "how long do you keep",
    "lawful basis",
)
# Named laws and the GDPR articles users cite: 15 (access), 17 (erasure),
# 20 (portability), 21 (objection).
LEGAL_REFERENCES: tuple[str, ...] = (
    "gdpr",
    "ccpa",
    "cpra",
    "data protection act",
    "article 15",
    "article 17",
    "article 20",
    "article 21",
    "art. 15",
    "art. 17",
    "art 15",
    "art 17",
)

# Opening verbs of a request phrased as a command ("delete my account").
IMPERATIVE_VERBS: tuple[str, ...] = (
    "delete",
    "remove",
    "erase",
    "stop",
    "send",
    "give",
    "show",
    "unsubscribe",
    "cancel",
    "close",
    "opt",
    "withdraw",
    "revoke",
    "export",
    "provide",
    "tell",
    "forget",
    "wipe",
    "let",
    "email",
    "disable",
    "deactivate",
)
POLITE_OPENERS: tuple[str, ...] = ("please", "pls", "plz", "kindly")
QUESTION_WORDS: tuple[str, ...] = (
    "how",
    "what",
    "why",
    "when",
    "where",
    "who",
    "which",
    "can",
    "could",
    "do",
    "does",
    "did",
    "is",
    "are",
    "will",
    "would",
    "should",
    "may",
)

# A deliberately small sentiment lexicon, written for customer-support
# messages (no download, no licence question); it only has to separate a calm
# request from an angry complaint.
POSITIVE_WORDS: tuple[str, ...] = (
    "good",
    "great",
    "thanks",
    "thank",
    "love",
    "happy",
    "appreciate",
    "helpful",
    "excellent",
    "nice",
    "awesome",
    "glad",
    "pleased",
    "wonderful",
    "perfect",
)
NEGATIVE_WORDS: tuple[str, ...] = (
    "bad",
    "terrible",
    "awful",
    "angry",
    "annoyed",
    "annoying",
    "frustrated",
    "hate",
    "worst",
    "horrible",
    "disappointed",
    "upset",
    "unacceptable",
    "ridiculous",
    "spam",
    "creepy",
    "illegal",
    "violation",
    "complaint",
    "sick",
    "furious",
    "scam",
)
NEGATIONS: tuple[str, ...] = (
    "not",
    "no",
    "never",
    "nothing",
    "nobody",
    "none",
    "neither",
    "nor",
    "cannot",
    "without",
)
URGENCY_WORDS: tuple[str, ...] = (
    "immediately",
    "asap",
    "as soon as possible",
    "now",
    "today",
    "urgent",
    "urgently",
    "right away",
    "straight away",
    "at once",
)
POLITENESS_PHRASES: tuple[str, ...] = (
    "please",
    "pls",
    "plz",
    "kindly",
    "thank you",
    "thanks",
    "appreciate",
    "would you mind",
)
FIRST_PERSON_PRONOUNS: tuple[str, ...] = ("i", "me", "my", "mine", "myself", "we", "us", "our", "ours")
SECOND_PERSON_PRONOUNS: tuple[str, ...] = ("you", "your", "yours", "yourself", "yourselves", "u", "ur")


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """One case-insensitive alternation of whole-word phrases, longest first."""
    ordered = sorted(set(phrases), key=len, reverse=True)
    alternation = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in ordered)
    # Lookarounds instead of \b so phrases ending in "." or "-" still anchor.
    return re.compile(rf"(?<![\w'])(?:{alternation})(?![\w'])", re.IGNORECASE)


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# A run of end marks counts once, from its first mark: starting inside the run
# would rescan it from every position (quadratic on "!!!!...x").
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++(?:\s|$)")
_TERMINAL_PUNCTUATION = re.compile(r"[.!?]$")
_PUNCTUATION = re.compile(r"[^\w\s]")
_UPPERCASE = re.compile(r"[A-Z]")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_QUESTION_MARK = re.compile(r"\?")
_EXCLAMATION = re.compile("!")
_NEGATION = re.compile(rf"{_phrase_pattern(NEGATIONS).pattern}|n't(?![\w'])", re.IGNORECASE)
_OPENING = re.compile(
    rf"^\W*+(?:(?:{'|'.join(POLITE_OPENERS)})\b|(?:{'|'.join(IMPERATIVE_VERBS)})\b)",
    re.IGNORECASE,
)
_QUESTION_OPENING = re.compile(rf"^\W*+(?:{'|'.join(QUESTION_WORDS)})\b", re.IGNORECASE)
_QUESTION_WORD = _phrase_pattern(
    w for w in QUESTION_WORDS if w in {"how", "what", "why", "when", "where", "who", "which"}
)

_MY_EMAIL = _phrase_pattern(("my email", "my e-mail", "my email address"))
_MY_PHONE = _phrase_pattern(("my phone", "my phone number", "my mobile", "my number", "my cell"))
_MY_ADDRESS = _phrase_pattern(("my address", "my home address", "my postal address"))

_DELETION = _phrase_pattern(DELETION_KEYWORDS)
_ACCESS = _phrase_pattern(ACCESS_KEYWORDS)
_OPT_OUT = _phrase_pattern(OPT_OUT_KEYWORDS)
_CONSENT = _phrase_pattern(CONSENT_KEYWORDS)
_POLICY = _phrase_pattern(POLICY_KEYWORDS)
_LEGAL = _phrase_pattern(LEGAL_REFERENCES)
_POSITIVE = _phrase_pattern(POSITIVE_WORDS)
_NEGATIVE = _phrase_pattern(NEGATIVE_WORDS)
_URGENCY = _phrase_pattern(URGENCY_WORDS)
_POLITENESS = _phrase_pattern(POLITENESS_PHRASES)
_FIRST_PERSON = _phrase_pattern(FIRST_PERSON_PRONOUNS)
_SECOND_PERSON = _phrase_pattern((*SECOND_PERSON_PRONOUNS, "your company", "your app", "your service"))

HANDCRAFTED_FEATURES: tuple[str, ...] = (
    "char_count",
    "word_count",
    "mean_word_length",
    "sentence_count",
    "punctuation_count",
    "question_mark_count",
    "exclamation_count",
    "question_word_count",
    "question_cue",
    "imperative_cue",
    "uppercase_ratio",
    "digit_ratio",
    "deletion_keywords",
    "access_keywords",
    "opt_out_keywords",
    "consent_keywords",
    "policy_keywords",
    "legal_reference_cue",
    "positive_words",
    "negative_words",
    "sentiment_score",
    "negation_count",
    "email_address_cue",
    "phone_number_cue",
    "card_number_cue",
    "my_email_cue",
    "my_phone_cue",
    "my_address_cue",
    "first_person_ratio",
    "second_person_ratio",
    "urgency_count",
    "politeness_count",
)
HANDCRAFTED_COLUMNS: tuple[str, ...] = tuple(f"{FEATURE_PREFIX}{name}" for name in HANDCRAFTED_FEATURES)


def _count(texts: pd.Series, pattern: re.Pattern[str]) -> pd.Series:
    return texts.str.count(pattern).astype("float64")


def _cue(texts: pd.Series, pattern: re.Pattern[str]) -> pd.Series:
    return texts.str.contains(pattern, regex=True).astype("float64")


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    # An empty text has nothing to divide by; 0.0 keeps the row finite.
    return (numerator / denominator.where(denominator > 0)).fillna(0.0)


def _sentence_count(text: pd.Series, words: pd.Series) -> pd.Series:
    stripped = text.str.strip()
    # Text after the last full stop (or a text with none) is one more sentence.
    unterminated = (~stripped.str.contains(_TERMINAL_PUNCTUATION, regex=True) & (words > 0)).astype("float64")
    return (_count(stripped, _SENTENCE_END) + unterminated).where(words > 0, 0.0)


def handcrafted_features(texts: Sequence[str]) -> pd.DataFrame:
    """One row per text, float32 columns ``hc_<name>`` in ``HANDCRAFTED_FEATURES`` order.

    Missing texts (None/NaN) count as empty strings.
    """
    # Object dtype keeps Python's ``re`` semantics (lookarounds, possessive
    # quantifiers, Unicode \\w) regardless of pandas' default string backend:
    # ``astype(str)`` would hand the flag-less patterns to pyarrow's RE2.
    text = pd.Series(
        ["" if value is None or pd.isna(value) else str(value).replace("\u2019", "'") for value in texts], dtype=object
    )

    words = _count(text, _WORD)
    letters = _count(text, _LETTER)
    word_chars = text.str.findall(_WORD).map(lambda found: sum(len(w) for w in found)).astype("float64")
    positive = _count(text, _POSITIVE)
    negative = _count(text, _NEGATIVE)
    question_marks = _count(text, _QUESTION_MARK)
    pii_kinds = text.map(lambda one: redact(one).counts)

    columns: dict[str, pd.Series] = {
        "char_count": text.str.len().astype("float64"),
        "word_count": words,
        "mean_word_length": _ratio(word_chars, words),
        "sentence_count": _sentence_count(text, words),
        "punctuation_count": _count(text, _PUNCTUATION),
        "question_mark_count": question_marks,
        "exclamation_count": _count(text, _EXCLAMATION),
        "question_word_count": _count(text, _QUESTION_WORD),
        "question_cue": ((question_marks > 0) | text.str.contains(_QUESTION_OPENING, regex=True)).astype("float64"),
        "imperative_cue": _cue(text, _OPENING),
        "uppercase_ratio": _ratio(_count(text, _UPPERCASE), letters),
        "digit_ratio": _ratio(_count(text, _DIGIT), text.str.len().astype("float64")),
        "deletion_keywords": _count(text, _DELETION),
        "access_keywords": _count(text, _ACCESS),
        "opt_out_keywords": _count(text, _OPT_OUT),
        "consent_keywords": _count(text, _CONSENT),
        "policy_keywords": _count(text, _POLICY),
        "legal_reference_cue": _cue(text, _LEGAL),
        "positive_words": positive,
        "negative_words": negative,
        # In [-1, 1]: the balance of positive over negative lexicon hits.
        "sentiment_score": _ratio(positive - negative, positive + negative),
        "negation_count": _count(text, _NEGATION),
        "email_address_cue": pii_kinds.map(lambda counts: float(counts["email"] > 0)).astype("float64"),
        "phone_number_cue": pii_kinds.map(lambda counts: float(counts["phone"] > 0)).astype("float64"),
        "card_number_cue": pii_kinds.map(lambda counts: float(counts["card"] > 0)).astype("float64"),
        "my_email_cue": _cue(text, _MY_EMAIL),
        "my_phone_cue": _cue(text, _MY_PHONE),
        "my_address_cue": _cue(text, _MY_ADDRESS),
        "first_person_ratio": _ratio(_count(text, _FIRST_PERSON), words),
        "second_person_ratio": _ratio(_count(text, _SECOND_PERSON), words),
        "urgency_count": _count(text, _URGENCY),
        "politeness_count": _count(text, _POLITENESS),
    }
    return pd.DataFrame(
        {f"{FEATURE_PREFIX}{name}": columns[name].to_numpy(dtype=np.float32) for name in HANDCRAFTED_FEATURES}
    )
