"""The stage explainer: run a checkpoint on one real image and draw what every stage of Mask R-CNN does.

    python -m maskrcnn.tools.explain --weights output/synthetic_demo/model_0001000.pth IMAGE --out DIR

writes, in the order the data flows (``docs/architecture.md`` shows them for the demo checkpoint):

    01_anchors.png               the anchors of each FPN level at one location (the image centre)
    02_proposals_before_nms.png  the best RPN boxes by objectness, before non-maximum suppression
    03_proposals_after_nms.png   the proposals that survive NMS (what the second stage receives)
    04_roi_levels.png            which FPN level (P2..P5) each proposal is pooled from
    05_roialign_grid.png         the ROIAlign bins and sampling points of one ROI on its level's cells
    06_box_head.png              proposals and the box head's refined, class-specific boxes
    07_mask_logits.png           the 28x28 mask logits of the top detection (and their 0.5 cut)
    08_final_masks.png           the final detections with their masks pasted into the image

How. :func:`trace_stages` runs the model's own modules one after the other, as ``MaskRCNN.forward`` does,
and keeps every intermediate result (a :class:`StageTrace`); nothing is re-implemented except where a
picture needs a value the model does not return: the proposals *before* NMS come from the RPN's own
``select_proposals`` with NMS switched off (IoU threshold 1.0 suppresses nothing), and the sample points of
ROIAlign from :func:`roi_align_sample_points`, which the tests check against ``maskrcnn.ops.roi_align``.
The pictures are drawn by ``maskrcnn/tools/explain_pictures.py``. Boxes in the trace are in the resized
image's pixels (what the network sees), except the final detections (original pixels).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn.modeling.box_head import postprocess_detections
from maskrcnn.modeling.mask_rcnn import NUM_POOLED_LEVELS
from maskrcnn.modeling.poolers import assign_fpn_levels
from maskrcnn.modeling.rpn_head import flatten_predictions

PICTURES = ("01_anchors.png", "02_proposals_before_nms.png", "03_proposals_after_nms.png", "04_roi_levels.png",
            "05_roialign_grid.png", "06_box_head.png", "07_mask_logits.png", "08_final_masks.png")


@dataclass
class StageTrace:
    """Every intermediate result of one image's forward pass (one image, so batch index 0 throughout).

    Shapes: ``L`` = 5 pyramid levels, ``A`` anchors per position, ``R`` proposals, ``C`` classes, ``K``
    detections, ``M`` = 28.
    """

    image: Tensor                    # (3, h, w) original input in [0, 1]
    resized_size: Tuple[int, int]    # (H, W) after the transform's resize, before padding
    padded_size: Tuple[int, int]     # the batch tensor's (H', W')
    strides: List[int]               # per level, image pixels per feature cell (4, 8, 16, 32, 64)
    feature_sizes: List[Tuple[int, int]]
    cell_anchors: List[Tensor]       # per level (A, 4), centred on (0, 0)
    pre_nms_boxes: Tensor            # (P, 4) RPN boxes after the per-level top-n, before NMS, best first
    pre_nms_scores: Tensor           # (P,) objectness probabilities
    proposals: Tensor                # (R, 4) after NMS, best first
    proposal_scores: Tensor          # (R,)
    proposal_levels: Tensor          # (R,) FPN level each proposal is pooled from (2..5)
    pooled_features: List[Tensor]    # P2..P5, (1, D, h_l, w_l)
    class_probabilities: Tensor      # (R, C + 1) softmax of the box head
    refined_boxes: Tensor            # (R, C + 1, 4) class-specific decoded boxes, clipped to the image
    detections: Dict[str, Tensor]    # boxes (K, 4), labels (K,), scores (K,) in resized pixels, best first
    mask_logits: Tensor              # (K, M, M) each detection's own-class logits
    final: Dict[str, Tensor]         # the model's output: boxes, labels, scores, masks (K, 1, h, w)


@contextlib.contextmanager
def _attributes(module, **values):
    """Set attributes of ``module`` for the duration of a ``with`` block."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@torch.no_grad()
