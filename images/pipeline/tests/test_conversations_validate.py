"""conversations-validate: bad records are reported at their line, quarantined under the threshold, fatal above it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from privacy_pipeline import cli, storage
from privacy_pipeline.config import load_config
from privacy_pipeline.conversations.layout import ConversationsLayout
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import conversations_validate

DAY = "2026-11-20"


def _conversation(number: int, text: str = "please delete my account") -> dict:
    return {
        "conversation_id": f"conv-{number:04d}",
        "user_id": f"user-{number % 7}",
        "messages": [
            {"role": "user", "text": text, "timestamp": f"{DAY}T10:00:00Z"},
            {"role": "agent", "text": "Happy to help.", "timestamp": f"{DAY}T10:01:00Z"},
        ],
    }


def _write_jsonl(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def partition(tmp_path: Path) -> Path:
    return tmp_path / "raw" / f"ds={DAY}"


@pytest.fixture
def run_uri(tmp_path: Path) -> str:
    return str(tmp_path / "runs" / "r1")


def _good_lines(count: int) -> list[str]:
    return [json.dumps(_conversation(i)) for i in range(count)]


def _validate(partition: Path, run_uri: str, **overrides: str):
    config = load_config(None, [f"conversations.{k}={v}" for k, v in overrides.items()])
    return conversations_validate.run(config=config, source=str(partition) + "/", run_uri=run_uri)


def test_a_clean_day_is_indexed_without_its_text(partition: Path, run_uri: str) -> None:
    _write_jsonl(partition / "part-0000.jsonl", _good_lines(30))
    result = _validate(partition, run_uri)
    assert result.xcom["conversations"] == 30 and result.xcom["quarantined"] == 0
    assert result.xcom["day"] == DAY
    validated = pd.read_parquet(ConversationsLayout(run_uri).validated)
    assert len(validated) == 30 and set(validated["day"]) == {DAY}
    assert "text" not in validated.columns and "messages" not in validated.columns
    assert "user_id" not in validated.columns and validated["user_id_hash"].str.len().eq(16).all()
    assert validated["source_index"].tolist() == list(range(1, 31))


def test_a_broken_line_is_quarantined_with_its_line_number(partition: Path, run_uri: str) -> None:
    lines = _good_lines(40)
    lines[16] = '{"conversation_id": "conv-broken" "messages": []}'
    _write_jsonl(partition / "part-0000.jsonl", lines)
    result = _validate(partition, run_uri)
    assert result.xcom["quarantined"] == 1 and result.xcom["reasons"] == {"invalid_json": 1}
    quarantine = pd.read_parquet(ConversationsLayout(run_uri).quarantine)
    assert quarantine["detail"].tolist() == ["line 17 of part-0000.jsonl is not valid JSON (Expecting ',' delimiter)"]
    report = storage.read_json(ConversationsLayout(run_uri).validation_report)
    assert report["problems"] == quarantine["detail"].tolist()


def test_broken_lines_above_the_threshold_fail_naming_the_first_line(partition: Path, run_uri: str) -> None:
    lines = [*_good_lines(6), '{"conversation_id": "conv-x", "messages": [', "not json at all"]
    _write_jsonl(partition / "part-0000.jsonl", lines)
    with pytest.raises(StageError) as failure:
        _validate(partition, run_uri)
    message = str(failure.value)
    assert message.startswith("conversations-validate: line 7 of part-0000.jsonl is not valid JSON (")
    assert "2 of 8 conversations" in message and "max_bad_fraction" in message
    assert storage.list_uris(run_uri) == []


@pytest.mark.parametrize(
    ("record", "reason", "detail"),
    [
        ({"messages": []}, "bad_conversation_id", "has no conversation_id"),
        ({"conversation_id": "c-1", "messages": "hi"}, "bad_messages", "messages is a str, not a list"),
        (
            {"conversation_id": "c-1", "messages": [{"role": "bot", "text": "x", "timestamp": "2026-11-20T10:00:00Z"}]},
            "bad_message",
            "message 0 has role 'bot'",
        ),
        (
            {"conversation_id": "c-1", "messages": [{"role": "user", "text": "x", "timestamp": "yesterday"}]},
            "bad_message",
            "no ISO 8601 or epoch timestamp",
        ),
        (
            {"conversation_id": "c-1", "messages": [{"role": "agent", "text": "hi", "timestamp": 1763632800}]},
            "empty",
            "has no user text",
        ),
        ({"conversation_id": "c-1", "messages": []}, "empty", "has no user text"),
        ({"conversation_id": "jane@example.com-1", "messages": []}, "email_in_conversation_id", "contains an email"),
        ([1, 2, 3], "not_an_object", "is a JSON list, not an object"),
    ],
    ids=["no-id", "messages-not-list", "bad-role", "bad-timestamp", "agent-only", "no-messages", "email-id", "list"],
)
def test_each_schema_problem_is_named(partition: Path, run_uri: str, record, reason: str, detail: str) -> None:
    _write_jsonl(partition / "part-0000.jsonl", [*_good_lines(30), json.dumps(record)])
    result = _validate(partition, run_uri)
    assert result.xcom["reasons"] == {reason: 1}
    quarantine = pd.read_parquet(ConversationsLayout(run_uri).quarantine)
    assert quarantine["detail"].iloc[0].startswith("line 31 of part-0000.jsonl")
    assert detail in quarantine["detail"].iloc[0]
    assert "jane@example.com" not in quarantine.to_json()


def test_duplicates_keep_the_first_and_oversized_conversations_are_quarantined(partition: Path, run_uri: str) -> None:
    lines = _good_lines(40)
    lines.append(json.dumps(_conversation(3)))
    lines.append(json.dumps(_conversation(99, text="x" * 500)))
    _write_jsonl(partition / "part-0000.jsonl", lines)
    result = _validate(partition, run_uri, max_conversation_chars="400")
    assert result.xcom["reasons"] == {"duplicate_id": 1, "oversized": 1}
    details = pd.read_parquet(ConversationsLayout(run_uri).quarantine)["detail"].tolist()
    assert "line 41 of part-0000.jsonl (conversation conv-0003): repeats the conversation of line 4" in details[0]
    assert "characters (conversations.max_conversation_chars is 400)" in details[1]


def test_parquet_parts_and_several_parts_are_read(partition: Path, run_uri: str) -> None:
    partition.mkdir(parents=True)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([_conversation(i) for i in range(100, 120)]), buffer)
    (partition / "part-0001.parquet").write_bytes(buffer.getvalue())
    _write_jsonl(partition / "part-0000.jsonl", _good_lines(10))
    (partition / "_SUCCESS").write_text("")
    result = _validate(partition, run_uri)
    assert result.xcom["conversations"] == 30 and len(result.xcom["parts"]) == 2


def test_day_comes_from_the_partition_or_day_and_they_must_agree(tmp_path: Path, run_uri: str) -> None:
    unpartitioned = tmp_path / "drop"
    _write_jsonl(unpartitioned / "part-0000.jsonl", _good_lines(5))
    with pytest.raises(StageError, match="not a ds=YYYY-MM-DD partition; pass --day"):
        conversations_validate.run(config=load_config(), source=str(unpartitioned), run_uri=run_uri)
    result = conversations_validate.run(config=load_config(), source=str(unpartitioned), run_uri=run_uri, day=DAY)
    assert result.xcom["day"] == DAY
    partitioned = tmp_path / "raw" / f"ds={DAY}"
    _write_jsonl(partitioned / "part-0000.jsonl", _good_lines(5))
    with pytest.raises(StageError, match="disagrees with the partition ds=2026-11-20"):
        conversations_validate.run(config=load_config(), source=str(partitioned), run_uri=run_uri, day="2026-11-21")


def test_an_empty_source_is_refused(partition: Path, run_uri: str) -> None:
    with pytest.raises(StageError, match="no .jsonl or .parquet conversation files"):
        _validate(partition, run_uri)
    _write_jsonl(partition / "part-0000.jsonl", [""])
    with pytest.raises(StageError, match="holds no conversations"):
        _validate(partition, run_uri)


def test_the_cli_reports_a_broken_day_in_one_line_and_exits_2(partition: Path, run_uri: str, capsys) -> None:
    _write_jsonl(partition / "part-0000.jsonl", ["{broken", *_good_lines(3)])
    code = cli.main(["conversations-validate", "--source", str(partition), "--run", run_uri])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: conversations-validate: line 1 of part-0000.jsonl is not valid JSON")
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
