"""Training augmentations that move the image, the boxes and the masks together.

Every augmentation works on one sample::

    image   float32 (3, H, W), RGB in [0, 1]
    target  dict with  boxes (N, 4) float32 (x1, y1, x2, y2) in pixels,
                       labels (N,) int64,  masks (N, H, W) uint8 (full image, one per instance)
            other keys (``image_id``, ...) pass through unchanged.

and returns a new ``(image, target)``. The file has two layers:

* deterministic operations (``hflip``, ``crop``, ``resize``, ``pad``, ``affine``, ...) that take explicit
  parameters, easy to test on their own;
* ``Random*`` classes, each with a probability and a range, that draw their parameters from a
  ``torch.Generator`` passed in explicitly (no global RNG), so one seed reproduces one output.

Box rule (docs/conventions.md): a box computed from a mask spans whole pixels, ``[x_min, y_min, x_max + 1, y_max + 1]``.
Flips map such a box exactly to the box of the flipped mask; every other geometric operation resamples the
masks and then *recomputes* the boxes from them (``records.masks_to_boxes``), so after any geometric
augmentation each box is the tight box of its mask. An instance whose mask becomes empty is dropped; an
instance cut by a crop or pushed out by an affine map below ``min_visible`` of its area is dropped too,
since a sliver of a garment is not a recognisable garment. Masks are resampled bilinearly as floats and
thresholded at 0.5.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .records import masks_to_boxes  # (N, H, W) -> (N, 4) tight whole-pixel boxes, docs/conventions.md rule

# per-instance tensors: filtered together when instances drop (the attribute targets only when attributes are on)
INSTANCE_KEYS = ("boxes", "labels", "masks", "attributes", "attributes_known")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def keep_instances(target: dict, keep: torch.Tensor) -> dict:
    """A copy of ``target`` with only the instances where the bool vector ``keep`` (N,) is true."""
    out = dict(target)
    for key in INSTANCE_KEYS:
        if key in out:
            out[key] = out[key][keep]
    return out


def _with_masks(target: dict, masks: torch.Tensor, area_before: torch.Tensor, expected_scale: float,
                min_visible: float) -> dict:
    """Replace the masks, recompute boxes, drop empty or mostly hidden instances.

    ``area_before`` (N,) is each mask's pixel count before the operation and ``expected_scale`` the factor by
    which the operation alone would multiply an area (1 for a crop, det(A) for an affine map A).
    """
    area_after = masks.flatten(1).sum(dim=1).double()  # (N, H, W) -> (N,)
    keep = (area_after > 0) & (area_after >= min_visible * expected_scale * area_before.double())
    out = dict(target)
    out["masks"] = masks
    out["boxes"] = masks_to_boxes(masks)
    return keep_instances(out, keep)


def _area(target: dict) -> torch.Tensor:
    return target["masks"].flatten(1).sum(dim=1)  # (N, H, W) -> (N,)


# ----------------------------------------------------------------------------------------------
# Deterministic geometric operations
# ----------------------------------------------------------------------------------------------
def hflip(image: torch.Tensor, target: dict) -> tuple:
    """Mirror left-right. A pixel column x goes to W - 1 - x, so a box [x1, x2) goes to [W - x2, W - x1)."""
    width = image.shape[-1]
    out = dict(target)
    out["masks"] = target["masks"].flip(-1)
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    out["boxes"] = boxes
    return image.flip(-1), out


def vflip(image: torch.Tensor, target: dict) -> tuple:
    """Mirror top-bottom: a box [y1, y2) goes to [H - y2, H - y1)."""
    height = image.shape[-2]
    out = dict(target)
    out["masks"] = target["masks"].flip(-2)
    boxes = target["boxes"].clone()
    boxes[:, 1], boxes[:, 3] = height - target["boxes"][:, 3], height - target["boxes"][:, 1]
    out["boxes"] = boxes
    return image.flip(-2), out


def crop(image: torch.Tensor, target: dict, top: int, left: int, height: int, width: int,
         min_visible: float = 0.0) -> tuple:
    """Cut the window rows [top, top + height), columns [left, left + width) out of the image and masks.

    Instances keeping less than ``min_visible`` of their mask area (or none of it) are dropped.
    """
    _, full_h, full_w = image.shape
    if not (0 <= top and 0 <= left and 0 < height and 0 < width and top + height <= full_h
            and left + width <= full_w):
        raise ValueError(f"crop window top={top}, left={left}, height={height}, width={width} "
                         f"is not inside the {full_h}x{full_w} image")
    area_before = _area(target)
    masks = target["masks"][:, top:top + height, left:left + width]
    return image[:, top:top + height, left:left + width], _with_masks(target, masks, area_before, 1.0, min_visible)


def _resample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) floats to (N, C, height, width), antialiased when shrinking."""
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def _warp_masks(masks: torch.Tensor, height: int, width: int, warp: Callable, chunk: int = 8) -> torch.Tensor:
    """Resample uint8 masks (N, h, w) -> (N, height, width): ``warp`` maps float (n, 1, h, w) chunks bilinearly,
    then >= 0.5 is foreground. Chunks of 8 bound the float copy's memory on large photos."""
    out = masks.new_zeros((masks.shape[0], height, width))
    for start in range(0, masks.shape[0], chunk):
        warped = warp(masks[start:start + chunk, None].float())  # (n, h, w) -> (n, 1, h, w) -> warped
        out[start:start + chunk] = (warped[:, 0] >= 0.5).to(torch.uint8)
    return out


