"""Which labels can the tiny LLaVA preset learn from the demo data? Train on real and synthetic labels; print a table.

    python bench/learnability.py                     # the tiny preset as shipped, real votes, 600 tasks
    python bench/learnability.py --tasks 600 --labels brighter,changed-more,real --image-size 32 --patch-size 8 \\
        --steps 400 --batch-size 16 --eval-every 100

The demo tasks (`storage.demo_edits.demo_task(demo_seed, i)`, the same pictures, instructions and simulated votes
`build_demo` stores) are generated in memory and their pictures written as PNG to a temporary folder, so no store
is needed. Each vote becomes a snapshot row (`trainer.data.FEATURES`), split by `trainer.data.task_key` /
`split_of` of the source PNG's sha256 and the instruction, so the held-out tasks are those of a `build_demo` store.

Label modes, on the same pairs:
- `real`: the simulated annotators' votes (ties, both-bad votes and rationales as recorded);
- `brighter`: the candidate with the higher mean pixel value wins;
- `changed-more`: the candidate with the larger mean |candidate − source| (`mean_abs_diff`) wins.
Synthetic modes carry no rationale and no tie (a pair whose two statistics are equal is dropped).

For each mode a fresh model (the preset, or a variant from `--image-size/--patch-size/--vision-layers/
--text-layers`) is trained by the project's loop `trainer.train.train` on the train split. From its progress
callback, every `--eval-every` steps, `trainer.evaluate.evaluate_pairs` scores the held-out votes of the same mode
(pairwise accuracy on strict votes, 95 % interval resampling tasks). For reference, rules without a model are
scored on the held-out real votes by the same metric: Δ = statistic(left) − statistic(right).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from storage.demo_edits import DemoCandidate, demo_task  # noqa: E402
from storage.demo_photos import mean_abs_diff  # noqa: E402
from storage.demo_votes import demo_votes, sim_annotators  # noqa: E402
from storage.images import encode_png  # noqa: E402
from trainer.backbones import Backbone, build_tiny_llava  # noqa: E402
from trainer.data import HELDOUT, TRAIN, eval_pairs, split_of, task_key  # noqa: E402
from trainer.evaluate import EvalPair, evaluate_pairs  # noqa: E402
from trainer.metrics import evaluation_report  # noqa: E402
from trainer.model import JointRewardModel, JRMConfig  # noqa: E402
from trainer.train import ProgressEvent, TrainConfig, train  # noqa: E402

LABEL_MODES = ("real", "brighter", "changed-more")
RULES = {"brighter": "brighter wins", "changed-more": "changed more wins"}  # synthetic mode → its rule's name
PRESET_SHAPE = {"image_size": 112, "patch_size": 16, "vision_layers": 2, "text_layers": 2}  # build_tiny_llava's
OVERLAP_TARGET = 2  # votes per pair, the store's default (JRM_OVERLAP_TARGET)
EVAL_BATCH = 32


# --- the demo data as snapshot rows ----------------------------------------------------------------------------


@dataclass
class DemoRows:
    """Snapshot rows of the demo's real votes, and each candidate's pixel statistics by candidate id."""

    rows: list[dict[str, Any]]
    stats: dict[str, dict[int, float]] = field(default_factory=lambda: {mode: {} for mode in RULES})


def split_rows(rows: Sequence[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The rows of one split ("train" or "heldout")."""
    return [row for row in rows if row["split"] == name]


def _write_png(folder: Path, image: Image.Image) -> tuple[str, str]:
    """Store `image` as `<folder>/<sha256>.png` (the bytes the store would keep); its sha256 and path."""
    data = encode_png(image)
    sha = hashlib.sha256(data).hexdigest()
    path = folder / f"{sha}.png"
    if not path.exists():
        path.write_bytes(data)
    return sha, str(path)


