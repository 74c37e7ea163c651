"""The interchange formats shared by `storage.importers` and `storage.exporters` (see docs/data-formats.md).

One definition of every column and key lives here, so an export and the import that reads it back cannot
drift apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets import Features, Image, List, Value

# --- EditReward-Data JSON: a list of records; `path1` is the preferred edit unless `tie_case`. ----------
EDITREWARD_REQUIRED = ("prompt", "path_src", "path1", "path2", "model1", "model2")
EDITREWARD_CORE = (*EDITREWARD_REQUIRED, "tie_case")
# Keys our export adds so that what EditReward has no field for survives a round-trip; readers ignore them.
EDITREWARD_JRM_KEYS = (
    "both_bad", "path1_side", "rationale", "annotator", "category", "external_id", "origin", "task_origin",
    "dimension_scores", "time_spent_ms", "created_at", "client_submission_id", "extra1", "extra2",
)
# Per-model keys (`model1_dim1_score`, `model2_overall_score`, …) describe one edit: they are kept, prefix
# stripped, in that candidate's Candidate.extra[EXTRAS_KEY] (from the first record that names the candidate).
MODEL_PREFIXES = {"model1_": 0, "model2_": 1}  # prefix → index into (path1, path2)
EXTRAS_KEY = "editreward"
EDITREWARD_ORIGIN = "editreward"

# --- Folder layout: DIR/<task>/{source.<ext>, instruction.txt, category.txt?, candidates/, votes.jsonl?} ----
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SOURCE_STEM = "source"
INSTRUCTION_FILE = "instruction.txt"
CATEGORY_FILE = "category.txt"
CANDIDATES_DIR = "candidates"
VOTES_FILE = "votes.jsonl"
FOLDER_ORIGIN = "folder"
HF_ORIGIN = "hf"

# --- Hugging Face `datasets`: one row per vote. ---------------------------------------------------------
SIDES = ("left", "right")  # as shown to the annotator


def _side_features(side: str) -> dict[str, Any]:
    return {
        f"{side}_image": Image(),
        f"{side}_sha256": Value("string"),
        f"{side}_generator": Value("string"),
        f"{side}_extra": Value("string"),  # Candidate.extra as JSON text (shapes vary by origin)
    }


VOTE_FEATURES = Features(
    {
        "vote_id": Value("int64"),
        "client_submission_id": Value("string"),
        "vote_origin": Value("string"),
        "created_at": Value("string"),  # ISO 8601, UTC
        "task_id": Value("int64"),
        "task_external_id": Value("string"),
        "task_origin": Value("string"),
        "category": Value("string"),
        "instruction": Value("string"),
        "source_image": Image(),
        "source_sha256": Value("string"),
        **_side_features("left"),
        **_side_features("right"),
        "choice": Value("string"),  # left | right | tie | both_bad
        "rationale": Value("string"),
        "dimension_scores": Value("string"),  # JSON text
        "annotator": Value("string"),
        "time_spent_ms": Value("int64"),
    }
)
VOTE_REQUIRED_COLUMNS = (
    "instruction", "source_image", "left_image", "right_image", "left_generator", "right_generator", "choice",
)

# TRL-style pairwise records: `images` = [source, chosen edit, rejected edit]; `chosen`/`rejected` name the
# editing models. Ties and both_bad keep left as `chosen` and say so in `choice`: nothing is dropped.
TRL_FEATURES = Features(
    {
        "prompt": Value("string"),
        "images": List(Image()),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "choice": Value("string"),
        "rationale": Value("string"),
        "chosen_sha256": Value("string"),
        "rejected_sha256": Value("string"),
        "task_id": Value("int64"),
        "vote_id": Value("int64"),
    }
)


@dataclass
class ImportSummary:
    """What one import added; re-importing the same file adds nothing."""

    rows: int = 0
    tasks: int = 0
    candidates: int = 0
    votes: int = 0
    votes_existing: int = 0
    # Record-level keys the store has no place for (e.g. EditReward's choice_dist): key → rows where non-null.
    dropped_keys: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        text = (f"read {self.rows} rows: {self.tasks} new tasks, {self.candidates} new candidates, "
                f"{self.votes} new votes ({self.votes_existing} already present)")
        if self.dropped_keys:
            dropped = ", ".join(f"{key} ({rows} rows)" for key, rows in sorted(self.dropped_keys.items()))
            text += f"; not kept (no place in the store): {dropped}"
        return text


def submission_id(origin: str, payload: Mapping[str, Any]) -> str:
    """A deterministic client_submission_id for an imported vote: the same content gives the same id."""
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"{origin}:{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def dumps_or_none(value: Any) -> str | None:
    """JSON text for a JSON column value; None stays None."""
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)
