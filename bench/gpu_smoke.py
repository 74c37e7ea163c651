"""GPU readiness: LoRA training steps with activation checkpointing and scoring throughput in bf16; one table.

    python bench/gpu_smoke.py                          # on a CUDA device (well under 3 min on one H100)
    python bench/gpu_smoke.py --peak-tflops 989        # a device that is not in bench/gpu_flops.py's table
    python bench/gpu_smoke.py --device cpu --allow-cpu --steps 1 --warmup 0 --batches 1,2   # the code path on CPU

Without CUDA (and without `--device cpu --allow-cpu`) it prints one line saying it skipped and exits 0.

For each model — `tiny` (the tiny-qwen2.5-vl preset's size) and `100m` (the same Qwen2.5-VL family built at
≈ 100 M parameters, `SIZES`) — built with `trainer.families.build_tiny_qwen2_5_vl`:

- the backbone's weights in bf16 (frozen), LoRA adapters (`trainer.model.apply_lora` with `JRMConfig`'s defaults)
  and the reward head in fp32, activation checkpointing on every layer (checked: the checkpointed calls per step
  are counted and printed, and a step without any fails);
- **train**: `--train-pairs` pairs per step (chosen with its rationale + rejected, `bench.scoring_setup.jrm_batch`),
  `trainer.train.pair_loss` (the training loop's one forward and `trainer.losses.joint_loss`) under bf16 autocast,
  backward, AdamW step; `--warmup` untimed steps, then `--steps` timed; a run in which no trainable weight moved fails;
- **score**: `JointRewardModel.score` under bf16 autocast (no LM head applied; its weights stay in memory, which the
  app's scorer loader leaves out: 2.4 M parameters at `100m`) at each `--batches` size (candidates per batch, built
  with `trainer.prompting.build_example` / `collate`), `--warmup` then `--repeats`;
- peak memory: `torch.cuda.max_memory_allocated`, reset before each measurement (weights included);
- achieved TFLOP/s, estimated (not counted): per decoder position `2·N_text` forward, `6·N_text` for a training step
  (forward, recomputed forward, backward to the activations: the frozen weights get no gradient); the vision tower is
  frozen with nothing trainable before it, so it runs forward only: `2·N_vision` per patch (and `2·N_merger` per
  merged image token). N excludes the token embeddings (a lookup) and the LM head (not applied when scoring; on the
  few rationale positions when training). Attention's quadratic term is left out (sequences are short). The share is
  of the device's dense bf16 peak (`bench/gpu_flops.py`, `--peak-tflops`; "unknown" otherwise).

Inputs (demo pairs of 128 px photos, PIL → tensors) are encoded before timing; the processor resizes them to the
tiny preset's 32²–64² pixels, or to `--image-side`² pixels for the `100m` model.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench.gpu_flops import FlopParams, batch_flops, bf16_peak_tflops, flop_params  # noqa: E402
from bench.scoring_setup import MIB, PairInput, demo_pairs, jrm_batch, sync_device  # noqa: E402
from trainer.backbones import Backbone  # noqa: E402
from trainer.data import PairBatch  # noqa: E402
from trainer.families import TINY_SIZE, FamilySize, build_tiny_qwen2_5_vl  # noqa: E402
from trainer.model import JointRewardModel, JRMConfig, apply_lora  # noqa: E402
from trainer.prompting import Batch, PromptExample, build_example, collate  # noqa: E402
from trainer.resolution import set_pixel_budget  # noqa: E402
from trainer.train import pair_loss  # noqa: E402

FAMILY = "tiny-qwen2.5-vl"
SIZES: dict[str, FamilySize] = {
    "tiny": TINY_SIZE,
    # A 12-layer, 768-wide decoder and a 10-layer, 384-wide vision tower: 98.7 M backbone parameters (100.9 M with
    # the default LoRA adapters and the reward head, which peft keeps twice: the original and the trained copy).
    "100m": FamilySize(
        text_hidden=768,
        text_layers=12,
        text_heads=12,
        text_kv_heads=4,
        text_intermediate=2048,
        vision_hidden=384,
        vision_layers=10,
        vision_heads=6,
    ),
}
COLUMNS = (
    "model",
    "params",
    "mode",
    "batch",
    "seq len",
    "steps/s",
    "items/s",
    "TFLOP/s",
    "% of bf16 peak",
    "peak MiB",
    "ckpt calls/step",
)
SKIP_MESSAGE = (
    "bench/gpu_smoke.py: skipped, CUDA is not available (torch {torch}); run it on a GPU machine, or pass "
    "--device cpu --allow-cpu for the tiny CPU run."
)


# --- the model -------------------------------------------------------------------------------------------------


@dataclass
class CheckpointCounter:
    """How many layer calls went through activation checkpointing (the proof that it is really on)."""

    calls: int = 0


def enable_checkpointing(backbone: torch.nn.Module) -> CheckpointCounter:
    """Turn on activation checkpointing of every layer (non-reentrant) and count the checkpointed calls."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.23 (the old name warns)
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    counter = CheckpointCounter()
    layers = [m for m in backbone.modules() if getattr(m, "gradient_checkpointing", False)]
    if not layers:
        raise RuntimeError(f"{type(backbone).__name__} turned on checkpointing in no module.")
    for layer in layers:
        inner = layer._gradient_checkpointing_func

        def counted(*args, _inner: Callable = inner, **kw):
            counter.calls += 1
            return _inner(*args, **kw)

        layer._gradient_checkpointing_func = counted
    return counter


