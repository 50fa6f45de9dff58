"""The fine-tuning and evaluation sections of the job spec: the decoder head, how a model is
evaluated, the fine-tuned encoder, and the `finetune` / `evaluate` configs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sgmim.spec.base import FieldError, IntPair, StrictModel, TimmName
from sgmim.spec.data import DownstreamDataConfig
from sgmim.spec.model import EncoderFields
from sgmim.spec.train import DeepSpeedConfig, OptimConfig, ScheduleConfig

Task = Literal["depth", "segmentation"]
HeadKind = Literal["glpdepth", "dpt", "upernet"]
# Which heads serve which task; the first is the default.
TASK_HEADS: dict[str, tuple[str, ...]] = {"depth": ("glpdepth", "dpt"), "segmentation": ("upernet",)}


class HeadConfig(StrictModel):
    """The decoder on top of the encoder (docs/method.md "Downstream"). Channel counts and strides of
    the encoder's features are derived from the encoder; None picks the per-head default."""

    kind: HeadKind | None = Field(
        None, description="glpdepth: deconvolution head on the last stage (KITTI); dpt: DPT "
                          "reassemble + fusion on 4 feature levels (NYU-v2, ViT); upernet: PPM + FPN "
                          "with an auxiliary FCN head (ADE20K). Default: glpdepth for depth, upernet "
                          "for segmentation")
    channels: int | None = Field(
        None, ge=8, le=4096, description="decoder width; default glpdepth: the encoder's embed_dim "
                                         "(the authors' depth code), dpt: 256, upernet: 512")
    num_deconv: int = Field(3, ge=0, le=6, description="glpdepth: ConvTranspose k2 s2 → BN → ReLU "
                                                        "blocks; bilinear ×2 steps make up the rest of "
                                                        "the encoder's stride")
    deconv_filters: int = Field(32, ge=4, le=4096, description="glpdepth: width of the deconvolutions")
    pool_scales: list[int] = Field([1, 2, 3, 6], min_length=1, max_length=8,
                                   description="upernet: pyramid pooling output sizes")
    aux_channels: int = Field(256, ge=8, le=4096, description="upernet: auxiliary FCN head width")
    aux_weight: float = Field(0.4, ge=0.0, description="upernet: auxiliary FCN loss weight (0: no aux head)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="segmentation: dropout before the classifier")
    vit_taps: list[int] | None = Field(
        None, min_length=4, max_length=4,
        description="ViT, multi-scale heads: the 4 blocks (0-based) reassembled to strides 4/8/16/32; "
                    "default: evenly spaced ending at the last block (ViT-B: 2, 5, 8, 11, as DPT)")
    readout: Literal["project", "ignore"] = Field(
        "project", description="ViT, multi-scale heads: fold the class token into the patch tokens "
                               "(DPT's projection) or drop it")
    norm: Literal["auto", "batch", "group"] = Field(
        "auto", description="norm layers of the head; auto: BatchNorm (SyncBatchNorm across GPUs) "
                            "when each process sees at least 2 images per step, else GroupNorm")
    max_depth: float | None = Field(
        None, gt=0.0, description="depth: output = sigmoid · max_depth, metres; default per dataset: "
                                  "KITTI 80, NYU 10, synthetic 12 (required for a folder dataset)")
    num_classes: int | None = Field(
        None, ge=2, le=10000, description="segmentation classes; default per dataset: ADE20K 150, "
                                          "synthetic 6 (required for a folder dataset)")
    silog_lambda: float = Field(0.5, ge=0.0, le=1.0, description="depth: SILog loss "
                                                                   "sqrt(mean d² − λ mean(d)²)")


class EvalOptions(StrictModel):
    """How a model is evaluated (the fine-tuning run's final evaluation and `evaluate` jobs)."""

    flip: bool = Field(False, description="average with the prediction of the horizontally flipped image")
    crop: Literal["auto", "none", "garg", "eigen"] = Field(
        "auto", description="depth evaluation crop; auto: Garg for KITTI, Eigen [45:471, 41:601] for "
                            "NYU, none otherwise")
    min_depth: float = Field(1e-3, ge=0.0, description="depth: pixels with gt <= min_depth are invalid")
    max_depth: float | None = Field(
        None, gt=0.0, description="depth: pixels with gt >= max_depth are invalid and predictions are "
                                  "clamped to it; default: the head's max_depth")
    mode: Literal["slide", "resize"] = Field(
        "slide", description="images other than the model's input size: slide: windows of the input "
                             "size, overlapping predictions averaged (one pass when the sizes match); "
                             "resize: resize the image to the input size and the prediction back")
    slide_stride: float = Field(2 / 3, gt=0.0, le=1.0,
                                description="slide: window stride as a fraction of the window")
    resize_short: int | None = Field(
        None, ge=16, le=8192, description="resize the image so its shorter side is this before inference "
                                          "(ADE20K: 512, as mmseg's test pipeline); predictions are "
                                          "resized back to the ground truth's size")
    batch_size: int = Field(8, ge=1, le=4096, description="images per forward pass and process")


InitSource = Literal["parent", "file", "random"]


class FinetuneEncoderConfig(EncoderFields):
    """The encoder of a fine-tuning job: every field left out (None) is the one recorded in the
    init file's metadata. Size changes that keep the weights' shapes are allowed (img_size,
    window_size): position tables are resampled as timm does. With `init: random` timm_name and
    the size fields describe the whole encoder."""

    timm_name: TimmName | None = Field(None, description="timm Swin, SwinV2 or ViT name; required with "
                                                   "init: random")
    img_size: int | IntPair | None = Field(
        None, description="input size, side or (H, W); default: data.crop_size, else the dataset's "
                          "training crop (KITTI 352, NYU (448, 576), ADE20K 512), else the recorded size")
    drop_path_rate: float | None = Field(
        None, ge=0.0, lt=1.0, description="stochastic depth while fine-tuning (default: the recorded rate)")

    def overrides(self) -> dict:
        """The fields that are set, as `timm.create_model` keyword arguments (timm_name excluded)."""
        return self.size_kwargs()


class FinetuneConfig(StrictModel):
    task: Task = "depth"
    init: InitSource = Field("parent", description="encoder weights: the parent's export, a file, "
                                                    "or random (only when asked, for baselines)")
    init_path: str | None = Field(
        None, description="init file: an encoder .safetensors (a pretraining export), or a DeepSpeed "
                          "checkpoint tag folder of a pretraining run; with init: parent the worker "
                          "fills it in with the parent's artifact")
    encoder: FinetuneEncoderConfig = Field(
        FinetuneEncoderConfig(), description="changes to the recorded encoder (all of it with init: random)")
    head: HeadConfig = HeadConfig()
    data: DownstreamDataConfig = DownstreamDataConfig()
    # Layer-wise decay 0.9 and a poly schedule: the SimMIM authors' depth fine-tuning recipe.
    optim: OptimConfig = OptimConfig(base_lr=1e-4, warmup_epochs=1, schedule="poly",
                                     layer_decay=0.9, min_lr=0.0, clip_grad=None)
    schedule: ScheduleConfig = ScheduleConfig(epochs=25)
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    eval: EvalOptions = EvalOptions()
    eval_at_start: bool = Field(
        True, description="evaluate the validation split before the first step too (metrics at step 0), "
                          "so the run shows what fine-tuning gained")

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        _check_init_source(self.init, self.init_path, self.encoder)
        _check_task(self.task, self.head, self.data, self.eval)
        crop, size = self.data.crop_size, self.encoder.img_size
        if crop is not None and size is not None and _hw(crop) != _hw(size):
            raise FieldError("encoder.img_size", f"encoder.img_size {size} differs from data.crop_size "
                                                 f"{crop}; the training crop is the encoder's input")
        return self


class EvaluateConfig(StrictModel):
    init: Literal["parent", "file"] = "parent"
    init_path: str | None = Field(
        None, description="init file: a fine-tuned model .safetensors (a finetune job's "
                          "export/model.safetensors); with init: parent the worker fills it in")
    data: DownstreamDataConfig | None = Field(
        None, description="dataset to evaluate; default: the fine-tuning job's data section")
    split: str = Field("val", description="which split of data to evaluate (name or split-file path)")
    eval: EvalOptions = EvalOptions()

    @model_validator(mode="after")
    def _check_init(self) -> EvaluateConfig:
        if self.init == "file" and not self.init_path:
            raise FieldError("init_path", "init: file needs init_path")
        return self


def _hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _check_init_source(init: str, init_path: str | None, encoder: FinetuneEncoderConfig) -> None:
    if init == "file" and not init_path:
        raise FieldError("init_path", "init: file needs init_path")
    if init == "random" and encoder.timm_name is None:
        raise FieldError("encoder.timm_name", "init: random needs encoder.timm_name and its size fields "
                                              "(no init file to copy the encoder from)")


def _check_task(task: str, head: HeadConfig, data: DownstreamDataConfig, opts: EvalOptions) -> None:
    heads = TASK_HEADS[task]
    if head.kind is not None and head.kind not in heads:
        raise FieldError("head.kind", f"head {head.kind} does not serve {task}; use {' or '.join(heads)}")
    served = {"kitti": ("depth",), "nyu": ("depth",), "ade20k": ("segmentation",)}
    if task not in served.get(data.dataset, ("depth", "segmentation")):
        raise FieldError("data.dataset", f"dataset {data.dataset} has no {task} labels")
    if data.dataset == "folder" and task == "depth" and head.max_depth is None:
        raise FieldError("head.max_depth", "a folder dataset needs head.max_depth (metres)")
    if data.dataset == "folder" and task == "segmentation" and head.num_classes is None:
        raise FieldError("head.num_classes", "a folder dataset needs head.num_classes")
    if task == "segmentation" and opts.crop in ("garg", "eigen"):
        raise FieldError("eval.crop", f"the {opts.crop} crop is a depth evaluation crop")
