"""Evaluation of a depth or segmentation model on one split: the fine-tuning run's first and
last evaluation, and the `evaluate` job kind (`run_evaluation`).

Inference follows the usual dense-prediction test pipelines: optional resize of the shorter
side (mmseg's ADE20K pipeline), then windows of the model's input size slid over the image
with overlapping predictions averaged (mmseg's "slide" mode; the shift-window test of the
SimMIM authors' depth code), or the whole image resized to the input size; optional flip
averaging. Ranks evaluate disjoint shares of the split and add up their sums.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgmim import rundir
from sgmim.metrics import DepthMeter, depth_metrics
from sgmim.metrics.segmentation import ConfusionMatrix
from sgmim.models.downstream import DownstreamModel, HeadSpec
from sgmim.spec import EvalOptions, EvaluateJob, parse_spec
from sgmim.train.checkpoint import atomic_write_json
from sgmim.train.distributed import DistEnv
from sgmim.train.metrics import MetricsWriter
from sgmim.train.weights import FINETUNED, InitError, WeightsFile, job_id, read_weights, resolve_init_path

log = logging.getLogger("sgmim.train")

DEFAULT_CROPS = {"kitti": "garg", "nyu": "eigen"}
# The metrics written to metrics.jsonl as val_<name> (eval.json has them all).
CURVE_METRICS = {"depth": ("rmse", "abs_rel", "delta1", "silog"),
                 "segmentation": ("miou", "pixel_acc", "mean_acc")}


@dataclass(frozen=True)
class EvalSettings:
    task: str
    dataset: str
    split: str
    input_size: tuple[int, int]
    flip: bool = False
    crop: str = "none"
    min_depth: float = 1e-3
    max_depth: float = 80.0
    mode: str = "slide"
    slide_stride: float = 2 / 3
    resize_short: int | None = None
    batch_size: int = 8
    num_classes: int | None = None
    num_workers: int = 0

    @classmethod
    def make(cls, opts: EvalOptions, model: DownstreamModel, dataset: str, split: str,
             num_workers: int) -> EvalSettings:
        head = model.spec
        crop = opts.crop if opts.crop != "auto" else DEFAULT_CROPS.get(dataset, "none")
        return cls(task=head.task, dataset=dataset, split=split, input_size=model.input_size, flip=opts.flip,
                   crop=crop if head.task == "depth" else "none", min_depth=opts.min_depth,
                   max_depth=opts.max_depth or head.max_depth or 0.0, mode=opts.mode,
                   slide_stride=opts.slide_stride, resize_short=opts.resize_short, batch_size=opts.batch_size,
                   num_classes=head.num_classes, num_workers=num_workers)

    def describe(self) -> dict:
        return {"flip": self.flip, "crop": self.crop if self.task == "depth" else None,
                "max_depth": self.max_depth if self.task == "depth" else None,
                "min_depth": self.min_depth if self.task == "depth" else None,
                "mode": self.mode, "resize_short": self.resize_short,
                "input_size": list(self.input_size)}


def _positions(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride)) + [length - window]
    return sorted(set(starts))


def _slide(model: DownstreamModel, image: torch.Tensor, window: tuple[int, int],
           stride: float) -> torch.Tensor:
    """Windows of `window` over (B, 3, H, W) (zero-padded when smaller), outputs averaged."""
    height, width = image.shape[-2:]
    wh, ww = window
    x = F.pad(image, (0, max(ww - width, 0), 0, max(wh - height, 0)))
    hp, wp = x.shape[-2:]
    out = count = None
    for top in _positions(hp, wh, max(1, int(wh * stride))):
        for left in _positions(wp, ww, max(1, int(ww * stride))):
            pred = model(x[..., top:top + wh, left:left + ww])["out"].float()
            if out is None:
                out = pred.new_zeros(pred.shape[0], pred.shape[1], hp, wp)
                count = pred.new_zeros(1, 1, hp, wp)
            out[..., top:top + wh, left:left + ww] += pred
            count[..., top:top + wh, left:left + ww] += 1
    return (out / count)[..., :height, :width]


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict(model: DownstreamModel, image: torch.Tensor, settings: EvalSettings) -> torch.Tensor:
    """(B, 3, H, W) normalised images → depth (B, 1, H, W) or logits (B, K, H, W), float32."""
    size = tuple(image.shape[-2:])
    x = image
    if settings.resize_short:
        scale = settings.resize_short / min(size)
        x = _resize(x, (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))))

    def run(inp: torch.Tensor) -> torch.Tensor:
        if settings.mode == "resize":
            return _resize(model(_resize(inp, settings.input_size))["out"].float(), inp.shape[-2:])
        return _slide(model, inp, settings.input_size, settings.slide_stride)

    out = run(x)
    if settings.flip:
        out = (out + run(x.flip(-1)).flip(-1)) / 2
    return _resize(out, size)


class _Shard(torch.utils.data.Sampler[int]):
    def __init__(self, size: int, rank: int, world: int):
        self.indices = list(range(rank, size, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _groups(items: list[dict]) -> list[list[dict]]:
    """Consecutive items of the same image size (stacked into one forward pass)."""
    groups: list[list[dict]] = []
    for item in items:
        if groups and groups[-1][0]["image"].shape == item["image"].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _all_reduce_sum(array: np.ndarray, env: DistEnv) -> np.ndarray:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(env.device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def evaluate(model: DownstreamModel, dataset, settings: EvalSettings, env: DistEnv,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Metrics of `model` on `dataset` (every rank takes part; all get the same result).
    `progress(batches done, batches)` is called after each of this rank's batches."""
    model = model.to(env.device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, collate_fn=list,
                                         sampler=_Shard(len(dataset), env.rank, env.world_size),
                                         num_workers=settings.num_workers)
    depth, seg = DepthMeter(), ConfusionMatrix(settings.num_classes or 1)
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=env.on_gpu)
    started = time.perf_counter()
    for done, items in enumerate(loader, 1):
        for group in _groups(items):
            image = torch.stack([it["image"] for it in group]).to(env.device)
            with autocast:
                out = predict(model, image, settings)
            if settings.task == "depth":
                pred = out[:, 0].cpu().numpy()
                for p, item in zip(pred, group, strict=True):
                    gt = item["depth"][0].numpy()
                    depth.add(depth_metrics(p, gt, settings.min_depth, settings.max_depth, settings.crop,
                                            settings.dataset))
            else:
                labels = out.argmax(1).cpu().numpy()
                for p, item in zip(labels, group, strict=True):
                    seg.add(p, item["label"].numpy())
        if progress is not None:
            progress(done, len(loader))
    result: dict = {"num_images": len(dataset), "seconds": round(time.perf_counter() - started, 3)}
    if settings.task == "depth":
        meter = DepthMeter.from_state(_all_reduce_sum(depth.state(), env))
        result["metrics"] = meter.result()
        result["images_without_valid_pixels"] = meter.skipped
    else:
        seg.matrix = _all_reduce_sum(seg.matrix, env)
        found = seg.result()
        result["per_class_iou"] = found.pop("per_class_iou")
        result["metrics"] = {k: found[k] for k in ("miou", "pixel_acc", "mean_acc")}
        result["classes_evaluated"] = found["classes_evaluated"]
    return result


