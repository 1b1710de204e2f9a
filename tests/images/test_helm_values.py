"""helm-values.yaml and deploy/k8s agree with the code on every name they share, and explain every choice."""

from __future__ import annotations

import copy
import json
import re
import string
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from embedded.stack import REPO
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.stage_pod import stage_pod_kwargs

VALUES = REPO / "helm-values.yaml"
MANIFEST = REPO / "deploy" / "k8s" / "privacy-pipeline.yaml"
AIRFLOW_DOCKERFILE = REPO / "images" / "airflow" / "Dockerfile"
# What the README's envsubst fills in; any value will do for checking names.
PLACEHOLDERS = {
    "AWS_ACCOUNT_ID": "123456789012",
    "AWS_REGION": "eu-west-1",
    "GCP_PROJECT": "demo",
    "GIT_REPO": "git@x:y",
}
# The chart's service accounts that run KubernetesPodOperator (task pods and triggerer).
AIRFLOW_NAMESPACE = "airflow"
# Who reads the bucket for sensors and writes task logs, and the web-facing side (README, Identities).
SCHEDULER_SIDE = ("scheduler", "triggerer", "workers")
WEB_SIDE = ("apiServer",)
GCS_COMPONENTS = (*SCHEDULER_SIDE, *WEB_SIDE)
# private.googleapis.com and restricted.googleapis.com: the only HTTPS destinations of a stage pod.
GOOGLE_API_RANGES = {"199.36.153.8/30", "199.36.153.4/30"}
KUBERNETES_VERSION = "1.34"


def rendered(path: Path) -> str:
    return string.Template(path.read_text(encoding="utf-8")).safe_substitute(PLACEHOLDERS)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(rendered(VALUES))


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(rendered(MANIFEST)) if doc}


def airflow_env(values: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in values["env"]}


def connection_secret(values: dict[str, Any], component: str, env_name: str) -> str | None:
    """The Secret a component's own ``env`` takes ``env_name`` from, if it does."""
    for item in values[component].get("env", []):
        if item["name"] == env_name and "secretKeyRef" in item.get("valueFrom", {}):
            return item["valueFrom"]["secretKeyRef"]["name"]
    return None


def irsa_role(service_account: dict[str, Any]) -> str | None:
    return (service_account.get("annotations") or {}).get("eks.amazonaws.com/role-arn")


def identity_problems(values: dict[str, Any], manifests: dict[str, dict[str, Any]], gcp_conn_id: str) -> list[str]:
    """Stage pods, the scheduler side and the web side each have their own identity; the DAG processor has none."""
    connection_env = f"AIRFLOW_CONN_{gcp_conn_id.upper()}"
    identity = {
        component: (
            values[component]["serviceAccount"]["name"],
            irsa_role(values[component]["serviceAccount"]),
            connection_secret(values, component, connection_env),
        )
        for component in (*SCHEDULER_SIDE, *WEB_SIDE, "dagProcessor")
    }
    problems = []
    # A chart-wide Secret would hand every component, the web side included, the same connection.
    if any(item.get("envName") == connection_env for item in values.get("secret", [])):
        problems.append(f"{connection_env} is set chart-wide (secret:), for every component alike")
    scheduler_side = {identity[c][1:] for c in SCHEDULER_SIDE}
    if len(scheduler_side) != 1:
        problems.append(f"the scheduler side {SCHEDULER_SIDE} does not share one role and connection: {scheduler_side}")
    for web in WEB_SIDE:
        for part, index in (("service account", 0), ("IRSA role", 1), ("GCS connection Secret", 2)):
            shared = [c for c in SCHEDULER_SIDE if identity[c][index] == identity[web][index]]
            if shared:
                problems.append(f"{web} shares its {part} {identity[web][index]!r} with {shared}")
    if identity["dagProcessor"][1:] != (None, None):
        problems.append(f"dagProcessor has a cloud identity {identity['dagProcessor'][1:]}; it parses DAG files only")
    runner_role = irsa_role(manifests["ServiceAccount"]["metadata"])
    others = {c for c, (_, role, _) in identity.items() if role == runner_role}
    if others:
        problems.append(f"the stage pods' role {runner_role} is also {sorted(others)}'s")
    return problems


