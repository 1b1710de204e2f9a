"""register: versioning, the paired promotion gate on this run's holdout, idempotent reruns, concurrent registrations.

Each test builds real runs: tiny scikit-learn pipelines (a ColumnTransformer
selecting feature columns by name, then a LogisticRegression) saved with
skops, scored on a shared synthetic holdout, and the earlier stages' files
and commit markers written by hand.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from privacy_pipeline import model_io, registry, storage
from privacy_pipeline.config import INTENTS, PipelineConfig, config_sha256, load_config
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import evaluate, register

EMBEDDING_COLUMNS = [f"emb_{i:03d}" for i in range(4)]
HANDCRAFTED_COLUMNS = ["hc_length"]
CONFIG = PipelineConfig()
# Label noise in training, from best to worst model: five models of clearly different quality.
NOISE_LEVELS = (0.0, 0.5, 0.8, 0.85, 0.9)


@pytest.fixture(autouse=True)
def no_image_tag_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(register.IMAGE_TAG_ENV, raising=False)


def _score(model: Any, holdout: pd.DataFrame) -> float:
    """The holdout macro-F1 evaluate reports, which register compares the champion's against."""
    return float(evaluate.score(model, holdout, list(CONFIG.labels))["f1_macro"])


# --- data and models -----------------------------------------------------------------------------------------


def _frame(rows_per_class: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(scale=2.0, size=(len(INTENTS), len(EMBEDDING_COLUMNS)))
    labels = np.repeat(np.arange(len(INTENTS)), rows_per_class)
    embeddings = centers[labels] + rng.normal(scale=1.0, size=(len(labels), len(EMBEDDING_COLUMNS)))
    frame = pd.DataFrame(embeddings.astype("float32"), columns=EMBEDDING_COLUMNS)
    frame.insert(0, "label", [INTENTS[i] for i in labels])
    frame.insert(0, "id", [f"r{seed}-{i}" for i in range(len(labels))])
    frame["hc_length"] = rng.normal(size=len(labels)).astype("float32")
    return frame


TRAIN = _frame(rows_per_class=40, seed=1)
HOLDOUT = _frame(rows_per_class=25, seed=2)


def _model(noise: float, columns: list[str] = EMBEDDING_COLUMNS, seed: int = 7) -> Pipeline:
    rng = np.random.default_rng(seed)
    labels = TRAIN["label"].to_numpy().copy()
    flipped = rng.random(len(labels)) < noise
    labels[flipped] = rng.choice(np.array(INTENTS), size=int(flipped.sum()))
    model = Pipeline(
        [
            ("features", ColumnTransformer([("columns", "passthrough", columns)])),
            ("clf", LogisticRegression(C=1.0, max_iter=300, random_state=seed)),
        ]
    )
    # Fitted on exactly its feature columns, as the pipeline's models are, so it records what it reads.
    return model.fit(TRAIN[columns], labels)


@pytest.fixture(scope="module")
def models() -> list[bytes]:
    """Five models, best first, as skops bytes; their holdout scores are strictly decreasing."""
    fitted = [_model(noise) for noise in NOISE_LEVELS]
    scores = [_score(model, HOLDOUT) for model in fitted]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores), scores
    return [model_io.dumps(model) for model in fitted]


@dataclass(frozen=True)
class Run:
    uri: str
    f1_macro: float


