"""The cluster's pipeline config (deploy/k8s/pipeline-config.yaml) loads, and a bad one stops the first stage.

A bad config fails `ingest` with one line naming the key, exit code 2, before the stage reads any data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from privacy_pipeline import cli, storage
from privacy_pipeline.config import PipelineConfig, config_sha256, load_config

REPO = Path(__file__).resolve().parents[3]
CONFIG_MAP = REPO / "deploy" / "k8s" / "pipeline-config.yaml"


def _cluster_config_text() -> str:
    manifest = yaml.safe_load(CONFIG_MAP.read_text(encoding="utf-8"))
    assert manifest["kind"] == "ConfigMap"
    assert manifest["metadata"]["name"] == "privacy-pipeline-config"
    return manifest["data"]["pipeline.yaml"]


def test_the_clusters_config_loads_and_its_hash_is_the_files(tmp_path: Path) -> None:
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(_cluster_config_text(), encoding="utf-8")

    config = load_config(str(config_file))

    assert config.source_sha256 == hashlib.sha256(config_file.read_bytes()).hexdigest()
    # The file sets main keys at their defaults: mounting it changes nothing until an operator edits it.
    assert config_sha256(config) == config_sha256(PipelineConfig())


def test_an_override_still_wins_over_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(_cluster_config_text(), encoding="utf-8")

    config = load_config(str(config_file), ["validate.max_bad_row_fraction=0.1"])

    assert config.validate_.max_bad_row_fraction == 0.1
    assert config.source_sha256 == hashlib.sha256(config_file.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "change,key",
    [
        ({"validate": {"max_bad_rows": 0.1}}, "validate.max_bad_rows"),  # unknown key
        ({"tune": {"cv_folds": "five"}}, "tune.cv_folds"),  # wrong type
        ({"validate": {"max_bad_row_fraction": 1.5}}, "validate.max_bad_row_fraction"),  # out of range
    ],
    ids=["unknown-key", "wrong-type", "out-of-range"],
)
def test_a_bad_config_fails_the_first_stage_with_one_line_naming_the_key_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, change: dict, key: str
) -> None:
    tree = yaml.safe_load(_cluster_config_text())
    for section, values in change.items():
        tree.setdefault(section, {}).update(values)
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(tree), encoding="utf-8")
    source = tmp_path / "raw" / "part-0000.csv"
    source.parent.mkdir()
    source.write_text("id,text,label\n1,delete my data,data_deletion\n", encoding="utf-8")
    reads: list[str] = []
    for name in ("exists", "list_uris", "read_bytes"):
        original = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda uri, *a, _f=original, **k: reads.append(uri) or _f(uri, *a, **k))
    run = tmp_path / "runs" / "r1"

    code = cli.main(["--config", str(config_file), "ingest", "--source", str(source), "--run", str(run)])

    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == cli.EXIT_STAGE_ERROR
    assert len(err_lines) == 1
    assert key in err_lines[0] and str(config_file) in err_lines[0]
    assert reads == []
    assert not run.exists()
