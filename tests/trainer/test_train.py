"""trainer.train: the schedule, the config, the loop (smoke, λ = 0, accumulation, seeds) and save → load → score."""

from __future__ import annotations

import json
import math

import pytest
import torch

from storage.db import transaction
from tests.trainer.conftest import picture
from trainer.data import PairCollator, PairDataset
from trainer.registry import load_scorer, publish_version
from trainer.train import TrainConfig, lr_factor, total_optimizer_steps, train

UNUSED = ("vision_tower.post_layernorm",)  # LLaVA never reads it (docs/method.md §5)
RATIONALES = ["Left made the ball red as asked; right made it blue.", None, "Right is red, left is not."]
CHOICES = ["left", "right", "tie", "left", "both_bad", "right"]


def synthetic_rows(folder, n_votes: int) -> list[dict]:
    """Snapshot-shaped rows over generated pictures (no database): every choice, some without a rationale."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_votes):
        paths = {}
        for key, seed, size in (
            ("source", i // 3, (96, 80)),
            ("left", 100 + i, (80, 96)),
            ("right", 200 + i, (80, 96)),
        ):
            paths[key] = str(folder / f"{key}-{seed}.png")
            picture(seed, size).save(paths[key])
        rows.append(
            {
                "vote_id": i + 1,
                "task_id": i // 3 + 1,
                "task_key": f"k{i // 3}",
                "split": "train",
                "instruction": ["make the ball red", "flip it", "make it brighter"][i % 3],
                "source_sha256": "s",
                "source_path": paths["source"],
                "left_candidate_id": 2 * i + 1,
                "left_sha256": "l",
                "left_path": paths["left"],
                "left_generator": "a",
                "left_extra": "null",
                "right_candidate_id": 2 * i + 2,
                "right_sha256": "r",
                "right_path": paths["right"],
                "right_generator": "b",
                "right_extra": "null",
                "choice": CHOICES[i % len(CHOICES)],
                "rationale": RATIONALES[i % len(RATIONALES)],
                "annotator_id": None,
            }
        )
    return rows


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return synthetic_rows(tmp_path_factory.mktemp("rows"), 8)


def _params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _fast(**overrides) -> TrainConfig:
    values = {"epochs": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "log_every": 1}
    return TrainConfig(**{**values, **overrides})


# --- pure parts ------------------------------------------------------------------------------------------------


def test_lr_schedule_warms_up_then_decays():
    total, warmup = 100, 10
    factors = [lr_factor(s, total_steps=total, warmup_steps=warmup, min_ratio=0.1) for s in range(total)]
    assert factors[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert factors[warmup - 1] == pytest.approx(1.0) and factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :], strict=False))  # monotone decay
    assert lr_factor(total, total_steps=total, warmup_steps=warmup, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(55, total_steps=total, warmup_steps=warmup) == pytest.approx(0.5)  # half way down the cosine
    assert lr_factor(0, total_steps=1, warmup_steps=0) == 1.0


def test_total_steps():
    assert total_optimizer_steps(10, TrainConfig(epochs=2, grad_accum=3)) == 8  # ceil(10 / 3) per epoch
    assert total_optimizer_steps(10, TrainConfig(epochs=2, max_steps=5)) == 5


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("epochs", 0, "epochs"),
        ("batch_size", 2.5, "batch_size"),
        ("lr", 0, "lr must be"),
        ("lr", "fast", "lr must be"),
        ("max_steps", 0, "max_steps"),
        ("warmup_ratio", 1.5, "warmup_ratio"),
        ("mixed_precision", "fp16", "mixed_precision"),
        ("seed", 1.5, "seed"),
    ],
)
def test_config_validation_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match="Unknown TrainConfig fields"):
        TrainConfig.from_dict({"epoch": 1})
    assert TrainConfig.from_dict(TrainConfig(lr=3e-3).to_dict()) == TrainConfig(lr=3e-3)


# --- the loop --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_every_parameter_and_the_loss_move(make_model, rows):
    model = make_model("tiny")
    model.jrm_config.lm_weight = 0.5
    before = _params(model)
    events = []
    result = train(model, rows, config=_fast(epochs=3), progress=events.append)
    assert result.steps == 12 and [e.step for e in events] == list(range(1, 13))
    assert events[-1].progress == 1.0 and events[-1].eta_s == 0.0 and events[0].total_steps == 12
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert all(any(u in n for u in UNUSED) for n in unchanged), unchanged
    assert unchanged, "the unused post_layernorm should not move (no gradient, no weight decay)"
    history = result.history
    assert len(history["total"]) == 12 and any(v > 0 for v in history["lm"])
    assert history["total"][-1] != history["total"][0]
    assert not model.training  # handed back in eval mode
    assert set(events[0].loss) == {"total", "pref", "lm"}


@pytest.mark.slow
def test_lambda_zero_is_the_discriminative_baseline(make_model, rows):
    model = make_model("tiny")
    model.jrm_config.lm_weight = 0.0
    head = model.backbone.get_output_embeddings().weight.detach().clone()
    result = train(model, rows, config=_fast(max_steps=2))
    assert result.history["lm"] == [0.0, 0.0]
    assert result.history["total"] == result.history["pref"]
    assert torch.equal(model.backbone.get_output_embeddings().weight, head)  # the LM head is not trained


@pytest.mark.slow
def test_gradient_accumulation_matches_a_larger_batch(make_model, rows):
    """2 micro-batches of 2 pairs accumulate to the step one batch of 4 takes (λ = 0: a per-pair mean)."""
    deltas = []
    for config in (_fast(batch_size=4, max_steps=1), _fast(batch_size=2, grad_accum=2, max_steps=1)):
        model = make_model("tiny")
        model.jrm_config.lm_weight = 0.0
        before = _params(model)
        result = train(model, rows[:4], config=config)
        assert result.steps == 1
        deltas.append(torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()]))
    cosine = torch.nn.functional.cosine_similarity(deltas[0], deltas[1], dim=0)
    assert cosine > 0.999, cosine
    # A single micro-batch of 2 is a different step.
    model = make_model("tiny")
    model.jrm_config.lm_weight = 0.0
    before = _params(model)
    train(model, rows[:2], config=_fast(batch_size=2, max_steps=1))
    other = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
    assert torch.nn.functional.cosine_similarity(deltas[0], other, dim=0) < 0.99


@pytest.mark.slow
def test_same_seed_same_model_and_the_schedule_is_followed(make_model, rows):
    config = _fast(epochs=2, warmup_ratio=0.25, lr=2e-3, seed=7)
    results, params = [], []
    for _ in range(2):
        model = make_model("tiny")
        results.append(train(model, rows, config=config))
        params.append(_params(model))
    assert results[0].history == results[1].history
    assert all(torch.equal(params[0][n], params[1][n]) for n in params[0])
    expected = [2e-3 * lr_factor(s, total_steps=8, warmup_steps=2, min_ratio=0.1) for s in range(8)]
    assert results[0].history["lr"] == pytest.approx(expected)
    model = make_model("tiny")
    other = train(model, rows, config=TrainConfig(**{**config.to_dict(), "seed": 8}))
    assert other.history["total"] != results[0].history["total"]


def test_empty_training_set_is_a_clear_error(make_model):
    with pytest.raises(ValueError, match="No training votes"):
        train(make_model("tiny"), [], config=_fast())


@pytest.mark.slow
def test_save_load_score_identical_through_the_registry(make_model, rows, factory, settings):
    model = make_model("tiny")
    train(model, rows, config=_fast(max_steps=2))
    dataset = PairDataset(rows[:3], model.processor)
    batch = PairCollator(model.processor)([dataset[i] for i in range(3)]).batch
    expected = model.score(batch)
    with transaction(factory) as session:
        version = publish_version(
            session,
            save=model.save,
            settings=settings,
            backbone="tiny",
            config={"jrm": model.jrm_config.to_dict()},
            metrics={"heldout_accuracy": 0.5},
        )
        version.status = "active"
    with factory() as session:
        loaded_version, scorer = load_scorer(session, settings=settings)
    assert loaded_version.name == version.name and scorer.lm_head_dropped  # the scorer never holds the LM head
    assert torch.equal(scorer.score(batch), expected)
    assert json.loads((settings.registry_dir / version.name / "jrm_config.json").read_text())["jrm"]["lm_weight"] == (
        model.jrm_config.lm_weight
    )
    assert not math.isnan(float(expected.sum()))
