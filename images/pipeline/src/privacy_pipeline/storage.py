"""Object storage over local paths, ``file://`` and ``gs://`` URIs.

Every write is atomic: a reader sees the whole new object or the old one, never
a half-written file. Locally that is a temp file in the same directory plus
``os.replace``; on GCS a single-request upload only becomes visible when
complete. ``compare_and_swap`` is the one primitive for pointers that several
runs may move at once (the registry's champion): GCS generation preconditions
in production, an ``flock``-guarded check of the file's generation locally.
"""

from __future__ import annotations

import fcntl
import fnmatch
import functools
import io
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from privacy_pipeline.errors import StageError

GCS_SCHEME = "gs://"

log = logging.getLogger(__name__)

# Each retry of a pointer update follows another writer's successful swap, so five
# concurrent writers need at most four; the rest is headroom for a busy pointer.
MAX_POINTER_SWAP_ATTEMPTS = 20

# Fault injection for images/pipeline/tests/test_killed_stages.py. With
# PRIVACY_PIPELINE_KILL_AT_COMMIT=N (or N:GLOB) the process SIGKILLs itself at its N-th commit
# point (counting writes whose URI matches GLOB): the new bytes are complete but not yet visible,
# locally the temp file written and not yet renamed, on GCS the upload not yet sent. That is the
# moment a spot-node loss or an OOM kill can do harm, so the test kills each stage exactly there
# instead of guessing with sleeps. Read at every write rather than once at import, so a process
# forked after the imports can set it; unset, as in every deployment, that is one dict lookup per write.
KILL_AT_COMMIT_ENV = "PRIVACY_PIPELINE_KILL_AT_COMMIT"
_commit_points_passed = 0


def _commit_point(uri: str) -> None:
    spec = os.environ.get(KILL_AT_COMMIT_ENV)
    if not spec:
        return
    global _commit_points_passed
    ordinal, _, pattern = spec.partition(":")
    if not fnmatch.fnmatchcase(uri, pattern or "*"):
        return
    _commit_points_passed += 1
    if _commit_points_passed == int(ordinal):
        os.write(2, f"{KILL_AT_COMMIT_ENV}: killed at commit point {ordinal}, {uri}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    # GCS object generation; locally the file's mtime in ns, which os.replace
    # changes on every committed write.
    generation: int


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def join(base: str, *parts: str) -> str:
    """Join URI segments with single slashes, keeping the scheme intact."""
    joined = base.rstrip("/")
    for part in parts:
        joined = f"{joined}/{part.strip('/')}"
    return joined


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    return Path(uri)


def _split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise StageError(f"storage: {uri!r} names no bucket")
    return bucket, name


@functools.cache
def _gcs_client() -> Any:
    from google.cloud import storage as gcs  # type: ignore[import-untyped]

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # The emulator accepts anonymous requests; without this the client
        # goes looking for Application Default Credentials and fails.
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT", "privacy-intent-local"),
            credentials=AnonymousCredentials(),
        )
    return gcs.Client()


def _blob(uri: str) -> Any:
    bucket, name = _split_gcs(uri)
    return _gcs_client().bucket(bucket).blob(name)


def exists(uri: str) -> bool:
    if is_gcs(uri):
        return bool(_blob(uri).exists())
    return _local_path(uri).is_file()


def stat(uri: str) -> ObjectInfo:
    if is_gcs(uri):
        blob = _blob(uri)
        blob.reload()
        return ObjectInfo(uri=uri, size=int(blob.size or 0), generation=int(blob.generation or 0))
    st = _local_path(uri).stat()
    return ObjectInfo(uri=uri, size=st.st_size, generation=st.st_mtime_ns)


def read_bytes(uri: str) -> bytes:
    try:
        if is_gcs(uri):
            return bytes(_blob(uri).download_as_bytes())
        return _local_path(uri).read_bytes()
    except FileNotFoundError as exc:
        raise StageError(f"storage: {uri} does not exist") from exc
    except Exception as exc:
        if type(exc).__name__ == "NotFound":
            raise StageError(f"storage: {uri} does not exist") from exc
        raise


def write_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Write ``data`` to ``uri`` atomically, replacing any existing object."""
    if is_gcs(uri):
        _commit_point(uri)
        _blob(uri).upload_from_string(data, content_type=content_type)
        return
    _replace_file(uri, _local_path(uri), data)


def _replace_file(uri: str, path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    """The one local commit: ``data`` synced to a temp file beside ``path``, then ``os.replace`` over it.

    ``mtime_ns`` stamps the temp file before the rename (the generation compare_and_swap hands out).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mtime_ns is not None:
            os.utime(tmp_name, ns=(mtime_ns, mtime_ns))
        _commit_point(uri)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"), content_type="text/plain; charset=utf-8")


