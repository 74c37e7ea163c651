"""Held-out evaluation: score vote pairs pointwise with the one forward, then `metrics.evaluation_report`.

Every distinct (task, candidate image, instruction) is scored once, in batches, by `JointRewardModel.forward(...,
with_lm=False)` under `torch.no_grad()` (what `score()` runs, keeping the features too). A pair's Δ is
`r(left) − r(right)` with left/right as shown. Besides the report this adds an **instruction-swap check**: for a
strict pair whose rejected candidate is a correct edit for another instruction, both candidates are re-scored
under that instruction and the preference must flip (see docs/evaluation.md, "Instruction swap").
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from storage.demo_edits import FLAWS
from storage.demo_kinds import EDIT_KINDS, EditSpec, phrase_instruction
from trainer.head_metrics import HeadPairScores, heads_report, pair_head_scores
from trainer.metrics import LABELS, CandidateGroup, evaluation_report
from trainer.model import JointRewardModel
from trainer.prompting import build_example, collate

SWAP_FLAWS = ("wrong_op", "wrong_param")  # demo flaws whose single edit is exactly right for another instruction
SWAP_INSTRUCTION_KEY = "swap_instruction"  # generic hook: the instruction a candidate's edit correctly follows
EDITREWARD_REQUIRED = ("prompt", "path_src", "path1", "path2", "model1", "model2")
assert set(SWAP_FLAWS) <= set(FLAWS), "storage.demo_edits renamed its flaws; update SWAP_FLAWS"


@dataclass
class EvalPair:
    """One held-out vote: the task's source and instruction, both candidates as shown, and the human label."""

    task_id: int
    task_key: str
    instruction: str
    source: Image.Image
    left: Image.Image
    right: Image.Image
    label: str  # "left" | "right" | "tie" | "both_bad"
    left_candidate_id: int | None = None
    right_candidate_id: int | None = None
    left_extra: dict | None = None  # Candidate.extra, e.g. the demo's {"flaw", "quality", "edits", "description"}
    right_extra: dict | None = None
    dimension_scores: dict | None = None  # the vote's {dimension: -2 … 2}, as shown (negative: left better)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"EvalPair label must be one of {LABELS}, got {self.label!r} (task {self.task_key}).")


@dataclass(frozen=True)
class SwapPair:
    """A strict pair whose rejected edit correctly follows `instruction` (another instruction than the task's)."""

    pair_index: int
    chosen: str  # "left" | "right": the side the human preferred under the task's instruction
    instruction: str


@dataclass
class PairScores:
    """Rewards per pair and what the report needs besides them."""

    left: np.ndarray  # (P,) r(left) under the task's instruction
    right: np.ndarray  # (P,)
    features: torch.Tensor  # (N, H) one row per distinct (task, candidate) scored under the task's instruction
    groups: list[CandidateGroup]  # tasks with >= 3 distinct candidates
    swaps: list[SwapPair]
    swap_original: np.ndarray  # (S,) r(chosen) − r(rejected) under the task's instruction
    swap_swapped: np.ndarray  # (S,) the same under the swap instruction: should be < 0
    n_scored: int  # sequences run through the model (swap re-scores included)
    heads: HeadPairScores | None = None  # σ and dimension scores per pair, when the model has those heads

    @property
    def delta(self) -> np.ndarray:
        """(P,) r(left) − r(right)."""
        return self.left - self.right


# --- scoring ---------------------------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: JointRewardModel) -> Iterator[None]:
    """Dropout off while scoring; the caller's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")


def _run_model(
    model: JointRewardModel, items: Sequence[tuple[Image.Image, Image.Image, str]], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Rewards (N,), score-position features (N, H) and the extra heads' outputs ("log_sigma" (N,), "dimension_scores"
    (N, D), when the model has them) of (source, edited, instruction) items, in order."""
    _check_batch_size(batch_size)
    rewards, features, heads = [], [], {}
    with torch.no_grad(), _eval_mode(model):
        for start in range(0, len(items), batch_size):
            examples = [
                build_example(model.processor, source=source, edited=edited, instruction=instruction)
                for source, edited, instruction in items[start : start + batch_size]
            ]
            out = model(collate(examples, model.processor), with_lm=False)
            rewards.append(out.rewards.float().cpu())  # (b,)
            features.append(out.features.float().cpu())  # (b, H)
            for name in ("log_sigma", "dimension_scores"):
                if getattr(out, name) is not None:
                    heads.setdefault(name, []).append(getattr(out, name).float().cpu())
    if not rewards:
        return torch.zeros(0), torch.zeros(0, model.hidden_size), {}
    return torch.cat(rewards), torch.cat(features), {name: torch.cat(parts) for name, parts in heads.items()}


