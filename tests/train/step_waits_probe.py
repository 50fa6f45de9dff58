"""Run by test_step_waits.py: train a spec through the real trainer in this process and record,
inside `Trainer.train_step` only, every call that makes the host wait for the device on a GPU.

On the CPU nothing waits, so the probe records the calls that would: reads of tensor values on
the host (item, tolist, bool/float/int, numpy, cpu), tensors made from host values (each a copy
that waits for the work queued before it), data-dependent shapes (nonzero, boolean indexing),
and DeepSpeed's explicit device synchronisations. It also counts the DataLoader passes over
the training data during `Trainer.fit` (each pass restarts the workers' prefetching). Prints one
JSON line per spec.

    python tests/train/step_waits_probe.py RUNS_DIR SPEC [SPEC ...]
"""

import collections
import json
import sys
import traceback
from pathlib import Path

import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.runtime.engine import DeepSpeedEngine
from torch.utils.data import DataLoader

from sgmim.spec import load_spec
from sgmim.train import trainer as trainer_module
from sgmim.train.run import run

HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu}
FROM_HOST = {torch.tensor, torch.as_tensor}
DATA_DEPENDENT = {torch.nonzero, torch.Tensor.nonzero, torch.masked_select,
                  torch.Tensor.masked_select, torch.unique, torch.Tensor.unique}

waits: collections.Counter = collections.Counter()
steps = 0
allreduces = 0  # DeepSpeed's gradient all-reduce outside ZeRO
loader_passes = 0
fitting: list = []  # the Trainer inside fit()


def caller() -> str:
    """The innermost frame outside torch's own Python code: who asked."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/torch/" not in frame.filename:
            return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
    return "torch"


def is_boolean_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple) else (index,)
    return any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts)


class WaitRecorder(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (func in HOST_READS or func in FROM_HOST or func in DATA_DEPENDENT
                or (func is torch.Tensor.__getitem__ and is_boolean_index(args))):
            waits[f"{getattr(func, '__name__', func)} from {caller()}"] += 1
        return func(*args, **(kwargs or {}))


def record_synchronize() -> None:
    accelerator = get_accelerator()
    synchronize = accelerator.synchronize

    def counted(*args, **kwargs):
        waits[f"accelerator.synchronize from {caller()}"] += 1
        return synchronize(*args, **kwargs)

    accelerator.synchronize = counted


def record_train_step() -> None:
    train_step = trainer_module.Trainer.train_step

    def recorded(self, batch, step):
        global steps
        steps += 1
        with WaitRecorder():
            return train_step(self, batch, step)

    trainer_module.Trainer.train_step = recorded


def count_loader_passes() -> None:
    fit, iterate = trainer_module.Trainer.fit, DataLoader.__iter__

    def fitting_trainer(self):
        fitting.append(self)
        try:
            return fit(self)
        finally:
            fitting.pop()

    def counted(self):
        global loader_passes
        if fitting and self.dataset is fitting[-1].dataset:
            loader_passes += 1
        return iterate(self)

    trainer_module.Trainer.fit = fitting_trainer
    DataLoader.__iter__ = counted


def count_allreduce() -> None:
    fallback = DeepSpeedEngine.buffered_allreduce_fallback

    def counted(self, *args, **kwargs):
        global allreduces
        allreduces += 1
        return fallback(self, *args, **kwargs)

    DeepSpeedEngine.buffered_allreduce_fallback = counted


def main() -> None:
    global steps, allreduces, loader_passes
    runs = Path(sys.argv[1])
    record_synchronize()
    record_train_step()
    count_allreduce()
    count_loader_passes()
    for spec_path in map(Path, sys.argv[2:]):
        waits.clear()
        steps = allreduces = loader_passes = 0
        code = run(load_spec(spec_path), runs / spec_path.stem)
        print(json.dumps({"spec": spec_path.name, "exit": int(code), "steps": steps,
                          "allreduces": allreduces, "loader_passes": loader_passes,
                          "waits": dict(waits)}), flush=True)


if __name__ == "__main__":
    main()
