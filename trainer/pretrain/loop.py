"""Pretraining's loop: one forward per step over every objective's sequences, checkpoints, resume, probe metrics.

It shares the fine-tune's parts (`JointRewardModel.forward`, `prompting.build_example`/`collate`, `losses`,
`train.make_optimizer` and `lr_factor`) but is its own loop: its data is a stream, not a snapshot, and a step mixes
three objectives. See docs/training.md, "The pretrained preset".
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainer.losses import bradley_terry, davidson_nll, joint_loss
from trainer.model import JointRewardModel
from trainer.pretrain.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from trainer.pretrain.config import PretrainConfig
from trainer.pretrain.stream import StepData, step_data
from trainer.prompting import Batch, build_example, collate
from trainer.train import TrainConfig, lr_factor, make_optimizer

PROBE_NAMESPACE = "jrm-pretrain-probe"  # the probe set's own stream: never trained on
CURVES = ("step", "total", "pref", "check", "caption", "lr")


@dataclass
class StepBatch:
    """One step's sequences: chosen pairs (preferences, then checks), rejected pairs, then captions."""

    batch: Batch
    is_tie: torch.Tensor  # (P + C,)
    is_swap: torch.Tensor  # (P + C,): instruction swaps among the preferences
    n_preferences: int
    n_pairs: int


def encode_step(model: JointRewardModel, data: StepData) -> StepBatch:
    """Every example of `data` as one batch for a single forward."""
    processor = model.processor
    pairs = data.preferences + data.checks

    def seq(source, edited, instruction):
        return build_example(processor, source=source, edited=edited, instruction=instruction)

    chosen = [seq(p.source, p.chosen, p.chosen_instruction) for p in pairs]
    rejected = [seq(p.source, p.rejected, p.rejected_instruction) for p in pairs]
    captions = [
        build_example(
            processor,
            source=c.source,
            edited=c.edited,
            instruction="",
            rationale=c.caption,
            caption=True,
            max_rationale_tokens=model.jrm_config.max_rationale_tokens,
        )
        for c in data.captions
    ]
    is_tie = torch.tensor([p.is_tie for p in pairs], dtype=torch.bool)
    is_swap = torch.tensor([p.is_swap for p in pairs], dtype=torch.bool)
    batch = collate(chosen + rejected + captions, processor)
    return StepBatch(batch, is_tie, is_swap, len(data.preferences), len(pairs))


def step_loss(model: JointRewardModel, step: StepBatch, config: PretrainConfig) -> tuple[torch.Tensor, dict]:
    """The step's total loss (with graph) and its parts per objective (floats)."""
    output = model(step.batch, with_lm=config.caption_weight > 0)
    n, p = step.n_pairs, step.n_preferences
    chosen, rejected = output.rewards[:n], output.rewards[n : 2 * n]  # (P + C,) each
    loss = joint_loss(chosen, rejected, step.is_tie, output.lm_loss, config.caption_weight, tie_nu=config.tie_nu)
    delta = (chosen - rejected).detach()
    parts = {
        "total": float(loss.total.detach()),
        "pref": float(davidson_nll(delta[:p], step.is_tie[:p], config.tie_nu).mean()),
        "check": float(bradley_terry(delta[p:]).mean()),
        "caption": float(loss.lm),
    }
    return loss.total, parts


@torch.no_grad()
def probe_metrics(model: JointRewardModel, probe: list[StepBatch]) -> dict[str, float]:
    """Accuracy on the probe set: strict preference pairs ordered right, instruction checks passed, and (when the
    recipe draws them) instruction swaps ordered right, apart from the other preferences."""
    was_training = model.training
    model.eval()
    counts = {"pref": [0, 0], "check": [0, 0], "swap": [0, 0]}  # name: [right, n]
    for step in probe:
        rewards = model.score(step.batch)
        n, p = step.n_pairs, step.n_preferences
        right = rewards[:n] - rewards[n : 2 * n] > 0
        preference = torch.arange(n) < p
        masks = {
            "pref": preference & ~step.is_tie & ~step.is_swap,
            "check": ~preference,
            "swap": preference & step.is_swap,
        }
        for name, mask in masks.items():
            counts[name][0] += int(right[mask].sum())
            counts[name][1] += int(mask.sum())
    model.train(was_training)
    return {f"probe_{name}_accuracy": r / max(n, 1) for name, (r, n) in counts.items() if n or name != "swap"}


