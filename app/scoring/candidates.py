"""Score requests for stored candidates: cached per version, computed once however many requests ask at a time.

`CandidateRequests` is the part of `ScoringService` (service.py) that answers `score_candidates`: it reads the
version cache, shares a computation that another request already queued (`_pending`), and queues the rest on the
service's batcher. It uses the service's `_cache`, `_pending`, `_pending_lock`, `_factory`, `_settings`,
`_require_serving`, `_enqueue` and `_wait`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from app.scoring.batching import set_exception
from app.scoring.inputs import candidate_inputs, distinct_candidate_ids
from app.scoring.versions import ScoredItem, stamp
from storage.errors import NotFound

_ATTEMPTS = 2  # a candidate request is recomputed once if a swap gave it scores of two versions


class CandidateRequests:
    """`score_candidates` and its helpers (mixed into `ScoringService`)."""

    def score_candidates(self, candidate_ids: list[int]) -> dict[int, ScoredItem]:
        """Scores of stored candidates by id, from the cache or computed; unknown ids raise NotFound."""
        ids = distinct_candidate_ids(candidate_ids)
        if not ids:
            return {}
        return _single_version(lambda: self._score_candidates_once(ids))

    def _score_candidates_once(self, ids: list[int]) -> dict[int, ScoredItem]:
        serving = self._require_serving()
        cached = self._cache.lookup(serving.version_id, ids)
        results = {i: stamp(i, score, serving) for i, score in cached.items()}
        missing = [i for i in ids if i not in results]
        if missing:
            results.update(self._compute(missing))
        return {i: results[i] for i in ids}

    def _compute(self, ids: list[int]) -> dict[int, ScoredItem]:
        """Run missing candidates through the batching queue, then cache what came back."""
        results, missing = {}, []
        for candidate_id, future in self._candidate_futures(ids).items():
            try:
                results[candidate_id] = stamp(candidate_id, *self._wait(future))
            except NotFound:
                missing.append(candidate_id)
        self._cache.store(results.values())
        if missing:
            raise NotFound(f"candidate(s) {sorted(missing)[:10]} do not exist; pick candidate ids of stored tasks.")
        return results

    def _candidate_futures(self, ids: list[int]) -> dict[int, Future]:
        """One future per id; a computation another request already queued is shared, not repeated."""
        with self._pending_lock:
            futures = {i: self._pending.get(i) for i in ids}
            claimed: dict[int, Future] = {i: Future() for i, future in futures.items() if future is None}
            self._pending.update(claimed)
        for candidate_id, future in claimed.items():
            future.add_done_callback(lambda done, key=candidate_id: self._drop_pending(key, done))
        futures.update(claimed)
        if claimed:
            self._queue_candidates(claimed)
        return futures

    def _queue_candidates(self, claimed: dict[int, Future]) -> None:
        """Queue the claimed candidates; an unknown id resolves to NotFound, any other failure fails them all."""
        try:
            inputs = candidate_inputs(self._factory, self._settings, list(claimed))
            for candidate_id, future in claimed.items():
                if candidate_id in inputs:
                    self._enqueue([inputs[candidate_id]], [future])
                else:
                    set_exception(future, NotFound(f"candidate {candidate_id} does not exist."))
        except Exception as exc:
            for future in claimed.values():
                set_exception(future, exc)
            raise

    def _drop_pending(self, candidate_id: int, future: Future) -> None:
        with self._pending_lock:
            if self._pending.get(candidate_id) is future:
                del self._pending[candidate_id]


def _single_version(compute: Callable[[], Any]) -> Any:
    """Run `compute` until its scores all carry one version (at most `_ATTEMPTS` times; a swap is rare)."""
    for _ in range(_ATTEMPTS):
        result = compute()
        items = result.values() if isinstance(result, dict) else result
        if len({item.version_id for item in items}) <= 1:
            break
    return result
