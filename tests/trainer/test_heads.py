"""The uncertainty and dimension heads: config, one forward, training, save/load (full and LoRA), old checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from storage.settings import load_settings
from tests.trainer.conftest import example, picture
from trainer.data import PairCollator, PairDataset, eval_pairs, rows_fingerprint
from trainer.heads import (
    DIMENSION_HEAD_NAME,
    DIMENSIONS,
    EXTRA_HEADS_FILE,
    LOG_SIGMA_INIT,
    UNCERTAINTY_HEAD_NAME,
)
from trainer.model import JointRewardModel, JRMConfig, apply_lora
from trainer.prompting import collate
from trainer.scorer import load_scorer_model
from trainer.train import TrainConfig, train

HEADS = {"uncertainty_head": True, "dimension_heads": DIMENSIONS}
NEW_FIELDS = ("uncertainty_head", "dimension_heads", "dimension_weight")


def heads_model(backbone_cache, name: str = "tiny", **overrides) -> JointRewardModel:
    torch.manual_seed(0)
    return JointRewardModel.from_config(JRMConfig(backbone=name, **{**HEADS, **overrides}), cache_dir=backbone_cache)


def batch_of(model: JointRewardModel):
    return collate([example(model, i) for i in range(3)], model.processor)


def rows(tmp_path: Path, n: int = 8) -> list[dict]:
    """Vote rows with every kind of dimension rating: all three, some, none, out of range."""
    ratings = [
        {"instruction_following": -2, "quality": 0, "preservation": 1},
        {"quality": 2},
        None,
        {"instruction_following": 1.5, "preservation": -1, "faithfulness": 4},
    ]
    out = []
    for i in range(n):
        paths = []
        for j, size in enumerate(((96, 80), (80, 96), (80, 96))):
            path = tmp_path / f"{i}-{j}.png"
            picture(i * 3 + j, size).save(path)
            paths.append(str(path))
        scores = ratings[i % len(ratings)]
        out.append(
            {
                "source_path": paths[0],
                "left_path": paths[1],
                "right_path": paths[2],
                "instruction": "make the ball red",
                "choice": ("left", "right", "tie", "both_bad")[i % 4],
                "rationale": None,
                "dimension_scores": None if scores is None else json.dumps(scores),
            }
        )
    return out


def scores_of(model: JointRewardModel, batch):
    out = model.score_all(batch)
    return out.mu, out.sigma, out.dimensions


# ---------------------------------------------------------------------------------------------------- config


def test_config_switches_validate_and_round_trip():
    config = JRMConfig(backbone="tiny", uncertainty_head=True, dimension_heads=["quality"], dimension_weight=1.0)
    assert config.dimension_heads == ("quality",)
    assert JRMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    defaults = JRMConfig()
    assert not defaults.uncertainty_head and defaults.dimension_heads == ()  # off: older checkpoints have none
    for bad, message in (
        ({"dimension_heads": ("quality", "quality")}, "distinct names"),
        ({"dimension_heads": ("image quality",)}, "distinct names"),
        ({"dimension_weight": -0.1}, "dimension_weight"),
        ({"dimension_heads": ("quality",), "tie_nu": 0.0}, "tie_nu > 0"),
        ({"uncertainty_head": 1}, "uncertainty_head"),
    ):
        with pytest.raises(ValueError, match=message):
            JRMConfig(**bad)


# ---------------------------------------------------------------------------------------------------- forward


def test_one_forward_gives_mu_sigma_and_dimension_scores(backbone_cache, make_model):
    model = heads_model(backbone_cache).eval()
    batch = batch_of(model)
    out = model(batch, with_lm=False)
    assert out.rewards.shape == (3,) and out.log_sigma.shape == (3,) and out.dimension_scores.shape == (3, 3)
    torch.testing.assert_close(out.log_sigma, torch.full((3,), LOG_SIGMA_INIT))  # the head's start: σ = e^-1
    mu, sigma, dims = scores_of(model, batch)
    torch.testing.assert_close(mu, model.score(batch))
    torch.testing.assert_close(sigma, out.log_sigma.exp())
    rows_out = model.score_all(batch).rows()
    assert (
        len(rows_out) == 3
        and rows_out[1][0] == pytest.approx(float(mu[1]))
        and rows_out[1][2].keys() == set(DIMENSIONS)
    )
    plain = make_model("tiny")  # same seed, no heads: no extra modules, no extra outputs
    assert getattr(plain, UNCERTAINTY_HEAD_NAME) is None and getattr(plain, DIMENSION_HEAD_NAME) is None
    assert plain.score_all(batch).sigma is None and plain.score_all(batch).dimensions is None
    for (name, p), (_, q) in zip(
        plain.reward_head.state_dict().items(), model.reward_head.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name  # the heads are created after the reward head: its seeded init is the same


def test_the_pretrained_reward_head_still_loads_with_heads_on(backbone_cache):
    model = heads_model(backbone_cache, name="tiny-edit")
    shipped = load_file(Path(__file__).resolve().parents[2] / "trainer/presets/tiny-edit/reward_head.safetensors")
    assert all(torch.equal(model.reward_head.state_dict()[k], v) for k, v in shipped.items())


# ---------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_training_steps_move_the_heads(backbone_cache, tmp_path, finetune):
    model = heads_model(backbone_cache)
    if finetune == "lora":
        apply_lora(model, rank=2, alpha=4, target_modules=("q_proj", "v_proj"), dropout=0.0)
    heads = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "_head" in n}
    assert any(UNCERTAINTY_HEAD_NAME in n for n in heads) and any(DIMENSION_HEAD_NAME in n for n in heads)
    result = train(model, rows(tmp_path), config=TrainConfig(epochs=3, max_steps=3, batch_size=4, lr=1e-2, log_every=1))
    unchanged = [n for n, p in model.named_parameters() if n in heads and torch.equal(p, heads[n])]
    # A pairwise loss sees only chosen − rejected, so an output bias gets no gradient (the reward head's moves only by
    # rounding: + g and − g summed in another order); the dimension head's may stay exactly where it started.
    assert all(n.startswith(DIMENSION_HEAD_NAME) and n.endswith("2.bias") for n in unchanged) and result.steps == 3


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_save_and_load_give_the_same_mu_sigma_and_dimensions(backbone_cache, tmp_path, finetune):
    model = heads_model(backbone_cache)
    if finetune == "lora":
        apply_lora(model, rank=2, alpha=4, target_modules=("q_proj",), dropout=0.0)
    train(model, rows(tmp_path), config=TrainConfig(epochs=1, max_steps=2, batch_size=4, lr=1e-2))
    model.eval()
    batch = batch_of(model)
    model.save(tmp_path / "jrm")
    if finetune == "lora":
        saved = load_file(tmp_path / "jrm" / "adapter.safetensors")
        assert any(UNCERTAINTY_HEAD_NAME in k for k in saved) and any(DIMENSION_HEAD_NAME in k for k in saved)
    else:
        assert (tmp_path / "jrm" / EXTRA_HEADS_FILE).is_file()
    data = tmp_path / "data"
    data.mkdir()
    (data / "backbones").symlink_to(backbone_cache, target_is_directory=True)
    scorer = load_scorer_model(tmp_path / "jrm", settings=load_settings(environ={}, data_dir=data), device="cpu")
    loaded = JointRewardModel.load(tmp_path / "jrm", cache_dir=backbone_cache)
    expected = scores_of(model, batch)
    for other in (loaded, scorer):
        for got, want in zip(scores_of(other, batch), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_an_old_checkpoint_without_heads_still_loads_and_scores(make_model, backbone_cache, tmp_path):
    model = make_model("tiny")
    model.save(tmp_path / "old")
    meta_file = tmp_path / "old" / "jrm_config.json"
    meta = json.loads(meta_file.read_text())
    for name in NEW_FIELDS:  # as written before the heads existed
        del meta["jrm"][name]
    meta_file.write_text(json.dumps(meta))
    loaded = JointRewardModel.load(tmp_path / "old", cache_dir=backbone_cache)
    batch = batch_of(model)
    scores = loaded.score_all(batch)
    assert scores.sigma is None and scores.dimensions is None
    torch.testing.assert_close(scores.mu, model.score(batch), rtol=0, atol=0)


def test_a_checkpoint_whose_config_has_heads_needs_their_weights(backbone_cache, tmp_path):
    heads_model(backbone_cache).save(tmp_path / "jrm")
    (tmp_path / "jrm" / EXTRA_HEADS_FILE).unlink()
    with pytest.raises(ValueError, match=f"{EXTRA_HEADS_FILE} is missing"):
        JointRewardModel.load(tmp_path / "jrm", cache_dir=backbone_cache)


# ---------------------------------------------------------------------------------------------------- data


def test_pair_batches_carry_dimension_labels_relative_to_the_chosen_slot(make_model, tmp_path):
    model = make_model("tiny")
    votes = rows(tmp_path, n=4)
    dataset = PairDataset(votes, model.processor, dimensions=DIMENSIONS)
    pairs = PairCollator(model.processor)([dataset[i] for i in range(4)])
    # vote 0: left chosen, IF −2 (left better) → +1, quality 0 → tie, preservation +1 (right better) → −1
    # vote 1: right chosen, quality +2 (right better) → +1; vote 2: none rated
    # vote 3: both bad (left in the chosen slot), IF 1.5 → −1, preservation −1 → +1; "faithfulness" is not a head
    assert pairs.dimension_labels.tolist() == [[1, 0, -1], [0, 1, 0], [0, 0, 0], [-1, 0, 1]]
    assert pairs.dimension_mask.tolist() == [
        [True, True, True],
        [False, True, False],
        [False, False, False],
        [True, False, True],
    ]
    plain = PairCollator(model.processor)([PairDataset(votes, model.processor)[0]])
    assert plain.dimension_labels is None and plain.dimension_mask is None  # no heads: nothing carried
    assert eval_pairs(votes_with_ids(votes))[0].dimension_scores == json.loads(votes[0]["dimension_scores"])


def votes_with_ids(votes: list[dict]) -> list[dict]:
    extra = {"task_id": 1, "task_key": "k", "label": None, "left_candidate_id": 1, "right_candidate_id": 2}
    return [{**extra, **row, "left_extra": "null", "right_extra": "null"} for row in votes]


def test_rows_without_dimension_scores_keep_their_fingerprint():
    row = {"vote_id": 1, "choice": "left", "rationale": None}
    assert rows_fingerprint([row]) == rows_fingerprint([{**row, "dimension_scores": None}])
    assert rows_fingerprint([row]) != rows_fingerprint([{**row, "dimension_scores": '{"quality": 1}'}])
