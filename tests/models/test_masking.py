import numpy as np
import pytest
import torch

from sgmim.models import SGMIM, MaskGenerator
from sgmim.models.masking import upsample_mask
from sgmim.spec import ModelConfig
from sgmim.spec.model import EncoderConfig


def cell_grid(mask: np.ndarray, scale: int) -> np.ndarray:
    cells = mask[::scale, ::scale]
    # every cell is constant over its scale × scale block of patches
    assert (np.kron(cells, np.ones((scale, scale), dtype=mask.dtype)) == mask).all()
    return cells


def test_simmim_count_22_of_36_at_ratio_06():
    gen = MaskGenerator(img_size=192, mask_patch_size=32, model_patch_size=4, ratio=0.6)
    for seed in range(20):
        image_mask, _ = gen(np.random.default_rng(seed))
        assert image_mask.shape == (48, 48)
        assert cell_grid(image_mask, 8).sum() == 22


@pytest.mark.parametrize(("timm_name", "img_size", "patch", "scale"), [
    ("swin_base_patch4_window7_224", 192, 4, 8),
    ("swinv2_base_window8_256", 192, 4, 8),
    ("vit_base_patch16_224", 224, 16, 2),
])
def test_upsampling_factor_follows_the_backbone(timm_name, img_size, patch, scale):
    with torch.device("meta"):
        model = SGMIM(ModelConfig(encoder=EncoderConfig(timm_name=timm_name, img_size=img_size)))
    assert model.encoder.patch_size == patch
    gen = model.mask_generator()
    assert gen.scale == scale
    image_mask, _ = gen(np.random.default_rng(0))
    assert image_mask.shape == (img_size // patch,) * 2
    assert cell_grid(image_mask, scale).sum() == np.ceil(0.6 * (img_size // 32) ** 2)


def test_structured_mask_is_the_complement():
    gen = MaskGenerator(192, 32, 4, 0.6, "complementary")
    image_mask, struct_mask = gen.batch(16, seed=1)
    assert torch.equal(image_mask + struct_mask, torch.ones_like(image_mask))


def test_random_ablation_is_independent_of_the_image_mask():
    gen = MaskGenerator(192, 32, 32, 0.6, "random")
    image_mask, struct_mask = gen.batch(4000, seed=2)
    assert (struct_mask.flatten(1).sum(1) == 22).all()
    overlap = (image_mask * struct_mask).flatten(1).sum(1).float()
    # Two independent draws of 22 of 36 cells overlap 22·22/36 = 13.44 cells on average
    # (complementary masks: 0; one mask reused: 22).
    assert abs(overlap.mean().item() - 22 * 22 / 36) < 0.15
    # and the overlap varies as a hypergeometric count does (variance ≈ 1.87), not a fixed one
    assert 1.5 < overlap.var().item() < 2.3


def test_upsample_mask_to_pixels():
    mask = torch.tensor([[[1, 0], [0, 1]]])
    pixels = upsample_mask(mask, 3)
    assert pixels.shape == (1, 1, 6, 6)
    assert pixels[0, 0, :3, :3].eq(1).all() and pixels[0, 0, :3, 3:].eq(0).all()


def test_mask_grid_must_divide():
    with pytest.raises(ValueError, match="mask_patch_size"):
        ModelConfig(encoder=EncoderConfig(img_size=200))
