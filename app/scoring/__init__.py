"""Live scores from the promoted model version, batched, cached and stamped with the version that computed them.

`ScoringService` (`service.py`) holds one *serving* reference: (version id, name, model). A poller thread (`start()`)
asks the DB for the active version every `poll_interval_s`; when it changed, it loads the new version's files
(hash-checked, LM head left off the device) while the old model keeps serving, then swaps the reference under a lock.
Requests never wait for a load. A version that fails to load (missing or corrupt folder) is logged, kept in
`last_error`, and retried only after `RETRY_FAILED_S`; the previous model keeps serving meanwhile. While a new model
loads, two models are in memory.

Requests (Gradio's worker threads) put one item per image into a queue; a single inference thread (`batching.py`)
takes up to `max_batch` items, waiting at most `batch_wait_ms` for more after the first, and runs one
`JointRewardModel.score` forward per batch on the serving model it read once for the batch. Every score comes back
stamped with that model's version. A request whose scores came from two versions (a swap mid-request) is computed
once more, so one answer never mixes versions.

Each serving reference also keeps the version's promotion-gate floor verdict (`metrics["gate"]["passed_floor"]`,
read with the version's row when it loads and on each poll, never per request) and every score carries it, so the app
can tell whether the scores that came back are from a model that beat the floor (`versions.py`).

Candidate scores are cached per (version, candidate) (`cache.py`): in memory for the serving version and in the
`scores` table (`registry.cached_scores` / `record_scores`), so a restarted app or another app process reuses them.
DB sessions stay short and never span a model load or a forward: on SQLite every transaction takes the write lock.
Request inputs are validated and read from the store in `inputs.py`.
"""

from app.scoring.inputs import MAX_UPLOAD_EDITS
from app.scoring.service import ScoringService
from app.scoring.versions import (
    NoScorerYet,
    ScoredItem,
    ServedVersion,
    default_device,
    floor_verdict,
    load_for_serving,
)

__all__ = [
    "MAX_UPLOAD_EDITS",
    "NoScorerYet",
    "ScoredItem",
    "ServedVersion",
    "ScoringService",
    "default_device",
    "floor_verdict",
    "load_for_serving",
]