def probe_set(model: JointRewardModel, config: PretrainConfig) -> list[StepBatch]:
    """The fixed probe batches (8 tasks each) from the probe stream."""
    return [
        encode_step(model, step_data(config.seed, i, 8, swap_share=config.swap_share, namespace=PROBE_NAMESPACE))
        for i in range(max(1, config.probe_tasks // 8))
    ]


class Pretrainer:
    """State of one pretraining: model, optimizer, curves; `run()` goes on from the last checkpoint."""

    def __init__(self, model: JointRewardModel, config: PretrainConfig, work: Path, log: Callable[[str], None]):
        self.model, self.config, self.work, self.log = model, config, Path(work), log
        self.optimizer = make_optimizer(model, _as_train_config(config))
        self.state = Checkpoint(step=0, wall_s=0.0, history={k: [] for k in CURVES}, probes=[])
        self.window: dict[str, float] = {}
        self.window_n = 0

    def resume(self) -> bool:
        """Load the last checkpoint in `work` (model, optimizer, curves); False when there is none."""
        state = load_checkpoint(self.work, self.model, self.optimizer, self.config)
        if state is None:
            return False
        self.state = state
        return True

    def run(self) -> Checkpoint:
        config, model = self.config, self.model
        probe = probe_set(model, config)
        warmup = round(config.warmup_ratio * config.steps)
        model.train()
        bar = tqdm(total=config.steps, initial=self.state.step, desc="pretrain", unit="step", disable=not _tty())
        started = time.perf_counter() - self.state.wall_s
        while self.state.step < config.steps:
            step = self.state.step
            lr = config.lr * lr_factor(
                step, total_steps=config.steps, warmup_steps=warmup, min_ratio=config.min_lr_ratio
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(config.seed * 1_000_003 + step)  # dropout etc.: the same after a resume
            loss, parts = step_loss(
                model,
                encode_step(model, step_data(config.seed, step, config.tasks_per_step, swap_share=config.swap_share)),
                config,
            )
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step = step + 1
            self.state.wall_s = time.perf_counter() - started
            self._record(parts, lr, bar)
            if self.state.step % config.eval_every == 0 or self.state.step == config.steps:
                self._probe(probe)
            if self.state.step % config.checkpoint_every == 0 or self.state.step == config.steps:
                save_checkpoint(self.work, model, self.optimizer, config, self.state)
        bar.close()
        return self.state

    def _record(self, parts: dict[str, float], lr: float, bar) -> None:
        for key, value in parts.items():
            self.window[key] = self.window.get(key, 0.0) + value
        self.window_n += 1
        bar.update(1)
        if self.state.step % self.config.log_every and self.state.step != self.config.steps:
            return
        means = {key: value / self.window_n for key, value in self.window.items()}
        self.window, self.window_n = {}, 0
        for key in CURVES:
            self.state.history[key].append(self.state.step if key == "step" else lr if key == "lr" else means[key])
        bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()})
        self.log(json.dumps({"step": self.state.step, "wall_s": round(self.state.wall_s, 1), "lr": lr, **means}))

    def _probe(self, probe: list[StepBatch]) -> None:
        metrics = {"step": self.state.step, **probe_metrics(self.model, probe)}
        self.state.probes.append(metrics)
        self.log(json.dumps({"probe": metrics}))


def _as_train_config(config: PretrainConfig) -> TrainConfig:
    """The fine-tune's config with pretraining's optimizer settings, for the shared `make_optimizer`."""
    return TrainConfig(lr=config.lr, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm)


def _tty() -> bool:
    return sys.stderr.isatty()
