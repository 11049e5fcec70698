"""Export ModaNet's images from PaperDoll's ``photos.lmdb`` into a folder of JPEG files.

    pip install lmdb          # optional dependency, needed only by this script
    python data/prepare_paperdoll.py --lmdb datasets/paperdoll/photos.lmdb \
        --annotations datasets/modanet/modanet2018_instances_train.json --out datasets/modanet/images

ModaNet ships annotations only; its images are the PaperDoll street photos, stored in an LMDB
database (~40 GB) whose key is the decimal image id as ASCII bytes and whose value is the encoded
image. Each image of the annotation file is written as ``<out>/<file_name>`` (``%07d.jpg``), bytes
unchanged. Existing files are left alone, so an interrupted export can be resumed. With ``--verify``
(the default) the header of each written image is read and its size compared with the annotation's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

LMDB_MISSING = ("The PaperDoll export needs the optional 'lmdb' package, which is not installed.\n"
                "Install it with:  pip install lmdb\n"
                "(Only this script uses it; nothing else in maskrcnn needs lmdb.)")


def export_images(get_bytes, images: list, out_dir: str, verify: bool = True) -> dict:
    """Write each image's bytes to ``out_dir/file_name``.

    Args:
        get_bytes: ``key (bytes) -> encoded image bytes or None``; the key is ``str(id).encode()``.
        images: the COCO ``images`` list (``id``, ``file_name``, ``height``, ``width``).
        verify: read each written image's header and compare its size with the annotation's.

    Returns:
        ``{"written": [...], "skipped": [...] (already there), "missing": [...] (not in the database),
        "mismatched": [(file_name, (h, w) found)]}``.
    """
    from PIL import Image

    result = {"written": [], "skipped": [], "missing": [], "mismatched": []}
    os.makedirs(out_dir, exist_ok=True)
    for image in images:
        path = os.path.join(out_dir, image["file_name"])
        if os.path.exists(path):
            result["skipped"].append(image["file_name"])
            continue
        data = get_bytes(str(image["id"]).encode("ascii"))
        if data is None:
            result["missing"].append(image["file_name"])
            continue
        data = bytes(data)
        if verify:
            with Image.open(io.BytesIO(data)) as picture:
                width, height = picture.size
            if (height, width) != (image["height"], image["width"]):
                result["mismatched"].append((image["file_name"], (height, width)))
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)  # atomic: a partial file never looks complete
        result["written"].append(image["file_name"])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lmdb", required=True, help="PaperDoll photos.lmdb folder")
    parser.add_argument("--annotations", required=True, help="a ModaNet COCO JSON (its images are exported)")
    parser.add_argument("--out", required=True, help="folder for the image files")
    parser.add_argument("--no-verify", action="store_true", help="do not compare image sizes")
    args = parser.parse_args(argv)
    try:
        import lmdb
    except ImportError:
        print(LMDB_MISSING, file=sys.stderr)
        return 2
    with open(args.annotations) as f:
        images = json.load(f)["images"]
    env = lmdb.open(args.lmdb, readonly=True, lock=False, readahead=False)
    with env.begin() as txn:
        result = export_images(txn.get, images, args.out, verify=not args.no_verify)
    print(f"written {len(result['written'])}, already there {len(result['skipped'])}, "
          f"missing from the database {len(result['missing'])}, size mismatches {len(result['mismatched'])}")
    for name in result["missing"][:20]:
        print(f"missing: {name}", file=sys.stderr)
    for name, size in result["mismatched"][:20]:
        print(f"size mismatch: {name} is {size[1]}x{size[0]} (w x h)", file=sys.stderr)
    return 1 if result["missing"] or result["mismatched"] else 0


if __name__ == "__main__":
    sys.exit(main())
