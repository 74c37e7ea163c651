"""Does a reward model with extra heads (σ, per-dimension scores) judge demo edits better? Held-out accuracy by arm.

    python bench/heads_ablation.py                                     # 200 tasks, 150 steps, seeds 0–4, five arms
    python bench/heads_ablation.py --arms single,heads --seeds 0 --steps 50

Arms, each fine-tuning a fresh `tiny-edit` (its pretrained reward head included) with the project's loop
(`trainer.train.train`, the run defaults, λ = 0.5) on the demo store's train split (`bench.learnability.demo_rows`,
the votes `build_demo(tasks, seed 0)` stores), scored on its held-out split by `trainer.evaluate.evaluate_pairs`:

- `single`: the reward head alone (the shipped model);
- `sigma-probit`: + the uncertainty head (`JRMConfig.uncertainty_head`), the loss's expectation over N(μ, σ²) by the
  probit approximation (`uncertainty_loss="probit"`);
- `sigma`: the same with the default Gauss–Hermite expectation;
- `dims`: the reward head + the dimension heads (instruction following, quality, preservation) and their loss;
- `heads`: both (σ by Gauss–Hermite, and the dimension heads).

**Where the dimension labels come from.** The demo's simulated annotators rate no dimensions, so the votes have no
`dimension_scores`. The simulator does know each candidate's flaw (`Candidate.extra["flaw"]`), and the flaws are
defined along these axes (storage/demo_edits.py: a partial edit did the right thing too weakly, an extra change did
it and also something unasked, …), so this bench derives noise-free comparative ratings from the flaws with
`FLAW_PROFILE` below (its own mapping, not the simulator's) and adds them to every vote, as the Annotate tab's
sliders would record them (negative: the left edit as shown is better). The demo has no image-quality flaw: every
vote rates quality 0 (the same). Real annotators' ratings are noisier and optional.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402

from bench.learnability import _fmt, demo_rows, quiet_torch, split_rows, table  # noqa: E402
from storage.demo_edits import FLAWS, TIE_MARGIN  # noqa: E402
from trainer.data import HELDOUT, TRAIN, eval_pairs  # noqa: E402
from trainer.evaluate import evaluate_pairs  # noqa: E402
from trainer.heads import DIMENSIONS  # noqa: E402
from trainer.model import JointRewardModel, JRMConfig  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402

# Per flaw, how well a candidate does on each dimension (instruction following, quality, preservation), in [0, 1].
FLAW_PROFILE: dict[str, tuple[float, float, float]] = {
    "none": (1.0, 1.0, 1.0),
    "partial_strength": (0.5, 1.0, 1.0),  # the right edit, too weak
    "extra_change": (1.0, 1.0, 0.0),  # the right edit and something unasked
    "wrong_param": (0.25, 1.0, 1.0),  # the right operation, the wrong way
    "wrong_op": (0.0, 1.0, 0.0),  # another edit: not asked, and it changed what should stay
    "no_op": (0.0, 1.0, 1.0),  # nothing done, nothing spoilt
}
assert set(FLAW_PROFILE) == set(FLAWS), "storage.demo_edits changed its flaws; update FLAW_PROFILE"
ARMS: dict[str, dict[str, Any]] = {
    "single": {},
    "sigma-probit": {"uncertainty_head": True, "uncertainty_loss": "probit"},
    "sigma": {"uncertainty_head": True},
    "dims": {"dimension_heads": DIMENSIONS},
    "heads": {"uncertainty_head": True, "dimension_heads": DIMENSIONS},
}
EVAL_BATCH = 32


def flaw_ratings(left_extra: str, right_extra: str) -> dict[str, int]:
    """A vote's comparative ratings as the sliders record them: right − left per dimension, within ±TIE_MARGIN → 0,
    over 0.5 → ±2, else ±1."""
    left = FLAW_PROFILE[json.loads(left_extra)["flaw"]]
    right = FLAW_PROFILE[json.loads(right_extra)["flaw"]]
    ratings = {}
    for name, l_value, r_value in zip(DIMENSIONS, left, right, strict=True):
        diff = r_value - l_value
        ratings[name] = 0 if abs(diff) <= TIE_MARGIN else int(np.sign(diff)) * (2 if abs(diff) > 0.5 else 1)
    return ratings


def with_ratings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with `dimension_scores` (JSON text, as a snapshot row holds it) derived from the candidates' flaws."""
    return [
        {**row, "dimension_scores": json.dumps(flaw_ratings(row["left_extra"], row["right_extra"]))} for row in rows
    ]


