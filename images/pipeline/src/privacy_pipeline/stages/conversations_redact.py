"""``conversations-redact``: the validated conversations with PII replaced, the only text the job stores.

Re-reads the source parts validate checked (refusing if one changed since),
takes the validated conversations, and replaces in every message (user and
agent) each kind of PII conversations/redaction.py detects (emails, IBANs,
IPs, cards, US SSNs, UK NI numbers, postcodes, street addresses, phone
numbers) with its placeholder (``[EMAIL]``, ``[IBAN]``, ...). The XCom's
``redactions`` counts each kind, zeros included. Everything downstream
(embeddings, tags, snippets, the store) is computed from this output.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from typing import Any

import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations.layout import REDACT, VALIDATE, ConversationsLayout
from privacy_pipeline.conversations.redaction import KINDS, redact
from privacy_pipeline.conversations.schema import (
    USER_ROLE,
    Conversation,
    SourcePart,
    SourceRecord,
    parse_conversation,
    read_part,
)
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "conversations-redact"
SNIPPET_TURN_SEPARATOR = " / "
REDACTED_COLUMNS = [
    "conversation_id", "day", "user_id_hash", "started_at", "ended_at", "n_messages", "messages", "user_text",
    "snippet",
]  # fmt: skip


def _read_validated(uri: str) -> pd.DataFrame:
    if not storage.exists(uri):
        raise StageError(f"{STAGE}: {uri} is missing although conversations-validate completed; rerun validate")
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def _source_records(parts: list[dict[str, Any]]) -> dict[tuple[str, int], SourceRecord]:
    """Every record of the validated parts by (part URI, line/row), after checking each part is unchanged."""
    records: dict[tuple[str, int], SourceRecord] = {}
    for entry in parts:
        uri, validated_generation = str(entry["uri"]), int(entry["generation"])
        if not storage.exists(uri):
            raise StageError(f"{STAGE}: {uri} was validated but is gone; rerun conversations-validate")
        info = storage.stat(uri)
        if info.generation != validated_generation:
            raise StageError(
                f"{STAGE}: {uri} changed since conversations-validate checked it (generation {info.generation}, "
                f"validated {validated_generation}); rerun conversations-validate"
            )
        part = SourcePart(uri=uri, size=info.size, generation=info.generation)
        for record in read_part(part, STAGE):
            records[(uri, record.index)] = record
    return records


def _redacted_row(conversation: Conversation, validated: Any, snippet_chars: int, counts: Counter[str]) -> dict:
    messages = []
    user_turns = []
    for message in conversation.messages:
        redaction = redact(message.text)
        counts.update(redaction.counts)
        messages.append({"role": message.role, "text": redaction.text, "timestamp": message.timestamp})
        if message.role == USER_ROLE and redaction.text.strip():
            user_turns.append(redaction.text.strip())
    user_text = "\n".join(user_turns)
    snippet = SNIPPET_TURN_SEPARATOR.join(user_turns)
    if len(snippet) > snippet_chars:
        snippet = snippet[: snippet_chars - 1].rstrip() + "…"
    return {
        "conversation_id": conversation.conversation_id,
        "day": validated.day,
        "user_id_hash": validated.user_id_hash,
        "started_at": validated.started_at,
        "ended_at": validated.ended_at,
        "n_messages": len(messages),
        "messages": messages,
        "user_text": user_text,
        "snippet": snippet,
    }


def run(*, config: PipelineConfig, run_uri: str) -> StageResult:
    layout = ConversationsLayout(run_uri)
    validate_result = layout.require(VALIDATE, needed_by=STAGE)
    validated = _read_validated(layout.validated)
    records = _source_records(list(validate_result.get("parts", [])))

    counts: Counter[str] = Counter()
    rows = []
    with_pii = 0
    for row in validated.itertuples(index=False):
        record = records.get((row.source_uri, int(row.source_index)))
        parsed = parse_conversation(record.payload) if record is not None and record.payload is not None else None
        if not isinstance(parsed, Conversation) or parsed.conversation_id != row.conversation_id:
            raise StageError(
                f"{STAGE}: conversation {row.conversation_id} is no longer at index {row.source_index} of "
                f"{row.source_uri}; rerun conversations-validate"
            )
        before = sum(counts.values())
        rows.append(_redacted_row(parsed, row, config.conversations.snippet_chars, counts))
        with_pii += sum(counts.values()) > before

    storage.write_bytes(layout.redacted, tabular.parquet_bytes(pd.DataFrame(rows, columns=REDACTED_COLUMNS)))

    redactions = {kind: counts.get(kind, 0) for kind in KINDS}
    log.info("redacted %s in %d of %d conversations", redactions, with_pii, len(rows))
    return StageResult(
        stage=STAGE,
        summary=(
            f"{STAGE}: {len(rows)} conversations, PII redacted in {with_pii} ("
            + ", ".join(f"{count} {kind}" for kind, count in redactions.items())
            + ")"
        ),
        xcom={
            "redacted_uri": layout.redacted,
            "day": validate_result.get("day"),
            "conversations": len(rows),
            "conversations_with_pii": with_pii,
            "redactions": redactions,
        },
        commit_uri=layout.result(REDACT),
    )
