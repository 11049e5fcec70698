"""Shared fixtures of the inference tests: a tiny random-init checkpoint and images of every Pillow mode.

The checkpoint has the layout training writes (``model``, ``config``, ``class_names``) with a ResNet-18 FPN of
16 channels and inputs resized to 64..96 pixels, so a forward pass takes a fraction of a second on a CPU.
Random weights give meaningless but deterministic detections; the tests lower the score threshold to 0 so
that every image has some, and compare the pipeline's outputs with the model's own.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np
import torch
from PIL import Image

from maskrcnn.config import load_config
from maskrcnn.modeling import build_model

CLASS_NAMES = ("dress", "bag", "shoe")
TINY_OVERRIDES = [
    f"model.num_classes={len(CLASS_NAMES)}", "model.backbone.depth=18", "model.backbone.fpn_channels=16",
    "model.backbone.frozen_stages=0", "input.min_size=64", "input.max_size=96",
    "model.rpn.anchor_sizes=[8,16,32,64,128]", "model.rpn.pre_nms_top_n_test=200", "model.rpn.post_nms_top_n_test=50",
    "model.roi_heads.box_hidden_dim=32", "model.roi_heads.mask_conv_dims=[16]", "model.roi_heads.detections_per_img=10",
]


def tiny_config(extra: Sequence[str] = ()):
    return load_config(None, TINY_OVERRIDES + list(extra))


def make_checkpoint(path: str, seed: int = 0, extra: Sequence[str] = ()) -> str:
    """Save a random-init tiny model as a training checkpoint would hold it; return ``path``."""
    cfg = tiny_config(extra)
    torch.manual_seed(seed)
    model = build_model(cfg, load_weights=False)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": list(CLASS_NAMES)}, path)
    return path


def model_output(predictor, image, detections_per_img=None):
    """The model's own eval output for one image (optionally with another detection cap)."""
    heads = predictor.model.roi_heads
    saved = heads.detections_per_img
    heads.detections_per_img = detections_per_img or saved
    try:
        with torch.no_grad():
            return predictor.model([image])[0]
    finally:
        heads.detections_per_img = saved


def mode_images(folder: str, height: int = 42, width: int = 56, seed: int = 0) -> Dict[str, str]:
    """One small image per decoding case, plus a corrupt file; returns ``{case: path}``.

    Cases: rgb (PNG), gray (L), gray16 (I;16), rgba, palette (P), cmyk (JPEG), exif (JPEG stored 56 wide,
    EXIF orientation 6 = shown rotated, 56 tall), corrupt (a JPEG header and then garbage).
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Smooth colour blobs rather than noise, so JPEG keeps them and the model sees structure.
    yy, xx = np.mgrid[0:height, 0:width]
    waves = [127 + 120 * np.sin(xx / (4 + 3 * c) + yy / (5 + c) + rng.uniform(0, 6)) for c in range(3)]
    rgb = np.stack(waves, axis=2)
    rgb = rgb.clip(0, 255).astype(np.uint8)
    paths = {name: os.path.join(folder, file) for name, file in [
        ("rgb", "a_rgb.png"), ("gray", "b_gray.png"), ("gray16", "c_gray16.png"), ("rgba", "d_rgba.png"),
        ("palette", "e_palette.png"), ("cmyk", "f_cmyk.jpg"), ("exif", "g_exif.jpg"), ("corrupt", "h_corrupt.jpg")]}
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(rgb[:, :, 1]).save(paths["gray"])
    Image.fromarray(rgb[:, :, 2].astype(np.uint16) * 257).save(paths["gray16"])  # stored as I;16
    alpha = (np.linspace(0, 255, width)[None, :].repeat(height, 0)).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(paths["rgba"])
    Image.fromarray(rgb).convert("P").save(paths["palette"])
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk"], quality=95)
    picture = Image.fromarray(rgb)
    exif = picture.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    picture.save(paths["exif"], exif=exif, quality=95)
    with open(paths["corrupt"], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4)
    return paths
