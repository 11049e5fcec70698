"""Requests in, batches out: one model instance shared by every request of the server.

    queue = BatchingQueue(run_batch, max_batch=4, max_pending=32)
    queue.start()                                  # inside the event loop (the app's startup)
    with queue.admission():                        # QueueFullError when max_pending requests are in
        ...read and decode the upload...
        result = await queue.submit(payload, timeout=deadline - time.monotonic())

``run_batch(payloads) -> results`` (one result per payload, in order) is a plain blocking function; it runs
on a single dedicated thread, so the model is never used by two batches at once and the event loop keeps
accepting connections while it works.

**Batching.** The consumer takes the oldest waiting job, then every other job already waiting, up to
``max_batch``, and runs them together. It never waits for more jobs to arrive: a lone request runs at
once, and batches form only when requests pile up behind a running batch, which is exactly when a bigger
batch pays (one forward pass instead of several).

**Bounds.** ``admission()`` counts a request from before its upload is read until its answer is out;
at ``max_pending`` such requests a new one is refused at once (:class:`QueueFullError`, the app's 503)
instead of holding its upload in memory behind a long queue. ``submit`` waits at most ``timeout``
seconds (:class:`asyncio.TimeoutError`, the app's 504); a job whose caller gave up while it was still
queued is dropped before it reaches the model (one already running finishes and is discarded).
"""
from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence


class QueueFullError(RuntimeError):
    """``max_pending`` requests are already admitted."""


@dataclass
class QueueStats:
    """Counters for ``/healthz``: requests in now, batches run, images run, biggest batch, jobs dropped."""

    pending: int = 0
    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    dropped: int = 0


@dataclass
class _Job:
    payload: Any
    future: asyncio.Future


class BatchingQueue:
    """A bounded queue of jobs run in batches by ``run_batch`` on one worker thread (module docstring).

    Args:
        run_batch: ``(payloads: list) -> list`` of results, one per payload; an exception fails every job
            of the batch with it.
        max_batch: most jobs per ``run_batch`` call (>= 1).
        max_pending: most requests admitted at once, counting the ones being decoded, waiting and running.
    """

    def __init__(self, run_batch: Callable[[List[Any]], Sequence[Any]], max_batch: int = 4, max_pending: int = 32):
        if max_batch < 1 or max_pending < 1:
            raise ValueError(f"max_batch={max_batch}, max_pending={max_pending}: both must be at least 1")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.stats = QueueStats()
        self._jobs: Optional[asyncio.Queue] = None
        self._consumer: Optional[asyncio.Task] = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskrcnn-model")

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the consumer task on the running event loop."""
        self._jobs = asyncio.Queue()  # unbounded: admission() is the bound
        self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def stop(self) -> None:
        """Stop taking jobs and release the worker thread (jobs still queued are cancelled)."""
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        while self._jobs is not None and not self._jobs.empty():
            self._jobs.get_nowait().future.cancel()
        self._thread.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------ requests
    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        """Count one request in for the duration of the block; :class:`QueueFullError` when full."""
        if self.stats.pending >= self.max_pending:
            raise QueueFullError(f"the server is busy: {self.stats.pending} requests are already waiting or "
                                 f"running (the limit is {self.max_pending}); try again shortly")
        self.stats.pending += 1
        try:
            yield
        finally:
            self.stats.pending -= 1

    async def submit(self, payload: Any, timeout: Optional[float] = None) -> Any:
        """Queue ``payload`` and return its result; ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        if self._jobs is None:
            raise RuntimeError("BatchingQueue.start() was not called")
        future = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait(_Job(payload, future))
        # On timeout wait_for cancels the future; the consumer then skips the job (or drops its result).
        return await asyncio.wait_for(future, timeout)

    # ------------------------------------------------------------------------------------------ consumer
    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._jobs.get()]
            while len(batch) < self.max_batch and not self._jobs.empty():
                batch.append(self._jobs.get_nowait())
            live = [job for job in batch if not job.future.done()]  # done = cancelled: its caller gave up
            self.stats.dropped += len(batch) - len(live)
            if not live:
                continue
            self.stats.batches += 1
            self.stats.images += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            try:
                results = await loop.run_in_executor(self._thread, self.run_batch, [job.payload for job in live])
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} jobs")
            except Exception as error:  # the model failed: every caller of this batch gets the error
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, result in zip(live, results):
                if not job.future.done():
                    job.future.set_result(result)
