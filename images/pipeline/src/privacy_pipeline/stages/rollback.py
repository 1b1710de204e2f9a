"""rollback: move the registry's champion (or the vector store's ``latest``) back to an earlier version in one step.

``--to VERSION`` names the version; without it the last promotion is undone:
the champion goes back to the version it replaced. The pointer moves by
compare-and-swap like every champion move, and the move (who, when, why, from
what) lands in the registry's history.

Repeating a rollback changes nothing: naming the version that is already
champion is a no-op, and so is a default rollback when the champion was itself
set by a rollback (there is no promotion left to undo; name ``--to`` to go
further back). A version that does not exist, or has no registered model, is
refused with the registry untouched.

``--store`` does the same for the conversations vector store's ``latest.json``:
the default goes back to the version the latest one was built on (its
manifest's ``parent_version``), a named version must be a published one, and
the pointer records who, when and why.
"""

from __future__ import annotations

import getpass
import logging
import os
from datetime import UTC, datetime
from typing import Any

from privacy_pipeline import registry, storage, tracking
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "rollback"
# Who asked, when --by is not given: the Airflow task sets it from the DAG run's triggering user.
REQUESTED_BY_ENV = "ROLLBACK_REQUESTED_BY"


def _requester(by: str | None) -> str:
    if by:
        return by
    if os.environ.get(REQUESTED_BY_ENV):
        return os.environ[REQUESTED_BY_ENV]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid, as in many containers
        return "unknown"


def _registered_target(registry_uri: str, version: str) -> dict[str, Any]:
    """The run record of ``version``, refusing one that is not a registered model with its file in place."""
    record = registry.read_run_record(registry_uri, version)
    if record is None:
        raise StageError(
            f"{STAGE}: {version} is not a registered model version in {registry_uri} "
            f"({RegistryLayout(registry_uri).run_record(version)} is missing); "
            "`privacy-pipeline registry list` shows the versions"
        )
    model_uri = RegistryLayout(registry_uri).model(version)
    if not storage.exists(model_uri):
        raise StageError(f"{STAGE}: version {version} has a run record but no model ({model_uri} is missing)")
    return record


def run(
    *,
    config: PipelineConfig,
    registry_uri: str | None = None,
    to: str | None = None,
    by: str | None = None,
    reason: str | None = None,
    store_uri: str | None = None,
    expected_champion: str | None = None,
) -> StageResult:
    """``expected_champion``: move only while that version is still champion (canary_check rolls back its canary)."""
    del config  # the same global flags as every subcommand; a rollback needs none of them
    requested_by = _requester(by)
    target_version = (to or "").strip() or None
    if (registry_uri is None) == (store_uri is None):
        raise StageError(f"{STAGE}: name exactly one of --registry (the champion) and --store (the vector store)")
    if store_uri is not None:
        return _roll_back_store(store_uri, target_version, requested_by, reason)
    assert registry_uri is not None
    if target_version is not None:
        _registered_target(registry_uri, target_version)
    outcome: dict[str, Any] = {}

    def decide(current: dict[str, Any] | None) -> dict[str, Any] | None:
        # Called again after a lost race: judge the champion it is given, forgetting the last attempt.
        outcome.clear()
        if current is None:
            raise StageError(f"{STAGE}: {registry_uri} has no champion yet; there is nothing to roll back")
        current_version = str(current["version"])
        outcome["from"] = current_version
        if expected_champion is not None and current_version != expected_champion:
            outcome["note"] = f"the champion is now {current_version}, not {expected_champion}; left as it is"
            return None
        target = target_version
        if target is None:
            if current.get("action") == "rollback":
                outcome["note"] = (
                    f"champion {current_version} was set by a rollback at {current.get('promoted_at')}; "
                    "no promotion left to undo (name --to to go further back)"
                )
                return None
            target = current.get("previous_version")
            if not target:
                raise StageError(
                    f"{STAGE}: champion {current_version} was the first champion; there is none before it to go back to"
                )
        if target == current_version:
            outcome["note"] = f"{target} is already the champion"
            return None
        record = _registered_target(registry_uri, str(target))
        why = reason or f"rollback from {current_version}"
        return {
            "version": target,
            "model_uri": RegistryLayout(registry_uri).model(str(target)),
            "f1_macro": record.get("candidate_f1_macro"),
            "run_uri": record.get("run_uri"),
            "promoted_at": registry.timestamp(datetime.now(UTC)),
            "previous_version": current_version,
            "action": "rollback",
            "by": requested_by,
            "reason": why,
        }

    after = registry.cas_update_champion(registry_uri, decide)
    champion_version = str(after["version"]) if after else None
    moved = after is not None and after.get("action") == "rollback" and "note" not in outcome
    # The MLflow mirror's champion alias follows the move (None: nothing moved, nothing to mirror).
    tracking_line = tracking.mirror_champion(champion_version) if moved else None
    if moved:
        summary = f"{STAGE}: champion moved from {outcome['from']} to {champion_version} by {requested_by}"
    else:
        summary = f"{STAGE}: nothing to do, {outcome['note']}"
    log.info("%s", summary)
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "registry_uri": registry_uri,
            "moved": moved,
            "champion_version": champion_version,
            "previous_champion": outcome.get("from"),
            "by": requested_by,
            "note": outcome.get("note"),
            "tracking": tracking_line,
        },
    )


