"""`ScoringService`: follows the active model version and answers score requests; see the package docstring."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import PIL.Image
import torch
from sqlalchemy.orm import Session, sessionmaker

from app.scoring.batching import Batcher, set_exception
from app.scoring.cache import CandidateScoreCache
from app.scoring.inputs import candidate_inputs, check_upload_images, distinct_candidate_ids, upload_instruction
from app.scoring.versions import (
    Loader,
    NoScorerYet,
    ScoredItem,
    ServedVersion,
    Serving,
    default_device,
    floor_verdict,
    load_for_serving,
    stamp,
)
from storage.errors import InvalidInput, NotFound
from storage.settings import Settings
from trainer.registry import active_version, verify_version_files, version_dir

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 300.0  # a request gives up waiting for its batch after this long (the queue is stuck)
STOP_TIMEOUT_S = 10.0  # stop() waits this long per thread (both are daemons: a load in progress cannot hold exit)
RETRY_FAILED_S = 60.0  # a version that failed to load is tried again after this long, if still active
_ATTEMPTS = 2  # a request is recomputed once if a swap gave it scores of two versions


class _Target(NamedTuple):
    """The active version as the DB has it: what to load, and its floor verdict."""

    version_id: int
    name: str
    path: Path
    passed_floor: bool | None


class ScoringService:
    """Serves scores from the active model version; see the `app.scoring` package docstring."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: Settings,
        *,
        poll_interval_s: float = 5.0,
        loader: Loader | None = None,
        max_batch: int = 16,
        batch_wait_ms: float = 10.0,
        after_swap: Callable[[], object] | None = None,
    ):
        if not poll_interval_s > 0 or max_batch < 1 or not batch_wait_ms >= 0:
            raise ValueError("ScoringService needs poll_interval_s > 0, max_batch >= 1 and batch_wait_ms >= 0.")
        self._factory, self._settings = factory, settings
        self._poll_interval_s = poll_interval_s
        self._loader = loader or load_for_serving
        self._after_swap = after_swap  # called once the old model is dropped (the app settles its heap: app.heap)
        self._device = default_device()
        self._serving: Serving | None = None
        self._cache = CandidateScoreCache(factory)
        self._pending: dict[int, Future] = {}  # candidate id → its queued computation (shared by requests)
        self._failed: tuple[int, float] | None = None  # (version id, monotonic time) of the last failed load
        self.last_error: str | None = None
        self._batcher = Batcher(lambda: self._serving, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000)
        self._swap_lock, self._refresh_lock, self._threads_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        torch.set_num_threads(settings.torch_threads)  # process-wide: leaves cores to the web server and worker

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the poller (first check at once) and the inference thread."""
        with self._threads_lock:
            self._check_running()
            self._batcher.start()
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll_loop, name="scoring-poller", daemon=True)
                self._poller.start()

    def stop(self) -> None:
        """Stop both threads; queued items are scored first, later requests raise RuntimeError."""
        with self._threads_lock:
            self._stop.set()
            self._batcher.close()
            threads = [t for t in (self._poller, self._batcher.thread) if t is not None]
        for thread in threads:
            thread.join(timeout=STOP_TIMEOUT_S)

    def _check_running(self) -> None:
        if self._stop.is_set():
            raise RuntimeError("This ScoringService was stopped; create a new one.")

    def _poll_loop(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the poller must survive a DB outage; the next poll retries
                log.exception("Checking the active model version failed; retrying in %.0f s", self._poll_interval_s)
            if self._stop.wait(self._poll_interval_s):
                return

    # --- the serving version ---------------------------------------------------------------------------------

    @property
    def version(self) -> tuple[int, str] | None:
        """(version id, name) of the model now serving; None before the first load."""
        serving = self._serving
        return None if serving is None else (serving.version_id, serving.name)

    @property
    def served(self) -> ServedVersion | None:
        """The version now serving with its floor verdict; None before the first load. Answers from memory."""
        serving = self._serving
        return None if serving is None else ServedVersion(serving.version_id, serving.name, serving.passed_floor)

    def refresh(self) -> bool:
        """Check the active version once and load it if it changed; True when the serving model was swapped."""
        with self._refresh_lock:
            target = self._active_target()
            if target is None:
                return False
            self._update_verdict(target)
            if not self._should_load(target.version_id):
                return False
            try:
                verify_version_files(target.path)
                model = self._loader(target.path, device=self._device)
            except Exception as exc:  # noqa: BLE001 - any load failure: keep serving the previous model
                self._record_failure(target.version_id, target.name, exc)
                return False
            self._swap(Serving(target.version_id, target.name, model, target.passed_floor))
            return True

    def _active_target(self) -> _Target | None:
        """The active version's id, name, folder and floor verdict, read in a short session (never held during a
        load)."""
        with self._factory() as session:
            version = active_version(session)
            if version is None:
                return None
            try:
                path = version_dir(self._settings, version)
                return _Target(version.id, version.name, path, floor_verdict(version.metrics))
            except InvalidInput as exc:  # a malformed path in the row
                self._record_failure(version.id, version.name, exc)
                return None

    def _update_verdict(self, target: _Target) -> None:
        """The serving version's floor verdict as the DB has it now (a version gated again), without a reload."""
        with self._swap_lock:
            serving = self._serving
            same_version = serving is not None and serving.version_id == target.version_id
            if same_version and serving.passed_floor != target.passed_floor:
                self._serving = replace(serving, passed_floor=target.passed_floor)

    def _should_load(self, version_id: int) -> bool:
        serving, failed = self._serving, self._failed
        if serving is not None and serving.version_id == version_id:
            return False
        return failed is None or failed[0] != version_id or time.monotonic() - failed[1] >= RETRY_FAILED_S

    def _record_failure(self, version_id: int, name: str, exc: BaseException) -> None:
        if self._failed is not None and self._failed[0] == version_id and self.last_error is not None:
            self._failed = (version_id, time.monotonic())
            return  # logged already
        self._failed = (version_id, time.monotonic())
        self.last_error = f"Could not load model version {name}: {exc}"
        serving = self.version
        log.error("%s; still serving %s", self.last_error, serving[1] if serving else "nothing")

    def _swap(self, new: Serving) -> None:
        with self._swap_lock:
            old, self._serving = self._serving, new
            self._cache.reset(new.version_id)  # older versions' scores stay in the scores table
            self._failed, self.last_error = None, None
        log.info("Serving scores from model version %s (was %s)", new.name, old.name if old else "none")
        had_old = old is not None
        del old  # nothing here holds the old model now, so the hook's collection can free it
        if self._after_swap is not None:
            self._after_swap()
        if had_old and self._device == "cuda":
            torch.cuda.empty_cache()

    def _require_serving(self) -> Serving:
        serving = self._serving
        if serving is None:
            detail = f" Last load error: {self.last_error}" if self.last_error else ""
            raise NoScorerYet(
                "No scorer yet: no trained model version has been promoted (the first one may still be training). "
                f"Scores appear here automatically once a version is active.{detail}"
            )
        return serving

    # --- requests --------------------------------------------------------------------------------------------

    def score_candidates(self, candidate_ids: list[int]) -> dict[int, ScoredItem]:
        """Scores of stored candidates by id, from the cache or computed; unknown ids raise NotFound."""
        ids = distinct_candidate_ids(candidate_ids)
        if not ids:
            return {}
        return _single_version(lambda: self._score_candidates_once(ids))

    def score_upload(
        self, *, source: PIL.Image.Image, instruction: str, edited: list[PIL.Image.Image]
    ) -> list[ScoredItem]:
        """Scores of uploaded edits of `source` under `instruction`, in order (not cached)."""
        instruction = upload_instruction(instruction, self._settings)
        check_upload_images(source, edited, self._settings)

        def once() -> list[ScoredItem]:
            self._require_serving()
            futures = [self._submit(source, image, instruction) for image in edited]
            return [stamp(None, *self._wait(future)) for future in futures]

        return _single_version(once)

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
                    self._submit(*inputs[candidate_id], future=future)
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

    def _submit(
        self, source: PIL.Image.Image, edited: PIL.Image.Image, instruction: str, future: Future | None = None
    ) -> Future:
        future = Future() if future is None else future
        with self._threads_lock:
            self._check_running()
            self._batcher.start()
            self._batcher.put(source, edited, instruction, future)
        return future

    @staticmethod
    def _wait(future: Future) -> tuple[float, Serving]:
        try:
            return future.result(timeout=REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"Scoring took over {REQUEST_TIMEOUT_S:.0f} s; the scorer is overloaded.") from None


def _single_version(compute: Callable[[], Any]) -> Any:
    """Run `compute` until its scores all carry one version (at most `_ATTEMPTS` times; a swap is rare)."""
    for _ in range(_ATTEMPTS):
        result = compute()
        items = result.values() if isinstance(result, dict) else result
        if len({item.version_id for item in items}) <= 1:
            break
    return result
