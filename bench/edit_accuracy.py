"""How well does a fine-tuned scorer judge demo edits? Train runs on demo votes, evaluate on four held-out sets.

    python bench/edit_accuracy.py                                   # tiny-edit and tiny, first run as shipped
    python bench/edit_accuracy.py --tasks 600 --steps 0,150,1000 --backbones tiny-edit
    python bench/edit_accuracy.py --tasks 600 --steps 300 --lm-weights 0,0.5,1 --seeds 0,1,2   # the λ ablation

The demo store's votes come from `bench/learnability.demo_rows` (the same pictures, instructions, simulated votes
and task split that `build_demo(tasks, seed 0)` stores). Each run fine-tunes a fresh model of the given backbone
(its pretrained reward head included, for presets that ship one) with the project's loop (`trainer.train.train`,
the run defaults: batch 8, lr and schedule from `TrainConfig`), `--steps` optimizer steps (0: zero-shot; 150: the
first run as shipped, `JRM_FIRST_RUN_MAX_STEPS`), then scores with `trainer.evaluate.evaluate_pairs`:

- **demo held-out**: the store's held-out split (pairwise accuracy with 95 % CI over tasks, accuracy with ties,
  instruction-swap both-correct, effective rank; per edit kind and per flaw of the worse candidate);
- **unseen phrasings**: the same pairs, the instruction rephrased by `trainer.pretrain.phrasing.heldout_instruction`
  (frames neither pretraining nor the demo uses);
- **unseen photos**: 300 further demo tasks (indices from 50,000, never stored) cut only from the photos
  pretraining holds out (`HELDOUT_PHOTOS`), with simulated votes;
- the rule "the candidate that changed the source more wins" on each set, for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402

from bench.learnability import DemoRows, _ci, _fmt, demo_rows, quiet_torch, split_rows, table  # noqa: E402
from storage.demo_edits import build_task  # noqa: E402
from storage.demo_kinds import EditSpec  # noqa: E402
from storage.demo_photos import mean_abs_diff  # noqa: E402
from storage.demo_votes import demo_votes, sim_annotators  # noqa: E402
from trainer.data import HELDOUT, TRAIN, eval_pairs  # noqa: E402
from trainer.evaluate import EvalPair, report_scores, score_pairs  # noqa: E402
from trainer.metrics import evaluation_report  # noqa: E402
from trainer.model import JointRewardModel, JRMConfig  # noqa: E402
from trainer.pretrain.phrasing import heldout_instruction  # noqa: E402
from trainer.pretrain.stream import HELDOUT_PHOTOS  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402

UNSEEN_PHOTO_START = 50_000  # demo task indices far beyond any store this bench or the app builds
EVAL_BATCH = 32


def unseen_photo_pairs(n_tasks: int, folder: Path, demo_seed: int = 0) -> tuple[list[EvalPair], dict[int, float]]:
    """EvalPairs of `n_tasks` demo tasks on the held-out photos, with simulated votes; and 'changed more' stats."""
    data = DemoRows(rows=[])
    annotators = sim_annotators(5)
    changed: dict[int, float] = {}
    for k in range(n_tasks):
        index = UNSEEN_PHOTO_START + k
        rng = random.Random(f"jrm-demo:{demo_seed}:{index}")
        task = build_task(rng, seed=demo_seed, index=index, photos=HELDOUT_PHOTOS)
        _append_task_rows(data, task, demo_votes(task, annotators=annotators), folder, k, changed)
    return eval_pairs(data.rows), changed


def _append_task_rows(data: DemoRows, task, votes, folder: Path, k: int, changed: dict[int, float]) -> None:
    from bench.learnability import _candidate_fields, _write_png
    from trainer.data import task_key

    source_sha, source_path = _write_png(folder, task.source)
    sides = []
    for j, candidate in enumerate(task.candidates):
        cid = 1_000_000 + 10 * k + j
        sides.append(_candidate_fields(candidate, cid, folder))
        changed[cid] = mean_abs_diff(candidate.image, task.source)
    for vote in votes:
        data.rows.append(
            {
                "vote_id": len(data.rows) + 1,
                "task_id": 1_000_000 + k,
                "task_key": task_key(source_sha, task.instruction),
                "instruction": task.instruction,
                "source_path": source_path,
                **{f"left_{name}": value for name, value in sides[vote.left].items()},
                **{f"right_{name}": value for name, value in sides[vote.right].items()},
                "choice": vote.choice,
                "rationale": vote.rationale,
            }
        )


def rephrased(pairs: list[EvalPair]) -> list[EvalPair]:
    """The pairs with each task's instruction in a held-out phrasing (one per task, seeded by the task key)."""
    specs = task_specs(pairs)
    out = []
    for pair in pairs:
        if pair.task_id in specs:
            rng = random.Random(f"rephrase:{pair.task_key}")
            out.append(replace(pair, instruction=heldout_instruction(specs[pair.task_id], rng)))
    return out


