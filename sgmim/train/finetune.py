"""The `finetune` job kind: an encoder (pretraining export, file, or random) + a depth or
segmentation head, trained with layer-wise LR decay on a labelled dataset; evaluated on the
validation split before the first step and after the last (eval.json), exported with its
lineage as `export/model.safetensors`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from sgmim import rundir
from sgmim.data import DATASET_INFO, IGNORE_INDEX, build_downstream_dataset
from sgmim.models.downstream import DEFAULT_CHANNELS, DownstreamModel, HeadSpec
from sgmim.spec import FinetuneJob
from sgmim.spec.model import layout_kwargs
from sgmim.train.checkpoint import atomic_write_json, write_safetensors
from sgmim.train.distributed import DistEnv
from sgmim.train.evaluate import EvalSettings, class_names, curve_fields, eval_record, evaluate
from sgmim.train.optim import param_groups
from sgmim.train.weights import (
    ENCODER,
    InitError,
    WeightsFile,
    lineage_metadata,
    load_encoder,
    read_weights,
    resolve_init_path,
)

log = logging.getLogger("sgmim.train")


def silog_loss(pred: torch.Tensor, target: torch.Tensor, lam: float, eps: float = 1e-3) -> torch.Tensor:
    """GLPDepth's SILog loss over the valid pixels (target > eps) of the whole batch:
    sqrt(mean(d²) − λ·mean(d)²), d = log(target) − log(pred); 0 when no pixel is valid.
    Weighted by the valid mask rather than indexed with it: no step waits for the device to
    count the valid pixels."""
    pred, target = pred.float(), target.float()
    valid = (target > eps).float()
    count = valid.sum()
    d = (torch.log(target.clamp_min(eps)) - torch.log(pred.clamp_min(1e-6))) * valid
    mean_d = d.sum() / count.clamp_min(1)
    mean_d2 = (d ** 2).sum() / count.clamp_min(1)
    loss = torch.sqrt(mean_d2 - lam * mean_d ** 2 + 1e-12)
    return torch.where(count > 0, loss, pred.sum() * 0.0)


def cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Pixel cross-entropy, the mean over the pixels not ignored (255); 0 (not NaN) when all
    are ignored. Sum over the count rather than torch's mean, which is NaN then, so no step
    waits for the device to check."""
    counted = (label != IGNORE_INDEX).sum()
    total = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / counted.clamp_min(1)


