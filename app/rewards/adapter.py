"""A Flow-GRPO-style reward function over the reward server: `fn(images, prompts, metadata) -> (scores, info)`.

`images` are the edited images of one RL step: a float tensor or array (N, C, H, W) in [0, 1] (what a diffusion
pipeline decodes to), a uint8 array (N, H, W, C), or a list of pictures / single images of those kinds. `prompts`
are the edit instructions. `metadata` carries each edit's source image under "source" (a picture, an array or
tensor as above, file bytes, base64, or {"sha256": ...} of a stored image): one dict per image, or one dict for all.
Scores come back as a float32 array in image order; a failure raises `RewardError` (a reward is never made up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image

from app.rewards.client import RewardClient

SOURCE_KEY = "source"
_RANGE_SLACK = 1e-3  # float pixels may overshoot [0, 1] by rounding in the decoder


class RewardFn:
    """`RewardFn(client)(images, prompts, metadata) -> (scores, info)`; `info` has the version stamp."""

    def __init__(self, client: RewardClient, *, source_key: str = SOURCE_KEY, version: str | None = None):
        self.client, self.source_key, self.version = client, source_key, version

    def __call__(
        self, images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | Mapping[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        edited = to_uint8_images(images)
        sources = _sources(metadata, len(edited), self.source_key)
        reply = self.client.score_batch(sources, edited, list(prompts), version=self.version)
        info = {
            "version": reply.version,
            "version_id": reply.version_id,
            "model_sha256": reply.model_sha256,
            "passed_floor": reply.passed_floor,
        }
        return np.asarray(reply.scores, dtype=np.float32), info


def reward_fn(
    images: Any,
    prompts: Sequence[str],
    metadata: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    client: RewardClient | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores of `images` (edits of metadata["source"] under `prompts`) from the reward server; see the module doc.
    Without `client`, one for the default URL (http://127.0.0.1:8008, JRM_REWARD_TOKEN) is made for this call."""
    if client is not None:
        return RewardFn(client)(images, prompts, metadata)
    with RewardClient() as own:
        return RewardFn(own)(images, prompts, metadata)


def _sources(metadata: Any, count: int, key: str) -> list[Any]:
    entries = [metadata] * count if isinstance(metadata, Mapping) else list(metadata)
    if len(entries) != count:
        raise ValueError(f"{len(entries)} metadata entries for {count} images; give one each, or one dict for all.")
    sources = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or key not in entry:
            raise ValueError(f"metadata[{number}] has no {key!r}: put each edit's source image there.")
        source = entry[key]
        sources.append(source if isinstance(source, PIL.Image.Image | bytes | str | dict) else _one_image(source))
    return sources


def to_uint8_images(images: Any) -> list[np.ndarray | PIL.Image.Image]:
    """The batch as a list of HWC uint8 arrays (pictures kept as they are); see the module doc for the layouts."""
    if isinstance(images, list | tuple):
        return [image if isinstance(image, PIL.Image.Image) else _one_image(image) for image in images]
    array = _as_numpy(images)
    if array.ndim != 4:
        raise ValueError(f"Expected a batch of images (4 dimensions), got shape {tuple(array.shape)}.")
    return [_one_image(image) for image in array]


def _one_image(image: Any) -> np.ndarray:
    """One image as (H, W, 3) uint8: float (C, H, W) in [0, 1] is scaled and transposed, uint8 (H, W, C) kept."""
    array = _as_numpy(image)
    if array.dtype == np.uint8:
        if array.ndim == 3 and array.shape[-1] in (1, 3):
            return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array
        raise ValueError(f"A uint8 image must be (H, W, C) with C = 1 or 3, got shape {tuple(array.shape)}.")
    if not np.issubdtype(array.dtype, np.floating) or array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(
            f"Expected a float (C, H, W) image in [0, 1] or a uint8 (H, W, C) one, got dtype {array.dtype} and shape "
            f"{tuple(array.shape)}."
        )
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if np.isnan(array).any() or low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ValueError(
            f"Float images must lie in [0, 1] (got {low:.3g} to {high:.3g}, or NaN); rescale [-1, 1] output with "
            "(x + 1) / 2 first."
        )
    hwc = np.transpose(np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array, (1, 2, 0))  # (H, W, 3)
    return np.round(np.clip(hwc, 0.0, 1.0) * 255).astype(np.uint8)


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy array of `value`; torch tensors (any device or dtype) are detached and copied to the CPU."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        return value.numpy()
    return np.asarray(value)
