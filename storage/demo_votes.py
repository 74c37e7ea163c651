"""The demo's simulated annotators: who votes on which pair of a task's candidates, their choice and rationale.

`demo_votes(task)` is a pure function of the task's (seed, index): each pair of candidates is shown, in a random
left/right order, to `overlap_target` distinct annotators; a careful one chooses by the candidates' qualities
(`intended_choice`), a slip (`SimAnnotator.error_rate`) picks another choice and comes with a vague rationale.

A careful rationale names what each side did (`DemoCandidate.describe`, e.g. "mirrored it left to right") and what
can be seen in it, measured from the pixels (`storage.demo_visible.visible_changes`, e.g. "the picture is
reversed"), so its text depends on the images and not only on the instruction.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

from PIL import Image

from storage.demo_edits import BAD_QUALITY, TIE_MARGIN, DemoCandidate, DemoTask
from storage.demo_visible import visible_changes
from storage.models import CHOICES, Choice

P_BOTH_BAD = 0.8  # how often a both-bad pair is voted both_bad (else the better of the two)
P_TIE = 0.5  # how often a close pair is voted a tie
P_NO_RATIONALE = 0.1
OPEN_TASK_FRACTION = 0.1  # tasks whose pairs stay below the overlap target, so people have pairs to vote on


@dataclass(frozen=True)
class SimAnnotator:
    """A simulated annotator: no password (cannot log in), a personal error rate."""

    name: str
    error_rate: float


ERROR_RATES = (0.04, 0.06, 0.08, 0.10, 0.12)  # mean 8%: agreement is high but not perfect


def sim_annotators(count: int = 5) -> tuple[SimAnnotator, ...]:
    """`sim-annotator-1` … `sim-annotator-<count>` with error rates cycling through `ERROR_RATES`."""
    return tuple(SimAnnotator(f"sim-annotator-{i + 1}", ERROR_RATES[i % len(ERROR_RATES)]) for i in range(count))


@dataclass(frozen=True)
class SimVote:
    """One simulated vote on a pair of a task's candidates, as shown (left/right are candidate indices)."""

    pair_index: int
    annotator: str
    left: int
    right: int
    choice: Choice
    noisy: bool  # the annotator slipped: the choice is not the one the qualities call for
    rationale: str | None
    time_spent_ms: int
    client_submission_id: str


def intended_choice(q_left: float, q_right: float, rng: random.Random) -> Choice:
    """The choice a careful annotator makes for candidates of these qualities."""
    high, low = max(q_left, q_right), min(q_left, q_right)
    if high <= BAD_QUALITY and rng.random() < P_BOTH_BAD:
        return "both_bad"
    if high - low <= TIE_MARGIN and rng.random() < P_TIE:
        return "tie"
    if q_left == q_right:
        return rng.choice(("left", "right"))
    return "left" if q_left > q_right else "right"


# Each side's part: what it did (`DemoCandidate.describe`) and what can be seen in it (`visible_changes`). The
# number of templates per group is part of the votes' random stream: changing it would change later draws.
_BETTER_CORRECT = (
    "{W} {w_did} as asked ({w_seen}); {l} {l_did} ({l_seen}).",
    'The instruction says "{instruction}". {W} {w_did}, which is exactly that ({w_seen}), while {l} {l_did} '
    "({l_seen}).",
    "{W} follows the instruction: it {w_did} ({w_seen}). {L} {l_did}: {l_seen}.",
    "{L} {l_did} ({l_seen}), so {w} wins: it {w_did}, as asked ({w_seen}).",
)
_BETTER_FLAWED = (
    '{W} {w_did} ({w_seen}), which is closer to "{instruction}" than {l}, which {l_did} ({l_seen}).',
    "Neither is perfect, but {w} is nearer: it {w_did} ({w_seen}), while {l} {l_did} ({l_seen}).",
    "{W} is the better try. It {w_did}: {w_seen}. {L} {l_did}: {l_seen}.",
)
_TIE = (
    'Both are about equally close to "{instruction}": left {left_did} ({left_seen}), right {right_did} ({right_seen}).',
    "Hard to pick: left {left_did} ({left_seen}); right {right_did} ({right_seen}). Neither is clearly better.",
    "A tie. Left {left_did}: {left_seen}. Right {right_did}: {right_seen}. Each misses the instruction by about as "
    "much.",
)
_BOTH_BAD = (
    'Neither got "{instruction}" right: left {left_did} ({left_seen}) and right {right_did} ({right_seen}).',
    "Neither does what was asked. Left {left_did}: {left_seen}. Right {right_did}: {right_seen}.",
    'Both are wrong for "{instruction}": left {left_did} ({left_seen}), right {right_did} ({right_seen}).',
)
_VAGUE: dict[str, tuple[str, ...]] = {  # slips come with thin rationales, as careless votes do
    "side": ("{W} looks a bit better to me.", "I slightly prefer {w}.", "{W} seems closer to what was asked, I think."),
    "tie": ("They look about the same to me.", "I can't really tell them apart."),
    "both_bad": ("Neither looks right to me.", "I don't think either one did the edit properly."),
}
MAX_SEEN = 2  # visible changes a rationale names per side (the most telling ones)
Seen = Sequence[str]  # `visible_changes` of one candidate


