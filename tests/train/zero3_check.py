"""Run by test_zero3_consolidated_weights_equal_the_live_model under torchrun: train a few
ZeRO-3 steps through the real trainer, then compare the weights consolidated from the saved
checkpoint with the live (partitioned) parameters gathered from every rank."""

import sys
from pathlib import Path

import deepspeed
import torch

from sgmim.rundir import tag_for
from sgmim.spec import load_spec
from sgmim.train.checkpoint import consolidated_state_dict
from sgmim.train.distributed import init_distributed, read_env
from sgmim.train.run import make_task, setup_logging
from sgmim.train.trainer import Trainer


def main() -> None:
    spec, run_dir = load_spec(sys.argv[1]), Path(sys.argv[3])
    run_dir.mkdir(parents=True, exist_ok=True)
    env = read_env()
    setup_logging(run_dir, env)
    init_distributed(env)
    trainer = Trainer(make_task(spec, env), env, run_dir)
    trainer.setup()
    trainer.fit()
    step = trainer.plan.total_steps
    params = list(trainer.engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params]):
        live = {n: p.detach().clone().cpu() for n, p in params}
    if env.is_main:
        saved = consolidated_state_dict(trainer.engine, trainer.ckpt_dir, tag_for(step))
        same = set(saved) >= set(live) and all(torch.equal(saved[n], live[n]) for n in live)
        print(f"consolidated == live: {same} ({len(live)} tensors)", flush=True)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
