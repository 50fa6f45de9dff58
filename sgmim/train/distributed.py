"""Process-group set-up from the environment: the launcher (torchrun, `deepspeed`, or the worker's
multi-node launch) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a bare
single process gets defaults. No `--local_rank` argument is ever required."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from sgmim.train.launch import free_port


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def read_env() -> DistEnv:
    """Ranks from the environment, with single-process defaults written back for DeepSpeed
    (which otherwise falls back to mpi4py discovery)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, device)


def init_distributed(env: DistEnv) -> None:
    """NCCL on GPU, gloo on CPU. On CPU DeepSpeed would JIT-compile its shared-memory
    all-reduce (about 3 minutes on first use); gloo alone is enough for CPU runs, so the op
    is marked unavailable before DeepSpeed builds its communication backend."""
    import deepspeed
    import deepspeed.ops

    if not env.on_gpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if env.on_gpu else "gloo",
                               auto_mpi_discovery=False)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a 1-D tensor (no-op with one process)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        values = values.clone()
        torch.distributed.all_reduce(values)
        values /= torch.distributed.get_world_size()
    return values
