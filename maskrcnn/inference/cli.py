"""The command line of ``infer.py``: images in, JSON / overlays / crops / a COCO dataset out.

    python infer.py --weights CKPT [--config FILE] INPUT... --out DIR [options]

INPUT is an image file, a folder (searched recursively for image files) or a glob pattern (quote it:
``"shop/*.png"``). What lands in DIR (``maskrcnn/inference/outputs.py`` has the formats):

    DIR/json/{name}.json         one per image (default; --json coco writes DIR/coco_results.json instead,
                                 --json none neither)
    DIR/overlays/{name}.png      masks, boxes, "tag score" labels (with an attribute head "tag score | attributes"),
                                 legend (--no-overlays to skip)
    DIR/crops/{name}_{k}_{tag}.png   each instance on a transparent background (--crops)
    DIR/unreadable.txt           "path<TAB>reason" of each file that could not be read (only if any)
    --as-dataset DATASET_DIR     the images and a COCO instances JSON of the predictions (auto-annotation)

Every option has a config key (``infer.*`` in ``maskrcnn/defaults.py``; ``--set key=value`` for any other key,
e.g. ``--set input.min_size=1024``); the defaults are the checkpoint's config. A file that cannot be read is
reported on stderr as ``infer.py: skipped PATH: reason`` (and in unreadable.txt) and the run goes on. Exit status: 0 when every input was
processed, 1 when some files could not be read (the others' outputs are written), 2 for a bad command line,
weights file or config.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from maskrcnn.config import ConfigError


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="infer.py", description="Run a trained Mask R-CNN on images: boxes, tags, scores and masks.",
        epilog="Defaults come from the checkpoint's config, section infer (see maskrcnn/defaults.py).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--weights", required=True, help="checkpoint written by train.py (or a state dict + --config)")
    parser.add_argument("--config", help="YAML config replacing the checkpoint's (needed for bare state dicts)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available; default), cpu, cuda, cuda:1")
    parser.add_argument("--score-thresh", type=float, help="keep detections scoring at least this (infer.score_thresh)")
    parser.add_argument("--max-detections", type=int, help="most detections per image (infer.max_detections)")
    parser.add_argument("--class", dest="classes", action="append", metavar="NAME",
                        help="keep only this class; repeat for several (infer.classes)")
    parser.add_argument("--mask-threshold", type=float, help="mask probability cut (infer.mask_threshold)")
    parser.add_argument("--attribute-thresh", type=float,
                        help="with an attribute head: list attributes scoring at least this (infer.attribute_thresh)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (infer.batch_size)")
    parser.add_argument("--workers", type=int, help="image-decoding processes (infer.num_workers)")
    parser.add_argument("--max-decoded-side", type=int, help="shrink larger images first (infer.max_decoded_side)")
    parser.add_argument("--max-image-pixels", type=int,
                        help="refuse larger images, 0 = no limit (infer.max_image_pixels)")
    parser.add_argument("--overlay-max-side", type=int,
                        help="scale overlays down to this side (infer.overlay_max_side)")
    parser.add_argument("--json", choices=("per-image", "coco", "none"), default="per-image",
                        help="one JSON per image (default), one COCO results file, or none")
    parser.add_argument("--no-overlays", action="store_true", help="do not draw overlay pictures")
    parser.add_argument("--crops", action="store_true", help="write each instance as an RGBA crop (product image)")
    parser.add_argument("--as-dataset", metavar="DIR", help="also write the images + COCO instances JSON of the "
                                                            "predictions to DIR (auto-annotation)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set input.min_size=1024")
    return parser.parse_args(argv)


def skip_reason(path: str, error: str) -> str:
    """The reason of a decoding ``error`` without the path it repeats: the line reads ``skipped PATH: reason``.

    ``skip_reason("a.jpg", "cannot identify image file 'a.jpg' (UnidentifiedImageError)")`` ->
    ``"cannot identify image file (UnidentifiedImageError)"``.
    """
    if error.startswith(f"{path}: "):
        error = error[len(path) + 2:]
    return error.replace(f" {path!r}", "").replace(f" '{path}'", "").replace(f' "{path}"', "")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # Imported here so that --help and argument errors do not wait for torch.
    from maskrcnn.inference.auto_annotate import DatasetWriter
    from maskrcnn.inference.images import expand_inputs
    from maskrcnn.inference.outputs import attribute_source_ids, coco_results, summary_line, write_json, write_outputs
    from maskrcnn.inference.predictor import Predictor

    overrides = list(args.overrides)
    if args.attribute_thresh is not None:
        overrides.append(f"infer.attribute_thresh={args.attribute_thresh}")
    try:
        paths = expand_inputs(args.inputs)
        predictor = Predictor(
            args.weights, device=args.device, config=args.config, overrides=overrides,
            score_thresh=args.score_thresh, max_detections=args.max_detections, classes=args.classes,
            mask_threshold=args.mask_threshold, batch_size=args.batch_size, num_workers=args.workers,
            max_decoded_side=args.max_decoded_side, max_image_pixels=args.max_image_pixels)
        model_cfg = predictor.cfg.model  # COCO results name attributes by their source ids (outputs.py)
        names = list(model_cfg.attribute_names) or [f"attribute_{a}" for a in range(model_cfg.num_attributes)]
        attribute_ids = attribute_source_ids(names, model_cfg.attribute_source_ids) if args.json == "coco" else None
    except (FileNotFoundError, ValueError, ConfigError) as error:
        print(f"infer.py: error: {error}", file=sys.stderr)
        return 2
    if not paths:
        print("infer.py: error: the inputs hold no image files", file=sys.stderr)
        return 2
    overlay_max_side = (predictor.cfg.infer.overlay_max_side if args.overlay_max_side is None
                        else args.overlay_max_side)
    print(f"{len(paths)} image(s) on {predictor.device}; classes {predictor.class_names}; "
          f"score >= {predictor.score_thresh}; output in {args.out}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    dataset = DatasetWriter(args.as_dataset, predictor.class_names) if args.as_dataset else None
    results, coco, failures = [], [], []
    for image_id, result in enumerate(predictor.predict_files(paths), start=1):
        if result.error is not None:
            reason = skip_reason(result.path, result.error)
            print(f"infer.py: skipped {result.path}: {reason}", file=sys.stderr, flush=True)
            failures.append(f"{result.path}\t{reason}")
        else:
            write_outputs(result, args.out, predictor.class_names, args.weights, predictor.score_thresh,
                          predictor.mask_threshold, per_image_json=args.json == "per-image",
                          overlays=not args.no_overlays, crops=args.crops, overlay_max_side=overlay_max_side)
            if args.json == "coco":
                coco.extend(coco_results(result, image_id, attribute_ids))
            if dataset is not None:
                dataset.add(result, image_id)
            tags = ", ".join(f"{i.tag} {i.score:.2f}" for i in result.instances[:6])
            more = f", +{len(result.instances) - 6}" if len(result.instances) > 6 else ""
            print(f"{result.path}: {len(result.instances)} instance(s){': ' + tags + more if tags else ''}",
                  flush=True)
        result.image = None  # release the decoded pixels; keep the (small) instances for the summary
        results.append(result)

    if args.json == "coco":
        print(f"COCO results: {write_json(os.path.join(args.out, 'coco_results.json'), coco)}")
    if dataset is not None:
        path = dataset.close()
        empty = dataset.skipped_empty_masks
        note = f" ({empty} instance(s) with empty masks left out)" if empty else ""
        print(f"dataset: {path} with {len(dataset.images)} image(s), {len(dataset.annotations)} annotation(s){note}")
    if failures:
        with open(os.path.join(args.out, "unreadable.txt"), "w") as f:
            f.write("\n".join(failures) + "\n")
    print(summary_line(results), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
