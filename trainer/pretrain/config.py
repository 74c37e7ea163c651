"""`PretrainConfig`: how `tiny-edit` is built (architecture, objectives, schedule, checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.configs import DictConfig, is_number


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class PretrainConfig(DictConfig):
    """The recipe's settings; saved in every checkpoint and in the preset's manifest."""

    steps: int = _help("Optimizer steps; each draws fresh tasks (data never repeats).", default=26000)
    seed: int = _help("Seed of the model's init and of the task stream.", default=0)
    tasks_per_step: int = _help(
        "Tasks per step; each gives a preference pair, an instruction-check pair and a caption.", default=4
    )
    lr: float = _help("Peak learning rate (AdamW).", default=1e-3)
    weight_decay: float = _help("AdamW weight decay on matrices.", default=0.01)
    warmup_ratio: float = _help("Share of the steps spent warming the learning rate up.", default=0.02)
    min_lr_ratio: float = _help("The cosine decays to this fraction of the peak.", default=0.1)
    max_grad_norm: float = _help("Clip the gradients' global norm to this (0: off).", default=1.0)
    caption_weight: float = _help("Weight of the captioning NLL against the pair losses.", default=0.5)
    swap_share: float = _help(
        "Share of the preference pairs that are instruction swaps (trainer/pretrain/stream.py).", default=0.25
    )
    tie_nu: float = _help("Davidson ν for near-equal candidates (as the fine-tune's default).", default=1.0)
    image_size: int = _help("Vision input side in pixels.", default=48)
    patch_size: int = _help("Vision patch side in pixels.", default=8)
    vision_layers: int = _help("CLIP vision layers.", default=2)
    text_layers: int = _help("Llama decoder layers.", default=2)
    edit_view: bool = _help(
        "Show the model each edited picture as its change from the source (trainer/edit_view.py).", default=True
    )
    log_every: int = _help("Record the loss curves every this many steps.", default=50)
    eval_every: int = _help("Score the fixed probe set every this many steps.", default=1000)
    probe_tasks: int = _help("Tasks in the probe set (its own stream, never trained on).", default=96)
    checkpoint_every: int = _help("Write a resumable checkpoint every this many steps.", default=250)

    def __post_init__(self) -> None:
        for name in ("steps", "tasks_per_step", "image_size", "patch_size", "vision_layers", "text_layers"):
            _whole(self, name, minimum=1)
        for name in ("log_every", "eval_every", "probe_tasks", "checkpoint_every"):
            _whole(self, name, minimum=1)
        _whole(self, "seed", minimum=0)
        if not isinstance(self.edit_view, bool):
            raise ValueError(f"edit_view must be true or false, got {self.edit_view!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size}).")
        for name in ("lr", "weight_decay", "max_grad_norm", "caption_weight", "tie_nu"):
            value = getattr(self, name)
            if not (is_number(value) and value >= 0) or (name == "lr" and value == 0):
                raise ValueError(f"{name} must be a finite number >= 0 (lr > 0), got {value!r}.")
        for name in ("warmup_ratio", "min_lr_ratio", "swap_share"):
            value = getattr(self, name)
            if not (is_number(value) and 0 <= value <= 1):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")


def _whole(config: PretrainConfig, name: str, *, minimum: int) -> None:
    value = getattr(config, name)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
