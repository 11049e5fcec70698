"""``Predictor``: a trained checkpoint in, a list of tagged instances (box, tag, score, mask) per image out.

    from maskrcnn import Predictor
    predictor = Predictor("output/synthetic_demo/model_0001000.pth", device="auto")
    for item in predictor.predict("photo.jpg"):
        print(item.tag, round(item.score, 2), item.box)    # 'dress' 0.97 (31.0, 12.5, 88.2, 120.0)
        item.mask                                           # (H, W) bool numpy array, original pixels
        item.rle                                            # the same mask as COCO RLE {"size", "counts"}

What a prediction is. The model's eval output (``maskrcnn.modeling.mask_rcnn``), then three filters and an
encoding, in this order:

1. the second stage runs as in the model (``ROIHeads.box_outputs`` + ``postprocess_detections``: per-class
   scores, class-specific boxes, per-class NMS), keeping every detection above the *score floor*
   ``min(model.roi_heads.score_thresh, infer.score_thresh)``;
2. detections of classes outside ``infer.classes`` and those scoring below ``infer.score_thresh`` are dropped,
   and the best ``infer.max_detections`` are kept (NMS returns them best first). Filtering before the
   cut means that asking for one class gives up to ``max_detections`` of *that* class;
3. the mask head runs on the kept boxes only; each 28x28 probability map is pasted into the original image
   inside its box only (``paste_masks_in_crops``: all detections at once on the model's device, the same
   values as ``paste_masks_in_image``, so a 50-megapixel photo never holds 100 float canvases), cut at
   ``infer.mask_threshold``, copied to the host in one transfer and run-length encoded (pycocotools'
   compressed COCO RLE).

With the model's own settings (every class, ``score_thresh`` <= the model's, ``max_detections`` equal to
``detections_per_img``) the instances are exactly ``model(images)``'s detections, masks ``> mask_threshold``.

Checkpoints. ``weights`` is a file written by ``torch.save`` and read with ``weights_only=True``: a dict with
``model`` (state dict), ``config`` (plain dict, ``maskrcnn.config.config_from_dict``) and ``class_names``, as
training writes them (``maskrcnn/engine/checkpoint.py``). A bare state dict (ours, or torchvision's
``maskrcnn_resnet50_fpn``, converted by ``maskrcnn.checkpoint``) needs ``config=`` for the architecture; its
class names then come from ``data.class_order`` or default to ``class_1 .. class_K``. A ``config`` given
together with a full checkpoint replaces the checkpoint's config (its model section must fit the weights).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils

from maskrcnn.checkpoint import read_checkpoint_file
from maskrcnn.config import Config, config_from_dict, load_config, parse_override
from maskrcnn.inference.crop_rle import crop_rle
from maskrcnn.inference.images import DECODE_ERRORS, DecodedImage, decode_image, unique_stems
from maskrcnn.modeling import build_model
from maskrcnn.modeling.box_head import postprocess_detections
from maskrcnn.modeling.mask_head import mask_probabilities
from maskrcnn.modeling.mask_rcnn import NUM_POOLED_LEVELS
from maskrcnn.modeling.paste_masks import paste_masks_in_crops
from maskrcnn.modeling.transform import resize_boxes

ImageInput = Union[str, os.PathLike, torch.Tensor, np.ndarray, Any]  # Any: a PIL image


# ---------------------------------------------------------------------------------------------- results
# Most box pixels pasted at once (about 150 bytes of temporaries each): 8.4 M, about 1.2 GB. An ordinary
# photo's detections fit in one group, so their masks are read back in one transfer.
PASTE_BUDGET_PIXELS = 1 << 23


def paste_groups(boxes: Sequence[Sequence[float]], budget: int) -> List[List[int]]:
    """Consecutive groups of detection indices whose boxes (``[x1, y1, x2, y2]``, grown by the paste's
    2-pixel margin) hold at most ``budget`` pixels together; a box larger than that is a group of its own."""
    groups, current, total = [], [], 0
    for index, (x1, y1, x2, y2) in enumerate(boxes):
        area = (x2 - x1 + 4) * (y2 - y1 + 4)
        if current and total + area > budget:
            groups.append(current)
            current, total = [], 0
        current.append(index)
        total += area
    return groups + [current] if current else groups


def decode_mask(rle: Mapping) -> np.ndarray:
    """Compressed COCO RLE -> ``(H, W)`` bool mask."""
    counts = rle["counts"]
    coded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    with warnings.catch_warnings():  # pycocotools trips NumPy 2's __array__(copy=...) deprecation: harmless
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(coded).astype(bool)


@dataclass
class Instance:
    """One detected item.

    Attributes:
        box: ``(x1, y1, x2, y2)`` float pixels of the original image (no "+1": width = x2 - x1).
        label: category id, 1..K (``class_names[label - 1]`` is its tag).
        tag: the class name.
        score: the class probability, in (0, 1].
        rle: the binary mask as compressed COCO RLE, ``{"size": [H, W], "counts": str}`` (original size).
        attributes: with an attribute head (``model.num_attributes``), ``[{"name", "score"}]`` of the
            attributes scoring at least ``infer.attribute_thresh``, best first; None without one.
    """

    box: Tuple[float, float, float, float]
    label: int
    tag: str
    score: float
    rle: dict = field(repr=False)
    attributes: Optional[List[dict]] = None

    @property
    def mask(self) -> np.ndarray:
        """``(H, W)`` bool mask (decoded from :attr:`rle` on each access)."""
        return decode_mask(self.rle)

    @property
    def area(self) -> int:
        """Mask pixels."""
        return int(mask_utils.area({"size": self.rle["size"], "counts": self.rle["counts"].encode("ascii")}))

    def to_dict(self) -> dict:
        """Plain JSON data: ``box`` xyxy, ``tag``, ``category_id``, ``score``, ``area``, ``segmentation`` (RLE).

        Numbers are written in full (a float32 value survives the JSON round trip exactly)."""
        data = {"box": [float(v) for v in self.box], "tag": self.tag, "category_id": int(self.label),
                "score": float(self.score), "area": self.area, "segmentation": dict(self.rle)}
        if self.attributes is not None:
            data["attributes"] = [dict(a) for a in self.attributes]
        return data


@dataclass
class FileResult:
    """The outcome for one input file: instances, or the reason it could not be read.

    ``image`` is the decoded ``(3, h, w)`` input (reduced by ``reduction`` for huge photos), kept for the
    overlay and crop writers; ``height``/``width`` are the original size; ``name`` a unique output base name.
    """

    path: str
    name: str
    height: int = 0
    width: int = 0
    instances: Optional[List[Instance]] = None
    error: Optional[str] = None
    image: Optional[torch.Tensor] = None
    reduction: int = 1


# ------------------------------------------------------------------------------------------ checkpoints
def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else the CPU; anything else as ``torch.device`` understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
    return resolved


def read_checkpoint(weights: str, config=None, overrides: Sequence[str] = ()) -> Tuple[Config, dict, List[str]]:
    """``(config, state_dict, class_names)`` from a weights file (module docstring).

    ``config`` is a YAML path or a Config; ``overrides`` are ``key=value`` strings applied last.
    """
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights: no such file {weights!r}")
    content = read_checkpoint_file(weights)  # "FILE: not a loadable checkpoint (reason)", shared with train.py
    is_checkpoint = isinstance(content.get("model"), Mapping)
    state_dict = dict(content["model"]) if is_checkpoint else dict(content)
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"weights: {weights} is neither a checkpoint with a 'model' state dict nor a state dict")
    stored_config = content.get("config") if is_checkpoint else None
    if isinstance(config, Config):
        cfg = config
    elif config is not None:
        cfg = load_config(str(config))
    elif stored_config:
        cfg = config_from_dict(stored_config, source=f"{weights}: config")
    else:
        raise ValueError(f"weights: {weights} stores no config; pass one (--config FILE) describing the model")
    cfg = with_overrides(cfg, dict(parse_override(text) for text in overrides), "command line")
    num_classes = cfg.model.num_classes
    class_names = list(content.get("class_names") or []) if is_checkpoint else []
    if not class_names:
        order = list(cfg.data.class_order)
        class_names = order if len(order) == num_classes else [f"class_{k}" for k in range(1, num_classes + 1)]
    if len(class_names) != num_classes:
        raise ValueError(f"weights: {weights} names {len(class_names)} classes but model.num_classes is "
                         f"{num_classes}")
    return cfg, state_dict, [str(name) for name in class_names]


def with_overrides(cfg: Config, values: Mapping[str, Any], source: str) -> Config:
    """A copy of ``cfg`` with ``{dotted key: value}`` set, each checked against the defaults tree."""
    return config_from_dict({**cfg.to_dict(), **values}, source=source)


def build_inference_model(cfg: Config, state_dict: Mapping[str, torch.Tensor], weights: str) -> torch.nn.Module:
    """The model of ``cfg`` with every parameter from ``state_dict`` (in eval mode, on the CPU).

    Our own state dicts load strictly; torchvision / ImageNet layouts go through the converter. A tensor left
    at its random initialization (missing, or a class-count mismatch) is an error: the predictions would be
    noise.
    """
    from maskrcnn.checkpoint import is_torchvision_state_dict, load_model_weights

    model = build_model(cfg, load_weights=False)
    if is_torchvision_state_dict(state_dict):
        report = load_model_weights(model, state_dict, verbose=False)
        left = report["reinitialized"] + report["missing"] + report.get("adapted", [])  # adapted: untrained RPN rows
        if left:
            raise ValueError(f"weights: {weights} does not fill {len(left)} model tensors (e.g. {left[:3]}); "
                             "check model.num_classes and the backbone in the config")
    else:
        own = model.state_dict()
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        reshaped = [f"{name} {tuple(state_dict[name].shape)} vs {tuple(own[name].shape)}" for name in own
                    if name in state_dict and state_dict[name].shape != own[name].shape]
        if missing or unexpected or reshaped:
            raise ValueError(f"weights: {weights} does not fit the config's model: {len(missing)} missing keys "
                             f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(reshaped)} of "
                             f"another shape (file vs model) {reshaped[:3]}")
        model.load_state_dict(state_dict)
    return model.eval()


# ---------------------------------------------------------------------------------------------- predictor
class Predictor:
    """Run a checkpoint on images. Options default to the config's ``infer`` section (``maskrcnn/defaults.py``).

    Args:
        weights: checkpoint file (module docstring).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        config: YAML path or Config replacing the checkpoint's; overrides: ``key=value`` strings.
        score_thresh, max_detections, classes, mask_threshold, batch_size, num_workers, max_decoded_side,
            max_image_pixels: override ``infer.*``.
    """

    def __init__(self, weights: str, device: str = "auto", config=None, overrides: Sequence[str] = (), *,
                 score_thresh: Optional[float] = None, max_detections: Optional[int] = None,
                 classes: Optional[Sequence[str]] = None, mask_threshold: Optional[float] = None,
                 batch_size: Optional[int] = None, num_workers: Optional[int] = None,
                 max_decoded_side: Optional[int] = None, max_image_pixels: Optional[int] = None):
        cfg, state_dict, self.class_names = read_checkpoint(weights, config, overrides)
        given = {"score_thresh": score_thresh, "max_detections": max_detections, "classes": classes,
                 "mask_threshold": mask_threshold, "batch_size": batch_size, "num_workers": num_workers,
                 "max_decoded_side": max_decoded_side, "max_image_pixels": max_image_pixels}
        given = {f"infer.{key}": list(value) if key == "classes" else value
                 for key, value in given.items() if value is not None}
        cfg = with_overrides(cfg, given, "Predictor arguments")
        self.cfg = cfg
        self.weights = weights
        self.device = resolve_device(device)
        self.model = build_inference_model(cfg, state_dict, weights).to(self.device)
        options = cfg.infer
        if options.max_detections < 1 or options.batch_size < 1:
            raise ValueError(f"infer.max_detections={options.max_detections}, infer.batch_size="
                             f"{options.batch_size}: both must be at least 1")
        self.score_thresh = float(options.score_thresh)
        self.max_detections = int(options.max_detections)
        self.mask_threshold = float(options.mask_threshold)
        self.batch_size = int(options.batch_size)
        self.num_workers = int(options.num_workers)
        self.max_decoded_side = int(options.max_decoded_side)
        self.max_image_pixels = int(options.max_image_pixels)
        unknown = [name for name in options.classes if name not in self.class_names]
        if unknown:
            raise ValueError(f"classes: {unknown} not among the checkpoint's classes {self.class_names}")
        self.kept_labels = [self.class_names.index(name) + 1 for name in options.classes] or None

    # ------------------------------------------------------------------------------------------ inputs
    def decode(self, image: ImageInput) -> DecodedImage:
        """Any accepted input -> :class:`DecodedImage`.

        A path is decoded like the training loader decodes (EXIF, every Pillow mode; see ``images.py``). A
        ``(3, H, W)`` float tensor in [0, 1] or an ``(H, W, 3)`` array (uint8, or float in [0, 1]) is used as
        it is. A PIL image is taken as Pillow's ``convert("RGB")`` of it, without EXIF rotation: pass the path
        to have a file's orientation, 16-bit range and transparency handled as in training.
        """
        if isinstance(image, (str, os.PathLike)):
            return decode_image(os.fspath(image), self.max_image_pixels, self.max_decoded_side)
        if isinstance(image, torch.Tensor):
            tensor = image
        else:
            if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
                image = np.asarray(image.convert("RGB"))
            array = np.asarray(image)
            if array.ndim != 3 or array.shape[2] != 3:
                raise ValueError(f"image: expected an (H, W, 3) array, got shape {array.shape}")
            scale = 255.0 if array.dtype == np.uint8 else 1.0
            # (H, W, 3) -> (3, H, W)
            tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / scale
        if tensor.dim() != 3 or tensor.shape[0] != 3 or not tensor.is_floating_point():
            raise ValueError(f"image: expected a float (3, H, W) tensor in [0, 1], got {tuple(tensor.shape)} "
                             f"{tensor.dtype}")
        return DecodedImage(tensor.float(), int(tensor.shape[1]), int(tensor.shape[2]), 1)

    # ------------------------------------------------------------------------------------------ predict
    def predict(self, image: ImageInput) -> List[Instance]:
        """Instances of one image (path, PIL image, array or tensor), best score first."""
        return self.predict_decoded([self.decode(image)])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> List[List[Instance]]:
        """Instances of each image, running ``batch_size`` images per forward pass."""
        decoded = [self.decode(image) for image in images]
        results = []
        for start in range(0, len(decoded), self.batch_size):
            results.extend(self.predict_decoded(decoded[start:start + self.batch_size]))
        return results

    @torch.no_grad()
    def predict_decoded(self, decoded: Sequence[DecodedImage]) -> List[List[Instance]]:
        """One forward pass over ``decoded`` (one batch); per image its instances (module docstring)."""
        model = self.model
        heads = model.roi_heads
        images = [item.image.to(self.device) for item in decoded]
        # The first stage and the box branch, as MaskRCNN.forward runs them.
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        pooled_levels = features[:NUM_POOLED_LEVELS]
        class_logits, box_deltas = heads.box_outputs(pooled_levels, proposals, batch.image_sizes)
        every_candidate = class_logits.shape[0] * (class_logits.shape[1] - 1)
        score_floor = min(heads.score_thresh, self.score_thresh)
        detections = postprocess_detections(class_logits, box_deltas, proposals, batch.image_sizes, heads.box_coder,
                                            score_floor, heads.nms_thresh, max(every_candidate, 1))
        detections = [self._filter(d) for d in detections]
        if heads.mask_on:
            logits = heads.mask_logits(pooled_levels, [d["boxes"] for d in detections], batch.image_sizes)
            probabilities = mask_probabilities(logits, [d["labels"] for d in detections])  # [(K_i, 1, 28, 28)]
        else:
            probabilities = [None] * len(detections)
        results = [self._instances(d, p, item, size)
                   for d, p, item, size in zip(detections, probabilities, decoded, batch.image_sizes)]
        if getattr(heads, "num_attributes", 0) > 0:
            boxes = [d["boxes"] for d in detections]
            scores = heads.attribute_probabilities(pooled_levels, boxes, batch.image_sizes)  # (K, A)
            scores = scores.cpu().split([b.shape[0] for b in boxes])  # one device-to-host copy, then per image
            for instances, image_scores in zip(results, scores):
                self._attach_attributes(instances, image_scores)
        return results

    def _attach_attributes(self, instances: List[Instance], scores: torch.Tensor) -> None:
        """``instance.attributes`` = the attributes scoring at least ``infer.attribute_thresh``, best first;
        ``scores (K, A)`` are one image's attribute probabilities in instance order."""
        names = list(self.cfg.model.attribute_names) or [f"attribute_{a}" for a in range(scores.shape[1])]
        threshold = float(self.cfg.infer.attribute_thresh)
        for instance, row in zip(instances, scores.tolist()):
            kept = sorted(((s, a) for a, s in enumerate(row) if s >= threshold), reverse=True)
            instance.attributes = [{"name": names[a], "score": float(s)} for s, a in kept]

    def _filter(self, detection: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Keep the wanted classes at or above the score threshold, best ``max_detections`` (already sorted)."""
        keep = detection["scores"] >= self.score_thresh
        if self.kept_labels is not None:
            keep &= torch.isin(detection["labels"], torch.tensor(self.kept_labels, device=keep.device))
        index = torch.where(keep)[0][: self.max_detections]
        return {key: value[index] for key, value in detection.items()}

    def _instances(self, detection: Dict[str, torch.Tensor], probabilities: Optional[torch.Tensor],
                   item: DecodedImage, resized_size: Tuple[int, int]) -> List[Instance]:
        """Boxes to original pixels; masks pasted inside their boxes on the model's device, cut, copied to the
        host in one transfer per group of detections, and run-length encoded from those crops (``crop_rle``:
        no full-size mask is built). A group holds at most ``PASTE_BUDGET_PIXELS`` box pixels (all the
        detections of an ordinary photo; several groups for large boxes on a large photo), which bounds
        the memory pasting takes."""
        model_input_size = (int(item.image.shape[1]), int(item.image.shape[2]))
        boxes = resize_boxes(detection["boxes"], resized_size, model_input_size)  # as transform.postprocess
        original_size = (item.height, item.width)
        if item.reduction != 1:  # reduced pixel x covers original [f*x, f*x + f): scale, then clip
            boxes = boxes * item.reduction
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, item.width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, item.height)
        box_list = boxes.tolist()
        labels, scores = detection["labels"].tolist(), detection["scores"].tolist()
        if probabilities is None:  # no mask branch: empty masks
            empty = crop_rle(np.zeros((0, 0), dtype=bool), (0, 0, 0, 0), original_size)
            rles = [dict(empty) for _ in box_list]
        else:
            rles = [None] * len(box_list)
            for group in paste_groups(box_list, PASTE_BUDGET_PIXELS):
                index = torch.tensor(group, device=boxes.device)
                pasted = paste_masks_in_crops(probabilities[index], boxes[index], original_size)
                values, rects = (pasted.values > self.mask_threshold).cpu().numpy(), pasted.rects.tolist()
                start = 0
                for k, (x1, y1, x2, y2) in zip(group, rects):
                    end = start + (x2 - x1) * (y2 - y1)
                    crop = values[start:end].reshape(y2 - y1, x2 - x1)  # (h * w,) -> (h, w), row-major crop
                    rles[k] = crop_rle(crop, (x1, y1, x2, y2), original_size)
                    start = end
        return [Instance(box=tuple(float(v) for v in box), label=int(label), tag=self.class_names[int(label) - 1],
                         score=float(score), rle=rle)
                for box, label, score, rle in zip(box_list, labels, scores, rles)]

    # ------------------------------------------------------------------------------------------- files
    def predict_files(self, paths: Sequence[str], num_workers: Optional[int] = None) -> Iterator[FileResult]:
        """Decode ``paths`` in ``num_workers`` background processes and predict ``batch_size`` at a time.

        Yields one :class:`FileResult` per path, in order. A file that cannot be read yields a result with
        ``error`` set (the reason, naming the file) and the batch goes on.
        """
        workers = self.num_workers if num_workers is None else num_workers
        names = unique_stems(paths)
        reader = _FileReader(list(paths), self.max_image_pixels, self.max_decoded_side)
        loader = torch.utils.data.DataLoader(reader, batch_size=self.batch_size, num_workers=workers,
                                             collate_fn=list, shuffle=False)
        for chunk in loader:
            good = [(index, item) for index, item in chunk if isinstance(item, DecodedImage)]
            predictions = self.predict_decoded([item for _, item in good]) if good else []
            by_index = {index: (item, found) for (index, item), found in zip(good, predictions)}
            for index, item in chunk:
                path, name = paths[index], names[index]
                if index in by_index:
                    decoded, found = by_index[index]
                    yield FileResult(path, name, decoded.height, decoded.width, found, None, decoded.image,
                                     decoded.reduction)
                else:
                    yield FileResult(path, name, error=item)


class _FileReader(torch.utils.data.Dataset):
    """Item ``i`` = ``(i, DecodedImage)``, or ``(i, "reason")`` when file ``i`` cannot be decoded."""

    def __init__(self, paths: List[str], max_image_pixels: int, max_decoded_side: int):
        self.paths = paths
        self.max_image_pixels = max_image_pixels
        self.max_decoded_side = max_decoded_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            return index, decode_image(path, self.max_image_pixels, self.max_decoded_side)
        except DECODE_ERRORS as error:
            message = str(error)
            if path not in message:
                message = f"{path}: {message}"
            return index, f"{message} ({type(error).__name__})"
