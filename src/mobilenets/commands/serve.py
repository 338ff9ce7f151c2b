"""``mobilenets serve``: one model over HTTP (the page, ``POST /predict``, Open Inference Protocol v2,
``/metrics``); the work is :mod:`mobilenets.serve`'s."""
from __future__ import annotations

import argparse
import logging

from ..deploy.formats import BACKENDS
from ..errors import UserError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a checkpoint or exported model over HTTP (page, /predict, OIP v2, /metrics)",
        description="One process: the HTTP loop, a small pool that decodes and resizes uploads, and one inference "
                    "worker that runs whatever is queued as one batch (no added wait). SIGTERM lets the requests "
                    "in flight finish, then exits 0. Needs pip install 'mobilenets[serve]'.")
    p.add_argument("model", metavar="CHECKPOINT|EXPORTED_FILE",
                   help="a checkpoint (exported once to a dynamic-batch ONNX file in the cache, unless --backend "
                        "torch runs it eagerly) or a file written by 'mobilenets export'")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default: the fastest installed runtime for the file, measured once) or one of "
                        f"{', '.join(b for b in BACKENDS if b != 'auto')}")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port, printed)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of the runtime (default: every core)")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="threads decoding and resizing uploads (default: 2, or 1 on one core)")
    p.add_argument("--max-batch", type=int, default=8, help="most images run in one batch (default 8)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests inside the server at once; the next gets 503 with Retry-After (default 64)")
    p.add_argument("--max-upload-mb", type=float, default=16, help="largest upload in MiB, else 413 (default 16)")
    p.add_argument("--max-megapixels", type=float, default=40,
                   help="largest decoded image in millions of pixels, else 413 (default 40)")
    p.add_argument("--name", default=None, help="model name in the OIP routes (default: the model's name)")
    p.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from ..deploy.files import optional_import
    from ..deploy.triton import usable_cores

    for flag in ("threads", "decode_threads", "max_batch", "max_queue"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value} must be at least 1")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise UserError("--max-upload-mb and --max-megapixels must be positive")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port; use 0-65535")
    for module in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"):
        optional_import(module, "serve", "mobilenets serve")

    import torch

    from ..serve.app import create_app
    from ..serve.limits import MB, Limits
    from ..serve.model import open_model
    from ..serve.server import bind, run

    cores = usable_cores()
    threads = args.threads or cores
    decode_threads = args.decode_threads or min(2, cores)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * MB), max_pixels=int(args.max_megapixels * 1e6),
                    max_batch=args.max_batch, max_queue=args.max_queue)
    sock = bind(args.host, args.port)  # before loading: a taken port fails at once
    try:
        served = open_model(args.model, args.backend, threads, name=args.name)
    except BaseException:
        sock.close()
        raise
    if served.backend != "torch":
        torch.set_num_threads(1)  # torch only resizes uploads then, one image per decode thread
    app = create_app(served, limits, decode_threads)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    fixed = (f"; the file has a fixed batch of {served.runner.batch}, so batches run in pieces of that size "
             "(export with --dynamic-batch to batch)") if served.runner.batch else ""
    print(f"serving {served.name} ({served.task.name}, {served.backend}, {threads} runtime threads + 1 inference "
          f"worker + {decode_threads} decode threads, batches up to {limits.max_batch}{fixed}) on "
          f"http://{shown}:{port}/", flush=True)
    run(app, sock)
    print("stopped", flush=True)
    return 0
