#!/usr/bin/env python
"""Train and evaluate Mask R-CNN.

    python train.py --config configs/synthetic_demo.yaml [key=value ...]            # train, evaluate at the end
    python train.py --config FILE output_dir=DIR --resume                            # continue DIR's last checkpoint
    python train.py --config FILE output_dir=DIR --eval-only                         # evaluate DIR's last checkpoint
    python train.py --config FILE --eval-only model.weights=FILE.pth                 # evaluate given weights
    torchrun --nproc_per_node=2 train.py --config FILE [key=value ...]               # several processes / GPUs

``key=value`` arguments override the config file (``solver.max_iter=300``, ``solver.steps=[200,250]``);
every key, its default and why are in ``maskrcnn/defaults.py`` / ``configs/base.yaml``. What a run prints
and writes is described in ``maskrcnn/engine/trainer.py`` and ``docs/training.md``.

Exit status: 0 on success, 1 when training stops on a non-finite loss, 2 for a bad config or command line.
"""
import argparse
import os
import sys

from maskrcnn.config import ConfigError, load_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train.py", description="Train and evaluate Mask R-CNN.")
    parser.add_argument("--config", required=True, help="YAML config file (e.g. configs/synthetic_demo.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in output_dir (start fresh if there is none)")
    parser.add_argument("--eval-only", action="store_true",
                        help="only evaluate: model.weights if set, else the last checkpoint in output_dir")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.max_iter=100")
    args = parser.parse_args(argv)
    if args.resume and args.eval_only:
        parser.error("--resume and --eval-only exclude each other")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"train.py: config error: {error}", file=sys.stderr)
        return 2
    # Imported after the config is checked, so a typo is reported without waiting for torch to load.
    from maskrcnn.engine.trainer import NonFiniteLossError, train
    from maskrcnn.engine.validation import evaluate_checkpoint

    try:
        if args.eval_only:
            evaluate_checkpoint(cfg)
        else:
            train(cfg, resume=args.resume)
    except NonFiniteLossError as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"train.py: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:  # a data, weights or checkpoint file named by the config
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
