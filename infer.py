#!/usr/bin/env python
"""Run a trained Mask R-CNN on images: `python infer.py --weights CKPT INPUT... --out DIR`.

Not implemented yet: inference arrives with the inference issue. This entry point refuses to pretend:
it exits with status 2 and says so.
"""
import sys


def main() -> int:
    print("infer.py: not implemented yet (inference is the inference issue's work).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
