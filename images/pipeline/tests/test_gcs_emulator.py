"""embedded/gcs_emulator.py answers generation preconditions as Cloud Storage documents them.

Each case is one row of what the documentation says (request-preconditions,
and the ifGenerationMatch / ifGenerationNotMatch / ifMetagenerationMatch /
ifMetagenerationNotMatch parameter references of objects.insert, copy,
rewrite and delete), asked through google-cloud-storage the way production
code asks it, on every upload kind the JSON API has.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from embedded.gcs_emulator import CONDITION_NOT_MET, create_server

BUCKET = "preconditions"
WRITTEN, FAILED, NOT_MODIFIED = "written", "412 Precondition Failed", "304 Not Modified"
CURRENT = "current"  # stands for the live object's generation, known only once it is written
_names = itertools.count()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bucket(endpoint: str) -> gcs.Bucket:
    client = gcs.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint})
    return client.bucket(BUCKET)


@dataclass(frozen=True)
class Case:
    """A precondition, the object it meets (present or absent), and what Cloud Storage answers."""

    preconditions: dict[str, Any]
    present: bool
    outcome: str

    def resolve(self, generation: int | None) -> dict[str, Any]:
        return {key: generation if value == CURRENT else value for key, value in self.preconditions.items()}

    @property
    def id(self) -> str:
        state = "present" if self.present else "absent"
        given = ",".join(f"{key}={value}" for key, value in self.preconditions.items())
        return f"{given}-{state}-{self.outcome.split()[0]}"


WRITE_CASES = [
    # "Setting to 0 makes the operation succeed only if there are no live versions of the object."
    Case({"if_generation_match": 0}, present=False, outcome=WRITTEN),
    Case({"if_generation_match": 0}, present=True, outcome=FAILED),
    # "...conditional on whether the object's current generation matches the given value."
    Case({"if_generation_match": CURRENT}, present=True, outcome=WRITTEN),
    Case({"if_generation_match": 12345}, present=True, outcome=FAILED),
    Case({"if_generation_match": 12345}, present=False, outcome=FAILED),
    # "...does not match the given value. If no live object exists, the precondition fails. Setting to 0
    # makes the operation succeed only if there is a live version of the object." A match is 304.
    Case({"if_generation_not_match": CURRENT}, present=True, outcome=NOT_MODIFIED),
    Case({"if_generation_not_match": 12345}, present=True, outcome=WRITTEN),
    Case({"if_generation_not_match": 12345}, present=False, outcome=FAILED),
    Case({"if_generation_not_match": 0}, present=True, outcome=WRITTEN),
    Case({"if_generation_not_match": 0}, present=False, outcome=FAILED),
    # Metageneration starts at 1 for each new generation.
    Case({"if_metageneration_match": 1}, present=True, outcome=WRITTEN),
    Case({"if_metageneration_match": 2}, present=True, outcome=FAILED),
    Case({"if_metageneration_match": 1}, present=False, outcome=FAILED),
    Case({"if_metageneration_not_match": 1}, present=True, outcome=NOT_MODIFIED),
    Case({"if_metageneration_not_match": 2}, present=True, outcome=WRITTEN),
    # Both given: both must hold.
    Case({"if_generation_match": CURRENT, "if_metageneration_match": 1}, present=True, outcome=WRITTEN),
    Case({"if_generation_match": CURRENT, "if_metageneration_match": 2}, present=True, outcome=FAILED),
]

_QUERY_NAMES = {
    "if_generation_match": "ifGenerationMatch",
    "if_generation_not_match": "ifGenerationNotMatch",
    "if_metageneration_match": "ifMetagenerationMatch",
    "if_metageneration_not_match": "ifMetagenerationNotMatch",
}


def _multipart(bucket: gcs.Bucket, name: str, data: bytes, **preconditions: Any) -> None:
    bucket.blob(name).upload_from_string(data, **preconditions)  # the client's choice below 8 MiB


def _resumable(bucket: gcs.Bucket, name: str, data: bytes, **preconditions: Any) -> None:
    # A chunk size makes the client open a session and send the data in two requests.
    blob = bucket.blob(name, chunk_size=256 * 1024)
    blob.upload_from_string(data + b"\0" * (300 * 1024), **preconditions)


def _media(bucket: gcs.Bucket, name: str, data: bytes, **preconditions: Any) -> None:
    # uploadType=media: the client library never uses it, other clients do; sent by hand.
    query = {"uploadType": "media", "name": name, **{_QUERY_NAMES[k]: v for k, v in preconditions.items()}}
    response = requests.post(
        f"{bucket.client._connection.API_BASE_URL}/upload/storage/v1/b/{bucket.name}/o",
        params=query,
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )
    if response.status_code != 200:
        raise exceptions.from_http_status(response.status_code, response.text, response=response)


UPLOADS: dict[str, Callable[..., None]] = {"multipart": _multipart, "resumable": _resumable, "media": _media}


def _existing(bucket: gcs.Bucket, present: bool) -> tuple[str, int | None]:
    name = f"object-{next(_names)}"
    if not present:
        return name, None
    blob = bucket.blob(name)
    blob.upload_from_string(b"before")
    return name, int(blob.generation)


def _state(bucket: gcs.Bucket, name: str) -> tuple[bytes, int] | None:
    blob = bucket.get_blob(name)
    if blob is None:
        return None
    generation = int(blob.generation)  # read first: a download resets it from headers the emulator does not send
    return blob.download_as_bytes()[:5], generation


def _attempt(write: Callable[[], None], outcome: str) -> None:
    if outcome == WRITTEN:
        write()
    elif outcome == FAILED:
        with pytest.raises(exceptions.PreconditionFailed) as failed:
            write()
        assert failed.value.response.json() == CONDITION_NOT_MET_BODY
    else:
        with pytest.raises(exceptions.NotModified):
            write()


# The JSON API's 412 (json_api/v1/status-codes): reason conditionNotMet, this message.
CONDITION_NOT_MET_BODY = {
    "error": {
        "code": 412,
        "message": CONDITION_NOT_MET,
        "errors": [
            {
                "message": CONDITION_NOT_MET,
                "domain": "global",
                "reason": "conditionNotMet",
                "locationType": "header",
                "location": "If-Match",
            }
        ],
    }
}


# google-cloud-storage sends if_metageneration_not_match on uploads as "ifMetaGenerationNotMatch", which is
# not the documented parameter; what GCS makes of it is not ours to guess, so that form is asked by hand only.
UPLOAD_CASES = [
    pytest.param(upload, case, id=f"{case.id}-{upload}")
    for case in WRITE_CASES
    for upload in UPLOADS
    if upload == "media" or "if_metageneration_not_match" not in case.preconditions
]


@pytest.mark.parametrize("upload,case", UPLOAD_CASES)
def test_uploads_honour_preconditions(bucket: gcs.Bucket, upload: str, case: Case) -> None:
    name, generation = _existing(bucket, case.present)
    before = _state(bucket, name)

    _attempt(lambda: UPLOADS[upload](bucket, name, b"after", **case.resolve(generation)), case.outcome)

    after = _state(bucket, name)
    if case.outcome == WRITTEN:
        assert after is not None and after[0] == b"after"
        assert before is None or after[1] > before[1]
        assert bucket.get_blob(name).metageneration == 1
    else:
        assert after == before


@pytest.mark.parametrize("operation", ["copy", "rewrite"])
@pytest.mark.parametrize("case", WRITE_CASES, ids=[case.id for case in WRITE_CASES])
def test_copies_and_rewrites_honour_preconditions_on_the_destination(
    bucket: gcs.Bucket, operation: str, case: Case
) -> None:
    source = bucket.blob(f"source-{next(_names)}")
    source.upload_from_string(b"after")
    name, generation = _existing(bucket, case.present)
    before = _state(bucket, name)

    def copy() -> None:
        if operation == "copy":
            bucket.copy_blob(source, bucket, name, **case.resolve(generation))
        else:
            bucket.blob(name).rewrite(source, **case.resolve(generation))

    _attempt(copy, case.outcome)
    after = _state(bucket, name)
    if case.outcome == WRITTEN:
        assert after is not None and after[0] == b"after" and (before is None or after[1] > before[1])
    else:
        assert after == before


@pytest.mark.parametrize("operation", ["copy", "rewrite"])
@pytest.mark.parametrize(
    "source_preconditions,outcome",
    [
        ({"if_source_generation_match": CURRENT}, WRITTEN),
        ({"if_source_generation_match": 12345}, FAILED),
        ({"if_source_metageneration_match": 1}, WRITTEN),
        ({"if_source_metageneration_match": 2}, FAILED),
        ({"if_source_generation_not_match": CURRENT}, NOT_MODIFIED),
        ({"if_source_generation_not_match": 12345}, WRITTEN),
    ],
)
def test_copies_and_rewrites_honour_preconditions_on_the_source(
    bucket: gcs.Bucket, operation: str, source_preconditions: dict[str, Any], outcome: str
) -> None:
    source = bucket.blob(f"source-{next(_names)}")
    source.upload_from_string(b"after")
    given = {key: source.generation if value == CURRENT else value for key, value in source_preconditions.items()}
    name = f"copy-{next(_names)}"

    def copy() -> None:
        if operation == "copy":
            bucket.copy_blob(source, bucket, name, **given)
        else:
            bucket.blob(name).rewrite(source, **given)

    _attempt(copy, outcome)
    assert (_state(bucket, name) is not None) == (outcome == WRITTEN)


DELETE_CASES = [
    Case({"if_generation_match": CURRENT}, present=True, outcome=WRITTEN),
    Case({"if_generation_match": 12345}, present=True, outcome=FAILED),
    Case({"if_generation_match": 0}, present=True, outcome=FAILED),
    Case({"if_generation_not_match": CURRENT}, present=True, outcome=NOT_MODIFIED),
    Case({"if_generation_not_match": 12345}, present=True, outcome=WRITTEN),
    Case({"if_metageneration_match": 1}, present=True, outcome=WRITTEN),
    Case({"if_metageneration_match": 2}, present=True, outcome=FAILED),
    Case({"if_metageneration_not_match": 1}, present=True, outcome=NOT_MODIFIED),
]


@pytest.mark.parametrize("case", DELETE_CASES, ids=[case.id for case in DELETE_CASES])
def test_deletes_honour_preconditions(bucket: gcs.Bucket, case: Case) -> None:
    name, generation = _existing(bucket, present=True)
    before = _state(bucket, name)
    _attempt(lambda: bucket.blob(name).delete(**case.resolve(generation)), case.outcome)
    assert _state(bucket, name) == (None if case.outcome == WRITTEN else before)


@pytest.mark.parametrize("preconditions", [{"if_generation_match": 12345}, {"if_generation_match": 0}, {}])
def test_deleting_an_absent_object_is_not_found_whatever_the_preconditions(
    bucket: gcs.Bucket, preconditions: dict[str, int]
) -> None:
    with pytest.raises(exceptions.NotFound):
        bucket.blob(f"absent-{next(_names)}").delete(**preconditions)


def test_a_precondition_that_is_not_a_number_is_a_bad_request(bucket: gcs.Bucket) -> None:
    base = bucket.client._connection.API_BASE_URL
    response = requests.post(
        f"{base}/upload/storage/v1/b/{bucket.name}/o",
        params={"uploadType": "media", "name": "x", "ifGenerationMatch": "latest"},
        data=b"x",
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["errors"][0]["reason"] == "invalid"
    assert bucket.get_blob("x") is None


# --- generations ---------------------------------------------------------------------------------------------


def test_every_write_gets_a_new_larger_generation_and_metageneration_1(bucket: gcs.Bucket) -> None:
    blob = bucket.blob("rewritten")
    generations = []
    for i in range(10):
        blob.upload_from_string(f"v{i}".encode())
        generations.append(int(blob.generation))
        assert blob.metageneration == 1
    assert generations == sorted(generations) and len(set(generations)) == len(generations)
    copy = bucket.copy_blob(blob, bucket, "rewritten")
    assert int(copy.generation) > generations[-1] and copy.metageneration == 1


def test_a_resumable_upload_started_before_another_write_ends_with_the_newer_generation(bucket: gcs.Bucket) -> None:
    # Upstream stamps the generation when the session starts, so this upload
    # would finish with an older generation than the write it replaces.
    session = bucket.blob("slow").create_resumable_upload_session(size=4)
    quick = bucket.blob("slow")
    quick.upload_from_string(b"fast")
    response = requests.put(session, data=b"slow", headers={"Content-Range": "bytes 0-3/4"}, timeout=10)
    assert response.status_code == 200, response.text
    assert int(response.json()["generation"]) > int(quick.generation)
    assert bucket.blob("slow").download_as_bytes() == b"slow"


def test_a_resumable_upload_checks_its_preconditions_when_it_completes(bucket: gcs.Bucket) -> None:
    blob = bucket.blob("raced")
    blob.upload_from_string(b"first")
    session = bucket.blob("raced").create_resumable_upload_session(size=4, if_generation_match=blob.generation)
    bucket.blob("raced").upload_from_string(b"other writer")
    response = requests.put(session, data=b"mine", headers={"Content-Range": "bytes 0-3/4"}, timeout=10)
    assert response.status_code == 412 and response.json() == CONDITION_NOT_MET_BODY
    assert bucket.blob("raced").download_as_bytes() == b"other writer"
