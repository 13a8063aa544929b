"""Server settings, and the request-body size limit enforced before any parsing."""

from __future__ import annotations

import json
from dataclasses import dataclass

from capgen.images import MAX_PIXELS


@dataclass(frozen=True)
class ServeSettings:
    max_upload_mb: float = 10.0      # whole request body
    max_pixels: int = MAX_PIXELS     # per image, checked from the header before decoding
    timeout: float = 30.0            # seconds a request may wait for its captions (504 after)
    max_files: int = 16              # images per request
    max_batch: int = 8               # images per model call (micro-batching across requests)
    max_queue: int = 64              # waiting requests before answering 503
    max_beam_size: int = 10

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class BodyLimit:
    """ASGI middleware: answer 413 when a request body exceeds `limit` bytes.

    The declared Content-Length is checked first; a body without one (chunked) is read up to the
    limit, then replayed to the app. Either way the multipart parser never sees an oversize body,
    and a client cannot fill the disk or memory by streaming.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

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
            return await self.app(scope, receive, send)
        chunks, total = [], 0
        while True:
            message = await receive()
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
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
