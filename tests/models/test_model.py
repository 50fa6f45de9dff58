import json

import pytest
import timm
import torch

from sgmim.models import SGMIM
from sgmim.spec import EncoderConfig, GuidanceConfig, ModelConfig
from tests.models.conftest import TINY_ENCODERS, fixed_batch, tiny_config


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family", sorted(TINY_ENCODERS))
@pytest.mark.parametrize("extractor", ["simmim", "mlp", "transformer", "siamese"])
def test_every_parameter_gets_a_gradient(family, extractor):
    # DeepSpeed ZeRO-2 hangs on parameters that take no part in the loss.
    guided = extractor != "simmim"
    model = SGMIM(tiny_config(family, guided=guided, extractor="mlp" if not guided else extractor))
    batch = fixed_batch(model)
    model(*batch).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    # SwinV2 zero-initialises its res-post-norm scales, which zeroes the first step's gradient
    # of each block; after one step every gradient must be non-zero.
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    out = model(*batch)
    out.loss.backward()
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"zero gradient at {zero}"
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("family", sorted(TINY_ENCODERS))
def test_output_shapes_are_derived_from_the_encoder(family):
    model = SGMIM(tiny_config(family))
    image, depth, image_mask, struct_mask = fixed_batch(model, batch_size=2)
    out = model(image, depth, image_mask, struct_mask)
    assert out.pred_image.shape == image.shape
    assert out.pred_struct.shape == depth.shape
    feat = model.encoder(image, image_mask)
    assert feat.shape == (2, model.encoder.out_dim, *model.encoder.out_grid)


@pytest.mark.parametrize(("config", "out_shape"), [
    (ModelConfig(), (1024, 6, 6)),  # Swin-B/192/window 6
    (ModelConfig(encoder=EncoderConfig(timm_name="swinv2_base_window8_256", img_size=192,
                                       window_size=12)), (1024, 6, 6)),
    (ModelConfig(encoder=EncoderConfig(timm_name="vit_base_patch16_224", img_size=224)),
     (768, 14, 14)),
    (ModelConfig(encoder=EncoderConfig(timm_name="beit_base_patch16_224", img_size=224)),
     (768, 14, 14)),
])
def test_paper_backbones_output_grid(config, out_shape):
    with torch.device("meta"):
        model = SGMIM(config)
    assert (model.encoder.out_dim, *model.encoder.out_grid) == out_shape


def test_simmim_swin_b_192_parameter_count():
    with torch.device("meta"):
        simmim = SGMIM(ModelConfig(guidance=GuidanceConfig(enabled=False)))
    assert count(simmim) / 1e6 == pytest.approx(89.87, abs=0.05)
    assert not hasattr(simmim, "extractor") and not hasattr(simmim, "fusion")


def test_simmim_vit_b_224_parameter_count():
    # SimMIM's "number of params" for its ViT-B pretraining model (main_simmim.py counts the
    # whole model: encoder with mask token, plus the 1×1 conv decoder) is 86,256,720:
    # patch embedding 768·3·16² + 768, class token 768, shared relative position bias
    # (27² + 3) · 12, 12 blocks of 7,088,640 (norms, qkv without bias + q/v biases, proj, MLP,
    # two LayerScales), final LayerNorm, mask token 768, decoder 768·768 + 768.
    block = 2 * 768 + 768 * 2304 + 2 * 768 + (768 * 768 + 768) + 2 * 768 \
        + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 768
    expected = (768 * 3 * 256 + 768) + 768 + 732 * 12 + 12 * block + 2 * 768 + 768 + (768 * 768 + 768)
    with torch.device("meta"):
        simmim = SGMIM(ModelConfig(encoder=EncoderConfig(timm_name="beit_base_patch16_224", img_size=224),
                                   guidance=GuidanceConfig(enabled=False)))
    assert count(simmim) == expected == 86_256_720                       # 86.26 M
    assert count(simmim.encoder.backbone) == 85_665_360                  # no mask token, no decoder


def test_simmim_vit_has_simmims_layout():
    model = SGMIM(tiny_config("simmim_vit"))
    net = model.encoder.backbone
    assert net.pos_embed is None                                          # no absolute position embedding
    grid = model.encoder.grid_size
    table = net.rel_pos_bias.relative_position_bias_table                 # one bias for all blocks
    assert table.shape == ((2 * grid[0] - 1) * (2 * grid[1] - 1) + 3, 2)
    assert all(block.attn.relative_position_bias_table is None for block in net.blocks)
    for block in net.blocks:                                              # LayerScale initialised at 0.1
        assert torch.equal(block.gamma_1, torch.full_like(block.gamma_1, 0.1))
        assert torch.equal(block.gamma_2, torch.full_like(block.gamma_2, 0.1))
    assert isinstance(net.norm, torch.nn.LayerNorm) and net.norm.eps == 1e-6
    assert isinstance(net.fc_norm, torch.nn.Identity)
    assert model.encoder.is_vit and model.encoder.out_stride == 16
    # SimMIM's initialisation (its ViT's `_trunc_normal_`, a = -std, b = std): mask token, class
    # token, patch embedding and every Linear within ±0.02, the output projections of block k
    # then divided by sqrt(2k); biases zero.
    assert model.encoder.mask_token.abs().max() <= 0.02 and net.cls_token.abs().max() <= 0.02
    assert net.patch_embed.proj.weight.abs().max() <= 0.02 and not net.patch_embed.proj.bias.any()
    for k, block in enumerate(net.blocks, 1):
        assert block.attn.qkv.weight.abs().max() <= 0.02 and block.mlp.fc1.weight.abs().max() <= 0.02
        assert block.attn.proj.weight.abs().max() <= 0.02 / (2 * k) ** 0.5
        assert block.mlp.fc2.weight.abs().max() <= 0.02 / (2 * k) ** 0.5
        assert block.attn.proj.weight.abs().max() > 0.9 * 0.02 / (2 * k) ** 0.5


