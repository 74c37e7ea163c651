"""Live scores from the promoted model version, batched, cached and stamped with the version that computed them.

`ScoringService` (`service.py`) holds one *serving* reference: (version id, name, model). A poller thread (`start()`)
asks the DB for the active version every `poll_interval_s`; when it changed, it loads the new version's files
(hash-checked, with the one scorer loader `trainer.scorer.load_scorer_model`: the LM head is never loaded) while the
old model keeps serving, then swaps the reference under a lock. Requests never wait for a load. The model it
replaces is kept as the *previous* one, so a rollback to it swaps at once with no load (so does a version that is
pinned); any other version is loaded in full first, and only then swapped in. Memory: the serving model plus the
previous one, i.e. one extra scorer model (its weights at the scorer's dtype on the device, without the LM head),
plus up to `MAX_PINNED` pinned ones; the previous model is dropped before a load from disk, so a load never holds a
third and the peak stays at two models, as before the previous one was kept. A version that fails to load
(missing or corrupt folder, a LoRA version whose base changed) is logged, kept as the service's `load_failure` (a
`LoadFailure`: version, error, when; `status()` pairs it with the serving version for the app's header and Research
tab) until that version loads or the active version serves, and retried only after `RETRY_FAILED_S`; the current
model keeps serving meanwhile.

Requests (Gradio's worker threads, the reward server's request threads) put one item per image into a queue; a
single inference thread (`batching.py`) takes up to `max_batch` items, waiting at most `batch_wait_ms` for more after
the first, and runs one `JointRewardModel.score_all` forward per version in the batch (the score, and σ and the
dimension scores when the version has those heads). Every score comes back stamped with the version that computed it
and the sha256 of that version's files. Uploads and `score_items` (the reward server)
resolve their version once when the request starts and queue every item for it; candidate scores follow the serving
version read once per batch, and a candidate request whose scores came from two versions (a swap mid-request) is
computed once more, so one answer never mixes versions. With `max_queue` (the reward server) a request's items are
queued all together or refused with `Overloaded`, so the queue stays bounded; the app's queue is not bounded.

A request may also name a published version (`score_items(..., version="v0003")`): it is served from memory when it
is the serving one or a loaded *pinned* version, and otherwise loaded in a background thread while the request is
told to retry (`VersionLoading`); a version that cannot be loaded is `VersionUnavailable` with the reason, an unknown
name `NotFound`. The `MAX_PINNED` most recently used pinned versions stay in memory (`pinned.py`).

Each serving reference also keeps the version's promotion-gate floor verdict (`metrics["gate"]["passed_floor"]`,
read with the version's row when it loads and on each poll, never per request) and every score carries it, so the app
can tell whether the scores that came back are from a model that beat the floor (`versions.py`).

Candidate scores are cached per (version, candidate) (`cache.py`): in memory for the serving version and in the
`scores` table (`registry.stored_scores` / `record_scores`, with σ and the dimension scores), so a restarted app or
another app process reuses them.
DB sessions stay short and never span a model load or a forward: on SQLite every transaction takes the write lock.
Request inputs are validated and read from the store in `inputs.py`.
"""

from app.scoring.batching import Overloaded
from app.scoring.inputs import MAX_UPLOAD_EDITS
from app.scoring.service import ScoringService
from app.scoring.versions import (
    LoadFailure,
    NoScorerYet,
    ScoredItem,
    ScorerStatus,
    ServedVersion,
    VersionLoading,
    VersionUnavailable,
    floor_verdict,
)

__all__ = [
    "MAX_UPLOAD_EDITS",
    "LoadFailure",
    "NoScorerYet",
    "Overloaded",
    "ScoredItem",
    "ScorerStatus",
    "ServedVersion",
    "ScoringService",
    "VersionLoading",
    "VersionUnavailable",
    "floor_verdict",
]