def resize(image: torch.Tensor, target: dict, height: int, width: int) -> tuple:
    """Resize image and masks to ``height`` x ``width``; masks are resampled as floats and thresholded at 0.5."""
    image = _resample(image[None], height, width)[0].clamp_(0.0, 1.0)
    masks = _warp_masks(target["masks"], height, width,
                        lambda chunk: _resample(chunk, height, width))  # (n, 1, h, w) -> (n, 1, height, width)
    # A resize hides nothing, so only masks that vanished (too thin to survive shrinking) are dropped.
    return image, _with_masks(target, masks, _area(target), expected_scale=1.0, min_visible=0.0)


def pad(image: torch.Tensor, target: dict, height: int, width: int, top: int, left: int,
        fill: float = 0.0) -> tuple:
    """Place the image on a ``height`` x ``width`` canvas of value ``fill`` with its top-left at (top, left)."""
    _, h, w = image.shape
    if top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"cannot place a {h}x{w} image at top={top}, left={left} in {height}x{width}")
    canvas = image.new_full((image.shape[0], height, width), fill)
    canvas[:, top:top + h, left:left + w] = image
    masks = target["masks"].new_zeros((target["masks"].shape[0], height, width))
    masks[:, top:top + h, left:left + w] = target["masks"]
    out = dict(target)
    out["masks"] = masks
    out["boxes"] = target["boxes"] + torch.tensor([left, top, left, top], dtype=target["boxes"].dtype)
    return canvas, out


def affine_matrix(angle: float, scale: float, shear: float) -> torch.Tensor:
    """The 2x2 linear part ``A = R(angle) @ Shear(shear) * scale`` (degrees; y axis points down, so a
    positive angle turns the picture counter-clockwise on screen; the shear slants columns along x)."""
    a, s = math.radians(angle), math.radians(shear)
    rotation = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)
    shearing = torch.tensor([[1.0, math.tan(s)], [0.0, 1.0]], dtype=torch.float64)
    return rotation @ shearing * scale


def affine(image: torch.Tensor, target: dict, matrix: torch.Tensor, translation: Sequence[float],
           min_visible: float = 0.0) -> tuple:
    """Map the image by ``p_out = A (p_in - c) + c + t`` about the image centre ``c``; output size = input size.

    Coordinates are continuous with pixel (i, j) covering [j, j + 1) x [i, i + 1). Each output pixel centre is
    pulled back through the inverse map and sampled bilinearly (zeros outside). Boxes are recomputed from the
    warped masks; instances keeping less than ``min_visible`` of their expected area ``det(A) * area`` drop.
    """
    _, height, width = image.shape
    matrix = matrix.to(torch.float64)
    centre = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    shift = torch.as_tensor(translation, dtype=torch.float64)
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    out_points = torch.stack([grid_x, grid_y], dim=-1) - centre - shift  # (H, W, 2), (x, y) order
    src = out_points @ torch.linalg.inv(matrix).T + centre  # (H, W, 2) source coordinates
    # grid_sample with align_corners=False: -1 and +1 are the outer edges of the first and last pixels.
    grid = (2.0 * src / torch.tensor([width, height], dtype=torch.float64) - 1.0).float()[None]  # (1, H, W, 2)
    warped = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    masks = _warp_masks(target["masks"], height, width, lambda chunk: F.grid_sample(
        chunk, grid.expand(chunk.shape[0], height, width, 2), mode="bilinear", padding_mode="zeros",
        align_corners=False))  # (n, 1, H, W) -> (n, 1, H, W)
    det = abs(float(torch.linalg.det(matrix)))
    return warped.clamp_(0.0, 1.0), _with_masks(target, masks, _area(target), det, min_visible)


