"""The HTTP app: `create_app(captioner, settings)` -> FastAPI. Routes: / (page), /health, /caption,
/openapi.json. The interactive /docs and /redoc pages are off: FastAPI loads them from CDNs, and
nothing this server sends may make a browser fetch from another host.

The request path is the Captioner's pipeline: uploads are checked and decoded (uploads.py), queued
to the one model thread (worker.py), and results serialised with `CaptionResult.to_dict`. Nothing
here depends on the model type; attention is offered when the captioner says it supports it, and
object tags (`tags=K`) when it has a tagger.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from capgen import __version__
from capgen.decoding.config import DecodeConfig
from capgen.errors import CapgenError
from capgen.images import PHOTO_FORMATS
from capgen.serve.limits import BodyLimit, PixelBudget, ServeSettings
from capgen.serve.uploads import UploadError, image_pixels, read_image
from capgen.serve.worker import ModelWorker, ServerBusy
from capgen.tags import DEFAULT_THRESHOLD, GuideConfig, TagConfig

FIELD = "files"
MAX_TAGS = 20
MAX_WORDS = 50  # a longer caption is no caption any more
DEFAULTS = DecodeConfig()  # what the page and the API schema show; a request gets its model's own

# /caption takes a hand-parsed multipart body (for precise errors); describe it in /openapi.json.
_CAPTION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": f"one or more images ({', '.join(PHOTO_FORMATS)})",
                        }
                    },
                }
            }
        },
    },
    "parameters": [
        {
            "name": "beam_size",
            "in": "query",
            "schema": {"type": "integer", "default": DEFAULTS.beam_size, "minimum": 1},
        },
        {"name": "n_best", "in": "query", "schema": {"type": "integer", "default": DEFAULTS.n_best, "minimum": 1}},
        {
            "name": "min_words",
            "in": "query",
            "description": "no caption shorter than this many words",
            "schema": {"type": "integer", "default": DEFAULTS.min_words, "minimum": 1, "maximum": MAX_WORDS},
        },
        {
            "name": "max_words",
            "in": "query",
            "description": "captions of at most this many words (default: the server's max_len)",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_WORDS},
        },
        {"name": "attention", "in": "query", "schema": {"type": "boolean", "default": False}},
        {
            "name": "tags",
            "in": "query",
            "description": "up to this many object tags per image (0 = none)",
            "schema": {"type": "integer", "default": 0, "minimum": 0, "maximum": MAX_TAGS},
        },
        {
            "name": "tag_threshold",
            "in": "query",
            "description": "minimum tag probability",
            "schema": {"type": "number", "default": DEFAULT_THRESHOLD, "minimum": 0, "maximum": 1},
        },
        {
            "name": "guide",
            "in": "query",
            "description": "a confident tag's word must be in the caption",
            "schema": {"type": "boolean", "default": True},
        },
        {
            "name": "guide_threshold",
            "in": "query",
            "description": "tag probability that guides (known words)",
            "schema": {"type": "number", "default": GuideConfig().threshold, "exclusiveMinimum": 0, "maximum": 1},
        },
        {
            "name": "novel_guide_threshold",
            "in": "query",
            "description": "tag probability that guides a word the model never learned",
            "schema": {"type": "number", "default": GuideConfig().novel_threshold, "exclusiveMinimum": 0, "maximum": 1},
        },
    ],
}


def create_app(captioner, settings: ServeSettings | None = None) -> FastAPI:
    """The server around one Captioner. The model runs in one background thread owned by the app."""
    settings = settings or ServeSettings()
    # A job that would wait longer than the request timeout is refused at once with 503 + Retry-After
    # rather than left to run into a 504.
    worker = ModelWorker(
        captioner, max_batch=settings.max_batch, max_queue=settings.max_queue, max_wait=settings.timeout
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.close()

    app = FastAPI(
        title="capgen",
        version=__version__,
        description="Image captioning: POST photos to /caption.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    budget = PixelBudget(settings.max_queued_pixels)
    app.state.captioner, app.state.settings, app.state.worker, app.state.pixels = captioner, settings, worker, budget
    # What a request would load lazily (tag guidance reads GloVe) is loaded now, not by the first
    # request, which may meet a server short of memory; a failure here is retried on use, never kept.
    warm_up = getattr(captioner, "warm_up", None)
    if warm_up is not None:
        warm_up()
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes, read_timeout=settings.read_timeout)
    if "*" not in settings.allowed_hosts:  # added last = runs first: a foreign Host header gets nothing
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    _add_error_handlers(app)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    page = resources.files("capgen.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.get("/health")(_health)
    app.post("/caption", openapi_extra=_CAPTION_BODY)(_caption)


def _health(request: Request) -> dict:
    """Model, encoder and queue status."""
    state = request.app.state
    return {"status": "ok", **state.captioner.info(), "queued": state.worker.pending, "version": __version__}


async def _caption(request: Request) -> JSONResponse:
    """Caption one or several images (multipart field `files`)."""
    state = request.app.state
    captioner, settings = state.captioner, state.settings
    form_items, options = await _parse(request, settings, captioner.decode_config())
    if options["return_attention"] and not captioner.supports_attention:
        raise UploadError(422, f"attention: this model ({captioner.info()['architecture']}) has no attention")
    future = await _submit(state, form_items, options)
    warnings = [captioner.tags_error] if options["tags"] and captioner.tags_error else []
    try:
        results = await asyncio.wait_for(asyncio.wrap_future(future), timeout=settings.timeout)
    except asyncio.TimeoutError:
        future.cancel()  # if still queued, the worker skips it
        raise UploadError(504, f"captioning took longer than {settings.timeout:g} s; try again") from None
    body = {
        "results": [
            {"filename": name, **res.to_dict(attention=options["return_attention"])}
            for (name, _), res in zip(form_items, results)
        ]
    }
    if warnings:  # e.g. tags asked for but the encoder has no classifier: captions still come
        body["warnings"] = warnings
    return JSONResponse(body)


async def _submit(state, form_items: list[tuple[str, bytes]], options: dict):
    """Decode the images and queue them for the model worker, holding their pixels in the budget
    until the job is done; the job's future."""
    settings, budget = state.settings, state.pixels
    pixels = await run_in_threadpool(_request_pixels, form_items, settings)
    budget.take(pixels)  # before decoding: 503 when the images in progress would not fit
    try:
        images = [await run_in_threadpool(read_image, data, name, settings.max_pixels) for name, data in form_items]
        future = state.worker.submit(images, options)
    except BaseException:
        budget.give(pixels)
        raise
    del images  # the worker holds them until its job is done, and the budget until then too
    future.add_done_callback(lambda _: budget.give(pixels))
    return future