def score_images(
    model: JointRewardModel,
    *,
    source: Image.Image,
    instruction: str,
    edited: list[Image.Image],
    batch_size: int = 16,
) -> list[float]:
    """Pointwise scores of each edited image for (source, instruction), in order."""
    rewards, _, _ = _run_model(model, [(source, image, instruction) for image in edited], batch_size)
    return rewards.tolist()


class _ScorePlan:
    """Distinct sequences to score, each once; `add` returns the row of an item (new or already planned)."""

    def __init__(self) -> None:
        self.rows: dict[Hashable, int] = {}
        self.items: list[tuple[Image.Image, Image.Image, str]] = []

    def add(self, key: Hashable, source: Image.Image, edited: Image.Image, instruction: str) -> int:
        if key not in self.rows:
            self.rows[key] = len(self.items)
            self.items.append((source, edited, instruction))
        return self.rows[key]


class _CandidateKeys:
    """A candidate's identity within a task: its id when known, else a digest of its pixels (memoised per image)."""

    def __init__(self) -> None:
        self._digests: dict[int, tuple[Image.Image, str]] = {}  # id(image) → (image kept alive, digest)

    def __call__(self, candidate_id: int | None, image: Image.Image) -> Hashable:
        if candidate_id is not None:
            return ("candidate", candidate_id)
        if id(image) not in self._digests:
            digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
            self._digests[id(image)] = (image, digest)
        return ("pixels", self._digests[id(image)][1])


# --- instruction swap ------------------------------------------------------------------------------------------


def _single_full_edit(edits: Any) -> EditSpec | None:
    """The demo `edits` list as one full-strength EditSpec, or None when it is anything else."""
    if not isinstance(edits, list) or len(edits) != 1 or not isinstance(edits[0], dict):
        return None
    kind, params, strength = edits[0].get("kind"), edits[0].get("params") or {}, edits[0].get("strength", 1.0)
    if kind not in EDIT_KINDS or strength != 1 or not isinstance(params, dict):
        return None
    if set(params) != {name for name, _ in EDIT_KINDS[kind].params}:
        return None
    return EditSpec.of(kind, {str(k): str(v) for k, v in params.items()})


def swap_instruction(extra: dict | None, *, seed: str = "") -> str | None:
    """The instruction a candidate's edit correctly follows: `extra["swap_instruction"]`, or a phrasing of a demo
    wrong-operation / wrong-parameter edit (deterministic for `seed`); None when `extra` does not tell."""
    if not extra:
        return None
    explicit = extra.get(SWAP_INSTRUCTION_KEY)
    if isinstance(explicit, str) and explicit.strip():
        return explicit.strip()
    if extra.get("flaw") not in SWAP_FLAWS:
        return None
    spec = _single_full_edit(extra.get("edits"))
    return None if spec is None else phrase_instruction(spec, random.Random(f"jrm-swap:{seed}:{spec}"))


def swap_pairs(pairs: Sequence[EvalPair]) -> list[SwapPair]:
    """Strict pairs whose rejected candidate carries another instruction it follows; the others are skipped."""
    swaps = []
    for index, pair in enumerate(pairs):
        if pair.label not in ("left", "right"):
            continue
        chosen, rejected = pair.left_extra, pair.right_extra
        if pair.label == "right":
            chosen, rejected = rejected, chosen
        instruction = swap_instruction(rejected, seed=pair.task_key)
        if instruction is None or instruction.casefold() == pair.instruction.strip().casefold():
            continue
        edits = (rejected or {}).get("edits")
        if edits is not None and chosen and chosen.get("edits") == edits:
            continue  # both did the same edit: nothing can flip
        swaps.append(SwapPair(index, pair.label, instruction))
    return swaps


