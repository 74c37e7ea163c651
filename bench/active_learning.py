"""Does uncertainty sampling need fewer votes than random? Simulated annotation rounds with an oracle, 3 strategies.

    python bench/active_learning.py --quick            # timings of one retrain and one pool scoring, a projection
    python bench/active_learning.py                    # the full run (resumes from its checkpoint under .work/)
    python bench/active_learning.py --domain demo      # the plain demo mix instead of the shifted domain

Each (strategy, seed) starts from the default backbone (`tiny-edit`, zero-shot) and a pool of unlabelled pairs.
Every round it picks the next `--budget` pairs, asks the oracle (the simulator's vote on the pair: the first
simulated annotator's, slips included; `--oracle careful` takes the careful choice instead), fine-tunes a fresh
model from `tiny-edit` on all votes so far with the worker's run params (`parse_params({"seed": s})`: 3 epochs,
batch 8, lr 3e-4, λ 0.5) and the project's loop, and measures it on fixed held-out sets. Strategies:

- `random`: `--budget` unlabelled pairs drawn uniformly;
- `coverage`: the next-pair query's order (fewest votes, then highest `pairs.priority`, then lowest id) under
  `trainer.sampling.COVERAGE_ONLY`: what the app offers without a model;
- `uncertainty`: the same order under `UNCERTAINTY_ONLY`, the priorities from the previous round's model's Δ on
  the pool (round 1: the zero-shot model's).

Domains (`--domain`): `shifted` (default) cuts pool and held-out tasks only from the photos pretraining never saw
(`trainer.pretrain.stream.HELDOUT_PHOTOS`) and phrases them with the held-out frames
(`trainer.pretrain.phrasing.heldout_instruction`), so the votes carry something the preset does not know yet;
`demo` uses the demo's own photos and phrasings, where zero-shot `tiny-edit` is already at ≈ 0.85 and
fine-tuning on a few hundred votes does not move it (docs/active-learning.md). Pool and held-out tasks are
disjoint (pool indices from 200,000, held-out from 300,000). A second held-out set is the demo store's own
held-out split (`--demo-tasks` tasks, `bench/learnability.demo_rows`): does fitting the domain cost the rest?
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402

from bench.edit_accuracy import _append_task_rows, evaluate_sets, rule_delta  # noqa: E402
from bench.learnability import DemoRows, demo_rows, quiet_torch, split_rows  # noqa: E402
from storage.demo_edits import build_task  # noqa: E402
from storage.demo_kinds import phrase_instruction  # noqa: E402
from storage.demo_votes import demo_votes, intended_choice, sim_annotators  # noqa: E402
from trainer.data import HELDOUT, eval_pairs  # noqa: E402
from trainer.evaluate import EvalPair, score_pairs  # noqa: E402
from trainer.model import JointRewardModel  # noqa: E402
from trainer.pretrain.phrasing import heldout_instruction  # noqa: E402
from trainer.pretrain.stream import HELDOUT_PHOTOS  # noqa: E402
from trainer.run_params import parse_params  # noqa: E402
from trainer.sampling import PRESETS, PairState, pair_priorities  # noqa: E402
from trainer.train import train  # noqa: E402

STRATEGIES = ("random", "coverage", "uncertainty")
POOL_START, HELDOUT_START = 200_000, 300_000  # demo task indices far from any store, bench or pretraining stream
OVERLAP_TARGET = 1  # the oracle labels a pair once; a labelled pair leaves the queue, as a filled one does
SCORE_BATCH = 32
CACHE_DIR = Path(tempfile.gettempdir()) / "jrm-bench-backbones"
DEFAULT_PLOT = Path("docs/img/active_learning.png")


# --- data ------------------------------------------------------------------------------------------------------


@dataclass
class Domain:
    """The pool (one oracle row per pair, pair id = index) and the held-out sets with the rule's Δ."""

    pool: list[dict[str, Any]]
    pool_pairs: list[EvalPair]
    sets: dict[str, tuple[list[EvalPair], np.ndarray]]