# ----------------------------------------------------------------------------------------------
# Deterministic photometric operations (image only)
# ----------------------------------------------------------------------------------------------
def _gray(image: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601): (3, H, W) -> (1, H, W)."""
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    return (image * factor).clamp(0.0, 1.0)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean grey level: 0 gives flat grey, 1 the image, >1 more contrast."""
    mean = _gray(image).mean()
    return ((image - mean) * factor + mean).clamp(0.0, 1.0)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's own greyscale: 0 gives grey, 1 the image, >1 more colourful."""
    gray = _gray(image)
    return ((image - gray) * factor + gray).clamp(0.0, 1.0)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a kernel of radius ceil(3 sigma), edges replicated."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    out = F.pad(image[None], (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return out[0]


# ----------------------------------------------------------------------------------------------
# Random augmentations: each draws its parameters from the generator it is given
# ----------------------------------------------------------------------------------------------
def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _check(name: str, prob: float, low: float = 0.0, high: float = 0.0, minimum: float = -math.inf) -> None:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{name}: prob must be in [0, 1], got {prob}")
    if not minimum <= low <= high:
        raise ValueError(f"{name}: range must satisfy {minimum} <= low <= high, got [{low}, {high}]")


class RandomAugmentation:
    """Base: apply ``self.apply`` with probability ``prob``; the coin is drawn from the given generator."""

    prob = 0.0

    def __call__(self, image: torch.Tensor, target: dict, generator: torch.Generator) -> tuple:
        if torch.rand((), generator=generator).item() >= self.prob:
            return image, target
        return self.apply(image, target, generator)

    def apply(self, image, target, generator):  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


class RandomHorizontalFlip(RandomAugmentation):
    def __init__(self, prob: float = 0.5):
        _check("hflip", prob)
        self.prob = prob

    def apply(self, image, target, generator):
        return hflip(image, target)


class RandomVerticalFlip(RandomAugmentation):
    def __init__(self, prob: float = 0.0):
        _check("vflip", prob)
        self.prob = prob

    def apply(self, image, target, generator):
        return vflip(image, target)


class RandomScaleJitter(RandomAugmentation):
    """Zoom by s ~ U[min_scale, max_scale] keeping the canvas size (large-scale jitter, Ghiasi et al. 2021).

    s >= 1: crop a random (H/s) x (W/s) window and enlarge it to H x W. s < 1: shrink to (sH) x (sW) and place
    it at a random position on an H x W canvas of zeros.
    """

    def __init__(self, prob: float, min_scale: float, max_scale: float, min_visible: float):
        _check("scale_jitter", prob, min_scale, max_scale, minimum=1e-3)
        self.prob, self.min_scale, self.max_scale, self.min_visible = prob, min_scale, max_scale, min_visible

    def apply(self, image, target, generator):
        _, height, width = image.shape
        scale = _uniform(generator, self.min_scale, self.max_scale)
        if scale >= 1.0:
            crop_h, crop_w = max(1, round(height / scale)), max(1, round(width / scale))
            top, left = _randint(generator, 0, height - crop_h), _randint(generator, 0, width - crop_w)
            image, target = crop(image, target, top, left, crop_h, crop_w, self.min_visible)
            return resize(image, target, height, width)
        small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
        image, target = resize(image, target, small_h, small_w)
        top, left = _randint(generator, 0, height - small_h), _randint(generator, 0, width - small_w)
        return pad(image, target, height, width, top, left)


class RandomCrop(RandomAugmentation):
    """Crop a window whose height and width are each a fraction U[min_fraction, 1] of the image's."""

    def __init__(self, prob: float, min_fraction: float, min_visible: float):
        _check("crop", prob, min_fraction, 1.0, minimum=1e-3)
        self.prob, self.min_fraction, self.min_visible = prob, min_fraction, min_visible

    def apply(self, image, target, generator):
        _, height, width = image.shape
        crop_h = max(1, round(height * _uniform(generator, self.min_fraction, 1.0)))
        crop_w = max(1, round(width * _uniform(generator, self.min_fraction, 1.0)))
        top, left = _randint(generator, 0, height - crop_h), _randint(generator, 0, width - crop_w)
        return crop(image, target, top, left, crop_h, crop_w, self.min_visible)


