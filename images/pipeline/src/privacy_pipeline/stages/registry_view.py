"""registry: read the model registry: every version with its gate decision, one version in full, the champion's history.

``list`` prints one line per registered version: its holdout macro-F1, what it
was compared against, the difference with its interval, the rows left out
because the champion trained on them, and the decision. ``show VERSION``
prints its run record and lineage; ``history`` every champion move
(promotions and rollbacks) with who, when and why. ``--json`` prints the same
for machines. Reads only.
"""

from __future__ import annotations

import json
from typing import Any

from privacy_pipeline import registry, storage
from privacy_pipeline.config import PipelineConfig
from privacy_pipeline.errors import StageError
from privacy_pipeline.registry import RegistryLayout
from privacy_pipeline.stage_result import StageResult

STAGE = "registry"
VIEWS = ("list", "show", "history")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _number(value: Any, signed: bool = False) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _interval(gate: dict[str, Any] | None) -> str:
    if not gate or not gate.get("interval"):
        return "-"
    low, high = gate["interval"]
    return f"[{low:+.3f}, {high:+.3f}]"


def _listing(registry_uri: str) -> tuple[list[dict[str, Any]], str]:
    champion = registry.champion(registry_uri)
    champion_version = champion["version"] if champion else None
    records = registry.list_runs(registry_uri)
    entries = []
    rows = []
    for record in records:
        gate = record.get("gate")
        entry = {
            "version": record["version"],
            "registered_at": record.get("registered_at"),
            "champion": record["version"] == champion_version,
            "f1_macro": record.get("candidate_f1_macro"),
            "compared_against": gate.get("against") if gate else None,
            "difference": gate.get("difference") if gate else None,
            "interval": gate.get("interval") if gate else None,
            "confidence": gate.get("confidence") if gate else None,
            "excluded_rows": record.get("excluded_rows"),
            "promoted": record.get("promoted"),
            "decision_reason": record.get("decision_reason"),
        }
        entries.append(entry)
        rows.append(
            [
                ("* " if entry["champion"] else "  ") + str(entry["version"]),
                _number(entry["f1_macro"]),
                str(entry["compared_against"] or "-"),
                _number(entry["difference"], signed=True),
                _interval(gate),
                str(entry["excluded_rows"] if entry["excluded_rows"] is not None else "-"),
                "promoted" if entry["promoted"] else "not promoted",
            ]
        )
    headers = ["  version", "macro-F1", "compared against", "difference", "interval", "excluded", "decision"]
    text = _table(headers, rows) if rows else f"no registered versions in {registry_uri}"
    footer = f"\n* champion: {champion_version}" if champion_version else "\nno champion yet"
    return entries, text + footer


def _show(registry_uri: str, version: str) -> tuple[dict[str, Any], str]:
    record = registry.read_run_record(registry_uri, version)
    if record is None:
        raise StageError(
            f"{STAGE}: {version} is not a registered model version in {registry_uri} "
            f"({RegistryLayout(registry_uri).run_record(version)} is missing)"
        )
    metadata_uri = RegistryLayout(registry_uri).metadata(version)
    metadata = storage.read_json(metadata_uri) if storage.exists(metadata_uri) else {}
    champion = registry.champion(registry_uri)
    details = {
        "run_record": record,
        "metadata": {key: metadata.get(key) for key in ("params", "data", "package_version", "image_tag")},
        "champion": bool(champion and champion["version"] == version),
        "history": [
            move
            for move in registry.champion_history(registry_uri)
            if version in (move["version"], move.get("previous_version"))
        ],
    }
    data = metadata.get("data") or {}
    lines = [
        ("version", version),
        ("champion now", "yes" if details["champion"] else "no"),
        ("registered at", record.get("registered_at")),
        ("run", record.get("run_uri")),
        ("model", record.get("model_uri")),
        ("holdout macro-F1", _number(record.get("candidate_f1_macro"))),
        ("compared against", (record.get("gate") or {}).get("against") or "-"),
        ("difference", _number((record.get("gate") or {}).get("difference"), signed=True)),
        ("interval", _interval(record.get("gate"))),
        ("excluded rows", record.get("excluded_rows", "-")),
        ("decision", record.get("decision_reason")),
        ("params", json.dumps(metadata.get("params", {}), sort_keys=True)),
        ("rows", f"{data.get('train_rows', '-')} train, {data.get('holdout_rows', '-')} holdout"),
        ("image", metadata.get("image_tag", "-")),
    ]
    width = max(len(key) for key, _ in lines)
    text = "\n".join(f"{key.ljust(width)}  {value}" for key, value in lines)
    return details, text


def _history(registry_uri: str) -> tuple[list[dict[str, Any]], str]:
    moves = registry.champion_history(registry_uri)
    champion = registry.champion(registry_uri)
    # The pointer carries its own move; if its history entry was lost (a writer died between the two), show it anyway.
    if champion and (not moves or json.dumps(moves[-1], sort_keys=True) != json.dumps(champion, sort_keys=True)):
        moves.append(champion)
    rows = [
        [
            str(move.get("promoted_at", "-")),
            str(move.get("action", "promote")),
            str(move["version"]),
            str(move.get("previous_version") or "-"),
            str(move.get("by", "-")),
            str(move.get("reason", "-")),
        ]
        for move in moves
    ]
    headers = ["at", "action", "champion", "replaced", "by", "why"]
    text = _table(headers, rows) if rows else f"no champion moves recorded in {registry_uri}"
    return moves, text


def run(
    *, config: PipelineConfig, registry_uri: str, view: str, version: str | None = None, as_json: bool = False
) -> StageResult:
    del config  # reads only the registry
    if view not in VIEWS:
        raise StageError(f"{STAGE}: unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    payload: Any
    if view == "show":
        if not version:
            raise StageError(f"{STAGE}: show needs a VERSION (`privacy-pipeline registry list` shows them)")
        payload, text = _show(registry_uri, version)
    elif view == "history":
        payload, text = _history(registry_uri)
    else:
        payload, text = _listing(registry_uri)
    summary = storage.json_bytes(payload).decode("utf-8").rstrip("\n") if as_json else text
    return StageResult(stage=STAGE, summary=summary, xcom={"registry_uri": registry_uri, "view": view})
