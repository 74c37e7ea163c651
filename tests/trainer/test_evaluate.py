"""Held-out evaluation with the real tiny JRM: report contents, Δ bookkeeping, instruction swap, EditReward files."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from storage.demo_edits import DemoTask, demo_task
from storage.demo_kinds import EDIT_KINDS
from storage.demo_votes import demo_votes
from tests.trainer.conftest import ARCHITECTURES, picture
from trainer.evaluate import (
    EvalPair,
    editreward_pairs,
    evaluate_pairs,
    score_images,
    score_pairs,
    swap_instruction,
    swap_pairs,
)
from trainer.model import JointRewardModel
from trainer.prompting import build_example, collate

REPORT_KEYS = {
    "n_votes",
    "n_strict",
    "n_tasks",
    "pairwise_accuracy",
    "accuracy_with_ties",
    "calibration",
    "effective_rank",
    "group_accuracy",
    "instruction_swap",
    "bootstrap",
    "n_pairs",
    "n_scored",
    "heldout_accuracy",
}
DARKEN = {"flaw": "wrong_param", "edits": [{"kind": "darken", "params": {}, "strength": 1.0}]}
BRIGHTEN = {"flaw": "none", "edits": [{"kind": "brighten", "params": {}, "strength": 1.0}]}


def grey(level: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A solid grey picture: its level is recoverable from the processor's pixel values."""
    return Image.new("RGB", size, (level, level, level))


def demo_pairs(task_indices: range, size: int = 64) -> list[EvalPair]:
    """One EvalPair per simulated vote on demo tasks, with the candidates' demo extras."""
    pairs = []
    for index in task_indices:
        task = demo_task(0, index, size=size)
        for vote in demo_votes(task):
            pairs.append(pair_of(task, vote.left, vote.right, vote.choice))
    return pairs


def pair_of(task: DemoTask, left: int, right: int, label: str) -> EvalPair:
    shown_left, shown_right = task.candidates[left], task.candidates[right]
    return EvalPair(
        task_id=task.index + 1,
        task_key=task.external_id,
        instruction=task.instruction,
        source=task.source,
        left=shown_left.image,
        right=shown_right.image,
        label=label,
        left_candidate_id=100 * task.index + left,
        right_candidate_id=100 * task.index + right,
        left_extra=shown_left.extra(),
        right_extra=shown_right.extra(),
    )


def known_scores(monkeypatch, model: JointRewardModel, reads_instruction: bool = False) -> list[int]:
    """Run the real forward, then replace each reward by (grey level of the edited image) / 255.

    With `reads_instruction`, the sign flips when the prompt asks to darken. Returns the list of batch sizes seen.
    """
    darken = EDIT_KINDS["darken"].phrasings
    real_forward, batch_sizes = model.forward, []
    image_processor = model.processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)

    def forward(batch, *, with_lm):
        out = real_forward(batch, with_lm=with_lm)
        pixels = batch.extras["pixel_values"][1::2]  # (B, 3, S, S): each sequence's edited image
        levels = ((pixels * std + mean) * 255).mean(dim=(1, 2, 3)).round()  # (B,)
        texts = model.processor.tokenizer.batch_decode(batch.input_ids, skip_special_tokens=True)
        signs = [-1.0 if reads_instruction and any(p in text for p in darken) else 1.0 for text in texts]
        batch_sizes.append(len(batch))
        return dataclasses.replace(out, rewards=levels / 255 * torch.tensor(signs))

    monkeypatch.setattr(model, "forward", forward)
    return batch_sizes


# --- the report ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_report_has_every_key_and_finite_numbers(make_model, name):
    model = make_model(name)
    pairs = demo_pairs(range(4))
    report = evaluate_pairs(model, pairs, batch_size=8, n_bootstrap=50)
    assert set(report) >= REPORT_KEYS
    json.dumps(report, allow_nan=False)  # NaN would have become None; nothing infinite either
    assert report["n_pairs"] == report["n_votes"] == len(pairs)
    assert report["n_tasks"] == 4
    assert report["heldout_accuracy"] == report["pairwise_accuracy"]["value"]
    assert 0.0 <= report["heldout_accuracy"] <= 1.0
    assert math.isfinite(report["calibration"]["ece"])
    assert report["effective_rank"] > 0
    assert report["instruction_swap"]["n"] > 0  # demo data has wrong-op / wrong-param candidates
    distinct = {(p.task_id, c) for p in pairs for c in (p.left_candidate_id, p.right_candidate_id)}
    assert report["n_scored"] >= len(distinct)


