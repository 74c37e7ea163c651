"""The promotion gate's measurements: the candidate, the active version and the pixel rules on one set of votes.

For a run's frozen held-out split (`snapshot.split(HELDOUT)` → `trainer.data.eval_pairs`), the candidate's Δ comes
from the held-out evaluation the run already did (the model in memory, just trained); the active version is loaded
with the registry's one scorer loader (`registry.load_scorer`) and scored on the *same* pairs by the same
`trainer.evaluate.score_pairs`; the pixel rules read the same images. `gate.decide` turns that into a decision.

All of it runs before the publishing transaction, never inside it: loading and scoring a model take seconds to
minutes, and on SQLite a write transaction is the database's single write lock (annotators' votes would wait).
The registry re-checks under its lock that the active version is still the one compared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from storage.db import engine_of, session_factory
from storage.errors import InvalidInput
from storage.settings import Settings
from trainer.evaluate import EvalPair, score_pairs
from trainer.gate import GateConfig, GateDecision, GateInputs, decide
from trainer.metrics import strict_agreement
from trainer.pixel_rules import rule_deltas
from trainer.registry import active_version, load_scorer

log = logging.getLogger(__name__)

STRICT = ("left", "right")
# What a broken active version raises while it loads or scores: missing or corrupt files (VersionFilesError is an
# InvalidInput), an unreadable checkpoint, a model that does not fit its config. A bug elsewhere still propagates.
ACTIVE_LOAD_ERRORS = (InvalidInput, OSError, ValueError, RuntimeError)


@dataclass(frozen=True)
class ActiveScores:
    """The active version's Δ on the held-out pairs, or why it could not be scored."""

    version_id: int
    name: str
    delta: np.ndarray | None  # (P,) r(left) − r(right); None when `error`
    error: str | None = None


@dataclass(frozen=True)
class HeldoutVotes:
    """The held-out pairs with the candidate's and the pixel rules' agreement on their strict votes (computed once)."""

    pairs: Sequence[EvalPair]
    task_ids: list[int]  # (V,) per strict vote
    candidate: np.ndarray  # (V,)
    rules: dict[str, np.ndarray]  # rule name → (V,)

    @classmethod
    def of(cls, pairs: Sequence[EvalPair], candidate_delta: np.ndarray) -> HeldoutVotes:
        """`pairs` (every held-out vote, ties included) and the candidate's Δ on each."""
        labels = [pair.label for pair in pairs]
        return cls(
            pairs=pairs,
            task_ids=[pair.task_id for pair in pairs if pair.label in STRICT],
            candidate=strict_agreement(candidate_delta, labels),
            rules={name: strict_agreement(delta, labels) for name, delta in rule_deltas(pairs).items()},
        )

    def inputs(self, active: ActiveScores | None) -> GateInputs:
        """What `gate.decide` needs, with the active version's agreement on the same strict votes."""
        labels = [pair.label for pair in self.pairs]
        scored = active is not None and active.delta is not None
        return GateInputs(
            task_ids=self.task_ids,
            candidate=self.candidate,
            rules=self.rules,
            active=strict_agreement(active.delta, labels) if scored else None,
            active_id=None if active is None else active.version_id,
            active_name=None if active is None else active.name,
            active_error=None if active is None else active.error,
            heldout_votes=len(self.pairs),
        )


def score_active(
    factory: sessionmaker[Session],
    pairs: Sequence[EvalPair],
    *,
    settings: Settings,
    device: str = "cpu",
    batch_size: int = 16,
) -> ActiveScores | None:
    """The active version's Δ on `pairs` (None before the first promotion); no transaction is held meanwhile."""
    try:
        with factory() as session:  # none open: load_scorer reads the row in a short read-only session of its own
            loaded = load_scorer(session, settings=settings, device=device)
        if loaded is None:
            return None
        version, model = loaded
        delta = score_pairs(model, pairs, batch_size=batch_size, instruction_swap=False).delta
    except ACTIVE_LOAD_ERRORS as exc:
        log.warning("the active version could not be scored for the gate: %s", exc)
        with session_factory(engine_of(factory), read_only=True)() as session:
            version = active_version(session)
        if version is None:  # rolled back to nothing meanwhile: the registry's re-check will see it
            return None
        return ActiveScores(version.id, version.name, None, f"{type(exc).__name__}: {exc}"[:300])
    return ActiveScores(version.id, version.name, delta)


def judge(
    votes: HeldoutVotes,
    factory: sessionmaker[Session],
    *,
    settings: Settings,
    config: GateConfig,
    device: str = "cpu",
    batch_size: int = 16,
) -> GateDecision:
    """Score the active version on the candidate's held-out votes and decide; call with no transaction open."""
    active = score_active(factory, votes.pairs, settings=settings, device=device, batch_size=batch_size)
    return decide(votes.inputs(active), config)