def _request_pixels(items: list[tuple[str, bytes]], settings: ServeSettings) -> int:
    """All the request's pixels, from the image headers; UploadError 413 above the per-request limit."""
    pixels = sum(image_pixels(data, name, settings.max_pixels) for name, data in items)
    if pixels > settings.max_request_pixels:
        raise UploadError(
            413,
            f"{len(items)} images of {pixels:,} pixels in all exceed the limit of "
            f"{settings.max_request_pixels:,} per request; send fewer or smaller images",
        )
    return pixels


async def _parse(
    request: Request, settings: ServeSettings, defaults: DecodeConfig
) -> tuple[list[tuple[str, bytes]], dict]:
    """The images and the captioning options of a request; unset options are the model's own
    decoding settings (`defaults`, its DecodeConfig), capped by the server's limits."""
    """Multipart body -> [(filename, bytes)] and decode options, or UploadError."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise UploadError(
            415, f"expected a multipart/form-data upload with field '{FIELD}', got {ctype or 'no content type'}"
        )
    try:
        form = await request.form(max_files=settings.max_files, max_fields=32)
    except HTTPException as e:  # starlette's own parse errors (too many files, malformed body)
        if str(e.detail).startswith("Too many files"):
            raise UploadError(413, f"too many files; at most {settings.max_files} per request") from None
        raise UploadError(400 if e.status_code >= 500 else e.status_code, f"malformed upload: {e.detail}") from None
    except Exception as e:  # noqa: BLE001  python-multipart raises its own types for broken bodies
        raise UploadError(400, f"malformed multipart body ({type(e).__name__})") from None
    uploads = form.getlist(FIELD)
    files = [u for u in uploads if isinstance(u, UploadFile)]
    if not files:
        sent = sorted(set(form.keys()))
        hint = f"; got {', '.join(repr(k) for k in sent)}" if sent else ""
        what = "is not a file" if uploads else "is missing"
        raise UploadError(422, f"multipart field '{FIELD}' {what}: send images as files under '{FIELD}'{hint}")
    if len(files) > settings.max_files:
        raise UploadError(413, f"too many files ({len(files)}); at most {settings.max_files} per request")
    items = [(f.filename or f"image-{i + 1}", await f.read()) for i, f in enumerate(files)]

    def value(key: str, default: str) -> str:
        v = request.query_params.get(key)
        return v if v is not None else str(form.get(key, default))

    beam_size = _int(value("beam_size", str(defaults.beam_size)), "beam_size", 1, settings.max_beam_size)
    n_best = _int(value("n_best", str(min(defaults.n_best, beam_size))), "n_best", 1, beam_size)
    n_tags = _int(value("tags", "0"), "tags", 0, MAX_TAGS)
    threshold = _float(value("tag_threshold", str(DEFAULT_THRESHOLD)), "tag_threshold", 0.0, 1.0)
    guide = None
    if _bool(value("guide", "true"), "guide"):
        default = GuideConfig()
        guide = GuideConfig(
            _float(value("guide_threshold", str(default.threshold)), "guide_threshold", 1e-9, 1.0),
            _float(value("novel_guide_threshold", str(default.novel_threshold)), "novel_guide_threshold", 1e-9, 1.0),
        )
    lengths = {"min_words": _int(value("min_words", str(defaults.min_words)), "min_words", 1, MAX_WORDS)}
    max_words = value("max_words", "" if defaults.max_words is None else str(defaults.max_words))
    if max_words != "":
        lengths["max_words"] = _int(max_words, "max_words", 1, MAX_WORDS)
    options = {
        **lengths,
        "beam_size": beam_size,
        "n_best": n_best,
        "return_attention": _bool(value("attention", "false"), "attention"),
        "tags": TagConfig(top_k=n_tags, threshold=threshold) if n_tags else None,
        "guide": guide,
    }
    return items, options


def _bool(text: str, name: str) -> bool:
    text = text.lower()
    if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise UploadError(422, f"{name}: expected true or false, got {text!r}")
    return text in ("true", "1", "yes", "on")


def _int(text: str, name: str, lo: int, hi: int) -> int:
    # Digits only: int() would also take "1_0" (10), " 3 " and other spellings no client means.
    if not re.fullmatch(r"[+-]?[0-9]{1,9}", text):
        raise UploadError(422, f"{name}: expected an integer, got {text[:40]!r}")
    v = int(text)
    if not lo <= v <= hi:
        raise UploadError(422, f"{name}: expected an integer in [{lo}, {hi}], got {v}")
    return v


def _float(text: str, name: str, lo: float, hi: float) -> float:
    try:
        if "_" in text:  # float() takes "1_0" as 10.0
            raise ValueError(text)
        v = float(text)
    except ValueError:
        raise UploadError(422, f"{name}: expected a number, got {text!r}") from None
    if not lo <= v <= hi:  # also refuses nan
        raise UploadError(422, f"{name}: expected a number in [{lo:g}, {hi:g}], got {text}")
    return v


# An absolute path (/usr/lib/..., C:\\...): a server's file system is no client's business.
_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/](?:[^\s\\/'\"()]+[\\/])+[^\s'\"():;,]*")


def _without_paths(message: str) -> str:
    """A server-side error message for a client: file-system paths replaced by <path>."""
    return _PATH.sub("<path>", message)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON {"error": "..."}; bad input never becomes a 500."""

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(UploadError)
    async def upload_error(request, e: UploadError):
        return error(e.status, e.message)

    @app.exception_handler(ServerBusy)
    async def busy(request, e: ServerBusy):
        return error(503, str(e), {"Retry-After": str(e.retry_after)})

    @app.exception_handler(CapgenError)
    async def capgen_error(request, e: CapgenError):
        return error(422, _without_paths(str(e)))

    @app.exception_handler(MemoryError)
    async def out_of_memory(request, e: MemoryError):
        return error(
            503,
            "server out of memory for this request; try again shortly, or send smaller images",
            {"Retry-After": "1"},
        )

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        return error(500, f"internal error: {type(e).__name__}")
