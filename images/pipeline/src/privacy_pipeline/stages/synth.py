"""``synth``: a synthetic privacy-intent dataset of customer-support messages.

Six intents, the five privacy intents together ~10% of rows (1:9 against
``no_privacy_intent``) and unevenly spread among themselves. Each message is a
paraphrase template with its slots filled (products, kinds of data, channels,
time phrases, politeness), optionally wrapped in a greeting, some context and
a sign-off, then roughened like real typing: typos, casing, punctuation and the
odd emoji. ``no_privacy_intent`` is mostly ordinary support traffic but
includes hard negatives that talk about accounts, data and email without
being privacy requests ("update my email address"), and a few rows carry the
wording of a neighbouring intent, as human labels do, so the classes are not
trivially separable.

Deterministic: one ``numpy.random.Generator`` seeded with ``--seed`` drives
every choice, so the same seed writes a byte-identical file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import EMBEDDING_DIM, INTENTS, PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "synth"
NEGATIVE = "no_privacy_intent"
PRIVACY_SHARE = 0.10
# How privacy requests split among the intents: deletion and opt-out are the
# commonest in support queues, consent withdrawal the rarest.
PRIVACY_WEIGHTS: dict[str, float] = {
    "data_deletion": 0.30,
    "opt_out": 0.26,
    "data_access": 0.20,
    "privacy_policy_question": 0.15,
    "consent_withdrawal": 0.09,
}
# Label ambiguity: this share of a privacy intent's rows is worded like a
# neighbouring intent (a request annotators could file either way) ...
CONFUSABLE_SHARE = 0.06
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "data_deletion": ("consent_withdrawal", "opt_out"),
    "data_access": ("privacy_policy_question",),
    "opt_out": ("consent_withdrawal",),
    "consent_withdrawal": ("opt_out", "data_deletion"),
    "privacy_policy_question": ("data_access", "opt_out"),
}
# ... and this share of no_privacy_intent rows reads like a privacy request
# (annotation slips), a few dozen in 5000 rows.
NEGATIVE_SLIP_SHARE = 0.005
SHORT_SHARE = 0.12

PRODUCTS = (
    "the app",
    "your website",
    "the loyalty program",
    "the smart speaker",
    "the fitness tracker",
    "my Premium subscription",
    "the mobile app",
    "the rewards card",
    "the online store",
    "the newsletter",
    "the photo backup service",
    "the smart thermostat",
    "the video doorbell",
    "the streaming service",
)
DATA_KINDS = (
    "personal data",
    "personal information",
    "browsing history",
    "purchase history",
    "location data",
    "contact details",
    "email address",
    "phone number",
    "voice recordings",
    "payment details",
    "search history",
    "photos",
    "health data",
    "fingerprint data",
    "chat transcripts",
    "device identifiers",
    "profile information",
    "home address",
    "date of birth",
    "order history",
    "recordings",
)
CHANNELS = ("email", "SMS", "text message", "push notification", "phone call", "postal mail", "WhatsApp")
TIME_PHRASES = (
    "today",
    "as soon as possible",
    "within 30 days",
    "by the end of the week",
    "right away",
    "immediately",
    "before Friday",
    "asap",
    "this month",
    "without delay",
    "by tomorrow",
)
ASKS = (
    "",
    "please ",
    "could you please ",
    "kindly ",
    "can you ",
    "I need you to ",
    "I would like you to ",
    "I'm asking you to ",
    "would you ",
    "pls ",
)
GREETINGS = (
    "Hi",
    "Hello",
    "Hey",
    "Hi there",
    "Good morning",
    "Dear support",
    "Hello team",
    "Dear Sir or Madam",
    "Good evening",
    "hey there",
)
SIGN_OFFS = ("Thanks", "Thank you", "Cheers", "Regards, Sam", "thx", "Thanks in advance", "Best, Maria", "ty")
CONTEXTS = (
    "I've been a customer for {years} years.",
    "I moved abroad recently.",
    "My previous email about this got no answer.",
    "I read about a data breach in the news.",
    "This is the third time I'm asking.",
    "I'm writing on behalf of my elderly mother.",
    "I don't use {product} anymore.",
    "I just got a new phone.",
    "My order {order} arrived yesterday.",
    "Your chatbot couldn't help me.",
    "I tried the settings page but couldn't find anything.",
    "My partner set up the account for me.",
    "I'm on the family plan.",
)
EMOJIS = ("🙏", "😡", "😊", "🙂", "👍", "😤", "🤔", "❗", "😅", "🔒")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "data_deletion": (
        "{ask}delete my account and all the {data_kind} you have about me",
        "{ask}erase everything you store about me, I'm done with {product}",
        "{ask}remove my {data_kind} from your systems {time}",
        "I want to exercise my right to be forgotten",
        "{ask}permanently delete my profile and history",
        "I want all my {data_kind} wiped from your servers",
        "how do I get my {data_kind} deleted for good?",
        "{ask}close my account and delete all data linked to it",
        "this is a GDPR erasure request, delete my {data_kind}",
        "I'm requesting deletion of my personal data under article 17",
        "make sure nothing about me stays in your database after I leave {product}",
        "{ask}purge my {data_kind} and confirm by {channel}",
        "delete my data. all of it. {time}",
        "I want my {data_kind} and my account gone, not just deactivated",
        "can you make sure my old {data_kind} is destroyed, not archived?",
        "I uploaded {data_kind} to {product} by mistake, {ask}erase it from your servers",
        "cancel my membership and scrub my {data_kind} from your records",
        "how can I remove all traces of myself from {product}?",
        "under CCPA I request that you delete the personal information you collected about me",
        "{ask}delete the {data_kind} you recorded through {product}",
    ),
    "data_access": (
        "{ask}send me a copy of all the personal data you hold about me",
        "what data do you have on me? I want an export",
        "I am making a subject access request for my {data_kind}",
        "can I download everything {product} has collected about me?",
        "{ask}send me the information you store about my account, including {data_kind}",
        "under GDPR article 15 I want to see what you know about me",
        "I'd like to know exactly which {data_kind} you keep on file for me",
        "{ask}export my {data_kind} in a machine-readable format",
        "this is a DSAR, please respond within 30 days",
        "where can I request a full copy of my {data_kind}?",
        "what personal information has {product} recorded about me since I signed up?",
        "{ask}give me access to the {data_kind} you've collected",
        "I want to see the {data_kind} you shared with partners about me",
        "do I have a right to get my data? I want all of it",
        "I need a report of every piece of {data_kind} you process about me",
        "how do I request my data? I want the {data_kind} too",
        "{ask}provide a copy of my personal data {time}",
        "I'd like to port my {data_kind} to another provider",
    ),
    "opt_out": (
        "{ask}stop sending me marketing emails",
        "{ask}opt me out of all promotional messages",
        "do not sell or share my personal information",
        "{ask}unsubscribe me from your newsletters and {channel} offers",
        "I don't want my data shared with advertising partners anymore",
        "{ask}take me off your mailing list, I keep getting {channel} promotions",
        "stop the {channel} ads, I never signed up for them",
        "I want to opt out of personalised advertising",
        "{ask}remove me from all marketing lists {time}",
        "no more {channel} marketing please",
        "how do I opt out of the sale of my {data_kind}?",
        "{ask}stop using my {data_kind} for targeted ads",
        "exclude me from your partner marketing program",
        "I keep getting spam {channel}s from you, make it stop",
        "{ask}turn off all promotional {channel}s for my account",
        "I don't want to be part of your data sharing with third parties",
        "where is the do not sell my info link? I want to opt out",
    ),
    "consent_withdrawal": (
        "I withdraw my consent to process my personal data",
        "I no longer consent to you using my {data_kind}",
        "{ask}revoke the permission I gave for tracking",
        "I want to take back my consent for personalised ads",
        "I changed my mind, stop processing my {data_kind} for analytics",
        "I'm withdrawing the consent I gave when I signed up for {product}",
        "{ask}record that I no longer agree to the processing of my {data_kind}",
        "I revoke my consent for {product} to use my {data_kind}",
        "I gave consent for research use of my {data_kind}, I'm taking it back",
        "my consent to cookies and tracking is withdrawn as of {time}",
        "{ask}stop processing my {data_kind}, I withdraw my agreement",
        "I no longer allow you to use my {data_kind} for training your models",
        "un-consent me from the data processing, I didn't understand what I agreed to",
    ),
    "privacy_policy_question": (
        "how do you use the data you collect about me?",
        "does {product} share my {data_kind} with third parties?",
        "where can I read your privacy policy about cookies?",
        "how long do you keep my {data_kind}?",
        "are you GDPR compliant? who can see my information?",
        "is my {data_kind} sold to advertisers?",
        "what does your privacy policy say about {data_kind}?",
        "which countries is my {data_kind} stored in?",
        "do your employees have access to my {data_kind}?",
        "what happens to my {data_kind} if I close my account?",
        "do you use my {data_kind} to train AI?",
        "who is your data protection officer and how do I contact them?",
        "does {product} listen to my conversations?",
        "is my {data_kind} encrypted on your servers?",
        "what is the legal basis for processing my {data_kind}?",
        "did the privacy policy change? what's different about how you use {data_kind}?",
    ),
    NEGATIVE: (
        # Ordinary support traffic.
        "where is my order? it was supposed to arrive {time}",
        "I was charged twice for {product}",
        "the app keeps crashing when I open the settings",
        "{ask}help me reset my password",
        "how do I change the delivery address for order {order}?",
        "my package {order} arrived damaged",
        "can I return a product I bought last week?",
        "what are your opening hours?",
        "the discount code doesn't work at checkout",
        "is this item back in stock?",
        "{ask}send me the invoice for order {order}",
        "how do I pair the smart speaker with my phone?",
        "my subscription renewal failed, what should I do?",
        "I want to upgrade to the family plan",
        "the website is very slow today",
        "do you ship to Canada?",
        "how do I cancel my order {order}?",
        "I never received the confirmation {channel}",
        "can I change the size of my order?",
        "why was my card declined?",
        "{ask}extend my trial by a week",
        "the tracking number doesn't work",
        "can I speak to a human agent?",
        "my refund hasn't arrived yet",
        "how do I use my loyalty points?",
        "the fitness tracker won't sync",
        "is there a student discount?",
        "thanks for the quick help yesterday!",
        "the video doorbell keeps disconnecting from wifi",
        "which plan includes offline downloads?",
        # Hard negatives: accounts, data, email, deleting, consent, policy,
        # but no privacy request.
        "{ask}update my email address on my account",
        "{ask}delete this item from my cart",
        "how do I change my phone number in my profile?",
        "I accidentally deleted my account, can you restore it?",
        "{ask}remove the old credit card from my payment methods",
        "my data plan ran out, how do I top up?",
        "how do I download my invoices as PDF?",
        "{ask}cancel my subscription, it's too expensive",
        "I can't access my account, it says my email is wrong",
        "how do I withdraw money from my wallet balance?",
        "what's your return policy for opened items?",
        "I want to opt in to the loyalty program",
        "{ask}delete my review, I posted it on the wrong product",
        "the app deleted all my playlists after the update",
        "how do I export my workout data to another app? the button is greyed out",
        "{ask}resend the verification email",
        "I want to unsubscribe from the premium plan but keep my free account",
        "stop the delivery, I'm not home this week",
        "I consent to leaving the package with my neighbour",
        "can I see my order history from last year?",
        "my email notifications for shipping updates stopped arriving",
        "{ask}remove my address from the saved addresses list, it's outdated",
        "is my payment going through? the page froze",
        "what's the policy on late deliveries?",
        "my account got locked after too many login attempts",
        "can you merge my two accounts?",
        "how much data does the streaming app use per hour?",
        "{ask}change the name on my account",
        "I'd like to delete a photo from my shared album",
        "the privacy screen protector I ordered doesn't fit",
        "where do I find my account number?",
        "{ask}turn on two factor authentication for me",
    ),
}

SHORT_MESSAGES: dict[str, tuple[str, ...]] = {
    "data_deletion": ("delete my data", "erase me", "delete my account + data", "gdpr delete", "forget me"),
    "data_access": ("what data do u have on me", "send my data", "data export pls", "DSAR", "my data?"),
    "opt_out": ("unsubscribe", "STOP", "opt out", "no more emails", "stop texting me"),
    "consent_withdrawal": ("i withdraw consent", "revoke consent", "consent withdrawn", "no consent"),
    "privacy_policy_question": ("privacy policy?", "do u sell my data", "who sees my data?", "cookies?"),
    NEGATIVE: ("hi", "thanks!", "where is my order", "refund?", "hello??", "ok", "password reset", "help"),
}

_KEYBOARD_NEIGHBOURS = {
    "a": "qs",
    "e": "wr",
    "i": "uo",
    "o": "ip",
    "s": "ad",
    "t": "ry",
    "n": "bm",
    "r": "et",
    "l": "k",
    "d": "sf",
}


class _Writer:
    """Turns (label, rng) into one message; holds the generator so every choice is reproducible."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)

    def _fill(self, template: str) -> str:
        return template.format(
            ask=self.pick(ASKS),
            data_kind=self.pick(DATA_KINDS),
            product=self.pick(PRODUCTS),
            channel=self.pick(CHANNELS),
            time=self.pick(TIME_PHRASES),
            order=f"#{int(self.rng.integers(10_000, 99_999))}",
            years=int(self.rng.integers(2, 16)),
        )

    def _typo(self, word: str) -> str:
        if len(word) < 4 or not word.isalpha():
            return word
        at = int(self.rng.integers(1, len(word) - 1))
        kind = int(self.rng.integers(4))
        if kind == 0:  # swapped neighbours
            return word[:at] + word[at + 1] + word[at] + word[at + 2 :]
        if kind == 1:  # dropped letter
            return word[:at] + word[at + 1 :]
        if kind == 2:  # doubled letter
            return word[:at] + word[at] + word[at:]
        neighbours = _KEYBOARD_NEIGHBOURS.get(word[at].lower())
        return word[:at] + self.pick(neighbours) + word[at + 1 :] if neighbours else word

    def _roughen(self, text: str) -> str:
        words = [self._typo(w) if self.chance(0.04) else w for w in text.split(" ")]
        text = " ".join(words)
        style = self.rng.random()
        if style < 0.18:
            text = text.lower()
        elif style < 0.21:
            text = text.upper()
        elif style < 0.75:
            text = text[:1].upper() + text[1:]
        if self.chance(0.06):
            text = f"{text} {self.pick(EMOJIS)}"
        if self.chance(0.03):
            text = text.replace(" ", "  ", 1)
        return text

    def _punctuate(self, sentence: str) -> str:
        if sentence[-1] in ".?!" or not self.chance(0.55):
            return sentence
        return sentence + self.pick((".", "!", ".", "!!", "...", " ?", "?"))

    def message(self, written_as: str) -> str:
        if self.chance(SHORT_SHARE):
            return self._roughen(self._punctuate(self.pick(SHORT_MESSAGES[written_as])))
        parts = [self._punctuate(self._fill(self.pick(TEMPLATES[written_as])))]
        if self.chance(0.25):
            parts.insert(0, self._fill(self.pick(CONTEXTS)))
            if self.chance(0.3):
                parts.insert(0, self._fill(self.pick(CONTEXTS)))
        if self.chance(0.35):
            parts.insert(0, self.pick(GREETINGS) + self.pick((",", "!", "", " -")))
        if self.chance(0.07):
            # A second request in the same intent: the long tail of message lengths.
            parts.append(self._punctuate(self._fill(self.pick(TEMPLATES[written_as]))))
        if self.chance(0.3):
            parts.append(self.pick(SIGN_OFFS))
        return self._roughen(" ".join(parts))

    def wording_for(self, label: str) -> str:
        """Which intent's templates a row with ``label`` is written from (usually its own)."""
        if label == NEGATIVE:
            return self.pick(tuple(PRIVACY_WEIGHTS)) if self.chance(NEGATIVE_SLIP_SHARE) else label
        return self.pick(CONFUSABLE[label]) if self.chance(CONFUSABLE_SHARE) else label


