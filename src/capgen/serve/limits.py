"""Server settings, and the request-body size and time limits enforced before any parsing."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from dataclasses import dataclass

from capgen.decoding.rules import MAX_BEAM
from capgen.images import MAX_PIXELS


@dataclass(frozen=True)
class ServeSettings:
    max_upload_mb: float = 10.0  # whole request body
    max_pixels: int = MAX_PIXELS  # per image, checked from the header before decoding
    # Decoded images take ~3 bytes a pixel (more while decoding), and a 62 KB PNG can hold 64 Mpx:
    # the pixels of one request (413 above), and of all requests being decoded, queued or captioned
    # together (503 above), are bounded before anything is decoded. None: 2x and 4x max_pixels.
    max_request_pixels: int | None = None
    max_queued_pixels: int | None = None
    timeout: float = 30.0  # seconds a request may wait for its captions (504 after)
    max_files: int = 16  # images per request
    max_batch: int = 8  # images per model call (micro-batching across requests)
    max_queue: int = 64  # waiting requests before answering 503
    max_beam_size: int = MAX_BEAM  # an operator may lower it; the decoder's own limit by default
    read_timeout: float = 30.0  # seconds a client may take to send its whole request body (408 after)
    # Host headers answered (DNS rebinding: a web page on evil.example resolving to 127.0.0.1 must
    # not reach the API); ("*",) accepts any.
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")

    def __post_init__(self) -> None:
        from capgen.errors import CapgenError

        for key in ("max_upload_mb", "timeout", "read_timeout"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CapgenError(f"server setting {key}: expected a positive finite number, got {value!r}")
        if self.max_request_pixels is None:
            object.__setattr__(
                self, "max_request_pixels", 2 * self.max_pixels if _positive_int(self.max_pixels) else None
            )
        if self.max_queued_pixels is None:
            object.__setattr__(
                self,
                "max_queued_pixels",
                2 * self.max_request_pixels if _positive_int(self.max_request_pixels) else None,
            )
        for key in (
            "max_pixels",
            "max_request_pixels",
            "max_queued_pixels",
            "max_files",
            "max_batch",
            "max_queue",
            "max_beam_size",
        ):
            value = getattr(self, key)
            if not _positive_int(value):
                raise CapgenError(f"server setting {key}: expected a positive integer, got {value!r}")
        if not self.max_pixels <= self.max_request_pixels <= self.max_queued_pixels:
            raise CapgenError(
                f"server settings: expected max_pixels <= max_request_pixels <= max_queued_pixels, got "
                f"{self.max_pixels:,}, {self.max_request_pixels:,}, {self.max_queued_pixels:,}"
            )
        if not self.allowed_hosts or not all(isinstance(h, str) and h for h in self.allowed_hosts):
            raise CapgenError(f"server setting allowed_hosts: expected host names, got {self.allowed_hosts!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class PixelBudget:
    """The decoded pixels requests hold (being decoded, queued or captioned), at most `limit`:
    `take` before decoding (ServerBusy -> 503 when it would not fit), `give` back once the job is done."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, pixels: int) -> None:
        from capgen.serve.worker import ServerBusy

        with self._lock:
            if self.held + pixels > self.limit:
                raise ServerBusy(
                    f"server busy: {self.held:,} pixels of images in progress, {pixels:,} more would "
                    f"exceed the limit of {self.limit:,}; try again shortly"
                )
            self.held += pixels

    def give(self, pixels: int) -> None:
        with self._lock:
            self.held -= pixels


class BodyLimit:
    """ASGI middleware: answer 413 when a request body exceeds `limit` bytes, 408 when it takes
    longer than `read_timeout` seconds to arrive.

    The declared Content-Length is checked first; then the body is read up to the limit, against
    one deadline for the whole body (a client trickling a byte at a time cannot hold a connection
    open forever), and replayed to the app. So the multipart parser never sees an oversize body,
    and a client cannot fill the disk or memory by streaming.
    """

    def __init__(self, app, limit: int, read_timeout: float = 30.0):
        self.app = app
        self.limit = limit
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                return await _json(send, 400, "invalid Content-Length header")
            if too_big:
                return await _json(send, 413, self._message())
        chunks, total = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                return await _json(send, 408, f"request body not received within {self.read_timeout:g} s")
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await _json(send, 413, self._message())
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replay_receive, send)

    def _message(self) -> str:
        return f"request body too large (limit {self.limit / 1024 / 1024:g} MB)"


async def _json(send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