def _hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class FinetuneTask:
    def __init__(self, spec: FinetuneJob, env: DistEnv):
        self.spec, self.env = spec, env
        self.config = cfg = spec.config
        self.optim, self.schedule, self.deepspeed = cfg.optim, cfg.schedule, cfg.deepspeed
        self.data_workers = cfg.data.num_workers
        parent_id = spec.parent.job_id if spec.parent else None
        self.weights: WeightsFile | None = None
        if cfg.init != "random":   # checked here, before the trainer starts any work
            self.weights = read_weights(resolve_init_path(cfg.init, cfg.init_path, parent_id), ENCODER)
        if self.weights is not None:
            self.parent_chain = self.weights.lineage(parent_id)
        else:
            self.parent_chain = [parent_id] if parent_id else []
        self.timm_name, self.timm_kwargs = self._architecture()
        self.head = self._head()
        self.final_step: int | None = None
        self.train_size = 0

    # --- what the spec and the init file resolve to ---------------------------------------
    def _architecture(self) -> tuple[str, dict]:
        cfg, found = self.config, self.weights
        if found is not None and found.timm_name is None and cfg.encoder.timm_name is None:
            raise InitError(f"init file {found.path} has no timm_model metadata; set "
                            "config.encoder.timm_name and the size fields of the encoder it holds")
        name = cfg.encoder.timm_name or found.timm_name
        kwargs = dict(found.timm_kwargs or {}) if found is not None else layout_kwargs(name)
        kwargs.update(cfg.encoder.overrides())
        if cfg.encoder.img_size is None:
            crop = cfg.data.crop_size or DATASET_INFO[cfg.data.dataset].crop_size
            if crop is not None:
                kwargs["img_size"] = _hw(crop)
        kwargs.pop("num_classes", None)
        if name.startswith("swinv2") and found is not None:
            kwargs.update(_swinv2_pretrained_windows(found.timm_kwargs or {}, kwargs))
        return name, kwargs

    def _head(self) -> HeadSpec:
        cfg = self.config
        head, info = cfg.head, DATASET_INFO[cfg.data.dataset]
        kind = head.kind or ("glpdepth" if cfg.task == "depth" else "upernet")
        channels = head.channels
        if channels is None:
            channels = DEFAULT_CHANNELS.get(kind) or self._embed_dim()
        norm = head.norm if head.norm != "auto" else ("batch" if self.schedule.batch_size >= 2 else "group")
        return HeadSpec(
            kind=kind, channels=channels, norm=norm,
            max_depth=(head.max_depth or info.max_depth) if cfg.task == "depth" else None,
            num_classes=(head.num_classes or info.num_classes) if cfg.task == "segmentation" else None,
            num_deconv=head.num_deconv, deconv_filters=head.deconv_filters,
            pool_scales=tuple(head.pool_scales),
            aux_channels=head.aux_channels, aux_weight=head.aux_weight, dropout=head.dropout,
            vit_taps=tuple(head.vit_taps) if head.vit_taps else None, readout=head.readout)

    def _embed_dim(self) -> int:
        """GLPDepth's default width: the encoder's embed_dim (the authors' depth code)."""
        from sgmim.models.downstream import create_backbone

        if "embed_dim" in self.timm_kwargs:
            return int(self.timm_kwargs["embed_dim"])
        return int(create_backbone(self.timm_name, self.timm_kwargs).patch_embed.proj.out_channels)

    def _describe_encoder(self) -> str:
        return f"{self.timm_name} {json.dumps(self.timm_kwargs)}"

    # --- TrainTask ---------------------------------------------------------------------------
    def build_model(self) -> DownstreamModel:
        try:
            model = DownstreamModel(self.timm_name, self.timm_kwargs, self.head)
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
            raise InitError(f"cannot build encoder {self._describe_encoder()} with a {self.head.kind} head: "
                            f"{exc}", path="config.encoder") from None
        if self.weights is not None:
            load_encoder(model.backbone, self.weights.load(), self.weights.path, self._describe_encoder())
            log.info("encoder initialised from %s", self.weights.path)
        else:
            log.info("encoder initialised at random (init: random)")
        if self.env.on_gpu and self.env.world_size > 1 and self.head.norm == "batch":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def build_dataset(self, model: DownstreamModel):
        cfg = self.config
        data = cfg.data.model_copy(update={"crop_size": model.input_size})   # crops are the encoder's input
        dataset = build_downstream_dataset(data, cfg.data.train_split, cfg.task, train=True)
        self.train_size = len(dataset)
        return dataset

    def param_groups(self, model: DownstreamModel) -> list[dict]:
        decay = self.optim.layer_decay
        scale = None
        if decay is not None and decay < 1.0:
            top = model.num_layers + 1
            scale = lambda name: decay ** (top - model.layer_id(name))  # noqa: E731
        return param_groups(model, self.optim.weight_decay, model.no_weight_decay_names(), layer_scale=scale)

    def forward(self, engine, batch: dict) -> dict[str, torch.Tensor]:
        out = engine(batch["image"])
        if self.config.task == "depth":
            return {"loss": silog_loss(out["out"], batch["depth"], self.config.head.silog_lambda)}
        label = batch["label"]
        main = cross_entropy(out["out"], label)
        named = {"loss_seg": main}
        loss = main
        if "aux" in out:
            aux = cross_entropy(out["aux"], label)
            named["loss_aux"] = aux
            loss = main + self.head.aux_weight * aux
        return {"loss": loss, **named}

    # --- evaluation before and after training --------------------------------------------------
    def _evaluate(self, engine) -> tuple[dict, EvalSettings]:
        """Evaluate a copy of the current weights (any ZeRO stage) on the validation split."""
        model = DownstreamModel(self.timm_name, self.timm_kwargs, self.head)
        model.load_state_dict(_full_state_dict(engine))
        cfg = self.config
        dataset = build_downstream_dataset(cfg.data, cfg.data.val_split, cfg.task, train=False)
        settings = EvalSettings.make(cfg.eval, model, cfg.data.dataset, cfg.data.val_split,
                                     cfg.data.num_workers)
        return evaluate(model, dataset, settings, self.env), settings

    def _steps_per_epoch(self) -> int:
        sch = self.schedule
        return max(1, (self.train_size // self.env.world_size) // (sch.batch_size * sch.accumulation))

    def before_training(self, engine, metrics) -> None:
        """Called by the trainer once before the first step of a fresh run (not on resume)."""
        if not self.config.eval_at_start:
            return
        result, _ = self._evaluate(engine)
        fields = curve_fields(result, self.config.task)
        metrics.write(0, 0.0, **fields)
        log.info("validation before training: %s", " ".join(f"{k} {v:.4g}" for k, v in fields.items()))

    def export(self, state_dict: dict[str, torch.Tensor], run_dir: Path, step: int) -> None:
        self.final_step = step
        metadata = {
            "format": "pt", "kind": "finetuned", "task": self.config.task,
            "timm_model": self.timm_name, "timm_kwargs": json.dumps(self.timm_kwargs),
            "head": json.dumps(self.head.to_dict()), "dataset": self.config.data.dataset,
            "sgmim_spec": self.spec.model_dump_json(), "step": str(step),
            "init": str(self.weights.path) if self.weights else "random",
            **lineage_metadata(self.parent_chain),
        }
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
        write_safetensors(run_dir / rundir.MODEL_EXPORT, tensors, metadata)

    def after_training(self, engine, run_dir: Path) -> None:
        from sgmim.train.metrics import MetricsWriter

        result, settings = self._evaluate(engine)
        step = self.final_step if self.final_step is not None else int(engine.global_steps)
        if not self.env.is_main:
            return
        MetricsWriter(run_dir / rundir.METRICS, enabled=True).write(
            step, step / self._steps_per_epoch(), **curve_fields(result, self.config.task))
        record = eval_record(result, settings, self.parent_chain, step, class_names(self.config.data.dataset))
        atomic_write_json(run_dir / rundir.EVAL, record)
        log.info("validation after training: %s",
                 " ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items() if v is not None))


def _swinv2_pretrained_windows(recorded: dict, kwargs: dict) -> dict:
    """SwinV2 fine-tuned with a larger window than it was pretrained with: its continuous position
    bias normalises coordinates by the pretraining window of each stage (the SimMIM authors'
    `pretrained_window_size`, e.g. 12, 12, 12, 6 for window 12 at 192 px)."""
    old, new = recorded.get("window_size"), kwargs.get("window_size")
    if "pretrained_window_sizes" in kwargs or not old or not new or old == new:
        return {}
    old_img = recorded.get("img_size", 256)
    old_img = old_img if isinstance(old_img, int) else min(old_img)
    patch = recorded.get("patch_size") or 4
    stages = len(recorded.get("depths") or (2, 2, 6, 2))
    return {"pretrained_window_sizes": tuple(min(old, old_img // (patch * 2 ** i)) for i in range(stages))}


def _full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's full weights on every rank; ZeRO-3 gathers its partitions (collective)."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                    for k, v in module.state_dict().items()}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
