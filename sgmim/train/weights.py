"""Where a fine-tuning or evaluation job's weights come from, checked before any work.

The worker resolves `init: parent` to a file (`config.init_path`); a standalone run names one
with `init: file`. Files are told apart by their safetensors metadata `kind`: `encoder` (a
pretraining export, what fine-tuning starts from) or `finetuned` (a fine-tuning export, what
evaluation loads). A DeepSpeed checkpoint tag folder of a pretraining run also serves as an
encoder (`parent.checkpoint`): its architecture comes from the run's spec.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sgmim import rundir
from sgmim.spec import SpecError

ENCODER, FINETUNED = "encoder", "finetuned"
KIND_WORDS = {
    ENCODER: "an encoder export (a pretraining job's export/encoder.safetensors)",
    FINETUNED: "a fine-tuned model (a finetune job's export/model.safetensors)",
}
PRETRAIN_ENCODER_PREFIX = "encoder.backbone."


class InitError(SpecError):
    """The weights a job starts from are missing, unreadable or of the wrong kind; a bad-input
    error (exit code 2) that names the file."""

    def __init__(self, message: str, path: str = "config.init_path"):
        super().__init__([(path, message)])


def job_id() -> str:
    """This run's job id as the supervisor sets it (empty when run standalone)."""
    return os.environ.get(rundir.ENV_JOB_ID, "")


def lineage_metadata(parent_chain: list[str]) -> dict[str, str]:
    return {"job_id": job_id(), "parent_chain": json.dumps(parent_chain)}


@dataclass
class WeightsFile:
    """An init file's header: what it is and where it comes from; `load()` reads the tensors."""

    path: Path
    kind: str
    timm_name: str | None
    timm_kwargs: dict | None
    metadata: dict[str, str] = field(default_factory=dict)
    checkpoint_dir: bool = False

    @property
    def job_id(self) -> str:
        return self.metadata.get("job_id", "")

    @property
    def parent_chain(self) -> list[str]:
        try:
            chain = json.loads(self.metadata.get("parent_chain", "[]"))
        except json.JSONDecodeError:
            return []
        return [str(c) for c in chain] if isinstance(chain, list) else []

    def lineage(self, fallback_parent: str | None) -> list[str]:
        """The chain of a job started from this file: the file's chain + the file's job."""
        parent = self.job_id or fallback_parent or ""
        return self.parent_chain + ([parent] if parent else [])

    def load(self) -> dict[str, torch.Tensor]:
        if self.checkpoint_dir:
            return _load_checkpoint_dir(self.path)
        from safetensors.torch import load_file

        return load_file(str(self.path))


def resolve_init_path(init: str, init_path: str | None, parent_id: str | None) -> Path:
    if init_path:
        return Path(init_path)
    if init == "parent":
        raise InitError(f"parent job {parent_id or '?'} was not resolved to a file: submit through the "
                        "service, or use init: file with init_path")
    raise InitError("init: file needs init_path")


def inspect_weights(path: Path) -> WeightsFile:
    """The header of a weights file (either kind) or of a pretraining checkpoint folder."""
    if not path.exists():
        raise InitError(f"init file {path} does not exist")
    return _read_checkpoint_dir(path) if path.is_dir() else _read_safetensors(path)


def read_weights(path: Path, expect: str) -> WeightsFile:
    """The header of an init file, checked to be of kind `expect` (encoder or finetuned)."""
    found = inspect_weights(path)
    if found.kind != expect:
        raise InitError(f"init file {path} is {KIND_WORDS.get(found.kind, repr(found.kind))}, but this job "
                        f"needs {KIND_WORDS[expect]}")
    return found


def _read_safetensors(path: Path) -> WeightsFile:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            keys = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise InitError(f"init file {path} is not a safetensors file ({type(exc).__name__}: {exc})") from None
    kind = metadata.get("kind") or (FINETUNED if any(k.startswith("head.") for k in keys) else ENCODER)
    timm_kwargs = None
    if "timm_kwargs" in metadata:
        try:
            timm_kwargs = json.loads(metadata["timm_kwargs"])
        except json.JSONDecodeError:
            raise InitError(f"init file {path}: metadata timm_kwargs is not JSON") from None
    return WeightsFile(path, kind, metadata.get("timm_model"), timm_kwargs, metadata)