# SG-MIM parameters on top of SimMIM for Swin-B/192 (the README's table).
@pytest.mark.parametrize(("extractor", "extra_millions"), [
    ("mlp", 16.41), ("transformer", 100.37), ("siamese", 13.65),
])
def test_guidance_extras_per_extractor(extractor, extra_millions):
    with torch.device("meta"):
        simmim = SGMIM(ModelConfig(guidance=GuidanceConfig(enabled=False)))
        sgmim = SGMIM(ModelConfig(guidance=GuidanceConfig(extractor=extractor)))
    assert (count(sgmim) - count(simmim)) / 1e6 == pytest.approx(extra_millions, abs=0.01)


def test_mlp_extras_equal_the_paper_era_authors_code():
    # The authors' first commit (MLP extractor): depth patch embedding 1→128 (k4) + LayerNorm,
    # three patch mergings (LN 4C + Linear 4C→2C, no bias) 128→1024, the fusion block at 1024
    # (q, k, v without bias, proj, three LayerNorms, MLP ×4) and the 1×1 conv depth decoder.
    embed = (16 * 128 + 128) + 2 * 128
    merges = sum(2 * 4 * c + 4 * c * 2 * c for c in (128, 256, 512))
    fusion = (3 * 1024 * 1024 + (1024 * 1024 + 1024) + 3 * 2 * 1024
              + (1024 * 4096 + 4096) + (4096 * 1024 + 1024))
    decoder = 1024 * 32 * 32 + 32 * 32
    with torch.device("meta"):
        simmim = SGMIM(ModelConfig(guidance=GuidanceConfig(enabled=False)))
        sgmim = SGMIM(ModelConfig())
        later = SGMIM(ModelConfig(guidance=GuidanceConfig(position_embedding=True)))
    assert count(sgmim) - count(simmim) == embed + merges + fusion + decoder == 16_406_912
    # the later code's one position table, (1, 36, 1024), shared by both streams
    assert count(later) - count(sgmim) == 36 * 1024


def test_fusion_defaults_follow_the_paper_era_code():
    g = GuidanceConfig()
    assert (g.position_embedding, g.attend_visible_only) == (False, False)
    assert SGMIM(tiny_config()).fusion.pos_embed is None


@pytest.mark.parametrize("visible_only", [False, True])
def test_fusion_attends_to_masked_structured_tokens_unless_asked_not_to(visible_only):
    config = tiny_config()
    config.guidance.attend_visible_only = visible_only
    fusion = SGMIM(config).fusion.eval()
    g = torch.Generator().manual_seed(0)
    image_feat, struct_feat = torch.randn(1, 4, 256, generator=g), torch.randn(1, 4, 256, generator=g)
    visible = torch.tensor([[True, True, False, True]])
    changed = struct_feat.clone()
    changed[0, 2] = 3 * torch.randn(256, generator=g)    # a token that sees no depth
    with torch.no_grad():
        before, after = fusion(image_feat, struct_feat, visible), fusion(image_feat, changed, visible)
    if visible_only:
        torch.testing.assert_close(after, before)
    else:
        assert (after - before).abs().amax() > 1e-3


def test_later_fusion_options_train_every_parameter():
    config = tiny_config()
    config.guidance.position_embedding = config.guidance.attend_visible_only = True
    model = SGMIM(config)
    model(*fixed_batch(model)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("family", sorted(TINY_ENCODERS))
def test_exported_encoder_loads_strictly_into_timm(family):
    model = SGMIM(tiny_config(family)).eval()
    # what the export's metadata holds, read back as a user would
    meta = {"timm_model": model.config.encoder.timm_name,
            "timm_kwargs": json.dumps(model.config.encoder.timm_kwargs())}
    plain = timm.create_model(meta["timm_model"], **json.loads(meta["timm_kwargs"])).eval()
    plain.load_state_dict(model.encoder_state_dict(), strict=True)
    image = fixed_batch(model)[0]
    with torch.no_grad():
        ours = model.encoder(image, None)
        theirs = plain.forward_features(image)
    if family in ("vit", "simmim_vit"):
        theirs = theirs[:, plain.num_prefix_tokens:].transpose(1, 2).reshape(ours.shape)
    else:
        theirs = theirs.permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, theirs)


def test_mask_token_replaces_masked_patches():
    model = SGMIM(tiny_config()).eval()
    image, _, image_mask, _ = fixed_batch(model, batch_size=1)
    tokens = model.encoder.embed(image)
    masked = model.encoder.apply_mask(tokens, image_mask)
    m = image_mask.bool()
    assert torch.equal(masked[~m], tokens[~m])
    assert torch.equal(masked[m], model.encoder.mask_token.view(1, -1).expand(int(m.sum()), -1))


def test_no_weight_decay_names():
    config = tiny_config()
    config.guidance.position_embedding = True
    model = SGMIM(config)
    names = model.no_weight_decay_names()
    assert "encoder.mask_token" in names and "fusion.pos_embed" in names
    assert any("relative_position_bias_table" in n for n in names)
    assert "image_head.0.weight" not in names and "fusion.q.weight" not in names


@pytest.mark.parametrize("guided", [True, False])
def test_a_few_steps_reduce_both_losses(guided):
    model = SGMIM(tiny_config(guided=guided))
    batch = fixed_batch(model, batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = model(*batch)
    for _ in range(15):
        out = model(*batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    last = model(*batch)
    assert last.loss_image < 0.8 * first.loss_image
    if guided:
        assert last.loss_struct < 0.8 * first.loss_struct
