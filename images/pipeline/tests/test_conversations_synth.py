"""synth-conversations: realistic days, deterministic per (seed, day), privacy requests and PII in the right amounts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from privacy_pipeline.config import INTENTS, load_config
from privacy_pipeline.conversations import synth
from privacy_pipeline.conversations.redaction import redact
from privacy_pipeline.conversations.schema import Conversation, parse_conversation
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import synth_conversations


def _write(path: Path, day: str = "2026-11-20", conversations: int = 400, seed: int = 7):
    return synth_conversations.run(config=load_config(), out=str(path), day=day, conversations=conversations, seed=seed)


def test_same_seed_and_day_give_identical_bytes(tmp_path: Path) -> None:
    _write(tmp_path / "a.jsonl")
    _write(tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_different_days_give_different_conversations_with_ids_unique_per_day() -> None:
    day1 = synth.generate_day("2026-11-20", 300, seed=7).records
    day2 = synth.generate_day("2026-11-21", 300, seed=7).records
    ids1, ids2 = {r["conversation_id"] for r in day1}, {r["conversation_id"] for r in day2}
    assert len(ids1) == len(ids2) == 300 and not ids1 & ids2
    texts1 = [m["text"] for r in day1 for m in r["messages"]]
    texts2 = [m["text"] for r in day2 for m in r["messages"]]
    assert texts1 != texts2
    assert all(m["timestamp"].startswith("2026-11-21") for r in day2 for m in r["messages"])


def test_about_fifteen_percent_carry_privacy_requests_of_every_intent() -> None:
    records = synth.generate_day("2026-11-20", 2000, seed=3).records
    intents = Counter(r["synthetic_intent"] for r in records)
    assert set(intents) == set(INTENTS)
    privacy_share = 1 - intents[synth.NEGATIVE] / len(records)
    assert 0.11 < privacy_share < 0.19


def test_every_record_meets_the_source_schema_and_varies(tmp_path: Path) -> None:
    records = synth.generate_day("2026-11-20", 300, seed=5).records
    parsed = [parse_conversation(r) for r in records]
    assert all(isinstance(p, Conversation) and p.user_text for p in parsed)
    roles = Counter(m["role"] for r in records for m in r["messages"])
    assert roles["user"] > 300 and roles["agent"] > 300
    assert len({p.user_text for p in parsed if isinstance(p, Conversation)}) > 150


def test_pii_is_sprinkled_in_and_every_planted_value_is_redactable() -> None:
    day = synth.generate_day("2026-11-20", 400, seed=9)
    assert 0.3 < len(day.pii) / 400 < 0.6
    kinds = Counter()
    for record in day.records:
        planted = day.pii.get(record["conversation_id"], [])
        for message in record["messages"]:
            result = redact(message["text"])
            kinds.update(result.counts)
            assert not any(value in result.text for value in planted), message["text"]
    assert {"email", "phone", "card", "ip"} <= set(kinds)


def test_parquet_output_has_the_same_records(tmp_path: Path) -> None:
    result = _write(tmp_path / "part-0000.parquet", conversations=50)
    frame = pd.read_parquet(tmp_path / "part-0000.parquet")
    assert result.xcom["format"] == "parquet" and len(frame) == 50
    jsonl = tmp_path / "part-0000.jsonl"
    _write(jsonl, conversations=50)
    first = json.loads(jsonl.read_text(encoding="utf-8").splitlines()[0])
    assert frame.iloc[0]["conversation_id"] == first["conversation_id"]
    assert [m["text"] for m in frame.iloc[0]["messages"]] == [m["text"] for m in first["messages"]]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="must end in .jsonl or .parquet"):
        _write(tmp_path / "out.csv")
    with pytest.raises(StageError, match="day '20-11-2026' is not a date"):
        _write(tmp_path / "out.jsonl", day="20-11-2026")
    with pytest.raises(StageError, match="--conversations must be positive"):
        _write(tmp_path / "out.jsonl", conversations=0)
    assert not list(tmp_path.iterdir())
