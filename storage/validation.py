"""Input checks shared by the repository functions: text, names, ids, JSON, choices.

Each raises `InvalidInput` with a message that says what to send instead.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sqlalchemy.orm import Session

from storage.errors import InvalidInput, NotFound
from storage.models import CHOICES, PROVENANCES, SOURCE_MAX_CHARS, User

NAME_MAX_CHARS = 128  # candidates.generator
CATEGORY_MAX_CHARS = 64
ORIGIN_MAX_CHARS = 64
EXTERNAL_ID_MAX_CHARS = 255
CLIENT_SUBMISSION_ID_MAX_CHARS = 128
DIMENSION_SCORE_RANGE = (-100.0, 100.0)  # covers Likert 1-5, 0-10 and percentages
DIMENSION_MAX_KEYS = 32
TIME_SPENT_MAX_MS = 2**31 - 1  # the column is a 32-bit integer on PostgreSQL
_MAX_ID = 2**63 - 1

# C0/C1 control characters except \t and \n, and lone surrogates (not encodable, PostgreSQL refuses them).
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


# ------------------------------------------------------------------------------------------------ validation


def clean_text(value: str) -> str:
    """Drop NUL, other control characters and lone surrogates; keep \\n, \\t and all other Unicode."""
    return _CONTROL_CHARS.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))


def _text(value: object, *, field: str, max_chars: int, example: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text, got {type(value).__name__}; send a string such as {example!r}.")
    cleaned = clean_text(value)
    if not cleaned.strip():
        raise InvalidInput(f"{field} is empty (after removing control characters); write e.g. {example!r}.")
    if len(cleaned) > max_chars:
        raise InvalidInput(f"{field} has {len(cleaned)} characters; shorten it to at most {max_chars}.")
    return cleaned


def _optional_text(value: object, *, field: str, max_chars: int, example: str) -> str | None:
    if value is None or (isinstance(value, str) and not clean_text(value).strip()):
        return None
    return _text(value, field=field, max_chars=max_chars, example=example)


def _name(value: object, *, field: str, max_chars: int, example: str) -> str:
    # Names (generators, categories, origins) are identifiers: surrounding whitespace is never meant.
    return _text(value, field=field, max_chars=max_chars, example=example).strip()


def _id(value: object, *, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{kind} id must be an integer, got {value!r}.")
    if not 1 <= value <= _MAX_ID:
        raise NotFound(f"{kind} {value} does not exist; ids are positive integers.")
    return value


def json_object(value: object, *, field: str, optional: bool = True) -> dict[str, Any] | None:
    """`value` if it is a JSON object without NaN (PostgreSQL's JSON refuses NaN); None passes when optional."""
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        allowed = "a dict (a JSON object) or None" if optional else "a dict (a JSON object)"
        raise InvalidInput(f"{field} must be {allowed}, got {type(value).__name__}.")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} must hold only JSON values (no NaN, sets or objects): {exc}.") from None
    return value


def _dimension_scores(value: object) -> dict[str, float] | None:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) > DIMENSION_MAX_KEYS:
        raise InvalidInput(
            f"dimension_scores must be a dict of up to {DIMENSION_MAX_KEYS} name → number entries, "
            'e.g. {"faithfulness": 4}.'
        )
    low, high = DIMENSION_SCORE_RANGE
    scores = {}
    for key, score in value.items():
        name = _name(key, field="a dimension_scores name", max_chars=64, example="faithfulness")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise InvalidInput(f"dimension_scores[{name!r}] must be a finite number, got {score!r}.")
        if not low <= score <= high:
            raise InvalidInput(f"dimension_scores[{name!r}]={score} is outside [{low:g}, {high:g}].")
        scores[name] = score
    return scores


def _time_spent(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= TIME_SPENT_MAX_MS:
        raise InvalidInput(
            f"time_spent_ms must be a whole number of milliseconds in [0, {TIME_SPENT_MAX_MS}], got {value!r}."
        )
    return value


def _client_submission_id(value: object) -> str:
    ok = isinstance(value, str) and value.strip() and len(value) <= CLIENT_SUBMISSION_ID_MAX_CHARS
    if not ok or clean_text(value) != value:
        raise InvalidInput(
            f"client_submission_id must be a non-empty printable string of at most "
            f"{CLIENT_SUBMISSION_ID_MAX_CHARS} characters (e.g. a UUID), got {value!r:.80}."
        )
    return value


def _choice(value: object) -> str:
    if value not in CHOICES:
        raise InvalidInput(f"choice must be one of {', '.join(CHOICES)}; got {value!r:.40}.")
    return value  # type: ignore[return-value]


def _require_active_user(session: Session, user_id: int) -> User:
    user = session.get(User, _id(user_id, kind="user"))
    if user is None:
        raise NotFound(f"user {user_id} does not exist; create the annotator first.")
    if not user.active:
        raise InvalidInput(f"user {user.name!r} is deactivated; an admin must reactivate them before they vote.")
    return user


def _provenance(value: object) -> str:
    if value not in PROVENANCES:
        raise InvalidInput(f"provenance must be one of {', '.join(PROVENANCES)}; got {value!r:.40}.")
    return value  # type: ignore[return-value]


def _source(value: object) -> str | None:
    return _optional_text(value, field="source", max_chars=SOURCE_MAX_CHARS, example="/data/editreward/train.json")
