"""The per-rank entry point (`python -m sgmim.train SPEC --run-dir DIR`): what every launcher runs.

Exit codes: `sgmim.rundir.TrainerExit`. The reason is the last line of `train.log`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sgmim import rundir
from sgmim.caches import use_cache_root
from sgmim.rundir import TrainerExit, atomic_write_text
from sgmim.spec import AnyJob, SpecError, load_spec
from sgmim.train.distributed import DistEnv, init_distributed, read_env

log = logging.getLogger("sgmim.train")



def setup_logging(run_dir: Path, env: DistEnv) -> None:
    """Every rank appends to `train.log` (one line per record, so ranks interleave by line);
    rank 0 also prints to stdout unless `rundir.ENV_LOG_TO_STDOUT` is 0 (the worker's supervisor sends
    the launcher's stdout into train.log itself, and would get every line twice)."""
    fmt = logging.Formatter(f"%(asctime)s [rank {env.rank}] %(levelname)s %(message)s",
                            "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / rundir.TRAIN_LOG)]
    if env.is_main and os.environ.get(rundir.ENV_LOG_TO_STDOUT, "1") != "0":
        handlers.append(logging.StreamHandler(sys.stdout))
    root = logging.getLogger("sgmim")  # the trainer's and the data layer's records
    root.handlers.clear()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def make_task(spec: AnyJob, env: DistEnv):
    if spec.kind == "pretrain":
        from sgmim.train.pretrain import PretrainTask

        return PretrainTask(spec, env)
    if spec.kind == "finetune":
        from sgmim.train.finetune import FinetuneTask

        return FinetuneTask(spec, env)
    raise ValueError(f"job kind {spec.kind!r} does not train")


def run(spec: AnyJob, run_dir: Path) -> TrainerExit:
    from sgmim.data import DataError
    from sgmim.train.checkpoint import ResumeError
    from sgmim.train.ds_config import PrecisionError
    from sgmim.train.trainer import DataTooSmall, NonFiniteLoss, Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    use_cache_root(run_dir)  # compiled kernels and rendered scenes outlive the run
    env = read_env()
    setup_logging(run_dir, env)
    if env.is_main and not (run_dir / rundir.SPEC).exists():
        atomic_write_text(run_dir / rundir.SPEC, spec.model_dump_json(indent=2))
    try:
        if spec.kind == "evaluate":
            from sgmim.train.evaluate import run_evaluation

            run_evaluation(spec, run_dir, env)
            return TrainerExit.OK
        init_distributed(env)
        log.info("%s job %r on %s, %d process(es)", spec.kind, spec.name, env.device, env.world_size)
        trainer = Trainer(make_task(spec, env), env, run_dir)
        trainer.setup()
        trainer.fit()
    except NonFiniteLoss as exc:
        log.error("%s", exc)
        return TrainerExit.NONFINITE
    except (DataTooSmall, DataError, PrecisionError, ResumeError, SpecError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return TrainerExit.BAD_INPUT
    except Exception:
        log.exception("training failed")
        return TrainerExit.ERROR
    log.info("done")
    return TrainerExit.OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgmim.train", description=__doc__)
    parser.add_argument("spec", type=Path, help="job spec (YAML or JSON)")
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"invalid job spec {args.spec}: {exc}", file=sys.stderr)
        return TrainerExit.BAD_INPUT
    code = run(spec, args.run_dir)
    _shutdown(succeeded=code == TrainerExit.OK)
    return code


def _shutdown(succeeded: bool) -> None:
    """Leave the process group. After a success every rank meets the others first: a rank
    that tore down its gloo pairs while a peer was still finishing (rank 0 writes the export
    and eval.json alone) now and then died at exit with SIGABRT ("terminate called without an
    active exception"). After a failure the peers may never arrive, so no waiting then."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if succeeded:
            dist.barrier()
        dist.destroy_process_group()
