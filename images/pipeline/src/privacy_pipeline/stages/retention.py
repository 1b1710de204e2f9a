"""retention: delete what the bucket no longer needs, keeping everything a reader could still be sent to.

Three kinds of thing grow with every run, and each has its rule (``retention`` in the config):

- **model versions** (``registry/models/<version>/``, its run record and by-run entry): the newest
  ``keep_model_versions`` stay, and so does every version that was ever champion (the current pointer,
  every ``history/`` entry and the versions those replaced), so a rollback always finds its target.
  The champion history itself is never deleted.
- **vector-store versions** (``versions/<version>/``): the newest ``keep_store_versions`` stay, and the
  one ``latest.json`` points at.
- **run prefixes** (``runs/<run_id>/`` and ``runs/conversations/<run_id>/``): one whose newest object is
  older than ``run_max_age_days`` goes, unless a kept model version, a kept store version or the
  champion history names the run.

Model versions are decided first, because a run is referenced only by what is kept. With ``--dry-run``
nothing is deleted; either way the report (every deletion, or would-be deletion, with its reason and
size) is written to ``--report`` and its summary is the XCom. Deleting a model version removes its run
record first, so a rollback can never pick a version whose files are half gone; a run that dies midway
leaves only files the next run deletes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from privacy_pipeline import registry, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations import vector_store
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "retention"
# Conversations runs live in their own folder under the runs prefix (run_templates.conversations_run_uri).
CONVERSATIONS_RUNS = "conversations"
# At most this many names of each kind in the XCom; the report has them all.
XCOM_NAMES = 50


def _key(uri: str) -> str:
    """A URI without its trailing slash or ``file://``, so run URIs from records and listings compare equal."""
    return uri.removeprefix("file://").rstrip("/")


@dataclass
class _Plan:
    """What goes and what stays, with reasons; ``deleted`` holds the URIs of every object to delete."""

    model_versions: list[dict[str, Any]] = field(default_factory=list)
    store_versions: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    kept: dict[str, Any] = field(default_factory=dict)
    objects: list[storage.ListedObject] = field(default_factory=list)


def _ever_champion(registry_uri: str) -> set[str]:
    champions: set[str] = set()
    pointer = registry.champion(registry_uri)
    entries = [*registry.champion_history(registry_uri), *([pointer] if pointer else [])]
    for entry in entries:
        champions.add(str(entry["version"]))
        if entry.get("previous_version"):
            champions.add(str(entry["previous_version"]))
    return champions


def _model_versions(registry_uri: str) -> dict[str, str | None]:
    """Every version the registry holds anything of, with its run URI when a by-run entry or run record says."""
    layout = RegistryLayout(registry_uri)
    versions: dict[str, str | None] = {}
    for uri in storage.list_uris(layout.path("models")):
        version = uri.removeprefix(layout.path("models") + "/").split("/", 1)[0]
        versions.setdefault(version, None)
    # by-run entries are written first by register, so a registration in progress is seen here.
    for uri in storage.list_uris(layout.path("by-run")):
        entry = storage.read_json(uri)
        if isinstance(entry, dict) and entry.get("version"):
            versions[str(entry["version"])] = entry.get("run_uri")
    for record in registry.list_runs(registry_uri):
        versions[str(record["version"])] = record.get("run_uri") or versions.get(str(record["version"]))
    return {v: versions[v] for v in versions if registry.VERSION_PATTERN.fullmatch(v)}


def _newest(names: Iterable[str], count: int) -> set[str]:
    # Version names start with their UTC timestamp, so they sort by age.
    return set(sorted(names)[-count:])


def _objects_under(listing: list[storage.ListedObject], prefix: str) -> list[storage.ListedObject]:
    prefix = _key(prefix) + "/"
    return [obj for obj in listing if _key(obj.uri).startswith(prefix)]


def _plan_models(registry_uri: str, config: PipelineConfig, plan: _Plan) -> set[str]:
    """Model versions to delete into ``plan``; returns the run URIs the kept versions name."""
    layout = RegistryLayout(registry_uri)
    versions = _model_versions(registry_uri)
    champions = _ever_champion(registry_uri)
    newest = _newest(versions, config.retention.keep_model_versions)
    listing = storage.list_objects(registry_uri)
    referenced: set[str] = set()
    for version, run_uri in sorted(versions.items()):
        if version in champions or version in newest:
            if run_uri:
                referenced.add(_key(run_uri))
            continue
        objects = _objects_under(listing, layout.model_dir(version))
        objects += [obj for obj in listing if _key(obj.uri) == _key(layout.run_record(version))]
        if run_uri:
            objects += [obj for obj in listing if _key(obj.uri) == _key(layout.by_run(run_uri))]
        plan.model_versions.append(
            {
                "version": version,
                "run_uri": run_uri,
                "reason": f"not among the newest {config.retention.keep_model_versions} and never champion",
                "objects": len(objects),
                "bytes": sum(obj.size for obj in objects),
            }
        )
        # The run record first: once it is gone no rollback can choose this version.
        plan.objects += sorted(objects, key=lambda obj: 0 if _key(obj.uri) == _key(layout.run_record(version)) else 1)
    plan.kept["model_versions"] = sorted(set(versions) - {d["version"] for d in plan.model_versions})
    # Champions whose model is gone still name their run: history keeps it.
    for entry in registry.champion_history(registry_uri):
        if entry.get("run_uri"):
            referenced.add(_key(str(entry["run_uri"])))
    return referenced


