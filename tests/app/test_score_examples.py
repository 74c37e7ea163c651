"""The Score tab's clickable examples: the shipped listing loads, its files exist, and a click fills the tab's inputs.

Scoring an example is in test_handlers_score.py (it needs the trained model); the files' build in
tests/trainer/test_score_examples.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

from app.deps import Deps
from app.handlers.score import EXAMPLES_DIR, EXAMPLES_FILE, MAX_EDITS, load_examples
from app.ui import build_ui
from trainer.pretrain.stream import HELDOUT_PHOTOS

INPUT_IDS = ["score-source", "score-instruction", "score-edits"]  # `score_edits`' inputs, in order


def test_the_shipped_examples_load_and_their_files_exist():
    examples = load_examples()
    assert len(examples) >= 3
    for example in examples:
        assert example.photo in HELDOUT_PHOTOS  # pictures the model never saw in pretraining
        assert all(path.is_file() and path.parent == EXAMPLES_DIR for path in (example.source, *example.edits))
        assert 1 <= len(example.edits) <= MAX_EDITS and len(example.kinds) == len(example.did) == len(example.edits)
        assert example.kinds == ("correct", example.kinds[1], "no-op") and example.kinds[1].startswith("flawed: ")
        assert example.instruction in example.label and len(example.label) <= 60
        assert example.breakdown.startswith("1 correct")
        assert example.inputs() == [str(example.source), example.instruction, [str(p) for p in example.edits]]


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)  # the page's layout: no store is read
def test_clicking_an_example_fills_source_instruction_and_edits(factory, settings):
    blocks = build_ui(Deps(factory=factory, settings=settings))
    (click,) = [fn for fn in blocks.fns.values() if fn.api_name == "load_score_example"]
    assert click.api_visibility == "private" and [c.elem_id for c in click.outputs] == INPUT_IDS
    dataset = click.inputs[0]
    for index, example in enumerate(load_examples()):
        source, instruction, edits = (update["value"] for update in click.fn(dataset.preprocess(index)))
        assert source["orig_name"] == example.source.name
        assert instruction == example.instruction
        assert [edit["orig_name"] for edit in edits] == [path.name for path in example.edits]


def test_a_folder_without_a_listing_has_no_examples(tmp_path):
    assert load_examples(tmp_path) == []


def test_a_listing_that_names_a_missing_file_is_refused(tmp_path):
    shutil.copytree(EXAMPLES_DIR, tmp_path, dirs_exist_ok=True)
    listing = json.loads((tmp_path / EXAMPLES_FILE).read_text())
    (tmp_path / listing["examples"][0]["edits"][1]["file"]).unlink()
    with pytest.raises(ValueError, match="missing files"):
        load_examples(tmp_path)