def write_rationale(
    choice: Choice,
    *,
    noisy: bool,
    left: DemoCandidate,
    right: DemoCandidate,
    instruction: str,
    source: Image.Image,
    rng: random.Random,
    seen: tuple[Seen, Seen] | None = None,
) -> str:
    """A rationale for `choice` naming what each side did and what visibly changed, and referring to the instruction.

    `seen` is `visible_changes(source, …)` of (left, right) when the caller has it cached; a slip's vague rationale
    needs neither. Draws exactly one template from `rng`.
    """
    if noisy:
        return rng.choice(_VAGUE["side" if choice in ("left", "right") else choice]).format(**_side_names(choice))
    left_seen, right_seen = seen or (visible_changes(source, left.image), visible_changes(source, right.image))
    fields = {**_side_names(choice), "instruction": instruction}
    winner = fields["w"]
    sides = {"left": (left, left_seen), "right": (right, right_seen)}
    for name, (candidate, candidate_seen) in sides.items():
        role = "w" if name == winner else "l"
        fields[f"{role}_did"] = fields[f"{name}_did"] = candidate.describe()
        fields[f"{role}_seen"] = fields[f"{name}_seen"] = "; ".join(candidate_seen[:MAX_SEEN])
    if choice == "tie":
        templates = _TIE
    elif choice == "both_bad":
        templates = _BOTH_BAD
    else:
        templates = _BETTER_CORRECT if sides[winner][0].flaw == "none" else _BETTER_FLAWED
    return rng.choice(templates).format(**fields)


def _side_names(choice: Choice) -> dict[str, str]:
    winner, loser = ("left", "right") if choice == "left" else ("right", "left")
    return {"W": winner.capitalize(), "w": winner, "L": loser.capitalize(), "l": loser}


def _simulate_vote(
    task: DemoTask,
    pair: tuple[int, int],
    pair_index: int,
    annotator: SimAnnotator,
    rng: random.Random,
    seen: Callable[[int], Seen],
) -> SimVote:
    left, right = pair if rng.random() < 0.5 else pair[::-1]
    shown_left, shown_right = task.candidates[left], task.candidates[right]
    intended = intended_choice(shown_left.quality, shown_right.quality, rng)
    noisy = rng.random() < annotator.error_rate
    choice = rng.choice([c for c in CHOICES if c != intended]) if noisy else intended
    rationale = None
    if rng.random() >= P_NO_RATIONALE:
        rationale = write_rationale(
            choice,
            noisy=noisy,
            left=shown_left,
            right=shown_right,
            instruction=task.instruction,
            source=task.source,
            rng=rng,
            seen=None if noisy else (seen(left), seen(right)),
        )
    submission_id = f"demo-{task.seed}-{task.index}-{pair_index}-{annotator.name}"
    time_spent_ms = round(rng.lognormvariate(math.log(9000), 0.5))
    return SimVote(pair_index, annotator.name, left, right, choice, noisy, rationale, time_spent_ms, submission_id)


def demo_votes(
    task: DemoTask, *, overlap_target: int = 2, annotators: tuple[SimAnnotator, ...] | None = None
) -> tuple[SimVote, ...]:
    """Votes on every pair of `task`'s candidates by `overlap_target` distinct annotators.

    About `OPEN_TASK_FRACTION` of tasks get fewer votes per pair, so a person opening the demo has pairs to vote on.
    """
    annotators = annotators or sim_annotators(max(5, overlap_target))
    if len(annotators) < overlap_target:
        raise ValueError(f"overlap_target={overlap_target} needs at least that many annotators, got {len(annotators)}.")
    rng = random.Random(f"jrm-demo-votes:{task.seed}:{task.index}")  # apart from the pixels' stream
    per_pair = overlap_target if rng.random() >= OPEN_TASK_FRACTION else rng.randrange(overlap_target)

    @functools.cache
    def seen(index: int) -> Seen:  # once per candidate, for every vote on the task
        return tuple(visible_changes(task.source, task.candidates[index].image))

    votes = []
    for pair_index, pair in enumerate(combinations(range(len(task.candidates)), 2)):
        for annotator in rng.sample(annotators, per_pair):
            votes.append(_simulate_vote(task, pair, pair_index, annotator, rng, seen))
    return tuple(votes)
