"""Handcrafted text features: the cues fire on the sentences they are for, only on those, and in linear time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from adversarial_text import adversarial_texts, budget_seconds, fastest_of, within_budget
from hypothesis import HealthCheck, example, given, settings

from privacy_pipeline.text_features import HANDCRAFTED_COLUMNS, HANDCRAFTED_FEATURES, handcrafted_features


def features_of(text: str) -> pd.Series:
    """The one row of features for ``text``, indexed by feature name without the prefix."""
    row = handcrafted_features([text]).iloc[0]
    return row.rename(lambda column: column.removeprefix("hc_"))


def test_there_are_at_least_25_uniquely_named_features() -> None:
    assert len(HANDCRAFTED_FEATURES) >= 25
    assert len(set(HANDCRAFTED_FEATURES)) == len(HANDCRAFTED_FEATURES)
    assert list(handcrafted_features(["hello"]).columns) == list(HANDCRAFTED_COLUMNS)
    assert all(column.startswith("hc_") for column in HANDCRAFTED_COLUMNS)


def test_every_column_is_float32_with_one_row_per_text() -> None:
    frame = handcrafted_features(["delete my account", "how do you use cookies?", ""])
    assert len(frame) == 3
    assert set(frame.dtypes) == {np.dtype("float32")}


MEGABYTE_MESSAGE = ("Please delete my data now, jane@example.com! " * 25_000)[:1_000_000]


@pytest.fixture(scope="module")
def megabyte_features() -> pd.DataFrame:
    # About 3 s on a loaded CI core: computed once for the tests that need it.
    return handcrafted_features([MEGABYTE_MESSAGE])


@pytest.mark.parametrize("text", ["", "   ", "?!...", None], ids=["empty", "blank", "punctuation-only", "missing"])
def test_degenerate_texts_give_finite_values(text: str) -> None:
    frame = handcrafted_features([text])
    assert np.isfinite(frame.to_numpy()).all()
    assert frame.dtypes.eq(np.float32).all()
    assert frame.loc[0, "hc_word_count"] == 0
    assert frame.loc[0, "hc_mean_word_length"] == 0


def test_a_1mb_text_gives_finite_float32_values_and_keeps_its_cues(megabyte_features: pd.DataFrame) -> None:
    assert np.isfinite(megabyte_features.to_numpy()).all()
    assert megabyte_features.dtypes.eq(np.float32).all()
    features = megabyte_features.iloc[0]
    assert features["hc_char_count"] == 1_000_000
    assert features["hc_deletion_keywords"] > 20_000
    assert features["hc_email_address_cue"] == 1.0


def test_delete_my_account_is_a_deletion_command() -> None:
    features = features_of("delete my account")
    assert features["deletion_keywords"] == 1
    assert features["imperative_cue"] == 1
    assert features["question_cue"] == 0
    assert features["word_count"] == 3
    assert features["first_person_ratio"] == pytest.approx(1 / 3)


def test_a_statement_without_deletion_words_is_not_a_deletion_command() -> None:
    features = features_of("I kept my account for years")
    assert features["deletion_keywords"] == 0
    assert features["imperative_cue"] == 0


def test_please_opens_a_request() -> None:
    assert features_of("Please, could you stop the emails").loc["imperative_cue"] == 1
    assert features_of("Pleased to hear from you").loc["imperative_cue"] == 0


def test_a_question_about_cookies_is_a_policy_question() -> None:
    features = features_of("how do you use cookies?")
    assert features["question_cue"] == 1
    assert features["question_mark_count"] == 1
    assert features["policy_keywords"] >= 1
    assert features["second_person_ratio"] > 0


def test_a_question_word_opening_is_a_question_without_a_mark() -> None:
    assert features_of("What data do you hold about me").loc["question_cue"] == 1


def test_a_plain_thank_you_is_no_question_and_no_policy() -> None:
    features = features_of("Thanks for the quick reply.")
    assert features["question_cue"] == 0
    assert features["policy_keywords"] == 0
    assert features["politeness_count"] == 1


def test_each_intent_lexicon_counts_its_own_phrases() -> None:
    assert features_of("Send me a copy of my data").loc["access_keywords"] == 1
    assert features_of("Please unsubscribe me and do not sell my info").loc["opt_out_keywords"] == 2
    # The longest phrase wins: "withdraw my consent" counts once, not also as "consent".
    assert features_of("I withdraw my consent").loc["consent_keywords"] == 1
    assert features_of("Where is your privacy policy").loc["policy_keywords"] == 1
    neutral = features_of("My parcel arrived late")
    for lexicon in ("deletion", "access", "opt_out", "consent", "policy"):
        assert neutral[f"{lexicon}_keywords"] == 0


def test_keywords_match_whole_words_only() -> None:
    features = features_of("The removalist shared a forgettable accessory")
    assert features["deletion_keywords"] == 0
    assert features["access_keywords"] == 0


def test_legal_references_are_recognised() -> None:
    assert features_of("Under GDPR Article 17 you must erase it").loc["legal_reference_cue"] == 1
    assert features_of("I read your article about gardening").loc["legal_reference_cue"] == 0


def test_an_email_address_sets_the_email_cue() -> None:
    assert features_of("reach me at jane.doe@example.co.uk").loc["email_address_cue"] == 1
    assert features_of("meet me @ the office at 5").loc["email_address_cue"] == 0


def test_phone_and_card_numbers_are_told_apart() -> None:
    phone = features_of("call me on +1 (555) 123-4567")
    assert phone["phone_number_cue"] == 1
    assert phone["card_number_cue"] == 0
    card = features_of("my card 4111 1111 1111 1111 was charged")
    assert card["card_number_cue"] == 1
    assert card["phone_number_cue"] == 0
    order = features_of("order 12345 shipped")
    assert order["phone_number_cue"] == 0
    assert order["card_number_cue"] == 0


def test_mentions_of_my_contact_details_are_flagged() -> None:
    features = features_of("change my email and my phone number, and remove my address")
    assert features["my_email_cue"] == 1
    assert features["my_phone_cue"] == 1
    assert features["my_address_cue"] == 1
    unrelated = features_of("your email about the address change")
    assert unrelated[["my_email_cue", "my_phone_cue", "my_address_cue"]].sum() == 0


def test_sentiment_separates_complaints_from_praise() -> None:
    assert features_of("This is terrible and unacceptable").loc["sentiment_score"] == -1
    assert features_of("Thanks, great and helpful service").loc["sentiment_score"] == 1
    assert features_of("My parcel arrived on Tuesday").loc["sentiment_score"] == 0


def test_negations_include_contractions() -> None:
    assert features_of("I don't want this and I never agreed").loc["negation_count"] == 2
    assert features_of("I want this and I agreed").loc["negation_count"] == 0


def test_urgency_and_politeness() -> None:
    features = features_of("Please do it immediately, thank you")
    assert features["urgency_count"] == 1
    assert features["politeness_count"] == 2
    calm = features_of("Whenever suits")
    assert calm["urgency_count"] == 0
    assert calm["politeness_count"] == 0


def test_ratios_and_lengths() -> None:
    features = features_of("ABC def 12!")
    assert features["char_count"] == 11
    assert features["uppercase_ratio"] == pytest.approx(3 / 6)
    assert features["digit_ratio"] == pytest.approx(2 / 11)
    assert features["exclamation_count"] == 1
    assert features_of("One. Two! Three").loc["sentence_count"] == 3


def test_features_are_stateless_and_deterministic() -> None:
    texts = ["delete my account", "how do you use cookies?", "ok"]
    together = handcrafted_features(texts)
    alone = handcrafted_features([texts[1]])
    pd.testing.assert_frame_equal(together.iloc[[1]].reset_index(drop=True), alone)
    pd.testing.assert_frame_equal(handcrafted_features(texts), together)


# --- hostile text -------------------------------------------------------------

# Seconds per 100,000 characters: about 5x the slowest adversarial input measured on a loaded CI core.
FEATURES_BUDGET_PER_100K = 10.0


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=adversarial_texts())
# A run of sentence ends that never reaches a space (the sentence pattern
# rescanned it from every "!"), and the phone cue's digit run ending in a letter.
@example(text="!" * 100_000 + "x")
@example(text="4" * 60 + "a")
def test_features_of_hostile_text_finish_within_a_linear_budget(text: str) -> None:
    with within_budget(budget_seconds(text, FEATURES_BUDGET_PER_100K), f"handcrafted_features() of {len(text)} chars"):
        handcrafted_features([text])


@pytest.mark.parametrize(
    "unit", ["!", "1", "a@", "opt ", " "], ids=["exclamations", "digit-run", "many-ats", "phrase-starts", "spaces"]
)
def test_doubling_hostile_text_at_most_triples_the_feature_time(unit: str) -> None:
    # Two doublings (12.5k -> 50k chars), each allowed 3x: linear is 4x, quadratic 16x.
    short, long = (unit * (chars // len(unit)) + "x" for chars in (12_500, 50_000))

    def featurize(text: str) -> object:
        return handcrafted_features([text])

    # Six calls, each within the per-call budget.
    with within_budget(6 * budget_seconds(long, FEATURES_BUDGET_PER_100K), f"timing features on {unit!r} runs"):
        short_seconds, long_seconds = fastest_of(featurize, short), fastest_of(featurize, long)
    assert long_seconds <= 3 * 3 * short_seconds + 0.05, (short_seconds, long_seconds)
