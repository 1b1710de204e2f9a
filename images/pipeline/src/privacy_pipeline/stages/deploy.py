"""deploy: roll the registry's champion out as a KServe InferenceService, as a canary after a promotion.

After ``register`` promotes, the champion's InferenceService is rendered from
the template beside this module (a copy of ``deploy/k8s/kserve/inferenceservice.yaml``,
shipped in the package because the image build sees only ``images/pipeline``)
with ``MODEL_VERSION`` set to the champion and the predictor's
``canaryTrafficPercent`` set to ``rollout.canary_traffic_percent``: the new
version takes that share of traffic and the version that last took all of it
keeps the rest, until ``canary_check`` promotes or rolls it back.

That split exists only in KServe's Knative mode (``Serverless`` in older
releases), where each rollout is a Knative revision; in Standard mode
(formerly RawDeployment) ``canaryTrafficPercent`` is silently ignored. So the
rendered manifest always states the mode (``serving.kserve.io/deploymentMode``)
and a template in any other mode is refused.

Each predictor pod is labelled with the version it serves
(``privacy-intent/model-version``), so the serving metrics of the canary and
of the previous version can be told apart in Prometheus.

``--all-traffic`` renders the champion with no canary: after a rollback the
restored champion takes all traffic at once. The manifest is written to the
run (``<run>/deploy/inferenceservice.yaml``) and returned in the XCom; with
``rollout.kubernetes_apply`` it is also applied by server-side apply with the
pod's in-cluster credentials. The embedded default has no cluster: there the
manifest is only written, and ``canary_check`` runs both versions as local servers.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import string
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from privacy_pipeline import registry, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.run_layout import RunLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "deploy"
TEMPLATE_FILE = "inferenceservice.yaml"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe's names for the mode in which each rollout is a Knative revision and canaryTrafficPercent splits traffic
# ("Serverless" is the older one). Standard / RawDeployment ignores the field.
CANARY_MODES = frozenset({"Knative", "Serverless"})
VERSION_POD_LABEL = "privacy-intent/model-version"
MANIFEST_NAME = "inferenceservice.yaml"
FIELD_MANAGER = "privacy-pipeline"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def template_text() -> str:
    with resources.files(__package__).joinpath(TEMPLATE_FILE).open(encoding="utf-8") as handle:
        return handle.read()


def render_inference_service(version: str, canary_traffic_percent: int | None) -> dict[str, Any]:
    """The InferenceService serving ``version``; with a percent, as a canary taking that share of traffic."""
    if not registry.VERSION_PATTERN.fullmatch(version):
        raise StageError(f"{STAGE}: {version!r} is not a registered model version name")
    manifest = yaml.safe_load(string.Template(template_text()).safe_substitute(MODEL_VERSION=version))
    mode = (manifest["metadata"].get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    if mode not in CANARY_MODES:
        raise StageError(
            f"{STAGE}: the InferenceService template's {DEPLOYMENT_MODE_ANNOTATION} is {mode!r}; a canary takes "
            f"traffic only in {' or '.join(sorted(CANARY_MODES))} mode (Standard/RawDeployment ignores "
            "canaryTrafficPercent)"
        )
    predictor = manifest["spec"]["predictor"]
    predictor["labels"] = {**predictor.get("labels", {}), VERSION_POD_LABEL: version}
    if canary_traffic_percent is None:
        # KServe promotes the latest revision to all traffic when the field is absent.
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = canary_traffic_percent
    return dict(manifest)


def manifest_yaml(manifest: dict[str, Any]) -> str:
    return yaml.safe_dump(manifest, sort_keys=False)


def apply_request(manifest: dict[str, Any], api_server: str, token: str) -> urllib.request.Request:
    """A server-side apply of ``manifest``: created if absent, our fields replaced, a field we drop removed."""
    metadata = manifest["metadata"]
    group_version = manifest["apiVersion"]
    path = (
        f"/apis/{group_version}/namespaces/{urllib.parse.quote(metadata['namespace'])}"
        f"/inferenceservices/{urllib.parse.quote(metadata['name'])}"
    )
    query = urllib.parse.urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
    return urllib.request.Request(
        f"{api_server.rstrip('/')}{path}?{query}",
        # JSON is YAML: the apply-patch content type takes either.
        data=json.dumps(manifest).encode("utf-8"),
        method="PATCH",
        headers={
            "Content-Type": "application/apply-patch+yaml",
            "Accept": "application/json",
            "Authorization": f"Bearer {token}",
        },
    )


def apply_in_cluster(manifest: dict[str, Any], stage: str = STAGE) -> None:
    """Apply with the pod's service account (its token mounted, a Role that may patch inferenceservices)."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token_file = SERVICE_ACCOUNT_DIR / "token"
    if not host or not token_file.is_file():
        raise StageError(
            f"{stage}: rollout.kubernetes_apply is on but this is not a pod with a service account token "
            f"(KUBERNETES_SERVICE_HOST unset or {token_file} missing); turn it off or mount the token"
        )
    request = apply_request(manifest, f"https://{host}:{port}", token_file.read_text(encoding="utf-8").strip())
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            response.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", errors="replace")[:300]
        raise StageError(
            f"{stage}: the Kubernetes API refused the InferenceService {manifest['metadata']['name']}: "
            f"HTTP {error.code} {detail}"
        ) from error
    except urllib.error.URLError as error:
        raise StageError(f"{stage}: could not reach the Kubernetes API at {host}:{port}: {error.reason}") from error


