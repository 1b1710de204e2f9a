"""An asyncio micro-batcher: concurrent requests' texts go through the model together.

Encoding one message costs almost as much as encoding thirty (the sentence
model's per-call overhead dominates), so under concurrent load the server
groups what is waiting into one batch, bounded in texts (``max_batch_size``)
and in how long the first request of a batch may wait for company
(``max_wait_seconds``). It waits only once concurrency has been seen: when the
previous batch served a single request, a lone client pays no wait at all.

Each request gets exactly its own results, in its own order. A request
cancelled before its batch starts (the client went away) is left out of the
batch; one cancelled while its batch runs just drops its results. An exception
from the batch function fails every request of that batch, and the next batch
runs as usual. A request with more texts than ``max_batch_size`` runs as a
batch of its own.

In a cluster KServe's own batcher (``spec.predictor.batcher``) can group
requests in front of the pod; this one makes the same path fast in the
process itself, and ``max_batch_size=1`` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    items: list[Item]
    future: asyncio.Future[list[Result]]


class MicroBatcher(Generic[Item, Result]):
    """Groups concurrent ``submit`` calls into calls of ``run_batch`` on a worker thread.

    ``run_batch`` gets the items of one batch in arrival order and must return
    one result per item, in the same order. ``on_batch`` (optional) is told
    each batch's size in items, for metrics. The worker task starts on the
    first ``submit``, on the event loop that calls it.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        *,
        max_batch_size: int,
        max_wait_seconds: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_seconds < 0:
            raise ValueError(f"max_wait_seconds must not be negative, got {max_wait_seconds}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[Item, Result]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # A request that did not fit the previous batch opens the next one.
        self._carried: _Pending[Item, Result] | None = None
        self._last_batch_requests = 1

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """The results for ``items``, in order, once the batch they joined has run."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work(), name="micro-batcher")
        pending: _Pending[Item, Result] = _Pending(list(items), loop.create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def close(self) -> None:
        """Stop the worker; requests still queued are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for pending in self._drain():
            pending.future.cancel()

    def _drain(self) -> list[_Pending[Item, Result]]:
        left = [self._carried] if self._carried is not None else []
        self._carried = None
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        return left

    async def _next_batch(self) -> list[_Pending[Item, Result]]:
        assert self._queue is not None
        first = self._carried if self._carried is not None else await self._queue.get()
        self._carried = None
        batch, size = [first], len(first.items)
        loop = asyncio.get_running_loop()
        # Wait for company only when the last batch showed concurrent callers.
        deadline = loop.time() + (self.max_wait_seconds if self._last_batch_requests > 1 else 0.0)
        while size < self.max_batch_size:
            if not self._queue.empty():
                candidate = self._queue.get_nowait()
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    candidate = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(candidate.items) > self.max_batch_size:
                self._carried = candidate
                break
            batch.append(candidate)
            size += len(candidate.items)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            # Cancelled callers (disconnected clients) cost nothing.
            live = [pending for pending in batch if not pending.future.done()]
            if not live:
                continue
            self._last_batch_requests = len(live)
            items = [item for pending in live for item in pending.items]
            if self.on_batch is not None:
                self.on_batch(len(items))
            try:
                results = list(await loop.run_in_executor(None, self.run_batch, items))
                if len(results) != len(items):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(items)} items")
            except Exception as exc:
                log.exception("a batch of %d items from %d requests failed", len(items), len(live))
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            offset = 0
            for pending in live:
                count = len(pending.items)
                if not pending.future.done():
                    pending.future.set_result(results[offset : offset + count])
                offset += count