def domain_rows(start: int, n_tasks: int, folder: Path, *, shifted: bool, demo_seed: int) -> tuple[list, dict]:
    """Snapshot rows of `n_tasks` demo tasks from index `start` with simulated votes; and 'changed more' stats."""
    data, changed = DemoRows(rows=[]), {}
    annotators = sim_annotators(5)
    for index in range(start, start + n_tasks):
        rng = random.Random(f"jrm-demo:{demo_seed}:{index}")
        photos, phrase = (HELDOUT_PHOTOS, heldout_instruction) if shifted else (None, phrase_instruction)
        task = build_task(rng, seed=demo_seed, index=index, photos=photos, phrase=phrase)
        _append_task_rows(data, task, demo_votes(task, annotators=annotators), folder, index, changed)
    return data.rows, changed


def oracle_rows(rows: list[dict[str, Any]], oracle: str) -> list[dict[str, Any]]:
    """One row per pair (its first simulated vote); `careful`: the choice the candidates' qualities call for."""
    seen, pool = set(), []
    for row in rows:
        key = (row["task_id"], frozenset((row["left_candidate_id"], row["right_candidate_id"])))
        if key in seen:
            continue
        seen.add(key)
        if oracle == "careful":
            quality = [json.loads(row[f"{side}_extra"])["quality"] for side in ("left", "right")]
            choice = intended_choice(*quality, random.Random(f"al-oracle:{row['vote_id']}"))
            row = {**row, "choice": choice, "rationale": row["rationale"] if choice == row["choice"] else None}
        pool.append(row)
    return pool


def build_domain(args: argparse.Namespace, folder: Path) -> Domain:
    shifted = args.domain == "shifted"
    rows, _ = domain_rows(POOL_START, args.pool_tasks, folder, shifted=shifted, demo_seed=args.demo_seed)
    pool = oracle_rows(rows, args.oracle)
    heldout_rows, changed = domain_rows(
        HELDOUT_START, args.heldout_tasks, folder, shifted=shifted, demo_seed=args.demo_seed
    )
    heldout = eval_pairs(heldout_rows)
    sets = {f"{args.domain} held-out": (heldout, rule_delta(heldout, changed))}
    if args.demo_tasks:
        demo = demo_rows(args.demo_tasks, folder, demo_seed=args.demo_seed)
        pairs = eval_pairs(split_rows(demo.rows, HELDOUT))
        sets["demo held-out"] = (pairs, rule_delta(pairs, demo.stats["changed-more"]))
    return Domain(pool, eval_pairs(pool), sets)


# --- strategies ------------------------------------------------------------------------------------------------


def canonical_delta(pair: EvalPair, delta: float) -> float:
    """r(A) − r(B) with A the lower candidate id (Δ is as shown: r(left) − r(right))."""
    return delta if pair.left_candidate_id < pair.right_candidate_id else -delta


def queue_order(states: list[PairState], priorities: dict[int, float]) -> list[int]:
    """Pair ids as the next-pair query offers them: under the target only, fewest votes, highest priority, id."""
    open_states = [s for s in states if s.vote_count < OVERLAP_TARGET]
    return [s.pair_id for s in sorted(open_states, key=lambda s: (s.vote_count, -priorities[s.pair_id], s.pair_id))]


def pick(strategy: str, domain: Domain, labelled: set[int], budget: int, *, seed: int, rnd: int, delta) -> list[int]:
    """The next `budget` pool pairs of `strategy` (`delta`: the current model's Δ on the pool, for uncertainty)."""
    unlabelled = [i for i in range(len(domain.pool)) if i not in labelled]
    if strategy == "random":
        return random.Random(f"al-random:{seed}:{rnd}").sample(unlabelled, min(budget, len(unlabelled)))
    states = []
    for i, pair in enumerate(domain.pool_pairs):
        d = None if delta is None else canonical_delta(pair, float(delta[i]))
        states.append(PairState(pair_id=i, vote_count=int(i in labelled), delta=d, sigma=None))
    priorities = pair_priorities(states, PRESETS[strategy], overlap_target=OVERLAP_TARGET)
    return queue_order(states, priorities)[:budget]


