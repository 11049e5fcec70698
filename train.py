#!/usr/bin/env python
"""Train and evaluate Mask R-CNN.

examples:
  python train.py --config configs/synthetic_demo.yaml [key=value ...]       # train, evaluate at the end
  python train.py --config FILE output_dir=DIR --resume                       # continue DIR's last checkpoint
  python train.py --config FILE output_dir=DIR --eval-only                    # evaluate DIR's last checkpoint
  python train.py --config FILE --eval-only model.weights=FILE.pth            # evaluate given weights
  torchrun --nproc_per_node=2 train.py --config FILE [key=value ...]          # several processes / GPUs

``key=value`` arguments override the config file (solver.max_iter=300, solver.steps=[200,250]); every key,
its default and why are in maskrcnn/defaults.py / configs/base.yaml. What a run prints and writes is
described in maskrcnn/engine/trainer.py and docs/training.md.

exit status:
  0  done (also: --resume of a run that is already finished)
  1  training stopped on a non-finite loss (the message names the iteration and the images)
  2  bad command line, config, data file or weights file, found before training starts: one line names
     the file and the key or field (--debug or MASKRCNN_DEBUG=1 adds the traceback)
  3  a checkpoint could not be written (e.g. no space left on device); the previous checkpoint is kept
     as the resume point: free space, then run again with --resume

Stop a run with Ctrl-C or `kill PID` (for torchrun: the torchrun process, which stops its workers; a
worker whose launcher has died stops by itself within a second).
"""
import argparse
import os
import sys
import traceback

from maskrcnn.config import ConfigError, load_config

DEBUG_ENV = "MASKRCNN_DEBUG"
EXIT_OK, EXIT_NON_FINITE, EXIT_BAD_INPUT, EXIT_WRITE_FAILED = 0, 1, 2, 3


def parse_args(argv=None) -> argparse.Namespace:
    description, _, epilog = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="train.py", description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file (e.g. configs/synthetic_demo.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last intact checkpoint in output_dir (start fresh if there is none)")
    parser.add_argument("--eval-only", action="store_true",
                        help="only evaluate: model.weights if set, else the last checkpoint in output_dir")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an error too (or set {DEBUG_ENV}=1)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.max_iter=100")
    args = parser.parse_intermixed_args(argv)  # key=value arguments may stand before and after options
    if args.resume and args.eval_only:
        parser.error("--resume and --eval-only exclude each other")
    args.debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return args


def one_line(error: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose text carries the worker's
    traceback), only its last line, without the exception's module and class."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        head, separator, rest = last.partition(": ")
        text = rest if separator and " " not in head else last
    return text


def fail(message: str, code: int, debug: bool) -> int:
    """Print ``train.py: message`` once (rank 0 under torchrun), the traceback first with ``debug``; return ``code``."""
    if os.environ.get("RANK", "0") == "0":
        if debug:
            traceback.print_exc()
        print(f"train.py: {message}", file=sys.stderr, flush=True)
    return code


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as error:
        return fail(f"config error: {error}", EXIT_BAD_INPUT, args.debug)
    # Imported after the config is checked, so a typo is reported without waiting for torch to load.
    from maskrcnn.checkpoint import CheckpointError
    from maskrcnn.data.problems import DataError
    from maskrcnn.engine.checkpoint import CheckpointWriteError
    from maskrcnn.engine.distributed import stop_when_launcher_exits
    from maskrcnn.engine.trainer import NonFiniteLossError, check_evaluation_inputs, train
    from maskrcnn.engine.validation import evaluate_checkpoint

    stop_when_launcher_exits()
    try:
        if args.eval_only:
            check_evaluation_inputs(cfg)
            evaluate_checkpoint(cfg)
        else:
            train(cfg, resume=args.resume)
    except NonFiniteLossError as error:
        return fail(str(error), EXIT_NON_FINITE, args.debug)
    except ConfigError as error:
        return fail(f"config error: {error}", EXIT_BAD_INPUT, args.debug)
    except (DataError, CheckpointError) as error:
        return fail(f"error: {one_line(error)}", EXIT_BAD_INPUT, args.debug)
    except FileNotFoundError as error:  # a data, weights or checkpoint file named by the config
        return fail(f"error: {error}", EXIT_BAD_INPUT, args.debug)
    except CheckpointWriteError as error:
        return fail(f"error: {error}; the previous checkpoint is kept: free space, then rerun with --resume",
                    EXIT_WRITE_FAILED, args.debug)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
