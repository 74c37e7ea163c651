"""A run's image resolution: the per-image pixel budget of dynamic-resolution backbones.

Qwen2-VL-style image processors resize each picture to a multiple of `patch_size · merge_size` whose area lies
between `size["shortest_edge"]` and `size["longest_edge"]` (in pixels, despite the names), so the number of image
tokens follows the picture. `JRMConfig.min_image_pixels` / `max_image_pixels` set that budget for a run; the version
records them in its config (and a full version's saved processor carries them). Backbones with a fixed input size
(LLaVA's CLIP tower, Idefics3 / SmolVLM tiles with fixed position embeddings) refuse a budget rather than ignore it.
"""

from __future__ import annotations

from typing import Any


def pixel_budget(processor: Any) -> tuple[int, int] | None:
    """(min, max) pixels per image of a dynamic-resolution processor; None for a fixed-size one."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if image_processor is None or not hasattr(image_processor, "merge_size") or size is None:
        return None
    try:
        low, high = size["shortest_edge"], size["longest_edge"]
    except (KeyError, TypeError):
        return None
    return (int(low), int(high)) if low is not None and high is not None else None


def set_pixel_budget(processor: Any, *, min_pixels: int = 0, max_pixels: int = 0, backbone: str = "") -> None:
    """Set the processor's pixel budget (0 keeps the backbone's own bound); refuse on a fixed-size backbone."""
    if not min_pixels and not max_pixels:
        return
    current = pixel_budget(processor)
    if current is None:
        raise ValueError(
            f"Backbone {backbone or type(processor).__name__!r} takes images at a fixed size, so min_image_pixels / "
            "max_image_pixels do not apply; they set the per-image pixel budget of dynamic-resolution backbones "
            "(Qwen2-VL, Qwen2.5-VL). Leave them at 0."
        )
    low, high = min_pixels or current[0], max_pixels or current[1]
    image_processor = processor.image_processor
    step = image_processor.patch_size * image_processor.merge_size
    if high < step * step or low > high:
        raise ValueError(
            f"The pixel budget {low}..{high} is not usable: max_image_pixels must be at least {step * step} (one "
            f"{step}×{step} merged patch) and not below min_image_pixels."
        )
    image_processor.size = type(image_processor.size)(shortest_edge=low, longest_edge=high)
