"""Benchmark JRM scoring against a generative judge on the same backbone; print Markdown tables.

    python bench/scoring.py                  # tiny preset + a random 512-hidden / 4-layer LLaVA (~6.5 min CPU)
    python bench/scoring.py --quick          # CI-sized
    python bench/scoring.py --backbone tiny --hidden 0 --layers 0 --tokens 48,128,256 --batches 1,16

For each model size, side by side in one process, variants interleaved round-robin (medians of `--repeats`):

(a) ms per pair: JRM scoring (both candidates pointwise, `JointRewardModel.score`: no LM head, no generation) vs a
    generative judge on the same backbone (one sequence with source, A and B; `generate` exactly N rationale tokens,
    then one cached forward of "\\nVerdict:" and a comparison of the next-token logits of " A" and " B").
(b) JRM scoring vs the bare prefill floor: the backbone's base model on the same batch, hidden states only.
(c) peak memory: each variant in a fresh subprocess loaded from a saved checkpoint (the scorer with `lm_head=False`,
    the judge with its head), at each `--memory-batches` size: the Linux peak RSS (VmHWM, reset just before the call)
    minus the RSS before the model was loaded; on CUDA also torch.cuda.max_memory_allocated.
(d) one training step (forward + backward + AdamW) with λ = 0.5 and rationale tokens vs the BT-only step (λ = 0,
    no rationale tokens), at `--train-pairs` pairs.

Inputs (PIL → tensors) are encoded before timing, for every variant. Sizes other than the backbone's own
(`--hidden H --layers L`) are random-init copies of its architecture with the language model resized (head dim 64,
MLP 2H); the vision tower stays as in the preset.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoProcessor, ProcessorMixin  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from storage.demo_edits import demo_task  # noqa: E402
from storage.demo_votes import write_rationale  # noqa: E402
from trainer.backbones import Backbone, load_backbone  # noqa: E402
from trainer.losses import joint_loss  # noqa: E402
from trainer.model import JointRewardModel, JRMConfig  # noqa: E402
from trainer.prompting import Batch, build_example, collate  # noqa: E402

JUDGE_QUESTION = (
    "Source image, then edit A, then edit B. Instruction: {instruction}\n"
    "Which edit follows the instruction better? Explain, then answer A or B."
)
VERDICT_PROMPT = "\nVerdict:"
FLOOR_BUDGET_S = 12.0  # prefill vs JRM differ little: 2-5 × --repeats rounds, more while under this budget
TRAIN_BUDGET_S = 20.0  # training steps: 3 rounds, more (up to --train-repeats) while under this budget
MIB = 2**20


@dataclass(frozen=True)
class PairInput:
    """One demo pair: source, two candidates, the instruction and a rationale for the left one."""

    source: Image.Image
    left: Image.Image
    right: Image.Image
    instruction: str
    rationale: str


def demo_pairs(n: int) -> list[PairInput]:
    """`n` pairs from the demo dataset (deterministic), the correct-vs-flawed rationale on the left."""
    pairs = []
    for index in range(n):
        task = demo_task(0, index)
        left, right = task.candidates[0], task.candidates[1]
        rng = random.Random(index)
        rationale = write_rationale(
            "left", noisy=False, left=left, right=right, instruction=task.instruction, source=task.source, rng=rng
        )
        pairs.append(PairInput(task.source, left.image, right.image, task.instruction, rationale))
    return pairs


# --- models ----------------------------------------------------------------------------------------------------


def build_model(backbone: str, hidden: int, layers: int, cache_dir: str | None) -> JointRewardModel:
    """The backbone as is (hidden = layers = 0), or a random copy with its language model resized."""
    base = load_backbone(backbone, cache_dir=cache_dir)
    if hidden or layers:
        config = copy.deepcopy(base.model.config)
        text = config.get_text_config()
        text.hidden_size = hidden or text.hidden_size
        text.intermediate_size = 2 * text.hidden_size
        text.num_hidden_layers = layers or text.num_hidden_layers
        text.num_attention_heads = text.num_key_value_heads = max(1, text.hidden_size // 64)
        text.head_dim = text.hidden_size // text.num_attention_heads  # set at init from the old sizes: recompute
        torch.manual_seed(0)
        name = f"{backbone}-h{text.hidden_size}-l{text.num_hidden_layers}"
        base = Backbone(type(base.model)(config), base.processor, name, base.image_size, base.is_tiny)
    torch.manual_seed(0)
    return JointRewardModel(base, JRMConfig(backbone=backbone)).eval()


def describe_size(model: JointRewardModel) -> str:
    """The language model's size as "hidden H, L layers"."""
    text = model.backbone.config.get_text_config()
    return f"hidden {text.hidden_size}, {text.num_hidden_layers} layers"


