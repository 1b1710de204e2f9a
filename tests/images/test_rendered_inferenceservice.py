"""What the deploy stage renders: KServe InferenceServices that the CRD accepts and in which a canary takes traffic.

The stage runs as its pod would (``privacy-pipeline deploy`` from the stage
package's venv) on a registry whose champion was just promoted over another
version; the manifests it writes are checked with test_kserve_manifests'
schema helpers (the CRD's schema, plus every field it does not know).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_kserve_manifests import CANARY_MODES, INFERENCE_SERVICE, SCHEMAS, schema_problems

from embedded.stack import PIPELINE_BIN, REPO

PACKAGED_TEMPLATE = REPO / "images/pipeline/src/privacy_pipeline/stages/inferenceservice.yaml"
PREVIOUS, CANARY = "20261120T020000Z-aaaaaaaa", "20261121T020000Z-bbbbbbbb"

pytestmark = pytest.mark.skipif(
    not SCHEMAS.is_dir() and not os.environ.get("CI"),
    reason=f"KServe's CRD schemas are not at {SCHEMAS} (CI always has them)",
)


def _deploy(tmp_path: Path, *extra: str) -> dict[str, Any]:
    registry_uri, run_uri = tmp_path / "registry", tmp_path / "run"
    # The registry after register promoted CANARY over PREVIOUS, and register's commit marker saying so.
    (registry_uri).mkdir(exist_ok=True)
    (registry_uri / "champion.json").write_text(
        json.dumps({"version": CANARY, "model_uri": "unused", "previous_version": PREVIOUS, "action": "promote"}),
        encoding="utf-8",
    )
    (run_uri / "register").mkdir(parents=True, exist_ok=True)
    (run_uri / "register" / "_result.json").write_text(
        json.dumps({"stage": "register", "model_version": CANARY, "promoted": True}), encoding="utf-8"
    )
    xcom = tmp_path / "return.json"
    subprocess.run(
        [
            str(PIPELINE_BIN / "privacy-pipeline"),
            "deploy",
            "--run",
            str(run_uri),
            "--registry",
            str(registry_uri),
            *extra,
        ],
        check=True,
        capture_output=True,
        env={"PATH": str(PIPELINE_BIN), "XCOM_RETURN_PATH": str(xcom)},
    )
    result = json.loads(xcom.read_text(encoding="utf-8"))
    return yaml.safe_load(Path(result["manifest_uri"]).read_text(encoding="utf-8"))


def test_the_packaged_template_is_the_deploy_manifest() -> None:
    # The image build sees only images/pipeline, so the stage ships a copy; it must not drift.
    assert PACKAGED_TEMPLATE.read_text(encoding="utf-8") == INFERENCE_SERVICE.read_text(encoding="utf-8"), (
        f"copy {INFERENCE_SERVICE.relative_to(REPO)} to {PACKAGED_TEMPLATE.relative_to(REPO)}"
    )


def test_the_canary_is_a_valid_inference_service_in_which_the_canary_takes_traffic(tmp_path: Path) -> None:
    manifest = _deploy(tmp_path)

    assert schema_problems(manifest) == []
    # Knative mode: each rollout is a revision and canaryTrafficPercent splits traffic with the last full one.
    assert manifest["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in CANARY_MODES
    predictor = manifest["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["args"] == ["--version", CANARY]
    assert predictor["labels"] == {"privacy-intent/model-version": CANARY}


def test_the_full_rollout_is_valid_and_gives_the_champion_all_traffic(tmp_path: Path) -> None:
    manifest = _deploy(tmp_path, "--all-traffic")

    assert schema_problems(manifest) == []
    assert "canaryTrafficPercent" not in manifest["spec"]["predictor"]


def test_a_misspelt_canary_field_would_be_caught(tmp_path: Path) -> None:
    manifest = _deploy(tmp_path)
    manifest["spec"]["predictor"]["canaryTrafficPercentage"] = manifest["spec"]["predictor"].pop("canaryTrafficPercent")

    assert schema_problems(manifest) == ["spec.predictor.canaryTrafficPercentage: not a field of InferenceService"]