# --- pairs → scores → report -----------------------------------------------------------------------------------


def score_pairs(
    model: JointRewardModel, pairs: Sequence[EvalPair], *, batch_size: int = 16, instruction_swap: bool = True
) -> PairScores:
    """Score each distinct (task, candidate, instruction) once and assemble per-pair rewards, groups and swaps."""
    plan, key_of = _ScorePlan(), _CandidateKeys()
    sides = []  # per pair: ((left key, left row), (right key, right row))
    for pair in pairs:
        left_key, right_key = key_of(pair.left_candidate_id, pair.left), key_of(pair.right_candidate_id, pair.right)
        left_row = plan.add((pair.task_id, left_key, pair.instruction), pair.source, pair.left, pair.instruction)
        right_row = plan.add((pair.task_id, right_key, pair.instruction), pair.source, pair.right, pair.instruction)
        sides.append(((left_key, left_row), (right_key, right_row)))
    n_original = len(plan.items)
    swaps = swap_pairs(pairs) if instruction_swap else []
    swap_rows = []  # per swap: (chosen row, rejected row) under the swap instruction
    for swap in swaps:
        pair, (left, right) = pairs[swap.pair_index], sides[swap.pair_index]
        rows = [
            plan.add((pair.task_id, key, swap.instruction), pair.source, image, swap.instruction)
            for (key, _), image in ((left, pair.left), (right, pair.right))
        ]
        swap_rows.append(rows if swap.chosen == "left" else rows[::-1])
    rewards, features, heads = _run_model(model, plan.items, batch_size)  # (N,), (N, H), extra heads
    r = rewards.double().numpy()
    left_rows = np.array([left[1] for left, _ in sides], dtype=np.int64)  # (P,)
    right_rows = np.array([right[1] for _, right in sides], dtype=np.int64)  # (P,)
    original = [_chosen_minus_rejected(r, sides[s.pair_index], s.chosen) for s in swaps]
    return PairScores(
        left=r[left_rows],
        right=r[right_rows],
        features=features[:n_original],
        groups=_candidate_groups(pairs, sides, r),
        swaps=swaps,
        swap_original=np.array(original, dtype=np.float64),
        swap_swapped=np.array([r[c] - r[j] for c, j in swap_rows], dtype=np.float64),
        n_scored=len(plan.items),
        heads=pair_head_scores(heads, left_rows, right_rows, model.jrm_config.dimension_heads),
    )


def _chosen_minus_rejected(rewards: np.ndarray, sides: tuple, chosen: str) -> float:
    (_, left_row), (_, right_row) = sides
    delta = rewards[left_row] - rewards[right_row]
    return float(delta if chosen == "left" else -delta)


def _candidate_groups(pairs: Sequence[EvalPair], sides: list, rewards: np.ndarray) -> list[CandidateGroup]:
    """One CandidateGroup per task with >= 3 distinct candidates among its pairs."""
    scores: dict[int, dict[Hashable, float]] = {}
    votes: dict[int, list[tuple[Hashable, Hashable, str]]] = {}
    for pair, ((left_key, left_row), (right_key, right_row)) in zip(pairs, sides, strict=True):
        task_scores = scores.setdefault(pair.task_id, {})
        task_scores.setdefault(left_key, float(rewards[left_row]))
        task_scores.setdefault(right_key, float(rewards[right_row]))
        votes.setdefault(pair.task_id, []).append((left_key, right_key, pair.label))
    return [CandidateGroup(scores=scores[t], votes=votes[t]) for t in scores if len(scores[t]) >= 3]