def _roll_back_store(store_uri: str, to: str | None, requested_by: str, reason: str | None) -> StageResult:
    """``latest.json`` of the vector store back to ``to`` (default: the parent of the version it names)."""
    from privacy_pipeline.conversations import vector_store

    layout = vector_store.StoreLayout(store_uri)

    def published(version: str) -> dict[str, Any]:
        if not registry.VERSION_PATTERN.fullmatch(version) or not storage.exists(layout.manifest(version)):
            raise StageError(
                f"{STAGE}: {version} is not a published version of the store {store_uri} "
                f"({layout.manifest(version)} is missing)"
            )
        return vector_store.read_manifest(store_uri, version, STAGE)

    if to is not None:
        published(to)
    outcome: dict[str, Any] = {}

    def decide(latest: dict[str, Any] | None) -> dict[str, Any] | None:
        # Called again after a lost race: judge the pointer it is given, forgetting the last attempt.
        outcome.clear()
        if latest is None:
            raise StageError(f"{STAGE}: the store {store_uri} has no published version; there is nothing to roll back")
        current = str(latest["version"])
        outcome["from"] = current
        target = to
        if target is None:
            if latest.get("action") == "rollback":
                outcome["note"] = (
                    f"latest {current} was set by a rollback; nothing left to undo (name --to to go further back)"
                )
                return None
            target = published(current).get("parent_version")
            if not target:
                raise StageError(f"{STAGE}: store version {current} was the first; there is none before it")
        if target == current:
            outcome["note"] = f"{target} is already the store's latest"
            return None
        manifest = published(target)
        return {
            "version": target,
            "manifest_uri": layout.manifest(target),
            "published_at": manifest.get("created_at"),
            "rolled_back_at": registry.timestamp(datetime.now(UTC)),
            "previous_version": current,
            "action": "rollback",
            "by": requested_by,
            "reason": reason or f"rollback from {current}",
        }

    update = storage.update_pointer(
        layout.latest,
        lambda: vector_store.read_latest(store_uri, STAGE),
        decide,
        gave_up=f"{STAGE}: the store pointer {layout.latest} kept moving under concurrent publishes; rerun rollback",
    )
    assert update.pointer is not None
    if not update.moved:
        return StageResult(
            stage=STAGE,
            summary=f"{STAGE}: nothing to do, {outcome['note']}",
            xcom={
                "store_uri": store_uri,
                "moved": False,
                "latest_version": outcome["from"],
                "by": requested_by,
                "note": outcome["note"],
            },
        )
    target = str(update.pointer["version"])
    summary = f"{STAGE}: store latest moved from {outcome['from']} to {target} by {requested_by}"
    log.info("%s", summary)
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "store_uri": store_uri,
            "moved": True,
            "latest_version": target,
            "previous_latest": outcome["from"],
            "by": requested_by,
            "note": None,
        },
    )