def trace_stages(model, image: Tensor) -> StageTrace:
    """Run ``model`` (eval mode) on one ``(3, h, w)`` image, keeping every stage's output."""
    model.eval()
    device = next(model.parameters()).device
    image = image.to(device)
    batch, _ = model.transform([image])
    features = model.backbone(batch.tensors)
    rpn, heads = model.rpn, model.roi_heads

    # --- RPN: anchors, scores, proposals before and after NMS
    objectness, deltas = rpn.head(features)
    anchors = rpn.anchors(batch, features)                                    # (T, 4)
    proposals, proposal_scores = rpn.propose(objectness, deltas, anchors, batch.image_sizes)
    logits, flat_deltas = flatten_predictions(objectness, deltas)             # (1, T), (1, T, 4)
    boxes = rpn.box_coder.decode(flat_deltas.reshape(-1, 4), anchors).view(1, -1, 4)  # (T, 4) -> (1, T, 4)
    per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
    with _attributes(rpn, nms_thresh=1.0, post_nms_top_n={"train": boxes.shape[1], "test": boxes.shape[1]}):
        pre_nms, pre_nms_scores = rpn.select_proposals(boxes, logits, batch.image_sizes, per_level)

    # --- second stage: levels, box head, detections, mask logits
    pooled = features[:NUM_POOLED_LEVELS]
    scales = heads.box_pooler.level_scales(pooled, batch.image_sizes)
    levels = assign_fpn_levels(proposals[0], round(-math.log2(scales[0])), round(-math.log2(scales[-1])),
                               heads.box_pooler.canonical_scale, heads.box_pooler.canonical_level)
    class_logits, box_deltas = heads.box_outputs(pooled, proposals, batch.image_sizes)
    num_columns = class_logits.shape[1]
    refined = heads.box_coder.decode(box_deltas, proposals[0]).reshape(-1, num_columns, 4)  # (R, C+1, 4)
    height, width = batch.image_sizes[0]
    refined[..., 0::2] = refined[..., 0::2].clamp(0, width)
    refined[..., 1::2] = refined[..., 1::2].clamp(0, height)
    detections = postprocess_detections(class_logits, box_deltas, proposals, batch.image_sizes, heads.box_coder,
                                        heads.score_thresh, heads.nms_thresh, heads.detections_per_img)[0]
    if heads.mask_on:
        mask_logits = heads.mask_logits(pooled, [detections["boxes"]], batch.image_sizes)  # (K, C+1, M, M)
        own_class = mask_logits[torch.arange(mask_logits.shape[0], device=device), detections["labels"]]
    else:
        own_class = torch.zeros((0, 28, 28), device=device)
    final = model([image])[0]

    padded = tuple(batch.tensors.shape[-2:])
    return StageTrace(
        image=image.cpu(), resized_size=tuple(batch.image_sizes[0]), padded_size=padded,
        strides=[padded[0] // f.shape[-2] for f in features],
        feature_sizes=[tuple(f.shape[-2:]) for f in features],
        cell_anchors=[a.float().cpu() for a in rpn.anchor_generator.cell_anchors()],
        pre_nms_boxes=pre_nms[0].cpu(), pre_nms_scores=pre_nms_scores[0].cpu(),
        proposals=proposals[0].cpu(), proposal_scores=proposal_scores[0].cpu(), proposal_levels=levels.cpu(),
        pooled_features=[f.cpu() for f in pooled],
        class_probabilities=torch.softmax(class_logits, dim=-1).cpu(), refined_boxes=refined.cpu(),
        detections={k: v.cpu() for k, v in detections.items()}, mask_logits=own_class.cpu(),
        final={k: v.cpu() for k, v in final.items()},
    )


def anchors_at(trace: StageTrace, level: int, point: Tuple[float, float]) -> Tuple[Tensor, Tuple[int, int]]:
    """The ``(A, 4)`` anchors of pyramid level index ``level`` (0 = P2) at the feature position nearest to
    ``point = (x, y)``, and that position ``(row, column)``. Anchor centres sit at ``(column * stride,
    row * stride)`` (offset 0, as the generator places them)."""
    stride = trace.strides[level]
    rows, cols = trace.feature_sizes[level]
    row = min(max(int(round(point[1] / stride)), 0), rows - 1)
    col = min(max(int(round(point[0] / stride)), 0), cols - 1)
    shift = torch.tensor([col * stride, row * stride] * 2, dtype=torch.float32)
    return trace.cell_anchors[level] + shift, (row, col)


def roi_align_geometry(box: Sequence[float], output_size: Tuple[int, int], spatial_scale: float,
                       sampling_ratio: int, aligned: bool) -> Dict[str, float]:
    """How ROIAlign lays one box ``(x1, y1, x2, y2)`` (image pixels) onto a feature map, as
    ``maskrcnn.ops.roi_align`` computes it: the box's corner ``start_y, start_x`` and its bin size
    ``bin_h, bin_w`` in feature-map index coordinates (``f[i, j]`` sits at ``(i, j)``), and the
    ``grid_h x grid_w`` sampling points per bin."""
    out_h, out_w = output_size
    offset = 0.5 if aligned else 0.0  # aligned: index u holds the cell whose centre is at u + 0.5
    x1, y1, x2, y2 = (float(v) * spatial_scale for v in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the original ROIAlign forces at least one cell
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    return {"start_y": y1 - offset, "start_x": x1 - offset, "bin_h": roi_h / out_h, "bin_w": roi_w / out_w,
            "grid_h": sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h),
            "grid_w": sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)}


