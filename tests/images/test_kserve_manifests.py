"""deploy/k8s/kserve: the InferenceService and its ServingRuntime against KServe's own CRD schemas, and then some.

The schemas are the official CRDs' openAPIV3Schema (../shared/schemas/kserve,
see its README). Plain JSON Schema accepts any key an object's schema does
not list, and a Kubernetes API server would prune such a key silently, so a
typo (``maxBatchsize``) would deploy and do nothing: ``unknown_fields`` walks
each manifest against its schema and reports every key the schema does not
know. The pod KServe makes from the two (runtime container with the model
spec merged in, plus the batcher's agent) is checked as a core Pod with
kubernetes-validate and against Pod Security "restricted".
"""

from __future__ import annotations

import copy
import json
import os
import string
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pod_security import restricted_violations

from embedded.stack import REPO
from privacy_pipeline_airflow.run_templates import registry_uri
from privacy_pipeline_airflow.settings import PipelineSettings
from privacy_pipeline_airflow.stage_pod import GCP_CREDENTIALS_MOUNT, IMAGE_UID

KSERVE_DIR = REPO / "deploy" / "k8s" / "kserve"
INFERENCE_SERVICE = KSERVE_DIR / "inferenceservice.yaml"
SERVING_RUNTIME = KSERVE_DIR / "servingruntime.yaml"
HELM_VALUES = REPO / "helm-values.yaml"
DOCKERFILE = REPO / "images" / "pipeline" / "Dockerfile"
# The image's model-server venv (kserve's pins, on top of the stage venv) and its interpreter.
SERVING_VENV = "/opt/serving"
SERVING_PYTHON = f"{SERVING_VENV}/bin/python"
# In CI a read-only copy sits beside the checkout; here it is /work/shared.
SCHEMAS = REPO.parent / "shared" / "schemas" / "kserve"
SCHEMA_FILES = {
    "InferenceService": "inferenceservice-v1beta1.schema.json",
    "ServingRuntime": "servingruntime-v1alpha1.schema.json",
}
# What the README's envsubst fills in; any value will do for checking structure.
PLACEHOLDERS = {"AWS_ACCOUNT_ID": "123456789012", "AWS_REGION": "eu-west-1", "MODEL_VERSION": "v20261201T020000Z"}
KUBERNETES_VERSION = "1.34"
SERVER_PORT = 8080
# The modes in which KServe makes each rollout a Knative revision and honours
# canaryTrafficPercent ("Serverless" is the older name of "Knative"). In
# "Standard" (formerly "RawDeployment", KServe's default) the field is ignored.
CANARY_MODES = {"Knative", "Serverless"}

pytestmark = pytest.mark.skipif(
    not SCHEMAS.is_dir() and not os.environ.get("CI"),
    reason=f"KServe's CRD schemas are not at {SCHEMAS} (CI always has them)",
)


def rendered(path: Path) -> dict[str, Any]:
    text = string.Template(path.read_text(encoding="utf-8")).safe_substitute(PLACEHOLDERS)
    return yaml.safe_load(text)


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))


def unknown_fields(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every key in ``instance`` that ``schema`` neither lists nor lets through, as a dotted path.

    An object schema lets a key through with ``additionalProperties`` (true or
    a schema, which is then applied to the value) or with
    ``x-kubernetes-preserve-unknown-fields``; an object schema without
    ``properties`` (``metadata``, free-form maps) is not walked.
    """
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(instance, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, value in instance.items():
            where = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], where)
            elif isinstance(additional, dict):
                found += unknown_fields(value, additional, where)
            elif properties is not None and additional is not True:
                found.append(where)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def schema_problems(manifest: dict[str, Any]) -> list[str]:
    """What the CRD's schema refuses, then every field it does not know."""
    schema = crd_schema(manifest["kind"])
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]
    problems += [f"{field}: not a field of {manifest['kind']}" for field in unknown_fields(manifest, schema)]
    return problems


