"""Heads: full-resolution outputs for every backbone, no parameter without a gradient (ZeRO-2
hangs on those), widths derived from the encoder, layer-wise LR decay ids."""

import pytest
import torch

from sgmim.models.downstream import DownstreamModel, HeadSpec, default_vit_taps
from tests.finetune.conftest import TINY

HEADS = {
    "glpdepth": HeadSpec("glpdepth", 16, "batch", max_depth=10.0),
    "dpt": HeadSpec("dpt", 16, "batch", max_depth=10.0),
    "upernet": HeadSpec("upernet", 16, "batch", num_classes=5, aux_channels=8),
}


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("size", [(64, 64), (64, 96)], ids=["square", "wide"])
def test_heads_give_full_resolution_outputs_and_every_parameter_a_gradient(family, head, size):
    name, kwargs = TINY[family]
    model = DownstreamModel(name, {**kwargs, "img_size": size}, HEADS[head]).train()
    out = model(torch.randn(2, 3, *size))
    channels = 5 if head == "upernet" else 1
    assert out["out"].shape == (2, channels, *size)
    if head == "upernet":
        assert out["aux"].shape == (2, 5, *size)
    else:
        assert out["out"].min() > 0 and out["out"].max() < 10.0            # sigmoid · max_depth
    sum(o.mean() for o in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        assert set(model(torch.randn(1, 3, *size))) == {"out"}                # no aux head at eval


def test_channels_and_upsampling_follow_the_encoder():
    name, kwargs = TINY["swin"]
    wide = DownstreamModel(name, {**kwargs, "embed_dim": 48}, HEADS["glpdepth"])
    assert wide.head.deconv[0].in_channels == 8 * 48                      # Swin's last stage: 8 · embed_dim
    assert wide.head.upsamplings == 2                       # stride 32 = 2³ deconv · 2² bilinear
    vit = DownstreamModel(*TINY["vit"], HEADS["glpdepth"])
    assert vit.head.deconv[0].in_channels == 64 and vit.head.upsamplings == 1   # stride 16
    seg = DownstreamModel(name, kwargs, HEADS["upernet"])
    assert seg.neck.channels == [32, 64, 128, 256] and seg.neck.strides == [4, 8, 16, 32]
    assert seg.aux_head.conv[0].in_channels == 128                        # FCN on the stride-16 stage


def test_vit_taps_default_to_dpt_blocks_and_must_end_at_the_last_block():
    assert default_vit_taps(12) == (2, 5, 8, 11)
    assert default_vit_taps(24) == (5, 11, 17, 23)
    name, kwargs = TINY["vit"]
    with pytest.raises(ValueError, match="last block"):
        DownstreamModel(name, kwargs, HeadSpec("dpt", 16, "batch", max_depth=1.0, vit_taps=(0, 0, 0, 0)))


def test_group_norm_trains_with_one_image_per_process():
    name, kwargs = TINY["swin"]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        DownstreamModel(name, kwargs, HEADS["upernet"]).train()(torch.randn(1, 3, 64, 64))
    model = DownstreamModel(name, kwargs, HeadSpec("upernet", 16, "group", num_classes=5, aux_channels=8))
    assert model.train()(torch.randn(1, 3, 64, 64))["out"].shape == (1, 5, 64, 64)


def test_layer_ids_for_swin_and_vit():
    swin = DownstreamModel(*TINY["swin"], HEADS["upernet"])                 # depths 1, 1, 2, 1
    assert swin.num_layers == 5
    ids = {n: swin.layer_id(n) for n, _ in swin.named_parameters()}
    assert ids["backbone.patch_embed.proj.weight"] == 0
    assert ids["backbone.layers.0.blocks.0.attn.qkv.weight"] == 1
    assert ids["backbone.layers.1.downsample.reduction.weight"] == 1      # with stage 0's last block
    assert ids["backbone.layers.1.blocks.0.mlp.fc1.weight"] == 2
    assert ids["backbone.layers.2.blocks.1.norm1.weight"] == 4
    assert ids["backbone.layers.3.blocks.0.attn.proj.bias"] == 5
    assert ids["backbone.norm.weight"] == ids["head.classifier.weight"] == ids["neck.norms.0.weight"] == 6
    vit = DownstreamModel(*TINY["vit"], HEADS["dpt"])
    vids = {n: vit.layer_id(n) for n, _ in vit.named_parameters()}
    assert vids["backbone.pos_embed"] == 0 and vids["backbone.cls_token"] == 0
    assert vids["backbone.blocks.0.attn.qkv.weight"] == 1 and vids["backbone.blocks.1.mlp.fc2.bias"] == 2
    assert vids["backbone.norm.weight"] == 3 and vids["head.project.0.weight"] == 3
    # SimMIM's ViT: `get_vit_layer` puts the shared relative position bias with the top layer
    simmim_vit = DownstreamModel(*TINY["simmim_vit"], HEADS["dpt"])
    sids = {n: simmim_vit.layer_id(n) for n, _ in simmim_vit.named_parameters()}
    assert sids["backbone.cls_token"] == sids["backbone.patch_embed.proj.weight"] == 0
    assert sids["backbone.blocks.1.gamma_2"] == 2
    assert sids["backbone.rel_pos_bias.relative_position_bias_table"] == 3


def simmim_swin_layer(name: str, depths: list[int]) -> int:
    """SimMIM's `get_swin_layer` for a patch-merging parameter of its Swin, where stage s ends
    with `layers.s.downsample` (timm: `layers.{s+1}.downsample`), written out."""
    stage = int(name.split(".")[1])
    return sum(depths[:stage + 1])


@pytest.mark.parametrize("family", ["swin", "swinv2"])
def test_patch_merging_takes_simmims_layer_decay_bucket(family):
    depths = [2, 2, 6, 2]
    model = DownstreamModel(f"{family}_tiny_window8_256" if family == "swinv2" else
                            "swin_tiny_patch4_window7_224",
                            {"img_size": 64, "window_size": 2, "embed_dim": 16, "depths": depths,
                             "num_heads": [1, 1, 1, 1]}, HEADS["glpdepth"])
    merging = [n for n, _ in model.named_parameters() if ".downsample." in n]
    assert len(merging) == 9                    # stages 1-3: reduction, norm weight and bias
    for name in merging:
        timm_stage = int(name.split(".")[2])
        simmim_name = f"layers.{timm_stage - 1}.downsample.{name.split('.downsample.')[1]}"
        assert model.layer_id(name) == simmim_swin_layer(simmim_name, depths), name


def test_layer_decay_scales_the_learning_rate_of_each_group():
    from sgmim.spec import FinetuneConfig
    from sgmim.train.finetune import FinetuneTask

    model = DownstreamModel(*TINY["swin"], HEADS["glpdepth"])
    task = FinetuneTask.__new__(FinetuneTask)
    task.optim = FinetuneConfig().optim                                    # layer_decay 0.9
    groups = task.param_groups(model)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert scale_of[id(params["backbone.patch_embed.proj.weight"])] == pytest.approx(0.9 ** 6)
    assert scale_of[id(params["backbone.layers.2.blocks.1.mlp.fc1.weight"])] == pytest.approx(0.9 ** 2)
    assert scale_of[id(params["head.last.2.weight"])] == 1.0
    assert decay_of[id(params["backbone.layers.0.blocks.0.attn.relative_position_bias_table"])] == 0.0
    assert decay_of[id(params["backbone.layers.0.blocks.0.norm1.bias"])] == 0.0
    assert decay_of[id(params["head.last.2.weight"])] == pytest.approx(FinetuneConfig().optim.weight_decay)
