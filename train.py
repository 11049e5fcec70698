#!/usr/bin/env python
"""Train (and evaluate) Mask R-CNN: `python train.py --config FILE [key=value ...]`.

Not implemented yet: the training loop arrives with the training issue. This entry point refuses to
pretend: it exits with status 2 and says so.
"""
import sys


def main() -> int:
    print("train.py: not implemented yet (the training loop is the training issue's work).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