def _write_run(
    root: Path,
    name: str,
    model_bytes: bytes | None,
    *,
    f1_macro: float | None = None,
    holdout: pd.DataFrame = HOLDOUT,
    train: pd.DataFrame = TRAIN,
    embedding_columns: list[str] = EMBEDDING_COLUMNS,
    handcrafted_columns: list[str] | None = None,
) -> Run:
    """A run as train and evaluate leave it: model, metrics, both splits, feature spec, manifest, commit markers."""
    layout = RunLayout(str(root / "runs" / name))
    if f1_macro is None:
        assert model_bytes is not None
        f1_macro = _score(model_io.loads(model_bytes, source=name), holdout)
    storage.write_json(
        layout.ingest_manifest,
        {
            "content_sha256": f"{name:0>64}"[-64:],
            "source": f"gs://bucket/raw/{name}/",
            "rows": len(TRAIN) + len(holdout),
            "parts": [{"uri": f"gs://bucket/raw/{name}/part-0000.parquet", "generation": 17}],
        },
    )
    storage.write_json(layout.result("ingest"), {"stage": "ingest"})
    storage.write_json(
        layout.feature_spec,
        {
            "mode": "embedded",
            "text_column": None,
            "embedding_columns": embedding_columns,
            "handcrafted_columns": handcrafted_columns or [],
            "sentence_model": "all-MiniLM-L6-v2",
            "sentence_model_version": "0.1.0",
        },
    )
    for uri, rows in ((layout.holdout_split, holdout), (layout.train_split, train)):
        buffer = io.BytesIO()
        rows.to_parquet(buffer, index=False)
        storage.write_bytes(uri, buffer.getvalue())
    if model_bytes is not None:
        storage.write_bytes(layout.model, model_bytes)
    storage.write_json(layout.result("train"), {"stage": "train", "params": {"clf__C": 1.0}, "train_rows": len(TRAIN)})
    storage.write_json(layout.metrics, {"f1_macro": f1_macro, "accuracy": 0.5})
    storage.write_json(layout.result("evaluate"), {"stage": "evaluate", "f1_macro": f1_macro})
    return Run(uri=layout.run_uri, f1_macro=f1_macro)


def _config(**register_section: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({"register": register_section})


def _registry_state(registry_uri: str) -> dict[str, bytes]:
    return {uri: storage.read_bytes(uri) for uri in storage.list_uris(registry_uri)}


@pytest.fixture
def registry_uri(tmp_path: Path) -> str:
    return str(tmp_path / "registry")


@pytest.fixture
def champion_run(tmp_path: Path, registry_uri: str, models: list[bytes]) -> Iterator[dict]:
    """A registry whose champion is the middle model."""
    run = _write_run(tmp_path, "champion", models[2])
    yield register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom


# --- registering and the first champion ----------------------------------------------------------------------


def test_the_first_model_is_registered_and_becomes_champion(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "first", models[0])
    result = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri)
    xcom = result.xcom
    version = xcom["model_version"]
    layout = RegistryLayout(registry_uri)

    assert xcom["promoted"] is True
    assert xcom["decision_reason"].startswith("first model")
    assert xcom["champion_version"] == version
    assert xcom["champion_f1_macro"] is None
    assert xcom["candidate_f1_macro"] == pytest.approx(run.f1_macro)
    assert xcom["model_uri"] == layout.model(version)
    assert xcom["registry_uri"] == registry_uri
    assert result.commit_uri == RunLayout(run.uri).result("register")
    assert result.summary == f"register: {version} promoted to champion ({xcom['decision_reason']})"

    assert storage.read_bytes(layout.model(version)) == models[0]
    champion = registry.champion(registry_uri)
    assert champion is not None
    assert champion["version"] == version
    assert champion["model_uri"] == layout.model(version)
    assert champion["f1_macro"] == pytest.approx(run.f1_macro)
    assert champion["run_uri"] == run.uri
    assert champion["previous_version"] is None
    assert registry.champion_model_uri(registry_uri) == layout.model(version)


def test_the_run_record_says_which_stage_pods_died_on_the_way(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "retried", models[0])
    oom = [{"try_number": 1, "reason": "OOMKilled", "message": "", "memory_limit": "8Gi", "at": "2026-11-23T02:00:00"}]
    storage.write_json(RunLayout(run.uri).path("_pod_failures", "train.json"), oom)

    version = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom["model_version"]

    record = storage.read_json(RegistryLayout(registry_uri).run_record(version))
    assert record["pod_failures"] == {"train": oom}


def test_the_version_is_timestamped_and_names_the_run(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "first", models[0])
    version = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom["model_version"]
    stamp, _, run_hash = version.partition("-")
    registered = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - registered) < timedelta(minutes=5)
    assert run_hash == registry.run_key(run.uri)[:8]


