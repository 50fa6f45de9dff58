"""The job spec's home: one torch-free package, one base for the encoder fields."""

import subprocess
import sys

from sgmim.spec import EncoderConfig, FinetuneEncoderConfig
from sgmim.spec.model import EncoderFields


def test_the_spec_imports_neither_torch_nor_the_ml_packages():
    code = ("import sys, sgmim.spec; "
            "print(sorted(m for m in ('torch', 'timm', 'sgmim.models', 'sgmim.data', 'sgmim.train') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_both_encoder_sections_share_one_base():
    assert issubclass(EncoderConfig, EncoderFields) and issubclass(FinetuneEncoderConfig, EncoderFields)
    pretrain = EncoderConfig(timm_name="swin_tiny_patch4_window7_224", img_size=64, window_size=4,
                             depths=[1, 1, 2, 1])
    finetune = FinetuneEncoderConfig(img_size=64, window_size=4, depths=[1, 1, 2, 1], drop_path_rate=0.0)
    assert pretrain.timm_kwargs() == {**finetune.overrides(), "num_classes": 0}


def test_the_shipped_timm_names_are_the_installed_timm_registry():
    from sgmim.spec.timm_names import TIMM_NAMES, registry_names

    assert list(TIMM_NAMES) == registry_names(), "regenerate with `python -m sgmim.spec.timm_names`"
