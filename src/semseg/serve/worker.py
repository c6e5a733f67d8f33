"""The single inference worker: admission control, a bound on decoded pixels, micro-batches.

Requests pass two gates. ``begin_read()`` lets at most ``capacity`` requests read their bodies at
once (each under a deadline, each body at most ``max_bytes``); ``admit()`` lets at most
``capacity`` requests whose image header passed the checks wait in the queue, still encoded. One
worker (one thread) drains the queue in micro-batches of at most ``batch_size`` images and
``batch_pixels`` pixels, decoding them as it goes, and starts a batch only while the pixels of
decoded images not yet answered stay within ``decoded_pixels`` (one image is always let through;
by default four of the largest admitted images).
A failure of the worker (out of memory, a bug) fails the requests of that batch only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

import numpy as np

from semseg.inference.predictor import Predictor, confidence_levels
from semseg.serve.codecs import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    is_out_of_memory,
    out_of_memory,
)
from semseg.serve.schemas import ApiError

LOG = logging.getLogger("semseg.serve")


@dataclass
class Prediction:
    image: np.ndarray  # (H, W, 3) the decoded input
    labels: np.ndarray  # (H, W) class indices
    road_levels: np.ndarray | None  # (H, W) uint8 road probability, when asked for
    inference_ms: float
    pixels: int = 0  # what it holds of the decoded-pixel budget until answered


@dataclass
class Job:
    data: bytes  # the encoded image: queued requests hold no decoded pixels
    pixels: int
    want_prob: bool
    future: asyncio.Future


class InferenceWorker:
    """Admission control plus one worker that decodes and runs micro-batches on one thread.

    ``admit()`` refuses (False) when ``capacity`` requests are already in flight, so at most
    ``capacity`` request bodies (each at most ``max_bytes``) wait, however many clients connect.
    Queued requests hold encoded bytes only: images are decoded by the worker, a batch at a time,
    and at most ``ANSWER_SLOTS`` answers are encoded at once.
    """

    ANSWER_SLOTS = 2

    def __init__(
        self,
        predictor: Predictor,
        positive_class: int,
        num_classes: int,
        capacity: int,
        batch_size: int,
        batch_pixels: int,
        max_side: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decoded_pixels: int | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.positive_class = positive_class
        self.label_dtype = np.uint8 if num_classes <= 256 else np.uint16
        self.capacity = capacity
        self.batch_size = batch_size
        self.decoded_pixels = max(decoded_pixels or 4 * max_pixels, 1)
        # a batch fits the budget (or is a single image): decoded pixels held stay within
        # max(decoded_pixels, the largest admitted image)
        self.batch_pixels = min(batch_pixels, self.decoded_pixels)
        self.in_flight = 0
        self.reading = 0
        self.held_pixels = 0
        self.images = 0
        self.batches = 0
        self.failures = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semseg-inference")
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._carry: Job | None = None
        self._freed: asyncio.Condition | None = None
        self.answer_slots: asyncio.Semaphore | None = None

    # --- the gates ---------------------------------------------------------------------------

    def begin_read(self) -> bool:
        """A slot to read a request body in, or False when ``capacity`` are being read."""
        if self.reading >= self.capacity:
            return False
        self.reading += 1
        return True

    def end_read(self) -> None:
        self.reading -= 1

    def admit(self) -> bool:
        if self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1

    @property
    def saturated(self) -> bool:
        """Whether the next request would be refused (every read or queue slot is held)."""
        return self.reading >= self.capacity or self.in_flight >= self.capacity

    async def release_pixels(self, pixels: int) -> None:
        """Give back what an answered (or abandoned) prediction held of the pixel budget."""
        if pixels <= 0:
            return
        self.held_pixels = max(0, self.held_pixels - pixels)
        if self._freed is not None:
            async with self._freed:
                self._freed.notify_all()

    # --- the worker task ---------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart, on a new event loop or after a crash) the worker task; idempotent."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        if self._loop is not loop:
            self._queue = asyncio.Queue(maxsize=self.capacity)
            self._carry = None
            self._freed = asyncio.Condition()
            self.answer_slots = asyncio.Semaphore(self.ANSWER_SLOTS)
            self.held_pixels = 0
        self._loop = loop
        self._task = loop.create_task(self._run(), name="semseg-inference")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def predict(self, data: bytes, pixels: int, want_prob: bool) -> Prediction:
        """Decode, segment and post-process one image (its header already checked). The caller
        gives the prediction's pixels back with :meth:`release_pixels` once it has answered."""
        self.start()
        assert self._queue is not None
        job = Job(data, pixels, want_prob, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)  # never full: at most `capacity` requests are admitted
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away: what it held is given back
            if job.future.done() and not job.future.cancelled() and not job.future.exception():
                await self.release_pixels(job.future.result().pixels)
            raise

    async def _next_batch(self) -> list[Job]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        jobs, pixels = [first], first.pixels
        while len(jobs) < self.batch_size and not self._queue.empty():
            job = self._queue.get_nowait()
            if pixels + job.pixels > self.batch_pixels:
                self._carry = job
                break
            jobs.append(job)
            pixels += job.pixels
        return [job for job in jobs if not job.future.done()]

    async def _reserve(self, pixels: int) -> None:
        """Wait until ``pixels`` more decoded pixels fit the budget (or nothing is held)."""
        assert self._freed is not None
        async with self._freed:
            await self._freed.wait_for(
                lambda: self.held_pixels == 0 or self.held_pixels + pixels <= self.decoded_pixels
            )
            self.held_pixels += pixels

    async def _run(self) -> None:
        while True:
            jobs = await self._next_batch()
            if not jobs:
                continue
            reserved = sum(job.pixels for job in jobs)
            await self._reserve(reserved)
            try:
                await self._serve_batch(jobs)
            except Exception as error:  # never let the worker die: fail this batch only
                self.failures += 1
                if is_out_of_memory(error):
                    LOG.error("out of memory in a batch of %d images", len(jobs))
                    failure: Exception = out_of_memory("segmenting")
                else:
                    LOG.exception("the inference worker failed a batch")
                    failure = error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(failure)
                gc.collect()
            finally:
                kept = sum(
                    job.pixels
                    for job in jobs
                    if job.future.done()
                    and not job.future.cancelled()
                    and job.future.exception() is None
                )
                await self.release_pixels(reserved - kept)

    async def _serve_batch(self, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.executor, self._infer, jobs)
        decoded = sum(isinstance(result, Prediction) for result in results)
        if decoded:
            self.batches += 1
            self.images += decoded
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, Prediction):
                job.future.set_result(result)
            else:
                job.future.set_exception(result)

    def _infer(self, jobs: list[Job]) -> list[Prediction | ApiError]:
        """On the worker thread: decode each job (a bad one fails alone), one batch, labels."""
        started = time.perf_counter()
        outcomes: list[Prediction | ApiError | None] = []
        images = []
        for job in jobs:
            try:
                images.append(decode_image(job.data, self.max_side, self.max_pixels))
                outcomes.append(None)
            except ApiError as error:
                outcomes.append(error)
            job.data = b""
        try:
            probabilities = iter(self.predictor.predict_batch(images) if images else [])
        except MemoryError:
            del images
            gc.collect()
            raise
        pictures = iter(images)
        results: list[Prediction | ApiError] = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if outcome is not None:
                results.append(outcome)
                continue
            probability = next(probabilities)
            labels = probability.argmax(axis=0).astype(self.label_dtype)
            levels = confidence_levels(probability[self.positive_class]) if job.want_prob else None
            results.append(Prediction(next(pictures), labels, levels, 0.0, job.pixels))
        del probabilities, images
        elapsed = (time.perf_counter() - started) * 1000.0
        for result in results:
            if isinstance(result, Prediction):
                result.inference_ms = elapsed
        return results
