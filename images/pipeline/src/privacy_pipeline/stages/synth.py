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

Each row records the template it was written from as its ``phrasing_family``
(``<intent>/<position>``, or ``<intent>/short``), and ``phrasing_held_out`` is
true for the families ``synth_templates.yaml`` holds out: split sends those rows
to the holdout only, so evaluate can score phrasings the model never trained on.
The wording itself (slots, templates, roughening vocabulary) lives in that file.

``--embedded`` adds the 584-dim form production data arrives in. Its TF-IDF/SVD
part is fitted on all the texts, holdout rows included, without labels: it
stands in for the upstream producer of those embeddings, which fits its own
encoder on its whole corpus before we split anything (see ``_embedding_frame``).

Deterministic: one ``numpy.random.Generator`` seeded with ``--seed`` drives
every choice, so the same seed writes a byte-identical file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]
import yaml

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import EMBEDDING_DIM, INTENTS, PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.phrasing import PHRASING_FAMILY_COLUMN, PHRASING_HELD_OUT_COLUMN
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "synth"
WORDING_FILE = "synth_templates.yaml"
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


def _load_wording() -> dict[str, Any]:
    with resources.files(__package__).joinpath(WORDING_FILE).open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


_WORDING = _load_wording()
PRODUCTS: tuple[str, ...] = tuple(_WORDING["products"])
DATA_KINDS: tuple[str, ...] = tuple(_WORDING["data_kinds"])
CHANNELS: tuple[str, ...] = tuple(_WORDING["channels"])
TIME_PHRASES: tuple[str, ...] = tuple(_WORDING["time_phrases"])
ASKS: tuple[str, ...] = tuple(_WORDING["asks"])
GREETINGS: tuple[str, ...] = tuple(_WORDING["greetings"])
SIGN_OFFS: tuple[str, ...] = tuple(_WORDING["sign_offs"])
CONTEXTS: tuple[str, ...] = tuple(_WORDING["contexts"])
EMOJIS: tuple[str, ...] = tuple(_WORDING["emojis"])
TEMPLATES: dict[str, tuple[str, ...]] = {label: tuple(t) for label, t in _WORDING["templates"].items()}
SHORT_MESSAGES: dict[str, tuple[str, ...]] = {label: tuple(m) for label, m in _WORDING["short_messages"].items()}
HELD_OUT_TEMPLATES: dict[str, frozenset[int]] = {
    label: frozenset(positions) for label, positions in _WORDING["held_out"].items()
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


@dataclass(frozen=True)
class Message:
    text: str
    # <intent>/<template position> of the request sentence, or <intent>/short.
    phrasing_family: str
    held_out: bool


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

    def message(self, written_as: str) -> Message:
        if self.chance(SHORT_SHARE):
            text = self._roughen(self._punctuate(self.pick(SHORT_MESSAGES[written_as])))
            return Message(text, f"{written_as}/short", held_out=False)
        templates = TEMPLATES[written_as]
        held_out_positions = HELD_OUT_TEMPLATES.get(written_as, frozenset())
        position = int(self.rng.integers(len(templates)))
        held_out = position in held_out_positions
        parts = [self._punctuate(self._fill(templates[position]))]
        if self.chance(0.25):
            parts.insert(0, self._fill(self.pick(CONTEXTS)))
            if self.chance(0.3):
                parts.insert(0, self._fill(self.pick(CONTEXTS)))
        if self.chance(0.35):
            parts.insert(0, self.pick(GREETINGS) + self.pick((",", "!", "", " -")))
        if self.chance(0.07):
            # A second request in the same intent: the long tail of message lengths. A row that may
            # be trained on never carries a held-out phrasing, even as its second sentence.
            allowed = [t for i, t in enumerate(templates) if held_out or i not in held_out_positions]
            parts.append(self._punctuate(self._fill(self.pick(allowed))))
        if self.chance(0.3):
            parts.append(self.pick(SIGN_OFFS))
        return Message(self._roughen(" ".join(parts)), f"{written_as}/{position:02d}", held_out)

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
    """The dataset as a frame with columns id, text, label, phrasing_family, phrasing_held_out."""
    rng = np.random.default_rng(seed)
    labels = np.array([label for label, n in class_sizes(rows).items() for _ in range(n)], dtype=object)
    labels = labels[rng.permutation(rows)]
    writer = _Writer(rng)
    messages = [writer.message(writer.wording_for(label)) for label in labels]
    width = max(6, len(str(rows - 1)))
    ids = [f"msg-{i:0{width}d}" for i in range(rows)]
    return pd.DataFrame(
        {
            "id": ids,
            "text": [m.text for m in messages],
            "label": labels.astype(str),
            PHRASING_FAMILY_COLUMN: [m.phrasing_family for m in messages],
            PHRASING_HELD_OUT_COLUMN: np.array([m.held_out for m in messages], dtype=bool),
        }
    )


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
    """The 584-dim production form of ``texts`` (``--embedded``): 384 sentence dims + 200 TF-IDF/SVD dims.

    The TF-IDF vocabulary and SVD are fitted on all ``texts``, holdout rows
    included, without labels. That is deliberate, not a holdout leak: this
    stands in for the upstream producer that hands us finished embeddings, and
    that producer fits its own unsupervised encoder on its whole corpus before
    we split anything. No label reaches it, so it cannot leak the answer;
    ``test_leak.py`` checks that shuffled labels still score chance in this mode.
    """
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

    held_out_rows = int(frame[PHRASING_HELD_OUT_COLUMN].sum())
    class_counts = {label: int(n) for label, n in frame["label"].value_counts().items()}
    class_counts = {label: class_counts[label] for label in INTENTS if label in class_counts}
    privacy = rows - class_counts.get(NEGATIVE, 0)
    log.info("class counts: %s", class_counts)
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: wrote {rows} rows ({privacy} privacy intents, {len(class_counts)} labels, "
        f"{held_out_rows} in held-out phrasing families) to {out}",
        xcom={
            "uri": out,
            "rows": rows,
            "class_counts": class_counts,
            "format": table_format,
            "embedded": embedded,
            "phrasing_families": int(frame[PHRASING_FAMILY_COLUMN].nunique()),
            "held_out_phrasing_rows": held_out_rows,
        },
        commit_uri=None,
    )
