"""Dataset sections of the job spec."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sgmim.models.config import StrictModel


class AugmentConfig(StrictModel):
    """Paired geometric augmentation (same crop and flip for image, depth and labels)."""

    crop_scale: tuple[float, float] = Field((0.67, 1.0), description="RandomResizedCrop area range")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect range")
    hflip: bool = True
    color_jitter: float = Field(0.0, ge=0.0, le=1.0, description="photometric, image only")


class PretrainDataConfig(StrictModel):
    """Images plus a structured-knowledge (pseudo-depth) map per image."""

    source: Literal["synthetic", "image_folder"] = "synthetic"
    root: str | None = Field(None, description="image_folder: folder holding images/ and depth/")
    num_images: int | None = Field(
        None, ge=1, description="synthetic: scenes rendered per epoch; image_folder: use only the first N")
    seed: int = Field(0, ge=0, description="synthetic: first scene seed of the training split")
    augment: AugmentConfig = AugmentConfig()
    num_workers: int = Field(2, ge=0, le=64)
    strict: bool = Field(False, description="fail on a corrupt file instead of skipping it")

    @model_validator(mode="after")
    def _check_source(self) -> PretrainDataConfig:
        if self.source == "image_folder" and not self.root:
            raise ValueError("source image_folder needs root")
        if self.source == "synthetic" and self.num_images is None:
            self.num_images = 1024
        return self


DownstreamDataset = Literal["synthetic", "kitti", "nyu", "ade20k", "folder"]


class DownstreamDataConfig(StrictModel):
    """A labelled dataset for fine-tuning or evaluation (depth in metres, or class labels)."""

    dataset: DownstreamDataset = "synthetic"
    root: str | None = Field(None, description="dataset root on the worker's disk")
    train_split: str = Field("train", description="split name or split-file path")
    val_split: str = Field("val", description="split name or split-file path")
    num_images: int | None = Field(None, ge=1, description="synthetic: scenes per split; others: cap")
    crop_size: int | tuple[int, int] = Field(352, description="training crop (square if one number)")
    augment: AugmentConfig = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    num_workers: int = Field(2, ge=0, le=64)
    strict: bool = False

    @model_validator(mode="after")
    def _check_root(self) -> DownstreamDataConfig:
        if self.dataset != "synthetic" and not self.root:
            raise ValueError(f"dataset {self.dataset} needs root")
        return self
