"""gcp-storage-emulator with the JSON API's generation preconditions enforced.

``gcp-storage-emulator`` ignores ``ifGenerationMatch`` and its siblings, so on
it a compare-and-swap is a plain overwrite and a lost update passes every test.
This module extends it without forking it: the upstream routes and handlers run
unchanged, and every object write or delete they make goes through
``GenerationGuard``, which checks the request's preconditions against the live
object, under one lock, immediately before the write. What it enforces, as the
Cloud Storage documentation states it (request-preconditions and the
objects.insert / copy / rewrite / compose / delete parameter references):

- ``ifGenerationMatch=N``: proceed only if the live object's generation is N;
  ``0`` means "only if there is no live object". Otherwise 412.
- ``ifMetagenerationMatch=M``: proceed only if there is a live object whose
  metageneration is M. Otherwise 412.
- ``ifGenerationNotMatch=N``: proceed only if there is a live object (the
  reference: "If no live object exists, the precondition fails", answered 412
  here) whose generation is not N; a match is answered 304 Not Modified.
- ``ifMetagenerationNotMatch=M``: a live object whose metageneration is M is
  answered 304 Not Modified.
- copies and rewrites: the above on the destination, and the ``ifSource...``
  forms on the source object.
- deleting an object that does not exist is 404 whatever the preconditions.

Uploads of every kind (``uploadType=media``, ``multipart``, and the final
request of a ``resumable`` session, when the object is written), copies,
rewrites, compose and deletes are covered. A 412 carries the JSON error body
Cloud Storage sends (reason ``conditionNotMet``). Each new object generation
gets a generation that is unique and larger than any this server handed out
before, and metageneration 1, as Cloud Storage documents.

Not covered: metadata updates (PATCH), reads with preconditions, batch
requests' inner preconditions, the XML API's ``x-goog-if-*`` headers. The
server stays upstream's single-threaded one: requests are served one at a time,
so races between clients' read-decide-write cycles are real, races inside the
server are not exercised.

Run it: ``python embedded/gcs_emulator.py --port 9023 --default-bucket b``.
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http import server as http_server
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.storage import Storage

CONDITION_NOT_MET = "At least one of the pre-conditions you specified did not hold."

_COPY_SOURCE = re.compile(r"/b/(?P<bucket>[-.\w]+)/o/(?P<name>.*[^/]+)/(?:copyTo|rewriteTo)/b/[-.\w]+/o/.*[^/]+$")


class PreconditionFailed(Exception):
    """A precondition did not hold: answered with ``status`` (412, or 304 for the ``NotMatch`` forms)."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class InvalidPrecondition(ValueError):
    """A precondition parameter that is not an integer (Cloud Storage answers 400)."""


@dataclass(frozen=True)
class Preconditions:
    """The four generation preconditions of one object in a request (``None``: not given)."""

    generation_match: int | None = None
    generation_not_match: int | None = None
    metageneration_match: int | None = None
    metageneration_not_match: int | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, list[str]], *, source: bool = False) -> Preconditions:
        prefix = "ifSource" if source else "if"

        def value(name: str) -> int | None:
            values = query.get(prefix + name)
            if not values:
                return None
            try:
                return int(values[-1])
            except ValueError:
                raise InvalidPrecondition(f"Invalid value for {prefix}{name}: {values[-1]!r}") from None

        return cls(
            generation_match=value("GenerationMatch"),
            generation_not_match=value("GenerationNotMatch"),
            metageneration_match=value("MetagenerationMatch"),
            metageneration_not_match=value("MetagenerationNotMatch"),
        )

    def check(self, live: Mapping[str, Any] | None) -> None:
        """Raise ``PreconditionFailed`` unless the live object (``None``: absent) meets every precondition."""
        generation = int(live["generation"]) if live else 0
        metageneration = int(live["metageneration"]) if live else None
        if self.generation_match is not None and generation != self.generation_match:
            raise PreconditionFailed(
                HTTPStatus.PRECONDITION_FAILED, f"generation is {generation}, not {self.generation_match}"
            )
        if self.metageneration_match is not None and metageneration != self.metageneration_match:
            raise PreconditionFailed(
                HTTPStatus.PRECONDITION_FAILED, f"metageneration is {metageneration}, not {self.metageneration_match}"
            )
        if self.generation_not_match is not None:
            if live is None:
                raise PreconditionFailed(HTTPStatus.PRECONDITION_FAILED, "no live object for ifGenerationNotMatch")
            if generation == self.generation_not_match:
                raise PreconditionFailed(HTTPStatus.NOT_MODIFIED, f"generation is {generation}")
        if self.metageneration_not_match is not None and metageneration == self.metageneration_not_match:
            raise PreconditionFailed(HTTPStatus.NOT_MODIFIED, f"metageneration is {metageneration}")


