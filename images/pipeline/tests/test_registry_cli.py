"""``privacy-pipeline registry list|show VERSION|history [--json]``: the registry as a person or a script reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from privacy_pipeline import cli, registry, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.stages import rollback

FIRST, SECOND = "20261120T020000Z-aaaaaaaa", "20261121T020000Z-bbbbbbbb"
SECOND_REASON = (
    f"not promoted: +0.004 macro-F1 over champion {FIRST} on 150 holdout rows, 95% interval [-0.011, +0.019] includes 0"
)


def _record(registry_uri: str, version: str, promoted: bool, reason: str, gate: dict[str, Any]) -> None:
    layout = RegistryLayout(registry_uri)
    storage.write_bytes(layout.model(version), b"model")
    storage.write_json(layout.metadata(version), {"params": {"clf__C": 1.0}, "data": {"train_rows": 600}})
    storage.write_json(
        layout.run_record(version),
        {
            "version": version,
            "run_uri": f"gs://bucket/runs/{version}/",
            "registered_at": "2026-11-20T02:00:00Z",
            "model_uri": layout.model(version),
            "candidate_f1_macro": 0.81,
            "promoted": promoted,
            "decision_reason": reason,
            "gate": gate,
            "excluded_rows": 12,
        },
    )


@pytest.fixture
def registry_uri(tmp_path: Path) -> str:
    """FIRST promoted over the baseline, SECOND registered and refused, then FIRST rolled back to by hand."""
    uri = str(tmp_path / "registry")
    baseline_gate = {"against": "the majority-class baseline (always no_privacy_intent)", "difference": 0.62}
    _record(uri, FIRST, True, "first model: promoted", {**baseline_gate, "interval": [0.55, 0.69], "rows": 150})
    champion_gate = {"against": f"champion {FIRST}", "difference": 0.004, "interval": [-0.011, 0.019], "rows": 138}
    _record(uri, SECOND, False, SECOND_REASON, champion_gate)
    registry.cas_update_champion(
        uri,
        lambda current: {
            "version": FIRST,
            "model_uri": RegistryLayout(uri).model(FIRST),
            "promoted_at": "2026-11-20T02:00:00Z",
            "previous_version": None,
            "action": "promote",
            "by": "register",
            "reason": "first model: promoted",
        },
    )
    return uri


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_prints_every_version_with_its_interval_and_decision(registry_uri: str, capsys) -> None:
    code, out, _ = _cli(capsys, "registry", "list", "--registry", registry_uri)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "version",
        "macro-F1",
        "compared",
        "against",
        "difference",
        "interval",
        "excluded",
        "decision",
    ]
    first = next(line for line in lines if FIRST in line)
    second = next(line for line in lines if SECOND in line)
    assert first.startswith(f"* {FIRST}") and "+0.620" in first and "[+0.550, +0.690]" in first
    assert second.startswith(f"  {SECOND}") and f"champion {FIRST}" in second
    assert "+0.004" in second and "[-0.011, +0.019]" in second and second.rstrip().endswith("not promoted")
    assert lines[-1] == f"* champion: {FIRST}"


def test_list_as_json(registry_uri: str, capsys) -> None:
    code, out, _ = _cli(capsys, "registry", "list", "--registry", registry_uri, "--json")
    entries = json.loads(out)
    assert code == 0 and [entry["version"] for entry in entries] == [FIRST, SECOND]
    assert entries[1]["interval"] == [-0.011, 0.019] and entries[1]["promoted"] is False
    assert entries[1]["decision_reason"] == SECOND_REASON and entries[0]["champion"] is True


def test_show_prints_one_version_in_full(registry_uri: str, capsys) -> None:
    code, out, _ = _cli(capsys, "registry", "show", SECOND, "--registry", registry_uri)
    assert code == 0
    assert f"decision          {SECOND_REASON}" in out
    assert "interval          [-0.011, +0.019]" in out and "champion now      no" in out
    assert 'params            {"clf__C": 1.0}' in out


def test_show_of_an_unknown_version_is_a_one_line_error(registry_uri: str, capsys) -> None:
    code, out, err = _cli(capsys, "registry", "show", "20991231T000000Z-deadbeef", "--registry", registry_uri)
    assert code == cli.EXIT_STAGE_ERROR and out == ""
    assert err.strip().startswith("error: registry: 20991231T000000Z-deadbeef is not a registered model version")
    assert err.strip().count("\n") == 0


def test_show_needs_a_version(registry_uri: str, capsys) -> None:
    code, _, err = _cli(capsys, "registry", "show", "--registry", registry_uri)
    assert code == cli.EXIT_STAGE_ERROR and "show needs a VERSION" in err


def test_history_lists_every_champion_move_with_who_and_why(registry_uri: str, capsys) -> None:
    rollback.run(config=PipelineConfig(), registry_uri=registry_uri, to=SECOND, by="alice", reason="try it")
    rollback.run(config=PipelineConfig(), registry_uri=registry_uri, to=FIRST, by="bob", reason="canary failed")

    code, out, _ = _cli(capsys, "registry", "history", "--registry", registry_uri)
    rows = out.splitlines()[2:]
    assert code == 0 and len(rows) == 3
    assert rows[0].split()[1:4] == ["promote", FIRST, "-"]
    assert rows[1].split()[1:5] == ["rollback", SECOND, FIRST, "alice"] and rows[1].endswith("try it")
    assert rows[2].split()[1:5] == ["rollback", FIRST, SECOND, "bob"] and rows[2].endswith("canary failed")

    code, out, _ = _cli(capsys, "registry", "history", "--registry", registry_uri, "--json")
    assert [(move["action"], move["by"]) for move in json.loads(out)] == [
        ("promote", "register"),
        ("rollback", "alice"),
        ("rollback", "bob"),
    ]


def test_history_shows_the_champion_even_if_its_entry_was_lost(registry_uri: str, capsys) -> None:
    # A writer that died between the swap and the history entry: the pointer still tells its move.
    for uri in storage.list_uris(RegistryLayout(registry_uri).history_dir):
        storage.delete(uri)
    code, out, _ = _cli(capsys, "registry", "history", "--registry", registry_uri, "--json")
    assert code == 0 and [move["version"] for move in json.loads(out)] == [FIRST]