def test_metadata_records_lineage_config_and_image(
    tmp_path: Path, registry_uri: str, models, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(register.IMAGE_TAG_ENV, "europe-docker.pkg.dev/p/pipeline:1.2.3")
    run = _write_run(tmp_path, "first", models[0])
    version = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom["model_version"]
    metadata = storage.read_json(RegistryLayout(registry_uri).metadata(version))

    assert metadata["version"] == version
    assert metadata["run_uri"] == run.uri
    assert metadata["registered_at"].endswith("Z")
    assert metadata["params"] == {"clf__C": 1.0}
    assert metadata["metrics"]["f1_macro"] == pytest.approx(run.f1_macro)
    assert metadata["data"]["content_sha256"].endswith("first")
    assert metadata["data"]["source"] == "gs://bucket/raw/first/"
    assert metadata["data"]["parts"] == [{"uri": "gs://bucket/raw/first/part-0000.parquet", "generation": 17}]
    assert metadata["data"]["rows"] == len(TRAIN) + len(HOLDOUT)
    assert metadata["data"]["holdout_rows"] == len(HOLDOUT)
    assert metadata["feature_spec"]["embedding_columns"] == EMBEDDING_COLUMNS
    assert metadata["config"]["register"]["promotion_margin"] == CONFIG.register_.promotion_margin
    assert metadata["config"]["validate"]["embedding_dim"] == 584
    assert metadata["package_version"]
    assert metadata["image_tag"] == "europe-docker.pkg.dev/p/pipeline:1.2.3"
    assert metadata["sentence_model"] == "all-MiniLM-L6-v2"
    assert metadata["sentence_model_version"] == "0.1.0"


def test_the_run_record_keeps_the_effective_config_its_hash_and_the_config_files_hash(
    tmp_path: Path, registry_uri: str, models
) -> None:
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text("validate:\n  max_bad_row_fraction: 0.04\n", encoding="utf-8")
    config = load_config(str(config_file), ["tune.search=random"])
    run = _write_run(tmp_path, "first", models[0])
    version = register.run(config=config, run_uri=run.uri, registry_uri=registry_uri).xcom["model_version"]

    record = registry.read_run_record(registry_uri, version)
    assert record is not None
    assert record["config"]["validate"]["max_bad_row_fraction"] == 0.04
    assert record["config"]["tune"]["search"] == "random"  # the --set override is part of the effective config
    assert record["config_sha256"] == config_sha256(config) != config_sha256(CONFIG)
    # The file's hash alone is what the data watch compares with the cluster's config: overrides leave it be.
    assert record["config_source_sha256"] == hashlib.sha256(config_file.read_bytes()).hexdigest()
    assert load_config(str(config_file)).source_sha256 == record["config_source_sha256"]
    metadata = storage.read_json(RegistryLayout(registry_uri).metadata(version))
    assert metadata["config_sha256"] == record["config_sha256"]


def test_without_the_env_override_the_image_tag_comes_from_config(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "first", models[0])
    config = _config(image_tag="pipeline:from-config")
    version = register.run(config=config, run_uri=run.uri, registry_uri=registry_uri).xcom["model_version"]
    assert storage.read_json(RegistryLayout(registry_uri).metadata(version))["image_tag"] == "pipeline:from-config"


# --- the promotion gate --------------------------------------------------------------------------------------


def _oracle_holdout(**designs: np.ndarray) -> pd.DataFrame:
    """HOLDOUT plus, per named design, one-hot columns spelling the labels that design's oracle will predict."""
    columns = {
        f"oracle_{name}_{label}": (labels == label).astype("float32")
        for name, labels in designs.items()
        for label in INTENTS
    }
    return pd.concat([HOLDOUT, pd.DataFrame(columns)], axis=1)


def _oracle(holdout: pd.DataFrame, name: str) -> bytes:
    """A model that predicts exactly the labels design ``name`` spells in ``holdout``: a near-hard-margin
    logistic regression on its one-hot columns (only trusted types, so register will load it)."""
    columns = [f"oracle_{name}_{label}" for label in INTENTS]
    labels = np.array(INTENTS)[holdout[columns].to_numpy().argmax(axis=1)]
    model = Pipeline(
        [
            ("features", ColumnTransformer([("columns", "passthrough", columns)])),
            ("clf", LogisticRegression(C=1e4, max_iter=2000)),
        ]
    ).fit(holdout[columns], labels)
    assert (evaluate.predict(model, holdout) == labels).all()
    return model_io.dumps(model)


def _commonest() -> bytes:
    """ "Always the commonest training class", as a fitted model."""
    model = Pipeline(
        [
            ("features", ColumnTransformer([("columns", "passthrough", EMBEDDING_COLUMNS)])),
            ("clf", DummyClassifier(strategy="most_frequent")),
        ]
    )
    return model_io.dumps(model.fit(TRAIN[EMBEDDING_COLUMNS], TRAIN["label"]))


# The holdout rows an oracle gets wrong, in a fixed order spread over the classes.
ERROR_ORDER = np.random.default_rng(5).permutation(len(HOLDOUT))


def _labels_with_errors(rows: np.ndarray) -> np.ndarray:
    """HOLDOUT's labels, except ``rows``, which get the next intent's label."""
    labels = HOLDOUT["label"].to_numpy().copy()
    labels[rows] = [INTENTS[(INTENTS.index(label) + 1) % len(INTENTS)] for label in labels[rows]]
    return labels


def _register(tmp_path: Path, registry_uri: str, name: str, model_bytes: bytes, **run: Any) -> dict:
    written = _write_run(tmp_path, name, model_bytes, **run)
    return register.run(config=CONFIG, run_uri=written.uri, registry_uri=registry_uri).xcom


def test_a_worse_model_is_registered_but_not_promoted(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    run = _write_run(tmp_path, "worse", models[4])
    xcom = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom

    assert xcom["promoted"] is False
    assert xcom["decision_reason"].startswith("not promoted: -")
    assert xcom["decision_reason"].endswith("is below 0: worse")
    assert xcom["difference_interval"][1] < 0
    assert xcom["champion_version"] == champion_run["model_version"]
    assert xcom["champion_f1_macro"] == pytest.approx(champion_run["candidate_f1_macro"])
    assert xcom["candidate_f1_macro"] < xcom["champion_f1_macro"]
    assert registry.champion(registry_uri)["version"] == champion_run["model_version"]
    assert storage.exists(RegistryLayout(registry_uri).model(xcom["model_version"]))
    record = storage.read_json(RegistryLayout(registry_uri).run_record(xcom["model_version"]))
    assert record["promoted"] is False and record["champion_before"] == champion_run["model_version"]
    assert record["gate"]["difference"] == pytest.approx(xcom["f1_macro_difference"])


def test_a_better_model_is_promoted_and_remembers_the_previous_champion(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    run = _write_run(tmp_path, "better", models[0])
    result = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri)
    xcom = result.xcom

    assert xcom["promoted"] is True
    assert xcom["champion_version"] == xcom["model_version"]
    assert xcom["difference_interval"][0] > CONFIG.register_.promotion_margin
    assert xcom["f1_macro_difference"] == pytest.approx(xcom["candidate_f1_macro"] - xcom["champion_f1_macro"])
    champion = registry.champion(registry_uri)
    assert champion["version"] == xcom["model_version"]
    assert champion["previous_version"] == champion_run["model_version"]
    assert champion["action"] == "promote" and champion["reason"] == xcom["decision_reason"]
    assert result.summary == f"register: {xcom['model_version']} promoted to champion ({xcom['decision_reason']})"
    assert xcom["decision_reason"].startswith(
        f"promoted: +0.269 macro-F1 over champion {champion_run['model_version']}"
    )


def test_a_candidate_better_by_one_holdout_message_is_refused(tmp_path: Path, registry_uri: str) -> None:
    holdout = _oracle_holdout(
        champion=_labels_with_errors(ERROR_ORDER[:21]), candidate=_labels_with_errors(ERROR_ORDER[:20])
    )
    champion = _register(tmp_path, registry_uri, "champion", _oracle(holdout, "champion"), holdout=holdout)
    xcom = _register(tmp_path, registry_uri, "one-better", _oracle(holdout, "candidate"), holdout=holdout)
    print(xcom["decision_reason"])

    # The lead is real and above the margin the old gate compared it with, yet it is one message.
    assert xcom["f1_macro_difference"] > CONFIG.register_.promotion_margin
    assert xcom["promoted"] is False
    low, high = xcom["difference_interval"]
    assert low <= 0.0 < high
    assert xcom["decision_reason"] == (
        f"not promoted: {xcom['f1_macro_difference']:+.3f} macro-F1 over champion {champion['model_version']} "
        f"on 150 holdout rows, 95% interval [{low:+.3f}, {high:+.3f}] includes 0"
    )
    assert registry.champion(registry_uri)["version"] == champion["model_version"]


def test_a_clearly_better_candidate_is_promoted_and_its_interval_reported(tmp_path: Path, registry_uri: str) -> None:
    holdout = _oracle_holdout(
        champion=_labels_with_errors(ERROR_ORDER[:60]), candidate=_labels_with_errors(ERROR_ORDER[:5])
    )
    champion = _register(tmp_path, registry_uri, "champion", _oracle(holdout, "champion"), holdout=holdout)
    xcom = _register(tmp_path, registry_uri, "much-better", _oracle(holdout, "candidate"), holdout=holdout)
    print(xcom["decision_reason"])

    assert xcom["promoted"] is True
    low, high = xcom["difference_interval"]
    assert CONFIG.register_.promotion_margin < low < xcom["f1_macro_difference"] < high
    assert f"95% interval [{low:+.3f}, {high:+.3f}]" in xcom["decision_reason"]
    assert xcom["compared_rows"] == len(HOLDOUT) and xcom["excluded_rows"] == 0
    assert registry.champion(registry_uri)["previous_version"] == champion["model_version"]


def test_holdout_rows_the_champion_trained_on_are_excluded_and_counted(tmp_path: Path, registry_uri: str) -> None:
    # The champion's training split held every other row of the candidate's holdout.
    holdout = _oracle_holdout(
        champion=_labels_with_errors(ERROR_ORDER[:40]), candidate=_labels_with_errors(ERROR_ORDER[:5])
    )
    seen, unseen = holdout.iloc[::2], holdout.iloc[1::2]
    champion_model = _oracle(holdout, "champion")
    champion_train = pd.concat([TRAIN, seen[TRAIN.columns]])
    champion = _register(tmp_path, registry_uri, "champion", champion_model, holdout=holdout, train=champion_train)
    xcom = _register(tmp_path, registry_uri, "candidate", _oracle(holdout, "candidate"), holdout=holdout)
    print(xcom["decision_reason"])

    assert xcom["excluded_rows"] == len(seen)
    assert xcom["compared_rows"] == len(unseen)
    assert (
        f"{len(seen)} of {len(HOLDOUT)} holdout rows left out: champion {champion['model_version']} trained on them"
        in (xcom["decision_reason"])
    )
    # The champion's score is on the rows it never saw, scored by evaluate's own code.
    assert xcom["champion_f1_macro"] == pytest.approx(_score(model_io.loads(champion_model, source="champion"), unseen))
    record = storage.read_json(RegistryLayout(registry_uri).run_record(xcom["model_version"]))
    assert record["excluded_rows"] == len(seen) and record["gate"]["rows"] == len(unseen)


def test_too_few_rows_the_champion_never_saw_is_no_comparison_and_no_promotion(
    tmp_path: Path, registry_uri: str
) -> None:
    # The champion trained on all but 10 of the candidate's holdout rows, and got those 10 wrong.
    wrong = ERROR_ORDER[:10]
    holdout = _oracle_holdout(champion=_labels_with_errors(wrong), candidate=HOLDOUT["label"].to_numpy())
    champion_train = pd.concat([TRAIN, HOLDOUT.drop(index=wrong)])
    champion_model = _oracle(holdout, "champion")
    champion = _register(tmp_path, registry_uri, "champion", champion_model, holdout=holdout, train=champion_train)
    xcom = _register(tmp_path, registry_uri, "candidate", _oracle(holdout, "candidate"), holdout=holdout)

    assert xcom["promoted"] is False
    assert xcom["excluded_rows"] == len(HOLDOUT) - 10
    assert xcom["decision_reason"].startswith(
        f"not promoted: only 10 of {len(HOLDOUT)} holdout rows were never trained on by champion "
        f"{champion['model_version']} ({len(HOLDOUT) - 10} excluded), fewer than register.min_comparable_rows=30"
    )
    assert registry.champion(registry_uri)["version"] == champion["model_version"]


def test_a_first_model_that_only_predicts_the_commonest_class_is_not_promoted(
    tmp_path: Path, registry_uri: str
) -> None:
    xcom = _register(tmp_path, registry_uri, "commonest", _commonest())
    print(xcom["decision_reason"])

    assert xcom["promoted"] is False
    assert xcom["decision_reason"].startswith(
        "first model: not promoted: +0.000 macro-F1 over the majority-class baseline (always consent_withdrawal)"
    )
    assert xcom["champion_version"] is None and registry.champion(registry_uri) is None


def test_a_first_model_is_promoted_only_with_the_interval_above_the_baseline_margin(
    tmp_path: Path, registry_uri: str, models
) -> None:
    xcom = _register(tmp_path, registry_uri, "first", models[0])
    assert xcom["promoted"] is True
    assert xcom["compared_against"] == "the majority-class baseline (always consent_withdrawal)"
    assert xcom["difference_interval"][0] > CONFIG.register_.baseline_margin


def test_a_tie_is_not_promoted_even_without_a_margin(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    run = _write_run(tmp_path, "tie", models[2])
    xcom = register.run(config=_config(promotion_margin=0.0), run_uri=run.uri, registry_uri=registry_uri).xcom
    assert xcom["candidate_f1_macro"] == pytest.approx(xcom["champion_f1_macro"])
    assert xcom["difference_interval"] == [0.0, 0.0]
    assert xcom["promoted"] is False


def test_promotion_disabled_keeps_the_champion_but_still_reports_the_comparison(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    champion_before = storage.read_bytes(RegistryLayout(registry_uri).champion)
    run = _write_run(tmp_path, "better", models[0])
    result = register.run(config=_config(promote=False), run_uri=run.uri, registry_uri=registry_uri)
    xcom = result.xcom

    assert xcom["promoted"] is False
    assert xcom["decision_reason"].startswith("promotion disabled by register.promote=false; promoted: +")
    assert xcom["champion_f1_macro"] == pytest.approx(champion_run["candidate_f1_macro"])
    assert xcom["champion_version"] == champion_run["model_version"]
    assert storage.read_bytes(RegistryLayout(registry_uri).champion) == champion_before
    assert result.summary.startswith(f"register: {xcom['model_version']} registered, not promoted (promotion disabled")


def test_promotion_disabled_on_an_empty_registry_names_no_champion(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "first", models[0])
    xcom = register.run(config=_config(promote=False), run_uri=run.uri, registry_uri=registry_uri).xcom
    assert xcom["promoted"] is False
    assert "there is no champion yet" in xcom["decision_reason"]
    assert xcom["champion_version"] is None
    assert registry.champion(registry_uri) is None
    assert [r["version"] for r in registry.list_runs(registry_uri)] == [xcom["model_version"]]


def _old_spec_champion(tmp_path: Path, registry_uri: str) -> dict:
    """A champion trained with a handcrafted column the later runs' holdouts no longer have."""
    columns = EMBEDDING_COLUMNS + HANDCRAFTED_COLUMNS
    return _register(
        tmp_path,
        registry_uri,
        "old-spec",
        model_io.dumps(_model(0.0, columns)),
        handcrafted_columns=HANDCRAFTED_COLUMNS,
    )


def test_a_champion_that_cannot_be_scored_here_does_not_block_a_candidate_that_clears_the_floor(
    tmp_path: Path, registry_uri: str, models
) -> None:
    old = _old_spec_champion(tmp_path, registry_uri)
    xcom = _register(tmp_path, registry_uri, "new-spec", models[0], holdout=HOLDOUT.drop(columns=HANDCRAFTED_COLUMNS))

    assert xcom["promoted"] is True
    reason = xcom["decision_reason"]
    assert reason.startswith(f"champion {old['model_version']} cannot be scored on this run's holdout (feature-spec")
    assert "hc_length" in reason and "judged against the first-model floor instead: promoted: +" in reason
    assert xcom["compared_against"].startswith("the majority-class baseline")
    assert xcom["champion_f1_macro"] is None
    assert registry.champion(registry_uri)["previous_version"] == old["model_version"]


def test_a_champion_that_cannot_be_scored_here_is_kept_when_the_candidate_fails_the_floor(
    tmp_path: Path, registry_uri: str
) -> None:
    old = _old_spec_champion(tmp_path, registry_uri)
    xcom = _register(
        tmp_path, registry_uri, "new-spec", _commonest(), holdout=HOLDOUT.drop(columns=HANDCRAFTED_COLUMNS)
    )
    assert xcom["promoted"] is False
    assert "judged against the first-model floor instead: not promoted:" in xcom["decision_reason"]
    assert registry.champion(registry_uri)["version"] == old["model_version"]


def test_a_champion_whose_model_fails_to_score_is_judged_by_the_floor(
    tmp_path: Path, registry_uri: str, models
) -> None:
    old = _register(tmp_path, registry_uri, "old", models[2])
    # Its model file is corrupt: loading it fails, which is a reason to judge on the floor, not to crash.
    storage.write_bytes(RegistryLayout(registry_uri).model(old["model_version"]), b"not a skops file")

    xcom = _register(tmp_path, registry_uri, "new", models[0])
    assert xcom["promoted"] is True
    assert f"champion {old['model_version']} cannot be scored" in xcom["decision_reason"]
    assert registry.champion(registry_uri)["version"] == xcom["model_version"]


# --- reruns and the registry of runs -------------------------------------------------------------------------


def test_a_rerun_reuses_its_version_and_changes_nothing(
    tmp_path: Path, registry_uri: str, models, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _write_run(tmp_path, "first", models[0])
    first = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom
    state_after_first = _registry_state(registry_uri)

    class _Later(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + timedelta(hours=5)

    monkeypatch.setattr(register, "datetime", _Later)
    again = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom

    assert again["model_version"] == first["model_version"]
    assert again["promoted"] is True and again["champion_version"] == first["model_version"]
    assert again["decision_reason"] == "already the champion: a rerun of this run"
    assert len(registry.list_runs(registry_uri)) == 1
    # Every object rewritten with identical bytes, the run record keeping its first decision.
    assert _registry_state(registry_uri) == state_after_first
    assert registry.list_runs(registry_uri)[0]["decision_reason"] == first["decision_reason"]


def test_a_rerun_of_a_run_that_was_not_promoted_keeps_one_record(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    run = _write_run(tmp_path, "worse", models[4])
    first = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom
    state_after_first = _registry_state(registry_uri)
    again = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom
    assert again == first
    assert _registry_state(registry_uri) == state_after_first
    assert len(registry.list_runs(registry_uri)) == 2


def test_the_registry_lists_every_run_with_its_decision(tmp_path: Path, registry_uri: str, models) -> None:
    runs = [_write_run(tmp_path, name, model) for name, model in [("a", models[2]), ("b", models[4]), ("c", models[0])]]
    xcoms = [register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom for run in runs]
    records = {record["version"]: record for record in registry.list_runs(registry_uri)}

    assert set(records) == {xcom["model_version"] for xcom in xcoms}
    assert [records[xcom["model_version"]]["promoted"] for xcom in xcoms] == [True, False, True]
    for run, xcom in zip(runs, xcoms, strict=True):
        record = records[xcom["model_version"]]
        assert record["run_uri"] == run.uri
        assert record["decision_reason"] == xcom["decision_reason"]
        assert record["candidate_f1_macro"] == pytest.approx(xcom["candidate_f1_macro"])
        assert storage.exists(record["model_uri"]) and storage.exists(record["metadata_uri"])
    assert registry.champion(registry_uri)["version"] == xcoms[2]["model_version"]


# --- refusing bad runs ---------------------------------------------------------------------------------------


def test_a_missing_model_is_refused_and_the_registry_is_unchanged(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    before = _registry_state(registry_uri)
    run = _write_run(tmp_path, "no-model", None, f1_macro=0.99)
    with pytest.raises(
        StageError, match=r"register: run .*no-model has no trained model \(.*model\.skops is missing\)"
    ):
        register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri)
    assert _registry_state(registry_uri) == before


def test_a_run_without_a_completed_evaluate_is_refused(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "unevaluated", models[0])
    storage.delete(RunLayout(run.uri).result("evaluate"))
    with pytest.raises(StageError, match="register: run .* has no completed evaluate stage"):
        register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri)
    assert storage.list_uris(registry_uri) == []


def test_metrics_without_macro_f1_are_refused_and_nothing_is_written(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "bad-metrics", models[0])
    storage.write_json(RunLayout(run.uri).metrics, {"accuracy": 0.9})
    with pytest.raises(StageError, match=r"register: .*metrics\.json has no valid 'f1_macro' \(got None\)"):
        register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri)
    assert storage.list_uris(registry_uri) == []


def test_a_missing_ingest_manifest_is_refused(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "no-manifest", models[0])
    storage.delete(RunLayout(run.uri).ingest_manifest)
    with pytest.raises(StageError, match=r"has no ingest manifest .*manifest\.json is missing\); rerun ingest"):
        register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri)
    assert storage.list_uris(registry_uri) == []


# --- concurrent registrations --------------------------------------------------------------------------------


def _assert_one_champion_the_best(registry_uri: str, runs: list[Run], xcoms: list[dict]) -> None:
    records = registry.list_runs(registry_uri)
    assert len(records) == len(runs)
    assert {record["run_uri"] for record in records} == {run.uri for run in runs}
    assert len({xcom["model_version"] for xcom in xcoms}) == len(runs)
    best = max(zip(runs, xcoms, strict=True), key=lambda pair: pair[0].f1_macro)[1]
    champion = registry.champion(registry_uri)
    assert champion is not None and champion["version"] == best["model_version"]
    assert best["promoted"] is True
    assert storage.read_json(RegistryLayout(registry_uri).run_record(best["model_version"]))["promoted"] is True
    for record in records:
        assert storage.exists(record["model_uri"]) and storage.exists(record["metadata_uri"])


def _concurrent_runs(tmp_path: Path, models: list[bytes]) -> list[Run]:
    # The best model is not registered first, so the pointer has to move under contention.
    order = [3, 1, 4, 0, 2]
    return [_write_run(tmp_path, f"concurrent-{i}", models[i]) for i in order]


# The registry of these two lives on a local path, then on gs:// (conftest's bucket_root): each scheme has
# its own compare-and-swap, and on gs:// a write that ignored if_generation_match would lose a run here.
def test_five_concurrent_threads_lose_no_record_and_the_best_is_champion(
    tmp_path: Path, bucket_root: str, models
) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    runs = _concurrent_runs(tmp_path, models)
    config = _config(promotion_margin=0.0)
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        xcoms = list(
            pool.map(lambda run: register.run(config=config, run_uri=run.uri, registry_uri=registry_uri).xcom, runs)
        )
    _assert_one_champion_the_best(registry_uri, runs, xcoms)


def _register_in_subprocess(run_uri: str, registry_uri: str, start: Any, emulator_host: str | None) -> dict:
    if emulator_host is not None:
        # The fork server may predate this test's emulator, so its environment is not ours.
        os.environ["STORAGE_EMULATOR_HOST"] = emulator_host
        storage._gcs_client.cache_clear()
    start.wait()  # all five start deciding together, not one after another as they finish importing
    return register.run(config=_config(promotion_margin=0.0), run_uri=run_uri, registry_uri=registry_uri).xcom


def test_five_concurrent_processes_lose_no_record_and_the_best_is_champion(
    tmp_path: Path, bucket_root: str, models
) -> None:
    registry_uri = storage.join(bucket_root, "registry")
    emulator_host = os.environ["STORAGE_EMULATOR_HOST"] if storage.is_gcs(registry_uri) else None
    runs = _concurrent_runs(tmp_path, models)
    # Separate processes, as separate pods would be. Forking pytest itself is
    # unsafe (BLAS/OpenMP threads), and spawning imports scikit-learn five
    # times; a fork server imports it once, then forks clean children.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "privacy_pipeline.model_io", "privacy_pipeline.stages.evaluate"])
    with context.Manager() as manager:
        start = manager.Barrier(len(runs))
        with context.Pool(processes=len(runs)) as pool:
            pending = [
                pool.apply_async(_register_in_subprocess, (run.uri, registry_uri, start, emulator_host)) for run in runs
            ]
            xcoms = [result.get(timeout=120) for result in pending]
    _assert_one_champion_the_best(registry_uri, runs, xcoms)