def _candidate_fields(candidate: DemoCandidate, candidate_id: int, folder: Path) -> dict[str, Any]:
    """A candidate's row fields without the side prefix: id, sha256, path, generator, extra (JSON text)."""
    sha, path = _write_png(folder, candidate.image)
    extra = json.dumps(candidate.extra(), sort_keys=True)
    return {"candidate_id": candidate_id, "sha256": sha, "path": path, "generator": candidate.generator, "extra": extra}


def demo_rows(tasks: int, folder: str | Path, *, demo_seed: int = 0) -> DemoRows:
    """Demo tasks 0 … tasks−1 of `demo_seed` with their simulated votes as snapshot rows; PNGs go to `folder`.

    Ids count from 1 in generation order (task i has task_id i + 1), as in a fresh store built by `build_demo`.
    """
    folder = Path(folder)
    annotators = sim_annotators(max(5, OVERLAP_TARGET))
    annotator_ids = {annotator.name: i for i, annotator in enumerate(annotators, start=1)}
    data = DemoRows(rows=[])
    candidate_id = 0
    for index in range(tasks):
        task = demo_task(demo_seed, index)
        source_sha, source_path = _write_png(folder, task.source)
        key = task_key(source_sha, task.instruction)
        sides = []
        for candidate in task.candidates:
            candidate_id += 1
            sides.append(_candidate_fields(candidate, candidate_id, folder))
            data.stats["brighter"][candidate_id] = float(np.asarray(candidate.image, dtype=np.float64).mean())
            data.stats["changed-more"][candidate_id] = mean_abs_diff(candidate.image, task.source)
        for vote in demo_votes(task, overlap_target=OVERLAP_TARGET, annotators=annotators):
            data.rows.append(
                {
                    "vote_id": len(data.rows) + 1,
                    "task_id": index + 1,
                    "task_key": key,
                    "split": split_of(key),
                    "instruction": task.instruction,
                    "source_sha256": source_sha,
                    "source_path": source_path,
                    **{f"left_{name}": value for name, value in sides[vote.left].items()},
                    **{f"right_{name}": value for name, value in sides[vote.right].items()},
                    "choice": vote.choice,
                    "rationale": vote.rationale,
                    "annotator_id": annotator_ids[vote.annotator],
                    "dimension_scores": None,  # the simulator rates no dimensions
                }
            )
    return data


def label_rows(data: DemoRows, mode: str) -> list[dict[str, Any]]:
    """The rows under label mode `mode`: the real votes, or a synthetic rule (no rationale, no tie)."""
    if mode == "real":
        return list(data.rows)
    if mode not in RULES:
        raise ValueError(f"Unknown label mode {mode!r}; choose from {', '.join(LABEL_MODES)}.")
    stat = data.stats[mode]
    rows = []
    for row in data.rows:
        left, right = stat[row["left_candidate_id"]], stat[row["right_candidate_id"]]
        if left != right:
            rows.append({**row, "choice": "left" if left > right else "right", "rationale": None})
    return rows


def rule_report(data: DemoRows, mode: str, rows: Sequence[dict[str, Any]], n_bootstrap: int) -> dict[str, Any]:
    """`evaluation_report` of the rule of synthetic mode `mode` (no model) on `rows`' votes."""
    stat = data.stats[mode]
    delta = [stat[row["left_candidate_id"]] - stat[row["right_candidate_id"]] for row in rows]
    labels = [row["choice"] for row in rows]
    return evaluation_report(delta, labels, task_ids=[row["task_id"] for row in rows], n_bootstrap=n_bootstrap)


# --- the model -------------------------------------------------------------------------------------------------


def variant_name(shape: dict[str, int]) -> str:
    """The name "tiny" for the preset as shipped, else one that lists its image size, patch size and layers."""
    if shape == PRESET_SHAPE:
        return "tiny"
    return "tiny-{image_size}px-patch{patch_size}-vision{vision_layers}-text{text_layers}".format(**shape)