def shared_name_mismatches(
    values: dict[str, Any], manifests: dict[str, dict[str, Any]], settings: PipelineSettings
) -> list[str]:
    """Every name the Helm values and the namespace manifest share with the DAGs and plugins, checked."""
    env = airflow_env(values)
    problems = []
    unknown = [
        name for name in env if name.startswith("PIPELINE_") and name[9:].lower() not in type(settings).model_fields
    ]
    problems += [f"{name} is not a PipelineSettings field" for name in unknown]
    expected = {
        "PIPELINE_NAMESPACE": settings.namespace,
        "PIPELINE_SERVICE_ACCOUNT": settings.service_account,
        "PIPELINE_BUCKET": settings.bucket,
        "PIPELINE_ENV_CONFIGMAP": settings.env_configmap,
        "PIPELINE_GCP_CREDENTIALS_SECRET": settings.gcp_credentials_secret,
        "PIPELINE_POD_RUNTIME": "kubernetes",
    }
    problems += [f"{k}={env.get(k)!r}, the code expects {v!r}" for k, v in expected.items() if env.get(k) != v]
    image_name = env.get("PIPELINE_IMAGE", "").rsplit("/", 1)[-1]
    if image_name != settings.image:
        problems += [f"PIPELINE_IMAGE ends in {image_name!r}, the code's image is {settings.image!r}"]
    connection_env = f"AIRFLOW_CONN_{settings.gcp_conn_id.upper()}"
    for component in GCS_COMPONENTS:
        if connection_secret(values, component, connection_env) is None:
            problems += [f"{component} has no {connection_env} from a Secret for connection {settings.gcp_conn_id!r}"]
    if f"AIRFLOW_CONN_{settings.kubernetes_conn_id.upper()}" not in env:
        problems += [f"no connection {settings.kubernetes_conn_id!r} for KubernetesPodOperator"]
    logging = values["config"]["logging"]
    if logging["remote_log_conn_id"] != settings.gcp_conn_id:
        problems += [f"remote logs use connection {logging['remote_log_conn_id']!r}, not {settings.gcp_conn_id!r}"]
    if not logging["remote_base_log_folder"].startswith(settings.gcs_uri() + "/"):
        problems += [f"remote logs go to {logging['remote_base_log_folder']}, outside bucket {settings.bucket}"]
    named = {
        "Namespace": manifests["Namespace"]["metadata"]["name"],
        "ServiceAccount": manifests["ServiceAccount"]["metadata"]["name"],
        "ConfigMap": manifests["ConfigMap"]["metadata"]["name"],
    }
    for kind, name in named.items():
        code = {"Namespace": settings.namespace, "ServiceAccount": settings.service_account}.get(
            kind, settings.env_configmap
        )
        if name != code:
            problems += [f"deploy/k8s {kind} is {name!r}, the code expects {code!r}"]
    for kind in ("ServiceAccount", "ConfigMap", "Role", "RoleBinding", "NetworkPolicy"):
        if manifests[kind]["metadata"]["namespace"] != settings.namespace:
            problems += [f"deploy/k8s {kind} is not in namespace {settings.namespace!r}"]
    bound = {(s["name"], s["namespace"]) for s in manifests["RoleBinding"]["subjects"]}
    for component in ("workers", "triggerer"):
        account = (values[component]["serviceAccount"]["name"], AIRFLOW_NAMESPACE)
        if account not in bound:
            problems += [f"{component} service account {account} may not launch stage pods (RoleBinding)"]
    return problems


def test_shared_names_match_the_settings_defaults(values, manifests) -> None:
    assert shared_name_mismatches(values, manifests, PipelineSettings()) == []


