"""``synth-conversations``: one day of synthetic support conversations, the daily job's input form.

Writes ``--out`` as JSONL (one conversation per line) or Parquet, by its suffix.
Not part of a run: no commit marker.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import pyarrow as pa  # type: ignore[import-untyped]

from privacy_pipeline import storage, tabular
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.conversations.schema import parse_day
from privacy_pipeline.conversations.synth import NEGATIVE, generate_day
from privacy_pipeline.errors import StageError
from privacy_pipeline.stage_result import StageResult

log = logging.getLogger(__name__)

STAGE = "synth-conversations"


def run(*, config: PipelineConfig, out: str, day: str, conversations: int = 500, seed: int = 7) -> StageResult:
    day = parse_day(day, STAGE)
    if conversations <= 0:
        raise StageError(f"{STAGE}: --conversations must be positive, got {conversations}")
    if out.endswith(".parquet"):
        fmt = "parquet"
    elif out.endswith((".jsonl", ".json", ".ndjson")):
        fmt = "jsonl"
    else:
        raise StageError(f"{STAGE}: --out {out} must end in .jsonl or .parquet")

    synthetic = generate_day(day, conversations, seed)
    if fmt == "jsonl":
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in synthetic.records).encode("utf-8")
    else:
        data = tabular.parquet_bytes(pa.Table.from_pylist(synthetic.records))
    storage.write_bytes(out, data)

    intents = Counter(record["synthetic_intent"] for record in synthetic.records)
    privacy = conversations - intents.get(NEGATIVE, 0)
    log.info("wrote %d conversations of %s to %s", conversations, day, out)
    return StageResult(
        stage=STAGE,
        summary=(
            f"{STAGE}: wrote {conversations} conversations of {day} ({privacy} privacy requests, "
            f"{len(synthetic.pii)} with PII) to {out}"
        ),
        xcom={
            "uri": out,
            "day": day,
            "conversations": conversations,
            "privacy_conversations": privacy,
            "intent_counts": dict(sorted(intents.items())),
            "conversations_with_pii": len(synthetic.pii),
            "format": fmt,
        },
    )
