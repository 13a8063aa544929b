"""The model threads. Requests queue here; compatible ones are captioned together.

torch modules and ONNX Runtime sessions hold state that must not be used from two threads at once,
and on a CPU server parallel calls of one model only compete for the same cores. So each half of
the model has one thread: the encoder thread gathers a batch and encodes it, the decoder thread
decodes it while the encoder already works on the next batch (a two-stage pipeline: on 2 cores
the encoder and the decoder each keep one busy). Request handlers wait on a Future.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from capgen.errors import CapgenError


class ServerBusy(CapgenError):
    """The request queue is full, or would not be served in time: HTTP 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after  # whole seconds until the queue has likely drained


@dataclass
class Job:
    images: list  # loaded RGB PIL images
    options: tuple  # hashable decode options; jobs with equal options share a batch
    future: Future = field(default_factory=Future)


class ModelWorker:
    """Captions queued jobs in two daemon threads, `captioner.encode_loaded` then
    `captioner.caption_encoded` (the two halves of `caption_loaded`), micro-batching them.

    Jobs waiting when the thread picks one up are merged into its batch when their options are
    equal, up to `max_batch` images, so simultaneous single-image requests cost one model call.

    Admission control: a job is refused at once (ServerBusy -> 503 with Retry-After) when the queue
    is full, or when the images already waiting would take longer than `max_wait` seconds at the
    measured rate. A refused client retries later; an admitted one is normally answered in time, not
    left to run into its timeout.
    """

    def __init__(self, captioner, max_batch: int = 8, max_queue: int = 64, max_wait: float | None = None):
        self.captioner = captioner
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._held: list[Job] = []  # jobs taken from the queue that did not fit the last batch
        self._images_waiting = 0  # images in queued or in-flight jobs (under _lock)
        self._lock = threading.Lock()
        self._seconds_per_image: float | None = None  # moving average over model calls; None until the first
        self._stopping = False
        self._closed = False
        # Encoded batches on their way to the decoder; one may wait while the decoder is busy.
        self._encoded: queue.Queue[_Encoded | None] = queue.Queue(maxsize=1)
        self._decoder = threading.Thread(target=self._decode_loop, name="capgen-decoder", daemon=True)
        self._thread = threading.Thread(target=self._run, name="capgen-encoder", daemon=True)
        self._decoder.start()
        self._thread.start()

    def submit(self, images: list, options: dict) -> Future:
        """Queue images for captioning; the Future gives a list of CaptionResult in order."""
        if self._closed:
            raise ServerBusy("server shutting down; try again shortly")
        job = Job(images, tuple(sorted(options.items())))
        with self._lock:
            wait = self.estimated_wait(len(images))
            if self.max_wait is not None and wait is not None and wait > self.max_wait and self._images_waiting:
                raise ServerBusy(
                    f"server busy: about {wait:.0f} s of work queued (limit {self.max_wait:g} s); try again shortly",
                    _retry_after(wait - self.max_wait),
                )
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise ServerBusy(
                    "server busy: too many requests waiting; try again shortly", _retry_after(wait)
                ) from None
            self._images_waiting += len(images)
        return job.future

    def estimated_wait(self, extra_images: int = 0) -> float | None:
        """Seconds until `extra_images` more would be captioned, at the measured rate (None before
        the first model call)."""
        if self._seconds_per_image is None:
            return None
        return (self._images_waiting + extra_images) * self._seconds_per_image

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._held)

    @property
    def closed(self) -> bool:
        """close() has begun: new jobs are refused."""
        return self._closed

    def close(self) -> None:
        """Finish the batch being decoded, then answer every job still waiting (queued or encoded)
        with ServerBusy (503), so no request is left to wait for its timeout."""
        self._closed = True
        self._queue.put(None)  # wakes the thread if it waits for work
        self._thread.join(timeout=5)

    def _fail_waiting(self) -> None:
        waiting, self._held = self._held, []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                waiting.append(job)
        with self._lock:
            self._images_waiting -= sum(len(j.images) for j in waiting)
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ServerBusy("server shutting down; try again shortly"))

    def _next(self, block: bool) -> Job | None:
        if self._held:
            return self._held.pop(0)
        return self._queue.get() if block else self._queue.get_nowait()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._encoded.put(None)  # the decoder finishes what it holds, then ends
            self._decoder.join()
            self._fail_waiting()  # whatever is left when the loop ends gets an answer

    def _serve(self) -> None:
        while not self._stopping and not self._closed:
            job = self._next(block=True)
            if job is None:
                return
            batch = [job]
            size = len(job.images)
            try:  # gather what is already waiting; never wait for more
                while size < self.max_batch:
                    other = self._next(block=False)
                    if other is None:  # the stop signal: finish this batch, then end
                        self._stopping = True
                        break
                    if other.options == job.options and size + len(other.images) <= self.max_batch:
                        batch.append(other)
                        size += len(other.images)
                    else:
                        self._held.append(other)
                        break
            except queue.Empty:
                pass
            self._encode(batch)

    def _done(self, batch: list[Job]) -> None:
        with self._lock:
            self._images_waiting -= sum(len(j.images) for j in batch)

    def _encode(self, batch: list[Job]) -> None:
        """Encoder thread: the batch's features, handed to the decoder thread."""
        # A job whose request timed out was cancelled; skip it rather than spend the model on it.
        running = [j for j in batch if j.future.set_running_or_notify_cancel()]
        self._done([j for j in batch if j not in running])
        if not running:
            return
        try:
            options = dict(running[0].options)
            tags = options.pop("tags", None)  # a TagConfig or None
            guide = options.pop("guide", None)  # a GuideConfig or None; the rest configures decoding
            config = self.captioner.decode_config(**options)
            images = [img for j in running for img in j.images]
            start = time.perf_counter()
            pooled, grid = self.captioner.encode_loaded(images)
            item = _Encoded(running, images, pooled, grid, config, tags, guide, time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001  reported to every waiting request, never kills the thread
            self._fail(running, e)
            return
        self._encoded.put(item)

    def _decode_loop(self) -> None:
        """Decoder thread: captions for each encoded batch, until the None that ends it."""
        while (item := self._encoded.get()) is not None:
            if self._closed:  # closing: only the batch already being decoded is finished
                self._fail(item.jobs, ServerBusy("server shutting down; try again shortly"))
                continue
            try:
                start = time.perf_counter()
                results = self.captioner.caption_encoded(
                    item.images, item.pooled, item.grid, item.config, tags=item.tags, guide=item.guide
                )
                # Pipelined, the slower half sets the rate.
                per_image = max(item.encode_seconds, time.perf_counter() - start) / len(item.images)
                old = self._seconds_per_image
                self._seconds_per_image = per_image if old is None else 0.7 * old + 0.3 * per_image
            except Exception as e:  # noqa: BLE001  reported to every waiting request, never kills the thread
                self._fail(item.jobs, e)
                continue
            start = 0
            for j in item.jobs:
                j.future.set_result(results[start : start + len(j.images)])
                start += len(j.images)
            self._done(item.jobs)

    def _fail(self, jobs: list[Job], error: Exception) -> None:
        for j in jobs:
            j.future.set_exception(error)
        self._done(jobs)


@dataclass
class _Encoded:
    """A batch between the two threads: its jobs, images, features and decoding options."""

    jobs: list[Job]
    images: list
    pooled: object
    grid: object
    config: object
    tags: object
    guide: object
    encode_seconds: float


def _retry_after(seconds: float | None) -> int:
    """Retry-After in whole seconds, at least 1."""
    return max(1, math.ceil(seconds)) if seconds is not None else 1