def test_delta_bookkeeping_with_known_scores(make_model, monkeypatch):
    model = make_model("tiny")
    batch_sizes = known_scores(monkeypatch, model)
    source = picture(1)
    lo, mid, hi = grey(50), grey(150), grey(250)

    def task1(left, right, label, ids):  # candidate ids given
        return EvalPair(1, "t1", "make it pop", source, left, right, label, *ids)

    def task2(left, right, label):  # no ids: candidates are told apart by their pixels
        return EvalPair(2, "t2", "make it pop", source, left, right, label)

    a, b = grey(100), grey(200)
    pairs = [
        task1(hi, lo, "left", (3, 1)),  # Δ = +200/255, correct
        task1(mid, hi, "left", (2, 3)),  # Δ = −100/255, wrong
        task1(lo, mid, "right", (1, 2)),  # Δ = −100/255, correct
        task1(mid, lo, "tie", (2, 1)),  # not strict
        task2(a, b, "right"),  # correct
        task2(b, a, "right"),  # wrong
        task2(a.copy(), b, "right"),  # the same pixels as the previous pair's: not scored again
    ]
    scores = score_pairs(model, pairs, batch_size=4, instruction_swap=False)
    expected = np.array([200, -100, -100, 100, -100, 100, -100]) / 255
    np.testing.assert_allclose(scores.delta, expected, atol=1e-6)
    assert scores.n_scored == 5 and sum(batch_sizes) == 5 and max(batch_sizes) <= 4  # 3 + 2 distinct candidates
    assert scores.features.shape == (5, model.hidden_size)

    report = evaluate_pairs(model, pairs, batch_size=4, instruction_swap=False, n_bootstrap=20)
    assert report["heldout_accuracy"] == pytest.approx(4 / 6)  # 6 strict votes, 4 agree
    # Task 1's votes rank mid > hi > lo (transitive); the model ranks hi > mid > lo: 2 of 3 pairs agree.
    assert report["group_accuracy"]["n_groups"] == 1
    assert report["group_accuracy"]["exact"] == 0.0
    assert report["group_accuracy"]["pairwise"] == pytest.approx(2 / 3)
    assert report["instruction_swap"] is None


def test_constant_reward_head_gives_zero_deltas(make_model):
    model = make_model("tiny")
    with torch.no_grad():
        last = model.reward_head[-1]
        last.weight.zero_()
        last.bias.fill_(0.3)  # r ≡ 0.3 whatever the input: every Δ is 0
    report = evaluate_pairs(model, demo_pairs(range(2)), n_bootstrap=20)
    assert report["heldout_accuracy"] == 0.5  # Δ = 0 counts one half
    assert report["instruction_swap"]["both_correct"] == 0.0  # Δ = 0 is neither correct nor a flip


# --- instruction swap ------------------------------------------------------------------------------------------


def _flawed_task(flaw: str) -> tuple[DemoTask, int, int]:
    """The first demo task with a `flaw` candidate: (task, index of the correct edit, index of the flawed one)."""
    for index in range(200):
        task = demo_task(0, index, size=48)
        flaws = [c.flaw for c in task.candidates]
        if flaw in flaws:
            return task, flaws.index("none"), flaws.index(flaw)
    raise AssertionError(f"no demo task with a {flaw} candidate")