def build_jrm(name: str, device: torch.device, seed: int) -> tuple[JointRewardModel, CheckpointCounter]:
    """A LoRA JRM of the Qwen2.5-VL family at size `name`: bf16 frozen weights, fp32 adapters and head, on `device`."""
    backbone_model, processor = build_tiny_qwen2_5_vl(seed, size=SIZES[name])
    backbone_model.to(torch.bfloat16)  # as a large checkpoint is loaded for LoRA (load_backbone(dtype=bf16))
    backbone = Backbone(backbone_model, processor, f"{FAMILY} ({name})", image_size=0, is_tiny=True)
    torch.manual_seed(seed)
    c = JRMConfig(backbone=FAMILY)
    model = JointRewardModel(backbone, c)  # the reward head is created in fp32
    apply_lora(
        model, rank=c.lora_rank, alpha=c.lora_alpha, target_modules=c.lora_target_modules, dropout=c.lora_dropout
    )
    for parameter in model.parameters():
        if parameter.requires_grad:  # peft gives adapters their base layer's dtype; AdamW wants fp32 masters
            parameter.data = parameter.data.float()
    counter = enable_checkpointing(model.backbone)
    return model.to(device), counter


# --- inputs ----------------------------------------------------------------------------------------------------


def scoring_examples(model: JointRewardModel, pairs: list[PairInput], n: int) -> list[PromptExample]:
    """`n` pointwise candidates: each pair's left edit, then its right, until there are `n`."""
    edits = [(p, edited) for p in pairs for edited in (p.left, p.right)][:n]
    return [
        build_example(model.processor, source=p.source, edited=edited, instruction=p.instruction) for p, edited in edits
    ]


# --- measurements ----------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One timed phase: seconds per call, its batch, and the CUDA peak (None on CPU)."""

    seconds: float
    batch: Batch
    peak_mib: float | None
    ckpt_calls: float | None = None