def _merge_into(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = value


def predictor_pod(isvc: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The predictor pod KServe creates from the two manifests, as a core Pod.

    As KServe's controller builds it: the InferenceService's model spec merged
    into the runtime's ``kserve-container`` (its args appended to the runtime's,
    its other fields overriding key by key, as a strategic merge patch does;
    pkg/utils MergeRuntimeContainers), the runtime's volumes and the predictor's pod
    fields; and, because ``batcher`` is set, KServe's agent container, which
    its webhook gives a copy of the first container's securityContext
    (pkg/webhook/admission/pod/agent_injector.go).
    """
    predictor = isvc["spec"]["predictor"]
    model = {k: v for k, v in predictor["model"].items() if k not in {"modelFormat", "runtime", "protocolVersion"}}
    container = copy.deepcopy(runtime["spec"]["containers"][0])
    container["args"] = [*container.get("args", []), *model.pop("args", [])]
    _merge_into(container, copy.deepcopy(model))
    agent = {
        "name": "agent",
        "image": "kserve/agent",
        "args": ["--enable-batcher", "--component-port", str(SERVER_PORT)],
        "ports": [{"name": "agent-port", "containerPort": 9081, "protocol": "TCP"}],
        "securityContext": copy.deepcopy(container["securityContext"]),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{isvc['metadata']['name']}-predictor", "namespace": isvc["metadata"]["namespace"]},
        "spec": {
            "serviceAccountName": predictor["serviceAccountName"],
            "containers": [container, agent],
            "volumes": copy.deepcopy(runtime["spec"]["volumes"]),
        },
    }


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    return rendered(INFERENCE_SERVICE)


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return rendered(SERVING_RUNTIME)


@pytest.mark.parametrize("path", [INFERENCE_SERVICE, SERVING_RUNTIME], ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kserve_crd_and_has_no_unknown_field(path: Path) -> None:
    assert schema_problems(rendered(path)) == []


@pytest.mark.parametrize("path", [INFERENCE_SERVICE, SERVING_RUNTIME], ids=lambda p: p.name)
def test_metadata_is_valid_object_meta(path: Path) -> None:
    # The CRD schemas leave metadata free-form; the API server checks it as ObjectMeta, as for any kind.
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": rendered(path)["metadata"]}
    kubernetes_validate.validate(carrier, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "kind,field,typo",
    [
        ("InferenceService", ("spec", "predictor", "batcher"), "maxBatchsize"),
        ("InferenceService", ("spec", "predictor", "model"), "storageURI"),
        ("ServingRuntime", ("spec", "containers", 0), "readinesProbe"),
    ],
)
def test_a_misspelt_field_fails_though_plain_json_schema_accepts_it(isvc, runtime, kind, field, typo) -> None:
    manifest = copy.deepcopy(isvc if kind == "InferenceService" else runtime)
    target = manifest
    for part in field:
        target = target[part]
    target[typo] = 1 if typo == "maxBatchsize" else "x"

    # What the schema README's one-line validation would say: nothing.
    jsonschema.Draft7Validator(crd_schema(kind)).validate(manifest)
    problems = schema_problems(manifest)

    assert len(problems) == 1 and typo in problems[0], problems


def test_a_wrong_type_fails(isvc) -> None:
    manifest = copy.deepcopy(isvc)
    manifest["spec"]["predictor"]["batcher"]["maxLatency"] = "10ms"

    assert any("maxLatency" in problem for problem in schema_problems(manifest))


def test_the_predictor_pod_is_valid_kubernetes_and_restricted(isvc, runtime) -> None:
    pod = predictor_pod(isvc, runtime)

    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    assert restricted_violations(pod) == []
    server = pod["spec"]["containers"][0]
    assert server["securityContext"]["runAsUser"] == IMAGE_UID
    assert {"cpu", "memory"} <= server["resources"]["requests"].keys() <= server["resources"]["limits"].keys()


def test_a_writable_or_root_predictor_is_not_restricted(isvc, runtime) -> None:
    careless = copy.deepcopy(isvc)
    context = careless["spec"]["predictor"]["model"]["securityContext"]
    # The InferenceService's fields win over the runtime's (a missing one would fall back to the runtime's).
    context["readOnlyRootFilesystem"] = False
    context["runAsNonRoot"] = False

    problems = restricted_violations(predictor_pod(careless, runtime))

    # The agent copies the server's context, so both containers are reported.
    assert sorted(problems) == sorted(
        f"{name}: {problem}"
        for name in ("kserve-container", "agent")
        for problem in ("runAsNonRoot is not true", "root filesystem is writable")
    )


def test_the_server_is_ready_only_on_the_v2_ready_route_of_its_port(runtime) -> None:
    container = runtime["spec"]["containers"][0]
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v2/health/ready", "port": SERVER_PORT}
    assert [port["containerPort"] for port in container["ports"]] == [SERVER_PORT]
    assert container["args"][container["args"].index("--port") + 1] == str(SERVER_PORT)
    assert "v2" in runtime["spec"]["protocolVersions"]


def test_the_inference_service_runs_the_runtime_on_the_champion_version(isvc, runtime) -> None:
    model = isvc["spec"]["predictor"]["model"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert model["runtime"] == runtime["metadata"]["name"]
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] == "v2"
    assert model["args"] == ["--version", PLACEHOLDERS["MODEL_VERSION"]]
    assert runtime["spec"]["containers"][0]["args"][0] == "serve"


def test_the_server_runs_in_the_images_serving_environment(runtime) -> None:
    # The image's ENTRYPOINT is the stage venv, which has no kserve; the serving venv runs the same CLI.
    container = runtime["spec"]["containers"][0]
    assert container["command"] == [SERVING_PYTHON, "-m", "privacy_pipeline.cli"]
    assert container["args"][0] == "serve"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert f"COPY --from=serving {SERVING_VENV} {SERVING_VENV}" in dockerfile
    assert f"python3 -m venv {SERVING_VENV}" in dockerfile


def test_batching_is_on_and_bounded(isvc) -> None:
    batcher = isvc["spec"]["predictor"]["batcher"]
    assert batcher["maxBatchSize"] > 1
    assert 0 < batcher["maxLatency"] <= 50, "maxLatency is in milliseconds; a caller waits up to this long"


def test_the_deployment_mode_honours_a_canary(isvc) -> None:
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in CANARY_MODES
    canary = copy.deepcopy(isvc)
    canary["spec"]["predictor"]["canaryTrafficPercent"] = 10

    assert schema_problems(canary) == []


def test_names_match_the_pipeline_settings_and_helm_values(isvc, runtime) -> None:
    settings = PipelineSettings()
    container = runtime["spec"]["containers"][0]
    assert isvc["metadata"]["namespace"] == runtime["metadata"]["namespace"] == settings.namespace
    assert isvc["spec"]["predictor"]["serviceAccountName"] == settings.service_account
    assert container["envFrom"] == [{"configMapRef": {"name": settings.env_configmap}}]
    secrets = {v["secret"]["secretName"] for v in runtime["spec"]["volumes"] if "secret" in v}
    assert secrets == {settings.gcp_credentials_secret}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert GCP_CREDENTIALS_MOUNT in mounts
    assert container["args"][container["args"].index("--registry") + 1] == registry_uri(settings)
    # The image the stage pods run in production (helm-values.yaml's PIPELINE_IMAGE).
    values = yaml.safe_load(string.Template(HELM_VALUES.read_text(encoding="utf-8")).safe_substitute(PLACEHOLDERS))
    image = next(item["value"] for item in values["env"] if item["name"] == "PIPELINE_IMAGE")
    assert container["image"] == image
