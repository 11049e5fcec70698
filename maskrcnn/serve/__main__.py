"""``python -m maskrcnn.serve --weights CKPT [--host 127.0.0.1] [--port 8000] [options]``: the HTTP server.

Loads the checkpoint once (as ``infer.py`` does: ``--config``, ``--set``, ``--device``), then serves the API and
the page with uvicorn (``maskrcnn/serve/app.py``). ``--workers N`` starts N processes, each with its own copy
of the model, sharing the port (uvicorn's process manager; each rebuilds the app from these same arguments).
Exit status 2, with one line naming the problem, for a missing extra, a bad weights file, config or option.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import List, Optional

ENVIRONMENT_ARGS = "MASKRCNN_SERVE_ARGS"  # the command line, as JSON, for --workers > 1
# (package, its import names): python-multipart is imported as python_multipart (as multipart before 0.0.13)
EXTRA_MODULES = (("fastapi", ("fastapi",)), ("uvicorn", ("uvicorn",)),
                 ("python-multipart", ("python_multipart", "multipart")))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m maskrcnn.serve", description="Serve a trained Mask R-CNN: an HTTP API and a web page.",
        epilog="Request defaults come from the checkpoint's config, section infer (maskrcnn/defaults.py).")
    parser.add_argument("--weights", required=True, help="checkpoint written by train.py (or a state dict + --config)")
    parser.add_argument("--config", help="YAML config replacing the checkpoint's (needed for bare state dicts)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set input.min_size=1024")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                            "only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available; default), cpu, cuda, cuda:1")
    parser.add_argument("--score-thresh", type=float, help="default score threshold of a request (infer.score_thresh)")
    parser.add_argument("--max-detections", type=int, help="default most items per image (infer.max_detections)")
    parser.add_argument("--class", dest="classes", action="append", metavar="NAME",
                        help="default class filter; repeat for several (infer.classes)")
    parser.add_argument("--max-batch", type=int, default=4, help="most waiting requests run in one forward pass "
                                                                 "(default 4; 1 = every request alone)")
    parser.add_argument("--max-queue", type=int, default=32,
                        help="most requests in at once, decoding, waiting or running; more get 503 (default 32)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take, upload included; "
                                                                    "then 408 or 504 (default 30)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB; larger gets 413 "
                                                                          "(default 20)")
    parser.add_argument("--max-image-pixels", type=int, default=50_000_000,
                        help="refuse images with more pixels, from the header (decompression bombs; default 50e6)")
    parser.add_argument("--max-decoded-side", type=int, help="shrink larger images first (infer.max_decoded_side)")
    parser.add_argument("--threads", type=int, help="torch threads of the model (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=1, help="server processes, each with its own model (default 1)")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    args = parser.parse_args(argv)
    for name in ("max_batch", "max_queue", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.timeout <= 0 or args.max_upload_mb <= 0:
        parser.error("--timeout and --max-upload-mb must be positive")
    return args


def missing_extra() -> Optional[str]:
    """The message naming the ``serve`` extra when one of its packages cannot be imported, else None."""
    missing = [package for package, modules in EXTRA_MODULES if not any(_importable(name) for name in modules)]
    if not missing:
        return None
    return (f"the serving extra is not installed (missing: {', '.join(missing)}); install it with "
            f"pip install 'maskrcnn[serve]' (or: pip install fastapi uvicorn python-multipart)")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def build_app(args: argparse.Namespace):
    """The Predictor and the app of ``args`` (raises ValueError, FileNotFoundError or ConfigError)."""
    from maskrcnn.inference.predictor import Predictor
    from maskrcnn.serve.app import ServeSettings, create_app
    from maskrcnn.serve.requests import UploadLimits

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    predictor = Predictor(args.weights, device=args.device, config=args.config, overrides=args.overrides,
                          score_thresh=args.score_thresh, max_detections=args.max_detections, classes=args.classes,
                          max_decoded_side=args.max_decoded_side, num_workers=0)
    limits = UploadLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_image_pixels=args.max_image_pixels,
                          max_decoded_side=predictor.max_decoded_side)
    settings = ServeSettings(max_batch=args.max_batch, max_queue=args.max_queue, timeout_s=args.timeout,
                             overlay_max_side=predictor.cfg.infer.overlay_max_side, limits=limits)
    return predictor, create_app(predictor, settings)


def app_from_environment():
    """uvicorn's app factory in each ``--workers`` process: the app of the command line in the environment."""
    return build_app(parse_args(json.loads(os.environ[ENVIRONMENT_ARGS])))[1]


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    problem = missing_extra()
    if problem:
        print(f"maskrcnn.serve: error: {problem}", file=sys.stderr)
        return 2
    import uvicorn

    from maskrcnn.config import ConfigError

    try:
        predictor, app = build_app(args)  # also checks the weights before any worker starts
    except (FileNotFoundError, ValueError, ConfigError) as error:
        one_line = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"maskrcnn.serve: error: {one_line}", file=sys.stderr)
        return 2
    print(f"maskrcnn.serve: {args.weights} on {predictor.device}, classes {predictor.class_names}; "
          f"http://{args.host}:{args.port}/ (max batch {args.max_batch}, queue {args.max_queue}, "
          f"timeout {args.timeout:g} s, {args.workers} worker(s))", flush=True)
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    else:
        del predictor, app  # each worker process loads its own
        os.environ[ENVIRONMENT_ARGS] = json.dumps(argv)
        uvicorn.run("maskrcnn.serve.__main__:app_from_environment", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
