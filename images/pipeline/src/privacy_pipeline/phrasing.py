"""What makes two messages "the same text", and which phrasings a model has already seen.

Two ideas the honest holdout rests on:

- A message's normalised key (casefolded, punctuation and emoji dropped,
  whitespace runs collapsed, digits as 0): validate counts the rows that
  share one, and split keeps all rows with one key on the same side, so no
  holdout text, up to case, punctuation and numbers, was seen in training.
- A row's phrasing family (``phrasing_family``: which template or paraphrase
  pattern it was written from), and whether that family is held out
  (``phrasing_held_out``): split sends held-out rows to the holdout only, and
  evaluate scores the holdout rows whose family never appears in training
  apart from the rest. Both columns are optional; data without them has no
  unseen-phrasing metric.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

PHRASING_FAMILY_COLUMN = "phrasing_family"
PHRASING_HELD_OUT_COLUMN = "phrasing_held_out"
PHRASING_COLUMNS = (PHRASING_FAMILY_COLUMN, PHRASING_HELD_OUT_COLUMN)

# Linear-time on any input: single character classes, no nesting.
_NOT_WORD = re.compile(r"[\W_]+")
_DIGIT = re.compile(r"\d")


def normalised_text(text: str) -> str:
    """``"Delete my data!! 🙏"`` and ``"delete my  data."`` both become ``"delete my data"``."""
    return _DIGIT.sub("0", _NOT_WORD.sub(" ", text.casefold())).strip()


def text_keys(texts: pd.Series) -> np.ndarray:
    """One short hash per row of its normalised text; equal keys mean the same text up to normalisation."""
    return np.array(
        [hashlib.blake2b(normalised_text(str(t)).encode("utf-8"), digest_size=12).hexdigest() for t in texts],
        dtype=object,
    )


def duplicate_report(texts: pd.Series) -> dict[str, Any]:
    """How many rows repeat an earlier row's text exactly, and how many only after normalisation."""
    keys = pd.Series(text_keys(texts), index=texts.index)
    exact_repeats = int(texts.duplicated(keep="first").sum())
    normalised_repeats = int(keys.duplicated(keep="first").sum())
    group_sizes = keys.value_counts()
    shared = group_sizes[group_sizes > 1]
    return {
        "rows": len(texts),
        "unique_texts": int(texts.nunique()),
        "unique_normalised_texts": int(len(group_sizes)),
        "exact_duplicate_rows": exact_repeats,
        "near_duplicate_rows": normalised_repeats - exact_repeats,
        "rows_in_duplicate_groups": int(shared.sum()),
        "largest_duplicate_group": int(shared.max()) if len(shared) else 1,
    }


def held_out_rows(frame: pd.DataFrame) -> np.ndarray:
    """True for rows of a held-out phrasing family; all False when the data does not mark any."""
    if PHRASING_HELD_OUT_COLUMN not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return frame[PHRASING_HELD_OUT_COLUMN].fillna(False).astype(bool).to_numpy()


def unseen_phrasing_rows(holdout: pd.DataFrame, train_families: pd.Series | None) -> np.ndarray | None:
    """True for holdout rows whose phrasing family never occurs in training; None without family data."""
    if train_families is None or PHRASING_FAMILY_COLUMN not in holdout.columns:
        return None
    families = holdout[PHRASING_FAMILY_COLUMN]
    if families.isna().all():
        return None
    seen = set(train_families.dropna().astype(str))
    return np.asarray(families.notna() & ~families.astype(str).isin(seen), dtype=bool)
