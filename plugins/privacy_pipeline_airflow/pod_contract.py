"""What the stage image, its rendered pods and the local runtimes agree on.

The lowest module of the plugin: it imports nothing of ours, so the operator
(stage_pod.py) and both local runtimes (local_runtime.py, image_runtime.py)
take these names from here and never from each other. Each value is fixed by
images/pipeline/Dockerfile or by KubernetesPodOperator; tests/images keeps the
Dockerfile and these in step.
"""

from __future__ import annotations

# The image's ENTRYPOINT: one subcommand per stage.
STAGE_CLI = "privacy-pipeline"
# KubernetesPodOperator's name for the main container (its base_container_name default).
BASE_CONTAINER = "base"
# The image's fixed non-root uid/gid.
IMAGE_UID = 10001
# The only writable path under the read-only root filesystem (an emptyDir).
SCRATCH_MOUNT = "/tmp"
# Where the XCom sidecar reads return.json from.
XCOM_MOUNT = "/airflow/xcom"
GCP_CREDENTIALS_MOUNT = "/var/run/secrets/gcp"
# Where every stage pod finds the pipeline config (the ConfigMap privacy-pipeline-config, key pipeline.yaml),
# and the --config the stage CLI gets.
PIPELINE_CONFIG_MOUNT = "/etc/privacy-pipeline"
PIPELINE_CONFIG_KEY = "pipeline.yaml"
PIPELINE_CONFIG_FILE = f"{PIPELINE_CONFIG_MOUNT}/{PIPELINE_CONFIG_KEY}"
# The image's ENV, which the local runtime applies under the pod's own env.
IMAGE_ENV = {
    "HOME": "/tmp",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
