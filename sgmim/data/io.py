"""Reading and writing the files of the on-disk formats, with errors that name the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sgmim.data.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
UINT16_MAX = np.iinfo(np.uint16).max
# zlib level of written PNGs: level 1 is 2-3x faster than the default 6 and the rendered
# images and depth maps come out at most a few percent larger.
PNG_COMPRESS_LEVEL = 1


def _open(path: Path, expected: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise DataError(f"{path}: missing; expected {expected}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot be read as {expected} ({exc})") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """A JPEG or PNG photo as (H, W, 3) uint8."""
    with _open(Path(path), "a JPEG or PNG image") as image:
        return np.array(image.convert("RGB"))


def read_png_values(path: str | Path, expected: str = "a 16-bit PNG") -> np.ndarray:
    """A single-channel PNG's raw values: (H, W) uint16 for 16-bit files, uint8 for 8-bit ones."""
    path = Path(path)
    with _open(path, expected) as image:
        if image.mode not in ("I;16", "I;16B", "I", "L", "P"):
            raise DataError(f"{path}: a {image.mode} image; expected {expected} with one channel")
        values = np.array(image)
    if values.dtype == np.uint8:
        return values
    if values.min() < 0 or values.max() > UINT16_MAX:
        raise DataError(f"{path}: values outside 0..65535; expected {expected}")
    return values.astype(np.uint16)


def read_npy(path: str | Path) -> np.ndarray:
    """A 2-D float array from a .npy file (a trailing or leading axis of 1 is dropped)."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; expected a .npy depth map") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as a .npy array ({exc})") from None
    array = np.squeeze(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: a {array.dtype} array of shape {array.shape}; expected a 2-D "
                        "numeric depth map")
    return array.astype(np.float32)


def _atomic_save(image: Image.Image, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        image.save(tmp, compress_level=PNG_COMPRESS_LEVEL)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png16(path: str | Path, values: np.ndarray) -> None:
    """(H, W) integer values in 0..65535 as a 16-bit greyscale PNG."""
    _atomic_save(Image.fromarray(np.asarray(values, dtype=np.uint16)), Path(path))


def write_unit_png16(path: str | Path, unit: np.ndarray) -> None:
    """(H, W) floats in [0, 1] as a 16-bit PNG (value · 65535)."""
    write_png16(path, np.round(np.clip(unit, 0.0, 1.0) * UINT16_MAX))


def write_png(path: str | Path, array: np.ndarray) -> None:
    """(H, W, 3) RGB or (H, W) label uint8 array as an 8-bit PNG."""
    _atomic_save(Image.fromarray(np.asarray(array, dtype=np.uint8)), Path(path))