def test_a_renamed_namespace_or_service_account_is_caught(values, manifests) -> None:
    settings = PipelineSettings(namespace="ml-pipelines", service_account="runner")

    problems = shared_name_mismatches(values, manifests, settings)

    assert "PIPELINE_NAMESPACE='privacy-pipeline', the code expects 'ml-pipelines'" in problems
    assert "deploy/k8s ServiceAccount is 'privacy-pipeline-runner', the code expects 'runner'" in problems


def test_the_pipeline_env_builds_valid_settings(values, monkeypatch) -> None:
    for name, value in airflow_env(values).items():
        if name.startswith("PIPELINE_"):
            monkeypatch.setenv(name, value)

    settings = PipelineSettings.from_environ()

    assert settings.pod_runtime == "kubernetes"
    assert settings.image.endswith("/privacy-intent-pipeline:0.1.0")


def test_the_role_lets_airflow_run_stage_pods_and_nothing_else(manifests) -> None:
    granted = {
        (resource, verb)
        for rule in manifests["Role"]["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {
        ("pods", "create"), ("pods", "watch"), ("pods", "delete"), ("pods", "get"),
        ("pods/log", "get"), ("pods/exec", "create"), ("events", "list"),
    }  # fmt: skip
    assert needed <= granted
    assert not {resource for resource, _ in granted} - {"pods", "pods/log", "pods/exec", "events", "configmaps"}
    assert "*" not in json.dumps(manifests["Role"]["rules"])
    # The config watch reads the pipeline config's ConfigMap and no other.
    config_rules = [rule for rule in manifests["Role"]["rules"] if "configmaps" in rule["resources"]]
    assert config_rules == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [PipelineSettings().pipeline_configmap],
            "verbs": ["get"],
        }
    ]


def test_the_network_policy_selects_the_stage_pods(manifests) -> None:
    selector = manifests["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]
    labels = stage_pod_kwargs("ingest", PipelineSettings())["labels"]
    assert selector.items() <= labels.items()


def test_the_manifests_are_valid_kubernetes(manifests) -> None:
    for kind, manifest in manifests.items():
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"deploy/k8s {kind}: {error}")


def test_every_service_account_but_the_dag_processors_has_an_irsa_role(values, manifests) -> None:
    for component in GCS_COMPONENTS:
        role = irsa_role(values[component]["serviceAccount"])
        assert role is not None and role.startswith("arn:aws:iam::"), component
    assert irsa_role(values["dagProcessor"]["serviceAccount"]) is None
    runner = irsa_role(manifests["ServiceAccount"]["metadata"])
    assert runner is not None and runner.startswith("arn:aws:iam::")


def test_stage_pods_scheduler_side_and_web_side_have_separate_identities(values, manifests) -> None:
    assert identity_problems(values, manifests, PipelineSettings().gcp_conn_id) == []


def test_a_web_side_sharing_the_scheduler_sides_identity_is_caught(values, manifests) -> None:
    shared = copy.deepcopy(values)
    shared["apiServer"]["serviceAccount"] = shared["scheduler"]["serviceAccount"]
    shared["apiServer"]["env"] = shared["scheduler"]["env"]
    shared["dagProcessor"]["serviceAccount"] = shared["workers"]["serviceAccount"]
    shared["secret"] = [{"envName": "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", "secretName": "s", "secretKey": "k"}]

    problems = identity_problems(shared, manifests, "google_cloud_default")

    assert problems[0] == "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT is set chart-wide (secret:), for every component alike"
    assert "apiServer shares its service account 'airflow-scheduler' with ['scheduler']" in problems
    assert "apiServer shares its GCS connection Secret 'privacy-pipeline-airflow-connections' with" in " ".join(
        problems
    )
    assert any(problem.startswith("dagProcessor has a cloud identity") for problem in problems)