@dataclass(frozen=True)
class RequestPreconditions:
    """What one request asks of its target object and, for a copy or rewrite, of its source."""

    target: Preconditions
    source: Preconditions
    source_object: tuple[str, str] | None

    @classmethod
    def from_path(cls, path: str) -> RequestPreconditions:
        url = urlparse(path)
        query = parse_qs(url.query)
        copy = _COPY_SOURCE.search(url.path)
        return cls(
            target=Preconditions.from_query(query),
            source=Preconditions.from_query(query, source=True),
            source_object=(unquote(copy["bucket"]), unquote(copy["name"])) if copy else None,
        )


NO_PRECONDITIONS = RequestPreconditions(target=Preconditions(), source=Preconditions(), source_object=None)

# Set while a request fails on a precondition, so its log records are dropped (see _QuietPreconditionFailures).
_failing = threading.local()


def _check(preconditions: Preconditions, live: Mapping[str, Any] | None) -> None:
    try:
        preconditions.check(live)
    except PreconditionFailed:
        _failing.active = True
        raise


class GenerationGuard:
    """The emulator's ``Storage``, with writes and deletes that honour the current request's preconditions.

    Everything else is delegated unchanged. The check and the write happen
    under one lock, so no other write lands between them.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.RLock()
        self._request = threading.local()
        self._last_generation = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    @contextmanager
    def serving(self, preconditions: RequestPreconditions) -> Iterator[None]:
        self._request.preconditions = preconditions
        try:
            yield
        finally:
            self._request.preconditions = NO_PRECONDITIONS

    def _preconditions(self) -> RequestPreconditions:
        return getattr(self._request, "preconditions", NO_PRECONDITIONS)

    def _live(self, bucket_name: str, file_name: str) -> dict[str, Any] | None:
        try:
            return self._storage.get_file_obj(bucket_name, file_name)
        except NotFound:
            return None

    def _next_generation(self, live: Mapping[str, Any] | None) -> int:
        # Upstream stamps time.time_ns() when the request arrives (for a
        # resumable upload: when the session starts), so two writes can share a
        # generation or a later write get a smaller one. Unique and increasing instead.
        current = int(live["generation"]) if live else 0
        self._last_generation = max(time.time_ns(), current + 1, self._last_generation + 1)
        return self._last_generation

    def create_file(
        self, bucket_name: str, file_name: str, content: bytes, file_obj: dict[str, Any], file_id: str | None = None
    ) -> None:
        with self._lock:
            if bucket_name in self._storage.buckets:
                preconditions = self._preconditions()
                _check(preconditions.target, self._live(bucket_name, file_name))
                if preconditions.source_object is not None:
                    _check(preconditions.source, self._live(*preconditions.source_object))
                generation = self._next_generation(self._live(bucket_name, file_name))
                # The handler answers with this same dict, so the client sees the stored generation.
                file_obj["generation"] = str(generation)
                file_obj["metageneration"] = "1"
                file_obj["id"] = f"{bucket_name}/{file_name}/{generation}"
                if file_obj.get("mediaLink"):
                    file_obj["mediaLink"] = re.sub(r"generation=\d+", f"generation={generation}", file_obj["mediaLink"])
            self._storage.create_file(bucket_name, file_name, content, file_obj, file_id)

    def delete_file(self, bucket_name: str, file_name: str) -> None:
        with self._lock:
            live = self._live(bucket_name, file_name)
            if live is not None:
                _check(self._preconditions().target, live)
            self._storage.delete_file(bucket_name, file_name)


def _error_body(status: HTTPStatus, reason: str, message: str) -> dict[str, Any]:
    """The JSON API's error document (json_api/v1/status-codes)."""
    return {
        "error": {
            "code": status.value,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
        }
    }


