"""A run's `params`: validated into `RunParams` (the model's config, the training config, the gate's settings).

`parse_params` is the one validator: `create_run` calls it before queueing a row and `run_training_job` again
before training, so a row edited by hand fails with the same message.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from storage.errors import InvalidInput
from storage.models import PROVENANCES
from trainer.gate import DEFAULT_TOLERANCE
from trainer.model import JRMConfig
from trainer.train import TrainConfig

DEFAULT_PROMOTION_TOLERANCE = DEFAULT_TOLERANCE
# Params that belong to the run, not to a config.
RUN_KEYS = ("promotion_tolerance", "promote", "gate_floor", "provenances", "exclude_flagged")


@dataclass(frozen=True)
class RunParams:
    """A run's validated `params`: the model's config, the training config and what to do with the result."""

    jrm: JRMConfig
    train: TrainConfig
    promotion_tolerance: float = DEFAULT_PROMOTION_TOLERANCE
    promote: bool = True
    gate_floor: bool = True  # false: the gate skips its size and floor checks (tests, a researcher's own call)
    provenances: tuple[str, ...] = ()  # the votes to train on; empty: the store's setting (storage.provenance)
    exclude_flagged: bool | None = None  # None: the store's JRM_EXCLUDE_FLAGGED

    def to_dict(self) -> dict[str, Any]:
        """Every setting, defaults included (what the run row records)."""
        return {
            **self.jrm.to_dict(),
            **self.train.to_dict(),
            "promotion_tolerance": self.promotion_tolerance,
            "promote": self.promote,
            "gate_floor": self.gate_floor,
            "provenances": list(self.provenances),
            "exclude_flagged": self.exclude_flagged,
        }


def parse_params(params: Any) -> RunParams:
    """Validate a run's `params` JSON (JRMConfig and TrainConfig fields, `promotion_tolerance`, `promote`,
    `gate_floor`)."""
    if not isinstance(params, dict):
        raise InvalidInput(f"params must be a JSON object, got {type(params).__name__}.")
    jrm_keys = {f.name for f in fields(JRMConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(params) - jrm_keys - train_keys - set(RUN_KEYS))
    if unknown:
        known = sorted(jrm_keys | train_keys | set(RUN_KEYS))
        raise InvalidInput(f"Unknown training parameter(s) {unknown}; known: {', '.join(known)}.")
    tolerance = params.get("promotion_tolerance", DEFAULT_PROMOTION_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < 1:
        raise InvalidInput(f"promotion_tolerance must be a number in [0, 1), e.g. 0.01; got {tolerance!r}.")
    promote, gate_floor = params.get("promote", True), params.get("gate_floor", True)
    if not isinstance(promote, bool):
        raise InvalidInput(f"promote must be true or false, got {promote!r}.")
    if not isinstance(gate_floor, bool):
        raise InvalidInput(
            f"gate_floor must be true or false (false skips the gate's floor check), got {gate_floor!r}."
        )
    provenances, exclude_flagged = _vote_params(params)
    try:
        _check_types(JRMConfig, params)
        _check_types(TrainConfig, params)
        jrm = JRMConfig(**{k: v for k, v in params.items() if k in jrm_keys})
        config = TrainConfig(**{k: v for k, v in params.items() if k in train_keys})
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Invalid training parameters: {exc}") from None
    return RunParams(
        jrm=jrm, train=config, promotion_tolerance=float(tolerance), promote=promote, gate_floor=gate_floor,
        provenances=provenances, exclude_flagged=exclude_flagged,
    )


def _vote_params(params: dict[str, Any]) -> tuple[tuple[str, ...], bool | None]:
    """`provenances` (a list of human / demo / import) and `exclude_flagged` (true, false or null)."""
    provenances = params.get("provenances") or []
    if not isinstance(provenances, list | tuple) or not set(provenances) <= set(PROVENANCES):
        raise InvalidInput(f"provenances must be a list of {', '.join(PROVENANCES)}; got {provenances!r}.")
    exclude = params.get("exclude_flagged")
    if exclude is not None and not isinstance(exclude, bool):
        raise InvalidInput(f"exclude_flagged must be true, false or null (the store's setting); got {exclude!r}.")
    return tuple(sorted(set(provenances))), exclude


def _check_types(cls: type, params: dict[str, Any]) -> None:
    """JSON can carry the wrong type (a string λ); check each given field against its default's type."""
    for f in fields(cls):
        if f.name not in params or f.default is None:
            continue
        value, default = params[f.name], f.default
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif isinstance(default, float):
            ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:  # tuples of names
            ok, kind = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value), "a list of names"
        if not ok:
            raise ValueError(f"{f.name} must be {kind}, got {value!r}.")
