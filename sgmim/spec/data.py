"""The dataset sections of the job spec."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sgmim.spec.base import MAX_IMAGES, MAX_SEED, FloatPair, IntPair, StrictModel

Size = int | IntPair


def _ordered_pair(value: tuple[float, float], name: str) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"{name} must be (low, high), got {value}")
    return value


class AugmentConfig(StrictModel):
    """Paired geometric augmentation (same crop and flip for image, depth and labels) plus
    photometric augmentation of the image only."""

    crop_scale: FloatPair = Field(
        (0.67, 1.0), description="RandomResizedCrop area range, fraction of the image; (1, 1) with "
                                 "crop_ratio (1, 1) is a plain random crop without resizing")
    crop_ratio: FloatPair = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect range")
    hflip: bool = Field(True, description="random horizontal flip with probability 0.5")
    color_jitter: float = Field(
        0.0, ge=0.0, le=1.0,
        description="photometric strength c, image only: brightness, contrast, saturation and "
                    "per-channel gain each drawn from [1 - c, 1 + c]")

    @field_validator("crop_scale")
    @classmethod
    def _check_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= 1.0 or not 0.0 < value[1] <= 1.0:
            raise ValueError(f"crop_scale must lie in (0, 1], got {value}")
        return _ordered_pair(value, "crop_scale")

    @field_validator("crop_ratio")
    @classmethod
    def _check_ratio(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError(f"crop_ratio must be positive, got {value}")
        return _ordered_pair(value, "crop_ratio")

    @property
    def resizes(self) -> bool:
        """False when the crop is a plain random crop (area 1, aspect 1: no resampling)."""
        return self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0)


class PseudoDepthConfig(StrictModel):
    """How far synthetic structured knowledge is from the truth (a monocular network's errors)."""

    blur: float = Field(0.01, ge=0.0, le=0.2,
                        description="Gaussian blur sigma as a fraction of the longer image side")
    bias: float = Field(0.15, ge=0.0, le=1.0,
                        description="amplitude of the multiplicative low-frequency bias field")
    edge_shift: float = Field(0.01, ge=0.0, le=0.2,
                              description="largest drift of depth edges, fraction of the longer side")
    noise: float = Field(0.01, ge=0.0, le=0.5, description="std of additive noise on the [0, 1] map")
    shift: float = Field(0.3, ge=0.0, le=10.0,
                         description="largest additive shift of inverse depth, relative to its median")
    min_range: float = Field(0.7, gt=0.0, le=1.0,
                             description="the normalised map spans a random part of [0, 1] at least "
                                         "this long (random scale and shift)")


DEFAULT_NUM_OBJECTS = (2, 6)
MIN_RENDER_SIDE = 8

# field → (lowest, highest, why) of the scene geometry's ranges
GEOMETRY_LIMITS = {
    "hfov_deg": (10.0, 120.0, ""),
    "room_side": (2.0, 50.0, " m (the camera and the objects keep clear of the walls)"),
    "room_height": (2.4, 10.0, " m (the objects stand up to 2.3 m, below the light)"),
    "camera_height": (0.2, 2.2, " m (below the lowest ceiling)"),
    "camera_pitch_deg": (-60.0, 30.0, " degrees (negative looks down)"),
    "object_distance": (0.5, 50.0, " m"),
}


class SceneGeometryConfig(StrictModel):
    """Camera, room and object-placement ranges of the procedural scenes, each drawn uniformly per
    scene; a pair (a, a) fixes the value. Metric depth from one image is only defined when the
    scale is: with the field of view and the room's height fixed and the camera's height and tilt
    nearly so, the floor, walls and ceiling tell how far they are (the defaults, chosen so that a
    small model learns depth, benchmarks/STUDIES.md). `varied()` (with `num_objects` (4, 10)) is the
    first generator, where a near small room seen wide and a far large room seen narrow look alike
    and near objects fill most views."""

    hfov_deg: FloatPair = Field((60.0, 60.0), description="horizontal field of view, degrees")
    room_side: FloatPair = Field((4.0, 6.0), description="each horizontal side of the room, metres")
    room_height: FloatPair = Field((2.8, 2.8), description="floor to ceiling, metres")
    camera_height: FloatPair = Field((1.3, 1.5), description="camera above the floor, metres")
    camera_pitch_deg: FloatPair = Field((-15.0, -5.0), description="camera tilt, degrees, negative "
                                                                   "looks down")
    object_distance: FloatPair = Field((1.5, 5.0), description="objects stand this far from the "
                                                               "camera, metres (and inside the room)")

    @classmethod
    def varied(cls) -> SceneGeometryConfig:
        """The wide ranges of the first generator: absolute scale ambiguous from one image."""
        return cls(hfov_deg=(50.0, 75.0), room_side=(3.5, 8.0), room_height=(2.4, 3.2),
                   camera_height=(0.9, 1.8),
                   camera_pitch_deg=(math.degrees(-0.45), math.degrees(0.05)), object_distance=(0.8, 5.0))

    @field_validator("hfov_deg", "room_side", "room_height", "camera_height", "camera_pitch_deg",
                     "object_distance")
    @classmethod
    def _check_range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low, high, why = GEOMETRY_LIMITS[info.field_name]
        if not low <= value[0] <= value[1] <= high:
            raise ValueError(f"{info.field_name} must be (low, high) inside [{low:g}, {high:g}]{why}, "
                             f"got {value}")
        return value


class SyntheticConfig(StrictModel):
    """Procedural indoor RGB-D scenes (used when the source or dataset is `synthetic`)."""

    render_size: Size | None = Field(
        None, description="rendered (H, W) or square side, at least 8 pixels; default: the model's "
                          "img_size for pretraining, 192 for downstream")
    num_objects: IntPair = Field(
        DEFAULT_NUM_OBJECTS,
        description="boxes, spheres and cylinders per scene (the first generator drew 4 to 10: a view "
                    "mostly filled by near objects, whose depth a small model does not learn)")
    geometry: SceneGeometryConfig = SceneGeometryConfig()
    pseudo_depth: PseudoDepthConfig = PseudoDepthConfig()
    cache_mb: int = Field(
        512, ge=0, description="keep rendered scenes in memory up to this size per process "
                               "(0: render every time)")
    disk_cache: bool = Field(
        True, description="keep rendered scenes on disk (under the cache root, keyed by the scene "
                          "settings, seeds and size) so the next run of the same set skips the render")

    @field_validator("render_size")
    @classmethod
    def _check_render_size(cls, value: Size | None) -> Size | None:
        sides = (value,) if isinstance(value, int) else value or ()
        if any(side < MIN_RENDER_SIDE for side in sides):
            raise ValueError(f"render_size sides must be at least {MIN_RENDER_SIDE} pixels, got {value}")
        return value

    @field_validator("num_objects")
    @classmethod
    def _check_objects(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] < 0:
            raise ValueError(f"num_objects must be >= 0, got {value}")
        return _ordered_pair(value, "num_objects")


class SceneFile(StrictModel):
    """A file of scene settings (`sgmim data synth --scene`): the `synthetic:` block of a job
    spec's data section, alone."""

    synthetic: SyntheticConfig = Field(SyntheticConfig(), description="procedural scene settings")


class PretrainDataConfig(StrictModel):
    """Images plus a structured-knowledge (pseudo-depth) map per image."""

    source: Literal["synthetic", "image_folder"] = Field(
        "synthetic", description="synthetic: procedural scenes with pseudo-depth; image_folder: "
                                 "root/images/<path>.(jpg|png) with root/depth/<path>.(png|npy)")
    root: str | None = Field(None, description="image_folder: folder holding images/ and depth/")
    num_images: int | None = Field(
        None, ge=1, le=MAX_IMAGES,
        description="synthetic: scenes per epoch (default 1024); image_folder: use only the first N "
                    "(sorted by path)")
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="first scene seed of the split (synthetic) and the seed of "
                                  "augmentation and masks: item i of epoch e uses (seed, e, i)")
    augment: AugmentConfig = Field(AugmentConfig(), description="paired crop/flip, photometric jitter")
    synthetic: SyntheticConfig = Field(SyntheticConfig(), description="procedural scene settings")
    num_workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes")
    strict: bool = Field(False, description="fail on a corrupt or missing file instead of skipping it")
    transfer: Literal["auto", "compact", "float32"] = Field(
        "auto", description="compact: the loader ships uint8 images and float16 depth and the "
                            "device normalises them; float32: normalised in the loader; auto: "
                            "compact with a GPU, float32 without (there the trainer's own process "
                            "would do the normalising the loader workers did in parallel)")

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

    dataset: DownstreamDataset = Field(
        "synthetic", description="synthetic scenes, KITTI (Eigen split), NYU-v2, ADE20K, or a folder "
                                 "with <split>/images, <split>/gt_depth and <split>/labels")
    root: str | None = Field(None, description="dataset root on the worker's disk")
    train_split: str = Field("train", description="split name or split-file path")
    val_split: str = Field("val", description="split name or split-file path")
    num_images: int | None = Field(
        None, ge=1, le=MAX_IMAGES,
        description="synthetic: scenes per split (default 256); others: use the first N")
    crop_size: Size | None = Field(
        None, description="training crop (H, W) or square side; default per dataset: KITTI 352, "
                          "NYU (448, 576), ADE20K 512, synthetic and folder: the whole image")
    depth_scale: float | None = Field(
        None, gt=0.0, description="folder: 16-bit PNG value / depth_scale = metres (default 1000); "
                                  ".npy depth is read as metres")
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="synthetic: first scene seed of each split; augmentation "
                                  "of item i in epoch e uses (seed, e, i)")
    augment: AugmentConfig = Field(AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)),
                                   description="training augmentation (never applied in eval mode)")
    synthetic: SyntheticConfig = Field(SyntheticConfig(), description="procedural scene settings")
    num_workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes")
    strict: bool = Field(False, description="fail on a corrupt or missing file instead of skipping it")

    @model_validator(mode="after")
    def _check_root(self) -> DownstreamDataConfig:
        if self.dataset != "synthetic" and not self.root:
            raise ValueError(f"dataset {self.dataset} needs root")
        return self