def _condition_not_met() -> dict[str, Any]:
    body = _error_body(HTTPStatus.PRECONDITION_FAILED, "conditionNotMet", CONDITION_NOT_MET)
    body["error"]["errors"][0].update(locationType="header", location="If-Match")
    return body


class _QuietPreconditionFailures(logging.Filter):
    """Upstream's router logs every exception a handler raises as an error; a failed precondition is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(record.msg, PreconditionFailed) and not (
            isinstance(record.msg, str)
            and record.msg.startswith("An error has occurred")
            and getattr(_failing, "active", False)
        )


_QUIET = _QuietPreconditionFailures()


class PreconditionRequestHandler(emulator.RequestHandler):
    """Upstream's handler, with the request's preconditions in force while its route runs."""

    storage: GenerationGuard

    def _route(self, method: str) -> None:
        try:
            preconditions = RequestPreconditions.from_path(self.path)
        except InvalidPrecondition as exc:
            self._answer(HTTPStatus.BAD_REQUEST, _error_body(HTTPStatus.BAD_REQUEST, "invalid", str(exc)))
            return
        with self.storage.serving(preconditions):
            try:
                emulator.Router(self).handle(method)
            except PreconditionFailed as failed:
                self._answer(failed.status, _condition_not_met() if failed.status == 412 else None)
            finally:
                _failing.active = False

    def _answer(self, status: HTTPStatus, body: dict[str, Any] | None) -> None:
        response = emulator.Response(self)
        response.status = status
        if body is not None:
            response.json(body)
        response.close()

    def do_GET(self) -> None:
        self._route(emulator.GET)

    def do_POST(self) -> None:
        self._route(emulator.POST)

    def do_PUT(self) -> None:
        self._route(emulator.PUT)

    def do_DELETE(self) -> None:
        self._route(emulator.DELETE)

    def do_PATCH(self) -> None:
        self._route(emulator.PATCH)


class _PreconditionAPIThread(emulator.APIThread):
    def run(self) -> None:
        self._httpd = http_server.HTTPServer(
            (self._host, self._port), partial(PreconditionRequestHandler, self._storage)
        )
        self.is_running.set()
        # stop() waits for the loop to notice; upstream's 0.5 s poll would add half a second to every test.
        self._httpd.serve_forever(poll_interval=0.05)


class PreconditionServer(emulator.Server):
    """``gcp_storage_emulator.server.Server`` whose object writes and deletes honour generation preconditions."""

    def __init__(
        self,
        host: str,
        port: int,
        in_memory: bool,
        default_bucket: str | None = None,
        data_dir: str | None = None,
        project_number: str | None = None,
    ) -> None:
        super().__init__(host, port, in_memory, default_bucket, data_dir, project_number)
        logging.getLogger(emulator.__name__).addFilter(_QUIET)
        self._api = _PreconditionAPIThread(host, port, GenerationGuard(self._storage))

    @property
    def port(self) -> int:
        """The port it listens on once started (ask for port 0 to get a free one)."""
        httpd = self._api._httpd
        if httpd is None:
            raise RuntimeError("the emulator is not started")
        return int(httpd.server_address[1])


def create_server(
    host: str,
    port: int,
    in_memory: bool = False,
    default_bucket: str | None = None,
    data_dir: str | None = None,
) -> PreconditionServer:
    """Like ``gcp_storage_emulator.server.create_server``; call ``start()`` / ``stop()`` or use it as a context."""
    return PreconditionServer(host, port, in_memory=in_memory, default_bucket=default_bucket, data_dir=data_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--default-bucket")
    parser.add_argument("--data-dir", help="absolute path the objects are kept under (default: the working directory)")
    parser.add_argument("--in-memory", action="store_true", help="keep objects in memory only")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO)
    server = create_server(
        args.host, args.port, in_memory=args.in_memory, default_bucket=args.default_bucket, data_dir=args.data_dir
    )
    server.run()


if __name__ == "__main__":
    main()