class RandomAffine(RandomAugmentation):
    """Rotate by U[-degrees, degrees], scale by U[scale], shift by U[-translate, translate] of each side,
    shear by U[-shear, shear] degrees, all about the image centre."""

    def __init__(self, prob: float, degrees: float, scale: Sequence[float], translate: float, shear: float,
                 min_visible: float):
        _check("affine", prob, scale[0], scale[1], minimum=1e-3)
        self.prob, self.degrees, self.scale = prob, degrees, tuple(scale)
        self.translate, self.shear, self.min_visible = translate, shear, min_visible

    def apply(self, image, target, generator):
        _, height, width = image.shape
        angle = _uniform(generator, -self.degrees, self.degrees)
        scale = _uniform(generator, *self.scale)
        shear = _uniform(generator, -self.shear, self.shear)
        shift = (_uniform(generator, -self.translate, self.translate) * width,
                 _uniform(generator, -self.translate, self.translate) * height)
        return affine(image, target, affine_matrix(angle, scale, shear), shift, self.min_visible)


class ColorJitter(RandomAugmentation):
    """Brightness, contrast and saturation factors, each U[1 - v, 1 + v], applied in that order."""

    def __init__(self, prob: float, brightness: float, contrast: float, saturation: float):
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            _check(f"color.{name}", prob, 0.0, value, minimum=0.0)
        self.prob, self.brightness, self.contrast, self.saturation = prob, brightness, contrast, saturation

    def apply(self, image, target, generator):
        image = adjust_brightness(image, _uniform(generator, 1 - self.brightness, 1 + self.brightness))
        image = adjust_contrast(image, _uniform(generator, 1 - self.contrast, 1 + self.contrast))
        image = adjust_saturation(image, _uniform(generator, 1 - self.saturation, 1 + self.saturation))
        return image, target


class RandomGaussianBlur(RandomAugmentation):
    def __init__(self, prob: float, sigma: Sequence[float]):
        _check("blur", prob, sigma[0], sigma[1], minimum=1e-6)
        self.prob, self.sigma = prob, tuple(sigma)

    def apply(self, image, target, generator):
        return gaussian_blur(image, _uniform(generator, *self.sigma)), target


class RandomGaussianNoise(RandomAugmentation):
    def __init__(self, prob: float, std: Sequence[float]):
        _check("noise", prob, std[0], std[1], minimum=0.0)
        self.prob, self.std = prob, tuple(std)

    def apply(self, image, target, generator):
        std = _uniform(generator, *self.std)
        noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
        return (image + std * noise).clamp(0.0, 1.0), target


class Compose:
    """Run augmentations in order, all drawing from one generator."""

    def __init__(self, augmentations: Sequence[Callable]):
        self.augmentations = list(augmentations)

    def __call__(self, image: torch.Tensor, target: dict, generator: torch.Generator) -> tuple:
        for augmentation in self.augmentations:
            image, target = augmentation(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        return "Compose(\n" + "".join(f"  {a!r},\n" for a in self.augmentations) + ")"


def build_augmentations(cfg: Mapping) -> Compose:
    """The training pipeline from the ``data.augment`` config section (see ``maskrcnn/defaults.py``).

    Geometric augmentations come first (they change which instances exist), photometric ones last.
    Augmentations with probability 0 are left out.
    """
    visible = cfg["min_visible_fraction"]
    candidates = [
        RandomHorizontalFlip(cfg["hflip"]["prob"]),
        RandomVerticalFlip(cfg["vflip"]["prob"]),
        RandomScaleJitter(cfg["scale_jitter"]["prob"], cfg["scale_jitter"]["min_scale"],
                          cfg["scale_jitter"]["max_scale"], visible),
        RandomCrop(cfg["crop"]["prob"], cfg["crop"]["min_fraction"], visible),
        RandomAffine(cfg["affine"]["prob"], cfg["affine"]["degrees"], cfg["affine"]["scale"],
                     cfg["affine"]["translate"], cfg["affine"]["shear"], visible),
        ColorJitter(cfg["color"]["prob"], cfg["color"]["brightness"], cfg["color"]["contrast"],
                    cfg["color"]["saturation"]),
        RandomGaussianBlur(cfg["blur"]["prob"], cfg["blur"]["sigma"]),
        RandomGaussianNoise(cfg["noise"]["prob"], cfg["noise"]["std"]),
    ]
    return Compose([a for a in candidates if a.prob > 0])
