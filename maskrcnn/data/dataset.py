"""The training ``Dataset``: records in, ``(image, target)`` pairs out, bad data never silent.

    dataset = FashionDataset(records, augmentations=build_augmentations(cfg.data.augment), seed=cfg.seed)
    image, target = dataset[0]
    # image   float32 (3, H, W), RGB in [0, 1]
    # target  {"boxes": (N, 4) float32 (x1, y1, x2, y2) pixels, "labels": (N,) int64 in 1..K,
    #          "masks": (N, H, W) uint8 full-image masks, "image_id": int}

Images are decoded with Pillow (``decode_image``, ``uint8``): the EXIF orientation is applied (phone photos are often
stored sideways), and every mode becomes RGB: palette, greyscale, CMYK, 16-bit greyscale (scaled by 65535),
and images with transparency (composited on white, the usual product-photo background).

For training, ``input_size=(input.min_size, input.max_size)`` makes a photo larger than the model's input come
out already at the model's input size, its masks built at that size (``shrink.py``): a 5214 x 3676 photo with
30 masks then costs a fraction of the time and memory, and the model's own resize becomes an exact copy.

Annotations come from ``records.py``'s schema: the box is the record's ``bbox`` clipped to the image, the mask
is the rasterized ``segmentation``. Crowd annotations (``iscrowd = 1``) are left out of training targets, as in
detectron2: a crowd region is neither a positive instance nor background.

Bad data. A broken image (missing, undecodable, larger than Pillow's decompression-bomb limit, or a size
different from its record) is *skipped*: one
``DataWarning`` names the file, the item is marked bad for the rest of the run, and the next good index takes
its place, so every batch keeps its size and every distributed rank its step count. A broken annotation
(undecodable segmentation, empty mask, degenerate box, category outside 1..K) is dropped from its image with one
warning naming the file and the annotation. With ``strict=True`` both raise ``DataError`` instead. The marks
live in shared memory, so skips counted inside DataLoader worker processes show in ``num_skipped_images`` and
``num_skipped_annotations`` of the main process's dataset.

Augmentation randomness: item ``i`` in epoch ``e`` draws from a ``torch.Generator`` seeded with
``(seed, e, i)``, so the output does not depend on worker count or scheduling. Call ``set_epoch`` before each
epoch (the DataLoader re-copies the dataset into its workers at every epoch unless ``persistent_workers``).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .problems import DataError, DataWarning
from .attributes import attribute_targets
from .records import segmentation_to_mask
from .shrink import shrink_box, shrink_image, shrunk_mask, shrunk_size, size_rule

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # how Pillow opens 16-bit greyscale PNG/TIFF
EXIF_ORIENTATION_TAG = 0x0112


def decode_image(path: str) -> np.ndarray:
    """Decode an image file into the (H, W, 3) RGB array that training sees, honouring the EXIF orientation.

    8-bit images (every mode Pillow maps to RGB: palette, greyscale, CMYK, ...) come out as ``uint8``, so a
    large photo costs one byte per value until it is resized; images with transparency are composited on
    white first. 16-bit greyscale (scaled by 65535) and float images come out as ``float32`` in [0, 1].
    Raises ``OSError`` / ``PIL.UnidentifiedImageError`` / ``ValueError`` for missing or undecodable files
    and ``PIL.Image.DecompressionBombError`` for images above Pillow's pixel limit.
    """
    with Image.open(path) as opened:
        opened.load()  # decode now: a truncated file fails here, inside the caller's error handling
        # exif_transpose and convert each copy the whole picture: only call them when they change something
        orientation = opened.getexif().get(EXIF_ORIENTATION_TAG, 1)
        image = ImageOps.exif_transpose(opened) if orientation not in (None, 1) else opened
        if image.mode in SIXTEEN_BIT_MODES:
            gray = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)  # (H, W)
            return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
        if image.mode == "F":
            gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)  # floats are taken as [0, 1] intensities
            return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
        if "A" in image.mode or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)  # (H, W, 3) uint8


def image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """:func:`decode_image`'s (H, W, 3) array -> float32 (3, H, W) in [0, 1] (uint8 values divided by 255)."""
    planes = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W)
    return planes.float().div_(255.0) if planes.dtype == torch.uint8 else planes.float()


def read_image(path: str) -> torch.Tensor:
    """Decode an image file into float32 RGB (3, H, W) in [0, 1], honouring the EXIF orientation.

    The training decoder (:func:`decode_image`) then :func:`image_to_tensor`. Raises as ``decode_image``.
    """
    return image_to_tensor(decode_image(path))


