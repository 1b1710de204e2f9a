"""Normalised texts and phrasing families: what makes two messages the same, carried from synth to the holdout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from privacy_pipeline import modeling, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.phrasing import normalised_text, text_keys
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult
from privacy_pipeline.stages import ingest, synth, validate


def test_normalisation_ignores_case_punctuation_spacing_emoji_and_numbers() -> None:
    assert normalised_text("Delete my data!! 🙏") == normalised_text("delete   my data.") == "delete my data"
    assert normalised_text("Order #12345 is late") == normalised_text("order 99817 is LATE?") == "order 00000 is late"
    assert normalised_text("delete my data") != normalised_text("delete my date")
    keys = text_keys(pd.Series(["Hi, there", "hi there!", "hello there"]))
    assert keys[0] == keys[1] != keys[2]


def _marker(result: StageResult) -> tuple[str, dict]:
    return result.commit_uri or "", result.payload()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_ingest_and_validate_carry_the_phrasing_columns_from_synth(tmp_path: Path, suffix: str) -> None:
    config = PipelineConfig()
    source = str(tmp_path / f"raw.{suffix}")
    synth.run(config=config, out=source, rows=1200, seed=2)
    run_uri = str(tmp_path / "run")
    storage.write_json(*_marker(ingest.run(config=config, source=source, run_uri=run_uri)))
    storage.write_json(*_marker(validate.run(config=config, run_uri=run_uri)))

    validated = modeling.read_table(RunLayout(run_uri).validated)
    written = synth.generate(1200, seed=2)
    assert validated["phrasing_family"].tolist() == written["phrasing_family"].tolist()
    assert validated["phrasing_held_out"].dtype == bool
    assert validated["phrasing_held_out"].tolist() == written["phrasing_held_out"].tolist()


def test_a_part_without_phrasing_columns_gets_nulls_beside_one_with_them(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    with_families = synth.generate(20, seed=1)
    with_families.to_parquet(parts / "part-0000.parquet", index=False)
    without = synth.generate(20, seed=2).drop(columns=["phrasing_family", "phrasing_held_out"])
    without["id"] = [f"other-{i}" for i in range(20)]
    without.to_parquet(parts / "part-0001.parquet", index=False)

    ingest.run(config=PipelineConfig(), source=str(parts), run_uri=str(tmp_path / "run"))

    snapshot = modeling.read_table(RunLayout(str(tmp_path / "run")).snapshot)
    assert snapshot["phrasing_family"].iloc[:20].tolist() == with_families["phrasing_family"].tolist()
    assert snapshot["phrasing_family"].iloc[20:].isna().all()


def test_a_held_out_flag_that_is_not_true_or_false_is_refused_naming_the_file(tmp_path: Path) -> None:
    frame = synth.generate(10, seed=1)
    frame["phrasing_held_out"] = ["maybe"] * 10
    source = tmp_path / "raw.csv"
    frame.to_csv(source, index=False)
    with pytest.raises(StageError, match=rf"^ingest: {source} column 'phrasing_held_out' \(\w+\) must hold true/false"):
        ingest.run(config=PipelineConfig(), source=str(source), run_uri=str(tmp_path / "run"))
