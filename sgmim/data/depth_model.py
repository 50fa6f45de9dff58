"""Structured knowledge from a monocular depth network: run it over an image folder and write
the mirrored depth folder the pretraining image folder expects.

Any `transformers` depth-estimation model saved locally (`config.json` + weights, plus
`preprocessor_config.json`) loads: the DPT family (DPT-Large, DPT-Hybrid, the paper's
DPT-Hybrid trained on Omnidata once converted to the transformers format) and its relatives.
Nothing is downloaded: loading is `local_files_only`.

Each prediction is resized to its image, normalised per image to [0, 1] and written as a
16-bit PNG (value / 65535). Done files are skipped, so an interrupted run resumes; files are
written under a temporary name and renamed, so a half-written PNG never counts as done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgmim.data.errors import DataError, SkipPolicy, log
from sgmim.data.image_folder import list_images
from sgmim.data.io import read_rgb, write_unit_png16


@dataclass
class PseudoDepthReport:
    written: int = 0
    already_done: int = 0
    failed: int = 0


def resolve_device(device: str) -> torch.device:
    """'auto' (CUDA when there is one), 'cpu', 'cuda' or 'cuda:N'."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DataError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {device!r}: no CUDA device is available here")
    return resolved


class DepthPredictor:
    """A locally stored depth-estimation network: images in, relative depth maps out."""

    def __init__(self, model_path: str | Path, device: str = "auto"):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation, DPTImageProcessor
        from transformers.utils import logging as hf_logging

        self.device = resolve_device(device)
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise DataError(f"{path}: expected a transformers model folder (config.json and weights, as "
                            "written by save_pretrained)")
        hf_logging.disable_progress_bar()
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: cannot load a depth-estimation model ({exc})") from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError):
            log.warning("%s: no preprocessor_config.json; using DPT's default preprocessing", path)
            self.processor = DPTImageProcessor()
        self.model.to(self.device).eval()

    @torch.no_grad()
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Same-size (H, W, 3) uint8 images → (H, W) float32 predictions in [0, 1] (per image)."""
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        predicted = self.model(**inputs).predicted_depth.float()
        predicted = F.interpolate(predicted[:, None], size=images[0].shape[:2], mode="bicubic",
                                  align_corners=False)[:, 0]
        low = predicted.amin(dim=(1, 2), keepdim=True)
        span = (predicted.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
        return list(((predicted - low) / span).clamp_(0, 1).cpu().numpy())


def check_image_dir(images_dir: Path) -> None:
    """Fail early (before a model loads) when the image folder is not there."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: not a folder; expected a folder of .jpg/.png images")


def plan(images_dir: Path, out_dir: Path) -> tuple[list[tuple[Path, Path]], int]:
    """(image, output) pairs still to do, and how many outputs already exist."""
    check_image_dir(images_dir)
    images = list_images(images_dir)
    if not images:
        raise DataError(f"{images_dir}: no .jpg or .png images found")
    pairs = [(image, out_dir / image.relative_to(images_dir).with_suffix(".png")) for image in images]
    todo = [(image, out) for image, out in pairs if not out.is_file()]
    return todo, len(pairs) - len(todo)


def _batches(todo: list[tuple[Path, Path]], batch_size: int, policy: SkipPolicy,
             report: PseudoDepthReport) -> Iterator[list[tuple[np.ndarray, Path]]]:
    """Read images in order and yield runs of at most `batch_size` that share a size."""
    for start in range(0, len(todo), batch_size):
        loaded = []
        for image, out in todo[start:start + batch_size]:
            try:
                loaded.append((read_rgb(image), out))
            except DataError as exc:
                if policy.strict:
                    raise
                report.failed += 1
                log.warning("skipped: %s", exc)
        for _, group in groupby(loaded, key=lambda item: item[0].shape):
            yield list(group)


def write_pseudo_depth(images_dir: str | Path, out_dir: str | Path, predictor: DepthPredictor,
                       batch_size: int = 8, invert: bool = False, strict: bool = False,
                       on_progress: Callable[[int], None] | None = None,
                       on_plan: Callable[[int], None] | None = None) -> PseudoDepthReport:
    """Predict and write `out_dir/<path>.png` for every `images_dir/<path>.<jpg|png>` not done yet.

    `invert` writes 1 - prediction: for networks that predict depth rather than inverse depth
    (Omnidata), so that 1 = near as in MiDaS-style output and the synthetic maps.
    `on_plan(n)` is told the number of images to do, `on_progress(k)` how many of them are
    finished (written or failed) after each batch.
    """
    todo, done = plan(Path(images_dir), Path(out_dir))
    report = PseudoDepthReport(already_done=done)
    if on_plan:
        on_plan(len(todo))
    for batch in _batches(todo, batch_size, SkipPolicy(strict), report):
        for (_, out), depth in zip(batch, predictor.predict([rgb for rgb, _ in batch]), strict=True):
            write_unit_png16(out, 1.0 - depth if invert else depth)
        report.written += len(batch)
        if on_progress:
            on_progress(report.written + report.failed)
    if on_progress:
        on_progress(report.written + report.failed)
    return report