@pytest.mark.parametrize("flaw", ["wrong_op", "wrong_param"])
def test_swap_instruction_describes_the_rejected_edit(flaw):
    task, good, bad = _flawed_task(flaw)
    rejected = task.candidates[bad]
    (edit,) = rejected.edits
    phrasings = {p.format(**dict(edit.params)) for p in EDIT_KINDS[edit.kind].phrasings}
    for pair in (pair_of(task, good, bad, "left"), pair_of(task, bad, good, "right")):
        (swap,) = swap_pairs([pair])
        assert swap.chosen == pair.label
        assert swap.instruction in phrasings and swap.instruction != task.instruction
    # Deterministic: the same rejected candidate always gets the same phrasing (so it is scored once).
    assert swap_instruction(rejected.extra(), seed="x") == swap_instruction(rejected.extra(), seed="x")


def test_swap_skips_pairs_without_the_information():
    task, good, bad = _flawed_task("wrong_op")
    assert swap_pairs([pair_of(task, good, bad, "tie"), pair_of(task, bad, good, "both_bad")]) == []
    assert swap_pairs([pair_of(task, bad, good, "left")]) == []  # the rejected one is the correct edit
    for other in ("no_op", "partial_strength", "extra_change"):
        other_task, other_good, other_bad = _flawed_task(other)
        assert swap_pairs([pair_of(other_task, other_good, other_bad, "left")]) == []
    source = picture(0)
    plain = EvalPair(1, "t", "make it red", source, grey(10), grey(20), "left")
    assert swap_pairs([plain]) == []
    explicit = dataclasses.replace(plain, right_extra={"swap_instruction": "make it purple"})
    assert swap_pairs([explicit])[0].instruction == "make it purple"  # the generic hook


def test_swap_flips_for_a_scorer_that_reads_the_instruction(make_model, monkeypatch):
    model = make_model("tiny")
    source = picture(2)
    pairs = [
        EvalPair(1, "t1", "Make the image brighter", source, grey(200), grey(60), "left", 1, 2, BRIGHTEN, DARKEN),
        EvalPair(1, "t1", "Make the image brighter", source, grey(60), grey(200), "right", 2, 1, DARKEN, BRIGHTEN),
    ]
    first, second = swap_pairs(pairs)
    assert first.instruction == second.instruction and first.instruction in EDIT_KINDS["darken"].phrasings
    batch_sizes = known_scores(monkeypatch, model, reads_instruction=True)
    report = evaluate_pairs(model, pairs, n_bootstrap=20)
    assert report["instruction_swap"]["n"] == 2
    assert report["instruction_swap"]["original_accuracy"] == 1.0
    assert report["instruction_swap"]["flip_rate"] == 1.0
    assert report["instruction_swap"]["both_correct"] == 1.0
    assert sum(batch_sizes) == 4  # 2 candidates × (original + swapped instruction), each once


def test_swap_does_not_flip_for_a_scorer_blind_to_the_instruction(make_model, monkeypatch):
    model = make_model("tiny")
    known_scores(monkeypatch, model, reads_instruction=False)
    pair = EvalPair(1, "t1", "Make the image brighter", picture(2), grey(200), grey(60), "left", 1, 2, None, DARKEN)
    swap = evaluate_pairs(model, [pair], n_bootstrap=20)["instruction_swap"]
    assert (swap["original_accuracy"], swap["flip_rate"], swap["both_correct"], swap["n"]) == (1.0, 0.0, 0.0, 1)


def test_no_swap_pairs_reports_n_zero(make_model):
    model = make_model("tiny")
    pairs = [EvalPair(1, "t", "make it red", picture(3), picture(4), picture(5), "left")]
    report = evaluate_pairs(model, pairs, n_bootstrap=20)
    assert report["instruction_swap"]["n"] == 0
    assert report["instruction_swap"]["both_correct"] is None
    json.dumps(report, allow_nan=False)


# --- score_images ----------------------------------------------------------------------------------------------


def test_score_images_matches_the_model_and_restores_train_mode(make_model):
    model = make_model("tiny")
    source, edited = picture(7), [picture(8), picture(9), picture(10)]
    model.train()
    scores = score_images(model, source=source, instruction="make it red", edited=edited, batch_size=2)
    assert model.training  # the caller's mode is restored
    model.eval()
    batch = collate(
        [build_example(model.processor, source=source, edited=e, instruction="make it red") for e in edited],
        model.processor,
    )
    np.testing.assert_allclose(scores, model.score(batch).tolist(), atol=1e-5)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    with pytest.raises(ValueError, match="batch_size"):
        score_images(model, source=source, instruction="make it red", edited=edited, batch_size=0)
    with pytest.raises(ValueError, match="at least one pair"):
        evaluate_pairs(model, [])


