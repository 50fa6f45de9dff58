"""Pieces of fine-tuning and evaluation in isolation: losses, sliding-window inference, settings."""

import math

import pytest
import torch
from torch import nn

from sgmim.spec import EvalOptions, parse_spec
from sgmim.train.distributed import DistEnv
from sgmim.train.evaluate import EvalSettings, predict
from sgmim.train.finetune import FinetuneTask, silog_loss
from tests.finetune.conftest import TINY, example


def test_silog_loss_is_scale_invariant_at_lambda_one_and_ignores_invalid_pixels():
    gt = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])
    pred = gt * math.e ** 0.3 + (gt == 0) * 50.0           # a wrong value only where gt is invalid
    assert silog_loss(pred, gt, lam=1.0).item() == pytest.approx(0.0, abs=1e-5)
    assert silog_loss(pred, gt, lam=0.5).item() == pytest.approx(0.3 / math.sqrt(2), rel=1e-4)
    assert silog_loss(pred, torch.zeros_like(gt), lam=0.5).item() == 0.0   # no valid pixel: 0, not NaN


class _Echo(nn.Module):
    """Returns its input's first channel (a depth 'model' whose answer depends on position)."""

    def forward(self, x):
        self.calls = getattr(self, "calls", 0) + 1
        return {"out": x[:, :1] * 1.0}


def _settings(**kw):
    base = {"task": "depth", "dataset": "synthetic", "split": "val", "input_size": (8, 8)}
    return EvalSettings(**{**base, **kw})


@pytest.mark.parametrize("size", [(8, 8), (8, 20), (13, 21), (5, 6)])
@pytest.mark.parametrize("flip", [False, True])
def test_sliding_window_reassembles_the_full_image(size, flip):
    image = torch.randn(2, 3, *size)
    model = _Echo()
    out = predict(model, image, _settings(flip=flip, slide_stride=0.5))
    assert out.shape == (2, 1, *size)
    torch.testing.assert_close(out, image[:, :1])
    if size == (8, 8):
        assert model.calls == (2 if flip else 1)               # one window when the sizes match


def test_resize_mode_and_short_side_resize_return_the_input_size():
    ramp = torch.linspace(0, 1, 24).view(1, 1, 1, 24) + torch.linspace(0, 1, 16).view(1, 1, 16, 1)
    image = ramp.expand(1, 3, 16, 24)
    for settings in (_settings(mode="resize"), _settings(resize_short=8)):
        out = predict(_Echo(), image, settings)
        assert out.shape == (1, 1, 16, 24)
        assert (out - image[:, :1]).abs().mean() < 0.05         # a smooth image survives the round trip


def test_eval_settings_pick_dataset_crops_and_the_heads_max_depth():
    from sgmim.models.downstream import DownstreamModel, HeadSpec

    model = DownstreamModel(*TINY["swin"], HeadSpec("glpdepth", 16, "batch", max_depth=80.0))
    kitti = EvalSettings.make(EvalOptions(), model, "kitti", "val", 0)
    assert (kitti.crop, kitti.max_depth, kitti.input_size) == ("garg", 80.0, (64, 64))
    nyu = EvalSettings.make(EvalOptions(max_depth=10.0), model, "nyu", "val", 0)
    assert (nyu.crop, nyu.max_depth) == ("eigen", 10.0)
    assert EvalSettings.make(EvalOptions(), model, "synthetic", "val", 0).crop == "none"


def test_segmentation_loss_adds_the_auxiliary_head_at_its_weight():
    data = example("finetune-seg-tiny.yaml", **{"parent.job_id": "p"})
    data["config"].update(init="random", encoder={"timm_name": TINY["swin"][0], **TINY["swin"][1]})
    task = FinetuneTask(parse_spec(data), DistEnv(0, 1, 0, torch.device("cpu")))
    model = task.build_model().train()
    assert task.head.aux_weight == 0.4 and task.head.num_classes == 6 and task.head.kind == "upernet"
    label = torch.randint(0, 6, (2, 64, 64))
    label[:, :32] = 255
    image = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    named = task.forward(model, {"image": image, "label": label})
    expected = named["loss_seg"] + 0.4 * named["loss_aux"]
    assert named["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    torch.manual_seed(1)                                     # the same dropout draws
    out = model(image)
    on_labelled = nn.functional.cross_entropy(out["out"][:, :, 32:], label[:, 32:])
    assert named["loss_seg"].item() == pytest.approx(on_labelled.item(), rel=1e-5)   # 255 left out
    everything_ignored = torch.full_like(label, 255)
    named = task.forward(model, {"image": torch.randn(2, 3, 64, 64), "label": everything_ignored})
    assert named["loss"].item() == 0.0                       # not NaN: a crop of ignored pixels only
