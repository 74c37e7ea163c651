"""Resumable pretraining checkpoints: written whole to a temporary folder, then renamed into place.

`<work>/checkpoint/` holds the model (`save_pretrained` backbone + reward head), the optimizer state and
`state.json` (step, wall time, curves, probe metrics, the config). A `kill -9` at any moment leaves either the
previous checkpoint or the new one, never a half-written one; the data stream is a pure function of
(seed, step), so training from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.model import JointRewardModel
from trainer.pretrain.config import PretrainConfig

CHECKPOINT = "checkpoint"


@dataclass
class Checkpoint:
    """Where a pretraining stands."""

    step: int
    wall_s: float
    history: dict[str, list[float]]
    probes: list[dict[str, float]]


def save_checkpoint(
    work: Path, model: JointRewardModel, optimizer: torch.optim.Optimizer, config: PretrainConfig, state: Checkpoint
) -> Path:
    """Write the checkpoint atomically; the previous one is replaced only once the new one is complete."""
    work.mkdir(parents=True, exist_ok=True)
    staging = work / f".checkpoint-{uuid.uuid4().hex}"
    staging.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, staging / "model.safetensors")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    (staging / "state.json").write_text(json.dumps({"config": config.to_dict(), **asdict(state)}))
    target = work / CHECKPOINT
    old = work / f".old-{uuid.uuid4().hex}"
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    work: Path, model: JointRewardModel, optimizer: torch.optim.Optimizer, config: PretrainConfig
) -> Checkpoint | None:
    """Restore model and optimizer from `<work>/checkpoint`; None when there is none. A checkpoint of another
    recipe (different settings) is refused, except for the number of steps, which a resume may extend."""
    folder = work / CHECKPOINT
    if not (folder / "state.json").exists():
        _recover(work)
        if not (folder / "state.json").exists():
            return None
    saved = json.loads((folder / "state.json").read_text())
    theirs = {k: v for k, v in saved["config"].items() if k != "steps"}
    ours = {k: v for k, v in config.to_dict().items() if k != "steps"}
    if theirs != ours:
        changed = sorted(k for k in ours if theirs.get(k) != ours[k])
        raise ValueError(
            f"The checkpoint in {folder} was made with other settings ({', '.join(changed)}); "
            "resume with the same settings or start a new --out folder."
        )
    model.load_state_dict(load_file(folder / "model.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return Checkpoint(step=saved["step"], wall_s=saved["wall_s"], history=saved["history"], probes=saved["probes"])


def _recover(work: Path) -> None:
    """A kill between the two renames leaves only `.old-*`: put it back."""
    olds = sorted(work.glob(".old-*"))
    if olds and (olds[-1] / "state.json").exists():
        olds[-1].rename(work / CHECKPOINT)
