"""Paired augmentation keeps image, depth and labels aligned; photometric touches the image only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgmim.data import IGNORE_INDEX
from sgmim.data.transforms import (
    LABEL,
    METRIC_DEPTH,
    SMOOTH,
    augment_pair,
    normalize,
    photometric,
    random_resized_box,
)
from sgmim.spec import AugmentConfig

HEIGHT, WIDTH = 60, 80


def coordinate_sample() -> dict[str, torch.Tensor]:
    """Image channels hold each pixel's column and row, the maps hold its column too."""
    rows, cols = torch.meshgrid(torch.arange(HEIGHT, dtype=torch.float32),
                                torch.arange(WIDTH, dtype=torch.float32), indexing="ij")
    image = torch.stack([cols / WIDTH, rows / HEIGHT, torch.zeros_like(cols)])
    return {"image": image, "depth": (cols / WIDTH)[None].clone(), "label": cols.long()}


@pytest.mark.parametrize("seed", range(6))
def test_resized_crop_and_flip_move_image_and_smooth_map_together(seed):
    cfg = AugmentConfig(crop_scale=(0.3, 1.0), hflip=True)
    sample = coordinate_sample()
    kinds = {"image": SMOOTH, "depth": SMOOTH}
    out = augment_pair({"image": sample["image"], "depth": sample["depth"]}, kinds,
                       np.random.default_rng(seed), cfg, (32, 32))
    assert out["image"].shape == (3, 32, 32) and out["depth"].shape == (1, 32, 32)
    torch.testing.assert_close(out["image"][0], out["depth"][0], rtol=0, atol=1e-6)


def test_flip_and_crop_actually_happen():
    cfg = AugmentConfig(crop_scale=(0.3, 0.5), hflip=True)
    sample = coordinate_sample()
    columns = []
    for seed in range(12):
        out = augment_pair(dict(sample), {"image": SMOOTH, "depth": SMOOTH, "label": LABEL},
                           np.random.default_rng(seed), cfg, (32, 32))
        columns.append(out["image"][0])
    flipped = [bool(c[0, 0] > c[0, -1]) for c in columns]
    assert any(flipped) and not all(flipped)
    assert len({round(float(c.min()), 4) for c in columns}) > 1, "crops start at different places"


@pytest.mark.parametrize("seed", range(4))
def test_nearest_maps_stay_within_a_source_pixel_of_the_image(seed):
    cfg = AugmentConfig(crop_scale=(0.5, 1.0))
    out = augment_pair(coordinate_sample(), {"image": SMOOTH, "depth": METRIC_DEPTH, "label": LABEL},
                       np.random.default_rng(seed), cfg, (48, 48))
    column_from_image = out["image"][0] * WIDTH
    assert out["label"].dtype == torch.int64
    assert (column_from_image - out["label"]).abs().max() <= 1.0
    assert (out["depth"][0] * WIDTH - out["label"]).abs().max() < 1e-3, "nearest depth and labels agree"


def test_plain_crop_pads_with_invalid_and_ignore_and_keeps_values():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False)
    sample = coordinate_sample()
    out = augment_pair(sample, {"image": SMOOTH, "depth": METRIC_DEPTH, "label": LABEL},
                       np.random.default_rng(0), cfg, (HEIGHT + 20, WIDTH + 10))
    assert out["image"].shape[-2:] == (HEIGHT + 20, WIDTH + 10)
    assert (out["label"][HEIGHT:] == IGNORE_INDEX).all() and (out["depth"][:, HEIGHT:] == 0).all()
    assert torch.equal(out["label"][:HEIGHT, :WIDTH], sample["label"]), "no resampling of metric maps"


def test_photometric_changes_the_image_only():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, color_jitter=0.4)
    sample = coordinate_sample()
    out = augment_pair(dict(sample), {"image": SMOOTH, "depth": METRIC_DEPTH, "label": LABEL},
                       np.random.default_rng(1), cfg, (HEIGHT, WIDTH))
    assert not torch.allclose(out["image"], sample["image"])
    assert torch.equal(out["depth"], sample["depth"]) and torch.equal(out["label"], sample["label"])
    assert photometric(sample["image"], np.random.default_rng(0), 0.0) is sample["image"]


def test_random_resized_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = random_resized_box(rng, 100, 120, (0.2, 0.6), (0.5, 2.0))
        area = box.height * box.width / (100 * 120)
        assert 0.18 <= area <= 0.62 and 0.45 <= box.width / box.height <= 2.2
        assert box.top + box.height <= 100 and box.left + box.width <= 120


def test_normalize_is_imagenet():
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1).expand(3, 4, 4)
    assert normalize(mean).abs().max() < 1e-6
    assert torch.allclose(normalize(torch.ones(3, 1, 1)).flatten(),
                          torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
