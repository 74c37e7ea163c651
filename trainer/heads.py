"""Extra heads on the reward head's features: an uncertainty head (log σ) and per-dimension score heads.

Every head reads the same tensor as `reward_head`: the last-layer hidden state at the score position, from the one
forward (`JointRewardModel.forward`). The reward head itself is untouched (its module, its weights, its file), so a
preset's pretrained head and every checkpoint saved before these heads existed load as they did. The extra heads are
optional modules (`JRMConfig.uncertainty_head`, `JRMConfig.dimension_heads`), saved beside the reward head
(`EXTRA_HEADS_FILE`, or in the LoRA adapter file through peft's `modules_to_save`). See docs/training.md, "The
uncertainty and dimension heads".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

# log σ is bounded smoothly to this range: σ ∈ [e^-4, e^1] ≈ [0.018, 2.7]. At the floor a pair's probability is the
# plain Davidson one (NLL within 1e-3), so nothing is gained by going lower; the ceiling keeps a model from
# "explaining" votes away as noise (σ = 2.7 on both sides blurs Δ by s = 3.8, about the range of the demo's margins)
# and keeps the Gauss–Hermite expectation of the loss accurate (losses.HERMITE_NODES).
LOG_SIGMA_RANGE = (-4.0, 1.0)
LOG_SIGMA_INIT = -1.0  # σ ≈ 0.37 at the start: the loss is within a few per cent of the plain Davidson one
# The Annotate tab's per-dimension comparison (app.handlers.annotate.DIMENSIONS / DIMENSION_RANGE; a test keeps
# them equal): -2 the left edit as shown is much better … 0 the same … +2 the right one much better.
DIMENSIONS = ("instruction_following", "quality", "preservation")
DIMENSION_RANGE = (-2.0, 2.0)
UNCERTAINTY_HEAD_NAME = "uncertainty_head"  # attributes of JointRewardModel; peft saves them via modules_to_save
DIMENSION_HEAD_NAME = "dimension_head"
EXTRA_HEADS_FILE = "extra_heads.safetensors"


def make_mlp(hidden_size: int, head_hidden: int, activation: str, out_features: int) -> nn.Sequential:
    """Linear(H, h) → activation → Linear(h, out)."""
    act = nn.GELU() if activation == "gelu" else nn.Tanh()
    return nn.Sequential(nn.Linear(hidden_size, head_hidden), act, nn.Linear(head_hidden, out_features))


def bounded_log_sigma(raw: torch.Tensor) -> torch.Tensor:
    """A soft clamp of any raw value into `LOG_SIGMA_RANGE` (a sigmoid: no dead gradient at the edges)."""
    low, high = LOG_SIGMA_RANGE
    return low + (high - low) * torch.sigmoid(raw)


class UncertaintyHead(nn.Module):
    """log σ (B,) of the reward from the score-position features (B, H), in `LOG_SIGMA_RANGE`."""

    def __init__(self, hidden_size: int, head_hidden: int, activation: str):
        super().__init__()
        self.mlp = make_mlp(hidden_size, head_hidden, activation, 1)
        # Start every input at σ = e^LOG_SIGMA_INIT: the last layer is zero (it still gets gradients) and its bias
        # is the raw value that `bounded_log_sigma` maps to the initial log σ.
        low, high = LOG_SIGMA_RANGE
        share = (LOG_SIGMA_INIT - low) / (high - low)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, math.log(share / (1 - share)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return bounded_log_sigma(self.mlp(features).squeeze(-1))  # (B,)


@dataclass
class RewardScores:
    """What scoring returns from the one forward: μ, and σ and the dimension scores when the model has those heads."""

    mu: torch.Tensor  # (B,) the reward (what `JointRewardModel.score` returns)
    sigma: torch.Tensor | None  # (B,) exp(log σ); None without an uncertainty head
    dimensions: torch.Tensor | None  # (B, D) one score per dimension; None without dimension heads
    dimension_names: tuple[str, ...]  # D names, in the columns' order

    def rows(self) -> list[tuple[float, float | None, dict[str, float] | None]]:
        """Per sequence (μ, σ, {dimension: score}) as Python numbers, copied to the CPU once."""
        mu = self.mu.float().cpu().tolist()
        sigma = [None] * len(mu) if self.sigma is None else self.sigma.float().cpu().tolist()
        dims: list = [None] * len(mu)
        if self.dimensions is not None:
            names = self.dimension_names
            dims = [dict(zip(names, row, strict=True)) for row in self.dimensions.float().cpu().tolist()]
        return list(zip(mu, sigma, dims, strict=True))


def add_extra_heads(model: nn.Module, *, hidden_size: int, head_hidden: int, activation: str) -> None:
    """Attach the heads `model.jrm_config` asks for (after the reward head, so its seeded init is unchanged)."""
    config = model.jrm_config
    uncertainty = UncertaintyHead(hidden_size, head_hidden, activation) if config.uncertainty_head else None
    setattr(model, UNCERTAINTY_HEAD_NAME, uncertainty)
    dims = (
        make_mlp(hidden_size, head_hidden, activation, len(config.dimension_heads)) if config.dimension_heads else None
    )
    setattr(model, DIMENSION_HEAD_NAME, dims)


def extra_head_names(model: nn.Module) -> list[str]:
    """The attribute names of the extra heads `model` has (for peft's modules_to_save and the checkpoint)."""
    return [name for name in (UNCERTAINTY_HEAD_NAME, DIMENSION_HEAD_NAME) if getattr(model, name, None) is not None]


def save_extra_heads(model: nn.Module, folder: Path) -> None:
    """Write the extra heads' weights (keys prefixed by the head's name) to `folder / EXTRA_HEADS_FILE`, if any."""
    state = {
        f"{name}.{key}": value.detach().contiguous().cpu()
        for name in extra_head_names(model)
        for key, value in getattr(model, name).state_dict().items()
    }
    if state:
        save_file(state, folder / EXTRA_HEADS_FILE)


def load_extra_heads(model: nn.Module, folder: Path) -> None:
    """Load the extra heads the config asks for; a checkpoint saved without heads has no file and asks for none."""
    names = extra_head_names(model)
    if not names:
        return
    file = folder / EXTRA_HEADS_FILE
    if not file.is_file():
        raise ValueError(
            f"{folder}: its config has the heads {names} but {EXTRA_HEADS_FILE} is missing; save it again."
        )
    state = load_file(file)
    for name in names:
        prefix = f"{name}."
        getattr(model, name).load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    unknown = sorted(k for k in state if not k.startswith(tuple(f"{n}." for n in names)))
    if unknown:
        raise ValueError(f"{file} holds weights of heads this config does not have: {unknown[:5]}.")


def shown_sign(scores: object, name: str) -> int | None:
    """A vote's rating of dimension `name` as shown: -1 left better, +1 right better, 0 the same, None not rated.

    `scores` is the vote's `dimension_scores` dict or its JSON text (a snapshot row). A value that is not a number in
    `DIMENSION_RANGE` (e.g. an imported absolute score such as {"faithfulness": 4}) counts as not rated.
    """
    if isinstance(scores, str):
        scores = json.loads(scores)
    value = scores.get(name) if isinstance(scores, dict) else None
    low, high = DIMENSION_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        return None
    return (value > 0) - (value < 0)


def dimension_labels(scores: object, names: tuple[str, ...], chosen: str) -> tuple[int | None, ...]:
    """A vote's `dimension_scores` as labels relative to its chosen slot (`chosen`: "left" or "right" as shown):
    per name +1 the chosen edit is better on it, -1 the rejected one, 0 the same (a tie), None not rated (masked)."""
    if isinstance(scores, str):
        scores = json.loads(scores)
    signs = [shown_sign(scores, name) for name in names]
    return tuple(None if sign is None else sign if chosen == "right" else -sign for sign in signs)