def build_model(shape: dict[str, int], *, lm_weight: float, seed: int) -> JointRewardModel:
    """A fresh JRM on `build_tiny_llava(**shape)`; the reward head seeded like a pipeline run's."""
    model, processor = build_tiny_llava(**shape)
    name = variant_name(shape)
    set_seed(seed)  # the reward head's init, as trainer.pipeline does
    backbone = Backbone(model, processor, name, image_size=shape["image_size"], is_tiny=True)
    return JointRewardModel(backbone, JRMConfig(backbone=name, lm_weight=lm_weight))


# --- training with evaluations ---------------------------------------------------------------------------------


@dataclass
class EvalRow:
    """One evaluation of one run."""

    step: int
    accuracy: float
    ci95: tuple[float, float] | None
    pref: float | None  # mean train pref loss since the previous row (None before training)
    effective_rank: float  # of the held-out score-position features
    train_s: float  # training wall time so far, evaluations excluded
    eval_s: float  # this evaluation's wall time


class Evaluator:
    """train()'s progress callback: evaluates the held-out pairs at every report and records a row."""

    def __init__(self, model: JointRewardModel, pairs: list[EvalPair], n_bootstrap: int):
        self.model, self.pairs, self.n_bootstrap = model, pairs, n_bootstrap
        self.rows: list[EvalRow] = []
        self.eval_total_s = 0.0

    def evaluate(self, step: int, pref: float | None, elapsed_s: float) -> EvalRow:
        started = time.perf_counter()
        report = evaluate_pairs(
            self.model, self.pairs, batch_size=EVAL_BATCH, instruction_swap=False, n_bootstrap=self.n_bootstrap
        )
        seconds = time.perf_counter() - started
        accuracy = report["pairwise_accuracy"]
        row = EvalRow(
            step,
            accuracy["value"],
            accuracy["ci95"],
            pref,
            report["effective_rank"],
            elapsed_s - self.eval_total_s,
            seconds,
        )
        self.eval_total_s += seconds
        self.rows.append(row)
        print(
            f"  step {step}: held-out {row.accuracy:.3f}, pref {_fmt(pref)}, eff. rank {row.effective_rank:.1f}, "
            f"train {row.train_s:.0f} s",
            flush=True,
        )
        return row

    def __call__(self, event: ProgressEvent) -> None:
        self.evaluate(event.step, event.loss["pref"], event.elapsed_s)


def run_mode(
    mode: str, data: DemoRows, args: argparse.Namespace, shape: dict[str, int]
) -> tuple[list[EvalRow], dict[str, int]]:
    """Train a fresh model on `mode`'s train rows, evaluating its held-out rows; the rows and the vote counts."""
    rows = label_rows(data, mode)
    train_rows, heldout_rows = split_rows(rows, TRAIN), split_rows(rows, HELDOUT)
    model = build_model(shape, lm_weight=args.lm_weight, seed=args.seed)
    evaluator = Evaluator(model, eval_pairs(heldout_rows), args.bootstrap)
    evaluator.evaluate(0, None, 0.0)
    config = TrainConfig(
        epochs=args.steps,  # enough passes: max_steps ends the run
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        log_every=args.eval_every,
    )
    train(model, train_rows, config=config, jrm_config=model.jrm_config, progress=evaluator)
    counts = {"train": len(train_rows), "heldout": len(heldout_rows)}
    counts["strict"] = sum(row["choice"] in ("left", "right") for row in heldout_rows)
    return evaluator.rows, counts