def run_arm(arm: str, train_rows: list[dict], pairs: list, *, steps: int, seed: int, n_boot: int) -> dict[str, Any]:
    """Fine-tune a fresh tiny-edit with the arm's heads; its held-out report and train seconds."""
    set_seed(seed)  # the heads' init, as trainer.pipeline does
    jrm = JRMConfig(backbone="tiny-edit", **ARMS[arm])
    model = JointRewardModel.from_config(jrm, cache_dir=Path(tempfile.gettempdir()) / "jrm-bench-backbones")
    config = TrainConfig(epochs=1000, max_steps=steps, seed=seed, log_every=max(1, steps // 4))
    result = train(model, train_rows, config=config, jrm_config=jrm)
    report = evaluate_pairs(model.eval(), pairs, batch_size=EVAL_BATCH, n_bootstrap=n_boot)
    heads = report.get("heads", {})
    return {
        "arm": arm,
        "seed": seed,
        "train_s": result.seconds,
        "accuracy": report["heldout_accuracy"],
        "accuracy_with_ties": report["accuracy_with_ties"]["accuracy"],
        "swap_both_correct": (report.get("instruction_swap") or {}).get("both_correct"),
        "uncertainty": heads.get("uncertainty"),
        "dimensions": heads.get("dimensions"),
    }


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return "–" if not values else f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def summary(results: list[dict]) -> str:
    """Mean ± std over seeds per arm (held-out demo votes)."""
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for run in results:
        by_arm[run["arm"]].append(run)
    single = {r["seed"]: r["accuracy"] for r in by_arm.get("single", [])}
    header = ["arm", "seeds", "pairwise acc.", "Δ vs single (paired)", "acc. w/ ties", "swap both", "σ mean"]
    header += ["acc. low σ / high σ"]
    header += [f"{name} acc." for name in DIMENSIONS]
    body = []
    for arm, runs in by_arm.items():
        unc = [r["uncertainty"] or {} for r in runs]
        dims = [r["dimensions"] or {} for r in runs]
        low = _mean_std([u.get("accuracy_low_sigma") for u in unc])
        high = _mean_std([u.get("accuracy_high_sigma") for u in unc])
        paired = [r["accuracy"] - single[r["seed"]] for r in runs if r["seed"] in single]
        row = [arm, str(len(runs)), _mean_std([r["accuracy"] for r in runs]), _mean_std(paired)]
        row += [_mean_std([r["accuracy_with_ties"] for r in runs]), _mean_std([r["swap_both_correct"] for r in runs])]
        row += [_mean_std([u.get("sigma_mean") for u in unc]), "–" if low == "–" else f"{low} / {high}"]
        row += [_mean_std([(d.get(name) or {}).get("accuracy") for d in dims]) for name in DIMENSIONS]
        body.append(row)
    return table(header, body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="Demo tasks in the store (the app seeds 200).")
    parser.add_argument("--steps", type=int, default=150, help="Fine-tune steps (150: the first run as shipped).")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="Comma-separated training seeds.")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"Comma-separated arms: {', '.join(ARMS)}.")
    parser.add_argument("--bootstrap", type=int, default=200, help="Bootstrap resamples for the report's CIs.")
    parser.add_argument("--json", type=Path, help="Also write every result here.")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("JRM_TORCH_THREADS", "1")))
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown or not args.arms:
        parser.error(f"--arms takes {', '.join(ARMS)}; got {unknown or 'nothing'}.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_torch(args.threads)
    started = time.perf_counter()
    print(f"# bench/heads_ablation.py {' '.join(sys.argv[1:])}")
    results = []
    with tempfile.TemporaryDirectory(prefix="jrm-heads-ablation-") as folder:
        rows = with_ratings(demo_rows(args.tasks, folder).rows)
        train_rows, pairs = split_rows(rows, TRAIN), eval_pairs(split_rows(rows, HELDOUT))
        print(f"{args.tasks} demo tasks: {len(train_rows)} train votes, {len(pairs)} held-out votes", flush=True)
        for arm in args.arms:
            for seed in args.seeds:
                run = run_arm(arm, train_rows, pairs, steps=args.steps, seed=seed, n_boot=args.bootstrap)
                results.append(run)
                print(f"  {arm} seed {seed}: held-out {_fmt(run['accuracy'])}, {run['train_s']:.0f} s", flush=True)
    print("\nMean ± std over seeds (demo held-out):\n")
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nTotal {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
