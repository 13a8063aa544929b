"""capgen serve: a web page and an HTTP API for captioning photos."""

from __future__ import annotations

from capgen.cli.caption import add_model_args
from capgen.cli.types import positive_float, positive_int


def register(sub, parents) -> None:
    p = sub.add_parser("serve", parents=parents, help="serve a captioning web page and HTTP API",
                       description="Start an HTTP server: the page at / captions dropped photos (with "
                                   "per-word attention maps for attention models), POST /caption takes "
                                   "multipart uploads in field 'files', GET /health reports the model, "
                                   "/docs documents the API.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    add_model_args(p)
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0, help="request size limit (default 10)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="pixels per image limit (default: the image loader's, 64,000,000)")
    p.add_argument("--timeout", type=positive_float, default=30.0,
                   help="seconds a request may wait for its caption before a 504 (default 30)")
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from capgen.images import MAX_PIXELS
    from capgen.inference import Captioner
    from capgen.serve import ServeSettings, create_app

    max_pixels = args.max_pixels or MAX_PIXELS
    captioner = Captioner.from_pretrained(args.model, encoder=args.encoder, backend=args.backend,
                                          max_pixels=max_pixels, tag_words=args.tag_words)
    app = create_app(captioner, ServeSettings(max_upload_mb=args.max_upload_mb, max_pixels=max_pixels,
                                              timeout=args.timeout))
    print(f"capgen serve: {captioner.name} on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