def curve_fields(result: dict, task: str) -> dict[str, float]:
    """The val_<metric> fields a metrics.jsonl line carries."""
    return {f"val_{name}": float(result["metrics"][name]) for name in CURVE_METRICS[task]}


def eval_record(result: dict, settings: EvalSettings, parent_chain: list[str], step: int | None,
                class_names: list[str] | None = None) -> dict:
    """The content of eval.json."""
    record = {
        "task": settings.task, "dataset": settings.dataset, "split": settings.split,
        "num_images": result["num_images"], "metrics": result["metrics"],
        "parent_chain": parent_chain, "job_id": job_id(), "step": step,
        "flip": settings.flip, "crop": settings.crop if settings.task == "depth" else None,
        "max_depth": settings.max_depth if settings.task == "depth" else None,
        "options": settings.describe(), "seconds": result["seconds"],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if settings.task == "segmentation":
        iou = result["per_class_iou"]
        names = class_names if class_names and len(class_names) == len(iou) \
            else [str(i) for i in range(len(iou))]
        record["per_class_iou"] = {n: (None if math.isnan(v) else v) for n, v in zip(names, iou, strict=True)}
        record["metrics"] = {k: (None if math.isnan(v) else v) for k, v in record["metrics"].items()}
    else:
        record["images_without_valid_pixels"] = result["images_without_valid_pixels"]
        record["metrics"] = {k: (None if math.isnan(v) else v) for k, v in record["metrics"].items()}
    return record


def class_names(dataset: str) -> list[str] | None:
    if dataset == "synthetic":
        from sgmim.data import CLASS_NAMES

        return list(CLASS_NAMES)
    return None


def load_finetuned(path: Path) -> tuple[DownstreamModel, WeightsFile]:
    """A fine-tuned export → (the model with its weights, the file's header)."""
    found = read_weights(path, FINETUNED)
    meta = found.metadata
    try:
        head = HeadSpec.from_dict(json.loads(meta["head"]))
        model = DownstreamModel(meta["timm_model"], json.loads(meta["timm_kwargs"]), head)
    except (KeyError, TypeError, ValueError) as exc:
        raise InitError(f"init file {path}: its metadata does not describe a model ({type(exc).__name__}: "
                        f"{exc}); expected a finetune job's export/model.safetensors") from None
    try:
        model.load_state_dict(found.load(), strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise InitError(f"init file {path}: weights do not fit the model its metadata describes: "
                        f"{'; '.join(s.strip() for s in lines[:3])}") from None
    return model, found


class EvalProgress:
    """The `evaluate` job's progress in the trainer's files, so the service shows it like a
    training run's: run_info.json gets the total (rank 0's batches) and metrics.jsonl a line
    `{"step": batches done, "images_evaluated": n}` at most every `every_s` seconds and at the
    end; the log says each tenth."""

    def __init__(self, run_dir: Path, num_images: int, world_size: int, every_s: float = 1.0):
        self.run_dir, self.num_images, self.world_size = run_dir, num_images, world_size
        self.metrics = MetricsWriter(run_dir / rundir.METRICS, enabled=True)
        self.every_s, self.last_write, self.total = every_s, 0.0, None

    def __call__(self, done: int, total: int) -> None:
        if self.total is None:
            self.total = total
            atomic_write_json(self.run_dir / rundir.RUN_INFO,
                              {"total_steps": total, "world_size": self.world_size})
        now = time.monotonic()
        if done == total or now - self.last_write >= self.every_s:
            self.last_write = now
            # rank 0's share of its batches stands for the whole split's
            self.metrics.write(done, None, images_evaluated=round(self.num_images * done / total))
        if done == total or done * 10 // total > (done - 1) * 10 // total:
            log.info("evaluated %d/%d batches", done, total)


def run_evaluation(spec: EvaluateJob, run_dir: Path, env: DistEnv) -> dict:
    """The `evaluate` job: load the fine-tuned model, evaluate a split, write eval.json."""
    from sgmim.data import build_downstream_dataset
    from sgmim.train.distributed import barrier, init_distributed

    cfg = spec.config
    path = resolve_init_path(cfg.init, cfg.init_path, spec.parent.job_id if spec.parent else None)
    model, found = load_finetuned(path)
    meta = found.metadata
    chain = found.lineage(spec.parent.job_id if spec.parent else None)   # pretrain → finetune
    data = cfg.data
    if data is None:
        try:
            data = parse_spec(json.loads(meta["sgmim_spec"])).config.data
        except (KeyError, ValueError) as exc:
            raise InitError(f"init file {path} does not record its data section ({exc}); "
                            "set config.data") from None
    if env.world_size > 1:
        init_distributed(env)
    dataset = build_downstream_dataset(data, cfg.split, model.spec.task, train=False)
    settings = EvalSettings.make(cfg.eval, model, data.dataset, cfg.split, data.num_workers)
    log.info("evaluating %s (%s, %s head) on %s/%s: %d images, %d process(es)", path, model.spec.task,
             model.spec.kind, data.dataset, cfg.split, len(dataset), env.world_size)
    progress = EvalProgress(run_dir, len(dataset), env.world_size) if env.is_main else None
    result = evaluate(model, dataset, settings, env, progress)
    step = int(meta["step"]) if meta.get("step", "").isdigit() else None
    record = eval_record(result, settings, chain, step, class_names(data.dataset))
    if env.is_main:
        atomic_write_json(run_dir / rundir.EVAL, record)
        log.info("eval: %s", " ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items() if v is not None))
    barrier()
    return record

