"""The training loop every job runs: DeepSpeed engine, metrics, checkpoints, resume, export.

The same code runs on a laptop CPU (gloo, fp32) and on GPUs (NCCL, bf16 autocast), in one
process or many; ranks come from the environment.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sgmim import rundir
from sgmim.rundir import tag_for
from sgmim.train.checkpoint import (
    ResumeError,
    atomic_write_json,
    consolidated_state_dict,
    latest_tag,
    prune,
    record_zero_stage,
    saved_world_size,
    saved_zero_stage,
    stages_compatible,
    to_universal,
)
from sgmim.train.compile import compile_regions, mark_step, uses_cuda_graphs
from sgmim.train.distributed import DistEnv, all_reduce_mean, barrier
from sgmim.train.ds_config import build_ds_config, resolve_precision, trainer_clips
from sgmim.train.metrics import MetricsWriter, WindowMeter
from sgmim.train.optim import LRSchedule, ScheduledLR
from sgmim.train.sampler import RunSampler
from sgmim.train.task import TrainTask

log = logging.getLogger("sgmim.train")


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, what: str = "the loss"):
        self.step = step
        super().__init__(f"{what} is not finite at step {step}; the run stopped without saving "
                         "this step (lower the learning rate or check the data)")


class DataTooSmall(ValueError):
    pass


@dataclass(frozen=True)
class Plan:
    """How the run is cut: derived from the dataset size and the spec."""

    steps_per_epoch: int
    total_steps: int
    samples_per_step: int   # per rank: micro-batch × accumulation
    total_batch: int        # all ranks

    @classmethod
    def make(cls, task: TrainTask, num_samples: int, world_size: int) -> Plan:
        sch = task.schedule
        per_rank_step = sch.batch_size * sch.accumulation
        steps_per_epoch = (num_samples // world_size) // per_rank_step
        if steps_per_epoch < 1:
            raise DataTooSmall(f"the dataset has {num_samples} samples, fewer than one optimiser "
                               f"step needs ({per_rank_step * world_size}: batch_size "
                               f"{sch.batch_size} × accumulation {sch.accumulation} × "
                               f"{world_size} processes)")
        total = sch.steps if sch.steps is not None else math.ceil(sch.epochs * steps_per_epoch)
        return cls(steps_per_epoch, total, per_rank_step, per_rank_step * world_size)


def norm_and_clip(params: list[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The 2-norm of all gradients before clipping; with `max_norm`, the gradients scaled in
    place by max_norm / (norm + 1e-6) where that is below 1 (torch's and DeepSpeed's rule).
    A few fused kernels on the gradients' device, and nothing read back to the host."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads)
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    def __init__(self, task: TrainTask, env: DistEnv, run_dir: Path):
        self.task, self.env, self.run_dir = task, env, run_dir
        self.ckpt_dir = run_dir / rundir.CHECKPOINTS
        self.metrics = MetricsWriter(run_dir / rundir.METRICS, enabled=env.is_main)

    def setup(self) -> None:
        import deepspeed

        task, env = self.task, self.env
        torch.manual_seed(task.schedule.seed + env.rank)
        model = task.build_model()
        self.dataset = task.build_dataset(model)
        self.plan = Plan.make(task, len(self.dataset), env.world_size)
        self.lr = LRSchedule.from_config(task.optim, self.plan.total_batch,
                                         self.plan.steps_per_epoch, self.plan.total_steps)
        optimizer = torch.optim.AdamW(task.param_groups(model), lr=self.lr.peak_lr,
                                      betas=task.optim.betas, eps=task.optim.eps, fused=True)
        scheduler = ScheduledLR(optimizer, self.lr)
        self.zero_stage = self._zero_stage()
        resume_tag, universal = self._resume_tag()
        ds_config = build_ds_config(task.deepspeed, task.schedule, task.optim.clip_grad, env,
                                    load_universal=universal, zero_stage=self.zero_stage)
        if env.is_main:
            atomic_write_json(self.run_dir / rundir.DS_CONFIG, ds_config)
        compiled = task.deepspeed.resolved_compile(env.on_gpu) and task.deepspeed.compile_scope
        if compiled == "blocks" and self.zero_stage == 3:
            # ZeRO-3 gathers each block's weights in module hooks, which a compiled block
            # would trace; DeepSpeed's own engine.compile knows them
            log.info("torch.compile: ZeRO-3 compiles the whole model (engine.compile)")
            compiled = "model"
        mode = task.deepspeed.compile_mode
        if compiled == "blocks":
            log.info("torch.compile (mode %s): %d regions (blocks and the glue between them), "
                     "each compiled on its own", mode, compile_regions(model, mode=mode))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                    lr_scheduler=scheduler, config=ds_config)
        if compiled == "model":
            self.engine.compile(compile_kwargs={"mode": mode})
        self.compiled = compiled
        if compiled:
            log.info("torch.compile works during the first step: minutes with a cold cache, "
                     "seconds with a warm one (cache: %s)", os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
        self.cuda_graphs = bool(compiled) and uses_cuda_graphs(mode, env.on_gpu)
        if env.world_size == 1 and self.zero_stage == 0:
            # One process has nothing to reduce, yet DeepSpeed would copy every gradient into a
            # flat buffer, "all-reduce" it alone and copy it back, each step.
            self.engine.enable_backward_allreduce = False
        precision = resolve_precision(task.deepspeed.precision, env.on_gpu)
        self.clip_grad = task.optim.clip_grad if trainer_clips(self.zero_stage, precision) else None
        self.meter = WindowMeter(env.device)
        self.start_step = 0
        if resume_tag:
            path, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=resume_tag)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {self.ckpt_dir / resume_tag}")
            self.start_step = int(client["step"])
            log.info("resumed from %s at step %d (lr %.3g)", resume_tag, self.start_step,
                     self.lr(self.start_step))
        self.loss_scaled = ds_config["torch_autocast"]["dtype"] == "float16"
        if env.is_main:
            atomic_write_json(self.run_dir / rundir.RUN_INFO, {
                "total_steps": self.plan.total_steps, "steps_per_epoch": self.plan.steps_per_epoch,
                "total_batch": self.plan.total_batch, "world_size": env.world_size,
                "dataset_size": len(self.dataset), "peak_lr": self.lr.peak_lr,
                "device": env.device.type, "zero_stage": self.zero_stage,
                "compile": compiled, "compile_mode": mode if compiled else None,
                "precision": ds_config["torch_autocast"]["dtype"], "start_step": self.start_step,
            })

    def _zero_stage(self) -> int:
        """The spec's stage; with `auto` a resumed run keeps its checkpoint's stage, so the
        optimiser state always loads (stage 0 keeps it whole, loadable on any process count;
        2 converts to a universal checkpoint for another count)."""
        ds = self.task.deepspeed
        fresh = ds.resolved_zero_stage(self.env.world_size)
        tag = latest_tag(self.ckpt_dir)
        if tag is None:
            return fresh
        saved = saved_zero_stage(self.ckpt_dir / tag)
        if ds.zero_stage == "auto":
            if saved != fresh:
                log.info("zero_stage auto: checkpoint %s was written with ZeRO-%d; keeping it "
                         "(a fresh run on %d processes would use %d)", tag, saved,
                         self.env.world_size, fresh)
            return saved
        if not stages_compatible(saved, fresh):
            raise ResumeError(f"checkpoint {self.ckpt_dir / tag} was written with ZeRO stage "
                              f"{saved}; this spec asks for stage {fresh}, which cannot load its "
                              f"optimiser state: set deepspeed.zero_stage to {saved} or auto")
        return fresh

    def _resume_tag(self) -> tuple[str | None, bool]:
        """The tag to resume from and whether it must load as a universal checkpoint."""
        tag = latest_tag(self.ckpt_dir)
        if tag is None:
            return None, False
        saved = saved_world_size(self.ckpt_dir / tag)
        if saved is None or saved == self.env.world_size:
            return tag, False
        log.info("checkpoint %s was written by %d processes; this run has %d", tag, saved,
                 self.env.world_size)
        if self.env.is_main:
            to_universal(self.ckpt_dir, tag, self.zero_stage)
        barrier()
        return f"{tag}_universal", True

    def _loader(self) -> DataLoader:
        """One DataLoader pass for the rest of the run: the sampler's `(epoch, index)` keys carry
        each item's epoch, so no epoch starts with the workers' prefetching restarted."""
        plan = self.plan
        sampler = RunSampler(len(self.dataset), self.env.rank, self.env.world_size,
                             self.task.schedule.seed, plan.steps_per_epoch, plan.samples_per_step,
                             self.start_step, plan.total_steps)
        return DataLoader(self.dataset, batch_size=self.task.schedule.batch_size, sampler=sampler,
                          num_workers=self.task.data_workers, drop_last=True,
                          pin_memory=self.env.on_gpu)

    def fit(self) -> None:
        plan, sch = self.plan, self.task.schedule
        step = self.start_step
        before = getattr(self.task, "before_training", None)  # optional: e.g. a step-0 evaluation
        if before is not None and step == 0:
            before(self.engine, self.metrics)
        meter = self.meter
        epoch_start = time.perf_counter()
        first_step_s = 0.0 if self.compiled else None  # the micro-batches' host time, no loading
        for batch in self._loader():
            started = time.perf_counter()
            stepped = self.train_step(batch, step)
            if first_step_s is not None:
                first_step_s += time.perf_counter() - started
            if not stepped:
                continue
            step += 1
            if first_step_s is not None:
                # host time, no wait for the device: compiling happens on the host
                log.info("first step done in %.1f s, torch.compile included", first_step_s)
                first_step_s = None
            if self._logs_at(step):
                self._log(meter, step, plan.total_batch)
            if sch.checkpoint_every and step % sch.checkpoint_every == 0:
                self._check_finite(meter)
                self.save(step)
            if step % plan.steps_per_epoch == 0:
                self._check_finite(meter)
                elapsed = time.perf_counter() - epoch_start
                self.metrics.write(step, step / plan.steps_per_epoch, epoch_time=elapsed)
                log.info("epoch %d done in %.1f s", step // plan.steps_per_epoch, elapsed)
                epoch_start = time.perf_counter()
        self._check_finite(meter)
        if latest_tag(self.ckpt_dir) != tag_for(step):
            self.save(step)
        self.finish(step)

    def train_step(self, batch: dict, step: int) -> bool:
        """One micro-batch of optimiser step `step + 1`: forward, backward and, at the end of
        the accumulation, the update. Nothing here waits for the device (no host reads, no
        host-made tensors): the values stay in the meter until a log line reads them, so the
        host runs ahead and the GPU never idles between steps. True when the optimiser stepped."""
        engine = self.engine
        if self.cuda_graphs:
            mark_step()
        boundary = engine.is_gradient_accumulation_boundary()
        named = self.task.forward(engine, _to_device(batch, self.env.device))
        self.meter.add(named, step + 1)
        engine.backward(named["loss"])
        if boundary and self.zero_stage == 0:
            self._norm_and_clip(step + 1)
        skipped = engine.skipped_steps
        engine.step()
        if boundary and engine.skipped_steps > skipped and not self.loss_scaled:
            # DeepSpeed skips an update whose gradients overflowed; without fp16 loss
            # scaling that is divergence, not a scale to lower
            raise NonFiniteLoss(step + 1, "the gradient")
        return boundary

    def _norm_and_clip(self, step: int) -> None:
        """ZeRO finds non-finite gradients and reports the norm it clipped with; stage 0 does
        neither, so the trainer takes the norm (logged at log steps; a non-finite one stops the
        run before the next checkpoint, as a non-finite loss does) and clips with it. DeepSpeed's
        own stage-0 clipping makes two tensors from host values per step, and each of those
        copies waits for the device to finish all the work queued before it."""
        self.grad_norm = norm_and_clip(list(self.engine.module.parameters()), self.clip_grad)
        self.meter.watch(self.grad_norm, step)

    def _logs_at(self, step: int) -> bool:
        return step % self.task.schedule.log_every == 0 or step == self.plan.total_steps

    def _check_finite(self, meter: WindowMeter) -> None:
        bad = meter.first_nonfinite_step()
        if bad is not None:
            raise NonFiniteLoss(bad)

    def _log(self, meter: WindowMeter, step: int, total_batch: int) -> None:
        self._check_finite(meter)
        names, values = meter.means()
        values = all_reduce_mean(values).tolist()
        window_steps, seconds = meter.reset()
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm = getattr(self, "grad_norm", None)
        fields = dict(zip(names, values, strict=True))
        fields["lr"] = self.engine.get_lr()[0] / self.engine.optimizer.param_groups[0].get("lr_scale", 1.0)
        if grad_norm is not None:
            fields["grad_norm"] = float(grad_norm)
        fields["images_per_s"] = window_steps * total_batch / max(seconds, 1e-9)
        if self.env.on_gpu:
            fields["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        self.metrics.write(step, step / self.plan.steps_per_epoch, **fields)
        log.info("step %d/%d %s", step, self.plan.total_steps,
                 " ".join(f"{k} {v:.4g}" for k, v in fields.items()))

    def save(self, step: int) -> None:
        epoch = step / self.plan.steps_per_epoch
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag_for(step),
                                    client_state={"step": step, "epoch": epoch})
        barrier()
        if self.env.is_main:
            record_zero_stage(self.ckpt_dir / tag_for(step), self.zero_stage)
            prune(self.ckpt_dir, self.task.schedule.keep_checkpoints)
        log.info("checkpoint %s saved", tag_for(step))

    def finish(self, step: int) -> None:
        state = None
        if self.env.is_main or self.engine.zero_optimization_stage() < 3:
            state = consolidated_state_dict(self.engine, self.ckpt_dir, tag_for(step))
        if self.env.is_main:
            self.task.export(state, self.run_dir, step)
            log.info("exported to %s", self.run_dir / rundir.EXPORT_DIR)
        barrier()
        self.task.after_training(self.engine, self.run_dir)


def read_metrics(path: Path) -> list[dict]:
    """All lines of a metrics.jsonl (tests, plots)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
