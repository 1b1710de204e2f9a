"""validate: bad rows quarantined with a reason, systematic problems and untrainable data refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline import cli, storage
from privacy_pipeline.config import INTENTS, PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import ingest, validate

# 60 negatives + 12 of each privacy intent: every class clears the default
# min_rows_per_class (10), and 2 bad rows of 120 stay under the default
# max_bad_row_fraction (2%) while 3 go over it.
PER_CLASS = {**{label: 12 for label in INTENTS}, "no_privacy_intent": 60}
ROWS = sum(PER_CLASS.values())


@pytest.fixture()
def config() -> PipelineConfig:
    return PipelineConfig()


def labelled_messages(per_class: dict[str, int] = PER_CLASS) -> pd.DataFrame:
    labels = [label for label, n in per_class.items() for _ in range(n)]
    # Interleave the classes so no class sits in one block of rows.
    order = np.random.default_rng(0).permutation(len(labels))
    return pd.DataFrame(
        {
            "id": [f"msg-{i:04d}" for i in range(len(labels))],
            "label": [labels[i] for i in order],
            "text": [f"support message {i} about my account" for i in range(len(labels))],
        }
    )


def with_embeddings(frame: pd.DataFrame, dim: int = 584) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = frame.copy()
    frame["embedding"] = [rng.normal(size=dim).astype(np.float32) for _ in range(len(frame))]
    return frame


def ingested(tmp_path: Path, config: PipelineConfig, *parts: pd.DataFrame) -> str:
    """Run ingest on ``parts`` written as Parquet part files and commit it, as the CLI would."""
    source = tmp_path / "source"
    source.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(parts):
        part.to_parquet(source / f"part-{i:04d}.parquet", index=False)
    run_uri = str(tmp_path / "run")
    result = ingest.run(config=config, source=str(source), run_uri=run_uri)
    storage.write_json(result.commit_uri or "", result.payload())
    return run_uri


def read(uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def assert_nothing_written(run_uri: str) -> None:
    assert not Path(run_uri, "validate").exists()


def test_clean_text_data_passes_whole_with_an_empty_quarantine(tmp_path: Path, config) -> None:
    run_uri = ingested(tmp_path, config, labelled_messages())

    result = validate.run(config=config, run_uri=run_uri)

    layout = RunLayout(run_uri)
    validated = read(layout.validated)
    assert len(validated) == ROWS and list(validated.columns) == ["id", "label", "text"]
    quarantine = read(layout.quarantine)
    assert len(quarantine) == 0 and {"reason", "source_row", "source_part", "part_row"} <= set(quarantine.columns)
    report = storage.read_json(layout.validation_report)
    assert report["rows_in"] == report["rows_valid"] == ROWS and report["rows_quarantined"] == 0
    assert report["class_counts"] == {label: PER_CLASS[label] for label in INTENTS}
    assert all(check["passed"] for check in report["checks"])
    assert report["thresholds"]["max_bad_row_fraction"] == 0.02 and report["thresholds"]["min_rows_per_class"] == 10
    assert result.xcom == {
        "validated_uri": layout.validated,
        "quarantine_uri": layout.quarantine,
        "report_uri": layout.validation_report,
        "rows_valid": ROWS,
        "rows_quarantined": 0,
        "reasons": {},
        "class_counts": report["class_counts"],
        # "support message 7 about ..." and "... 8 ..." differ only in a number: one text, normalised.
        "exact_duplicate_rows": 0,
        "near_duplicate_rows": ROWS - 3,
    }
    assert result.summary == (
        f"validate: {ROWS} of {ROWS} rows valid, none quarantined; 6 classes; "
        f"0 exact and {ROWS - 3} near-duplicate texts"
    )


def test_validate_needs_a_completed_ingest(tmp_path: Path, config) -> None:
    with pytest.raises(StageError, match=r"^validate: run .* has no completed ingest stage .*; run ingest first$"):
        validate.run(config=config, run_uri=str(tmp_path / "run"))


# --- embeddings ----------------------------------------------------------------


@pytest.mark.parametrize("dim", [583, 585])
def test_every_embedding_of_the_wrong_length_fails_outright(tmp_path: Path, config, dim: int) -> None:
    run_uri = ingested(tmp_path, config, with_embeddings(labelled_messages(), dim=dim))

    with pytest.raises(StageError) as failure:
        validate.run(config=config, run_uri=run_uri)
    assert str(failure.value).startswith(
        f"validate: {ROWS} rows in {RunLayout(run_uri).snapshot} have {dim}-dim embeddings (expected 584), "
        f"first at row 0 ({tmp_path / 'source' / 'part-0000.parquet'} row 0)"
    )
    assert_nothing_written(run_uri)


@pytest.mark.parametrize("dim", [583, 585])
def test_one_embedding_of_the_wrong_length_is_quarantined(tmp_path: Path, config, dim: int) -> None:
    frame = with_embeddings(labelled_messages())
    frame.at[17, "embedding"] = np.zeros(dim, dtype=np.float32)
    run_uri = ingested(tmp_path, config, frame)

    result = validate.run(config=config, run_uri=run_uri)

    quarantine = read(RunLayout(run_uri).quarantine)
    assert quarantine[["id", "reason", "source_row"]].to_dict("records") == [
        {"id": "msg-0017", "reason": "wrong_embedding_dim", "source_row": 17}
    ]
    assert result.xcom["rows_valid"] == ROWS - 1
    assert "msg-0017" not in set(read(RunLayout(run_uri).validated)["id"])
    report = storage.read_json(RunLayout(run_uri).validation_report)
    dim_check = next(c for c in report["checks"] if c["name"] == "wrong_embedding_dim")
    assert not dim_check["passed"] and dim_check["detail"].startswith(f"1 rows have {dim}-dim embeddings")


def test_nan_and_inf_embeddings_are_quarantined(tmp_path: Path, config) -> None:
    frame = with_embeddings(labelled_messages())
    frame.at[5, "embedding"] = np.where(np.arange(584) == 3, np.nan, 0.5).astype(np.float32)
    frame.at[9, "embedding"] = np.where(np.arange(584) == 0, -np.inf, 0.5).astype(np.float32)
    run_uri = ingested(tmp_path, config, frame)

    result = validate.run(config=config, run_uri=run_uri)

    quarantine = read(RunLayout(run_uri).quarantine)
    assert quarantine["id"].tolist() == ["msg-0005", "msg-0009"]
    assert set(quarantine["reason"]) == {"non_finite_embedding"}
    assert result.xcom["rows_quarantined"] == 2 and result.xcom["reasons"] == {"non_finite_embedding": 2}
    assert np.isfinite(np.stack(read(RunLayout(run_uri).validated)["embedding"].to_numpy())).all()


def test_bad_rows_over_the_threshold_fail_naming_the_commonest_reason(tmp_path: Path, config) -> None:
    frame = with_embeddings(labelled_messages())
    for row in (30, 41, 77):
        frame.at[row, "embedding"] = np.full(584, np.nan, dtype=np.float32)
    run_uri = ingested(tmp_path, config, frame)

    with pytest.raises(StageError) as failure:
        validate.run(config=config, run_uri=run_uri)
    assert str(failure.value) == (
        f"validate: 3 of {ROWS} rows (2.5%) in {RunLayout(run_uri).snapshot} are bad, over "
        "validate.max_bad_row_fraction (2.0%); most common: 3 rows have NaN or infinite embedding values, "
        f"first at row 30 ({tmp_path / 'source' / 'part-0000.parquet'} row 30)"
    )
    assert_nothing_written(run_uri)
    # The same data passes once the threshold allows it.
    lenient = PipelineConfig.model_validate({"validate": {"max_bad_row_fraction": 0.05}})
    assert validate.run(config=lenient, run_uri=run_uri).xcom["rows_quarantined"] == 3


def test_rows_are_traced_to_their_part_file(tmp_path: Path, config) -> None:
    frame = with_embeddings(labelled_messages())
    frame.at[100, "embedding"] = np.full(584, np.inf, dtype=np.float32)
    run_uri = ingested(tmp_path, config, frame.iloc[:80], frame.iloc[80:].reset_index(drop=True))

    validate.run(config=config, run_uri=run_uri)

    quarantine = read(RunLayout(run_uri).quarantine)
    assert quarantine[["source_row", "source_part", "part_row"]].to_dict("records") == [
        {"source_row": 100, "source_part": str(tmp_path / "source" / "part-0001.parquet"), "part_row": 20}
    ]


def test_a_non_numeric_embedding_cell_in_a_csv_is_quarantined_by_row(tmp_path: Path, config) -> None:
    frame = labelled_messages()
    matrix = np.random.default_rng(2).normal(size=(len(frame), 584)).round(4)
    wide = pd.DataFrame(matrix, columns=[f"emb_{i:03d}" for i in range(584)]).astype({"emb_200": object})
    wide.at[33, "emb_200"] = "n/a"
    (tmp_path / "source").mkdir()
    pd.concat([frame, wide], axis=1).to_csv(tmp_path / "source" / "raw.csv", index=False)
    run_uri = str(tmp_path / "run")
    storage.write_json(
        RunLayout(run_uri).result("ingest"),
        ingest.run(config=config, source=str(tmp_path / "source" / "raw.csv"), run_uri=run_uri).payload(),
    )

    validate.run(config=config, run_uri=run_uri)

    quarantine = read(RunLayout(run_uri).quarantine)
    assert quarantine[["source_row", "reason"]].to_dict("records") == [
        {"source_row": 33, "reason": "non_finite_embedding"}
    ]


# --- labels, ids, text ------------------------------------------------------------


def test_an_unknown_label_is_quarantined_but_all_unknown_fails(tmp_path: Path, config) -> None:
    frame = labelled_messages()
    frame.loc[3, "label"] = "delete_me"
    run_uri = ingested(tmp_path / "one", config, frame)
    validate.run(config=config, run_uri=run_uri)
    assert read(RunLayout(run_uri).quarantine)[["id", "reason"]].to_dict("records") == [
        {"id": "msg-0003", "reason": "unknown_label"}
    ]

    frame["label"] = "Deletion"
    run_uri = ingested(tmp_path / "all", config, frame)
    with pytest.raises(
        StageError, match=rf"^validate: {ROWS} rows in .* have labels outside config labels \('Deletion'\)"
    ):
        validate.run(config=config, run_uri=run_uri)
    assert_nothing_written(run_uri)


def test_duplicate_ids_keep_the_first_row_and_quarantine_the_rest(tmp_path: Path, config) -> None:
    frame = labelled_messages()
    frame.loc[50, "id"] = "msg-0010"
    frame.loc[51, "id"] = "msg-0010"
    frame = frame.drop(index=[52, 53]).reset_index(drop=True)  # keep 2 bad rows under the threshold
    run_uri = ingested(tmp_path, config, frame)

    validate.run(config=config, run_uri=run_uri)

    quarantine = read(RunLayout(run_uri).quarantine)
    assert quarantine[["id", "reason", "source_row"]].to_dict("records") == [
        {"id": "msg-0010", "reason": "duplicate_id", "source_row": 50},
        {"id": "msg-0010", "reason": "duplicate_id", "source_row": 51},
    ]
    kept = read(RunLayout(run_uri).validated).set_index("id")
    assert kept.loc["msg-0010", "text"] == frame.loc[10, "text"]


def test_empty_and_over_long_texts_are_quarantined_when_text_is_the_input(tmp_path: Path, config) -> None:
    frame = labelled_messages()
    frame.loc[2, "text"] = "   "
    frame.loc[8, "text"] = "x" * 5001
    run_uri = ingested(tmp_path / "text", config, frame)
    validate.run(config=config, run_uri=run_uri)
    assert read(RunLayout(run_uri).quarantine)[["id", "reason"]].to_dict("records") == [
        {"id": "msg-0002", "reason": "empty_text"},
        {"id": "msg-0008", "reason": "text_too_long"},
    ]

    # With embeddings as the model input the same texts are only side features.
    run_uri = ingested(tmp_path / "embedded", config, with_embeddings(frame))
    assert validate.run(config=config, run_uri=run_uri).xcom["rows_quarantined"] == 0


# --- trainability ------------------------------------------------------------------


def test_a_single_class_is_refused(tmp_path: Path, config) -> None:
    run_uri = ingested(tmp_path, config, labelled_messages({"no_privacy_intent": 80}))

    with pytest.raises(StageError) as failure:
        validate.run(config=config, run_uri=run_uri)
    assert str(failure.value) == (
        f"validate: only one class ('no_privacy_intent') in {RunLayout(run_uri).snapshot}; "
        "a classifier needs at least two"
    )
    assert_nothing_written(run_uri)


def test_a_class_below_min_rows_per_class_is_refused_with_the_reason(tmp_path: Path, config) -> None:
    run_uri = ingested(tmp_path, config, labelled_messages({**PER_CLASS, "consent_withdrawal": 4}))

    with pytest.raises(StageError) as failure:
        validate.run(config=config, run_uri=run_uri)
    message = str(failure.value)
    assert message.startswith(
        f"validate: too few valid rows per class in {RunLayout(run_uri).snapshot}: 'consent_withdrawal' has 4; "
        "each class needs at least 10 because the holdout split takes 20% of each class, 5-fold CV"
    )
    assert "SMOTE needs k_neighbors + 1 = 6 rows" in message
    assert_nothing_written(run_uri)
    # With SMOTE off and 3 folds the same class is big enough.
    relaxed = PipelineConfig.model_validate({"smote": {"enabled": False}, "tune": {"cv_folds": 3}})
    assert validate.run(config=relaxed, run_uri=run_uri).xcom["class_counts"]["consent_withdrawal"] == 4


def test_fewer_rows_than_min_rows_are_refused(tmp_path: Path, config) -> None:
    run_uri = ingested(tmp_path, config, labelled_messages({"opt_out": 12, "no_privacy_intent": 20}))

    with pytest.raises(StageError, match=r"^validate: only 32 valid rows in .*, fewer than validate\.min_rows \(50\)$"):
        validate.run(config=config, run_uri=run_uri)
    assert_nothing_written(run_uri)


def test_a_failed_rerun_leaves_the_earlier_outputs_untouched(tmp_path: Path, config) -> None:
    frame = labelled_messages()
    run_uri = ingested(tmp_path, config, frame)
    validate.run(config=config, run_uri=run_uri)
    layout = RunLayout(run_uri)
    outputs = [layout.validated, layout.quarantine, layout.validation_report]
    before = [Path(uri).read_bytes() for uri in outputs]

    frame["label"] = "no_privacy_intent"
    frame.to_parquet(tmp_path / "source" / "part-0000.parquet", index=False)
    ingest.run(config=config, source=str(tmp_path / "source"), run_uri=run_uri)
    with pytest.raises(StageError, match="only one class"):
        validate.run(config=config, run_uri=run_uri)

    assert [Path(uri).read_bytes() for uri in outputs] == before


def test_the_cli_runs_synth_ingest_validate_and_reports_failures_in_one_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    xcom = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("XCOM_RETURN_PATH", str(xcom))
    raw, run_uri = str(tmp_path / "raw.parquet"), str(tmp_path / "run")

    assert cli.main(["synth", "--out", raw, "--rows", "1200", "--seed", "11"]) == 0
    assert cli.main(["ingest", "--source", raw, "--run", run_uri]) == 0
    assert cli.main(["validate", "--run", run_uri]) == 0
    assert storage.read_json(str(xcom))["rows_valid"] == 1200
    assert storage.exists(RunLayout(run_uri).result("validate"))
    capsys.readouterr()

    code = cli.main(["--set", "validate.min_rows=2000", "validate", "--run", run_uri])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines() == [
        f"error: validate: only 1200 valid rows in {RunLayout(run_uri).snapshot}, fewer than validate.min_rows (2000)"
    ]
    assert "Traceback" not in captured.err


def test_exact_and_near_duplicate_texts_are_reported_not_quarantined(tmp_path: Path, config) -> None:
    frame = labelled_messages()
    frame["text"] = [f"message number {chr(ord('a') + i % 26)}{chr(ord('a') + i // 26)}" for i in range(ROWS)]
    frame.loc[1:4, "text"] = frame.loc[0, "text"]  # four exact copies of row 0
    frame.loc[5, "text"] = "MESSAGE  number, AA!! 🙏"  # row 0 again up to case, spacing, punctuation, emoji
    frame.loc[6, "text"] = "message number ba"  # a different text that merely looks alike: not a duplicate
    frame.loc[7, "text"] = "order 12345 is late"
    frame.loc[8, "text"] = "Order 99817 is late."  # the same text with another order number
    run_uri = ingested(tmp_path, config, frame)

    result = validate.run(config=config, run_uri=run_uri)

    report = storage.read_json(RunLayout(run_uri).validation_report)["duplicates"]
    assert report["exact_duplicate_rows"] == 4
    assert report["near_duplicate_rows"] == 2
    assert report["rows_in_duplicate_groups"] == 8 and report["largest_duplicate_group"] == 6
    assert report["unique_normalised_texts"] == ROWS - 6
    assert result.xcom["rows_valid"] == ROWS and result.xcom["rows_quarantined"] == 0
    assert (result.xcom["exact_duplicate_rows"], result.xcom["near_duplicate_rows"]) == (4, 2)