def timed(run: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> tuple[float, float | None]:
    """(seconds per call, peak MiB): `warmup` calls, then `repeats` timed ones; the CUDA peak is reset first."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        run()
    sync_device(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    sync_device(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    return seconds, peak


def measure_training(
    model: JointRewardModel, counter: CheckpointCounter, pairs: list[PairInput], args: argparse.Namespace
) -> Measurement:
    """Time LoRA training steps (forward under bf16 autocast, backward, AdamW) and check that they train."""
    device = model.device
    batch = jrm_batch(model.processor, pairs[: args.train_pairs], rationale=True)  # chosen (rationale), rejected
    pair_batch = PairBatch(batch, torch.zeros(args.train_pairs, dtype=torch.bool)).to(device)  # no ties
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = pair_loss(model, pair_batch, model.jrm_config)
        loss.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    counter.calls = 0
    seconds, peak = timed(step, device, warmup=args.warmup, repeats=args.steps)
    calls = counter.calls / (args.warmup + args.steps)
    model.eval()
    if not calls:
        raise RuntimeError("Activation checkpointing is on but no layer call went through it during training.")
    if all(torch.equal(p, b) for p, b in zip(trainable, before, strict=True)):
        raise RuntimeError("No trainable weight changed: the training step did not reach the optimizer.")
    return Measurement(seconds, pair_batch.batch, peak, calls)


def measure_scoring(model: JointRewardModel, pairs: list[PairInput], args: argparse.Namespace) -> list[Measurement]:
    """Time `model.score` (bf16 autocast, no LM head) at each batch size."""
    device = model.device
    examples = scoring_examples(model, pairs, max(args.batches))
    results = []
    for size in args.batches:
        batch = collate(examples[:size], model.processor).to(device)

        def score(batch: Batch = batch) -> torch.Tensor:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                return model.score(batch)

        seconds, peak = timed(score, device, warmup=args.warmup, repeats=args.repeats)
        results.append(Measurement(seconds, batch, peak))
    return results


# --- report ----------------------------------------------------------------------------------------------------


def table_row(
    model_name: str, n_params: int, mode: str, m: Measurement, params: FlopParams, peak: float | None
) -> list[str]:
    """One row of the table, in `COLUMNS` order."""
    train = mode == "train"
    items = len(m.batch) // 2 if train else len(m.batch)  # pairs per step, or candidates per batch
    tflops = batch_flops(m.batch, params, train=train) / m.seconds / 1e12
    share = f"{100 * tflops / peak:.1f}" if peak else "unknown"
    return [
        model_name,
        f"{n_params / 1e6:.2f} M",
        mode,
        f"{items} {'pairs' if train else 'items'}",
        str(m.batch.input_ids.shape[1]),
        f"{1 / m.seconds:.3g}",
        f"{items / m.seconds:.3g}",
        f"{tflops:.3g}",
        share,
        f"{m.peak_mib:.0f}" if m.peak_mib is not None else "n/a",
        f"{m.ckpt_calls:.0f}" if m.ckpt_calls is not None else "-",
    ]


def print_table(rows: list[list[str]]) -> None:
    """A Markdown table with `COLUMNS`."""
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def measure_model(name: str, pairs: list[PairInput], args: argparse.Namespace, peak: float | None) -> list[list[str]]:
    """Build one size, time its training steps and its scoring; its table rows."""
    device = torch.device(args.device)
    model, counter = build_jrm(name, device, args.seed)
    if name != "tiny":  # Qwen's dynamic resolution: about side × side pixels per image
        side = args.image_side
        set_pixel_budget(model.processor, min_pixels=side * side, max_pixels=side * side, backbone=FAMILY)
    n_params = sum(p.numel() for p in model.parameters())
    n_backbone = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" not in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = flop_params(model)
    print(
        f"- `{name}`: {SIZES[name]}: backbone {n_backbone:,} parameters, {n_params:,} with LoRA and the reward head "
        f"({trainable:,} trainable); N per decoder position {params.text:,}, per patch {params.vision:,}, per "
        f"merged image token {params.merger:,}"
    )
    rows = [table_row(name, n_params, "train", measure_training(model, counter, pairs, args), params, peak)]
    rows += [table_row(name, n_params, "score", m, params, peak) for m in measure_scoring(model, pairs, args)]
    return rows  # the model is freed here; `timed` empties the CUDA cache before the next measurement


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(SKIP_MESSAGE.format(torch=torch.__version__))
        return 0
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    peak, peak_source = bf16_peak_tflops(device, args.peak_tflops)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"# bench/gpu_smoke.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    peak_text = f"{peak:.0f} TFLOP/s" if peak else "unknown"
    print(f"{platform.node()}: {where}; torch {torch.__version__}; dense bf16 peak {peak_text} ({peak_source})")
    print(
        f"train: {args.train_pairs} pairs/step, {args.warmup} warm-up + {args.steps} timed steps; score: "
        f"{args.warmup} warm-up + {args.repeats} timed batches per size; bf16 weights, fp32 LoRA r{JRMConfig.lora_rank}"
        " + head, bf16 autocast, activation checkpointing\n"
    )
    start = time.perf_counter()
    pairs = demo_pairs(max(args.train_pairs, (max(args.batches) + 1) // 2))
    rows = [row for name in args.models for row in measure_model(name, pairs, args, peak)]
    print()
    print_table(rows)
    print(
        "\nseq len: padded decoder positions per sequence (a pair is two sequences); TFLOP/s estimated from parameter "
        "counts (the docstring's formula), not counted; peak MiB: torch.cuda.max_memory_allocated, weights included."
    )
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    return 0


def _ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --allow-cpu)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU (default models: tiny only)")
    parser.add_argument("--models", nargs="+", choices=list(SIZES), help="sizes (default: all on CUDA, tiny on CPU)")
    parser.add_argument("--batches", type=_ints, default=[1, 16, 64], help="scoring batch sizes (candidates)")
    parser.add_argument("--train-pairs", type=int, default=8, help="pairs per training step (2 sequences each)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=10, help="timed scoring batches per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each measurement")
    parser.add_argument("--image-side", type=int, default=224, help="image side (px) for the sizes other than tiny")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device.startswith("cpu") and not args.allow_cpu:
        parser.error("--device cpu runs only with --allow-cpu (a code-path check, not a GPU measurement)")
    if not args.device.startswith(("cpu", "cuda")):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    if min(args.train_pairs, args.steps, args.repeats) < 1 or args.warmup < 0 or args.image_side < 16:
        parser.error("--train-pairs, --steps and --repeats must be >= 1, --warmup >= 0, --image-side >= 16")
    if args.models is None:
        args.models = ["tiny"] if args.device.startswith("cpu") else list(SIZES)
    return args


if __name__ == "__main__":
    sys.exit(main())
