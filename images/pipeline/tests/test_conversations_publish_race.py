"""Two publishes race for the vector store's ``latest.json``: one moves it, the other changes nothing.

The store lives on a local path, then on ``gs://`` against an emulator that
enforces generation preconditions (conftest's ``bucket_root``): the pointer is
moved by ``storage.compare_and_swap``, whose two implementations are both held
to this. The runs themselves stay local; only the store is what is raced for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_conversations_pipeline import DAY1, DAY2, Workspace

from privacy_pipeline import storage
from privacy_pipeline.config import load_config
from privacy_pipeline.conversations import vector_store
from privacy_pipeline.errors import StageError
from privacy_pipeline.stages import conversations_publish


def _versions(store_uri: str) -> set[str]:
    prefix = vector_store.StoreLayout(store_uri).path("versions") + "/"
    return {uri[len(prefix) :].split("/")[0] for uri in storage.list_uris(prefix)}


def test_a_publish_that_loses_the_race_for_latest_moves_nothing_and_leaves_no_version_behind(
    bucket_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config()
    work = Workspace(tmp_path)
    work.store = storage.join(bucket_root, "store")
    first = work.run_until(DAY1, "day1", config)["publish"].xcom
    # Two runs of the next day, both built on the first day's version.
    work.run_until(DAY2, "winner", config, last="upsert")
    work.run_until(DAY2, "loser", config, last="upsert")

    # The loser has read latest.json and checked its parent; while it builds
    # its index, the winner publishes and moves the pointer.
    build_index = vector_store.build_index
    winner: dict = {}

    def the_winner_publishes_meanwhile(*args, **kwargs):
        monkeypatch.setattr(vector_store, "build_index", build_index)
        winner.update(
            conversations_publish.run(config=config, run_uri=work.run_uri("winner"), store_uri=work.store).xcom
        )
        return build_index(*args, **kwargs)

    monkeypatch.setattr(vector_store, "build_index", the_winner_publishes_meanwhile)
    with pytest.raises(StageError, match=r"another publish moved .*latest\.json while this one was writing"):
        conversations_publish.run(config=config, run_uri=work.run_uri("loser"), store_uri=work.store)

    assert winner["version"] != first["version"]
    assert storage.read_json(vector_store.StoreLayout(work.store).latest)["version"] == winner["version"]
    assert _versions(work.store) == {first["version"], winner["version"]}
