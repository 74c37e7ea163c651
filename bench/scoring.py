"""Benchmark JRM scoring against a generative judge on the same backbone; print Markdown tables.

    python bench/scoring.py                  # tiny preset + a random 512-hidden / 4-layer LLaVA (~6.5 min CPU)
    python bench/scoring.py --quick          # CI-sized
    python bench/scoring.py --backbone tiny --hidden 0 --layers 0 --tokens 48,128,256 --batches 1,16

For each model size, side by side in one process, variants interleaved round-robin (medians of `--repeats`):

(a) ms per pair: JRM scoring (both candidates pointwise, `JointRewardModel.score`: no LM head, no generation) vs a
    generative judge on the same backbone (one sequence with source, A and B; `generate` exactly N rationale tokens,
    then one cached forward of "\\nVerdict:" and a comparison of the next-token logits of " A" and " B").
(b) JRM scoring vs the bare prefill floor: the backbone's base model on the same batch, hidden states only.
(c) peak memory: each variant in a fresh subprocess loaded from a saved checkpoint in `--memory-dtype` (the scorer
    with the one scorer loader `trainer.scorer.load_scorer_model`, which never reads the LM head; the full model and
    the judge with `JointRewardModel.load`, head included): the Linux peak RSS (VmHWM, reset just before the call)
    during the load and at each `--memory-batches` size, minus the RSS before the model was loaded; on CUDA also
    torch.cuda.max_memory_allocated.
(d) one training step (forward + backward + AdamW) with λ = 0.5 and rationale tokens vs the BT-only step (λ = 0,
    no rationale tokens), at `--train-pairs` pairs.

Inputs (PIL → tensors) are encoded before timing, for every variant. Sizes other than the backbone's own
(`--hidden H --layers L`) are random-init copies of its architecture with the language model resized (head dim 64,
MLP 2H); the vision tower stays as in the preset.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoProcessor  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench.scoring_report import report  # noqa: E402
from bench.scoring_setup import (  # noqa: E402
    MIB,
    PairInput,
    build_model,
    demo_pairs,
    inputs_to,
    jrm_batch,
    judge,
    judge_inputs,
    prefill,
    sync_device,
    train_step,
)
from storage.settings import SCORER_DTYPES, load_settings  # noqa: E402
from trainer.model import JointRewardModel  # noqa: E402
from trainer.scorer import load_scorer_model, scorer_dtype  # noqa: E402

FLOOR_BUDGET_S = 12.0  # prefill vs JRM differ little: 2-5 × --repeats rounds, more while under this budget
TRAIN_BUDGET_S = 20.0  # training steps: 3 rounds, more (up to --train-repeats) while under this budget


# --- timing ----------------------------------------------------------------------------------------------------


def round_robin(
    variants: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    rounds: int,
    max_rounds: int | None = None,
    budget_s: float = 0.0,
) -> dict[str, list]:
    """Seconds per call of each variant, every variant once per round, in turn: `rounds` rounds, then more (up to
    `max_rounds`) while the whole loop has taken less than `budget_s`."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    start_all = time.perf_counter()
    done = 0
    while done < rounds or (done < (max_rounds or rounds) and time.perf_counter() - start_all < budget_s):
        for name, run in variants.items():
            sync_device(device)
            start = time.perf_counter()
            run()
            sync_device(device)
            times[name].append(time.perf_counter() - start)
        done += 1
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the per-round ratio (both measured in the same round, so noise partly cancels)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def speed_rows(model: JointRewardModel, pairs: list[PairInput], args: argparse.Namespace, device: torch.device):
    """(a) and (b): per batch size, prefill / JRM / judge-N interleaved; rows of both tables."""
    grid, overhead = [], []
    for b in args.batches:
        floor_times, judge_times, seq_len = _time_batch(model, pairs[:b], args, device)
        jrm_ms = 1000 * statistics.median(floor_times["jrm"]) / b  # ms per pair
        for n in args.tokens:
            judge_ms = 1000 * statistics.median(judge_times[f"judge{n}"]) / b
            grid.append((b, n, jrm_ms, judge_ms, paired_ratio(judge_times[f"judge{n}"], judge_times["jrm"])))
        prefill_ms = 1000 * statistics.median(floor_times["prefill"]) / b
        extra = 100 * (paired_ratio(floor_times["jrm"], floor_times["prefill"]) - 1)
        overhead.append((b, seq_len, len(floor_times["jrm"]), prefill_ms, jrm_ms, extra))
    return grid, overhead


