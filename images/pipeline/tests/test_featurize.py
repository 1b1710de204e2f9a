"""The featurize stage end to end, in text mode (the real encoder) and embedded mode (no encoder)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privacy_pipeline import storage
from privacy_pipeline.config import INTENTS, PipelineConfig, load_config
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.sentence_encoder import model_version
from privacy_pipeline.stages import featurize
from privacy_pipeline.text_features import HANDCRAFTED_COLUMNS

SENTENCE_COLUMNS = [f"st_{i:03d}" for i in range(384)]
EMBEDDING_COLUMNS = [f"emb_{i:03d}" for i in range(584)]

TEMPLATES = {
    "data_deletion": ["Please delete my account {n}", "erase everything you hold on me, ticket {n}"],
    "data_access": ["Send me a copy of my data {n}", "what data do you keep about customer {n}?"],
    "opt_out": ["unsubscribe me from marketing {n}", "do not sell my info, account {n}"],
    "consent_withdrawal": ["I withdraw my consent {n}", "I no longer consent to tracking, user {n}"],
    "privacy_policy_question": ["how do you use cookies? ref {n}", "where is the privacy policy {n}"],
    "no_privacy_intent": ["my parcel {n} is late", "can I change my delivery slot to {n} pm", "the app crashed {n}"],
}


def synthetic_rows(count: int) -> pd.DataFrame:
    labels = [INTENTS[i % len(INTENTS)] for i in range(count)]
    texts = [TEMPLATES[label][i % len(TEMPLATES[label])].format(n=i) for i, label in enumerate(labels)]
    return pd.DataFrame({"id": [f"msg-{i:04d}" for i in range(count)], "label": labels, "text": texts})


def write_validated(run_uri: str, frame: pd.DataFrame) -> None:
    layout = RunLayout(run_uri)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes(layout.validated, buffer.getvalue())
    storage.write_json(layout.result("validate"), {"stage": "validate", "rows": len(frame)})


def read_features(run_uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(RunLayout(run_uri).features)))


def random_embeddings(count: int, dim: int = 584) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return list(rng.normal(size=(count, dim)).astype(np.float32))


@pytest.fixture
def config() -> PipelineConfig:
    return load_config(overrides=["featurize.batch_size=16"])


@pytest.fixture
def run_uri(tmp_path: Path) -> str:
    return str(tmp_path / "runs" / "run-1")


@pytest.fixture
def no_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to load the sentence model."""

    class RefusingEncoder:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("embedded mode must not load the sentence encoder")

    monkeypatch.setattr(featurize, "SentenceEncoder", RefusingEncoder)


# --- text mode ----------------------------------------------------------------------------------------------------


def test_text_mode_writes_sentence_and_handcrafted_features(config: PipelineConfig, run_uri: str) -> None:
    validated = synthetic_rows(60)
    write_validated(run_uri, validated)

    result = featurize.run(config=config, run_uri=run_uri)

    features = read_features(run_uri)
    assert list(features.columns) == ["id", "label", "text", *SENTENCE_COLUMNS, *HANDCRAFTED_COLUMNS]
    assert len(features) == 60
    assert features["id"].tolist() == validated["id"].tolist()
    assert features["label"].tolist() == validated["label"].tolist()
    assert (features[SENTENCE_COLUMNS + list(HANDCRAFTED_COLUMNS)].dtypes == np.float32).all()
    np.testing.assert_allclose(np.linalg.norm(features[SENTENCE_COLUMNS].to_numpy(), axis=1), 1.0, atol=1e-5)

    spec = storage.read_json(RunLayout(run_uri).feature_spec)
    assert spec == {
        "mode": "text",
        "text_column": "text",
        "embedding_columns": SENTENCE_COLUMNS,
        "handcrafted_columns": list(HANDCRAFTED_COLUMNS),
        "sentence_model": "all-MiniLM-L6-v2",
        "sentence_model_version": model_version(),
    }
    assert result.xcom["mode"] == "text"
    assert result.xcom["rows"] == 60
    assert result.xcom["n_features"] == 384 + len(HANDCRAFTED_COLUMNS)
    assert result.xcom["features_uri"] == RunLayout(run_uri).features
    assert result.xcom["feature_spec_uri"] == RunLayout(run_uri).feature_spec
    assert result.xcom["texts_per_second"] > 0
    assert result.commit_uri == RunLayout(run_uri).result("featurize")
    assert result.summary.startswith(
        f"featurize: 60 rows -> 384 sentence dims + {len(HANDCRAFTED_COLUMNS)} handcrafted"
    )
    assert "text mode" in result.summary
    # The CLI writes the commit marker, not the stage.
    assert not storage.exists(RunLayout(run_uri).result("featurize"))