def _item_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed mixing (seed, epoch, index) with NumPy's SeedSequence (no two items share a stream)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0])


class FashionDataset(torch.utils.data.Dataset):
    """A map-style dataset over records (see ``records.py``) yielding ``(image, target)``.

    Args:
        records: a list of record dicts, or a ``RecordSet`` (its ``class_names`` then set ``num_classes``).
        augmentations: ``callable(image, target, generator) -> (image, target)``, e.g. ``transforms.Compose``;
            None for evaluation.
        num_classes: K; a ``category_id`` outside 1..K is a broken annotation. None skips that check.
        strict: raise ``DataError`` on the first broken image or annotation instead of skipping it.
        seed: base seed of the per-item augmentation generators.
        input_size: the model's ``(input.min_size, input.max_size)`` for training: a photo larger than the
            model's input is then resized here, before its masks are built (``shrink.py``), and the item
            comes out at the model's input size. None (evaluation, where predictions must be in original
            pixels) keeps every image at its own size.
    """

    def __init__(self, records, augmentations: Optional[Callable] = None, num_classes: Optional[int] = None,
                 strict: bool = False, seed: int = 0, input_size: Optional[Sequence[int]] = None):
        self.class_names = list(getattr(records, "class_names", []) or [])
        # attribute ``a`` of the model is source attribute id ``attribute_source_ids[a]`` (data/attributes.py)
        self.attribute_index = {s: a for a, s in enumerate(getattr(records, "attribute_source_ids", []) or [])}
        self.records = list(getattr(records, "records", records))
        if num_classes is None and self.class_names:
            num_classes = len(self.class_names)
        self.augmentations = augmentations
        self.num_classes = num_classes
        self.strict = strict
        self.seed = seed
        self.size_rule = size_rule(*input_size) if input_size is not None else None
        self.epoch = 0
        # Per-item marks shared with DataLoader workers: 1 = broken image; count of dropped annotations.
        self._bad_image = torch.zeros(len(self.records), dtype=torch.uint8).share_memory_()
        self._bad_annotations = torch.zeros(len(self.records), dtype=torch.int32).share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation streams of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def aspect_ratios(self) -> list:
        """width / height of every record, from the records alone (no decoding), for batch grouping."""
        return [r["width"] / r["height"] for r in self.records]

    # -- skip accounting ------------------------------------------------------------------------
    @property
    def num_skipped_images(self) -> int:
        return int(self._bad_image.sum())

    @property
    def num_skipped_annotations(self) -> int:
        return int(self._bad_annotations.sum())

    def skipped_files(self) -> list:
        """File names of the images skipped so far."""
        return [self.records[i]["file_name"] for i in torch.nonzero(self._bad_image).flatten().tolist()]

    def skipped_images(self) -> list:
        """``[{"index", "image_id", "file_name", "reason"}]`` of the images skipped so far, in index order.

        The marks are shared with the DataLoader workers but the messages are not, so the reason is found
        again by decoding the image once more (a handful of files; evaluation reports them).
        """
        skipped = []
        for index in torch.nonzero(self._bad_image).flatten().tolist():
            record = self.records[index]
            try:
                self.load(index)
                reason = "could not be read when it was needed"
            except DataError as error:
                reason = str(error)
                prefix = f"{record['file_name']}: "
                reason = reason[len(prefix):] if reason.startswith(prefix) else reason
            skipped.append({"index": index, "image_id": int(record["image_id"]), "file_name": record["file_name"],
                            "reason": reason})
        return skipped

    def skip_summary(self) -> str:
        """One line for the training log, e.g. ``skipped 2 broken images and 5 broken annotations``."""
        return (f"skipped {self.num_skipped_images} broken image(s) and {self.num_skipped_annotations} "
                f"broken annotation(s) of {len(self)} images")

    # -- loading ----------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> tuple:
        """The sample at ``index``, or, when that image is broken, the next good one (wrapping around)."""
        count = len(self.records)
        if not 0 <= index < count:
            raise IndexError(f"FashionDataset index {index} out of range for {count} images")
        for attempt in range(count):
            current = (index + attempt) % count
            if self._bad_image[current]:
                continue
            try:
                return self.load(current)
            except DataError as error:
                if self.strict:
                    raise
                self._bad_image[current] = 1
                warnings.warn(f"{error} (image skipped)", DataWarning, stacklevel=2)
        raise DataError(f"every one of the {count} images is broken; see the warnings above")

    def load(self, index: int) -> tuple:
        """Decode and augment item ``index``; raise ``DataError`` naming the file if its image is broken."""
        record = self.records[index]
        path = record["file_name"]
        try:
            array = decode_image(path)  # (H, W, 3) uint8 (float32 for 16-bit images)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise DataError(f"{path}: cannot decode the image ({type(error).__name__}: {error})") from error
        height, width = array.shape[:2]
        if (height, width) != (record["height"], record["width"]):
            raise DataError(f"{path}: the image is {height}x{width} (HxW, after EXIF orientation) but its "
                            f"record says {record['height']}x{record['width']}")
        size = shrunk_size(self.size_rule, height, width) if self.size_rule is not None else None
        if size is None:
            image = image_to_tensor(array)  # (3, H, W) float32
        else:  # a photo larger than the model's input: resize first, build the masks small
            image = shrink_image(array, size)  # (3, h, w) float32
        del array
        target = self._target(record, index, height, width, size)
        if self.augmentations is not None:
            generator = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, index))
            image, target = self.augmentations(image, target, generator)
        return image, target

    def _target(self, record: dict, index: int, height: int, width: int, size=None) -> dict:
        """Boxes, labels and masks of the record's usable, non-crowd annotations; at ``size`` (h, w) when
        the image was shrunk (the record's ``height`` x ``width`` otherwise)."""
        boxes, labels, masks, attribute_lists, problems = [], [], [], [], []
        for i, ann in enumerate(record["annotations"]):
            if ann.get("iscrowd", 0):
                continue
            where = f"{record['file_name']}: annotations[{i}]" + (f" (id {ann['id']})" if "id" in ann else "")
            try:
                box, label, mask = self._instance(ann, where, height, width, size)
            except DataError as error:
                if self.strict:
                    raise
                problems.append(str(error))
                continue
            boxes.append(box)
            labels.append(label)
            masks.append(mask)
            attribute_lists.append(ann.get("attribute_ids"))
        if problems and not self._bad_annotations[index]:
            self._bad_annotations[index] = len(problems)
            for problem in problems:
                warnings.warn(f"{problem} (annotation skipped)", DataWarning, stacklevel=4)
        out_height, out_width = size if size is not None else (height, width)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),  # (N, 4)
            "labels": torch.tensor(labels, dtype=torch.int64),  # (N,)
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, out_height, out_width),
                                                                                 dtype=torch.uint8),
            "image_id": int(record["image_id"]),
        }
        if self.attribute_index:  # attributes (N, A) float32 multi-hot, attributes_known (N,) bool
            target["attributes"], target["attributes_known"] = attribute_targets(
                attribute_lists, self.attribute_index, len(self.attribute_index))
        return target

    def _instance(self, ann: dict, where: str, height: int, width: int, size=None) -> tuple:
        """(box list, label int, mask (H, W) uint8) of one annotation, or DataError naming ``where``.

        With ``size`` (h, w) the box and the mask are at that size (``shrink.py``); whether the mask is
        empty is still decided at full size, so the same annotations are kept either way.
        """
        label = ann.get("category_id")
        if not isinstance(label, (int, np.integer)) or label < 1 or (
                self.num_classes is not None and label > self.num_classes):
            raise DataError(f"{where}.category_id: {label!r} is not a class in 1..{self.num_classes}")
        try:
            x1, y1, x2, y2 = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{where}.bbox: expected [x1, y1, x2, y2], got {ann.get('bbox')!r}") from error
        box = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
               min(max(y2, 0.0), height)]
        if not (np.isfinite(box).all() and box[2] > box[0] and box[3] > box[1]):
            raise DataError(f"{where}.bbox: {[x1, y1, x2, y2]} is degenerate or outside the {height}x{width} "
                            f"image")
        try:
            if size is None:
                mask = segmentation_to_mask(ann["segmentation"], height, width, where=f"{where}.segmentation")
                area = int(mask.any())
            else:
                mask, area = shrunk_mask(ann["segmentation"], height, width, size, where=f"{where}.segmentation")
                box = shrink_box(box, height, width, size)
        except KeyError as error:
            raise DataError(f"{where}.segmentation: missing") from error
        except (ValueError, TypeError) as error:  # the message already names the field
            raise DataError(str(error)) from error
        if not area:
            raise DataError(f"{where}.segmentation: the mask is empty inside the {height}x{width} image")
        return box, int(label), mask
