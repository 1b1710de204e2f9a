"""register: versioning, the promotion gate on this run's holdout, idempotent reruns, concurrent registrations.

Each test builds real runs: tiny scikit-learn pipelines (a ColumnTransformer
selecting feature columns by name, then a LogisticRegression) saved with
skops, scored on a shared synthetic holdout, and the earlier stages' files
and commit markers written by hand.
"""

from __future__ import annotations

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
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from privacy_pipeline import model_io, registry, storage
from privacy_pipeline.config import INTENTS, PipelineConfig
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
    embedding_columns: list[str] = EMBEDDING_COLUMNS,
    handcrafted_columns: list[str] | None = None,
) -> Run:
    """A run as train and evaluate leave it: model, metrics, holdout, feature spec, manifest, commit markers."""
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
    buffer = io.BytesIO()
    holdout.to_parquet(buffer, index=False)
    storage.write_bytes(layout.holdout_split, buffer.getvalue())
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


def test_without_the_env_override_the_image_tag_comes_from_config(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "first", models[0])
    config = _config(image_tag="pipeline:from-config")
    version = register.run(config=config, run_uri=run.uri, registry_uri=registry_uri).xcom["model_version"]
    assert storage.read_json(RegistryLayout(registry_uri).metadata(version))["image_tag"] == "pipeline:from-config"


# --- the promotion gate --------------------------------------------------------------------------------------


