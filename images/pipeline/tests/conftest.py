"""Fixtures shared by the stage-package tests: a gs:// bucket on an emulator that enforces generation preconditions,
and for the serving tier one trained champion and one model server serving it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from privacy_pipeline import storage
from privacy_pipeline.serving.process import ServerProcess

if TYPE_CHECKING:
    from serving_runs import TrainedRegistry

# The emulator extension lives in embedded/ (the local stack starts it too), not in the stage package,
# which must not ship test servers; the repository root makes it importable here.
REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from embedded.gcs_emulator import create_server  # noqa: E402

GCS_TEST_BUCKET = "test-bucket"

# The files that take longest (module fixtures that run whole stage chains, start a server, load the sentence
# model or spawn processes), longest first. `make test-stage-package` runs a file per xdist worker at a time in
# collection order (--no-loadscope-reorder): these start first and the many short files fill in behind them, so
# no worker ends alone on a long file while the other idles (xdist's own order, most tests first, ran them last).
LONGEST_FILES_FIRST = (
    "test_leak.py",
    "test_killed_stages.py",
    "test_register.py",
    "test_drift.py",
    "test_tracking.py",
    "test_featurize.py",
    "test_conversations_pipeline.py",
    "test_sentence_encoder.py",
    "test_search.py",
    "test_text_features.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The LONGEST_FILES_FIRST files first, in that order; every other file after them in the order collected."""
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True, scope="session")
def pseudonym_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bytes]:
    """The key conversations-validate pseudonymises user ids with, mounted as the validate pod has it.

    Session-wide, so module-scoped fixtures that run the stage have it too; tests
    of a missing or short key unset or replace ``PIPELINE_PSEUDONYM_SECRET_PATH``
    with their own ``monkeypatch``.
    """
    key_file = tmp_path_factory.mktemp("pseudonym") / "key"
    key_file.write_text("test-pseudonym-key-" + "0" * 45, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPELINE_PSEUDONYM_SECRET_PATH", str(key_file))
        yield key_file.read_bytes()


@pytest.fixture()
def gcs_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``gs://test-bucket`` on a fresh in-memory emulator on a free 127.0.0.1 port; the storage module points at it."""
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=GCS_TEST_BUCKET)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.port}")
    storage._gcs_client.cache_clear()
    try:
        yield f"gs://{GCS_TEST_BUCKET}"
    finally:
        server.stop()
        storage._gcs_client.cache_clear()


@pytest.fixture(params=["local", "gcs"])
def bucket_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test keeps its objects: a local directory, then ``gs://`` on the precondition-enforcing emulator.

    Compare-and-swap has one implementation per scheme (an flock locally,
    ``if_generation_match`` on GCS); tests of it take this fixture so both run.
    """
    if request.param == "gcs":
        return str(request.getfixturevalue("gcs_bucket"))
    return str(tmp_path / "bucket")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRegistry:
    """A registry whose champion the pipeline's own stages trained (serving_runs): once per test run."""
    # Imported here: serving_runs imports every stage, which a run of one small test file need not pay for.
    from serving_runs import trained_registry

    return trained_registry(tmp_path_factory)


@pytest.fixture(scope="session")
def model_server(trained: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``privacy-pipeline serve`` of that champion on a free loopback port, started once and stopped at the end.

    Only test_serving uses it (its API and try-it page tests), so with ``--dist loadfile`` one worker starts it:
    a start loads kserve, torch and the sentence model, about 15 CPU seconds.
    """
    with ServerProcess(trained.registry_uri, log_path=tmp_path_factory.mktemp("serve") / "serve.log") as running:
        yield running