def _plan_store(store_uri: str, config: PipelineConfig, plan: _Plan) -> set[str]:
    """Store versions to delete into ``plan``; returns the run URIs the kept versions were published by."""
    layout = vector_store.StoreLayout(store_uri)
    listing = storage.list_objects(layout.path("versions"))
    versions = {_key(obj.uri).removeprefix(_key(layout.path("versions")) + "/").split("/", 1)[0] for obj in listing}
    latest = vector_store.read_latest(store_uri, STAGE).version
    keep = _newest(versions, config.retention.keep_store_versions) | ({latest} if latest else set())
    referenced: set[str] = set()
    for version in sorted(versions):
        objects = _objects_under(listing, layout.version_dir(version))
        if version in keep:
            if storage.exists(layout.manifest(version)):
                run_uri = vector_store.read_manifest(store_uri, version, STAGE).get("run_uri")
                if run_uri:
                    referenced.add(_key(str(run_uri)))
            continue
        reason = f"not among the newest {config.retention.keep_store_versions} and not latest"
        plan.store_versions.append(
            {"version": version, "reason": reason, "objects": len(objects), "bytes": sum(o.size for o in objects)}
        )
        plan.objects += objects
    plan.kept["store_versions"] = sorted(keep & versions)
    return referenced


def _run_prefixes(runs_uri: str) -> dict[str, list[storage.ListedObject]]:
    """Each run prefix (training and conversations runs) with its objects."""
    root = _key(runs_uri)
    prefixes: dict[str, list[storage.ListedObject]] = {}
    for obj in storage.list_objects(runs_uri):
        parts = _key(obj.uri).removeprefix(root + "/").split("/")
        depth = 2 if parts[0] == CONVERSATIONS_RUNS else 1
        if len(parts) <= depth:
            continue  # an object directly in runs/ or runs/conversations/ belongs to no run
        prefixes.setdefault(f"{root}/{'/'.join(parts[:depth])}", []).append(obj)
    return prefixes


def _plan_runs(runs_uri: str, referenced: set[str], cutoff: datetime, config: PipelineConfig, plan: _Plan) -> None:
    kept_referenced, kept_recent = [], 0
    for prefix, objects in sorted(_run_prefixes(runs_uri).items()):
        newest = max(obj.updated for obj in objects)
        if newest >= cutoff:
            kept_recent += 1
            continue
        if prefix in referenced:
            kept_referenced.append(prefix)
            continue
        plan.runs.append(
            {
                "run_uri": prefix + "/",
                "newest_object_at": registry.timestamp(newest),
                "reason": f"older than {config.retention.run_max_age_days:g} days and named by nothing kept",
                "objects": len(objects),
                "bytes": sum(obj.size for obj in objects),
            }
        )
        plan.objects += objects
    plan.kept["runs_referenced"] = [prefix + "/" for prefix in kept_referenced]
    plan.kept["runs_recent"] = kept_recent


def run(
    *,
    config: PipelineConfig,
    runs_uri: str,
    registry_uri: str,
    store_uri: str,
    report_uri: str,
    dry_run: bool = False,
    now: datetime | None = None,
) -> StageResult:
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=config.retention.run_max_age_days)
    for name, uri in (("--runs", runs_uri), ("--registry", registry_uri), ("--store", store_uri)):
        inside = _key(uri).removeprefix("gs://").strip("/")
        if not inside or (storage.is_gcs(uri) and "/" not in inside):
            # A bucket's root (or nothing) would make every top-level folder a "run".
            raise StageError(f"{STAGE}: {name} {uri!r} names a bucket root, not a prefix inside it")
    if _key(report_uri).startswith(_key(runs_uri) + "/"):
        raise StageError(f"{STAGE}: --report {report_uri} lies under --runs {runs_uri}; write it elsewhere")
    plan = _Plan()
    referenced = _plan_models(registry_uri, config, plan)
    referenced |= _plan_store(store_uri, config, plan)
    _plan_runs(runs_uri, referenced, cutoff, config, plan)

    if not dry_run:
        for obj in plan.objects:
            storage.delete(obj.uri)
    verb = "would delete" if dry_run else "deleted"
    summary = (
        f"{STAGE}: {verb} {len(plan.runs)} run prefixes, {len(plan.model_versions)} model versions and "
        f"{len(plan.store_versions)} store versions ({len(plan.objects)} objects, "
        f"{sum(obj.size for obj in plan.objects)} bytes)"
    )
    report = {
        "dry_run": dry_run,
        "at": registry.timestamp(now),
        "cutoff": registry.timestamp(cutoff),
        "rules": config.retention.model_dump(mode="json"),
        "runs_uri": runs_uri,
        "registry_uri": registry_uri,
        "store_uri": store_uri,
        "deleted" if not dry_run else "would_delete": {
            "runs": plan.runs,
            "model_versions": plan.model_versions,
            "store_versions": plan.store_versions,
        },
        "kept": plan.kept,
        "objects": len(plan.objects),
        "bytes": sum(obj.size for obj in plan.objects),
    }
    storage.write_json(report_uri, report)
    log.info("%s; report %s", summary, report_uri)
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "dry_run": dry_run,
            "report_uri": report_uri,
            "runs": [entry["run_uri"] for entry in plan.runs][:XCOM_NAMES],
            "model_versions": [entry["version"] for entry in plan.model_versions][:XCOM_NAMES],
            "store_versions": [entry["version"] for entry in plan.store_versions][:XCOM_NAMES],
            "counts": {
                "runs": len(plan.runs),
                "model_versions": len(plan.model_versions),
                "store_versions": len(plan.store_versions),
                "objects": len(plan.objects),
                "bytes": report["bytes"],
            },
        },
    )
