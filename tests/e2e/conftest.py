"""The embedded stack for end-to-end tests: a fresh GCS emulator and Airflow home per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from embedded.stack import BUCKET, PROJECT, Stack, embedded_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home: Path = tmp_path_factory.mktemp("embedded")
    with embedded_stack(home, in_memory=True, extra_env={"PIPELINE_UPLOAD_INACTIVITY_SECONDS": "3"}) as running:
        running.airflow("db", "migrate")
        yield running


@pytest.fixture
def bucket(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> storage.Bucket:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", stack.emulator_host)
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    return client.bucket(BUCKET)
