"""Pretraining's endless stream of generated edits: a pure function of (seed, step), never the demo store's tasks.

Every step draws `tasks_per_step` fresh tasks with `storage.demo_edits.build_task` from the stream
`jrm-pretrain:<seed>:<step>:<i>` (the demo store draws `jrm-demo:<seed>:<i>`, so no task is shared), on sources
from every offline photo but `HELDOUT_PHOTOS`, phrased by the grammar in `trainer.pretrain.phrasing`. Each task
gives one example of each objective, all of whose targets need the pixels:

- **preference**: mostly the correct edit against a flawed candidate, else two flawed ones; the better one (by the
  simulated annotators' quality) chosen; qualities within `TIE_MARGIN` are a Davidson tie. A share of them
  (`PretrainConfig.swap_share`) are *instruction swaps*: a wrong-operation / wrong-parameter candidate under the
  instruction it does follow, chosen over the task's correct edit under that same instruction — the order of two
  pictures flips with the instruction, which neither other pair teaches;
- **instruction check**: the same (source, edit) under its own instruction (chosen) and under a mismatched one
  (rejected): half the time the instruction that one of its flawed candidates *does* follow (a hard negative),
  otherwise a random other edit;
- **captioning**: (source, candidate) with no instruction in the prompt; the target is what it did ("Tinted it red.").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from storage.demo_edits import TIE_MARGIN, DemoCandidate, DemoTask, build_task
from storage.demo_kinds import EDIT_KINDS, EditSpec, sample_spec
from storage.demo_photos import available_photos
from trainer.pretrain.phrasing import instruction

# Photos pretraining never shows: accuracy on demo tasks cut from them measures transfer to unseen pictures.
HELDOUT_PHOTOS = ("chelsea", "motorcycle")
SWAP_FLAWS = ("wrong_op", "wrong_param")
P_CORRECT_VS_FLAWED = 0.8


@dataclass(frozen=True)
class PairItem:
    """One pair of sequences: (source, chosen edit, chosen instruction) over (source, rejected, instruction)."""

    source: Image.Image
    chosen: Image.Image
    chosen_instruction: str
    rejected: Image.Image
    rejected_instruction: str
    is_tie: bool
    is_swap: bool = False  # an instruction swap (see `preference_item`)


@dataclass(frozen=True)
class CaptionItem:
    """(source, edit) and the caption to predict."""

    source: Image.Image
    edited: Image.Image
    caption: str


@dataclass(frozen=True)
class StepData:
    """One step's examples."""

    preferences: list[PairItem]
    checks: list[PairItem]
    captions: list[CaptionItem]


def pretrain_photos() -> tuple[str, ...]:
    """The offline photos pretraining draws from (all that load here but the held-out ones)."""
    photos = tuple(name for name in available_photos() if name not in HELDOUT_PHOTOS)
    if not photos:
        raise RuntimeError("No photo is left for pretraining once the held-out photos are set aside.")
    return photos


def caption_of(candidate: DemoCandidate) -> str:
    """The captioning target: what the candidate visibly did to the source ("mirrored it left to right.").

    Its first *token* must carry the answer: the score position predicts the first target token, so a constant
    opening lets the score position ignore the pictures. "It …" is constant; so is a capitalised first word,
    which the tiny tokenizer splits after the template's space into "Ġ" + "M" + … Lower case keeps
    " mirrored" one token (docs/training.md, "The pretrained preset").
    """
    return f"{candidate.describe()}."


def stream_task(seed: int, step: int, i: int, *, namespace: str = "jrm-pretrain") -> DemoTask:
    """Task `i` of step `step`: fresh pixels, edit and phrasing, a pure function of its arguments."""
    rng = random.Random(f"{namespace}:{seed}:{step}:{i}")
    return build_task(rng, seed=seed, index=step, photos=pretrain_photos(), phrase=instruction)


def preference_item(task: DemoTask, rng: random.Random, swap_share: float = 0.0) -> PairItem:
    """Two candidates of `task`, the better first; a tie when their qualities are within TIE_MARGIN.

    Most pairs (`P_CORRECT_VS_FLAWED`) are the correct edit against a flawed one: a clear, decisive signal that
    lets the pair loss leave the Δ = 0 saddle (random pairs, a third of them ties or near-ties, kept it at
    log 3 for 4,000 steps); the rest are two flawed candidates, where the near-equal ones are Davidson ties.
    With probability `swap_share` (and a candidate that follows another instruction) the pair is an instruction
    swap instead. `swap_share = 0` draws nothing extra: the stream is then the one the first preset was built on.
    """
    correct = next(c for c in task.candidates if c.flaw == "none")
    if swap_share > 0 and rng.random() < swap_share:
        swaps = [(c, spec) for c in task.candidates if (spec := _single_edit(c)) is not None and spec != task.edit]
        if swaps:
            candidate, spec = rng.choice(swaps)
            other = instruction(spec, rng)
            return PairItem(task.source, candidate.image, other, correct.image, other, False, is_swap=True)
    flawed = [c for c in task.candidates if c.flaw != "none"]
    if len(flawed) < 2 or rng.random() < P_CORRECT_VS_FLAWED:
        first, second = correct, rng.choice(flawed)
    else:
        first, second = rng.sample(flawed, 2)
    if second.quality > first.quality:
        first, second = second, first
    tie = first.quality - second.quality <= TIE_MARGIN
    return PairItem(task.source, first.image, task.instruction, second.image, task.instruction, tie)


def _single_edit(candidate: DemoCandidate) -> EditSpec | None:
    return candidate.edits[0] if candidate.flaw in SWAP_FLAWS and len(candidate.edits) == 1 else None


def mismatched_instruction(task: DemoTask, rng: random.Random) -> str:
    """An instruction the task's correct edit does not follow: a flawed candidate's own edit, or another kind's."""
    hard = [spec for c in task.candidates if (spec := _single_edit(c)) is not None and spec != task.edit]
    if hard and rng.random() < 0.5:
        return instruction(rng.choice(hard), rng)
    kind = rng.choice([name for name in EDIT_KINDS if name != task.edit.kind])
    return instruction(sample_spec(kind, rng), rng)


def check_item(task: DemoTask, rng: random.Random) -> PairItem:
    """The correct edit under its own instruction (chosen) and under a mismatched one (rejected)."""
    correct = next(c for c in task.candidates if c.flaw == "none")
    wrong = mismatched_instruction(task, rng)
    return PairItem(task.source, correct.image, task.instruction, correct.image, wrong, False)


def caption_item(task: DemoTask, rng: random.Random) -> CaptionItem:
    """One candidate of `task` and its caption."""
    candidate = rng.choice(task.candidates)
    return CaptionItem(task.source, candidate.image, caption_of(candidate))


def step_data(
    seed: int, step: int, tasks_per_step: int, *, swap_share: float, namespace: str = "jrm-pretrain"
) -> StepData:
    """The examples of one step: one of each objective per task."""
    data = StepData([], [], [])
    for i in range(tasks_per_step):
        task = stream_task(seed, step, i, namespace=namespace)
        rng = random.Random(f"{namespace}-pick:{seed}:{step}:{i}")
        data.preferences.append(preference_item(task, rng, swap_share))
        data.checks.append(check_item(task, rng))
        data.captions.append(caption_item(task, rng))
    return data
