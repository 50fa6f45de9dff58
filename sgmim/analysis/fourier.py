"""Relative log amplitude of Fourier-transformed feature maps (paper Figure 3; the method of
Park & Kim, "How do vision transformers work?", ICLR 2022).

For each stage's feature map (B, C, h, w): 2-D FFT per channel, log amplitude log(|F| + 1e-6),
averaged over images and channels, read along the half diagonal from frequency 0 to π
(k = 0 … K, K = min(h, w) // 2, at index (k·h / 2K, k·w / 2K) of the unshifted spectrum), and
taken relative to frequency 0: Δ log amplitude(k) = A(k) − A(0). Higher (less negative) curves
at high frequency mean feature maps with more high-frequency content (edges, texture).

Stages: the four Swin/SwinV2 stages (before the final norm), or four evenly spaced ViT blocks
(patch tokens only). Encoders are read from their safetensors metadata: a pretraining export
(`encoder.safetensors`) or a fine-tuned model (`model.safetensors`, its `backbone.*` weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgmim.figures import png_panels


class AnalysisError(ValueError):
    """Bad input to an analysis (a file that is not an encoder, an empty image folder)."""


@dataclass
class LoadedEncoder:
    path: Path
    label: str
    timm_name: str
    kind: str
    backbone: torch.nn.Module

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.backbone.patch_embed.img_size)


def load_encoder(path: Path, label: str | None = None) -> LoadedEncoder:
    """A timm backbone with the weights of an encoder export or of a fine-tuned model."""
    from sgmim.models.downstream import create_backbone
    from sgmim.train.weights import FINETUNED, InitError, inspect_weights

    try:
        found = inspect_weights(path)
    except InitError as exc:
        raise AnalysisError(str(exc).removeprefix("config.init_path: ").removeprefix("init file ")) from None
    if found.timm_name is None or found.timm_kwargs is None:
        raise AnalysisError(f"{path} has no timm_model/timm_kwargs metadata: not an sgmim export")
    state = found.load()
    if found.kind == FINETUNED:
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    backbone = create_backbone(found.timm_name, found.timm_kwargs)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AnalysisError(f"{path}: weights do not fit {found.timm_name} "
                            f"({str(exc).splitlines()[0]})") from None
    backbone.eval()
    run_name = path.parent.parent.name if path.parent.name == "export" else path.stem
    return LoadedEncoder(path, label or found.metadata.get("job_id") or run_name, found.timm_name,
                         found.kind, backbone)


def stage_features(backbone: torch.nn.Module, images: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, (B, C, h, w)) for each Swin stage or four evenly spaced ViT blocks."""
    from sgmim.models.downstream import default_vit_taps
    from sgmim.models.encoder import VIT_BACKBONES

    with torch.no_grad():
        if isinstance(backbone, VIT_BACKBONES):
            taps = sorted(set(default_vit_taps(len(backbone.blocks))))
            feats = backbone.forward_intermediates(images, indices=taps, intermediates_only=True)
            return [(f"block {i + 1}", f) for i, f in zip(taps, feats, strict=True)]
        feats = backbone.forward_intermediates(images, intermediates_only=True)
        return [(f"stage {i + 1}", f) for i, f in enumerate(feats)]