def _time_batch(model: JointRewardModel, pairs: list[PairInput], args: argparse.Namespace, device: torch.device):
    """Interleaved timings on these pairs: prefill vs JRM (many cheap rounds), JRM vs the judge at every N."""
    batch = jrm_batch(model.processor, pairs).to(device)
    inputs = inputs_to(judge_inputs(model.processor, pairs), device)
    jrm, floor = (lambda: model.score(batch)), (lambda: prefill(model, batch))
    for warm_up in (jrm, floor, lambda: judge(model, inputs, 2)):  # lazy imports, first-call allocations
        warm_up()
    floor_times = round_robin(
        {"prefill": floor, "jrm": jrm},
        device,
        rounds=2 * args.repeats,
        max_rounds=5 * args.repeats,
        budget_s=FLOOR_BUDGET_S,
    )
    judges = {f"judge{n}": (lambda n=n: judge(model, inputs, n)) for n in args.tokens}
    judge_times = round_robin({"jrm": jrm, **judges}, device, rounds=args.repeats)
    return floor_times, judge_times, batch.input_ids.shape[1]


def train_rows(model: JointRewardModel, pairs: list[PairInput], args: argparse.Namespace, device: torch.device):
    """(d): the joint step (λ = 0.5, rationales) vs the BT-only step (λ = 0, none), interleaved."""
    n = args.train_pairs
    joint = jrm_batch(model.processor, pairs[:n], rationale=True).to(device)
    bt_only = jrm_batch(model.processor, pairs[:n]).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    variants = {
        "bt": lambda: train_step(model, optimizer, bt_only, 0.0),
        "joint": lambda: train_step(model, optimizer, joint, 0.5),
    }
    for warm_up in variants.values():  # optimizer state, first-call allocations
        warm_up()
    rounds = min(3, args.train_repeats)
    times = round_robin(variants, device, rounds=rounds, max_rounds=args.train_repeats, budget_s=TRAIN_BUDGET_S)
    model.eval()
    return {
        "pairs": n,
        "len_bt": bt_only.input_ids.shape[1],
        "len_joint": joint.input_ids.shape[1],
        "rationale_tokens": int((joint.labels != -100).sum()) / n,
        "bt_ms": 1000 * statistics.median(times["bt"]),
        "joint_ms": 1000 * statistics.median(times["joint"]),
        "ratio": paired_ratio(times["joint"], times["bt"]),
        "rounds": len(times["bt"]),
    }


# --- memory (one fresh subprocess per variant) -----------------------------------------------------------------


