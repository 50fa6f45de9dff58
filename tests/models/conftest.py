import pytest
import torch

from sgmim.spec import EncoderConfig, GuidanceConfig, MaskConfig, ModelConfig

# Small variants of each backbone family: same code paths as the paper's models, seconds on CPU.
TINY_ENCODERS = {
    "swin": EncoderConfig(timm_name="swin_tiny_patch4_window7_224", img_size=64, window_size=4,
                          embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8]),
    "swinv2": EncoderConfig(timm_name="swinv2_tiny_window8_256", img_size=64, window_size=4,
                            embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8]),
    "vit": EncoderConfig(timm_name="vit_tiny_patch16_224", img_size=64, embed_dim=64, depth=2,
                         num_heads=2),
    # SimMIM's ViT (timm's BEiT with SimMIM's layout), the paper's ViT-B at a small size
    "simmim_vit": EncoderConfig(timm_name="beit_base_patch16_224", img_size=64, embed_dim=64, depth=2,
                                num_heads=2),
}


def tiny_config(family: str = "swin", guided: bool = True, extractor: str = "mlp",
                structured: str = "complementary") -> ModelConfig:
    return ModelConfig(
        encoder=TINY_ENCODERS[family],
        mask=MaskConfig(mask_patch_size=16, structured=structured),
        guidance=GuidanceConfig(enabled=guided, extractor=extractor, fusion_heads=4),
    )


def fixed_batch(model, batch_size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = model.config.encoder.img_size
    image = torch.randn(batch_size, 3, size, size, generator=g)
    depth = torch.rand(batch_size, 1, size, size, generator=g)
    image_mask, struct_mask = model.mask_generator().batch(batch_size, seed)
    return image, depth, image_mask, struct_mask


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