def read_json(uri: str) -> Any:
    raw = read_bytes(uri)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StageError(f"storage: {uri} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def json_bytes(payload: Any) -> bytes:
    """The one JSON form of every object we write: indented, keys sorted, UTF-8, a final newline.

    ``write_json`` writes these bytes; compare-and-swap writers (registry
    pointers, the vector store's ``latest.json``) pass them to ``compare_and_swap``.
    """
    return (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def write_json(uri: str, payload: Any) -> None:
    write_bytes(uri, json_bytes(payload), content_type="application/json")


def list_uris(prefix: str) -> list[str]:
    """Every object under ``prefix`` (recursively), sorted, hidden temp files excluded."""
    if is_gcs(prefix):
        bucket, name = _split_gcs(prefix)
        if name and not name.endswith("/"):
            name += "/"
        blobs = _gcs_client().list_blobs(bucket, prefix=name)
        return sorted(f"{GCS_SCHEME}{bucket}/{blob.name}" for blob in blobs if not blob.name.endswith("/"))
    root = _local_path(prefix)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    scheme = "file://" if prefix.startswith("file://") else ""
    return sorted(f"{scheme}{p}" for p in found)


@dataclass(frozen=True)
class ListedObject:
    uri: str
    size: int
    # When the object was last written: GCS's ``updated``, locally the file's mtime.
    updated: datetime


def list_objects(prefix: str) -> list[ListedObject]:
    """``list_uris`` with each object's size and last write time, from the one listing."""
    if is_gcs(prefix):
        bucket, name = _split_gcs(prefix)
        if name and not name.endswith("/"):
            name += "/"
        return sorted(
            (
                ListedObject(f"{GCS_SCHEME}{bucket}/{blob.name}", int(blob.size or 0), blob.updated)
                for blob in _gcs_client().list_blobs(bucket, prefix=name)
                if not blob.name.endswith("/")
            ),
            key=lambda listed: listed.uri,
        )
    listed = []
    for uri in list_uris(prefix):
        st = _local_path(uri).stat()
        listed.append(ListedObject(uri, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
    return listed


def delete(uri: str) -> None:
    if is_gcs(uri):
        blob = _blob(uri)
        if blob.exists():
            blob.delete()
        return
    _local_path(uri).unlink(missing_ok=True)


def open_bytes(uri: str) -> io.BytesIO:
    return io.BytesIO(read_bytes(uri))


class GenerationMismatch(Exception):
    """Another writer moved the object since we read it: re-read and retry."""


def compare_and_swap(uri: str, data: bytes, expected_generation: int) -> int:
    """Replace ``uri`` with ``data`` only if its generation is still ``expected_generation``.

    ``expected_generation == 0`` means "only if the object does not exist yet".
    Returns the new generation; raises ``GenerationMismatch`` when another
    writer got there first.
    """
    if is_gcs(uri):
        from google.api_core.exceptions import PreconditionFailed

        blob = _blob(uri)
        _commit_point(uri)
        try:
            # GCS refuses the write with 412 unless the live generation is
            # still the expected one (0: no live object); the tests run this
            # branch against embedded/gcs_emulator.py, which enforces the same.
            blob.upload_from_string(data, content_type="application/json", if_generation_match=expected_generation)
        except PreconditionFailed as exc:
            raise GenerationMismatch(uri) from exc
        return int(blob.generation or 0)

    path = _local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            current = path.stat().st_mtime_ns if path.exists() else 0
            if current != expected_generation:
                raise GenerationMismatch(uri)
            # Under the lock no other writer can land in the same nanosecond,
            # but a coarse filesystem clock could repeat the old mtime; bump it.
            new_generation = max(current + 1, time.time_ns())
            _replace_file(uri, path, data, mtime_ns=new_generation)
            return new_generation
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class PointerSnapshot:
    """A JSON pointer as read (None: there is none yet), with the generation a swap must still find (0: absent)."""

    pointer: dict[str, Any] | None
    generation: int


def read_pointer(uri: str, required: tuple[str, ...], error_prefix: str, what: str) -> PointerSnapshot:
    """The JSON object at ``uri`` and its generation; one missing any of ``required`` is a one-line error."""
    if not exists(uri):
        return PointerSnapshot(pointer=None, generation=0)
    # Generation first, content second: if another writer lands in between we
    # hold newer content with an older generation, and a swap fails safely
    # instead of succeeding on a decision made against a stale pointer.
    generation = stat(uri).generation
    pointer = read_json(uri)
    if not isinstance(pointer, dict) or not all(pointer.get(key) for key in required):
        needs = " and ".join(repr(key) for key in required)
        raise StageError(f"{error_prefix}: {uri} is not a {what} (needs {needs})")
    return PointerSnapshot(pointer=pointer, generation=generation)


@dataclass(frozen=True)
class PointerUpdate:
    """The pointer after ``update_pointer``; ``generation`` is the swap's when ``moved``, else the one read."""

    pointer: dict[str, Any] | None
    generation: int
    moved: bool


def update_pointer(
    uri: str,
    read: Callable[[], PointerSnapshot],
    decide: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    gave_up: str,
    max_attempts: int = MAX_POINTER_SWAP_ATTEMPTS,
) -> PointerUpdate:
    """Move the JSON pointer at ``uri`` to what ``decide`` returns, re-deciding whenever another writer moved it first.

    ``read`` returns the pointer and its generation (``read_pointer`` with the
    caller's checks); ``decide`` gets the pointer (None when there is none) and
    returns the new one, or None to keep it. ``decide`` runs again after every
    lost race, so it must judge the pointer it is given, not one it saw before;
    a decision to keep counts only if the pointer did not move meanwhile. After
    ``max_attempts`` lost races, ``gave_up`` is the error.
    """
    for attempt in range(1, max_attempts + 1):
        snapshot = read()
        new_pointer = decide(snapshot.pointer)
        if new_pointer is None:
            still = stat(uri).generation if exists(uri) else 0
            if still == snapshot.generation:
                return PointerUpdate(pointer=snapshot.pointer, generation=snapshot.generation, moved=False)
        else:
            try:
                generation = compare_and_swap(uri, json_bytes(new_pointer), snapshot.generation)
            except GenerationMismatch:
                pass
            else:
                return PointerUpdate(pointer=new_pointer, generation=generation, moved=True)
        log.info("pointer %s moved while deciding (attempt %d); re-reading and re-deciding", uri, attempt)
    raise StageError(gave_up)