def test_eval_pair_refuses_unknown_labels():
    with pytest.raises(ValueError, match="label"):
        EvalPair(1, "t", "make it red", grey(1), grey(2), grey(3), "A")


# --- EditReward files ------------------------------------------------------------------------------------------


@pytest.fixture
def editreward_dir(tmp_path):
    images = tmp_path / "images"
    (images / "edits").mkdir(parents=True)
    picture(1).save(images / "src.png")
    for name, seed in (("a", 2), ("b", 3), ("c", 4)):
        picture(seed).save(images / "edits" / f"{name}.png")
    return tmp_path


def write_records(folder, records) -> str:
    path = folder / "records.json"
    path.write_text(json.dumps(records))
    return path


def record(path1: str = "edits/a.png", path2: str = "edits/b.png", prompt: str = "make it red", **extra) -> dict:
    base = {"prompt": prompt, "path_src": "src.png", "path1": path1, "path2": path2, "model1": "m1", "model2": "m2"}
    return {**base, **extra}


def test_editreward_pairs_parses_a_file(editreward_dir, make_model):
    records = [
        record(),
        record("edits/c.png", "edits/a.png", tie_case=1),
        record(prompt="make it blue", tie_case=False),
    ]
    pairs = editreward_pairs(write_records(editreward_dir, records), editreward_dir / "images")
    assert [p.label for p in pairs] == ["left", "tie", "left"]
    assert [p.task_id for p in pairs] == [1, 1, 2]  # a task is (source, prompt)
    assert pairs[0].instruction == "make it red" and pairs[2].instruction == "make it blue"
    assert pairs[0].left_extra == {"model": "m1", "path": "edits/a.png"}
    assert pairs[0].left.mode == "RGB" and pairs[0].left.size == picture(2).size
    assert pairs[0].source is pairs[1].source  # each file decoded once
    report = evaluate_pairs(make_model("tiny-idefics3"), pairs, n_bootstrap=20)
    assert report["n_pairs"] == 3 and report["n_scored"] == 5  # (a, b) and (c, a) on task 1, (a, b) on task 2


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [record(), {k: v for k, v in record().items() if k != "model2"}],
            r"records\.json row 2: missing key 'model2'",
        ),
        ([record(), record(), record(path2="edits/zzz.png")], r"row 3: 'path2' 'edits/zzz.png'.* is missing"),
        ([record(path1="../outside.png")], r"row 1: 'path1' must be a path inside the images root"),
        ([record(tie_case="yes")], r"row 1: 'tie_case' must be"),
        ([record(prompt="  ")], r"row 1: 'prompt' must be a non-empty string"),
        ([record(model2=None)], r"row 1: 'model2' must be a non-empty string"),
        ([record(), "not a record"], r"row 2: expected a JSON object"),
        ({"prompt": "x"}, r"expected a JSON list"),
    ],
)
def test_editreward_pairs_refuses_malformed_rows(editreward_dir, records, message):
    with pytest.raises(ValueError, match=message):
        editreward_pairs(write_records(editreward_dir, records), editreward_dir / "images")


def test_editreward_pairs_refuses_unreadable_images_and_missing_paths(editreward_dir):
    (editreward_dir / "images" / "edits" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    path = write_records(editreward_dir, [record(path2="edits/broken.png")])
    with pytest.raises(ValueError, match=r"row 1: 'path2' .*not a readable image"):
        editreward_pairs(path, editreward_dir / "images")
    with pytest.raises(FileNotFoundError):
        editreward_pairs(editreward_dir / "nope.json", editreward_dir / "images")
    with pytest.raises(FileNotFoundError):
        editreward_pairs(path, editreward_dir / "no-images")
