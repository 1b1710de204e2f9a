"""``conversations-validate``: check a day's conversations and index the usable ones.

Reads every JSONL/Parquet part under ``--source``. A record is quarantined
when it cannot be parsed (reported with its line number), breaks the schema,
has no user text, is oversized, repeats an earlier conversation id (the first
is kept), or has an id that contains an email address. Up to
``conversations.max_bad_fraction`` of the day is quarantined; above it the
stage fails naming the first problem.

The output is normalised Parquet *without the text*: one row per valid
conversation with its id, day, source part and line, counts and times. The
raw text, PII included, is never copied into the run; redact re-reads the
source parts (checking their generations are the ones validated here) and
stores only redacted text. The user id is kept only as ``user_id_hash``, an
HMAC under the key the pseudonym Secret holds (``PIPELINE_PSEUDONYM_SECRET_PATH``);
without that key the stage fails rather than hash without one.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pandas as pd  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations.layout import VALIDATE, ConversationsLayout
from privacy_pipeline.conversations.redaction import contains_email
from privacy_pipeline.conversations.schema import (
    USER_ROLE,
    Conversation,
    Problem,
    SourceRecord,
    list_parts,
    load_pseudonym_key,
    parse_conversation,
    parse_day,
    partition_day,
    read_part,
    user_id_hash,
)
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "conversations-validate"
# Problems listed in report.json; the quarantine file has all of them.
REPORTED_PROBLEMS = 50


def _day(source: str, day: str | None) -> str:
    from_partition = partition_day(source)
    if day is None and from_partition is None:
        raise StageError(f"{STAGE}: {source} is not a ds=YYYY-MM-DD partition; pass --day")
    if day is not None and from_partition is not None and parse_day(day, STAGE) != from_partition:
        raise StageError(f"{STAGE}: --day {day} disagrees with the partition ds={from_partition} of {source}")
    return parse_day(day or str(from_partition), STAGE)


def _check(record: SourceRecord, config: PipelineConfig) -> Conversation | Problem:
    if record.problem is not None:
        return record.problem
    assert record.payload is not None
    raw_id = record.payload.get("conversation_id")
    if isinstance(raw_id, str) and contains_email(raw_id):
        # Ids built from a user's email would carry it into every stored row. The
        # id must not reach the quarantine file either, so the problem does not
        # name it. (Digits are not checked: numeric ids are common and harmless.)
        return Problem("email_in_conversation_id", "has a conversation_id that contains an email address")
    parsed = parse_conversation(record.payload)
    if isinstance(parsed, Problem):
        return parsed
    limits = config.conversations
    if not parsed.user_text:
        return Problem("empty", "has no user text to embed", parsed.conversation_id)
    if len(parsed.messages) > limits.max_messages:
        detail = f"has {len(parsed.messages)} messages (conversations.max_messages is {limits.max_messages})"
        return Problem("oversized", detail, parsed.conversation_id)
    if parsed.chars > limits.max_conversation_chars:
        detail = (
            f"has {parsed.chars} characters (conversations.max_conversation_chars is {limits.max_conversation_chars})"
        )
        return Problem("oversized", detail, parsed.conversation_id)
    return parsed


def _valid_row(conversation: Conversation, record: SourceRecord, day: str, pseudonym_key: bytes) -> dict[str, Any]:
    timestamps = sorted(m.timestamp for m in conversation.messages)
    return {
        "conversation_id": conversation.conversation_id,
        "day": day,
        "source_uri": record.part.uri,
        "source_index": record.index,
        "n_messages": len(conversation.messages),
        "n_user_messages": sum(m.role == USER_ROLE for m in conversation.messages),
        "chars": conversation.chars,
        "started_at": timestamps[0] if timestamps else None,
        "ended_at": timestamps[-1] if timestamps else None,
        "user_id_hash": user_id_hash(conversation.user_id, pseudonym_key),
    }


VALID_COLUMNS = [
    "conversation_id", "day", "source_uri", "source_index", "n_messages", "n_user_messages", "chars",
    "started_at", "ended_at", "user_id_hash",
]  # fmt: skip
QUARANTINE_COLUMNS = ["conversation_id", "source_uri", "source_index", "reason", "detail"]


def run(*, config: PipelineConfig, source: str, run_uri: str, day: str | None = None) -> StageResult:
    layout = ConversationsLayout(run_uri)
    day = _day(source, day)
    pseudonym_key = load_pseudonym_key(STAGE)
    parts = list_parts(source, STAGE)
    records_by_part = {part.uri: read_part(part, STAGE) for part in parts}
    total = sum(len(records) for records in records_by_part.values())
    if total == 0:
        raise StageError(f"{STAGE}: {source} holds no conversations ({len(parts)} part file(s), all empty)")

    valid: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []
    first_seen: dict[str, str] = {}
    for records in records_by_part.values():
        for record in records:
            checked = _check(record, config)
            if isinstance(checked, Conversation) and checked.conversation_id in first_seen:
                earlier = first_seen[checked.conversation_id]
                checked = Problem("duplicate_id", f"repeats the conversation of {earlier}", checked.conversation_id)
            if isinstance(checked, Problem):
                quarantined.append(
                    {
                        "conversation_id": checked.conversation_id,
                        "source_uri": record.part.uri,
                        "source_index": record.index,
                        "reason": checked.reason,
                        "detail": record.describe(checked),
                    }
                )
                continue
            first_seen[checked.conversation_id] = record.where
            valid.append(_valid_row(checked, record, day, pseudonym_key))

    reasons = Counter(row["reason"] for row in quarantined)
    limit = config.conversations.max_bad_fraction
    if quarantined and (len(quarantined) > limit * total or not valid):
        reason, count = reasons.most_common(1)[0]
        raise StageError(
            f"{STAGE}: {quarantined[0]['detail']}; {len(quarantined)} of {total} conversations in {source} are "
            f"unusable, more than conversations.max_bad_fraction {limit:.0%} (most common: {reason}, {count}); "
            "nothing was written"
        )

    report = {
        "source": source,
        "day": day,
        "parts": [
            {"uri": p.uri, "size": p.size, "generation": p.generation, "records": len(records_by_part[p.uri])}
            for p in parts
        ],
        "conversations_in": total,
        "conversations_valid": len(valid),
        "conversations_quarantined": len(quarantined),
        "reasons": dict(sorted(reasons.items())),
        "problems": [row["detail"] for row in quarantined[:REPORTED_PROBLEMS]],
        "thresholds": {
            "max_bad_fraction": limit,
            "max_messages": config.conversations.max_messages,
            "max_conversation_chars": config.conversations.max_conversation_chars,
        },
    }
    validated_bytes = tabular.parquet_bytes(pd.DataFrame(valid, columns=VALID_COLUMNS))
    quarantine_bytes = tabular.parquet_bytes(pd.DataFrame(quarantined, columns=QUARANTINE_COLUMNS))
    storage.write_bytes(layout.validated, validated_bytes)
    storage.write_bytes(layout.quarantine, quarantine_bytes)
    storage.write_json(layout.validation_report, report)
    for row in quarantined[:REPORTED_PROBLEMS]:
        log.warning("quarantined: %s", row["detail"])

    summary = f"{STAGE}: {len(valid)} of {total} conversations of {day} valid, {len(quarantined)} quarantined"
    if reasons:
        summary += " (" + ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()) + ")"
    return StageResult(
        stage=STAGE,
        summary=summary,
        xcom={
            "day": day,
            "source": source,
            "validated_uri": layout.validated,
            "quarantine_uri": layout.quarantine,
            "report_uri": layout.validation_report,
            "conversations": len(valid),
            "quarantined": len(quarantined),
            "reasons": dict(sorted(reasons.items())),
            "parts": [{"uri": p.uri, "generation": p.generation} for p in parts],
        },
        commit_uri=layout.result(VALIDATE),
    )
