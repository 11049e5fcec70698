"""BatchingQueue: batches form from waiting jobs, the queue is bounded, time limits drop waiting jobs."""
import asyncio
import threading

import pytest

from maskrcnn.serve.batching import BatchingQueue, QueueFullError


class GatedModel:
    """A run_batch that records its batches and, while ``gate`` is closed, blocks (a model busy on a batch)."""

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, payloads):
        self.batches.append(list(payloads))
        self.started.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        return [f"result {payload}" for payload in payloads]


async def wait_for_event(event):
    await asyncio.get_running_loop().run_in_executor(None, event.wait, 30)


def test_jobs_waiting_behind_a_batch_run_together_up_to_max_batch():
    model = GatedModel()

    async def scenario():
        queue = BatchingQueue(model, max_batch=4, max_pending=32)
        queue.start()
        first = asyncio.ensure_future(queue.submit(0))
        await wait_for_event(model.started)  # the model is busy on [0]; 1..6 pile up behind it
        rest = [asyncio.ensure_future(queue.submit(k)) for k in range(1, 7)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        await queue.stop()
        return results, queue.stats

    results, stats = asyncio.run(scenario())
    assert results == [f"result {k}" for k in range(7)]  # each caller gets its own result
    assert model.batches == [[0], [1, 2, 3, 4], [5, 6]]  # oldest first, at most max_batch
    assert (stats.batches, stats.images, stats.largest_batch, stats.dropped) == (3, 7, 4, 0)


def test_a_lone_job_runs_at_once():
    async def scenario():
        queue = BatchingQueue(lambda payloads: [p * 2 for p in payloads], max_batch=8)
        queue.start()
        results = [await queue.submit(k) for k in range(3)]  # one after another: never batched
        await queue.stop()
        return results, queue.stats

    results, stats = asyncio.run(scenario())
    assert results == [0, 2, 4] and (stats.batches, stats.largest_batch) == (3, 1)


def test_admission_is_bounded():
    queue = BatchingQueue(lambda payloads: payloads, max_pending=2)
    with queue.admission(), queue.admission():
        assert queue.stats.pending == 2
        with pytest.raises(QueueFullError, match="the limit is 2"):
            with queue.admission():
                pass
    assert queue.stats.pending == 0
    with queue.admission():  # room again
        assert queue.stats.pending == 1


def test_timed_out_waiting_job_is_dropped_before_the_model():
    model = GatedModel()

    async def scenario():
        queue = BatchingQueue(model, max_batch=4)
        queue.start()
        first = asyncio.ensure_future(queue.submit("a"))
        await wait_for_event(model.started)
        with pytest.raises(asyncio.TimeoutError):
            await queue.submit("late", timeout=0.1)  # waits behind "a", gives up
        model.gate.set()
        assert await first == "result a"
        assert await queue.submit("b") == "result b"
        await queue.stop()
        return queue.stats

    stats = asyncio.run(scenario())
    assert model.batches == [["a"], ["b"]]  # "late" never reached the model
    assert stats.dropped == 1 and stats.images == 2


def test_a_failing_batch_fails_its_callers_and_the_queue_goes_on():
    def run_batch(payloads):
        if "bad" in payloads:
            raise ValueError("the model broke")
        return payloads

    async def scenario():
        queue = BatchingQueue(run_batch)
        queue.start()
        with pytest.raises(ValueError, match="the model broke"):
            await queue.submit("bad")
        result = await queue.submit("good")
        await queue.stop()
        return result

    assert asyncio.run(scenario()) == "good"


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="max_batch=0"):
        BatchingQueue(lambda p: p, max_batch=0)
