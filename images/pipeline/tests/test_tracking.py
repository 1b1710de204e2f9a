"""The MLflow mirror against a real MLflow tracking server on 127.0.0.1 (embedded/mlflow_server.py).

Two small runs go through the real split, tune, train and evaluate stages and
are registered into one registry with the server's URI set, as the register
pod has it: both appear as MLflow runs with their metrics, lineage and
artifacts, both models as versions of ``privacy-intent`` stored with skops,
and the ``champion`` alias names the version our registry made champion, also
after a rollback. With the server unreachable or unset, register still
registers and promotes, and its XCom says tracking was skipped and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from modeling_runs import clustered_features, commit, featurized_run, small_config

from embedded.mlflow_server import mlflow_server
from embedded.stack import free_port
from privacy_pipeline import model_io, modeling, registry, storage, tracking
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stages import evaluate, register, rollback, split, train, tune

CONFIG = small_config()


def _evaluated_run(root: Path, name: str, seed: int, separation: float) -> str:
    """A run through evaluate on clustered rows: the further apart the clusters, the better the model."""
    frame, spec = clustered_features(n_rows=400, seed=seed, separation=separation)
    run_uri = featurized_run(root, frame, spec, name=name)
    layout = RunLayout(run_uri)
    storage.write_json(
        layout.ingest_manifest, {"content_sha256": f"{name:0>64}"[-64:], "source": f"raw/{name}/", "rows": len(frame)}
    )
    commit(split.run(config=CONFIG, run_uri=run_uri))
    commit(tune.run(config=CONFIG, run_uri=run_uri))
    shard = storage.read_json(layout.tune_shard(0, 1))
    best = max(shard["results"], key=lambda result: result["mean_score"])
    storage.write_json(layout.best_candidate, {"candidate_id": best["candidate_id"], "params": best["params"]})
    storage.write_json(layout.result("select"), {"stage": "select"})
    commit(train.run(config=CONFIG, run_uri=run_uri))
    commit(evaluate.run(config=CONFIG, run_uri=run_uri))
    return run_uri


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tracked-runs")
    # Other clusters in the stronger run's data, so the weaker champion scores badly on its holdout.
    return {"weaker": _evaluated_run(root, "weaker", 8, 1.2), "stronger": _evaluated_run(root, "stronger", 9, 3.0)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as running:
        yield running.url


@pytest.fixture(scope="module")
def mirrored(server: str, runs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both runs registered, weaker first, with the tracking URI set: their register XComs and the registry."""
    registry_uri = str(tmp_path_factory.mktemp("registry") / "registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(tracking.TRACKING_URI_ENV, server)
        patch.delenv(tracking.AIRFLOW_RUN_ID_ENV, raising=False)
        xcoms = {
            name: register.run(config=CONFIG, run_uri=runs[name], registry_uri=registry_uri).xcom
            for name in ("weaker", "stronger")
        }
        yield {"registry_uri": registry_uri, "xcoms": xcoms, "server": server}


def _client(server: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server, registry_uri=server)


def _model_version(client: Any, registry_version: str) -> Any:
    found = [
        mv
        for mv in client.search_model_versions(f"name = '{tracking.REGISTERED_MODEL}'")
        if mv.tags.get(tracking.VERSION_TAG) == registry_version
    ]
    assert len(found) == 1, f"{registry_version}: {found}"
    return found[0]


def test_both_registrations_are_mlflow_runs_with_metrics_lineage_and_artifacts(mirrored: dict[str, Any]) -> None:
    xcoms = mirrored["xcoms"]
    assert xcoms["weaker"]["promoted"] and xcoms["stronger"]["promoted"], xcoms
    client = _client(mirrored["server"])
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    mlflow_runs = client.search_runs([experiment.experiment_id])
    by_version = {run.data.tags[tracking.VERSION_TAG]: run for run in mlflow_runs}
    assert set(by_version) == {xcoms["weaker"]["model_version"], xcoms["stronger"]["model_version"]}

    for name, xcom in xcoms.items():
        assert xcom["tracking"].startswith("logged: MLflow run"), xcom["tracking"]
        run = by_version[xcom["model_version"]]
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert metrics["holdout.f1_macro"] == pytest.approx(xcom["candidate_f1_macro"])
        assert metrics["holdout.f1_macro.interval_low"] <= metrics["holdout.f1_macro"]
        assert metrics["holdout.f1_macro"] <= metrics["holdout.f1_macro.interval_high"]
        assert metrics["gate.interval_low"] == pytest.approx(xcom["difference_interval"][0])
        assert metrics["tune.candidates"] == len(CONFIG.tune.c_grid)
        assert 0.0 < metrics["tune.best_mean_cv_f1_macro"] <= 1.0
        assert run.data.params["train.clf__C"] in {str(c) for c in CONFIG.tune.c_grid}
        tags = run.data.tags
        assert tags["data_sha256"] == f"{name:0>64}"[-64:]
        assert tags["config_sha256"] == tracking.config_sha256(CONFIG)
        assert tags["image_tag"] == CONFIG.register_.image_tag
        assert tags["airflow_run_id"] == name
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"plots", "report", "tune_candidates.json"} <= artifacts
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/confusion_matrix.png", "plots/roc.png", "plots/pr.png"} <= plots
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "tune_candidates.json")).read_text())
        assert len(table["data"]) == len(CONFIG.tune.c_grid)


