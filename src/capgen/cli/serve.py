"""capgen serve: a web page and an HTTP API for captioning photos."""

from __future__ import annotations

from capgen.argtypes import port, positive_float, positive_int
from capgen.cli.caption import add_model_args, load_captioner


def register(sub, parents) -> None:
    p = sub.add_parser(
        "serve",
        parents=parents,
        help="serve a captioning web page and HTTP API",
        description="Start an HTTP server: the page at / captions dropped photos (with "
        "per-word attention maps for attention models), POST /caption takes "
        "multipart uploads in field 'files', GET /health reports the model, "
        "/openapi.json describes the API.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    add_model_args(p)
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0, help="request size limit (default 10)")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        help="pixels per image limit (default: the image loader's, 64,000,000)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=30.0,
        help="seconds a request may wait for its caption before a 504 (default 30)",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=8,
        help="images captioned together in one model call, gathered across requests (default 8)",
    )
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=64,
        help="requests waiting for the model before new ones get 503 with Retry-After (default 64)",
    )
    p.add_argument(
        "--read-timeout",
        type=positive_float,
        default=30.0,
        help="seconds a client may take to send its request body before a 408 (default 30)",
    )
    p.add_argument(
        "--allowed-hosts",
        default="127.0.0.1,localhost",
        metavar="HOSTS",
        help="comma-separated Host header values to answer, against DNS rebinding (default "
        "127.0.0.1,localhost; add the name clients use with --host 0.0.0.0; '*' for any)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from capgen.images import MAX_PIXELS
    from capgen.serve import ServeSettings, create_app

    _check_can_listen(args.host, args.port)  # before the model loads: a taken port is a one-line error
    max_pixels = args.max_pixels or MAX_PIXELS
    hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
    settings = ServeSettings(
        max_upload_mb=args.max_upload_mb,
        max_pixels=max_pixels,
        timeout=args.timeout,
        read_timeout=args.read_timeout,
        allowed_hosts=hosts,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )  # checked before the model loads
    captioner = load_captioner(args, max_pixels=max_pixels)
    app = create_app(captioner, settings)
    print(
        f"capgen serve: {captioner.name} on http://{args.host}:{args.port}/ (Ctrl-C to stop; answering Host "
        f"{', '.join(hosts)})"
    )
    # Idle keep-alive connections close after 5 s; beyond 128 open connections new ones get a 503,
    # so slow clients cannot exhaust the process.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5, limit_concurrency=128)
    return 0


def _check_can_listen(host: str, port: int) -> None:
    import socket

    from capgen.errors import CapgenError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            s.bind(infos[0][4])
    except OSError as e:
        raise CapgenError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
