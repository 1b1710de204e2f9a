"""The micro-batcher: requests share batches and get their own results in order; cancels and errors stay local."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("kserve", reason="the serving tests run in the serving environment (.venv/serving)")

from privacy_pipeline.serving.batcher import MicroBatcher


class RecordingModel:
    """A batch function that records each batch and answers ``f"{item}!"``; it can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_on: str | None = None

    def __call__(self, items: list[str]) -> list[str]:
        self.release.wait(timeout=30)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"the model cannot read {self.fail_on}")
        return [f"{item}!" for item in items]


async def _gather_requests(batcher: MicroBatcher[str, str], requests: list[list[str]]) -> list[list[str]]:
    return await asyncio.gather(*(batcher.submit(items) for items in requests))


def test_each_request_gets_its_own_results_in_order_and_concurrent_requests_share_a_batch() -> None:
    model = RecordingModel()
    batcher: MicroBatcher[str, str] = MicroBatcher(model, max_batch_size=64, max_wait_seconds=0.05)
    requests = [[f"r{r}-m{m}" for m in range(r % 3 + 1)] for r in range(12)]

    async def scenario() -> list[list[str]]:
        # The first request opens a batch alone (no concurrency seen yet); hold the model so the rest queue up.
        model.release.clear()
        first = asyncio.ensure_future(batcher.submit(["warm-up"]))
        await asyncio.sleep(0.05)
        rest = asyncio.ensure_future(_gather_requests(batcher, requests))
        await asyncio.sleep(0.05)
        model.release.set()
        await first
        results = await rest
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert results == [[f"{item}!" for item in items] for items in requests]
    # Everything queued behind the held batch ran as one batch, in arrival order.
    assert model.batches[0] == ["warm-up"]
    assert model.batches[1] == [item for items in requests for item in items]


def test_a_batch_never_exceeds_max_batch_size_and_a_request_is_never_split() -> None:
    model = RecordingModel()
    batcher: MicroBatcher[str, str] = MicroBatcher(model, max_batch_size=5, max_wait_seconds=0.05)
    requests = [[f"r{r}-m{m}" for m in range(3)] for r in range(6)] + [[f"big-{m}" for m in range(7)]]

    async def scenario() -> list[list[str]]:
        model.release.clear()
        gathered = asyncio.ensure_future(_gather_requests(batcher, requests))
        await asyncio.sleep(0.05)
        model.release.set()
        results = await gathered
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert results == [[f"{item}!" for item in items] for items in requests]
    # Three-message requests cannot pair up under a bound of 5; the 7-message request runs alone.
    assert [len(batch) for batch in model.batches] == [3] * 6 + [7]
    assert [item for batch in model.batches for item in batch] == [item for items in requests for item in items]


def test_a_lone_client_does_not_wait_for_company() -> None:
    model = RecordingModel()
    # An hour-long wait would hang this test if a lone request waited for it.
    batcher: MicroBatcher[str, str] = MicroBatcher(model, max_batch_size=32, max_wait_seconds=3600.0)

    async def scenario() -> list[list[str]]:
        results = [await asyncio.wait_for(batcher.submit([f"m{i}"]), timeout=30) for i in range(3)]
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [["m0!"], ["m1!"], ["m2!"]]
    assert model.batches == [["m0"], ["m1"], ["m2"]]


def test_a_request_cancelled_while_queued_is_left_out_and_the_others_are_answered() -> None:
    model = RecordingModel()
    batcher: MicroBatcher[str, str] = MicroBatcher(model, max_batch_size=64, max_wait_seconds=0.05)

    async def scenario() -> tuple[list[str], list[str], bool]:
        model.release.clear()
        blocker = asyncio.ensure_future(batcher.submit(["blocker"]))
        await asyncio.sleep(0.05)
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        gone = asyncio.ensure_future(batcher.submit(["gone"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.release.set()
        await blocker
        kept_result = await kept
        after = await batcher.submit(["after"])
        await batcher.close()
        return kept_result, after, gone.cancelled()

    kept_result, after, cancelled = asyncio.run(scenario())
    assert cancelled
    assert kept_result == ["kept!"] and after == ["after!"]
    assert ["gone"] not in model.batches and all("gone" not in batch for batch in model.batches)


def test_a_request_cancelled_while_its_batch_runs_does_not_disturb_the_rest_of_the_batch() -> None:
    model = RecordingModel()
    batcher: MicroBatcher[str, str] = MicroBatcher(model, max_batch_size=64, max_wait_seconds=0.05)

    async def scenario() -> tuple[list[str], list[str]]:
        model.release.clear()
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.05)
        model.release.set()
        await first
        # Two requests in one batch; one caller goes away while the model is busy.
        model.release.clear()
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        gone = asyncio.ensure_future(batcher.submit(["gone"]))
        await asyncio.sleep(0.05)
        gone.cancel()
        model.release.set()
        kept_result = await kept
        after = await batcher.submit(["after"])
        await batcher.close()
        return kept_result, after

    kept_result, after = asyncio.run(scenario())
    assert kept_result == ["kept!"] and after == ["after!"]


def test_an_error_fails_every_request_of_its_batch_and_the_next_batch_succeeds() -> None:
    model = RecordingModel()
    model.fail_on = "poison"
    batcher: MicroBatcher[str, str] = MicroBatcher(model, max_batch_size=64, max_wait_seconds=0.05)

    async def scenario() -> tuple[list[object], list[str]]:
        model.release.clear()
        blocker = asyncio.ensure_future(batcher.submit(["blocker"]))
        await asyncio.sleep(0.05)
        same_batch = asyncio.ensure_future(
            asyncio.gather(batcher.submit(["a"]), batcher.submit(["poison"]), return_exceptions=True)
        )
        await asyncio.sleep(0.01)
        model.release.set()
        await blocker
        outcomes = await same_batch
        after = await batcher.submit(["after"])
        await batcher.close()
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    assert "cannot read poison" in str(outcomes[0])
    assert after == ["after!"]


def test_a_batch_function_returning_the_wrong_number_of_results_fails_its_requests() -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(lambda items: items[:-1], max_batch_size=8, max_wait_seconds=0.0)

    async def scenario() -> None:
        try:
            await batcher.submit(["a", "b"])
        finally:
            await batcher.close()

    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        asyncio.run(scenario())


def test_batch_sizes_are_reported() -> None:
    sizes: list[int] = []
    model = RecordingModel()
    batcher: MicroBatcher[str, str] = MicroBatcher(model, max_batch_size=8, max_wait_seconds=0.0, on_batch=sizes.append)

    async def scenario() -> None:
        await batcher.submit(["a", "b", "c"])
        await batcher.submit(["d"])
        await batcher.close()

    asyncio.run(scenario())
    assert sizes == [3, 1]


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(RecordingModel(), max_batch_size=0, max_wait_seconds=0.0)
    with pytest.raises(ValueError, match="max_wait_seconds"):
        MicroBatcher(RecordingModel(), max_batch_size=1, max_wait_seconds=-1.0)