# --- models ----------------------------------------------------------------------------------------------------


def retrain(rows: list[dict[str, Any]], *, seed: int, max_steps: int | None) -> tuple[JointRewardModel, float, int]:
    """A fresh `tiny-edit` fine-tuned on `rows` as the worker's run does (its params, `train`); model, s, steps."""
    params = parse_params({"seed": seed, **({"max_steps": max_steps} if max_steps else {})})
    set_seed(params.train.seed)  # the reward head's init, as trainer.pipeline does
    model = JointRewardModel.from_config(params.jrm, cache_dir=CACHE_DIR)
    if not rows:
        return model.eval(), 0.0, 0
    result = train(model, rows, config=params.train, jrm_config=params.jrm)
    return model.eval(), result.seconds, result.steps


def pool_delta(model: JointRewardModel, domain: Domain) -> tuple[list[float], float]:
    """The model's Δ (as shown) on every pool pair, and the seconds it took."""
    started = time.perf_counter()
    scores = score_pairs(model, domain.pool_pairs, batch_size=SCORE_BATCH, instruction_swap=False)
    return [round(float(d), 5) for d in scores.delta], time.perf_counter() - started


def measure(model: JointRewardModel, domain: Domain) -> dict[str, dict[str, Any]]:
    """Accuracy and its companions on every held-out set (`bench/edit_accuracy.evaluate_sets`, no bootstrap)."""
    sets = evaluate_sets(model, domain.sets, n_boot=0)
    keys = ("accuracy", "accuracy_with_ties", "swap_both_correct", "n_strict", "n_tasks", "rule_accuracy")
    return {name: {key: result[key] for key in keys} for name, result in sets.items()}


# --- the rounds, checkpointed ----------------------------------------------------------------------------------


