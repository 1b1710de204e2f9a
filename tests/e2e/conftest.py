"""The embedded stack for end-to-end tests: a fresh GCS emulator and Airflow home per test module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from embedded.stack import BUCKET, PROJECT, Stack, embedded_stack

# Planted in the credentials Secret the stage pods mount; it must never show up in a log, an XCom,
# a rendered template field or an object in the bucket.
CANARY_SECRET = "canary-9f3b2c71-do-not-log"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home: Path = tmp_path_factory.mktemp("embedded")
    credentials = json.dumps({"type": "service_account", "private_key": CANARY_SECRET})
    env = {"PIPELINE_UPLOAD_INACTIVITY_SECONDS": "3"}
    with embedded_stack(home, in_memory=True, extra_env=env, gcp_credentials=credentials) as running:
        running.airflow("db", "migrate")
        yield running


@pytest.fixture
def canary_secret() -> str:
    return CANARY_SECRET


@pytest.fixture
def bucket(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> storage.Bucket:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", stack.emulator_host)
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    return client.bucket(BUCKET)
