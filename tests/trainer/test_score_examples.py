"""The Score tab's shipped examples: rebuilt from the demo edits, they equal the files in the repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.pretrain.stream import HELDOUT_PHOTOS
from trainer.score_examples import EXAMPLES_FILE, build_examples, main

SHIPPED = Path(__file__).resolve().parents[2] / "app" / "examples"
MAX_TOTAL_BYTES = 300 * 1024


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_the_build_reproduces_the_shipped_examples(tmp_path):
    assert main(["--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / EXAMPLES_FILE).read_text()) == json.loads((SHIPPED / EXAMPLES_FILE).read_text())
    built = sorted(path.name for path in tmp_path.glob("*.png"))
    assert built == sorted(path.name for path in SHIPPED.glob("*.png"))
    for name in built:  # pixels, not bytes: another zlib may compress the same picture differently
        assert np.array_equal(_pixels(tmp_path / name), _pixels(SHIPPED / name)), name


def test_each_example_is_a_held_out_photo_with_a_correct_a_flawed_and_a_no_op_edit(tmp_path):
    examples = build_examples(tmp_path)
    assert len(examples) >= 3 and {example["photo"] for example in examples} == set(HELDOUT_PHOTOS)
    assert len({example["instruction"] for example in examples}) == len(examples)
    for example in examples:
        kinds = [edit["kind"] for edit in example["edits"]]
        assert kinds[0] == "correct" and kinds[1].startswith("flawed: ") and kinds[2] == "no-op"
        source = _pixels(tmp_path / example["source"])
        assert source.shape == (128, 128, 3)
        correct, flawed, no_op = (_pixels(tmp_path / edit["file"]) for edit in example["edits"])
        assert np.array_equal(no_op, source)  # a no-op returns the source unchanged
        assert not np.array_equal(correct, source) and not np.array_equal(flawed, correct)
    assert sum(path.stat().st_size for path in tmp_path.iterdir()) < MAX_TOTAL_BYTES