def log_amplitude(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → mean log amplitude of the per-channel 2-D spectrum, (h, w), unshifted."""
    spectrum = torch.fft.fft2(features.float())
    return torch.log(spectrum.abs() + 1e-6).mean(dim=(0, 1))


def half_diagonal(amplitude: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Normalised frequencies k/K (× π) and A(k) − A(0) along the half diagonal, k = 0 … K."""
    h, w = amplitude.shape
    steps = max(min(h, w) // 2, 1) if min(h, w) > 1 else 0
    if steps == 0:
        return np.zeros(1), np.zeros(1)
    values = np.array([float(amplitude[round(k * h / (2 * steps)) % h, round(k * w / (2 * steps)) % w])
                       for k in range(steps + 1)])
    return np.arange(steps + 1) / steps, values - values[0]


def analysis_images(data: str, count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(N, 3, H, W) ImageNet-normalised images: synthetic validation scenes, or the first
    `count` images (sorted by path) of a folder, resized (shorter side) and centre-cropped."""
    from sgmim.data import build_downstream_dataset
    from sgmim.data.transforms import image_to_tensor, normalize
    from sgmim.spec import DownstreamDataConfig

    if data == "synthetic":
        cfg = DownstreamDataConfig(num_images=count, seed=seed, num_workers=0,
                                   synthetic={"render_size": list(size), "cache_mb": 0})
        dataset = build_downstream_dataset(cfg, "val", "segmentation", train=False)
        return torch.stack([dataset[i]["image"] for i in range(count)])
    from sgmim.data.io import read_rgb

    root = Path(data)
    if not root.is_dir():
        raise AnalysisError(f"--data {data}: expected 'synthetic' or a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:count]
    if not files:
        raise AnalysisError(f"{root}: no .png/.jpg images found")
    images = []
    for path in files:
        x = image_to_tensor(read_rgb(path))[None]
        scale = max(size[0] / x.shape[-2], size[1] / x.shape[-1])
        target = (max(size[0], round(x.shape[-2] * scale)), max(size[1], round(x.shape[-1] * scale)))
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)[0]
        top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
        images.append(normalize(x[:, top:top + size[0], left:left + size[1]].clamp(0, 1)))
    return torch.stack(images)


def fourier_analysis(paths: list[Path], data: str = "synthetic", num_images: int = 16,
                     labels: list[str] | None = None, batch_size: int = 8, seed: int = 0) -> dict:
    """Δ log-amplitude curves of every stage of every encoder (same images for all)."""
    if labels and len(labels) != len(paths):
        raise AnalysisError(f"{len(labels)} labels for {len(paths)} encoders")
    encoders = [load_encoder(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    base = analysis_images(data, num_images, encoders[0].input_size, seed)
    result = {"data": data, "num_images": int(base.shape[0]), "frequency_unit": "pi",
              "method": "mean over images and channels of log|FFT2|, half diagonal, minus frequency 0",
              "encoders": []}
    for enc in encoders:
        images = base if tuple(base.shape[-2:]) == enc.input_size else \
            F.interpolate(base, size=enc.input_size, mode="bilinear", align_corners=False)
        sums: dict[str, torch.Tensor] = {}
        shapes: dict[str, list[int]] = {}
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start:start + batch_size]
            for name, feat in stage_features(enc.backbone, chunk):
                sums[name] = sums.get(name, 0) + log_amplitude(feat) * chunk.shape[0]
                shapes[name] = list(feat.shape[1:])
        stages = []
        for name, total in sums.items():
            freq, curve = half_diagonal(total / images.shape[0])
            stages.append({"name": name, "shape": shapes[name], "frequency": freq.round(6).tolist(),
                           "delta_log_amplitude": curve.round(6).tolist()})
        result["encoders"].append({"path": str(enc.path), "label": enc.label, "timm_model": enc.timm_name,
                                   "kind": enc.kind, "input_size": list(enc.input_size), "stages": stages})
    return result


def plot_fourier(result: dict, path: Path) -> None:
    """One panel per stage, one line per encoder."""
    names = [s["name"] for s in result["encoders"][0]["stages"]]
    with png_panels(path, len(names), (3.2, 3.0), dpi=120) as axes:
        for ax, name in zip(axes, names, strict=True):
            for enc in result["encoders"]:
                stage = next((s for s in enc["stages"] if s["name"] == name), None)
                if stage is not None:
                    ax.plot(stage["frequency"], stage["delta_log_amplitude"], marker="o", ms=3,
                            label=enc["label"])
            ax.set_title(name)
            ax.set_xlabel("frequency (× π)")
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("Δ log amplitude")
        axes[-1].legend(fontsize=8)


def write_fourier(result: dict, out_dir: Path) -> tuple[Path, Path]:
    from sgmim.train.checkpoint import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "fourier.json", result)
    plot_fourier(result, out_dir / "fourier.png")
    return out_dir / "fourier.json", out_dir / "fourier.png"


__all__ = ["AnalysisError", "fourier_analysis", "half_diagonal", "log_amplitude", "plot_fourier",
           "write_fourier"]
