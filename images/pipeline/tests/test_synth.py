"""synth: a realistic, deterministic synthetic dataset with privacy intents at ~1:9."""

from __future__ import annotations

import gzip
import io
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline.config import INTENTS, PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import synth

PRIVACY_INTENTS = [label for label in INTENTS if label != "no_privacy_intent"]
COLUMNS = ["id", "text", "label", "phrasing_family", "phrasing_held_out"]


@pytest.fixture()
def config() -> PipelineConfig:
    return PipelineConfig()


@pytest.fixture(scope="module")
def dataset() -> pd.DataFrame:
    return synth.generate(5000, seed=7)


@pytest.fixture()
def fake_production_embeddings(monkeypatch) -> list[Sequence[str]]:
    """Stands in for featurize.production_embeddings (torch + the sentence model) with a cheap function."""
    calls: list[Sequence[str]] = []

    def production_embeddings(texts: Sequence[str], config: PipelineConfig) -> np.ndarray:
        calls.append(texts)
        lengths = np.array([len(t) for t in texts], dtype=np.float32)
        return np.tile(lengths[:, None], (1, 584)) / np.arange(1, 585, dtype=np.float32)

    fake = types.ModuleType("privacy_pipeline.stages.featurize")
    fake.production_embeddings = production_embeddings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "privacy_pipeline.stages.featurize", fake)
    return calls


def test_the_same_seed_writes_a_byte_identical_file(tmp_path: Path, config) -> None:
    for fmt in ("csv", "parquet"):
        first, second = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        synth.run(config=config, out=str(first), rows=600, seed=5)
        synth.run(config=config, out=str(second), rows=600, seed=5)
        assert first.read_bytes() == second.read_bytes(), fmt


def test_a_different_seed_writes_different_messages(tmp_path: Path) -> None:
    assert synth.generate(300, seed=1)["text"].tolist() != synth.generate(300, seed=2)["text"].tolist()


def test_privacy_intents_are_about_one_in_ten_and_unevenly_spread(dataset: pd.DataFrame) -> None:
    counts = dataset["label"].value_counts()
    privacy = counts[PRIVACY_INTENTS]
    assert set(counts.index) == set(INTENTS)
    assert privacy.sum() / len(dataset) == pytest.approx(0.10, abs=0.005)
    assert privacy.max() >= 2.5 * privacy.min()
    assert counts["consent_withdrawal"] >= 40  # still enough for a stratified split, CV folds and SMOTE


def test_small_datasets_keep_the_ratio_exactly(tmp_path: Path) -> None:
    sizes = synth.class_sizes(137)
    assert sum(sizes.values()) == 137
    assert sizes["no_privacy_intent"] == 137 - 14


def test_messages_are_varied_noisy_and_of_mixed_length(dataset: pd.DataFrame) -> None:
    texts = dataset["text"]
    assert texts.nunique() > 0.7 * len(texts)
    lengths = texts.str.len()
    assert (lengths <= 15).sum() > 100 and (lengths >= 150).sum() > 20
    assert texts.str.contains(r"[\U0001F300-\U0001FAFF]", regex=True).sum() > 50  # emojis
    assert (texts == texts.str.upper()).sum() > 50 and (texts == texts.str.lower()).sum() > 300
    per_label = dataset.groupby("label")["text"].nunique()
    assert (per_label[PRIVACY_INTENTS] > 30).all()


def test_no_privacy_intent_holds_hard_negatives(dataset: pd.DataFrame) -> None:
    negatives = dataset.loc[dataset["label"] == "no_privacy_intent", "text"].str.lower()
    for word in ("email", "delete", "account", "data", "unsubscribe", "policy"):
        assert negatives.str.contains(word).sum() >= 10, word


def test_the_labels_are_not_a_lookup_of_the_wording(dataset: pd.DataFrame) -> None:
    # Some deletion requests are worded like consent withdrawals or opt-outs,
    # so a keyword rule cannot be perfect.
    deletion = dataset.loc[dataset["label"] == "data_deletion", "text"].str.lower()
    worded_like_neighbours = deletion.str.contains("consent|marketing|unsubscribe|mailing list|promotional")
    assert 3 <= worded_like_neighbours.sum() <= 0.15 * len(deletion)


def test_ids_are_unique_and_zero_padded(dataset: pd.DataFrame) -> None:
    assert dataset["id"].is_unique
    assert dataset["id"].iloc[0] == "msg-000000" and dataset["id"].iloc[-1] == "msg-004999"


