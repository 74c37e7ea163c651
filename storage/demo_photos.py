"""The demo's source pictures: real photos that load offline, random square crops, and pixel statistics.

scikit-image and matplotlib ship these photos, so no download is needed; a photo whose data file is missing is
dropped from `available_photos()`. `sample_source` draws a crop from an `rng`, so a task's source is a pure
function of its random stream (`storage.demo_edits`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import numpy as np
from PIL import Image

DEFAULT_SIZE = 128
CROP_SCALE = (0.45, 1.0)  # a random crop's side as a fraction of the photo's short side


def _skimage_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg", asfileobj=True) as f:
        return np.asarray(Image.open(f).convert("RGB"))


# Real photos that ship inside scikit-image and matplotlib (no download). Others in skimage.data need pooch.
PHOTO_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    **{
        name: _skimage_photo(name)
        for name in (
            "astronaut",
            "chelsea",
            "coffee",
            "rocket",
            "camera",
            "coins",
            "hubble_deep_field",
            "immunohistochemistry",
            "retina",
            "moon",
        )
    },
    "motorcycle": _motorcycle,
    "grace_hopper": _grace_hopper,
}


def _to_rgb(pixels: np.ndarray) -> Image.Image:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(pixels[..., :3], "RGB")


@functools.cache
def load_photo(name: str) -> Image.Image | None:
    """The photo `name` as RGB, or None when this machine cannot load it offline."""
    try:
        return _to_rgb(PHOTO_LOADERS[name]())
    except Exception:  # noqa: BLE001 - a missing optional data file (pooch, network) just drops that photo
        return None


@functools.cache
def available_photos() -> tuple[str, ...]:
    """Names of the photos that load on this machine, in a fixed order."""
    names = tuple(name for name in PHOTO_LOADERS if load_photo(name) is not None)
    if not names:
        raise RuntimeError("No demo photo loads offline: install scikit-image and matplotlib with their data.")
    return names


def sample_source(
    rng: random.Random, *, size: int = DEFAULT_SIZE, random_crop: bool = True, photos: tuple[str, ...] | None = None
) -> tuple[str, Image.Image]:
    """A photo's name (from `photos`, default all) and a square `size`×`size` crop of it: random or the centre."""
    name = rng.choice(photos or available_photos())
    photo = load_photo(name)
    width, height = photo.size
    side = min(width, height)
    crop = round(side * rng.uniform(*CROP_SCALE)) if random_crop else side
    left = rng.randint(0, width - crop) if random_crop else (width - crop) // 2
    top = rng.randint(0, height - crop) if random_crop else (height - crop) // 2
    return name, photo.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + crop, top + crop))


def is_colour(image: Image.Image) -> bool:
    """Whether the picture has visible colour (grayscale and sepia edits are invisible otherwise)."""
    pixels = np.asarray(image, dtype=np.int16)
    return float(np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).mean()) > 4.0


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute pixel difference (0–255) between two same-size RGB pictures."""
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())
