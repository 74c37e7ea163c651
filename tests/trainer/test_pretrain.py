"""The pretraining recipe: grammar, stream, loop, checkpoints and resume (the shipped preset: test_preset.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from storage.demo_edits import demo_task
from storage.demo_kinds import EDIT_KINDS, sample_spec
from trainer.backbones import load_backbone
from trainer.edit_view import EditViewProcessor
from trainer.model import JointRewardModel, JRMConfig
from trainer.pretrain import phrasing
from trainer.pretrain.checkpoint import load_checkpoint
from trainer.pretrain.config import PretrainConfig
from trainer.pretrain.loop import Pretrainer, encode_step, probe_metrics, step_loss
from trainer.pretrain.recipe import build_model, pretrain
from trainer.pretrain.stream import HELDOUT_PHOTOS, step_data, stream_task

ROOT = Path(__file__).resolve().parents[2]
# A recipe small enough for tests: 16 px images (4 patches), one task a step.
SMALL = {"image_size": 16, "patch_size": 8, "tasks_per_step": 1, "probe_tasks": 8, "eval_every": 4, "log_every": 2}


def small_config(**changes) -> PretrainConfig:
    return PretrainConfig(**{**SMALL, "steps": 6, "checkpoint_every": 3, **changes})


# --- the grammar -----------------------------------------------------------------------------------------------


def test_grammar_covers_every_edit_kind_with_valid_placeholders():
    phrasing.check_grammar()
    assert set(phrasing.CORES) == set(EDIT_KINDS)


def test_instructions_vary_and_never_repeat_a_demo_template():
    rng = random.Random(0)
    texts = set()
    for _ in range(400):
        spec = sample_spec(rng.choice(tuple(EDIT_KINDS)), rng)
        text = phrasing.instruction(spec, rng)
        assert not phrasing.is_demo_phrasing(text)
        texts.add(text)
    assert len(texts) > 350  # a grammar, not four templates per kind
    for kind in EDIT_KINDS.values():  # the check itself recognises every demo template
        params = {name: choices[0] for name, choices in kind.params}
        assert phrasing.is_demo_phrasing(kind.phrasings[0].format(**params).lower() + "!")


def test_heldout_frames_are_never_used_for_training():
    frames = [f.replace("{core}", "").replace("{it}", "").replace("{pp}", "") for f in phrasing.HELDOUT_FRAMES]
    markers = [m.strip(" .,:") for m in frames]
    rng = random.Random(1)
    for _ in range(300):
        spec = sample_spec(rng.choice(tuple(EDIT_KINDS)), rng)
        text = phrasing.instruction(spec, rng, typos=False).lower()
        assert not any(marker in text for marker in markers if len(marker) > 3), text
    heldout = phrasing.heldout_instruction(sample_spec("tint", rng), rng).lower()
    assert any(marker in heldout for marker in markers)


def test_typos_change_one_word():
    rng = random.Random(3)
    text = "Please brighten the picture."
    typo = phrasing._typo(text, rng)
    assert typo != text and len(typo.split()) == len(text.split())


# --- the stream ------------------------------------------------------------------------------------------------


def test_stream_is_a_pure_function_of_seed_and_step():
    a, b = step_data(0, 5, 2, swap_share=0.0), step_data(0, 5, 2, swap_share=0.0)
    assert [p.chosen.tobytes() for p in a.preferences] == [p.chosen.tobytes() for p in b.preferences]
    assert [c.caption for c in a.captions] == [c.caption for c in b.captions]
    other = step_data(0, 6, 2, swap_share=0.0)
    assert [p.source.tobytes() for p in a.preferences] != [p.source.tobytes() for p in other.preferences]


def test_stream_holds_out_photos_and_demo_tasks():
    photos = {stream_task(0, step, 0).photo for step in range(120)}
    assert photos.isdisjoint(HELDOUT_PHOTOS) and len(photos) >= 6
    demo_sources = {demo_task(0, i).source.tobytes() for i in range(40)}
    assert all(stream_task(0, step, 0).source.tobytes() not in demo_sources for step in range(40))


def test_stream_objectives_are_labelled_by_quality_and_instruction():
    for step in range(20):
        task = stream_task(0, step, 0)
        data = step_data(0, step, 1, swap_share=0.0)
        pref, check, caption = data.preferences[0], data.checks[0], data.captions[0]
        quality = {c.image.tobytes(): c.quality for c in task.candidates}
        assert quality[pref.chosen.tobytes()] >= quality[pref.rejected.tobytes()]
        assert pref.is_tie == (quality[pref.chosen.tobytes()] - quality[pref.rejected.tobytes()] <= 0.12)
        assert check.chosen is check.rejected and check.chosen_instruction == task.instruction
        assert check.rejected_instruction != task.instruction and not check.is_tie
        assert caption.caption.endswith(".") and caption.caption == task_caption(task, caption.edited)


def test_instruction_swaps_flip_the_order_of_two_pictures_with_the_instruction():
    """A swap pair: a wrong-op / wrong-param candidate under the instruction it does follow, over the correct edit."""
    swaps = 0
    for step in range(40):
        task = stream_task(0, step, 0)
        pref = step_data(0, step, 1, swap_share=1.0).preferences[0]
        by_image = {c.image.tobytes(): c for c in task.candidates}
        if not pref.is_swap:  # this task has no candidate that follows another instruction
            assert not any(c.flaw in ("wrong_op", "wrong_param") and len(c.edits) == 1 for c in task.candidates)
            continue
        swaps += 1
        chosen, rejected = by_image[pref.chosen.tobytes()], by_image[pref.rejected.tobytes()]
        assert rejected.flaw == "none" and chosen.flaw in ("wrong_op", "wrong_param")
        assert pref.chosen_instruction == pref.rejected_instruction != task.instruction and not pref.is_tie
    assert swaps >= 10
    plain = step_data(0, 3, 4, swap_share=0.0)
    assert not any(p.is_swap for p in plain.preferences)


def task_caption(task, image) -> str:
    return next(c.describe() for c in task.candidates if c.image.tobytes() == image.tobytes()) + "."


def test_the_first_caption_token_names_the_edit(small_model_factory):
    """The score position predicts the first target token: it must differ between edits, not be a space."""
    model = small_model_factory(small_config())
    firsts = set()
    for step in range(30):
        example = encode_step(model, step_data(0, step, 1, swap_share=0.0)).batch
        labels = example.labels[-1]
        firsts.add(int(labels[labels != -100][0]))
    assert len(firsts) >= 8


# --- the loop --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model_factory():
    def make(config: PretrainConfig):
        torch.manual_seed(0)
        return build_model(config)

    return make


def test_a_few_steps_move_every_trainable_weight(small_model_factory, tmp_path):
    config = small_config(steps=3, lr=3e-3, warmup_ratio=0.0)
    model = small_model_factory(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = Pretrainer(model, config, tmp_path, log=lambda line: None).run()
    assert state.step == 3 and len(state.history["pref"]) >= 1
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    # LLaVA never uses its post_layernorm; the head's output bias cancels in every reward difference.
    assert all("post_layernorm" in n or n == "reward_head.2.bias" for n in unchanged), unchanged
    parts = step_loss(model, encode_step(model, step_data(0, 99, 1, swap_share=0.0)), config)[1]
    assert set(parts) == {"total", "pref", "check", "caption"} and all(v == v for v in parts.values())
    metrics = probe_metrics(model, [encode_step(model, step_data(0, 0, 4, swap_share=0.5, namespace="probe"))])
    assert 0 <= metrics["probe_pref_accuracy"] <= 1 and 0 <= metrics["probe_check_accuracy"] <= 1
    assert 0 <= metrics["probe_swap_accuracy"] <= 1  # reported apart from the other preferences when drawn
    plain = probe_metrics(model, [encode_step(model, step_data(0, 0, 4, swap_share=0.0, namespace="probe"))])
    assert "probe_swap_accuracy" not in plain


def test_resume_continues_exactly_where_it_stopped(small_model_factory, tmp_path):
    config = small_config()
    straight = small_model_factory(config)
    Pretrainer(straight, config, tmp_path / "a", log=lambda line: None).run()

    class Killed(Exception):
        pass

    def die_at_step_4(line: str) -> None:
        if json.loads(line).get("step") == 4:
            raise Killed  # after the checkpoint at step 3, as a kill -9 would leave it

    with pytest.raises(Killed):
        Pretrainer(small_model_factory(config), config, tmp_path / "b", log=die_at_step_4).run()
    resumed = small_model_factory(config)
    trainer = Pretrainer(resumed, config, tmp_path / "b", log=lambda line: None)
    assert trainer.resume() and trainer.state.step == 3
    trainer.run()
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_checkpoint_of_other_settings_is_refused(small_model_factory, tmp_path):
    config = small_config(steps=3)
    model = small_model_factory(config)
    trainer = Pretrainer(model, config, tmp_path, log=lambda line: None)
    trainer.run()
    other = small_config(lr=5e-4)
    with pytest.raises(ValueError, match="other settings.*lr"):
        load_checkpoint(tmp_path, model, trainer.optimizer, other)


def test_pretrain_writes_a_preset_with_a_manifest(tmp_path):
    manifest = pretrain(small_config(steps=4), tmp_path / "preset", command="test")
    out = tmp_path / "preset"
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "reward_head.safetensors", "tokenizer.json", "jrm_preset.json"} <= names
    saved = json.loads((out / "jrm_preset.json").read_text())
    assert saved["steps"] == 4 and saved["seed"] == 0 and saved["command"] == "test"
    assert set(saved["files"]) == names - {"jrm_preset.json", ".work"}
    assert saved["recipe_sha256"] == manifest["recipe_sha256"] and len(saved["data_sha256"]) == 64
    assert saved["heldout_photos"] == list(HELDOUT_PHOTOS) and saved["metrics"]["probes"]
    with pytest.raises(ValueError, match="--resume"):
        pretrain(small_config(steps=4), out)
    loaded = load_backbone(str(out))  # the preset sees edits in the edit view, and so does a version saved from it
    assert isinstance(loaded.processor, EditViewProcessor)
    model = JointRewardModel(loaded, JRMConfig(backbone=str(out)))
    reloaded = JointRewardModel.load(model.save(tmp_path / "version"))
    assert isinstance(reloaded.processor, EditViewProcessor)


def test_an_out_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "preset"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        pretrain(small_config(steps=1), target)
    assert target.read_text() == "not a folder"


@pytest.mark.slow
def test_cli_resumes_after_kill_9(tmp_path):
    """The recipe for a few steps, killed with SIGKILL after its first checkpoint, then resumed to the end."""
    out = tmp_path / "preset"
    env = {**os.environ, "JRM_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "trainer", "pretrain", "--out", str(out), "--steps", "60"]
    small = ["--checkpoint-every", "2", "--tasks-per-step", "1"]
    process = subprocess.Popen(base + small, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / ".work" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 240
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 0 < killed_at < 60 and not (out / "jrm_preset.json").exists()
    done = subprocess.run(base + small + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "jrm_preset.json").read_text())
    assert manifest["steps"] == 60 and manifest["resumed_from_step"] >= killed_at
    assert "--resume" in manifest["command"]
