"""deploy: the champion's InferenceService, as a canary after a promotion, in the mode where a canary takes traffic.

The rendered manifest against KServe's CRD schema is checked on the Airflow side
(tests/images/test_rendered_inferenceservice.py, where the schema helpers live).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rollout_runs import CANDIDATE, CHAMPION, promoted, registered

from privacy_pipeline import cli, storage
from privacy_pipeline.config import load_config
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import deploy

CONFIG = load_config(None, ["rollout.canary_traffic_percent=15"])


@pytest.fixture
def registry_uri(tmp_path: Path) -> str:
    uri = str(tmp_path / "registry")
    registered(uri, CHAMPION)
    registered(uri, CANDIDATE)
    return uri


def _predictor(manifest: dict) -> dict:
    return manifest["spec"]["predictor"]


def test_a_promotion_rolls_out_as_a_canary_beside_the_previous_version(registry_uri: str, tmp_path: Path) -> None:
    promoted(registry_uri, str(tmp_path / "first"), CHAMPION)
    run_uri = str(tmp_path / "run")
    promoted(registry_uri, run_uri, CANDIDATE)

    result = deploy.run(config=CONFIG, run_uri=run_uri, registry_uri=registry_uri)

    xcom = result.xcom
    assert xcom["deployed"] is True and xcom["applied"] is False
    assert (xcom["model_version"], xcom["previous_version"], xcom["canary_traffic_percent"]) == (
        CANDIDATE,
        CHAMPION,
        15,
    )
    written = yaml.safe_load(storage.read_bytes(xcom["manifest_uri"]))
    assert written == xcom["manifest"]
    assert xcom["manifest_uri"] == str(tmp_path / "run" / "deploy" / "inferenceservice.yaml")
    predictor = _predictor(written)
    assert predictor["canaryTrafficPercent"] == 15
    assert predictor["model"]["args"] == ["--version", CANDIDATE]
    assert predictor["labels"][deploy.VERSION_POD_LABEL] == CANDIDATE
    assert written["metadata"]["annotations"][deploy.DEPLOYMENT_MODE_ANNOTATION] in deploy.CANARY_MODES
    assert "15% of traffic as a canary" in result.summary and CHAMPION in result.summary


def test_a_run_register_did_not_promote_rolls_out_nothing_and_says_why(registry_uri: str, tmp_path: Path) -> None:
    promoted(registry_uri, str(tmp_path / "first"), CHAMPION)
    run_uri = str(tmp_path / "run")
    promoted(registry_uri, run_uri, CANDIDATE, promote=False)

    result = deploy.run(config=CONFIG, run_uri=run_uri, registry_uri=registry_uri)

    assert result.xcom["deployed"] is False
    assert result.xcom["reason"].startswith(f"register did not promote {CANDIDATE}: not promoted: +0.004")
    assert not storage.exists(str(tmp_path / "run" / "deploy" / "inferenceservice.yaml"))


def test_a_run_whose_version_was_replaced_since_rolls_out_nothing(registry_uri: str, tmp_path: Path) -> None:
    run_uri = str(tmp_path / "run")
    promoted(registry_uri, run_uri, CHAMPION)
    promoted(registry_uri, str(tmp_path / "later"), CANDIDATE)

    result = deploy.run(config=CONFIG, run_uri=run_uri, registry_uri=registry_uri)

    assert result.xcom["deployed"] is False
    assert f"the champion is now {CANDIDATE}" in result.xcom["reason"]


def test_the_first_champion_takes_all_traffic(registry_uri: str, tmp_path: Path) -> None:
    run_uri = str(tmp_path / "run")
    promoted(registry_uri, run_uri, CHAMPION)

    result = deploy.run(config=CONFIG, run_uri=run_uri, registry_uri=registry_uri)

    assert result.xcom["deployed"] is True and result.xcom["canary_traffic_percent"] is None
    assert "canaryTrafficPercent" not in _predictor(result.xcom["manifest"])


def test_all_traffic_rolls_out_the_champion_without_a_canary_and_needs_no_register(
    registry_uri: str, tmp_path: Path
) -> None:
    promoted(registry_uri, str(tmp_path / "first"), CHAMPION)
    promoted(registry_uri, str(tmp_path / "second"), CANDIDATE)
    run_uri = str(tmp_path / "rollback-run")

    result = deploy.run(config=CONFIG, run_uri=run_uri, registry_uri=registry_uri, all_traffic=True)

    predictor = _predictor(result.xcom["manifest"])
    assert "canaryTrafficPercent" not in predictor and predictor["model"]["args"] == ["--version", CANDIDATE]


def test_an_empty_registry_rolls_out_nothing(tmp_path: Path) -> None:
    result = deploy.run(config=CONFIG, run_uri=str(tmp_path / "run"), registry_uri=str(tmp_path / "empty"))

    assert result.xcom["deployed"] is False and "no champion yet" in result.xcom["reason"]


@pytest.mark.parametrize("mode", ["Standard", "RawDeployment", None])
def test_a_template_in_a_mode_that_ignores_the_canary_is_refused(monkeypatch: pytest.MonkeyPatch, mode) -> None:
    template = deploy.template_text()
    annotation = f"{deploy.DEPLOYMENT_MODE_ANNOTATION}: Knative"
    assert annotation in template
    replaced = template.replace(annotation, f"{deploy.DEPLOYMENT_MODE_ANNOTATION}: {mode}" if mode else "")
    monkeypatch.setattr(deploy, "template_text", lambda: replaced)

    with pytest.raises(StageError, match="a canary takes traffic only in Knative or Serverless mode"):
        deploy.render_inference_service(CANDIDATE, 10)


def test_a_version_that_is_not_a_version_name_is_refused() -> None:
    with pytest.raises(StageError, match="not a registered model version name"):
        deploy.render_inference_service("../champion", 10)


def test_the_apply_is_a_server_side_apply_of_the_inference_service() -> None:
    manifest = deploy.render_inference_service(CANDIDATE, 10)

    request = deploy.apply_request(manifest, "https://10.0.0.1:443", "token-123")

    assert request.get_method() == "PATCH"
    assert request.full_url == (
        "https://10.0.0.1:443/apis/serving.kserve.io/v1beta1/namespaces/privacy-pipeline/inferenceservices/"
        "privacy-intent?fieldManager=privacy-pipeline&force=true"
    )
    assert request.get_header("Content-type") == "application/apply-patch+yaml"
    assert request.get_header("Authorization") == "Bearer token-123"
    assert json.loads(request.data) == manifest


def test_applying_outside_a_pod_is_a_clear_error(registry_uri: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    run_uri = str(tmp_path / "run")
    promoted(registry_uri, run_uri, CHAMPION)
    applying = load_config(None, ["rollout.kubernetes_apply=true"])

    with pytest.raises(StageError, match="rollout.kubernetes_apply is on but this is not a pod"):
        deploy.run(config=applying, run_uri=run_uri, registry_uri=registry_uri)


def test_the_cli_writes_the_xcom_and_the_commit_marker(registry_uri: str, tmp_path: Path, monkeypatch, capsys) -> None:
    promoted(registry_uri, str(tmp_path / "first"), CHAMPION)
    run_uri = str(tmp_path / "run")
    promoted(registry_uri, run_uri, CANDIDATE)
    xcom_path = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("XCOM_RETURN_PATH", str(xcom_path))

    code = cli.main(
        ["--set", "rollout.canary_traffic_percent=20", "deploy", "--run", run_uri, "--registry", registry_uri]
    )

    assert code == 0
    xcom = json.loads(xcom_path.read_text(encoding="utf-8"))
    assert xcom["stage"] == "deploy" and xcom["canary_traffic_percent"] == 20
    assert storage.read_json(str(tmp_path / "run" / "deploy" / "_result.json")) == xcom
    assert capsys.readouterr().out.startswith(f"deploy: {CANDIDATE} takes 20% of traffic as a canary")
