"""The edit view: (source, edited) shown as (source, change), kept across save and load."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainer.backbones import build_tiny_llava, load_backbone
from trainer.edit_view import MARKER, EditViewProcessor, change_picture


def picture(value: tuple[int, int, int], size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, value)


def test_change_picture_is_grey_for_a_no_op_and_signed_otherwise():
    source = picture((100, 50, 200))
    assert np.all(np.asarray(change_picture(source, source)) == 128)
    brighter = np.asarray(change_picture(source, picture((140, 50, 100))))
    assert tuple(brighter[0, 0]) == (148, 128, 78)  # +40 / 2, 0, −100 / 2
    extreme = np.asarray(change_picture(picture((255, 0, 0)), picture((0, 255, 0))))
    assert tuple(extreme[0, 0]) == (0, 255, 128)  # (−255 // 2) + 128 = 0, 127 + 128 = 255: nothing clips away


def test_an_edit_of_another_size_is_compared_at_the_source_size():
    assert change_picture(picture((10, 10, 10)), picture((10, 10, 10), size=(40, 20))).size == (16, 16)


def test_every_second_image_becomes_the_change():
    view = EditViewProcessor(type("Inner", (), {"__call__": lambda self, *a, images=None, **k: images})())
    source, edited = picture((100, 100, 100)), picture((120, 100, 100))
    out = view(text=["x"], images=[source, edited])
    assert out[0] is source and np.asarray(out[1])[0, 0].tolist() == [138, 128, 128]
    with pytest.raises(ValueError, match="pairs"):
        view(images=[source])


def test_the_view_survives_save_and_load(tmp_path):
    model, processor = build_tiny_llava(image_size=16, patch_size=8)
    view = EditViewProcessor(processor)
    model.save_pretrained(tmp_path)
    view.save_pretrained(tmp_path)
    assert (tmp_path / MARKER).exists()
    loaded = load_backbone(str(tmp_path))
    assert isinstance(loaded.processor, EditViewProcessor)
    loaded.processor.chat_template = None  # attributes reach the wrapped processor
    assert loaded.processor.inner.chat_template is None
    (tmp_path / MARKER).unlink()
    assert not isinstance(load_backbone(str(tmp_path)).processor, EditViewProcessor)