# --- report ----------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(ci95: Sequence[float] | None) -> str:
    return "–" if ci95 is None else f"{ci95[0]:.2f}–{ci95[1]:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=600, help="Demo tasks (0 … tasks−1).")
    parser.add_argument("--demo-seed", type=int, default=0, help="The demo generator's seed.")
    parser.add_argument("--labels", default="real", help=f"Comma-separated label modes: {', '.join(LABEL_MODES)}.")
    parser.add_argument("--image-size", type=int, default=PRESET_SHAPE["image_size"], help="Vision input side, px.")
    parser.add_argument("--patch-size", type=int, default=PRESET_SHAPE["patch_size"], help="Vision patch side, px.")
    parser.add_argument("--vision-layers", type=int, default=PRESET_SHAPE["vision_layers"])
    parser.add_argument("--text-layers", type=int, default=PRESET_SHAPE["text_layers"])
    parser.add_argument("--steps", type=int, default=400, help="Optimizer steps per label mode.")
    parser.add_argument("--batch-size", type=int, default=8, help="Pairs per step.")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lm-weight", type=float, default=0.0, help="λ (rationales exist in the real mode only).")
    parser.add_argument("--eval-every", type=int, default=100, help="Evaluate the held-out votes every N steps.")
    parser.add_argument("--seed", type=int, default=0, help="Training seed (reward head init, data order).")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the 95 %% intervals.")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("JRM_TORCH_THREADS", "1")))
    args = parser.parse_args(argv)
    args.labels = [mode.strip() for mode in args.labels.split(",") if mode.strip()]
    unknown = sorted(set(args.labels) - set(LABEL_MODES))
    if unknown or not args.labels:
        parser.error(f"--labels takes {', '.join(LABEL_MODES)}; got {unknown or 'nothing'}.")
    return args


def quiet_torch(threads: int) -> None:
    """Benchmarks' common start: transformers' logging and progress bars off, torch's threads set."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_torch(args.threads)
    shape = {name: getattr(args, name) for name in PRESET_SHAPE}
    print(f"# bench/learnability.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jrm-learnability-") as folder:
        data = demo_rows(args.tasks, folder, demo_seed=args.demo_seed)
        n_tasks = {name: len({r["task_key"] for r in split_rows(data.rows, name)}) for name in (TRAIN, HELDOUT)}
        print(
            f"{args.tasks} demo tasks (seed {args.demo_seed}), {len(data.rows)} votes in "
            f"{time.perf_counter() - started:.0f} s; tasks: {n_tasks[TRAIN]} train, {n_tasks[HELDOUT]} held out"
        )
        probe = build_model(shape, lm_weight=args.lm_weight, seed=args.seed)
        n_params = sum(p.numel() for p in probe.parameters())
        print(
            f"model {variant_name(shape)}: {args.image_size} px, patch {args.patch_size} "
            f"({(args.image_size // args.patch_size) ** 2} tokens per image), vision {args.vision_layers} layers, "
            f"text {args.text_layers} layers, {n_params / 1e6:.2f} M parameters; batch {args.batch_size} pairs, "
            f"lr {args.lr:g}, λ {args.lm_weight:g}, seed {args.seed}"
        )
        del probe
        results = {}
        for mode in args.labels:
            print(f"training on {mode} labels", flush=True)
            results[mode] = run_mode(mode, data, args, shape)
        heldout_real = split_rows(data.rows, HELDOUT)
        rules = {mode: rule_report(data, mode, heldout_real, args.bootstrap) for mode in RULES}
    body = []
    for mode, (rows, counts) in results.items():
        votes = f"{counts['train']} / {counts['strict']}"
        for row in rows:
            body.append(
                [mode, votes, str(row.step), _fmt(row.accuracy), _ci(row.ci95), _fmt(row.pref)]
                + [f"{row.effective_rank:.1f}", f"{row.train_s:.0f}", f"{row.eval_s:.0f}"]
            )
    header = ["labels", "train votes / held-out strict", "step", "held-out pairwise acc.", "95 % CI (tasks)"]
    header += ["train pref (mean since last row)", "eff. rank", "train s", "eval s"]
    print()
    print(table(header, body))
    print()
    baseline = []
    for mode, rule in RULES.items():
        accuracy = rules[mode]["pairwise_accuracy"]
        baseline.append([rule, str(rules[mode]["n_strict"]), _fmt(accuracy["value"]), _ci(accuracy["ci95"])])
    header = ["rule on held-out real votes (no model)", "strict votes", "pairwise acc.", "95 % CI (tasks)"]
    print(table(header, baseline))
    print(f"\nTotal {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
