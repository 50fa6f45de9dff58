import numpy as np
import pytest
import torch

from sgmim.models import SGMIM
from sgmim.models.losses import masked_l1, truncated_standardise
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
