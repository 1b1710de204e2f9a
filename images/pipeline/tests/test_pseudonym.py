"""user_id_hash: a keyed pseudonym (HMAC-SHA256) that a list of user ids cannot reverse, and whose key leaks nowhere."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from privacy_pipeline import cli
from privacy_pipeline.config import load_config
from privacy_pipeline.conversations.layout import ConversationsLayout
from privacy_pipeline.conversations.schema import PSEUDONYM_SECRET_ENV, user_id_hash
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import conversations_validate

DAY = "2026-11-20"
KEY = b"k" * 32
OTHER_KEY = b"o" * 32
# Planted as the key: it must not reach an XCom, a log line or an object the stages write.
CANARY_KEY = "canary-pseudonym-key-5d0e7a91-do-not-log"


def _unkeyed_hash(user_id: str) -> str:
    """What user_id_hash was before it took a key: anyone could recompute it from a list of user ids."""
    return hashlib.sha256(f"user:{user_id}".encode()).hexdigest()[:16]


def test_the_same_user_gets_the_same_pseudonym_under_one_key() -> None:
    assert user_id_hash("user-42", KEY) == user_id_hash("user-42", KEY)
    assert user_id_hash("user-42", KEY) != user_id_hash("user-43", KEY)
    assert user_id_hash(None, KEY) is None


def test_another_key_gives_another_pseudonym() -> None:
    assert user_id_hash("user-42", KEY) != user_id_hash("user-42", OTHER_KEY)


def test_the_pseudonym_is_not_the_unkeyed_hash() -> None:
    # HMAC-SHA256 of "user:user-42" under b"k" * 32, computed independently (RFC 2104 by hand below).
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in KEY.ljust(64, b"\0")) + b"user:user-42").digest()
    expected = hashlib.sha256(bytes(b ^ 0x5C for b in KEY.ljust(64, b"\0")) + inner).hexdigest()[:16]
    assert user_id_hash("user-42", KEY) == expected
    assert user_id_hash("user-42", KEY) != _unkeyed_hash("user-42")


def _write_day(partition: Path, users: list[str]) -> None:
    partition.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "conversation_id": f"conv-{number:04d}",
                "user_id": user,
                "messages": [{"role": "user", "text": "please delete my account", "timestamp": f"{DAY}T10:00:00Z"}],
            }
        )
        for number, user in enumerate(users)
    ]
    (partition / "part-0000.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _validated_hashes(tmp_path: Path, run: str) -> list[str]:
    partition = tmp_path / "raw" / f"ds={DAY}"
    _write_day(partition, ["alice", "bob", "alice"])
    run_uri = str(tmp_path / "runs" / run)
    conversations_validate.run(config=load_config(), source=str(partition) + "/", run_uri=run_uri)
    validated = pd.read_parquet(ConversationsLayout(run_uri).validated)
    return list(validated["user_id_hash"])


def test_validate_pseudonymises_with_the_mounted_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    monkeypatch.setenv(PSEUDONYM_SECRET_ENV, str(key_file))
    first = _validated_hashes(tmp_path, "r1")
    assert first == [user_id_hash("alice", KEY), user_id_hash("bob", KEY), user_id_hash("alice", KEY)]
    assert _validated_hashes(tmp_path, "r2") == first
    assert _unkeyed_hash("alice") not in first and _unkeyed_hash("bob") not in first

    key_file.write_bytes(OTHER_KEY)
    rotated = _validated_hashes(tmp_path, "r3")
    assert rotated[0] == rotated[2] and not set(rotated) & set(first)


@pytest.mark.parametrize(
    ("key_file_content", "expected"),
    [
        (None, f"{PSEUDONYM_SECRET_ENV} is not set"),
        ("missing", "cannot read the pseudonym key at"),
        (b"short", "has 5 bytes, fewer than 32"),
    ],
    ids=["unset", "missing-file", "short-key"],
)
def test_without_a_usable_key_validate_refuses_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_file_content: bytes | str | None, expected: str
) -> None:
    partition = tmp_path / "raw" / f"ds={DAY}"
    _write_day(partition, ["alice"])
    key_file = tmp_path / "key"
    if key_file_content is None:
        monkeypatch.delenv(PSEUDONYM_SECRET_ENV)
    else:
        monkeypatch.setenv(PSEUDONYM_SECRET_ENV, str(key_file))
        if isinstance(key_file_content, bytes):
            key_file.write_bytes(key_file_content)
    run_uri = str(tmp_path / "runs" / "r1")
    with pytest.raises(StageError, match=expected) as raised:
        conversations_validate.run(config=load_config(), source=str(partition) + "/", run_uri=run_uri)
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("conversations-validate: ")
    # Nothing was written: the day is not indexed with unkeyed (or no) pseudonyms.
    assert not (tmp_path / "runs").exists()


def test_the_key_is_in_no_xcom_log_or_object(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_file = tmp_path / "secret" / "key"
    key_file.parent.mkdir()
    key_file.write_text(CANARY_KEY, encoding="utf-8")
    monkeypatch.setenv(PSEUDONYM_SECRET_ENV, str(key_file))
    xcom = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("XCOM_RETURN_PATH", str(xcom))
    partition = tmp_path / "raw" / f"ds={DAY}"
    _write_day(partition, ["alice", "bob"])
    run_uri = str(tmp_path / "runs" / "r1")
    xcoms = []
    with caplog.at_level(logging.DEBUG):
        for argv in (
            ["--log-level", "DEBUG", "conversations-validate", "--source", str(partition), "--run", run_uri],
            ["--log-level", "DEBUG", "conversations-redact", "--run", run_uri],
        ):
            assert cli.main(argv) == 0
            xcoms.append(xcom.read_text(encoding="utf-8"))
    captured = capsys.readouterr()
    for where, text in [("xcom", "\n".join(xcoms)), ("stdout", captured.out), ("stderr", captured.err)]:
        assert CANARY_KEY not in text, where
    assert CANARY_KEY not in caplog.text
    written = [path for path in (tmp_path / "runs").rglob("*") if path.is_file()]
    assert written
    for path in written:
        assert CANARY_KEY.encode() not in path.read_bytes(), path
        if path.suffix == ".parquet":
            assert CANARY_KEY not in pd.read_parquet(io.BytesIO(path.read_bytes())).to_json(), path