def test_featurize_frame_matches_what_the_stage_wrote(config: PipelineConfig, run_uri: str) -> None:
    """Inference featurizes new messages exactly as training did."""
    validated = synthetic_rows(12)
    write_validated(run_uri, validated)
    featurize.run(config=config, run_uri=run_uri)

    unlabelled = validated.drop(columns=["label"]).set_index(pd.Index(range(100, 112)))
    features, spec = featurize.featurize_frame(unlabelled, config)

    written = read_features(run_uri).drop(columns=["label"])
    assert list(features.columns) == list(written.columns)
    pd.testing.assert_frame_equal(features, written, check_dtype=False, atol=1e-5)
    assert spec == storage.read_json(RunLayout(run_uri).feature_spec)


def test_production_embeddings_are_584_wide(config: PipelineConfig) -> None:
    texts = synthetic_rows(30)["text"].tolist()
    embeddings = featurize.production_embeddings(texts, config)
    assert embeddings.shape == (30, 584)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings[:, :384], axis=1), 1.0, atol=1e-5)
    assert np.abs(embeddings[:, 384:]).sum() > 0


def test_missing_texts_are_refused_with_their_row(config: PipelineConfig, run_uri: str, no_encoder: None) -> None:
    validated = synthetic_rows(10)
    validated.loc[[3, 7], "text"] = None
    write_validated(run_uri, validated)
    with pytest.raises(StageError, match=r"featurize: 2 rows in validated.parquet have no text, first at row 3"):
        featurize.run(config=config, run_uri=run_uri)
    assert not storage.exists(RunLayout(run_uri).features)


def test_an_unshipped_model_fails_before_writing_anything(run_uri: str) -> None:
    write_validated(run_uri, synthetic_rows(10))
    config = load_config(overrides=["featurize.model_name=all-mpnet-base-v2"])
    with pytest.raises(StageError, match="only 'all-MiniLM-L6-v2' ships in the image"):
        featurize.run(config=config, run_uri=run_uri)
    assert not storage.exists(RunLayout(run_uri).features)
    assert not storage.exists(RunLayout(run_uri).feature_spec)


# --- embedded mode ------------------------------------------------------------------------------------------------


def test_embedded_mode_unpacks_embeddings_and_adds_handcrafted_features(
    config: PipelineConfig, run_uri: str, no_encoder: None
) -> None:
    validated = synthetic_rows(60)
    embeddings = random_embeddings(60)
    validated["embedding"] = embeddings
    write_validated(run_uri, validated)

    result = featurize.run(config=config, run_uri=run_uri)

    features = read_features(run_uri)
    assert list(features.columns) == ["id", "label", "text", *EMBEDDING_COLUMNS, *HANDCRAFTED_COLUMNS]
    assert (features[EMBEDDING_COLUMNS].dtypes == np.float32).all()
    np.testing.assert_array_equal(features[EMBEDDING_COLUMNS].to_numpy(), np.stack(embeddings))
    spec = storage.read_json(RunLayout(run_uri).feature_spec)
    assert spec["mode"] == "embedded"
    assert spec["text_column"] == "text"
    assert spec["embedding_columns"] == EMBEDDING_COLUMNS
    assert spec["handcrafted_columns"] == list(HANDCRAFTED_COLUMNS)
    assert spec["sentence_model"] == "all-MiniLM-L6-v2"
    assert result.xcom["n_features"] == 584 + len(HANDCRAFTED_COLUMNS)
    assert "embedded mode" in result.summary