def test_a_worse_model_is_registered_but_not_promoted(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    run = _write_run(tmp_path, "worse", models[4])
    xcom = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom

    assert xcom["promoted"] is False
    assert xcom["decision_reason"].startswith("not better: holdout macro-F1")
    assert xcom["champion_version"] == champion_run["model_version"]
    assert xcom["champion_f1_macro"] == pytest.approx(champion_run["candidate_f1_macro"])
    assert xcom["candidate_f1_macro"] < xcom["champion_f1_macro"]
    assert registry.champion(registry_uri)["version"] == champion_run["model_version"]
    assert storage.exists(RegistryLayout(registry_uri).model(xcom["model_version"]))
    record = storage.read_json(RegistryLayout(registry_uri).run_record(xcom["model_version"]))
    assert record["promoted"] is False and record["champion_before"] == champion_run["model_version"]


def test_a_better_model_is_promoted_and_remembers_the_previous_champion(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    run = _write_run(tmp_path, "better", models[0])
    result = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri)
    xcom = result.xcom

    assert xcom["promoted"] is True
    assert xcom["champion_version"] == xcom["model_version"]
    assert xcom["candidate_f1_macro"] > xcom["champion_f1_macro"] + CONFIG.register_.promotion_margin
    champion = registry.champion(registry_uri)
    assert champion["version"] == xcom["model_version"]
    assert champion["previous_version"] == champion_run["model_version"]
    assert result.summary == (
        f"register: {xcom['model_version']} promoted to champion (holdout macro-F1 "
        f"{xcom['candidate_f1_macro']:.3f} vs champion {xcom['champion_f1_macro']:.3f} + margin 0.005)"
    )


@pytest.mark.parametrize(("lead", "promoted"), [(0.004, False), (0.006, True)], ids=["within-margin", "beyond"])
def test_the_candidate_must_beat_the_champion_by_the_margin(
    tmp_path: Path, registry_uri: str, models, champion_run: dict, lead: float, promoted: bool
) -> None:
    # The champion's model again, with metrics claiming a lead of `lead` over its holdout score.
    champion_score = champion_run["candidate_f1_macro"]
    run = _write_run(tmp_path, "close", models[2], f1_macro=champion_score + lead)
    xcom = register.run(config=_config(promotion_margin=0.005), run_uri=run.uri, registry_uri=registry_uri).xcom
    assert xcom["champion_f1_macro"] == pytest.approx(champion_score)
    assert xcom["promoted"] is promoted
    expected_champion = xcom["model_version"] if promoted else champion_run["model_version"]
    assert registry.champion(registry_uri)["version"] == expected_champion


def test_a_tie_is_not_promoted_even_without_a_margin(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    run = _write_run(tmp_path, "tie", models[2])
    xcom = register.run(config=_config(promotion_margin=0.0), run_uri=run.uri, registry_uri=registry_uri).xcom
    assert xcom["candidate_f1_macro"] == pytest.approx(xcom["champion_f1_macro"])
    assert xcom["promoted"] is False


def test_promotion_disabled_keeps_the_champion_but_still_reports_the_comparison(
    tmp_path: Path, registry_uri: str, models, champion_run: dict
) -> None:
    champion_before = storage.read_bytes(RegistryLayout(registry_uri).champion)
    run = _write_run(tmp_path, "better", models[0])
    result = register.run(config=_config(promote=False), run_uri=run.uri, registry_uri=registry_uri)
    xcom = result.xcom

    assert xcom["promoted"] is False
    assert xcom["decision_reason"].startswith("promotion disabled")
    assert xcom["champion_f1_macro"] == pytest.approx(champion_run["candidate_f1_macro"])
    assert xcom["champion_version"] == champion_run["model_version"]
    assert storage.read_bytes(RegistryLayout(registry_uri).champion) == champion_before
    assert result.summary.startswith(f"register: {xcom['model_version']} registered, not promoted (promotion disabled")


def test_promotion_disabled_on_an_empty_registry_names_no_champion(tmp_path: Path, registry_uri: str, models) -> None:
    run = _write_run(tmp_path, "first", models[0])
    xcom = register.run(config=_config(promote=False), run_uri=run.uri, registry_uri=registry_uri).xcom
    assert xcom["promoted"] is False
    assert xcom["champion_version"] is None
    assert registry.champion(registry_uri) is None
    assert [r["version"] for r in registry.list_runs(registry_uri)] == [xcom["model_version"]]


def test_a_champion_that_cannot_be_scored_on_this_holdout_is_kept(tmp_path: Path, registry_uri: str, models) -> None:
    # The champion was trained with a handcrafted column this run's holdout no longer has.
    columns = EMBEDDING_COLUMNS + HANDCRAFTED_COLUMNS
    old = _write_run(
        tmp_path, "old-spec", model_io.dumps(_model(0.0, columns)), handcrafted_columns=HANDCRAFTED_COLUMNS
    )
    old_xcom = register.run(config=CONFIG, run_uri=old.uri, registry_uri=registry_uri).xcom
    champion_before = storage.read_bytes(RegistryLayout(registry_uri).champion)

    run = _write_run(tmp_path, "new-spec", models[0], holdout=HOLDOUT.drop(columns=HANDCRAFTED_COLUMNS))
    xcom = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom

    assert xcom["promoted"] is False
    assert "cannot be scored on this run's holdout" in xcom["decision_reason"]
    assert "feature-spec mismatch" in xcom["decision_reason"] and "hc_length" in xcom["decision_reason"]
    assert xcom["champion_f1_macro"] is None
    assert xcom["champion_version"] == old_xcom["model_version"]
    assert storage.read_bytes(RegistryLayout(registry_uri).champion) == champion_before


def test_a_champion_whose_model_fails_to_score_is_kept(tmp_path: Path, registry_uri: str, models) -> None:
    old = _write_run(tmp_path, "old", models[2])
    old_version = register.run(config=CONFIG, run_uri=old.uri, registry_uri=registry_uri).xcom["model_version"]
    # Its model file is corrupt: loading it fails, which is a reason to keep it, not to crash.
    storage.write_bytes(RegistryLayout(registry_uri).model(old_version), b"not a skops file")

    run = _write_run(tmp_path, "new", models[0])
    xcom = register.run(config=CONFIG, run_uri=run.uri, registry_uri=registry_uri).xcom
    assert xcom["promoted"] is False
    assert f"champion {old_version} cannot be scored" in xcom["decision_reason"]
    assert registry.champion(registry_uri)["version"] == old_version


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
