"""DeepSpeed checkpoints in `<run_dir>/checkpoints/` (tags `global_stepN` + `latest`), pruning,
resume across process counts, and atomic safetensors export."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sgmim.rundir import LATEST, TAG_PATTERN, WHOLE_TAG_RECORD, atomic_write_text

log = logging.getLogger("sgmim.train")

class ResumeError(RuntimeError):
    pass


def latest_tag(ckpt_dir: Path) -> str | None:
    """The newest whole checkpoint. DeepSpeed's rank 0 writes `latest` once its own files are
    written, not the other ranks': a run killed mid-save (a node lost) can leave `latest` naming
    a tag whose other shards are cut short. The trainer records a tag's ZeRO stage after every
    rank has saved it (`Trainer.save`), so the newest recorded tag is whole. A `latest` with no
    recorded tag at all is a checkpoint from before the record, taken as it is."""
    latest = ckpt_dir / LATEST
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    if not (ckpt_dir / tag).is_dir():
        raise ResumeError(f"{latest} names {tag!r}, but {ckpt_dir / tag} does not exist")
    if (ckpt_dir / tag / WHOLE_TAG_RECORD).is_file():
        return tag
    recorded = sorted((int(m.group(1)), path.name) for path in ckpt_dir.iterdir()
                      if (m := TAG_PATTERN.match(path.name)) and (path / WHOLE_TAG_RECORD).is_file())
    if not recorded:
        return tag
    log.warning("checkpoint %s was not finished by every rank; using %s", tag, recorded[-1][1])
    return recorded[-1][1]


def saved_world_size(tag_dir: Path) -> int | None:
    """Data-parallel size a ZeRO checkpoint was written with (None: ZeRO-0, any size loads it)."""
    return len(list(tag_dir.glob("*zero_pp_rank_*_optim_states.pt"))) or None




def record_zero_stage(tag_dir: Path, stage: int) -> None:
    atomic_write_json(tag_dir / WHOLE_TAG_RECORD, {"zero_stage": stage})


def saved_zero_stage(tag_dir: Path) -> int:
    """The ZeRO stage a checkpoint was written with: recorded by the trainer; for a checkpoint
    from before the record, 0 when it has no ZeRO partition files, else 2 (stages 1 and 2 share
    a format)."""
    record = tag_dir / WHOLE_TAG_RECORD
    if record.is_file():
        return int(json.loads(record.read_text())["zero_stage"])
    if list(tag_dir.glob("zero_pp_rank_*_model_states.pt")):  # ZeRO-3 partitions the weights
        return 3
    if list(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        return 2
    return 0


def stages_compatible(saved: int, requested: int) -> bool:
    """Whether DeepSpeed loads a stage-`saved` checkpoint into a stage-`requested` engine with
    its optimiser state (stage 0 keeps it whole, 1 and 2 partition it alike, 3 also the weights;
    a stage-0 checkpoint in a ZeRO engine would silently start the optimiser afresh)."""
    return saved == requested or {saved, requested} == {1, 2}


def to_universal(ckpt_dir: Path, tag: str, zero_stage: int) -> str:
    """Convert a ZeRO checkpoint with DeepSpeed's `ds_to_universal` (run once, by rank 0)."""
    universal = f"{tag}_universal"
    out = ckpt_dir / universal
    if (out / "zero").is_dir():
        return universal
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
           "--input_folder", str(ckpt_dir / tag), "--output_folder", str(out)]
    if zero_stage < 3:
        cmd.append("--inject_missing_state")
    log.info("converting checkpoint %s to a universal checkpoint for a new process count", tag)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ResumeError(f"cannot convert checkpoint {ckpt_dir / tag} to a universal checkpoint "
                          f"for the new process count:\n{tail}")
    return universal


def prune(ckpt_dir: Path, keep: int) -> None:
    """Keep the newest `keep` tags (and never the one `latest` names); rank 0 only."""
    current = latest_tag(ckpt_dir)
    tags = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir()
                  if p.is_dir() and (m := TAG_PATTERN.match(p.name)))
    for _, path in tags[:-keep]:
        if path.name != current:
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(ckpt_dir / f"{path.name}_universal", ignore_errors=True)


def consolidated_state_dict(engine, ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights. ZeRO 0–2 keep whole fp32 weights in the module on every rank (autocast
    never casts them); ZeRO-3 partitions them, so they are rebuilt from the saved checkpoint."""
    if engine.zero_optimization_stage() < 3:
        return {k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
