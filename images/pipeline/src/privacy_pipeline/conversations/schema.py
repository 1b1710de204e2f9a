"""The source schema of a day's conversations, read from JSONL or Parquet part files.

One record per conversation: ``conversation_id`` (string), ``messages`` (a list
of ``{role, text, timestamp}``) and an optional ``user_id``; other fields are
ignored. Every record keeps where it came from (``line 17 of part-0000.jsonl``,
``row 3 of part-0001.parquet``) so a problem can be reported at its place.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped]

from privacy_pipeline import storage
from privacy_pipeline.errors import StageError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
ROLES = ("agent", "system", "user")
USER_ROLE = "user"

# The file holding the key of user_id_hash (a mounted Kubernetes Secret), and that Secret's name.
PSEUDONYM_SECRET_ENV = "PIPELINE_PSEUDONYM_SECRET_PATH"
PSEUDONYM_SECRET_NAME = "privacy-pipeline-pseudonym-key"
# 256 bits: the HMAC-SHA256 block's worth of key is more than any brute force needs.
MIN_PSEUDONYM_KEY_BYTES = 32

_PARTITION_DAY = re.compile(r"(?:^|/)ds=(\d{4}-\d{2}-\d{2})(?:/|$)")


@dataclass(frozen=True)
class SourcePart:
    uri: str
    size: int
    # Recorded by validate and checked by redact: redact re-reads the source,
    # and must read the same bytes validate checked.
    generation: int

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_parquet(self) -> bool:
        return self.name.endswith(PARQUET_SUFFIXES)


@dataclass(frozen=True)
class Problem:
    """Why a record is unusable. ``detail`` never quotes message text: quarantine must not hold PII."""

    reason: str
    detail: str
    conversation_id: str | None = None


@dataclass(frozen=True)
class SourceRecord:
    part: SourcePart
    # 1-based line number in a JSONL part (what an editor shows), 0-based row
    # in a Parquet part (what pandas and pyarrow show).
    index: int
    payload: dict[str, Any] | None
    # Set when the record could not even be parsed (broken JSON, bad bytes).
    problem: Problem | None = None

    @property
    def where(self) -> str:
        unit = "row" if self.part.is_parquet else "line"
        return f"{unit} {self.index} of {self.part.name}"

    def describe(self, problem: Problem) -> str:
        """``line 17 of part-0000.jsonl is not valid JSON (...)``, or with the conversation named when known."""
        if problem.conversation_id is None:
            return f"{self.where} {problem.detail}"
        return f"{self.where} (conversation {problem.conversation_id}): {problem.detail}"


@dataclass(frozen=True)
class Message:
    role: str
    text: str
    # ISO 8601 in UTC, e.g. 2026-11-20T10:15:00Z
    timestamp: str


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    messages: tuple[Message, ...]
    user_id: str | None

    @property
    def user_text(self) -> str:
        """The user's turns joined: what the job embeds, tags and searches."""
        return "\n".join(m.text.strip() for m in self.messages if m.role == USER_ROLE and m.text.strip())

    @property
    def chars(self) -> int:
        return sum(len(m.text) for m in self.messages)


def partition_day(source: str) -> str | None:
    """``gs://b/raw/conversations/ds=2026-11-20/`` -> ``2026-11-20``."""
    match = _PARTITION_DAY.search(source)
    return match.group(1) if match else None


def parse_day(value: str, stage: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise StageError(f"{stage}: day {value!r} is not a date like 2026-11-20") from exc


def load_pseudonym_key(stage: str) -> bytes:
    """The secret key of ``user_id_hash``, from the file ``PIPELINE_PSEUDONYM_SECRET_PATH`` names.

    In a cluster that file is the mounted Secret (stage_pod.py); on the
    embedded stack a key generated once under .local/. There is no fallback:
    without a key, a list of user ids would reverse every pseudonym.
    """
    path = os.environ.get(PSEUDONYM_SECRET_ENV, "")
    if not path:
        raise StageError(
            f"{stage}: {PSEUDONYM_SECRET_ENV} is not set; mount the Secret {PSEUDONYM_SECRET_NAME} "
            "(README, Secrets) so user ids are pseudonymised with a key"
        )
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise StageError(f"{stage}: cannot read the pseudonym key at {path} ({exc.strerror})") from exc
    if len(key) < MIN_PSEUDONYM_KEY_BYTES:
        raise StageError(
            f"{stage}: the pseudonym key at {path} has {len(key)} bytes, fewer than {MIN_PSEUDONYM_KEY_BYTES} "
            "(make one with: openssl rand -hex 32)"
        )
    return key


def user_id_hash(user_id: str | None, key: bytes) -> str | None:
    """A pseudonymous key for "the same user" (HMAC-SHA256 under ``key``), so the raw user id is never stored.

    Keyed, so that hashing a list of known user ids does not reverse it; the
    same key gives the same pseudonym day after day, a new key new pseudonyms.
    """
    if user_id is None:
        return None
    return hmac.new(key, f"user:{user_id}".encode(), hashlib.sha256).hexdigest()[:16]


def list_parts(source: str, stage: str) -> list[SourcePart]:
    """The JSONL/Parquet part files of ``source`` (one file or a prefix), with their generations."""
    if source.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES) and storage.exists(source):
        uris = [source]
    else:
        uris = [
            uri
            for uri in storage.list_uris(source)
            if uri.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES) and not uri.rsplit("/", 1)[-1].startswith(("_", "."))
        ]
    if not uris:
        raise StageError(f"{stage}: no .jsonl or .parquet conversation files under {source}")
    parts = []
    for uri in uris:
        info = storage.stat(uri)
        parts.append(SourcePart(uri=uri, size=info.size, generation=info.generation))
    return parts