class Checkpoint:
    """Results by "zero-shot" and "strategy/seed/round", written whole after each entry (a rerun resumes)."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path, self.settings = path, settings
        self.results: dict[str, Any] = {}
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["settings"] != settings:
                raise SystemExit(f"{path} holds results of other settings; pass --checkpoint with a new file.")
            self.results = saved["results"]

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.results[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": self.settings, "results": self.results}, default=float))
        os.replace(tmp, self.path)


def zero_shot(domain: Domain, checkpoint: Checkpoint) -> dict[str, Any]:
    if "zero-shot" not in checkpoint.results:
        model, _, _ = retrain([], seed=0, max_steps=None)
        delta, score_s = pool_delta(model, domain)
        checkpoint.put("zero-shot", {"votes": 0, "sets": measure(model, domain), "delta": delta, "score_s": score_s})
    return checkpoint.results["zero-shot"]


def run_strategy(strategy: str, seed: int, domain: Domain, args: argparse.Namespace, checkpoint: Checkpoint) -> None:
    """Rounds 1 … `--rounds` of one strategy and seed; rounds already in the checkpoint are skipped."""
    previous = zero_shot(domain, checkpoint)
    labelled: list[int] = []
    for rnd in range(1, args.rounds + 1):
        key = f"{strategy}/{seed}/{rnd}"
        if key in checkpoint.results:
            previous = checkpoint.results[key]
            labelled = previous["labelled"]
            continue
        delta = previous.get("delta") if strategy == "uncertainty" else None
        labelled = labelled + pick(strategy, domain, set(labelled), args.budget, seed=seed, rnd=rnd, delta=delta)
        rows = [domain.pool[i] for i in labelled]
        model, train_s, steps = retrain(rows, seed=seed, max_steps=args.max_steps)
        entry = {"votes": len(labelled), "labelled": labelled, "train_s": train_s, "steps": steps}
        eval_started = time.perf_counter()
        entry["sets"], entry["eval_s"] = measure(model, domain), time.perf_counter() - eval_started
        if strategy == "uncertainty" and rnd < args.rounds:  # the next round's priorities
            entry["delta"], entry["score_s"] = pool_delta(model, domain)
        checkpoint.put(key, entry)
        previous = entry
        first = next(iter(entry["sets"].values()))
        print(
            f"  {key}: {len(labelled)} votes, {steps} steps {train_s:.0f} s, held-out {first['accuracy']:.3f}",
            flush=True,
        )


# --- CLI -------------------------------------------------------------------------------------------------------


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What defines the experiment (seeds and strategies are keys of its results, so more can be added)."""
    names = ("domain", "oracle", "demo_seed", "pool_tasks", "heldout_tasks", "demo_tasks", "budget", "rounds")
    return {name: getattr(args, name) for name in (*names, "max_steps")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domain", choices=("shifted", "demo"), default="shifted", help="Where the tasks come from.")
    parser.add_argument("--oracle", choices=("simulated", "careful"), default="simulated", help="Slips or none.")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="Comma-separated strategies.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds (training, random picks).")
    parser.add_argument("--pool-tasks", type=int, default=500, help="Tasks whose pairs form the unlabelled pool.")
    parser.add_argument("--heldout-tasks", type=int, default=150, help="Held-out tasks of the domain.")
    parser.add_argument("--demo-tasks", type=int, default=600, help="Demo store whose held-out split is a set (0: no).")
    parser.add_argument("--budget", type=int, default=80, help="Pairs labelled per round.")
    parser.add_argument("--rounds", type=int, default=6, help="Rounds of labelling and retraining.")
    parser.add_argument("--max-steps", type=int, help="Cap on each retrain's steps (default: the worker's 3 epochs).")
    parser.add_argument("--demo-seed", type=int, default=0, help="The demo generator's seed.")
    parser.add_argument(
        "--checkpoint", type=Path, help="Results JSON (default: .work/active_learning/<settings>.json)."
    )
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="Where to save the plot (PNG).")
    parser.add_argument("--quick", action="store_true", help="Time a tiny setting and project the full run's time.")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("JRM_TORCH_THREADS", "1")))
    args = parser.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if unknown := sorted(set(args.strategies) - set(STRATEGIES)):
        parser.error(f"--strategies takes {', '.join(STRATEGIES)}; got {unknown}.")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    from bench.active_learning_report import print_report, quick_projection, save_plot

    args = parse_args(argv)
    quiet_torch(args.threads)
    full = argparse.Namespace(**vars(args))
    if args.quick:
        args.pool_tasks, args.heldout_tasks, args.demo_tasks, args.budget, args.rounds = 40, 20, 0, 24, 2
        args.seeds = [0]
        args.plot = None if args.plot == DEFAULT_PLOT else args.plot  # a quick run leaves the docs' plot alone
    settings = settings_of(args)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    quick_dir = Path(tempfile.mkdtemp(prefix="jrm-al-quick-"))
    path = args.checkpoint or (quick_dir if args.quick else Path(".work/active_learning")) / f"{digest}.json"
    print(f"# bench/active_learning.py {' '.join(sys.argv[1:])}\n# settings {settings}, checkpoint {path}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jrm-active-learning-") as folder:
        domain = build_domain(args, Path(folder))
        build_s, args.pool_size = time.perf_counter() - started, len(domain.pool)
        print(
            f"pool {len(domain.pool)} pairs; held-out sets: "
            + ", ".join(f"{name} {len(pairs)} votes" for name, (pairs, _) in domain.sets.items())
            + f"; built in {build_s:.0f} s",
            flush=True,
        )
        checkpoint = Checkpoint(path, settings)
        for seed in args.seeds:
            for strategy in args.strategies:
                run_strategy(strategy, seed, domain, args, checkpoint)
    print_report(checkpoint.results, args, domain_pool=domain.pool)
    if args.quick:
        quick_projection(checkpoint.results, args, full, build_s=build_s)
    if args.plot:
        save_plot(checkpoint.results, args, args.plot)
        print(f"plot: {args.plot}")
    print(f"\nTotal {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
