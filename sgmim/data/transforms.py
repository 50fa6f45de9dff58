"""Paired augmentation: one crop and one flip applied to every map of a sample.

A sample is a dict of tensors that share H and W: `image` (3, H, W) in [0, 1], and any of
`depth` (1, H, W) and `label` (H, W). Each key says how it is resampled and padded: the image
and the smooth pseudo-depth bilinearly, metric depth (0 = invalid) and labels by nearest
neighbour so no invalid or made-up value leaks into a valid pixel. All randomness comes from
the NumPy Generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sgmim.spec.data import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


@dataclass(frozen=True)
class MapKind:
    """How a map is resampled and what fills padding."""

    mode: str      # "bilinear" or "nearest"
    fill: float


# The pseudo-depth of pretraining is smooth; metric depth carries 0 = invalid.
SMOOTH = MapKind("bilinear", 0.0)
METRIC_DEPTH = MapKind("nearest", 0.0)
LABEL = MapKind("nearest", IGNORE_INDEX)


@dataclass(frozen=True)
class Box:
    top: int
    left: int
    height: int
    width: int


def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def as_unit_float(image: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) image as float32 in [0, 1]: uint8 pixels divided by 255, floats kept."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a (3, H, W) image in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image - mean) / std


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) image as uint8 pixels: kept if it already is, else [0, 1] floats rounded."""
    if image.dtype == torch.uint8:
        return image
    return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def normalize_pixels(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (B, 3, H, W) uint8 pixels on their own device: the same
    numbers as `normalize(image / 255)`, with the arithmetic where the batch already is."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1) * 255.0
    return (image.float() - mean) / std


def random_resized_box(rng: np.random.Generator, height: int, width: int,
                       scale: tuple[float, float], ratio: tuple[float, float], attempts: int = 10) -> Box:
    """RandomResizedCrop's box: area fraction in `scale`, aspect (w/h) log-uniform in `ratio`.

    Falls back to the largest centred box of an aspect within `ratio`, as torchvision does.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return Box(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return Box((height - h) // 2, (width - w) // 2, h, w)


def random_box(rng: np.random.Generator, height: int, width: int, size: tuple[int, int]) -> Box:
    """A uniformly placed `size` box inside an image at least that large."""
    return Box(int(rng.integers(0, height - size[0] + 1)), int(rng.integers(0, width - size[1] + 1)), *size)


def _resample(x: torch.Tensor, kind: MapKind, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (C, H, W) or (H, W) map to `size` the way its kind asks."""
    flat = x.ndim == 2
    batch = x[None, None] if flat else x[None]
    dtype = batch.dtype
    if kind.mode == "nearest":
        out = F.interpolate(batch.float(), size=size, mode="nearest-exact").to(dtype)
    else:
        out = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0] if flat else out[0]


def crop(sample: dict[str, torch.Tensor], box: Box) -> dict[str, torch.Tensor]:
    """The same box out of every map."""
    rows, cols = slice(box.top, box.top + box.height), slice(box.left, box.left + box.width)
    return {key: x[..., rows, cols] for key, x in sample.items()}


def resized_crop(sample: dict[str, torch.Tensor], kinds: dict[str, MapKind], box: Box,
                 size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Crop `box` from every map and resize it to `size`."""
    return {key: _resample(x, kinds[key], size) for key, x in crop(sample, box).items()}


def pad_to(sample: dict[str, torch.Tensor], kinds: dict[str, MapKind],
           size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Pad bottom/right with each map's fill value up to at least `size`."""
    height, width = sample["image"].shape[-2:]
    pad_h, pad_w = max(size[0] - height, 0), max(size[1] - width, 0)
    if not (pad_h or pad_w):
        return sample
    return {key: F.pad(x, (0, pad_w, 0, pad_h), value=kinds[key].fill) for key, x in sample.items()}


def hflip(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: x.flip(-1) for key, x in sample.items()}


def photometric(image: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """Brightness, contrast, saturation and per-channel gain, each in [1 - s, 1 + s]; image only
    (uint8 pixels or [0, 1] floats in, [0, 1] floats out)."""
    if strength <= 0:
        return image
    low, high = 1.0 - strength, 1.0 + strength
    image = as_unit_float(image) * rng.uniform(low, high)
    grey = image.mean()
    image = grey + (image - grey) * rng.uniform(low, high)
    luma = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
    image = luma + (image - luma) * rng.uniform(low, high)
    gain = torch.from_numpy(rng.uniform(low, high, 3).astype(np.float32)).view(3, 1, 1)
    return (image * gain).clamp_(0.0, 1.0)


def augment_pair(sample: dict[str, torch.Tensor], kinds: dict[str, MapKind], rng: np.random.Generator,
                 cfg: AugmentConfig, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Training augmentation: one geometric draw for every map, then photometric on the image.

    With `cfg.resizes` a RandomResizedCrop to `size`; otherwise pad (fill values) and a plain
    random crop of `size`, so metric depth keeps its scale.
    """
    height, width = sample["image"].shape[-2:]
    if cfg.resizes:
        box = random_resized_box(rng, height, width, cfg.crop_scale, cfg.crop_ratio)
        sample = resized_crop(sample, kinds, box, size)
    else:
        sample = pad_to(sample, kinds, size)
        sample = crop(sample, random_box(rng, *sample["image"].shape[-2:], size))
    if cfg.hflip and rng.random() < 0.5:
        sample = hflip(sample)
    sample["image"] = photometric(sample["image"], rng, cfg.color_jitter)
    return sample
