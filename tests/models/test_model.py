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


# SG-MIM parameters on top of SimMIM for Swin-B/192 (the README's table).
@pytest.mark.parametrize(("extractor", "extra_millions"), [
    ("mlp", 16.48), ("transformer", 100.44), ("siamese", 13.72),
])
def test_guidance_extras_per_extractor(extractor, extra_millions):
    with torch.device("meta"):
        simmim = SGMIM(ModelConfig(guidance=GuidanceConfig(enabled=False)))
        sgmim = SGMIM(ModelConfig(guidance=GuidanceConfig(extractor=extractor)))
    assert (count(sgmim) - count(simmim)) / 1e6 == pytest.approx(extra_millions, abs=0.01)


@pytest.mark.parametrize("family", sorted(TINY_ENCODERS))
def test_exported_encoder_loads_strictly_into_timm(family):
    model = SGMIM(tiny_config(family)).eval()
    name, kwargs = model.timm_spec()
    plain = timm.create_model(name, pretrained=False, **kwargs).eval()
    plain.load_state_dict(model.encoder_state_dict(), strict=True)
    image = fixed_batch(model)[0]
    with torch.no_grad():
        ours = model.encoder(image, None)
        theirs = plain.forward_features(image)
    if family == "vit":
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
    model = SGMIM(tiny_config())
    names = model.no_weight_decay_names()
    assert "encoder.mask_token" in names and "fusion.pos_image" in names
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