def test_the_models_are_pickle_free_versions_of_the_registered_model(mirrored: dict[str, Any], tmp_path: Path) -> None:
    import mlflow.sklearn

    client = _client(mirrored["server"])
    version = mirrored["xcoms"]["stronger"]["model_version"]
    model_version = _model_version(client, version)
    mlflow.set_tracking_uri(mirrored["server"])
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{tracking.REGISTERED_MODEL}/{model_version.version}"))
    flavor = (local / "MLmodel").read_text()
    assert "serialization_format: skops" in flavor
    assert (local / "model.skops").is_file()
    assert not list(local.rglob("*.pkl"))
    # The MLflow copy predicts what the registry's model predicts.
    rows = modeling.read_table(RunLayout(model_version.tags["run_uri"]).holdout_split)
    ours = model_io.load_model(registry.RegistryLayout(mirrored["registry_uri"]).model(version))
    theirs = mlflow.sklearn.load_model(f"models:/{tracking.REGISTERED_MODEL}/{model_version.version}")
    assert list(theirs.predict(rows)) == list(ours.predict(rows))


def test_the_champion_alias_follows_promotion_and_rollback(mirrored: dict[str, Any], monkeypatch) -> None:
    client = _client(mirrored["server"])
    registry_uri = mirrored["registry_uri"]
    weaker, stronger = (mirrored["xcoms"][name]["model_version"] for name in ("weaker", "stronger"))
    assert registry.champion(registry_uri)["version"] == stronger

    def alias_target() -> str:
        return client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION_ALIAS).tags[
            tracking.VERSION_TAG
        ]

    assert alias_target() == stronger
    monkeypatch.setenv(tracking.TRACKING_URI_ENV, mirrored["server"])
    back = rollback.run(config=CONFIG, registry_uri=registry_uri, by="test", reason="alias check").xcom
    assert back["champion_version"] == weaker and back["moved"]
    assert back["tracking"].startswith("alias champion of privacy-intent moved to version")
    assert alias_target() == weaker
    forward = rollback.run(config=CONFIG, registry_uri=registry_uri, to=stronger, by="test").xcom
    assert forward["champion_version"] == stronger
    assert alias_target() == stronger


def test_register_completes_and_says_tracking_skipped_when_the_server_is_down(
    runs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(tracking.TRACKING_URI_ENV, nothing_listens)
    registry_uri = str(tmp_path / "registry")

    xcom = register.run(config=CONFIG, run_uri=runs["weaker"], registry_uri=registry_uri).xcom

    assert xcom["promoted"] is True
    assert registry.champion(registry_uri)["version"] == xcom["model_version"]
    assert xcom["tracking"].startswith(f"skipped: MLflow at {nothing_listens} failed: "), xcom["tracking"]


def test_register_says_tracking_skipped_when_no_server_is_configured(
    runs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(tracking.TRACKING_URI_ENV, raising=False)
    xcom = register.run(config=CONFIG, run_uri=runs["weaker"], registry_uri=str(tmp_path / "registry")).xcom
    assert xcom["promoted"] is True
    assert xcom["tracking"] == "skipped: MLFLOW_TRACKING_URI is not set"
