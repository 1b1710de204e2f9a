"""deploy/monitoring/pushgateway.yaml against the Kubernetes schema, and wired to what the stage pods use."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from embedded.monitoring import MONITORING_DIR, PROMETHEUS_CONFIG
from embedded.stack import REPO

MANIFESTS = MONITORING_DIR / "pushgateway.yaml"
PIPELINE_MANIFEST = REPO / "deploy" / "k8s" / "privacy-pipeline.yaml"
KUBERNETES_VERSION = "1.34"


def _objects(path) -> dict[str, dict]:
    return {obj["kind"]: obj for obj in yaml.safe_load_all(path.read_text(encoding="utf-8")) if obj}


@pytest.mark.parametrize("kind", ["Deployment", "Service", "NetworkPolicy"])
def test_core_objects_validate(kind: str) -> None:
    kubernetes_validate.validate(_objects(MANIFESTS)[kind], KUBERNETES_VERSION, strict=True)


def test_stage_pods_push_to_the_service_their_network_policy_lets_them_reach() -> None:
    monitoring, pipeline = _objects(MANIFESTS), _objects(PIPELINE_MANIFEST)
    service, gateway = monitoring["Service"], monitoring["Deployment"]
    port = service["spec"]["ports"][0]["port"]
    address = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"
    assert pipeline["ConfigMap"]["data"]["PIPELINE_PUSHGATEWAY_URL"] == f"http://{address}"
    pushgateway_job = next(
        job
        for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
        if job["job_name"] == "pushgateway"
    )
    assert pushgateway_job["honor_labels"] is True
    assert pushgateway_job["static_configs"][0]["targets"] == [address]
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    allowed = [
        rule
        for rule in pipeline["NetworkPolicy"]["spec"]["egress"]
        for peer in rule["to"]
        if peer.get("podSelector", {}).get("matchLabels", {}).items() <= gateway_labels.items()
        and "podSelector" in peer
    ]
    assert [p["port"] for rule in allowed for p in rule["ports"]] == [port]
    assert monitoring["ServiceMonitor"]["spec"]["endpoints"][0]["honorLabels"] is True
