"""Split ModaNet's training JSON into train and val, seeded and stratified by category.

    python data/prepare_modanet_split.py --annotations datasets/modanet/modanet2018_instances_train.json \
        --val-fraction 0.1 --seed 0 --out-dir datasets/modanet

ModaNet's released val JSON has no annotations, so everyone holds out part of the train JSON; this
script makes that split reproducible (same file + seed -> byte-identical outputs) and keeps every
category's share of val close to ``--val-fraction`` (stratified, as seed 003's Run 3 did).

Stratification of a multi-label set: each image belongs to the stratum of its **rarest** category
(the one in the fewest images; ties go to the lower id), images without annotations form one more
stratum. Each stratum's image ids are sorted, shuffled with one ``numpy.random.default_rng(seed)``
(strata in a fixed order), and the first ``round(val_fraction * n)`` go to val. Rare categories thus
get their exact share; common ones, which also ride along with rarer ones, come out close to it.

The outputs keep ``info``, ``licenses`` and ``categories``; annotation ids are renumbered from 1 in each
file (ModaNet's start at 0, which COCOeval treats as "no match"), unless ``--keep-ids``. Writes
``modanet_train.json`` and ``modanet_val.json`` (``--prefix`` changes the names: any COCO JSON, e.g.
the converted iMaterialist file, can be split the same way) and prints per-category counts. A split
that would come out empty (a tiny file, or a fraction that rounds to 0 images in every stratum) is an
error (exit 2): nothing is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict

import numpy as np


def stratified_split(images: list, annotations: list, val_fraction: float, seed: int) -> tuple:
    """Image ids ``(train_ids, val_ids)``, each sorted; see the module docstring for the rule."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction: expected a number in [0, 1], got {val_fraction}")
    categories_of = defaultdict(set)
    for ann in annotations:
        categories_of[ann["image_id"]].add(ann["category_id"])
    images_per_category = Counter(c for cats in categories_of.values() for c in cats)
    strata = defaultdict(list)
    for image in images:
        cats = categories_of.get(image["id"])
        key = min(cats, key=lambda c: (images_per_category[c], c)) if cats else None
        strata[key].append(image["id"])
    rng = np.random.default_rng(seed)
    train_ids, val_ids = [], []
    for key in sorted(strata, key=lambda k: (k is None, k if k is not None else 0)):
        ids = sorted(strata[key])
        order = rng.permutation(len(ids))
        n_val = int(round(val_fraction * len(ids)))
        val_ids += [ids[i] for i in order[:n_val]]
        train_ids += [ids[i] for i in order[n_val:]]
    return sorted(train_ids), sorted(val_ids)


def subset(data: dict, image_ids: list, keep_ids: bool) -> dict:
    """The COCO dict restricted to ``image_ids`` (file order kept); ids renumbered unless keep_ids."""
    wanted = set(image_ids)
    annotations = [dict(a) for a in data.get("annotations", []) if a["image_id"] in wanted]
    if not keep_ids:
        for new_id, ann in enumerate(annotations, start=1):
            ann["id"] = new_id
    out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    out["images"] = [im for im in data["images"] if im["id"] in wanted]
    out["annotations"] = annotations
    return out


def category_counts(data: dict) -> Counter:
    return Counter(a["category_id"] for a in data["annotations"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", required=True, help="modanet2018_instances_train.json")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    parser.add_argument("--out-dir", required=True, help="folder for modanet_train.json and modanet_val.json")
    parser.add_argument("--keep-ids", action="store_true", help="keep the source annotation ids")
    parser.add_argument("--prefix", default="modanet",
                        help="output names <prefix>_train.json / <prefix>_val.json (any COCO JSON can be split)")
    args = parser.parse_args(argv)
    with open(args.annotations) as f:
        data = json.load(f)
    train_ids, val_ids = stratified_split(data["images"], data.get("annotations", []), args.val_fraction, args.seed)
    for name, ids in (("val", val_ids), ("train", train_ids)):
        if not ids:
            print(f"error: {args.annotations}: --val-fraction {args.val_fraction} puts 0 of the "
                  f"{len(data['images'])} images in {name} (each category's share is rounded per stratum); "
                  f"use a {'larger' if name == 'val' else 'smaller'} --val-fraction or more images", file=sys.stderr)
            return 2
    os.makedirs(args.out_dir, exist_ok=True)
    splits = {"train": subset(data, train_ids, args.keep_ids), "val": subset(data, val_ids, args.keep_ids)}
    for name, split in splits.items():
        path = os.path.join(args.out_dir, f"{args.prefix}_{name}.json")
        with open(path, "w") as f:
            json.dump(split, f)
        print(f"wrote {path}: {len(split['images'])} images, {len(split['annotations'])} annotations")
    train_counts, val_counts = category_counts(splits["train"]), category_counts(splits["val"])
    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    print("category              train      val   val share")
    for cat in sorted(set(train_counts) | set(val_counts)):
        total = train_counts[cat] + val_counts[cat]
        print(f"{cat:3d} {names.get(cat, '?'):15s} {train_counts[cat]:8d} {val_counts[cat]:8d}   {val_counts[cat] / total:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