def roi_align_sample_points(box: Sequence[float], output_size: Tuple[int, int], spatial_scale: float,
                            sampling_ratio: int, aligned: bool) -> Tensor:
    """Where ROIAlign reads the feature map for one box: ``(out_h, out_w, grid_h, grid_w, 2)`` float64 ``(y, x)``
    in feature-map index coordinates (see :func:`roi_align_geometry`).

    The value of bin ``(i, j)`` is the mean of the bilinear reads at its ``grid_h x grid_w`` points, each at the
    centre of an equal sub-cell of the bin. The image position of index coordinate ``u`` is
    ``(u + 0.5) / spatial_scale`` (a feature cell's value belongs at its centre).
    """
    out_h, out_w = output_size
    g = roi_align_geometry(box, output_size, spatial_scale, sampling_ratio, aligned)
    grid_h, grid_w = g["grid_h"], g["grid_w"]
    iy = torch.arange(out_h, dtype=torch.float64)[:, None] * g["bin_h"] \
        + (torch.arange(grid_h, dtype=torch.float64)[None, :] + 0.5) * g["bin_h"] / grid_h  # (out_h, grid_h)
    ix = torch.arange(out_w, dtype=torch.float64)[:, None] * g["bin_w"] \
        + (torch.arange(grid_w, dtype=torch.float64)[None, :] + 0.5) * g["bin_w"] / grid_w  # (out_w, grid_w)
    ys = (g["start_y"] + iy)[:, None, :, None].expand(out_h, out_w, grid_h, grid_w)
    xs = (g["start_x"] + ix)[None, :, None, :].expand(out_h, out_w, grid_h, grid_w)
    return torch.stack([ys, xs], dim=-1)  # (out_h, out_w, grid_h, grid_w, 2)


def explained_roi(trace: StageTrace) -> int:
    """Index of the proposal the ROIAlign picture follows: the one whose best class score is highest."""
    if trace.proposals.shape[0] == 0:
        raise ValueError("the RPN returned no proposals for this image: nothing to pool")
    return int(trace.class_probabilities[:, 1:].max(dim=1).values.argmax())


def write_pictures(trace: StageTrace, out: str, class_names: Sequence[str], model, score_thresh: float = 0.5,
                   top: int = 50, display_side: int = 640) -> List[str]:
    """Draw the eight pictures of ``PICTURES`` into ``out``; return their paths."""
    from maskrcnn.tools import explain_pictures as pictures

    os.makedirs(out, exist_ok=True)
    heads = model.roi_heads
    drawings = [
        pictures.anchors_picture(trace, display_side),
        pictures.proposals_picture(trace, display_side, top, before_nms=True, nms_thresh=model.rpn.nms_thresh),
        pictures.proposals_picture(trace, display_side, top, before_nms=False, nms_thresh=model.rpn.nms_thresh),
        pictures.roi_levels_picture(trace, display_side, top),
        pictures.roialign_picture(trace, explained_roi(trace), heads.box_pooler.output_size,
                                  heads.box_pooler.sampling_ratio, heads.box_pooler.aligned, display_side),
        pictures.box_head_picture(trace, class_names, display_side, top=10),
        pictures.mask_logits_picture(trace, class_names),
        pictures.final_picture(trace, class_names, score_thresh, display_side),
    ]
    paths = []
    for name, drawing in zip(PICTURES, drawings):
        path = os.path.join(out, name)
        drawing.save(path, optimize=True)
        paths.append(path)
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskrcnn.tools.explain",
                                     description="Draw what every stage of Mask R-CNN does on one image.")
    parser.add_argument("image", help="an image file")
    parser.add_argument("--weights", required=True, help="checkpoint written by train.py")
    parser.add_argument("--config", help="YAML config replacing the checkpoint's")
    parser.add_argument("--out", required=True, help="folder for the pictures")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="detections drawn in the last picture")
    parser.add_argument("--top", type=int, default=50, help="proposals drawn in the RPN pictures (default 50)")
    parser.add_argument("--display-side", type=int, default=640, help="longer side of the pictures in pixels")
    args = parser.parse_args(argv)

    from maskrcnn.inference.images import DECODE_ERRORS, decode_image
    from maskrcnn.inference.predictor import Predictor

    try:
        predictor = Predictor(args.weights, device=args.device, config=args.config)
        decoded = decode_image(args.image, predictor.max_image_pixels, predictor.max_decoded_side)
    except DECODE_ERRORS + (FileNotFoundError,) as error:
        print(f"explain: error: {error}", file=sys.stderr)
        return 2
    trace = trace_stages(predictor.model, decoded.image)
    paths = write_pictures(trace, args.out, predictor.class_names, predictor.model, args.score_thresh, args.top,
                           args.display_side)
    print(f"{len(trace.proposals)} proposals, {len(trace.detections['labels'])} detections; pictures:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
