"""The one training loop: `accelerate`-ready, one forward per step on chosen + rejected, `L = L_pref + λ·L_lm`.

Single process on CPU here; `accelerate launch` runs the same loop under DDP (gloo on CPU, NCCL on GPUs) and CUDA
with bf16 autocast when asked. See docs/training.md.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from trainer.configs import DictConfig, is_int, is_number
from trainer.data import PairBatch, PairCollator, PairDataset
from trainer.losses import DimensionPairs, LossBreakdown, joint_loss
from trainer.model import JointRewardModel, JRMConfig

LOSS_KEYS = ("total", "pref", "lm")


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig(DictConfig):
    """How to train (the model's own settings, λ included, are in `JRMConfig`)."""

    epochs: int = _help("Passes over the training votes.", default=3)
    max_steps: int | None = _help("Stop after this many optimizer steps (None: run every epoch).", default=None)
    batch_size: int = _help("Votes (pairs) per micro-batch and process; each is two sequences.", default=8)
    grad_accum: int = _help("Micro-batches per optimizer step.", default=1)
    lr: float = _help(
        "Peak learning rate (AdamW); 3e-4 keeps what the pretrained preset learned (docs/benchmarks.md).", default=3e-4
    )
    weight_decay: float = _help("AdamW weight decay (not applied to biases and norms).", default=0.01)
    warmup_ratio: float = _help("Share of the steps spent warming the learning rate up linearly.", default=0.05)
    min_lr_ratio: float = _help("The cosine decays to this fraction of the peak learning rate.", default=0.1)
    seed: int = _help("Seed for the reward head's init, dropout and the data order.", default=0)
    max_grad_norm: float = _help("Clip the gradients' global norm to this (0: no clipping).", default=1.0)
    mixed_precision: Literal["no", "bf16"] = _help("'bf16' autocast when CUDA is present, else 'no'.", default="no")
    log_every: int = _help("Report progress and record history every this many optimizer steps.", default=10)
    num_workers: int = _help(
        "DataLoader worker processes that encode examples (0: in the training process).", default=0
    )
    neutral_sides: bool = _help("Rewrite 'left'/'right' in rationales to 'this edit'/'the other edit'.", default=True)
    rationale_on: Literal["chosen", "both"] = _help(
        "Which sequences carry the rationale as LM targets: the chosen one, or both (each from its own side).",
        default="chosen",
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            _require(
                is_int(getattr(self, name)) and getattr(self, name) >= 1,
                f"{name} must be a whole number >= 1, got {getattr(self, name)!r}.",
            )
        _require(
            self.max_steps is None or (is_int(self.max_steps) and self.max_steps >= 1),
            f"max_steps must be a whole number >= 1, or None for no cap; got {self.max_steps!r}.",
        )
        _require(is_number(self.lr) and self.lr > 0, f"lr must be a number > 0 (e.g. 1e-3), got {self.lr!r}.")
        for name in ("warmup_ratio", "min_lr_ratio"):
            value = getattr(self, name)
            _require(is_number(value) and 0 <= value <= 1, f"{name} must be a number in [0, 1], got {value!r}.")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            _require(is_number(value) and value >= 0, f"{name} must be a number >= 0, got {value!r}.")
        _require(is_int(self.seed), f"seed must be a whole number, got {self.seed!r}.")
        _require(
            is_int(self.num_workers) and self.num_workers >= 0,
            f"num_workers must be a whole number >= 0, got {self.num_workers!r}.",
        )
        _require(
            self.mixed_precision in ("no", "bf16"),
            f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}.",
        )
        _require(
            isinstance(self.neutral_sides, bool), f"neutral_sides must be true or false, got {self.neutral_sides!r}."
        )
        _require(
            self.rationale_on in ("chosen", "both"),
            f"rationale_on must be 'chosen' or 'both', got {self.rationale_on!r}.",
        )
        _require(
            self.rationale_on == "chosen" or self.neutral_sides,
            "rationale_on='both' needs neutral_sides=True (each sequence reads the rationale from its side).",
        )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class ProgressEvent:
    """What the progress callback gets every `log_every` optimizer steps (and after the last one)."""

    step: int
    total_steps: int
    progress: float  # step / total_steps, in [0, 1]
    epoch: int
    loss: dict[str, float]  # {"total", "pref", "lm"}: means over the micro-batches since the last event
    lr: float
    elapsed_s: float
    eta_s: float


@dataclass
class TrainResult:
    """Curves (`history["step"]`, `["total"]`, `["pref"]`, `["lm"]`, `["lr"]`), optimizer steps and wall time."""

    history: dict[str, list[float]]
    steps: int
    seconds: float


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based): linear warmup, then cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def total_optimizer_steps(batches_per_epoch: int, config: TrainConfig) -> int:
    """Optimizer steps the run will take: every epoch's (a partial accumulation still steps), capped."""
    per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total = per_epoch * config.epochs
    return min(total, config.max_steps) if config.max_steps is not None else total


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An `Accelerator` for this config: bf16 only where CUDA is, unused parameters tolerated under DDP."""
    mixed = config.mixed_precision if torch.cuda.is_available() else "no"
    # LLaVA never uses its vision tower's post_layernorm and λ = 0 never uses the LM head: DDP must not wait on them.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=mixed, kwargs_handlers=[ddp])


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, norms and other vectors are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters.")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def make_dataloader(
    model: JointRewardModel, rows: datasets.Dataset | Sequence[dict[str, Any]], config: TrainConfig
) -> DataLoader:
    """Shuffled pairs (the order fixed by the seed) collated into one chosen + rejected batch each."""
    dataset = PairDataset(
        rows,
        model.processor,
        max_rationale_tokens=model.jrm_config.max_rationale_tokens,
        neutral_sides=config.neutral_sides,
        rationale_on=config.rationale_on,
        dimensions=model.jrm_config.dimension_heads,
    )
    if len(dataset) == 0:
        raise ValueError("No training votes: the snapshot's train split is empty.")
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
        collate_fn=PairCollator(model.processor),
        num_workers=config.num_workers,
    )


def pair_loss(model: torch.nn.Module, pairs: PairBatch, jrm_config: JRMConfig) -> LossBreakdown:
    """The joint loss of one batch of pairs: one forward over the 2B sequences, chosen first."""
    n_pairs = len(pairs)
    output = model(pairs.batch, with_lm=jrm_config.lm_weight > 0)
    rewards, log_sigma, dims = output.rewards, output.log_sigma, output.dimension_scores  # (2B,), (2B,), (2B, D)
    dimensions = None
    if dims is not None and pairs.dimension_labels is not None:
        dimensions = DimensionPairs(dims[:n_pairs], dims[n_pairs:], pairs.dimension_labels, pairs.dimension_mask)
    return joint_loss(
        rewards[:n_pairs],  # (B,) chosen
        rewards[n_pairs:],  # (B,) rejected
        pairs.is_tie,
        output.lm_loss,
        jrm_config.lm_weight,
        tie_nu=jrm_config.tie_nu,
        log_sigma=None if log_sigma is None else (log_sigma[:n_pairs], log_sigma[n_pairs:]),
        uncertainty_loss=jrm_config.uncertainty_loss,
        dimensions=dimensions,
        dimension_weight=jrm_config.dimension_weight,
    )


class _LossWindow:
    """Sums of the loss parts since the last report; averaged over micro-batches and processes when read."""

    def __init__(self) -> None:
        self.sums = torch.zeros(len(LOSS_KEYS) + 1, dtype=torch.float64)  # total, pref, lm, count

    def add(self, loss: LossBreakdown) -> None:
        parts = [loss.total.detach().float().item(), loss.pref.item(), loss.lm.item(), 1.0]
        self.sums += torch.tensor(parts, dtype=torch.float64)

    def read(self, accelerator: Accelerator) -> dict[str, float]:
        sums = accelerator.reduce(self.sums.to(accelerator.device), reduction="sum").cpu()  # every rank calls it
        self.sums.zero_()
        count = max(float(sums[-1]), 1.0)
        return {key: float(sums[i]) / count for i, key in enumerate(LOSS_KEYS)}


def train(
    model: JointRewardModel,
    train_rows: datasets.Dataset | Sequence[dict[str, Any]],
    *,
    config: TrainConfig,
    jrm_config: JRMConfig | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> TrainResult:
    """Train `model` in place on snapshot rows; `progress` is called on the main process every `log_every` steps."""
    jrm_config = jrm_config or model.jrm_config
    set_seed(config.seed)
    accelerator = make_accelerator(config)
    loader = make_dataloader(model, train_rows, config)
    optimizer = make_optimizer(model, config)
    prepared_model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = total_optimizer_steps(len(loader), config)
    warmup = round(config.warmup_ratio * total)
    # The prepared scheduler steps once per process per optimizer step (accelerate's convention), so the schedule
    # is laid out over total × num_processes scheduler steps.
    per_step = accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s // per_step, total_steps=total, warmup_steps=warmup, min_ratio=config.min_lr_ratio),
    )
    scheduler = accelerator.prepare(scheduler)
    loop = _Loop(accelerator, prepared_model, optimizer, scheduler, config, jrm_config, total, progress)
    try:
        result = loop.run(loader)
    finally:
        model.eval()
        accelerator.free_memory()
    return result


class _Loop:
    """The state of one training run: steps, the loss window, history and progress reports."""

    def __init__(self, accelerator, model, optimizer, scheduler, config, jrm_config, total, progress) -> None:
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.config, self.jrm_config, self.total, self.progress = config, jrm_config, total, progress
        self.history: dict[str, list[float]] = {key: [] for key in ("step", *LOSS_KEYS, "lr")}
        self.window = _LossWindow()
        self.step = 0
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=total,
            desc="train",
            unit="step",
            disable=not (accelerator.is_main_process and sys.stderr.isatty()),
        )

    def run(self, loader: DataLoader) -> TrainResult:
        self.model.train()
        for epoch in range(self.config.epochs):
            for pairs in loader:
                self._micro_step(pairs, epoch)
                if self.step >= self.total:
                    break
            if self.step >= self.total:
                break
        self.bar.close()
        return TrainResult(self.history, self.step, time.perf_counter() - self.started)

    def _micro_step(self, pairs: PairBatch, epoch: int) -> None:
        with self.accelerator.accumulate(self.model):
            loss = pair_loss(self.model, pairs, self.jrm_config)
            self.accelerator.backward(loss.total)
            if self.accelerator.sync_gradients and self.config.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.window.add(loss)
        if self.accelerator.sync_gradients:
            self.step += 1
            self.bar.update(1)
            if self.step % self.config.log_every == 0 or self.step == self.total:
                self._report(epoch, lr)

    def _report(self, epoch: int, lr: float) -> None:
        loss = self.window.read(self.accelerator)
        elapsed = time.perf_counter() - self.started
        event = ProgressEvent(
            step=self.step,
            total_steps=self.total,
            progress=self.step / self.total,
            epoch=epoch,
            loss=loss,
            lr=lr,
            elapsed_s=elapsed,
            eta_s=elapsed / self.step * (self.total - self.step),
        )
        for key, value in (("step", self.step), *loss.items(), ("lr", lr)):
            self.history[key].append(value)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in loss.items()})
        if self.progress is not None and self.accelerator.is_main_process:
            self.progress(event)
