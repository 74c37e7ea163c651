"""The promotion gate's decision: a candidate judged against a floor and the active version on one set of votes.

`decide` is pure (no model, no database, no files): it takes, for every strict held-out vote, its task and how each
scorer did on it (1, ½ or 0, as `metrics.strict_agreement` gives) — the candidate, the active version when there is
one, and the pixel-statistics rules of `trainer.pixel_rules` — and resamples *tasks* with replacement, the same draws
for every scorer, so each difference stays paired vote by vote. `trainer.judge` measures those inputs; the registry
applies the decision (`registry.apply_promotion_gate`). The rule and why: docs/registry.md, "Promotion gate".
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from trainer.bootstrap import paired_task_bootstrap

CHANCE = 0.5  # a coin's accuracy on strict left/right votes
MIN_TASKS = 20  # fewer held-out tasks with a strict vote than this and the gate does not judge
DEFAULT_TOLERANCE = 0.01
_EPSILON = 1e-12  # float subtraction must not turn an exact tie at the threshold into a rejection
_CANDIDATE, _ACTIVE, _RULE = "candidate", "active", "rule:"  # keys of the scorers in one bootstrap


@dataclass(frozen=True)
class GateConfig:
    """How the gate judges: tolerance versus the active version, whether the floor is required, the bootstrap."""

    tolerance: float = DEFAULT_TOLERANCE  # how much worse than the active version (point estimate) still passes
    require_floor: bool = True  # False (run param `gate_floor: false`): skip the size and floor checks
    min_tasks: int = MIN_TASKS
    level: float = 0.95  # two-sided level of the intervals; promotion needs the floor interval's lower end > 0
    n_resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, bool) or not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be a number in [0, 1), e.g. 0.01; got {self.tolerance!r}.")
        if self.min_tasks < 1:
            raise ValueError(f"min_tasks must be >= 1, got {self.min_tasks}.")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {self.level}.")
        if self.n_resamples < 100:
            raise ValueError(f"n_resamples must be >= 100 for a usable interval, got {self.n_resamples}.")


@dataclass(frozen=True)
class GateInputs:
    """The strict held-out votes (one entry per vote, the same order everywhere) and how each scorer did on them."""

    task_ids: Sequence[Hashable]
    candidate: np.ndarray  # (V,) 1, ½ or 0
    rules: Mapping[str, np.ndarray]  # pixel rule name → (V,)
    active: np.ndarray | None = None  # (V,); None when no version is active or it could not be scored
    active_id: int | None = None  # the active version when the inputs were measured (None: none was active)
    active_name: str | None = None
    active_error: str | None = None  # why the active version could not be scored
    heldout_votes: int | None = None  # every held-out vote, ties included (for the record)


@dataclass(frozen=True)
class GateDecision:
    """The verdict, the active version it was judged against, and the `gate` dict recorded on the version."""

    promoted: bool
    reason: str
    active_id: int | None
    depends_on_active: bool  # True once the size and floor checks passed: another active version could change it
    record: dict[str, Any] = field(default_factory=dict)

    def overruled(self, reason: str) -> GateDecision:
        """The same measurements, rejected for `reason` (files failed verification, the active kept changing)."""
        record = {**self.record, "promoted": False, "reason": reason}
        return replace(self, promoted=False, reason=reason, depends_on_active=False, record=record)


@dataclass(frozen=True)
class _Estimates:
    candidate: float
    rules: dict[str, float]
    best_rule: str | None
    floor: float  # max(chance, best rule): the accuracy to beat
    floor_margin: float
    floor_ci: tuple[float, float]
    active: float | None
    active_margin: float | None
    active_ci: tuple[float, float] | None


def decide(inputs: GateInputs, config: GateConfig) -> GateDecision:
    """Promote, or reject with a reason, from per-vote agreements; pure and deterministic for `config.seed`."""
    n_votes, n_tasks = len(inputs.task_ids), len(set(inputs.task_ids))
    if n_votes == 0:
        reason = "no left/right held-out votes to judge on; add votes or promote by hand"
        return _decision(inputs, config, None, promoted=False, passed_floor=False, reason=reason, depends=False)
    est = _estimates(inputs, config)
    passed_floor = est.floor_ci[0] > 0 and n_tasks >= config.min_tasks
    verdict = _floor_phrase(est, config)
    if config.require_floor and n_tasks < config.min_tasks:
        reason = (
            f"too few held-out votes to judge ({n_tasks} tasks, {n_votes} left/right votes; the gate needs at least "
            f"{config.min_tasks} tasks); add votes or promote by hand"
        )
        return _decision(inputs, config, est, promoted=False, passed_floor=False, reason=reason, depends=False)
    if config.require_floor and not passed_floor:
        reason = f"{verdict} does not beat the floor"
        return _decision(inputs, config, est, promoted=False, passed_floor=False, reason=reason, depends=False)
    head = f"{verdict} beats the floor" if config.require_floor else f"floor not required (gate_floor off); {verdict}"
    promoted, tail = _versus_active(inputs, config, est, n_votes)
    return _decision(
        inputs, config, est, promoted=promoted, passed_floor=passed_floor, reason=f"{head}{tail}", depends=True
    )


def _estimates(inputs: GateInputs, config: GateConfig) -> _Estimates:
    scorers = {_CANDIDATE: inputs.candidate, **{_RULE + name: v for name, v in inputs.rules.items()}}
    if inputs.active is not None:
        scorers[_ACTIVE] = inputs.active
    draws = paired_task_bootstrap(scorers, inputs.task_ids, n_resamples=config.n_resamples, seed=config.seed)
    point = {name: float(np.mean(values)) for name, values in scorers.items()}
    rules = {name: point[_RULE + name] for name in inputs.rules}
    best_rule = max(rules, key=rules.__getitem__) if rules else None  # the first of equals, in the rules' order
    floor = max([CHANCE, *rules.values()])
    # The floor is one scorer, chosen once on these votes (the best rule, or chance when no rule beats it), and the
    # candidate is compared with it pair by pair. Re-choosing the best rule inside every resample (tried first)
    # adds the maximum of eight noisy rules to the floor: on the 28 held-out tasks of a fresh demo store it kept a
    # 0.76 first version below a 0.65 rule (margin CI −0.01 … 0.20).
    if best_rule is not None and rules[best_rule] > CHANCE:
        floor_draws = draws[_RULE + best_rule]
    else:
        floor_draws = np.full(config.n_resamples, CHANCE)
    active = point.get(_ACTIVE)
    return _Estimates(
        candidate=point[_CANDIDATE],
        rules=rules,
        best_rule=best_rule,
        floor=floor,
        floor_margin=point[_CANDIDATE] - floor,
        floor_ci=_interval(draws[_CANDIDATE] - floor_draws, config.level),
        active=active,
        active_margin=None if active is None else point[_CANDIDATE] - active,
        active_ci=None if active is None else _interval(draws[_CANDIDATE] - draws[_ACTIVE], config.level),
    )


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _versus_active(inputs: GateInputs, config: GateConfig, est: _Estimates, n_votes: int) -> tuple[bool, str]:
    """(promoted, the reason's tail) once the floor is passed (or not required)."""
    if inputs.active_id is None:
        return True, "; no active version to compare with"
    if est.active is None:
        return True, f"; active {inputs.active_name} could not be scored ({inputs.active_error}): judged on the floor"
    assert est.active_margin is not None and est.active_ci is not None
    tolerance, ci = f"{config.tolerance:g}", _range(est.active_ci)
    same = f"on the same {n_votes} votes ({_pct(config.level)} CI of the difference {ci})"
    if est.active_margin + _EPSILON >= -config.tolerance:
        return True, (
            f"; {_signed(est.active_margin)} vs active {inputs.active_name}'s {est.active:.2f} {same} "
            f"\N{GREATER-THAN OR EQUAL TO} \N{MINUS SIGN}{tolerance}"
        )
    return False, (
        f", but {est.candidate:.2f} < active {inputs.active_name}'s {est.active:.2f} \N{MINUS SIGN} {tolerance} {same}"
    )


def _floor_rule(est: _Estimates | None) -> str | None:
    """The floor's name: the best pixel rule, or "chance" when no rule reaches 0.5."""
    if est is None:
        return None
    return est.best_rule if est.best_rule is not None and est.rules[est.best_rule] >= CHANCE else "chance"


def _floor_phrase(est: _Estimates, config: GateConfig) -> str:
    rule = _floor_rule(est)
    floor = f"chance {CHANCE:g}" if rule == "chance" else f"the best pixel rule '{rule}' {est.floor:.2f}"
    return (
        f"held-out accuracy {est.candidate:.2f} ({_pct(config.level)} CI of the margin over {floor}: "
        f"{_range(est.floor_ci)})"
    )


def _decision(
    inputs: GateInputs,
    config: GateConfig,
    est: _Estimates | None,
    *,
    promoted: bool,
    passed_floor: bool,
    reason: str,
    depends: bool,
) -> GateDecision:
    active = None
    if inputs.active_id is not None and est is not None and est.active is not None:
        active = {"name": inputs.active_name, "accuracy": est.active}
    record: dict[str, Any] = {
        "passed_floor": passed_floor,
        "floor": {"rule": _floor_rule(est), "accuracy": est.floor if est else None},
        "chance": CHANCE,
        "candidate_accuracy": est.candidate if est else None,
        "active": active,
        "diff_vs_floor_ci95": list(est.floor_ci) if est else None,
        "diff_vs_active_ci95": list(est.active_ci) if est and est.active_ci else None,
        "n_tasks": len(set(inputs.task_ids)),
        "n_votes": len(inputs.task_ids),
        "promoted": promoted,
        "reason": reason,
        "diff_vs_floor": est.floor_margin if est else None,
        "diff_vs_active": est.active_margin if est else None,
        "rules": dict(est.rules) if est else {},
        "heldout_votes": inputs.heldout_votes,
        "floor_required": config.require_floor,
        "min_tasks": config.min_tasks,
        "tolerance": config.tolerance,
        "level": config.level,
        "n_resamples": config.n_resamples,
        "seed": config.seed,
    }
    if inputs.active_error is not None:
        record["active_error"] = f"{inputs.active_name}: {inputs.active_error}"
    return GateDecision(promoted, reason, inputs.active_id, depends, record)


# --- numbers in reasons ----------------------------------------------------------------------------------------


def _minus(text: str) -> str:
    return text.replace("-", "\N{MINUS SIGN}")


def _signed(value: float) -> str:
    return _minus(f"{value:+.2f}")


def _range(interval: tuple[float, float]) -> str:
    return f"{_minus(f'{interval[0]:.2f}')} \N{HORIZONTAL ELLIPSIS} {_minus(f'{interval[1]:.2f}')}"


def _pct(level: float) -> str:
    return f"{level * 100:g} %"