def test_the_format_follows_the_suffix_unless_given(tmp_path: Path, config) -> None:
    parquet = synth.run(config=config, out=str(tmp_path / "raw.parquet"), rows=50)
    as_csv = synth.run(config=config, out=str(tmp_path / "raw.data"), rows=50, fmt="csv")
    gzipped = synth.run(config=config, out=str(tmp_path / "raw.csv.gz"), rows=50)

    assert parquet.xcom["format"] == "parquet"
    assert list(pd.read_parquet(tmp_path / "raw.parquet").columns) == COLUMNS
    assert as_csv.xcom["format"] == gzipped.xcom["format"] == "csv"
    assert pd.read_csv(tmp_path / "raw.data").shape == (50, 5)
    assert pd.read_csv(io.BytesIO(gzip.decompress((tmp_path / "raw.csv.gz").read_bytes()))).shape == (50, 5)


def test_an_unknown_suffix_without_format_is_refused_and_nothing_written(tmp_path: Path, config) -> None:
    with pytest.raises(StageError, match=r"^synth: cannot tell the format of .*raw\.txt from its suffix"):
        synth.run(config=config, out=str(tmp_path / "raw.txt"), rows=50)
    with pytest.raises(StageError, match=r"^synth: --rows must be at least 1, got 0$"):
        synth.run(config=config, out=str(tmp_path / "raw.csv"), rows=0)
    assert list(tmp_path.iterdir()) == []


def test_xcom_and_summary_report_what_was_written(tmp_path: Path, config) -> None:
    out = str(tmp_path / "raw.csv")

    result = synth.run(config=config, out=out, rows=1000, seed=3)
    frame = pd.read_csv(out)

    assert result.commit_uri is None
    assert result.xcom == {
        "uri": out,
        "rows": 1000,
        "class_counts": synth.class_sizes(1000),
        "format": "csv",
        "embedded": False,
        "phrasing_families": frame["phrasing_family"].nunique(),
        "held_out_phrasing_rows": int(frame["phrasing_held_out"].sum()),
    }
    assert 0.08 < result.xcom["held_out_phrasing_rows"] / 1000 < 0.2
    assert result.summary == (
        f"synth: wrote 1000 rows (100 privacy intents, 6 labels, {result.xcom['held_out_phrasing_rows']} in "
        f"held-out phrasing families) to {out}"
    )


def test_embedded_adds_the_584_production_columns(tmp_path: Path, config, fake_production_embeddings) -> None:
    out = tmp_path / "raw.parquet"

    result = synth.run(config=config, out=str(out), rows=40, embedded=True)

    frame = pd.read_parquet(out)
    assert list(frame.columns[:5]) == COLUMNS
    assert list(frame.columns[5:]) == [f"emb_{i:03d}" for i in range(584)]
    assert (frame.dtypes.iloc[5:] == np.float32).all()
    assert frame["emb_000"].tolist() == [float(len(t)) for t in frame["text"]]
    assert len(fake_production_embeddings) == 1 and list(fake_production_embeddings[0]) == frame["text"].tolist()
    assert result.xcom["embedded"] is True


def test_without_embedded_the_sentence_model_is_never_called(
    tmp_path: Path, config, fake_production_embeddings
) -> None:
    synth.run(config=config, out=str(tmp_path / "raw.csv"), rows=40)
    assert fake_production_embeddings == []
    assert not any(c.startswith("emb_") for c in pd.read_csv(tmp_path / "raw.csv").columns)


def test_each_row_names_its_phrasing_family_and_held_out_families_are_marked(dataset: pd.DataFrame) -> None:
    families = dataset["phrasing_family"]
    intents = families.str.split("/").str[0]
    assert set(intents) == set(INTENTS)
    # Rows carry their own intent's phrasing except the few written like a neighbouring intent.
    assert (intents == dataset["label"]).mean() > 0.95
    held_out = dataset[dataset["phrasing_held_out"]]
    expected = {f"{intent}/{p:02d}" for intent, positions in synth.HELD_OUT_TEMPLATES.items() for p in positions}
    assert set(held_out["phrasing_family"]) == expected
    assert not dataset.loc[~dataset["phrasing_held_out"], "phrasing_family"].isin(expected).any()
    # Every intent has unseen phrasings to score, and most rows stay trainable.
    assert set(held_out["label"]) == set(INTENTS)
    assert 0.08 < len(held_out) / len(dataset) < 0.2


def test_a_trainable_row_never_contains_a_held_out_template(dataset: pd.DataFrame) -> None:
    """The appended second request of a seen row is drawn from seen templates only."""
    held_out_openings = [
        synth.TEMPLATES[intent][p].split("{")[0].strip().lower()
        for intent, positions in synth.HELD_OUT_TEMPLATES.items()
        for p in positions
        if len(synth.TEMPLATES[intent][p].split("{")[0].strip()) > 25
    ]
    assert len(held_out_openings) > 5
    seen_texts = dataset.loc[~dataset["phrasing_held_out"], "text"].str.lower()
    for opening in held_out_openings:
        assert not seen_texts.str.contains(opening, regex=False).any(), opening