def lm_head_bytes(model: JointRewardModel) -> int:
    """Bytes of the LM head's parameters."""
    head = model.backbone.get_output_embeddings()
    return sum(p.numel() * p.element_size() for p in head.parameters())


def param_bytes(model: JointRewardModel) -> int:
    """Bytes of every parameter (backbone, LM head, reward head)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


# --- the variants ----------------------------------------------------------------------------------------------


def jrm_batch(processor: ProcessorMixin, pairs: list[PairInput], *, rationale: bool = False) -> Batch:
    """Left sequences (with the rationale when asked) then right ones: 2·len(pairs) pointwise sequences."""
    left = [
        build_example(
            processor,
            source=p.source,
            edited=p.left,
            instruction=p.instruction,
            rationale=p.rationale if rationale else None,
        )
        for p in pairs
    ]
    right = [build_example(processor, source=p.source, edited=p.right, instruction=p.instruction) for p in pairs]
    return collate(left + right, processor)


def judge_inputs(processor: ProcessorMixin, pairs: list[PairInput]) -> dict[str, torch.Tensor]:
    """One left-padded sequence per pair holding the source and both edits (the judge's pair prompt)."""
    texts = []
    for p in pairs:
        content = [{"type": "image"}] * 3 + [{"type": "text", "text": JUDGE_QUESTION.format(instruction=p.instruction)}]
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    images = [image for p in pairs for image in (p.source, p.left, p.right)]
    processor.tokenizer.padding_side = "left"
    encoded = processor(text=texts, images=images, padding=True, return_tensors="pt", add_special_tokens=False)
    return dict(encoded)


@torch.no_grad()
def judge(model: JointRewardModel, inputs: dict[str, torch.Tensor], n_tokens: int) -> torch.Tensor:
    """Generate exactly `n_tokens` rationale tokens, then read the verdict: +1 where " A" beats " B"."""
    backbone, tokenizer = model.backbone, model.processor.tokenizer
    out = backbone.generate(
        **inputs,
        min_new_tokens=n_tokens,
        max_new_tokens=n_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    rows = out.sequences.shape[0]
    verdict = tokenizer(VERDICT_PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    verdict = verdict.to(out.sequences.device).repeat(rows, 1)  # (B, k)
    # The cache holds every position but the last generated token's, which goes in with the verdict prompt.
    ids = torch.cat([out.sequences[:, -1:], verdict], dim=1)  # (B, 1 + k)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(out.sequences[:, inputs["input_ids"].shape[1] :])], 1)
    mask = torch.cat([mask, torch.ones_like(verdict)], dim=1)  # (B, T + N + k)
    logits = backbone(input_ids=ids, attention_mask=mask, past_key_values=out.past_key_values, logits_to_keep=1).logits
    a, b = (tokenizer(t, add_special_tokens=False).input_ids[0] for t in (" A", " B"))
    return torch.sign(logits[:, -1, a] - logits[:, -1, b])  # (B,)


@torch.no_grad()
def prefill(model: JointRewardModel, batch: Batch) -> torch.Tensor:
    """The physical floor: the base model's forward on the batch, last hidden state only."""
    return model.backbone.base_model(**batch.model_inputs(), use_cache=False, return_dict=True).last_hidden_state


def train_step(model: JointRewardModel, optimizer: torch.optim.Optimizer, batch: Batch, lm_weight: float) -> float:
    """One joint-loss step on chosen (first half) vs rejected (second half) sequences."""
    n = len(batch) // 2
    out = model(batch, with_lm=lm_weight > 0)
    loss = joint_loss(out.rewards[:n], out.rewards[n:], torch.zeros(n, dtype=torch.bool), out.lm_loss, lm_weight)
    loss.total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.total.item()


def _to(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
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
    inputs = _to(judge_inputs(model.processor, pairs), device)
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
        b: (jrm_batch(processor, pairs[:b]).to(device), _to(judge_inputs(processor, pairs[:b]), device))
        for b in args.memory_batches
    }
    _release_freed_memory()
    before = _status_kib("VmRSS")  # interpreter, libraries and encoded inputs; no model yet
    model = JointRewardModel.load(args.checkpoint, device=device, lm_head=variant != "scorer-dropped")

    def run(b: int) -> object:
        batch, judge_batch = inputs[b]
        return judge(model, judge_batch, int(n_tokens)) if variant == "judge" else model.score(batch)

    run(min(args.memory_batches))  # warm-up: the weights this variant reads become resident (mmap'd lazily)
    _release_freed_memory()
    result = {"resident_mib": (_status_kib("VmRSS") - before) / 1024, "peaks": {}}
    for b in args.memory_batches:
        peak = _peak_of(lambda b=b: run(b), device)
        result["peaks"][str(b)] = {"rss_mib": (peak["rss_kib"] - before) / 1024, "cuda_mib": peak.get("cuda_mib")}
    print(json.dumps(result))


def memory_rows(model: JointRewardModel, args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(c): each variant in its own fresh interpreter, loaded from a saved checkpoint of `model`."""
    variants = ["scorer-dropped:0", "scorer-kept:0"] + [f"judge:{n}" for n in args.memory_tokens]
    # A fixed mmap threshold makes glibc return every large freed block at once: without it, whether activations
    # are reused or kept varies run to run (peaks moved by ~50 MiB), and the peak RSS stops measuring live memory.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    with tempfile.TemporaryDirectory(prefix="jrm-bench-") as folder:
        model.save(folder)
        for variant in variants:
            command = [sys.executable, __file__, "--memory-child", variant, "--checkpoint", folder]
            command += ["--memory-batches", ",".join(map(str, args.memory_batches)), "--threads", str(args.threads)]
            command += ["--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            rows.append((variant, json.loads(done.stdout.strip().splitlines()[-1])))
    return rows


# --- output ----------------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report(name: str, model: JointRewardModel, results: dict) -> None:
    """Print the four tables of one model size."""
    print(f"\n### {name}: {describe_size(model)}, {param_bytes(model) / MIB:.1f} MiB of float32 parameters\n")
    grid = [[str(b), str(n), f"{jrm:.1f}", f"{jdg:.1f}", f"{ratio:.1f}×"] for b, n, jrm, jdg, ratio in results["grid"]]
    print("(a) ms per pair, JRM scoring vs generative judge (N rationale tokens + verdict)\n")
    print(table(["batch (pairs)", "N", "JRM ms/pair", "judge ms/pair", "judge / JRM"], grid))
    rows = [
        [str(b), str(t), str(n), f"{pf:.1f}", f"{jrm:.1f}", f"{pct:+.1f} %", "yes" if pct <= 15 else "**no**"]
        for b, t, n, pf, jrm, pct in results["overhead"]
    ]
    print("\n(b) JRM scoring vs the bare prefill floor (same batch: 2 sequences per pair)\n")
    print(table(["batch (pairs)", "seq len", "rounds", "prefill ms/pair", "JRM ms/pair", "overhead", "≤ 15 %"], rows))
    if results.get("memory"):
        print_memory(model, results["memory"])
    t = results["train"]
    print(
        f"\n(d) training step at {t['pairs']} pairs ({2 * t['pairs']} sequences), forward + backward + AdamW, "
        f"{t['rounds']} rounds\n"
    )
    rows = [
        ["BT only (λ = 0, no rationale)", str(t["len_bt"]), "0", f"{t['bt_ms']:.0f}", "1.00×"],
        [
            "joint (λ = 0.5, rationale)",
            str(t["len_joint"]),
            f"{t['rationale_tokens']:.0f}",
            f"{t['joint_ms']:.0f}",
            f"{t['ratio']:.2f}×",
        ],
    ]
    print(table(["step", "seq len", "rationale tokens / pair", "ms / step", "vs BT only (≤ 2×)"], rows))


def print_memory(model: JointRewardModel, rows: list[tuple[str, dict]]) -> None:
    """(c) as a table: one row per variant, peak RSS per batch size and its excess over the lm_head=False scorer."""
    scorer = next(result for variant, result in rows if variant.startswith("scorer-dropped"))
    batches = list(scorer["peaks"])
    cuda = scorer["peaks"][batches[0]]["cuda_mib"] is not None
    print("\n(c) peak memory above the process before the model was loaded (a fresh process per variant), MiB\n")
    header = ["variant", "resident after warm-up"]
    for b in batches:
        header += [f"peak, {b} pair(s)", "vs scorer"] + (["CUDA peak"] if cuda else [])
    body = []
    for variant, result in rows:
        kind, n = variant.split(":")
        names = {"scorer-dropped": "JRM scorer, `lm_head=False`", "scorer-kept": "JRM scorer, LM head kept"}
        cells = [names.get(kind, f"judge, N = {n}"), f"{result['resident_mib']:.1f}"]
        for b in batches:
            peak, base = result["peaks"][b], scorer["peaks"][b]
            cells += [
                f"{peak['rss_mib']:.1f}",
                "–" if result is scorer else f"{peak['rss_mib'] - base['rss_mib']:+.1f}",
            ]
            cells += [f"{peak['cuda_mib']:.1f}"] if cuda else []
        body.append(cells)
    print(table(header, body))
    print(f"\nLM head: {lm_head_bytes(model) / MIB:.2f} MiB of parameters ({lm_head_bytes(model):,} bytes).")


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
        grid, overhead = speed_rows(model, pairs, args, device)
        results = {"grid": grid, "overhead": overhead}
        results["memory"] = memory_rows(model, args) if args.memory_tokens else []
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
