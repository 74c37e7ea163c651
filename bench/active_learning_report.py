"""Tables, the votes-to-reach figure, the plot and the `--quick` projection of `bench/active_learning.py`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.learnability import table
from trainer.run_params import parse_params
from trainer.train import total_optimizer_steps

TARGET_SHARE = 0.70  # the target: uncertainty reaches random's final accuracy on ≤ 70 % of its votes


def curve(results: dict[str, Any], strategy: str, seeds: Sequence[int], rounds: int, set_name: str, key="accuracy"):
    """(votes (R+1,), values (S, R+1)) of one strategy on one set; round 0 is the shared zero-shot model."""
    zero = results["zero-shot"]
    votes = [0] + [results[f"{strategy}/{seeds[0]}/{r}"]["votes"] for r in range(1, rounds + 1)]
    values = [
        [zero["sets"][set_name][key]]
        + [results[f"{strategy}/{s}/{r}"]["sets"][set_name][key] for r in range(1, rounds + 1)]
        for s in seeds
    ]
    return np.array(votes), np.array(values, dtype=float)


def votes_to_reach(votes: np.ndarray, mean: np.ndarray, target: float) -> float | None:
    """The first vote count where the mean curve reaches `target`, interpolated linearly; None if it never does."""
    for i in range(len(votes)):
        if mean[i] >= target:
            if i == 0:
                return float(votes[0])
            v0, v1, m0, m1 = votes[i - 1], votes[i], mean[i - 1], mean[i]
            return float(v0 + (target - m0) / (m1 - m0) * (v1 - v0))
    return None


def _complete(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    return [
        s
        for s in args.strategies
        if all(f"{s}/{seed}/{r}" in results for seed in args.seeds for r in range(1, args.rounds + 1))
    ]


def accuracy_table(results: dict[str, Any], args: argparse.Namespace, set_name: str, key="accuracy") -> str:
    strategies = _complete(results, args)
    columns = {s: curve(results, s, args.seeds, args.rounds, set_name, key) for s in strategies}
    votes = next(iter(columns.values()))[0]
    body = []
    for i, v in enumerate(votes):
        body.append([str(v)] + [f"{c[1][:, i].mean():.3f} ± {c[1][:, i].std():.3f}" for c in columns.values()])
    return table(["votes", *strategies], body)


def reach_lines(results: dict[str, Any], args: argparse.Namespace, set_name: str) -> list[str]:
    """How many votes each strategy needs to reach random's final mean accuracy, as a share of random's."""
    strategies = _complete(results, args)
    if "random" not in strategies:
        return []
    votes, random_values = curve(results, "random", args.seeds, args.rounds, set_name)
    target, final_votes = random_values[:, -1].mean(), votes[-1]
    lines = [f"random's final mean on {set_name}: {target:.3f} at {final_votes} votes"]
    if target <= random_values[:, 0].mean():
        return [lines[0] + f", not above zero-shot ({random_values[:, 0].mean():.3f}): nothing to reach"]
    for strategy in strategies:
        if strategy == "random":
            continue
        v, values = curve(results, strategy, args.seeds, args.rounds, set_name)
        reached = votes_to_reach(v, values.mean(axis=0), target)
        if reached is None:
            lines.append(f"  {strategy}: does not reach it within {v[-1]} votes (final {values[:, -1].mean():.3f})")
        else:
            share = reached / final_votes
            verdict = "meets" if share <= TARGET_SHARE else "misses"
            lines.append(
                f"  {strategy}: {reached:.0f} votes = {share:.0%} of random's "
                f"({verdict} the ≤ {TARGET_SHARE:.0%} target)"
            )
    return lines


def picks_table(results: dict[str, Any], args: argparse.Namespace, pool: list[dict[str, Any]]) -> str:
    """What each strategy had labelled at the end: share of strict votes, and of pairs with the correct edit."""
    body = []
    for strategy in _complete(results, args):
        strict, correct, tasks = [], [], []
        for seed in args.seeds:
            rows = [pool[i] for i in results[f"{strategy}/{seed}/{args.rounds}"]["labelled"]]
            strict.append(np.mean([r["choice"] in ("left", "right") for r in rows]))
            correct.append(np.mean(['"flaw": "none"' in r["left_extra"] + r["right_extra"] for r in rows]))
            tasks.append(len({r["task_id"] for r in rows}))
        body.append([strategy, f"{np.mean(strict):.2f}", f"{np.mean(correct):.2f}", f"{np.mean(tasks):.0f}"])
    return table(["strategy", "strict (left/right) votes", "pairs with the correct edit", "distinct tasks"], body)


def print_report(results: dict[str, Any], args: argparse.Namespace, *, domain_pool: list[dict[str, Any]]) -> None:
    set_names = list(results["zero-shot"]["sets"])
    pool_strict = np.mean([r["choice"] in ("left", "right") for r in domain_pool])
    for set_name in set_names:
        print(f"\nHeld-out pairwise accuracy on {set_name} (strict votes), mean ± std over seeds {args.seeds}:\n")
        print(accuracy_table(results, args, set_name))
    first = set_names[0]
    print(f"\nAccuracy with ties on {first}:\n")
    print(accuracy_table(results, args, first, key="accuracy_with_ties"))
    print(f"\nWhat was labelled by the last round (the pool: {pool_strict:.2f} strict votes):\n")
    print(picks_table(results, args, domain_pool))
    print()
    for set_name in set_names:
        print("\n".join(reach_lines(results, args, set_name)))
    times = [e for k, e in results.items() if k != "zero-shot"]
    print(
        f"\ntrain {sum(e['train_s'] for e in times):.0f} s over {sum(e['steps'] for e in times)} steps, "
        f"pool scoring {sum(e.get('score_s', 0) for e in results.values()):.0f} s, "
        f"evaluation {sum(e.get('eval_s', 0) for e in times):.0f} s"
    )


def save_plot(results: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """Mean ± std curves per strategy, one panel per held-out set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    set_names = list(results["zero-shot"]["sets"])
    fig, axes = plt.subplots(1, len(set_names), figsize=(5.5 * len(set_names), 4), squeeze=False)
    for ax, set_name in zip(axes[0], set_names, strict=True):
        for strategy in _complete(results, args):
            votes, values = curve(results, strategy, args.seeds, args.rounds, set_name)
            mean, std = values.mean(axis=0), values.std(axis=0)
            ax.plot(votes, mean, marker="o", label=strategy)
            ax.fill_between(votes, mean - std, mean + std, alpha=0.2)
        ax.set_title(f"{set_name} ({results['zero-shot']['sets'][set_name]['n_strict']} strict votes)")
        ax.set_xlabel("oracle votes")
        ax.set_ylabel("pairwise accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = ", ".join(map(str, args.seeds))
    fig.suptitle(f"tiny-edit fine-tuned on the votes each strategy picked (mean ± std, seeds {seeds})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quick_projection(
    results: dict[str, Any], quick: argparse.Namespace, full: argparse.Namespace, *, build_s: float
) -> None:
    """Rates measured by the quick run, and the full settings' projected time on the same machine."""
    entries = [e for k, e in results.items() if k != "zero-shot"]
    s_per_step = sum(e["train_s"] for e in entries) / max(1, sum(e["steps"] for e in entries))
    scorings = [e for e in results.values() if "score_s" in e]
    pool_pairs = quick.pool_size
    s_per_pool_pair = sum(e["score_s"] for e in scorings) / (len(scorings) * pool_pairs)
    s_per_eval = sum(e["eval_s"] for e in entries) / len(entries)
    one = max(entries, key=lambda e: e["steps"])
    print(
        f"\none retrain: {one['votes']} votes, {one['steps']} steps in {one['train_s']:.1f} s "
        f"({s_per_step:.3f} s/step); "
        f"one pool scoring: {pool_pairs} pairs in {scorings[0]['score_s']:.1f} s; one evaluation {s_per_eval:.1f} s"
    )
    config = parse_params({**({"max_steps": full.max_steps} if full.max_steps else {})}).train
    steps = sum(
        total_optimizer_steps(math.ceil(full.budget * r / config.batch_size), config) for r in range(1, full.rounds + 1)
    )
    runs = len(full.strategies) * len(full.seeds)
    full_pool = pool_pairs * full.pool_tasks / quick.pool_tasks
    n_scorings = 1 + len(full.seeds) * (full.rounds - 1) * ("uncertainty" in full.strategies)
    eval_scale = (full.heldout_tasks + 0.15 * full.demo_tasks) / quick.heldout_tasks
    parts = {
        "train": runs * steps * s_per_step,
        "pool scoring": n_scorings * full_pool * s_per_pool_pair,
        "evaluation": (runs * full.rounds + 1) * s_per_eval * eval_scale,
        "data": build_s
        * (full.pool_tasks + full.heldout_tasks + full.demo_tasks)
        / (quick.pool_tasks + quick.heldout_tasks),
    }
    print(
        f"projected full run ({full.pool_tasks} pool tasks, {full.budget} × {full.rounds} rounds, "
        f"{len(full.seeds)} seeds, {len(full.strategies)} strategies): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in parts.items())
        + f"; total {sum(parts.values()) / 60:.1f} min"
    )
