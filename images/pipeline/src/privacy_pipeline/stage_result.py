"""What a stage returns: a one-line summary for people and small JSON for XCom.

The JSON is written to ``$XCOM_RETURN_PATH`` (default ``/airflow/xcom/return.json``,
where the KubernetesPodOperator's sidecar reads it) and also into the run as the
stage's commit marker. Only URIs, counts, metrics and versions go here: data
stays in the bucket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy_pipeline.storage import json_bytes

DEFAULT_XCOM_RETURN_PATH = "/airflow/xcom/return.json"


@dataclass(frozen=True)
class StageResult:
    stage: str
    summary: str
    xcom: dict[str, Any] = field(default_factory=dict)
    # Where the CLI writes the payload last, as the stage's commit marker in
    # the run (None for commands that are not part of a run, like synth).
    commit_uri: str | None = None

    def payload(self) -> dict[str, Any]:
        return {"stage": self.stage, **self.xcom}


def write_xcom(result: StageResult) -> Path | None:
    """Write the XCom JSON where the pod's sidecar (or the local runtime) reads it.

    Outside a pod with no ``XCOM_RETURN_PATH`` set, the default directory does
    not exist and there is nobody to read it: skip rather than fail.
    """
    configured = os.environ.get("XCOM_RETURN_PATH")
    target = Path(configured or DEFAULT_XCOM_RETURN_PATH)
    if not configured and not target.parent.is_dir():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(json_bytes(result.payload()))
    return target