def https_destinations(policy: dict[str, Any]) -> list[str]:
    """Where a NetworkPolicy lets TCP 443 go: CIDRs, or "anywhere" for a rule without ``to``."""
    found = []
    for rule in policy["spec"].get("egress", []):
        ports = rule.get("ports") or [{"protocol": "TCP"}]
        if not any(p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, 443) for p in ports):
            continue
        peers = rule.get("to") or [{"ipBlock": {"cidr": "anywhere"}}]
        found += [peer["ipBlock"]["cidr"] if "ipBlock" in peer else f"selector {peer}" for peer in peers]
    return found


def test_stage_pods_reach_only_google_apis_over_https(manifests) -> None:
    assert set(https_destinations(manifests["NetworkPolicy"])) <= GOOGLE_API_RANGES


def test_https_to_anywhere_is_caught(manifests) -> None:
    policy = copy.deepcopy(manifests["NetworkPolicy"])
    policy["spec"]["egress"].append({"ports": [{"protocol": "TCP", "port": 443}]})

    assert "anywhere" in https_destinations(policy)


def test_executor_triggerer_and_git_sync(values) -> None:
    assert values["executor"] in {"KubernetesExecutor", "CeleryExecutor"}
    # The DAGs' sensors are deferrable: the triggerer must run.
    assert values["triggerer"].get("enabled", True) is True and values["triggerer"]["replicas"] >= 1
    git_sync = values["dags"]["gitSync"]
    assert git_sync["enabled"] is True
    # Plugins sit beside the DAG folder in the same checkout.
    assert values["config"]["core"]["plugins_folder"] == "/opt/airflow/dags/repo/plugins"
    assert git_sync["subPath"] == "dags"


def test_database_is_external_behind_pgbouncer(values) -> None:
    assert values["postgresql"]["enabled"] is False
    assert values["pgbouncer"]["enabled"] is True
    assert values["data"]["metadataSecretName"]


def test_no_secret_values_are_written_down(values) -> None:
    def keys(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict):
            return [k for key, child in node.items() for k in [f"{prefix}{key}", *keys(child, f"{prefix}{key}.")]]
        if isinstance(node, list):
            return [k for child in node for k in keys(child, prefix)]
        return []

    secretive = re.compile(r"(pass|password|token|fernetKey|secretKey|brokerUrl|metadataConnection)$", re.IGNORECASE)
    # secret[].secretKey only names a key of a Kubernetes Secret; it holds no value.
    assert [key for key in keys(values) if secretive.search(key) and key != "secret.secretKey"] == []


def test_airflow_version_is_the_same_everywhere(values) -> None:
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    base = re.search(r"^FROM apache/airflow:(\S+)-python3\.11$", AIRFLOW_DOCKERFILE.read_text(), re.MULTILINE)
    assert base is not None
    assert values["airflowVersion"] == pinned.group(1) == base.group(1)
    assert values["defaultAirflowTag"].startswith(pinned.group(1))


def uncommented_keys(text: str, depth: int = 2) -> list[str]:
    """Mapping keys down to ``depth`` levels with no comment line directly above them (keys of list items aside)."""
    missing = []
    previous = ""
    parents: list[tuple[int, str]] = []
    list_item_indent: int | None = None
    for line in text.splitlines():
        item = re.match(r"^( *)- ", line)
        key = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if item:
            list_item_indent = len(item.group(1))
        elif key:
            indent = len(key.group(1))
            if list_item_indent is not None and indent > list_item_indent:
                previous = line
                continue
            list_item_indent = None
            parents = [(i, name) for i, name in parents if i < indent]
            path = ".".join([name for _, name in parents] + [key.group(2)])
            if len(parents) < depth and not previous.lstrip().startswith("#"):
                missing.append(path)
            parents.append((indent, key.group(2)))
        if line.strip():
            previous = line
    return missing


def test_every_key_says_why() -> None:
    assert uncommented_keys(VALUES.read_text(encoding="utf-8")) == []


def test_an_unexplained_key_is_caught() -> None:
    text = "# why\nexecutor: KubernetesExecutor\nworkers:\n  replicas: 2\n# why\nenv:\n  - name: A\n    value: b\n"

    assert uncommented_keys(text) == ["workers", "workers.replicas"]
