"""The rollout end to end: a candidate that disagrees with the previous version is rolled back to it.

test_serving_canary.py's scenario (its fixtures and helpers), with a candidate retrained on labels moved one
intent along: both versions serve, canary_check replays the holdout to both, the versions disagree on most
messages, and the previous version is champion again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("kserve", reason="the canary's local servers run in the serving environment (.venv/serving)")

from serving_runs import TrainedRegistry
from test_serving_canary import CONFIG, candidate_run, registry_uri, roll_out  # noqa: F401  (registry_uri: fixture)

from privacy_pipeline import registry


def test_a_candidate_that_disagrees_on_most_messages_is_rolled_back_to_the_previous_version(
    trained: TrainedRegistry,
    registry_uri: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Every intent trained under the next one's name: a confident model that is wrong nearly everywhere.
    labels = list(CONFIG.labels)
    next_intent = dict(zip(labels, labels[1:] + labels[:1], strict=True))
    run_uri = candidate_run(trained, registry_uri, tmp_path, relabel=next_intent)
    broken = registry.champion(registry_uri)["version"]
    history_before = len(registry.champion_history(registry_uri))

    _, checked = roll_out(run_uri, registry_uri)

    assert checked["decision"] == "rollback" and checked["rolled_back"] is True
    assert "the versions agree on" in checked["reason"] and checked["agreement"] < 0.5
    champion = registry.champion(registry_uri)
    assert champion["version"] == trained.version
    history = registry.champion_history(registry_uri)
    assert len(history) == history_before + 1
    assert (history[-1]["version"], history[-1]["by"], history[-1]["reason"]) == (
        trained.version,
        "canary_check",
        checked["reason"],
    )
    assert registry.read_run_record(registry_uri, broken)["canary"]["decision"] == "rollback"
