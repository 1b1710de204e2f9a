"""What a caller of the model server needs, importable without the server's libraries (kserve, FastAPI).

The model's name on the V2 routes, its one input, and the JSON body that
classifies some messages. ``process`` (a server in a child process) uses it,
so the stage environment can start and call a server that runs in the
serving environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MODEL_NAME = "privacy-intent"
INPUT_NAME = "text"


def texts_to_request(texts: Sequence[str]) -> dict[str, Any]:
    """The V2 JSON body that classifies ``texts``: one BYTES input ``text`` of shape ``[n]``."""
    return {"inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}]}
