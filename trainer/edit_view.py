"""The edit view: a processor wrapper that shows the model each edited picture as its change from the source.

`tiny-edit` reads (source, edited) as (source, change), where change = 128 + (edited − source) / 2 per pixel and
channel (the edited picture resized to the source's size first). Source and change hold exactly the information
of source and edited, but what an edit did is visible per patch in the change picture (a tint is a flat colour, a
border a frame, a flip a symmetric pattern, a no-op flat grey), so a tiny random-init vision tower needs no
cross-image attention to see it: caption-only training read the edit from the first caption token 3.7× as often
after 500 steps (0.34 against 0.09; docs/training.md, "The pretrained preset"). It is part of the preset, not of
the prompt: the wrapper is saved as a marker file beside the processor and every load of a folder with the marker
wraps again, so training, evaluation, the app and the CLI all see the same view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MARKER = "jrm_edit_view.json"


def change_picture(source: Image.Image, edited: Image.Image) -> Image.Image:
    """128 + (edited − source) / 2, per pixel and channel; `edited` resized to `source`'s size when it differs."""
    source = source.convert("RGB")
    edited = edited.convert("RGB")
    if edited.size != source.size:
        edited = edited.resize(source.size, Image.Resampling.BILINEAR)
    delta = np.asarray(edited, dtype=np.int16) - np.asarray(source, dtype=np.int16)  # (H, W, 3) in [-255, 255]
    return Image.fromarray((delta // 2 + 128).clip(0, 255).astype(np.uint8), "RGB")


class EditViewProcessor:
    """Wraps a processor: in every (source, edited) pair of `images`, the edited picture becomes its change."""

    def __init__(self, inner: Any):
        object.__setattr__(self, "inner", inner)

    def __call__(self, *args: Any, images: list[Image.Image] | None = None, **kwargs: Any) -> Any:
        if images is not None:
            if len(images) % 2:
                raise ValueError(f"The edit view takes (source, edited) pairs of images, got {len(images)} images.")
            images = [img if i % 2 == 0 else change_picture(images[i - 1], img) for i, img in enumerate(images)]
        return self.inner(*args, images=images, **kwargs)

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> Any:
        """Save the wrapped processor and the marker that makes a later load wrap it again."""
        result = self.inner.save_pretrained(folder, **kwargs)
        (Path(folder) / MARKER).write_text(json.dumps({"view": "change = 128 + (edited - source) / 2"}) + "\n")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)


def wrap_if_marked(processor: Any, folder: str | Path) -> Any:
    """`processor` in the edit view when `folder` was saved with it, else unchanged."""
    return EditViewProcessor(processor) if (Path(folder) / MARKER).exists() else processor