def task_specs(pairs: list[EvalPair]) -> dict[int, EditSpec]:
    """Each demo task's requested edit: its correct candidate's edit, found in any of the task's pairs."""
    specs = {}
    for pair in pairs:
        for extra in (pair.left_extra, pair.right_extra):
            if extra and extra.get("flaw") == "none" and len(extra.get("edits") or []) == 1:
                edit = extra["edits"][0]
                specs[pair.task_id] = EditSpec.of(edit["kind"], edit["params"], edit["strength"])
    return specs


def breakdown(pairs: list[EvalPair], delta: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """Pairwise accuracy on strict votes by the task's edit kind and by the worse candidate's flaw."""
    tallies: dict[str, dict[str, list[int]]] = {
        "kind": defaultdict(lambda: [0, 0]),
        "flaw": defaultdict(lambda: [0, 0]),
    }
    specs = task_specs(pairs)
    for pair, d in zip(pairs, delta, strict=True):
        if pair.label not in ("left", "right") or d == 0:
            continue
        right = (d > 0) == (pair.label == "left")
        worse = pair.right_extra if pair.label == "left" else pair.left_extra
        spec = specs.get(pair.task_id)
        for axis, key in (("kind", spec.kind if spec else "?"), ("flaw", (worse or {}).get("flaw", "?"))):
            tallies[axis][key][0] += int(right)
            tallies[axis][key][1] += 1
    return {axis: {k: {"accuracy": r / n, "n": n} for k, (r, n) in sorted(t.items())} for axis, t in tallies.items()}


def rule_delta(pairs: list[EvalPair], changed: dict[int, float]) -> np.ndarray:
    """Δ of the rule 'the candidate that changed the source more wins'."""
    return np.array([changed[p.left_candidate_id] - changed[p.right_candidate_id] for p in pairs])


def evaluate_sets(model: JointRewardModel, sets: dict[str, tuple[list[EvalPair], np.ndarray]], n_boot: int) -> dict:
    """The model's report on every set, and the rule's accuracy on the same votes."""
    results = {}
    for name, (pairs, rule) in sets.items():
        scores = score_pairs(model, pairs, batch_size=EVAL_BATCH)  # once: the report and the breakdown share it
        report = report_scores(scores, pairs, n_bootstrap=n_boot)
        delta = scores.delta
        rule_report = evaluation_report(
            rule, [p.label for p in pairs], task_ids=[p.task_id for p in pairs], n_bootstrap=0
        )
        swap = report.get("instruction_swap") or {}
        results[name] = {
            "accuracy": report["pairwise_accuracy"]["value"],
            "ci95": report["pairwise_accuracy"]["ci95"],
            "accuracy_with_ties": report["accuracy_with_ties"]["accuracy"],
            "swap_both_correct": swap.get("both_correct"),
            "effective_rank": report.get("effective_rank"),
            "n_strict": report["n_strict"],
            "n_tasks": report["n_tasks"],
            "rule_accuracy": rule_report["pairwise_accuracy"]["value"],
            "breakdown": breakdown(pairs, np.asarray(delta)),
        }
    return results


# --- runs ------------------------------------------------------------------------------------------------------


def fine_tune(
    backbone: str, train_rows: list[dict[str, Any]], *, steps: int, lm_weight: float, seed: int, lr: float | None
) -> tuple:
    """A fresh model of `backbone` trained `steps` steps with the run defaults; the model and train seconds."""
    set_seed(seed)  # the reward head's init, as trainer.pipeline does
    jrm = JRMConfig(backbone=backbone, lm_weight=lm_weight)
    model = JointRewardModel.from_config(jrm, cache_dir=Path(tempfile.gettempdir()) / "jrm-bench-backbones")
    if steps == 0:
        return model.eval(), 0.0
    lr_setting = {} if lr is None else {"lr": lr}
    config = TrainConfig(epochs=1000, max_steps=steps, seed=seed, log_every=max(1, steps // 4), **lr_setting)
    result = train(model, train_rows, config=config, jrm_config=jrm)
    return model.eval(), result.seconds


def eval_sets(data: DemoRows, args: argparse.Namespace, folder: Path) -> dict[str, tuple[list[EvalPair], np.ndarray]]:
    """The four evaluation sets with the rule's Δ on each."""
    changed = data.stats["changed-more"]
    heldout = eval_pairs(split_rows(data.rows, HELDOUT))
    phrased = rephrased(heldout)
    photos, photo_changed = unseen_photo_pairs(args.unseen_photo_tasks, folder)
    return {
        "demo held-out": (heldout, rule_delta(heldout, changed)),
        "unseen phrasings": (phrased, rule_delta(phrased, changed)),
        "unseen photos": (photos, rule_delta(photos, photo_changed)),
    }


def run_rows(results: list[dict]) -> str:
    header = [
        "backbone",
        "steps",
        "λ",
        "seed",
        "set",
        "pairwise acc.",
        "95 % CI",
        "acc. w/ ties",
        "swap both",
        "eff. rank",
        "rule acc.",
        "strict / tasks",
        "train s",
    ]
    body = []
    for run in results:
        for name, r in run["sets"].items():
            body.append(
                [
                    run["backbone"],
                    str(run["steps"]),
                    f"{run['lm_weight']:g}",
                    str(run["seed"]),
                    name,
                    _fmt(r["accuracy"]),
                    _ci(r["ci95"]),
                    _fmt(r["accuracy_with_ties"]),
                    _fmt(r["swap_both_correct"]),
                    _fmt(r["effective_rank"], 1),
                    _fmt(r["rule_accuracy"]),
                    f"{r['n_strict']} / {r['n_tasks']}",
                    f"{run['train_s']:.0f}",
                ]
            )
    return table(header, body)


def breakdown_rows(results: list[dict], axis: str) -> str:
    keys = sorted({k for run in results for k in run["sets"]["demo held-out"]["breakdown"][axis]})
    header = ["backbone", "steps", "λ", "seed", *keys]
    body = []
    for run in results:
        b = run["sets"]["demo held-out"]["breakdown"][axis]
        cells = [f"{b[k]['accuracy']:.2f} ({b[k]['n']})" if k in b else "–" for k in keys]
        body.append([run["backbone"], str(run["steps"]), f"{run['lm_weight']:g}", str(run["seed"]), *cells])
    return table(header, body)


def summary_rows(results: list[dict]) -> str:
    """Mean ± std over seeds of each (backbone, steps, λ) on the demo held-out set."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in results:
        groups[(run["backbone"], run["steps"], run["lm_weight"])].append(run["sets"]["demo held-out"])
    header = ["backbone", "steps", "λ", "seeds", "pairwise acc.", "acc. w/ ties", "swap both", "eff. rank"]
    body = []
    for (backbone, steps, lm), sets in groups.items():

        def ms(key: str, sets: list[dict] = sets) -> str:
            values = [s[key] for s in sets if s[key] is not None]
            return "–" if not values else f"{np.mean(values):.3f} ± {np.std(values):.3f}"

        body.append(
            [
                backbone,
                str(steps),
                f"{lm:g}",
                str(len(sets)),
                ms("accuracy"),
                ms("accuracy_with_ties"),
                ms("swap_both_correct"),
                ms("effective_rank"),
            ]
        )
    return table(header, body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="Demo tasks in the store (the app seeds 200).")
    parser.add_argument("--backbones", default="tiny-edit,tiny", help="Comma-separated backbones.")
    parser.add_argument("--steps", default="150", help="Comma-separated fine-tune steps (0: zero-shot).")
    parser.add_argument("--lm-weights", default="0.5", help="Comma-separated λ values.")
    parser.add_argument("--seeds", default="0", help="Comma-separated training seeds.")
    parser.add_argument("--lr", type=float, help="Peak learning rate of the fine-tune (default: TrainConfig's).")
    parser.add_argument("--unseen-photo-tasks", type=int, default=300, help="Tasks in the unseen-photos set.")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the 95 %% CIs.")
    parser.add_argument("--json", type=Path, help="Also write every result here.")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("JRM_TORCH_THREADS", "1")))
    args = parser.parse_args(argv)
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    args.steps = [int(s) for s in args.steps.split(",")]
    args.lm_weights = [float(x) for x in args.lm_weights.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_torch(args.threads)
    started = time.perf_counter()
    print(f"# bench/edit_accuracy.py {' '.join(sys.argv[1:])}")
    results = []
    with tempfile.TemporaryDirectory(prefix="jrm-edit-accuracy-") as folder:
        data = demo_rows(args.tasks, folder)
        sets = eval_sets(data, args, Path(folder))
        train_rows = split_rows(data.rows, TRAIN)
        print(
            f"{args.tasks} demo tasks: {len(train_rows)} train votes; sets: "
            + ", ".join(f"{k} {len(v[0])} votes" for k, v in sets.items()),
            flush=True,
        )
        for backbone in args.backbones:
            for steps in args.steps:
                for lm_weight in args.lm_weights:
                    for seed in args.seeds:
                        model, seconds = fine_tune(
                            backbone, train_rows, steps=steps, lm_weight=lm_weight, seed=seed, lr=args.lr
                        )
                        run = {
                            "backbone": backbone,
                            "steps": steps,
                            "lm_weight": lm_weight,
                            "seed": seed,
                            "train_s": seconds,
                            "sets": evaluate_sets(model, sets, args.bootstrap),
                        }
                        results.append(run)
                        held = run["sets"]["demo held-out"]
                        print(
                            f"  {backbone} steps {steps} λ {lm_weight:g} seed {seed}: held-out "
                            f"{held['accuracy']:.3f} {_ci(held['ci95'])}, {seconds:.0f} s",
                            flush=True,
                        )
    print()
    print(run_rows(results))
    print("\nPer edit kind (demo held-out, strict votes; n in brackets):\n")
    print(breakdown_rows(results, "kind"))
    print("\nPer flaw of the worse candidate (demo held-out):\n")
    print(breakdown_rows(results, "flaw"))
    if len(args.seeds) > 1:
        print("\nMean ± std over seeds (demo held-out):\n")
        print(summary_rows(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nTotal {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
