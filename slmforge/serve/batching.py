"""Dynamic micro-batching: requests that arrive within a few milliseconds share one forward pass.

Each request hands in its texts and awaits its own results. One runner per model takes the first waiting
request, keeps collecting until `max_size` texts or `max_wait_ms` have passed, runs the batch in its own
worker thread, and hands each request its slice. While a batch runs, the next one fills up, so under load
batches grow on their own and at low load a lone request waits at most `max_wait_ms`. `max_size=1`
turns batching off (one request at a time), which is what the load benchmark compares against.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class _Job:
    items: Sequence
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        fn: Callable[[list], list],
        max_size: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
        name: str = "batch",
    ):
        self.fn = fn
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"slm-{name}")
        self._queue: asyncio.Queue[_Job] | None = None
        self._runner: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, items: Sequence) -> list:
        """The results of `fn` for `items`, computed together with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._runner is None or self._runner.done() or self._loop is not loop:
            self._queue, self._loop = asyncio.Queue(), loop  # (a new event loop: tests run one per app)
            self._runner = loop.create_task(self._run(self._queue))
        job = _Job(list(items), loop.create_future())
        self._queue.put_nowait(job)
        return await job.future

    async def _run(self, q: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None  # a request that did not fit the last batch starts the next one
        while True:
            jobs = [carry if carry is not None else await q.get()]
            carry = None
            size = len(jobs[0].items)
            deadline = loop.time() + self.max_wait
            while size < self.max_size:
                try:
                    job = q.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(q.get(), left)
                    except asyncio.TimeoutError:
                        break
                if size + len(job.items) > self.max_size:
                    carry = job
                    break
                jobs.append(job)
                size += len(job.items)
            jobs = [j for j in jobs if not j.future.done()]  # a timed-out request no longer waits
            if not jobs:
                continue
            flat = [x for j in jobs for x in j.items]
            if self.on_batch is not None:
                self.on_batch(len(flat))
            try:
                results = await loop.run_in_executor(self._executor, self.fn, flat)
            except Exception as e:  # every request in the batch gets the error
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            at = 0
            for j in jobs:
                part = results[at : at + len(j.items)]
                at += len(j.items)
                if not j.future.done():
                    j.future.set_result(part)

    def close(self) -> None:
        """Stop collecting (the worker thread stays, idle, for a later event loop)."""
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