def evaluate_pairs(
    model: JointRewardModel,
    pairs: list[EvalPair],
    *,
    batch_size: int = 16,
    instruction_swap: bool = True,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """`metrics.evaluation_report` of `pairs` plus n_pairs, n_scored and heldout_accuracy (= pairwise accuracy)."""
    if not pairs:
        raise ValueError("evaluate_pairs needs at least one pair; the held-out split is empty.")
    scores = score_pairs(model, pairs, batch_size=batch_size, instruction_swap=instruction_swap)
    return report_scores(scores, pairs, instruction_swap=instruction_swap, n_bootstrap=n_bootstrap, seed=seed)


def report_scores(
    scores: PairScores, pairs: list[EvalPair], *, instruction_swap: bool = True, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """`evaluate_pairs`'s report from scores already computed (the promotion gate reuses the same scores)."""
    report = evaluation_report(
        scores.delta,
        [pair.label for pair in pairs],
        task_ids=[pair.task_id for pair in pairs],
        features=scores.features,
        groups=scores.groups,
        swap_deltas=(scores.swap_original, scores.swap_swapped) if instruction_swap else None,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    if scores.heads is not None:
        ratings = [pair.dimension_scores for pair in pairs]
        report["heads"] = heads_report(scores.heads, scores.delta, [pair.label for pair in pairs], ratings)
    return {
        **report,
        "n_pairs": len(pairs),
        "n_scored": scores.n_scored,
        "heldout_accuracy": report["pairwise_accuracy"]["value"],
    }


# --- EditReward-format files -----------------------------------------------------------------------------------


def editreward_pairs(path: str | Path, images_root: str | Path) -> list[EvalPair]:
    """EvalPairs from an EditReward JSON list (path1 = preferred, shown left; `tie_case` → tie), no DB import."""
    path, images_root = Path(path), Path(images_root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file.")
    if not images_root.is_dir():
        raise FileNotFoundError(f"Images root {images_root} is not a folder.")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a UTF-8 JSON file: {exc}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got a JSON {type(records).__name__}.")
    images: dict[Path, Image.Image] = {}  # each file decoded once: a source repeats on every row of its task
    tasks: dict[tuple[str, str], int] = {}
    pairs = []
    for row, record in enumerate(records, start=1):
        try:
            pairs.append(_editreward_pair(record, images_root, images, tasks))
        except ValueError as exc:
            raise ValueError(f"{path.name} row {row}: {exc}") from None
    return pairs


def _editreward_pair(
    record: Any, root: Path, images: dict[Path, Image.Image], tasks: dict[tuple[str, str], int]
) -> EvalPair:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in EDITREWARD_REQUIRED if key not in record]
    if missing:
        raise ValueError(f"missing key {', '.join(map(repr, missing))}")
    text = {key: _nonempty_text(record, key) for key in EDITREWARD_REQUIRED}
    source, left, right = (_load_image(root, text[key], key, images) for key in ("path_src", "path1", "path2"))
    task_id = tasks.setdefault((text["path_src"], text["prompt"]), len(tasks) + 1)
    return EvalPair(
        task_id=task_id,
        task_key=f"{text['path_src']}::{text['prompt']}",
        instruction=text["prompt"],
        source=source,
        left=left,
        right=right,
        label="tie" if _tie_case(record.get("tie_case")) else "left",
        left_extra={"model": text["model1"], "path": text["path1"]},
        right_extra={"model": text["model2"], "path": text["path2"]},
    )


def _nonempty_text(record: dict, key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string, got {value!r:.80}")
    return value.strip()


def _tie_case(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValueError(f"'tie_case' must be true/false or 0/1, got {value!r}")


def _load_image(root: Path, value: str, key: str, images: dict[Path, Image.Image]) -> Image.Image:
    """The RGB picture at `root / value` (a path inside `root`), decoded once per file."""
    relative = PurePosixPath(value.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{key!r} must be a path inside the images root, got {value!r}")
    file = root / relative
    if file not in images:
        if not file.is_file():
            raise ValueError(f"{key!r} {value!r}: the image file {file} is missing")
        try:
            with Image.open(file) as picture:
                images[file] = picture.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{key!r} {value!r}: {file} is not a readable image ({exc})") from None
    return images[file]