def class_sizes(rows: int) -> dict[str, int]:
    """Exact rows per label: ~10% privacy intents split by PRIVACY_WEIGHTS (largest remainders), the rest negative."""
    privacy = round(rows * PRIVACY_SHARE)
    shares = {label: privacy * weight for label, weight in PRIVACY_WEIGHTS.items()}
    sizes = {label: int(share) for label, share in shares.items()}
    by_remainder = sorted(shares, key=lambda label: shares[label] - sizes[label], reverse=True)
    for label in by_remainder[: privacy - sum(sizes.values())]:
        sizes[label] += 1
    sizes[NEGATIVE] = rows - privacy
    return {label: sizes[label] for label in INTENTS}


def generate(rows: int, seed: int) -> pd.DataFrame:
    """The dataset as a frame with columns id, text, label."""
    rng = np.random.default_rng(seed)
    labels = np.array([label for label, n in class_sizes(rows).items() for _ in range(n)], dtype=object)
    labels = labels[rng.permutation(rows)]
    writer = _Writer(rng)
    texts = [writer.message(writer.wording_for(label)) for label in labels]
    width = max(6, len(str(rows - 1)))
    ids = [f"msg-{i:0{width}d}" for i in range(rows)]
    return pd.DataFrame({"id": ids, "text": texts, "label": labels.astype(str)})