def roll_out(manifest: dict[str, Any], manifest_uri: str, config: PipelineConfig, stage: str = STAGE) -> dict[str, Any]:
    """Write the manifest to the run and, when configured, apply it; what happened, for the XCom."""
    storage.write_text(manifest_uri, manifest_yaml(manifest))
    if config.rollout.kubernetes_apply:
        apply_in_cluster(manifest, stage)
    return {
        "manifest_uri": manifest_uri,
        "manifest": manifest,
        "applied": config.rollout.kubernetes_apply,
        "applied_at": registry.timestamp(datetime.now(UTC)),
        "deployment_mode": manifest["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION],
    }


def _not_deployed(layout: RunLayout, reason: str, **fields: Any) -> StageResult:
    log.info("%s: nothing rolled out: %s", STAGE, reason)
    return StageResult(
        stage=STAGE,
        summary=f"{STAGE}: nothing rolled out ({reason})",
        xcom={"deployed": False, "reason": reason, **fields},
        commit_uri=layout.result(STAGE),
    )


def run(*, config: PipelineConfig, run_uri: str, registry_uri: str, all_traffic: bool = False) -> StageResult:
    layout = RunLayout(run_uri)
    champion = registry.champion(registry_uri)
    if champion is None:
        return _not_deployed(layout, f"{registry_uri} has no champion yet", model_version=None)
    version = str(champion["version"])
    previous = champion.get("previous_version")
    canary_percent: int | None = None
    if all_traffic:
        reason = f"champion {version} takes all traffic ({champion.get('action', 'promote')} by {champion.get('by')})"
    else:
        registered = layout.require("register", needed_by=STAGE)
        candidate = registered.get("model_version")
        if not registered.get("promoted"):
            return _not_deployed(
                layout,
                f"register did not promote {candidate}: {registered.get('decision_reason')}",
                model_version=candidate,
            )
        if candidate != version:
            return _not_deployed(
                layout,
                f"this run promoted {candidate} but the champion is now {version}; its own rollout handles it",
                model_version=candidate,
            )
        if previous:
            canary_percent = config.rollout.canary_traffic_percent
            reason = f"{version} takes {canary_percent}% of traffic as a canary, {previous} keeps the rest"
        else:
            reason = f"{version} is the first champion: no earlier version to split traffic with, all traffic"
    manifest = render_inference_service(version, canary_percent)
    rolled = roll_out(manifest, layout.path(STAGE, MANIFEST_NAME), config)
    where = "applied" if rolled["applied"] else "rendered (rollout.kubernetes_apply is off: no cluster)"
    summary = f"{STAGE}: {reason}; {where} at {rolled['manifest_uri']}"
    log.info("%s", summary)
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "deployed": True,
            "reason": reason,
            "model_version": version,
            "previous_version": previous,
            "canary_traffic_percent": canary_percent,
            **rolled,
        },
        commit_uri=layout.result(STAGE),
    )