def _read_checkpoint_dir(path: Path) -> WeightsFile:
    """A DeepSpeed tag folder `<run>/checkpoints/global_stepN` of a pretraining run."""
    from sgmim.spec import parse_spec

    if not (any(path.glob("*model_states.pt")) or any(path.glob("*optim_states.pt"))):
        raise InitError(f"init path {path} is a folder but not a DeepSpeed checkpoint tag "
                        "(no *_model_states.pt)")
    spec_path = path.parent.parent / rundir.SPEC
    try:
        job = parse_spec(json.loads(spec_path.read_text()))
    except (OSError, json.JSONDecodeError, SpecError) as exc:
        raise InitError(f"checkpoint {path}: cannot read its run's spec {spec_path} ({exc})") from None
    if job.kind != "pretrain":
        kind = FINETUNED if job.kind == "finetune" else job.kind
        return WeightsFile(path, kind, None, None, checkpoint_dir=True)
    encoder = job.config.model.encoder
    return WeightsFile(path, ENCODER, encoder.timm_name, encoder.timm_kwargs(),
                       {"step": path.name.removeprefix("global_step")}, checkpoint_dir=True)


def _load_checkpoint_dir(path: Path) -> dict[str, torch.Tensor]:
    if any(path.glob("*optim_states.pt")) and any(path.glob("zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    else:
        files = sorted(path.glob("*model_states.pt"))
        state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    return {k[len(PRETRAIN_ENCODER_PREFIX):]: v.float() for k, v in state.items()
            if k.startswith(PRETRAIN_ENCODER_PREFIX)}


def adapt_encoder_state(state: dict[str, torch.Tensor], backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Fit pretrained encoder weights to a backbone built for another input or window size:
    ViT position embeddings and patch embeddings resampled, Swin and BEiT relative position
    tables resized (timm's own converters), non-persistent buffers dropped."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed
    from timm.models import beit, swin_transformer, swin_transformer_v2
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(backbone, beit.Beit):   # resizes the (shared) relative position bias tables
        return beit.checkpoint_filter_fn(state, backbone)
    if isinstance(backbone, swin_transformer_v2.SwinTransformerV2):
        return swin_transformer_v2.checkpoint_filter_fn(state, backbone)
    if isinstance(backbone, swin_transformer.SwinTransformer):
        return swin_transformer.checkpoint_filter_fn(state, backbone)
    assert isinstance(backbone, VisionTransformer)
    out = dict(state)
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != backbone.pos_embed.shape:
        prefix = 0 if getattr(backbone, "no_embed_class", False) else backbone.num_prefix_tokens
        out["pos_embed"] = resample_abs_pos_embed(pos, list(backbone.patch_embed.grid_size),
                                                  num_prefix_tokens=prefix)
    proj = out.get("patch_embed.proj.weight")
    target = backbone.patch_embed.proj.weight
    if proj is not None and proj.shape[-2:] != target.shape[-2:]:
        out["patch_embed.proj.weight"] = resample_patch_embed(proj, list(target.shape[-2:]))
    return out


def load_encoder(backbone: torch.nn.Module, state: dict[str, torch.Tensor], path: Path,
                 describe: str) -> None:
    """Load encoder weights strictly (after adapting sizes); a mismatch is an InitError naming
    `path` and the architecture `describe`."""
    try:
        state = adapt_encoder_state(state, backbone)
        result = backbone.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
        raise InitError(f"init file {path} does not fit the encoder {describe}: {detail}") from None
    missing = [k for k in result.missing_keys if "relative_position_index" not in k]
    if missing or result.unexpected_keys:
        raise InitError(f"init file {path} does not fit the encoder {describe}: "
                        f"{len(missing)} missing tensors (e.g. {missing[:3]}), "
                        f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})")
