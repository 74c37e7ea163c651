"""Which votes count: their provenance, and the annotators the quality check left out.

Every vote and task carries a provenance — `human` (cast in this app), `demo` (the built-in simulator) or `import`
(brought from a file, whose path is kept in `source`). Training, the leaderboard, agreement and exports read votes
through one `VoteSelection`, so simulated votes never pass for human ones. The default selection is human + import;
demo votes join only in a store whose votes are all demo (the embedded first-run data), so a team's store that once
held the demo keeps training on people. A run records the selection it used (`VoteSelection.to_json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from storage.errors import InvalidInput
from storage.models import PROVENANCES, AnnotatorFlag, Vote
from storage.settings import Settings

DEFAULT_PROVENANCES = ("human", "import")


@dataclass(frozen=True)
class VoteSelection:
    """The votes to read: these provenances, without the excluded annotators' votes."""

    provenances: tuple[str, ...] = PROVENANCES
    excluded_annotators: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.provenances) - set(PROVENANCES)
        if unknown or not self.provenances:
            raise InvalidInput(
                f"provenances must be a non-empty subset of {', '.join(PROVENANCES)}; got {list(self.provenances)}."
            )
        object.__setattr__(self, "provenances", tuple(sorted(set(self.provenances))))
        object.__setattr__(self, "excluded_annotators", tuple(sorted(set(self.excluded_annotators))))

    def where(self) -> list[ColumnElement[bool]]:
        """SQL conditions on `Vote` that keep exactly the selected votes."""
        conditions: list[ColumnElement[bool]] = []
        if set(self.provenances) != set(PROVENANCES):
            conditions.append(Vote.provenance.in_(self.provenances))
        if self.excluded_annotators:
            # Anonymous (imported) votes have no annotator and are never excluded by a flag.
            conditions.append(Vote.annotator_id.is_(None) | Vote.annotator_id.not_in(self.excluded_annotators))
        return conditions

    def to_json(self) -> dict[str, Any]:
        """What a run records about the votes it read."""
        return {"provenances": list(self.provenances), "excluded_annotators": list(self.excluded_annotators)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VoteSelection:
        return cls(tuple(data["provenances"]), tuple(data.get("excluded_annotators", ())))


ALL_VOTES = VoteSelection()


def default_provenances(session: Session) -> tuple[str, ...]:
    """human + import; demo too when the store has no other votes (a demo-only store)."""
    others = session.scalar(select(Vote.id).where(Vote.provenance != "demo").limit(1))
    return DEFAULT_PROVENANCES if others is not None else (*DEFAULT_PROVENANCES, "demo")


def flagged_annotators(session: Session) -> tuple[int, ...]:
    """Annotators whose latest quality check flagged them and whose flag no researcher has cleared."""
    query = select(AnnotatorFlag.annotator_id).where(
        AnnotatorFlag.flagged.is_(True), AnnotatorFlag.cleared_at.is_(None)
    )
    return tuple(sorted(session.scalars(query)))


def vote_selection(session: Session, *, settings: Settings, exclude_flagged: bool | None = None) -> VoteSelection:
    """The configured selection (`JRM_TRAIN_PROVENANCES`, `JRM_EXCLUDE_FLAGGED`) for this store, now."""
    provenances = settings.train_provenance_list or default_provenances(session)
    exclude = settings.exclude_flagged if exclude_flagged is None else exclude_flagged
    return VoteSelection(provenances, flagged_annotators(session) if exclude else ())


def describe_selection(data: Mapping[str, Any]) -> str:
    """A recorded selection (`VoteSelection.to_json`) in words: "human, import; 2 flagged annotators left out"."""
    count = len(data.get("excluded_annotators", []))
    left_out = f"; {count} flagged annotator{'s' if count != 1 else ''} left out" if count else ""
    return ", ".join(data["provenances"]) + left_out
