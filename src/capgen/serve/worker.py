"""The one thread that runs the model. Requests queue here; compatible ones are captioned together.

torch modules and ONNX Runtime sessions hold state that must not be used from two threads at once,
and on a CPU server parallel model calls only compete for the same cores. So every model call runs
in this thread; request handlers wait on a Future.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from capgen.errors import CapgenError


class ServerBusy(CapgenError):
    """The request queue is full."""


@dataclass
class Job:
    images: list                    # loaded RGB PIL images
    options: tuple                  # hashable decode options; jobs with equal options share a batch
    future: Future = field(default_factory=Future)


class ModelWorker:
    """Runs `captioner.caption_loaded` in one daemon thread, micro-batching queued jobs.

    Jobs waiting when the thread picks one up are merged into its batch when their options are
    equal, up to `max_batch` images, so simultaneous single-image requests cost one model call.
    """

    def __init__(self, captioner, max_batch: int = 8, max_queue: int = 64):
        self.captioner = captioner
        self.max_batch = max_batch
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._held: list[Job] = []      # jobs taken from the queue that did not fit the last batch
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="capgen-model", daemon=True)
        self._thread.start()

    def submit(self, images: list, options: dict) -> Future:
        """Queue images for captioning; the Future gives a list of CaptionResult in order."""
        if self._closed:
            raise ServerBusy("server shutting down; try again shortly")
        job = Job(images, tuple(sorted(options.items())))
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ServerBusy("server busy: too many requests waiting; try again shortly") from None
        return job.future

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._held)

    @property
    def closed(self) -> bool:
        """close() has begun: new jobs are refused."""
        return self._closed

    def close(self) -> None:
        """Finish the batch in hand, then answer every job still waiting with ServerBusy (503), so
        no request is left to wait for its timeout."""
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
            self._process(batch)

    def _process(self, batch: list[Job]) -> None:
        # A job whose request timed out was cancelled; skip it rather than spend the model on it.
        batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            options = dict(batch[0].options)
            tags = options.pop("tags", None)  # a TagConfig or None; the rest configures decoding
            config = self.captioner.decode_config(**options)
            images = [img for j in batch for img in j.images]
            results = self.captioner.caption_loaded(images, config, batch_size=self.max_batch, tags=tags)
        except Exception as e:  # noqa: BLE001  reported to every waiting request, never kills the thread
            for j in batch:
                j.future.set_exception(e)
            return
        start = 0
        for j in batch:
            j.future.set_result(results[start:start + len(j.images)])
            start += len(j.images)