def _format_for(out: str, fmt: str | None) -> tabular.TableFormat:
    if fmt in ("csv", "parquet"):
        return "csv" if fmt == "csv" else "parquet"
    if fmt is not None:
        raise StageError(f"{STAGE}: --format must be csv or parquet, got {fmt!r}")
    from_suffix = tabular.table_format(out)
    if from_suffix is None:
        raise StageError(
            f"{STAGE}: cannot tell the format of {out} from its suffix; name it .csv, .csv.gz or .parquet, "
            "or pass --format csv|parquet"
        )
    return from_suffix


def _embedding_frame(texts: list[str], config: PipelineConfig) -> pd.DataFrame:
    # Imported here: featurize pulls in torch and the sentence model, which
    # plain synth runs do not need.
    from privacy_pipeline.stages.featurize import production_embeddings

    matrix = np.asarray(production_embeddings(texts, config), dtype=np.float32)
    if matrix.shape != (len(texts), EMBEDDING_DIM):
        raise StageError(
            f"{STAGE}: production_embeddings returned shape {matrix.shape}, expected ({len(texts)}, {EMBEDDING_DIM})"
        )
    return pd.DataFrame(matrix, columns=tabular.wide_embedding_names(EMBEDDING_DIM))


def run(
    *,
    config: PipelineConfig,
    out: str,
    rows: int = 5000,
    seed: int = 7,
    fmt: str | None = None,
    embedded: bool = False,
) -> StageResult:
    if rows < 1:
        raise StageError(f"{STAGE}: --rows must be at least 1, got {rows}")
    table_format = _format_for(out, fmt)
    frame = generate(rows, seed)
    if embedded:
        log.info("embedding %d messages into the %d-dim production form", rows, EMBEDDING_DIM)
        frame = pd.concat([frame, _embedding_frame(frame["text"].tolist(), config)], axis=1)
    if table_format == "csv":
        data = tabular.csv_bytes(frame, gzipped=out.lower().endswith(".gz"))
    else:
        data = tabular.parquet_bytes(pa.Table.from_pandas(frame, preserve_index=False))
    storage.write_bytes(out, data)

    class_counts = {label: int(n) for label, n in frame["label"].value_counts().items()}
    class_counts = {label: class_counts[label] for label in INTENTS if label in class_counts}
    privacy = rows - class_counts.get(NEGATIVE, 0)
    log.info("class counts: %s", class_counts)
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: wrote {rows} rows ({privacy} privacy intents, {len(class_counts)} labels) to {out}",
        xcom={
            "uri": out,
            "rows": rows,
            "class_counts": class_counts,
            "format": table_format,
            "embedded": embedded,
        },
        commit_uri=None,
    )
