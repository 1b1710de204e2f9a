"""Registry and run states after ``register``, for the rollout stages' tests (deploy, canary_check).

Not a test module: test_deploy, test_canary_check and test_serving_canary
import it. ``promoted`` moves the champion and writes register's commit
marker as register does after a passing gate, so a rollout test can start
from "this run's version was just promoted" without running the gate (its own
tests are test_register and test_promotion_gate).
"""

from __future__ import annotations

from typing import Any

from privacy_pipeline import registry, storage
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.run_layout import RunLayout

CHAMPION, CANDIDATE = "20261120T020000Z-aaaaaaaa", "20261121T020000Z-bbbbbbbb"


def registered(registry_uri: str, version: str) -> None:
    """A registered version as rollback checks one: its run record and its model file."""
    layout = RegistryLayout(registry_uri)
    storage.write_bytes(layout.model(version), f"model {version}".encode())
    storage.write_json(layout.run_record(version), {"version": version, "run_uri": f"gs://bucket/runs/{version}/"})


def promoted(registry_uri: str, run_uri: str, version: str, *, promote: bool = True) -> dict[str, Any]:
    """Register's outcome for ``run_uri``: ``version`` champion (when ``promote``) and its commit marker."""
    previous = registry.champion(registry_uri)
    if promote:

        def decide(current: dict[str, Any] | None) -> dict[str, Any]:
            return {
                "version": version,
                "model_uri": RegistryLayout(registry_uri).model(version),
                "run_uri": run_uri,
                "promoted_at": "2026-11-21T02:00:00Z",
                "previous_version": current["version"] if current else None,
                "action": "promote",
                "by": "register",
                "reason": "promoted: test",
            }

        registry.cas_update_champion(registry_uri, decide)
    result = {
        "stage": "register",
        "model_version": version,
        "promoted": promote,
        "decision_reason": "promoted: test" if promote else "not promoted: +0.004 macro-F1, interval includes 0",
        "champion_version": version if promote else (previous or {}).get("version"),
    }
    storage.write_json(RunLayout(run_uri).result("register"), result)
    return result