def read_part(part: SourcePart, stage: str) -> list[SourceRecord]:
    data = storage.read_bytes(part.uri)
    if part.is_parquet:
        return _read_parquet(part, data, stage)
    return _read_jsonl(part, data)


def _read_jsonl(part: SourcePart, data: bytes) -> list[SourceRecord]:
    records = []
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        if number == 1:
            raw_line = raw_line.removeprefix(b"\xef\xbb\xbf")
        if not raw_line.strip():
            continue
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            records.append(
                SourceRecord(
                    part, number, None, Problem("not_utf8", f"is not UTF-8 (bad byte at column {exc.start + 1})")
                )
            )
            continue
        try:
            payload = json.loads(line)
        except json.JSONDecodeError as exc:
            records.append(SourceRecord(part, number, None, Problem("invalid_json", f"is not valid JSON ({exc.msg})")))
            continue
        if not isinstance(payload, dict):
            kind = type(payload).__name__
            records.append(
                SourceRecord(part, number, None, Problem("not_an_object", f"is a JSON {kind}, not an object"))
            )
            continue
        records.append(SourceRecord(part, number, payload))
    return records


def _read_parquet(part: SourcePart, data: bytes, stage: str) -> list[SourceRecord]:
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:
        raise StageError(f"{stage}: {part.uri} is not a readable Parquet file ({exc})") from exc
    return [SourceRecord(part, row, payload) for row, payload in enumerate(table.to_pylist())]


def _timestamp(value: Any) -> str | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(float(value), tz=UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_conversation(payload: Mapping[str, Any]) -> Conversation | Problem:
    """The record as a ``Conversation``, or the first schema problem found."""
    conversation_id = payload.get("conversation_id")
    if isinstance(conversation_id, int) and not isinstance(conversation_id, bool):
        conversation_id = str(conversation_id)
    if not isinstance(conversation_id, str) or not conversation_id.strip():
        return Problem("bad_conversation_id", "has no conversation_id (a non-empty string)")
    user_id = payload.get("user_id")
    if user_id is not None and not isinstance(user_id, str | int):
        return Problem("bad_user_id", f"user_id is a {type(user_id).__name__}, not a string", conversation_id)
    raw_messages = payload.get("messages")
    if not isinstance(raw_messages, list):
        kind = "missing" if raw_messages is None else f"a {type(raw_messages).__name__}"
        return Problem("bad_messages", f"messages is {kind}, not a list", conversation_id)
    messages = []
    for position, raw in enumerate(raw_messages):
        if not isinstance(raw, Mapping):
            return Problem("bad_message", f"message {position} is not an object", conversation_id)
        role, text = raw.get("role"), raw.get("text")
        if role not in ROLES:
            expected = ", ".join(ROLES)
            return Problem(
                "bad_message",
                f"message {position} has role {str(role)[:20]!r} (expected one of {expected})",
                conversation_id,
            )
        if not isinstance(text, str):
            return Problem("bad_message", f"message {position} has no text string", conversation_id)
        timestamp = _timestamp(raw.get("timestamp"))
        if timestamp is None:
            return Problem("bad_message", f"message {position} has no ISO 8601 or epoch timestamp", conversation_id)
        messages.append(Message(role=role, text=text, timestamp=timestamp))
    return Conversation(
        conversation_id=conversation_id.strip(),
        messages=tuple(messages),
        user_id=None if user_id is None else str(user_id),
    )