def test_embedded_mode_without_text_has_no_handcrafted_features(
    config: PipelineConfig, run_uri: str, no_encoder: None
) -> None:
    validated = synthetic_rows(20).drop(columns=["text"])
    validated["embedding"] = random_embeddings(20)
    write_validated(run_uri, validated)

    result = featurize.run(config=config, run_uri=run_uri)

    assert list(read_features(run_uri).columns) == ["id", "label", *EMBEDDING_COLUMNS]
    spec = storage.read_json(RunLayout(run_uri).feature_spec)
    assert spec["mode"] == "embedded"
    assert spec["text_column"] is None
    assert spec["handcrafted_columns"] == []
    assert result.xcom["n_features"] == 584
    assert result.xcom["texts_per_second"] is None


def test_embeddings_of_the_wrong_width_are_refused_with_their_row(
    config: PipelineConfig, run_uri: str, no_encoder: None
) -> None:
    validated = synthetic_rows(10)
    embeddings = random_embeddings(10)
    embeddings[4] = embeddings[4][:583]
    embeddings[8] = embeddings[8][:583]
    validated["embedding"] = embeddings
    write_validated(run_uri, validated)
    with pytest.raises(
        StageError,
        match=r"featurize: 2 rows in validated.parquet have 583-dim embeddings \(expected 584\), first at row 4",
    ):
        featurize.run(config=config, run_uri=run_uri)
    assert not storage.exists(RunLayout(run_uri).features)


# --- inputs -------------------------------------------------------------------------------------------------------


def test_without_a_completed_validate_the_stage_names_the_missing_file(config: PipelineConfig, run_uri: str) -> None:
    missing = RunLayout(run_uri).result("validate")
    with pytest.raises(
        StageError, match=rf"featurize: run .* has no completed validate stage \({missing} is missing\)"
    ):
        featurize.run(config=config, run_uri=run_uri)


def test_a_validate_result_without_its_table_says_to_rerun_validate(config: PipelineConfig, run_uri: str) -> None:
    storage.write_json(RunLayout(run_uri).result("validate"), {"stage": "validate"})
    with pytest.raises(StageError, match=r"validated.parquet is missing although validate completed; rerun validate"):
        featurize.run(config=config, run_uri=run_uri)


def test_a_table_with_neither_text_nor_embeddings_is_refused(
    config: PipelineConfig, run_uri: str, no_encoder: None
) -> None:
    write_validated(run_uri, synthetic_rows(10).drop(columns=["text"]))
    with pytest.raises(StageError, match=r"validated.parquet has neither a 'text' nor an 'embedding' column"):
        featurize.run(config=config, run_uri=run_uri)


def test_an_empty_table_is_refused(config: PipelineConfig, run_uri: str, no_encoder: None) -> None:
    write_validated(run_uri, synthetic_rows(0))
    with pytest.raises(StageError, match="has no rows; nothing to featurize"):
        featurize.run(config=config, run_uri=run_uri)


# --- through the CLI ----------------------------------------------------------------------------------------------


def test_the_cli_commits_the_stage_and_returns_its_xcom(
    run_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_encoder: None
) -> None:
    from privacy_pipeline import cli

    validated = synthetic_rows(20)
    validated["embedding"] = random_embeddings(20)
    write_validated(run_uri, validated)
    xcom_path = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("XCOM_RETURN_PATH", str(xcom_path))

    assert cli.main(["featurize", "--run", run_uri]) == 0

    committed = storage.read_json(RunLayout(run_uri).result("featurize"))
    assert committed["stage"] == "featurize"
    assert committed["mode"] == "embedded"
    assert storage.read_json(str(xcom_path)) == committed


def test_the_cli_exits_2_without_a_completed_validate(
    run_uri: str, capsys: pytest.CaptureFixture[str], no_encoder: None
) -> None:
    from privacy_pipeline import cli

    assert cli.main(["featurize", "--run", run_uri]) == cli.EXIT_STAGE_ERROR
    assert "has no completed validate stage" in capsys.readouterr().err
    assert not storage.exists(RunLayout(run_uri).result("featurize"))
