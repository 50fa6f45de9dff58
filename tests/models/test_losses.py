import numpy as np
import pytest
import torch

from sgmim.models import SGMIM
from sgmim.models.losses import local_normalise, masked_l1, truncated_standardise
from sgmim.models.masking import upsample_mask
from tests.models.conftest import fixed_batch, tiny_config


def test_masked_l1_hand_computation():
    pred = torch.zeros(1, 3, 2, 2)
    target = torch.arange(12, dtype=torch.float32).view(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # masked pixels (0,0) and (1,1) in each channel: |0|+|3| + |4|+|7| + |8|+|11| = 33,
    # divided by 2 masked pixels · 3 channels
    assert masked_l1(pred, target, mask).item() == pytest.approx(33 / 6, rel=1e-5)


def test_truncated_standardisation_hand_computation():
    values = np.array([100.0, 1, 2, 3, 4, 5, 6, 7, 8, -50], dtype=np.float32)
    depth = torch.from_numpy(values).view(1, 1, 2, 5)
    kept = np.sort(values)[1:-1]  # 10% of 10 values dropped at each end
    expected = (values - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-6)
    got = truncated_standardise(depth, trim=0.1).flatten().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_truncated_standardisation_uses_the_authors_slice_and_unbiased_variance():
    # 15 values 0..14, trim 0.1: the authors keep sorted[int(1.5):int(13.5)] = 1..12 (not 1..13);
    # mean 6.5, unbiased variance of 12 consecutive integers 12·13/12 = 13.
    values = torch.tensor([14.0, 0, 7, 3, 11, 1, 9, 5, 13, 2, 12, 4, 10, 6, 8])
    got = truncated_standardise(values.view(1, 1, 3, 5), trim=0.1).flatten()
    torch.testing.assert_close(got, (values - 6.5) / (13 + 1e-6) ** 0.5)


def test_truncated_standardisation_is_per_image():
    depth = torch.rand(2, 1, 8, 8)
    depth[1] = depth[1] * 50 + 7
    out = truncated_standardise(depth)
    torch.testing.assert_close(out[0], truncated_standardise(depth[:1])[0])
    torch.testing.assert_close(out[1], truncated_standardise(depth[1:])[0])


class Perturb(torch.nn.Module):
    """Adds noise to a head's output where `keep` is 1 (a pixel mask set before the call)."""

    def __init__(self, head):
        super().__init__()
        self.head, self.keep = head, None

    def forward(self, x):
        out = self.head(x)
        return out + 10 * torch.randn_like(out) * self.keep if self.keep is not None else out


@pytest.mark.parametrize("structured", ["complementary", "random"])
def test_losses_ignore_predictions_outside_their_masks(structured):
    model = SGMIM(tiny_config(structured=structured)).eval()
    image, depth, image_mask, struct_mask = fixed_batch(model)
    patch = model.encoder.patch_size
    with torch.no_grad():
        base = model(image, depth, image_mask, struct_mask)
        model.image_head = Perturb(model.image_head)
        model.struct_head = Perturb(model.struct_head)
        model.image_head.keep = 1 - upsample_mask(image_mask, patch)     # visible image pixels
        model.struct_head.keep = 1 - upsample_mask(struct_mask, patch)   # visible depth pixels
        outside = model(image, depth, image_mask, struct_mask)
        model.image_head.keep = upsample_mask(image_mask, patch).float()
        model.struct_head.keep = upsample_mask(struct_mask, patch).float()
        inside = model(image, depth, image_mask, struct_mask)
    torch.testing.assert_close(outside.loss_image, base.loss_image)
    torch.testing.assert_close(outside.loss_struct, base.loss_struct)
    assert inside.loss_image > base.loss_image + 1
    assert inside.loss_struct > base.loss_struct + 1


def test_total_loss_weights():
    config = tiny_config()
    config.loss.lambda_image, config.loss.lambda_struct = 0.5, 2.0
    model = SGMIM(config)
    with torch.no_grad():
        out = model(*fixed_batch(model))
    torch.testing.assert_close(out.loss, 0.5 * out.loss_image + 2.0 * out.loss_struct)


def test_normalised_target_hand_computation():
    # 0..8 in a 3 × 3 image, window 3: each pixel against the pixels of its window inside the
    # image, unbiased variance. Corner (0, 0): {0, 1, 3, 4}, mean 2, variance 10/3; edge (0, 1):
    # {0, 1, 2, 3, 4, 5}, mean 2.5, variance 17.5/5 = 3.5; edge (1, 0): {0, 1, 3, 4, 6, 7}, mean
    # 3.5, variance 37.5/5 = 7.5; centre: all nine, mean 4, variance 60/8 = 7.5.
    image = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    c, e, f = (10 / 3 + 1e-6) ** 0.5, (3.5 + 1e-6) ** 0.5, (7.5 + 1e-6) ** 0.5
    expected = torch.tensor([[(0 - 2) / c, (1 - 2.5) / e, (2 - 3) / c],
                             [(3 - 3.5) / f, 0.0, (5 - 4.5) / f],
                             [(6 - 5) / c, (7 - 5.5) / e, (8 - 6) / c]])
    torch.testing.assert_close(local_normalise(image, 3)[0, 0], expected)


def test_normalised_target_is_per_channel_and_flat_regions_stay_finite():
    image = torch.zeros(1, 2, 5, 5)
    image[0, 1] = torch.arange(25.0).view(5, 5)
    out = local_normalise(image, 3)
    assert torch.equal(out[0, 0], torch.zeros(5, 5))            # constant: (x - mean) = 0, var 0
    torch.testing.assert_close(out[:, 1:], local_normalise(image[:, 1:], 3))


@pytest.mark.parametrize("family", ["swin", "vit"])
def test_norm_target_option_changes_only_the_image_target(family):
    config = tiny_config(family)
    config.loss.norm_target.enabled, config.loss.norm_target.patch_size = True, 5
    model = SGMIM(config).eval()
    image, depth, image_mask, struct_mask = fixed_batch(model)
    with torch.no_grad():
        out = model(image, depth, image_mask, struct_mask)
    mask = upsample_mask(image_mask, model.encoder.patch_size).float()
    torch.testing.assert_close(out.loss_image, masked_l1(out.pred_image, local_normalise(image, 5), mask))
    assert not torch.allclose(out.loss_image, masked_l1(out.pred_image, image, mask))
    assert out.loss_struct is not None and torch.isfinite(out.loss_struct)


def test_norm_target_window_must_be_odd():
    from pydantic import ValidationError

    from sgmim.spec.model import NormTargetConfig

    assert NormTargetConfig().patch_size == 47 and not NormTargetConfig().enabled
    with pytest.raises(ValidationError, match="must be odd"):
        NormTargetConfig(enabled=True, patch_size=48)