def _status_kib(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap pages otherwise


def _peak_of(run: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Peak RSS (KiB, absolute) and CUDA peak (MiB) of one call, the peaks reset just before it."""
    _release_freed_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    run()
    peak = {"rss_kib": _status_kib("VmHWM")}
    if device.type == "cuda":
        peak["cuda_mib"] = torch.cuda.max_memory_allocated() / MIB
    return peak


def memory_child(args: argparse.Namespace) -> None:
    """Load the checkpoint as one variant, then print its peak memory at each memory batch size as JSON."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variant, n_tokens = args.memory_child.split(":")
    processor = AutoProcessor.from_pretrained(Path(args.checkpoint) / "backbone")
    pairs = demo_pairs(max(args.memory_batches))
    inputs = {
        b: (jrm_batch(processor, pairs[:b]).to(device), inputs_to(judge_inputs(processor, pairs[:b]), device))
        for b in args.memory_batches
    }
    _release_freed_memory()
    before = _status_kib("VmRSS")  # interpreter, libraries and encoded inputs; no model yet
    loaded: list[JointRewardModel] = []
    load_peak = _peak_of(lambda: loaded.append(_load_variant(variant, args, device)), device)
    model = loaded.pop()

    def run(b: int) -> object:
        batch, judge_batch = inputs[b]
        return judge(model, judge_batch, int(n_tokens)) if variant == "judge" else model.score(batch)

    run(min(args.memory_batches))  # warm-up: the weights this variant reads become resident (mmap'd lazily)
    _release_freed_memory()
    result = {
        "load": {"rss_mib": (load_peak["rss_kib"] - before) / 1024, "cuda_mib": load_peak.get("cuda_mib")},
        "resident_mib": (_status_kib("VmRSS") - before) / 1024,
        "peaks": {},
    }
    for b in args.memory_batches:
        peak = _peak_of(lambda b=b: run(b), device)
        result["peaks"][str(b)] = {"rss_mib": (peak["rss_kib"] - before) / 1024, "cuda_mib": peak.get("cuda_mib")}
    print(json.dumps(result))


def _load_variant(variant: str, args: argparse.Namespace, device: torch.device) -> JointRewardModel:
    """The scorer through the one scorer loader; the full model and the judge with their LM head."""
    if variant == "scorer":
        settings = load_settings(environ={"JRM_SCORER_DTYPE": args.memory_dtype})
        return load_scorer_model(args.checkpoint, settings=settings, device=str(device))
    dtype = scorer_dtype(args.memory_dtype, device)
    return JointRewardModel.load(args.checkpoint, device=device, dtype=dtype)


def memory_rows(model: JointRewardModel, args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(c): each variant in its own fresh interpreter, loaded from a saved checkpoint of `model`."""
    variants = ["scorer:0", "full:0"] + [f"judge:{n}" for n in args.memory_tokens]
    # A fixed mmap threshold makes glibc return every large freed block at once: without it, whether activations
    # are reused or kept varies run to run (peaks moved by ~50 MiB), and the peak RSS stops measuring live memory.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    with tempfile.TemporaryDirectory(prefix="jrm-bench-") as folder:
        model.save(folder)
        for variant in variants:
            command = [sys.executable, __file__, "--memory-child", variant, "--checkpoint", folder]
            command += ["--memory-batches", ",".join(map(str, args.memory_batches)), "--threads", str(args.threads)]
            command += ["--device", args.device, "--memory-dtype", args.memory_dtype]
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            rows.append((variant, json.loads(done.stdout.strip().splitlines()[-1])))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.memory_child:
        memory_child(args)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# bench/scoring.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s),")
    print(
        f"device {device}; rounds: judge {args.repeats}, prefill/JRM {2 * args.repeats}–{5 * args.repeats} "
        f"({FLOOR_BUDGET_S:.0f} s budget), train 3–{args.train_repeats} ({TRAIN_BUDGET_S:.0f} s budget); "
        "times are medians, ratios medians of per-round ratios"
    )
    pairs = demo_pairs(max([*args.batches, args.train_pairs]))
    start = time.perf_counter()
    for hidden, layers in zip(args.hidden, args.layers, strict=True):
        model = build_model(args.backbone, hidden, layers, args.cache_dir).to(device)
        name = args.backbone if not (hidden or layers) else f"{args.backbone} resized"
        results = {}
        if not args.memory_only:
            results["grid"], results["overhead"] = speed_rows(model, pairs, args, device)
        results["memory"] = memory_rows(model, args) if args.memory_tokens or args.memory_only else []
        if not args.memory_only:
            results["train"] = train_rows(model, pairs, args, device)
        report(name, model, results)
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="tiny", help="tiny preset, hub id or local folder")
    parser.add_argument("--hidden", type=_ints, default=[0, 512], help="LM hidden sizes, one per size (0: as is)")
    parser.add_argument("--layers", type=_ints, default=[0, 4], help="LM layer counts, one per size (0: as is)")
    parser.add_argument("--tokens", type=_ints, default=[48, 128, 256], help="judge rationale lengths N")
    parser.add_argument("--batches", type=_ints, default=[1, 16], help="batch sizes in pairs")
    parser.add_argument("--repeats", type=int, default=3, help="rounds with the judge (prefill vs JRM: 2-5×)")
    parser.add_argument("--train-pairs", type=int, default=8)
    parser.add_argument("--train-repeats", type=int, default=5)
    parser.add_argument("--memory-tokens", type=_ints, default=[256], help="judge N for memory ('' to skip)")
    parser.add_argument("--memory-batches", type=_ints, default=[1, 16], help="batch sizes (pairs) for memory")
    parser.add_argument(
        "--memory-dtype", choices=SCORER_DTYPES, default="auto", help="dtype every memory variant is loaded in"
    )
    parser.add_argument("--memory-only", action="store_true", help="only (c), the memory table")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-dir", default=None, help="where tiny presets are built (default: the data dir)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: tiny only, N=48, batches 1,4, 2 repeats")
    parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.tokens, args.batches = [0], [0], [48], [1, 4]
        args.repeats = args.train_repeats = 2
        args.train_pairs, args.memory_tokens, args.memory_batches = 4, [48], [1, 4]
    if len(args.hidden) != len(args.layers):
        parser.error("--hidden and --layers need one value per model size, e.g. --hidden 0,512 --layers 0,4")
    return args


if __name__ == "__main__":
    main()
