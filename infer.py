#!/usr/bin/env python
"""Run a trained Mask R-CNN on images: boxes, tags, scores and masks per item.

    python infer.py --weights output/synthetic_demo/model_0001000.pth photos/ --out runs/photos
    python infer.py --weights CKPT "shop/*.png" --out runs/shop --crops --class dress --class bag
    python infer.py --weights CKPT crawled/ --out runs/crawl --as-dataset datasets/crawl --score-thresh 0.7
    python infer.py --weights CKPT val/ --out runs/val --json coco --score-thresh 0.05

Writes one JSON per image (boxes in xyxy pixels, tags, category ids, scores, masks as COCO RLE) or one COCO
results file, overlay pictures, optionally transparent-background crops and a COCO dataset of the predictions.
The options, the output layout and the exit status are described in ``maskrcnn/inference/cli.py`` and
``docs/inference.md``; the same predictions are available in Python as ``maskrcnn.Predictor``.
"""
import sys

from maskrcnn.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
