"""FLOP accounting and device peaks for bench/gpu_smoke.py: how much work a batch is, and what the device could do.

FLOPs are estimated, not counted: per decoder position 2·N_text for a forward and 6·N_text for a training step, per
vision patch 2·N_vision (the vision tower is frozen under LoRA: forward only) plus the merger per merged token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.model import JointRewardModel
from trainer.prompting import Batch

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; the first entry whose words all occur
# in the device name wins, so more specific names come first.
BF16_DENSE_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (("H200",), 989.0),  # also GH200
    (("A100",), 312.0),
    (("L40S",), 362.0),
    (("L40",), 181.0),
    (("L4",), 121.0),
)


@dataclass(frozen=True)
class FlopParams:
    """Parameters applied per decoder position, per vision patch and per merged image token."""

    text: int
    vision: int
    merger: int
    merge_units: int  # patches per merged image token (spatial_merge_size²)


def flop_params(model: JointRewardModel) -> FlopParams:
    """Split the backbone's matmul parameters by what they are applied to (embeddings and LM head excluded)."""
    base = model.backbone.base_model
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    merger = count(base.visual.merger)
    return FlopParams(
        text=count(base.language_model) - base.get_input_embeddings().weight.numel(),
        vision=count(base.visual) - merger,
        merger=merger,
        merge_units=int(base.visual.spatial_merge_size) ** 2,
    )


def batch_flops(batch: Batch, params: FlopParams, *, train: bool) -> float:
    """Estimated FLOPs of one forward (train=False) or training step (train=True) on `batch`."""
    positions = batch.input_ids.numel()  # (B·T): padded positions are computed too
    patches = batch.extras["pixel_values"].shape[0]  # (patches, C·t·p·p)
    vision = 2 * (params.vision * patches + params.merger * patches // params.merge_units)
    return (6 if train else 2) * params.text * positions + vision


def bf16_peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak (TFLOP/s) and where the number comes from."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no table entry for a CPU"
    name = torch.cuda.get_device_name(device)
    for words, peak in BF16_DENSE_PEAK_TFLOPS:
        if all(word.lower() in name.lower() for word in words):
            return peak, f"NVIDIA's datasheet value for {name}"
    return None, f"no table entry for {name}: pass --peak-tflops"
