"""The `pretrain` job kind: SG-MIM (or SimMIM with guidance off) on images + structured knowledge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sgmim import rundir
from sgmim.data import build_pretrain_dataset
from sgmim.data.transforms import normalize_pixels
from sgmim.models import SGMIM
from sgmim.spec import PretrainJob
from sgmim.train.checkpoint import write_safetensors
from sgmim.train.distributed import DistEnv
from sgmim.train.optim import param_groups

ENCODER_PREFIX = "encoder.backbone."


class PretrainTask:
    def __init__(self, spec: PretrainJob, env: DistEnv):
        self.spec, self.env = spec, env
        self.config = spec.config
        self.optim, self.schedule, self.deepspeed = (self.config.optim, self.config.schedule,
                                                     self.config.deepspeed)
        self.data_workers = self.config.data.num_workers

    def build_model(self) -> SGMIM:
        return SGMIM(self.config.model)

    def build_dataset(self, model: SGMIM):
        return build_pretrain_dataset(self.config.data, self.config.model.encoder.img_size,
                                      model.mask_generator(), split="train")

    def param_groups(self, model: SGMIM) -> list[dict]:
        return param_groups(model, self.optim.weight_decay, model.no_weight_decay_names())

    def forward(self, engine, batch: dict) -> dict[str, torch.Tensor]:
        """`batch` on the device, as the loader shipped it (`data.transfer`)."""
        image, depth = batch["image"], batch["depth"].float()
        if image.dtype == torch.uint8:
            image = normalize_pixels(image)
        out = engine(image, depth, batch["image_mask"], batch["struct_mask"])
        named = {"loss": out.loss, "loss_img": out.loss_image}
        if out.loss_struct is not None:
            named["loss_struct"] = out.loss_struct
        return named

    def export(self, state_dict: dict[str, torch.Tensor], run_dir: Path, step: int) -> None:
        encoder = {k[len(ENCODER_PREFIX):]: v for k, v in state_dict.items()
                   if k.startswith(ENCODER_PREFIX)}
        encoder_cfg = self.config.model.encoder
        metadata = {
            "format": "pt",
            "timm_model": encoder_cfg.timm_name,
            "timm_kwargs": json.dumps(encoder_cfg.timm_kwargs()),
            "sgmim_spec": self.spec.model_dump_json(),
            "step": str(step),
            "kind": "encoder",                                     # what a finetune job starts from
            "job_id": os.environ.get(rundir.ENV_JOB_ID, ""),          # set by the supervisor
            "parent_chain": "[]",                                  # pretraining has no parent
        }
        write_safetensors(run_dir / rundir.ENCODER_EXPORT, encoder, metadata)

    def after_training(self, engine, run_dir: Path) -> None:
        pass

