"""The model registry: where registered models, their run records and the champion pointer live.

Layout under the registry prefix (local path, ``file://`` or ``gs://``)::

    models/<version>/model.skops     the run's fitted pipeline, byte for byte
    models/<version>/metadata.json   lineage: run, params, metrics, data hash, feature spec, config, image
    models/<version>/train_fingerprint.npy  sorted 64-bit hashes of its training rows' content (promotion_gate)
    runs/<version>.json              one record per run, with its promotion decision and the gate's interval
    by-run/<key>.json                run URI -> version, so a rerun reuses its version
    champion.json                    the pointer to the model that serves; moved only by compare-and-swap
    history/<generation>.json        every champion move (promotion or rollback): who, when, why, from what

Writers keep the registry consistent for readers by their order: the by-run
index, then the model and its metadata, then the run record, and the champion
pointer last, so nothing ever points at a missing artifact. The register and
rollback stages write; the daily conversations job and the model server read
``champion`` / ``champion_model_uri``. A history entry is written right after
the swap it records, named by the pointer's new generation so entries sort in
the order the moves happened; the pointer itself carries the same who/when/why,
so a writer that dies between the two loses no more than that one entry.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from privacy_pipeline import storage
from privacy_pipeline.errors import StageError

log = logging.getLogger(__name__)

_VERSION_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
# What version_name makes; a name that is not one (``../champion``) never reaches a path.
VERSION_PATTERN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")


@dataclass(frozen=True)
class RegistryLayout:
    registry_uri: str

    def path(self, *parts: str) -> str:
        return storage.join(self.registry_uri, *parts)

    def model_dir(self, version: str) -> str:
        return self.path("models", version)

    def model(self, version: str) -> str:
        return self.path("models", version, "model.skops")

    def metadata(self, version: str) -> str:
        return self.path("models", version, "metadata.json")

    def train_fingerprint(self, version: str) -> str:
        return self.path("models", version, "train_fingerprint.npy")

    @property
    def history_dir(self) -> str:
        return self.path("history")

    def history_entry(self, generation: int) -> str:
        return self.path("history", f"{generation:020d}.json")

    @property
    def runs_dir(self) -> str:
        return self.path("runs")

    def run_record(self, version: str) -> str:
        return self.path("runs", f"{version}.json")

    def by_run(self, run_uri: str) -> str:
        return self.path("by-run", f"{run_key(run_uri)[:16]}.json")

    @property
    def champion(self) -> str:
        return self.path("champion.json")


# The champion pointer as read, with the generation a swap must still find.
ChampionSnapshot = storage.PointerSnapshot


def run_key(run_uri: str) -> str:
    """A stable key for a run: the same run URI always maps to the same registry entries."""
    return hashlib.sha256(run_uri.rstrip("/").encode("utf-8")).hexdigest()


def version_name(run_uri: str, registered_at: datetime) -> str:
    """``20261123T021530Z-3fa2c1d0``: sorts by time, and the suffix tells runs of one second apart.

    The name of every published version: registered models and vector-store versions (conversations-publish).
    """
    return f"{registered_at.astimezone(UTC).strftime(_VERSION_TIME_FORMAT)}-{run_key(run_uri)[:8]}"


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_registration(registry_uri: str, run_uri: str) -> dict[str, Any] | None:
    """The by-run index entry ({run_uri, version, registered_at}) of a run registered before, if any."""
    uri = RegistryLayout(registry_uri).by_run(run_uri)
    if not storage.exists(uri):
        return None
    entry = storage.read_json(uri)
    if not isinstance(entry, dict) or not entry.get("version") or not entry.get("registered_at"):
        raise StageError(f"registry: {uri} is not a by-run index entry (needs 'version' and 'registered_at')")
    if entry.get("run_uri") != run_uri.rstrip("/"):
        # Two run URIs sharing 64 bits of SHA-256 is not going to happen by
        # chance; if it does, silently reusing the other run's version would be worse.
        raise StageError(f"registry: {uri} belongs to run {entry.get('run_uri')}, not {run_uri}")
    return entry


def claim_registration(registry_uri: str, run_uri: str, now: datetime) -> dict[str, Any]:
    """The run's registration entry: the existing one for a rerun, else a new version written to the index.

    The index is created with compare-and-swap against "absent", so two
    attempts of the same run racing each other still agree on one version.
    """
    existing = find_registration(registry_uri, run_uri)
    if existing is not None:
        return existing
    entry = {
        "run_uri": run_uri.rstrip("/"),
        "version": version_name(run_uri, now),
        "registered_at": timestamp(now),
    }
    try:
        storage.compare_and_swap(RegistryLayout(registry_uri).by_run(run_uri), storage.json_bytes(entry), 0)
    except storage.GenerationMismatch as exc:
        raced = find_registration(registry_uri, run_uri)
        if raced is None:
            raise StageError(
                f"registry: the by-run index of {run_uri} vanished while registering; rerun register"
            ) from exc
        return raced
    return entry


def read_champion(registry_uri: str) -> ChampionSnapshot:
    """The champion pointer and its generation (0 and None when there is no champion yet)."""
    return storage.read_pointer(
        RegistryLayout(registry_uri).champion, ("version", "model_uri"), "registry", "champion pointer"
    )


def champion(registry_uri: str) -> dict[str, Any] | None:
    """The current champion pointer {version, model_uri, f1_macro, run_uri, promoted_at, previous_version}."""
    return read_champion(registry_uri).pointer


def champion_model_uri(registry_uri: str) -> str | None:
    pointer = champion(registry_uri)
    return str(pointer["model_uri"]) if pointer else None


def list_runs(registry_uri: str) -> list[dict[str, Any]]:
    """Every run record in the registry, oldest version first."""
    records = []
    for uri in storage.list_uris(RegistryLayout(registry_uri).runs_dir):
        if not uri.endswith(".json"):
            continue
        record = storage.read_json(uri)
        if not isinstance(record, dict) or "version" not in record:
            raise StageError(f"registry: {uri} is not a run record (no 'version')")
        records.append(record)
    return sorted(records, key=lambda record: str(record["version"]))


def read_run_record(registry_uri: str, version: str) -> dict[str, Any] | None:
    """The run record of ``version``, or None when no such model was registered."""
    if not VERSION_PATTERN.fullmatch(version):
        return None
    uri = RegistryLayout(registry_uri).run_record(version)
    if not storage.exists(uri):
        return None
    record = storage.read_json(uri)
    if not isinstance(record, dict) or record.get("version") != version:
        raise StageError(f"registry: {uri} is not the run record of {version}")
    return record


def champion_history(registry_uri: str) -> list[dict[str, Any]]:
    """Every recorded champion move, oldest first (each entry is the pointer the move wrote)."""
    entries = []
    for uri in storage.list_uris(RegistryLayout(registry_uri).history_dir):
        if not uri.endswith(".json"):
            continue
        entry = storage.read_json(uri)
        if not isinstance(entry, dict) or not entry.get("version"):
            raise StageError(f"registry: {uri} is not a champion history entry (no 'version')")
        entries.append(entry)
    # Names are zero-padded generations, so the listing order is the order of the moves.
    return entries


def cas_update_champion(
    registry_uri: str,
    decide: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    *,
    max_attempts: int = storage.MAX_POINTER_SWAP_ATTEMPTS,
) -> dict[str, Any] | None:
    """Move the champion pointer to what ``decide`` returns, re-deciding whenever another writer moved it first.

    ``decide`` gets the current pointer (None without a champion) and returns
    the new pointer, or None to keep the current one. It is called again after
    every lost race, so it must judge the champion it is given, not one it saw
    before. A decision to keep counts only if the champion did not move while
    it was being made. Returns the champion pointer after the decision.
    """
    uri = RegistryLayout(registry_uri).champion
    update = storage.update_pointer(
        uri,
        # Looked up at each attempt, so tests can make a read lose its race.
        lambda: read_champion(registry_uri),
        decide,
        gave_up=(
            f"registry: the champion pointer {uri} kept moving under concurrent registrations; "
            f"gave up after {max_attempts} attempts, rerun register"
        ),
        max_attempts=max_attempts,
    )
    if update.moved:
        storage.write_json(RegistryLayout(registry_uri).history_entry(update.generation), update.pointer)
    return update.pointer
