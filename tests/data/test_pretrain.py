"""build_pretrain_dataset: the trainer's contract, determinism, the image-folder format."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sgmim.data import IMAGENET_STD, DataError, build_pretrain_dataset
from sgmim.data.synthetic import scene as scene_module
from sgmim.models import MaskGenerator
from sgmim.spec import AugmentConfig, PretrainDataConfig

from .conftest import save_png16, save_rgb

SIZE = 32
NO_AUGMENT = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False)


@pytest.fixture
def masks() -> MaskGenerator:
    return MaskGenerator(SIZE, mask_patch_size=8, model_patch_size=4, ratio=0.6)


def synthetic(masks, **kwargs):
    return build_pretrain_dataset(PretrainDataConfig(num_images=8, **kwargs), SIZE, masks)


def test_synthetic_items_follow_the_trainer_contract(masks):
    dataset = synthetic(masks, transfer="float32")
    item = dataset[0]
    assert set(item) == {"image", "depth", "image_mask", "struct_mask"}
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["depth"].shape == (1, SIZE, SIZE) and item["depth"].dtype == torch.float32
    assert item["depth"].min() >= 0.0 and item["depth"].max() <= 1.0
    assert item["image"].min() < -0.5, "ImageNet-normalised, not [0, 1]"
    assert item["image_mask"].dtype == torch.uint8 and item["image_mask"].shape == (8, 8)
    assert torch.equal(item["struct_mask"], 1 - item["image_mask"])
    assert int(item["image_mask"].sum()) == masks.num_masked * masks.scale**2


def test_compact_items_ship_uint8_pixels_and_float16_depth(masks):
    assert not synthetic(masks).compact, "auto without a GPU: normalised in the loader"
    item = synthetic(masks, transfer="compact")[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.uint8
    assert item["depth"].shape == (1, SIZE, SIZE) and item["depth"].dtype == torch.float16
    assert item["image"].max() > 1, "pixels 0..255, not [0, 1]"


@pytest.mark.parametrize(("augment", "pixel_tolerance"), [
    (NO_AUGMENT, 0.0),                       # no resampling: the very same pixels
    (AugmentConfig(), 0.0),                  # resized and flipped: both resample uint8 pixels
    (AugmentConfig(color_jitter=0.3), 0.5),  # jittered: compact rounds to whole pixel values
])
def test_device_normalisation_matches_the_cpu_path(masks, augment, pixel_tolerance):
    """The compact batch normalised where the trainer does it (`normalize_pixels` on the batch's
    device, here the CPU) is the float32 path's batch: exactly without jitter (both paths crop
    and resize the uint8 pixels), else within the rounding to uint8 (half a pixel step)."""
    from sgmim.data.transforms import normalize_pixels

    compact = synthetic(masks, augment=augment, transfer="compact")
    full = synthetic(masks, augment=augment, transfer="float32")
    for dataset in (compact, full):
        dataset.set_epoch(2)
    batch_c = next(iter(DataLoader(compact, batch_size=4)))
    batch_f = next(iter(DataLoader(full, batch_size=4)))
    image = normalize_pixels(batch_c["image"])
    assert image.dtype == torch.float32
    tolerance = pixel_tolerance / 255 / min(IMAGENET_STD) + 1e-5
    torch.testing.assert_close(image, batch_f["image"], atol=tolerance, rtol=0)
    torch.testing.assert_close(batch_c["depth"].float(), batch_f["depth"], atol=5e-4, rtol=0)
    assert torch.equal(batch_c["image_mask"], batch_f["image_mask"])
    assert torch.equal(batch_c["struct_mask"], batch_f["struct_mask"])


def test_item_is_a_function_of_seed_epoch_and_index(masks):
    first, second = synthetic(masks), synthetic(masks)
    first.set_epoch(3)
    second.set_epoch(3)
    a, b = first[5], second[5]
    assert all(torch.equal(a[k], b[k]) for k in a)
    second.set_epoch(4)
    c = second[5]
    assert not torch.equal(a["image"], c["image"]) and not torch.equal(a["image_mask"], c["image_mask"])
    other_seed = synthetic(masks, seed=1)
    other_seed.set_epoch(3)
    assert not torch.equal(a["image"], other_seed[5]["image"])


def test_an_epoch_key_gives_that_epochs_item_whatever_the_set_epoch(masks):
    dataset = synthetic(masks)
    for epoch in (0, 3):
        dataset.set_epoch(epoch)
        expected = dataset[5]
        dataset.set_epoch(7)
        keyed = dataset[(epoch, 5)]
        assert all(torch.equal(keyed[k], expected[k]) for k in expected), f"epoch {epoch}"


def test_workers_see_set_epoch_and_match_the_main_process(masks):
    dataset = synthetic(masks)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        batches = list(loader)
        expected = torch.stack([dataset[i]["image"] for i in range(4)])
        assert torch.equal(batches[0]["image"], expected), f"epoch {epoch}"


@pytest.fixture
def render_calls(monkeypatch) -> list[int]:
    """The seeds the source rendered (the scene is still rendered)."""
    calls = []
    render = scene_module.render_configured

    def counting(*args, **kwargs):
        calls.append(args[0])
        return render(*args, **kwargs)

    monkeypatch.setattr("sgmim.data.synthetic.source.render_configured", counting)
    return calls


def test_scenes_are_rendered_once_then_cached(masks, render_calls, monkeypatch):
    monkeypatch.delenv("SGMIM_CACHE_DIR")  # memory only: outside a run there is no disk cache
    dataset = synthetic(masks)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        _ = [dataset[i] for i in range(len(dataset))]
    assert len(render_calls) == len(dataset)


def test_disk_cache_serves_the_next_run_and_follows_the_scene_settings(masks, render_calls,
                                                                        monkeypatch, tmp_path):
    monkeypatch.setenv("SGMIM_CACHE_DIR", str(tmp_path))

    def epoch_of(dataset):
        return [dataset[i] for i in range(len(dataset))]

    first = epoch_of(synthetic(masks))
    assert len(render_calls) == 8 and len(list(tmp_path.glob("scenes/*/*.npz"))) == 8
    again = epoch_of(synthetic(masks))  # a new run: an empty memory cache, the same disk
    assert len(render_calls) == 8, "the second run renders nothing"
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again, strict=True) for k in a)

    from sgmim.spec.data import PseudoDepthConfig, SyntheticConfig

    changed = SyntheticConfig(pseudo_depth=PseudoDepthConfig(blur=0.05))
    other = epoch_of(synthetic(masks, synthetic=changed))
    assert len(render_calls) == 16, "other scene settings: rendered afresh, not the old scenes"
    assert not torch.equal(other[0]["depth"], first[0]["depth"])
    assert len(list(tmp_path.glob("scenes/*"))) == 2
    epoch_of(synthetic(masks, synthetic=SyntheticConfig(disk_cache=False), seed=100))
    assert len(render_calls) == 24 and len(list(tmp_path.glob("scenes/*"))) == 2, "opted out"


def test_synthetic_splits_do_not_overlap(masks):
    train = build_pretrain_dataset(PretrainDataConfig(num_images=4), SIZE, masks, split="train")
    val = build_pretrain_dataset(PretrainDataConfig(num_images=4), SIZE, masks, split="val")
    names = {train.source.name(i) for i in range(4)}
    assert names.isdisjoint(val.source.name(i) for i in range(4))


def folder_config(root, **kwargs) -> PretrainDataConfig:
    return PretrainDataConfig(source="image_folder", root=str(root), augment=NO_AUGMENT, **kwargs)


def test_image_folder_pairs_sub_paths_and_reports_images_without_depth(image_folder_root, masks, caplog):
    with caplog.at_level(logging.WARNING, logger="sgmim.data"):
        dataset = build_pretrain_dataset(folder_config(image_folder_root), SIZE, masks)
    assert "orphan.jpg" in caplog.text and "1 images without a depth map" in caplog.text
    names = [dataset.source.name(i) for i in range(len(dataset))]
    assert names == ["a/one.jpg", "b/c/two.png", "three.png"]
    depth_means = [float(dataset[i]["depth"].float().mean()) for i in range(3)]
    np.testing.assert_allclose(depth_means, [(65535 // 4) / 65535, 0.75, 1.0], atol=1e-4)
    assert dataset[2]["depth"].shape == (1, SIZE, SIZE), "a smaller depth map is resized to its image"


def test_image_folder_strict_mode_refuses_missing_depth(image_folder_root, masks):
    with pytest.raises(DataError, match="orphan.jpg"):
        build_pretrain_dataset(folder_config(image_folder_root, strict=True), SIZE, masks)


def test_corrupt_file_is_skipped_and_counted_unless_strict(image_folder_root, masks, caplog):
    (image_folder_root / "depth/a/one.png").write_bytes(b"not a png at all")
    dataset = build_pretrain_dataset(folder_config(image_folder_root), SIZE, masks)
    with caplog.at_level(logging.WARNING, logger="sgmim.data"):
        item = dataset[0]
    assert dataset.policy.skipped == 1 and "one.png" in caplog.text
    assert torch.allclose(item["depth"].float().mean(), torch.tensor(0.75)), "the next item stands in"


def test_corrupt_file_is_fatal_in_strict_mode(image_folder_root, masks):
    (image_folder_root / "images/orphan.jpg").unlink()
    save_rgb(image_folder_root / "images/a/one.jpg", np.zeros((40, 50, 3)))
    (image_folder_root / "depth/a/one.png").write_bytes(b"\x89PNG broken")
    dataset = build_pretrain_dataset(folder_config(image_folder_root, strict=True), SIZE, masks)
    with pytest.raises(DataError, match=r"depth/a/one.png: cannot be read as a 16-bit"):
        dataset[0]


def test_wrong_layout_names_the_path(tmp_path, masks):
    (tmp_path / "images").mkdir()
    save_rgb(tmp_path / "images/x.png", np.zeros((8, 8, 3)))
    with pytest.raises(DataError, match=f"{tmp_path}/depth: missing"):
        build_pretrain_dataset(folder_config(tmp_path), SIZE, masks)
    with pytest.raises(DataError, match="no image folder for split 'val'"):
        build_pretrain_dataset(folder_config(tmp_path), SIZE, masks, split="val")


def test_pipeline_keeps_image_and_depth_aligned(tmp_path, masks):
    """Image red channel and depth both encode the column; crops and flips must keep them equal."""
    ramp = np.tile(np.arange(256, dtype=np.uint16), (96, 1))
    save_rgb(tmp_path / "images/ramp.png", np.stack([ramp, ramp[::-1] * 0, ramp * 0], axis=-1))
    save_png16(tmp_path / "depth/ramp.png", ramp * 257)
    cfg = PretrainDataConfig(source="image_folder", root=str(tmp_path), transfer="compact",
                             augment=AugmentConfig(crop_scale=(0.2, 0.6), hflip=True))
    dataset = build_pretrain_dataset(cfg, SIZE, masks)
    flips = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        item = dataset[0]
        red = item["image"][0].float() / 255
        assert (red - item["depth"][0].float()).abs().max() < 3e-3, f"epoch {epoch}"
        flips.add(bool(red[0, 0] > red[0, -1]))
    assert flips == {True, False}, "both flipped and unflipped crops were checked"


def test_skips_are_counted_across_workers(image_folder_root, masks):
    (image_folder_root / "depth/a/one.png").write_bytes(b"not a png at all")
    (image_folder_root / "images/b/c/two.png").write_bytes(b"not a png either")
    dataset = build_pretrain_dataset(folder_config(image_folder_root), SIZE, masks)
    batches = list(DataLoader(dataset, batch_size=1, num_workers=2))
    assert len(batches) == 3
    assert dataset.policy.skipped == 3, "2 in one worker (items 0, 1 for index 0), 1 in the other"
