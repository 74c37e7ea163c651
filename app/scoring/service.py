"""`ScoringService`: follows the active model version and answers score requests; see the package docstring."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import NamedTuple

import PIL.Image
import torch
from sqlalchemy.orm import Session, sessionmaker

from app.scoring.batching import Batcher, Input
from app.scoring.cache import CandidateScoreCache
from app.scoring.candidates import CandidateRequests
from app.scoring.inputs import (
    check_picture,
    check_upload_images,
    upload_instruction,
)
from app.scoring.pinned import PinnedVersions, State
from app.scoring.versions import (
    Loader,
    LoadFailure,
    ModelScore,
    NoScorerYet,
    ScoredItem,
    ScorerStatus,
    ServedVersion,
    Serving,
    floor_verdict,
    stamp,
)
from storage.errors import InvalidInput
from storage.settings import Settings
from trainer.registry import active_version, files_sha256, get_version_by_name, verify_version_files, version_dir
from trainer.scorer import default_device, load_scorer_model

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 300.0  # a request gives up waiting for its batch after this long (the queue is stuck)
STOP_TIMEOUT_S = 10.0  # stop() waits this long per thread (both are daemons: a load in progress cannot hold exit)
RETRY_FAILED_S = 60.0  # a version that failed to load is tried again after this long, if still active (or asked for)
MAX_PINNED = 2  # pinned versions (asked for by name) kept in memory besides the serving one


class _Target(NamedTuple):
    """The active version as the DB has it: what to load, and its floor verdict."""

    version_id: int
    name: str
    path: Path
    passed_floor: bool | None


class ScoringService(CandidateRequests):
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
        max_queue: int | None = None,
        device: str | None = None,
        after_swap: Callable[[], object] | None = None,
    ):
        if (
            not poll_interval_s > 0
            or max_batch < 1
            or not batch_wait_ms >= 0
            or (max_queue is not None and max_queue < 1)
        ):
            raise ValueError(
                "ScoringService needs poll_interval_s > 0, max_batch >= 1, batch_wait_ms >= 0 and max_queue >= 1."
            )
        self._factory, self._settings = factory, settings
        self._poll_interval_s = poll_interval_s
        self._loader = loader or partial(load_scorer_model, settings=settings)  # the one scorer loader
        self._after_swap = after_swap  # called once the old model is dropped (the app settles its heap: app.heap)
        self._device = device or default_device()
        self._serving: Serving | None = None
        # The model served before `_serving`, kept so that a rollback to it swaps at once (one extra model in memory;
        # dropped before any load from disk, so a load never holds three).
        self._previous: Serving | None = None
        self._cache = CandidateScoreCache(factory)
        self._pending: dict[int, Future] = {}  # candidate id → its queued computation (shared by requests)
        self._failure: LoadFailure | None = None  # the active version's failed load, shown by the app
        self._failed_monotonic = 0.0  # when it was last tried (RETRY_FAILED_S counts from here)
        self._batcher = Batcher(
            lambda: self._serving, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000, max_queue=max_queue
        )
        self._pinned = PinnedVersions(
            self._named_target, self._load_target, capacity=MAX_PINNED, retry_failed_s=RETRY_FAILED_S
        )
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

    @property
    def load_failure(self) -> LoadFailure | None:
        """The active version's failed load (None when it serves, or nothing failed). Answers from memory."""
        return self._failure

    @property
    def last_error(self) -> str | None:
        """The failed load as one sentence; None when nothing failed."""
        failure = self._failure
        return None if failure is None else f"Could not load model version {failure.name}: {failure.error}"

    def status(self) -> ScorerStatus:
        """The serving version and the active version's failed load, read together. Answers from memory."""
        with self._swap_lock:
            return ScorerStatus(self.served, self._failure)

    def refresh(self) -> bool:
        """Check the active version once and swap to it if it changed; True when the serving model was swapped.

        The model comes from memory when it is the previous one (a rollback) or pinned; else it is loaded in full
        while the current one keeps serving, and swapped in only once loaded."""
        with self._refresh_lock:
            target = self._active_target()
            if target is None:
                return False
            self._update_verdict(target)
            if not self._should_load(target.version_id):
                return False
            serving = self._in_memory(target)
            if serving is None:
                if self._drop_previous():
                    self._release()  # before the load, so its memory is free for the new model
                try:
                    serving = self._load_target(target)
                except Exception as exc:  # noqa: BLE001 - any load failure: keep serving the current model
                    self._record_failure(target.version_id, target.name, exc)
                    return False
            self._swap(serving)
            return True

    def _in_memory(self, target: _Target) -> Serving | None:
        """`target`'s model when memory holds it (the previous one, or pinned), with the DB's floor verdict."""
        previous = self._previous
        if previous is None or previous.version_id != target.version_id:
            pinned = (s for s in self._pinned.loaded() if s.version_id == target.version_id)
            previous = next(pinned, None)
        return None if previous is None else replace(previous, passed_floor=target.passed_floor)

    def _drop_previous(self) -> bool:
        """Forget the previous model; True when there was one."""
        with self._swap_lock:
            dropped, self._previous = self._previous, None
        return dropped is not None

    def _load_target(self, target: _Target) -> Serving:
        """`target`'s files hash-checked, then loaded by the one scorer loader (slow: never in a request)."""
        verify_version_files(target.path)
        model = self._loader(target.path, device=self._device)
        return Serving(target.version_id, target.name, model, target.passed_floor, files_sha256(target.path))

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

    def _named_target(self, name: str) -> _Target:
        """The version `name`'s id, folder and floor verdict (NotFound for an unknown name), in a short session."""
        with self._factory() as session:
            version = get_version_by_name(session, name=name)
            return _Target(
                version.id, version.name, version_dir(self._settings, version), floor_verdict(version.metrics)
            )

    def _update_verdict(self, target: _Target) -> None:
        """The serving version's floor verdict as the DB has it now (a version gated again), without a reload; when
        the active version is the serving one, an earlier failed load (of a version no longer active) is cleared."""
        with self._swap_lock:
            serving = self._serving
            if serving is None or serving.version_id != target.version_id:
                return
            self._failure = None
            if serving.passed_floor != target.passed_floor:
                self._serving = replace(serving, passed_floor=target.passed_floor)

    def _should_load(self, version_id: int) -> bool:
        serving, failure = self._serving, self._failure
        if serving is not None and serving.version_id == version_id:
            return False
        recent = time.monotonic() - self._failed_monotonic < RETRY_FAILED_S
        return failure is None or failure.version_id != version_id or not recent

    def _record_failure(self, version_id: int, name: str, exc: BaseException) -> None:
        before, self._failed_monotonic = self._failure, time.monotonic()
        again = before is not None and before.version_id == version_id
        failed_at = before.failed_at if again else datetime.now(UTC)  # when it first failed
        self._failure = LoadFailure(version_id, name, str(exc) or type(exc).__name__, failed_at)
        if not again:  # logged already
            serving = self.version
            log.error("%s; still serving %s", self.last_error, serving[1] if serving else "nothing")

    def _swap(self, new: Serving) -> None:
        """Serve `new`; the model it replaces becomes the previous one, and the previous one before it is dropped."""
        with self._swap_lock:
            old, self._serving = self._serving, new
            dropped = self._previous if self._previous and self._previous.version_id != new.version_id else None
            self._previous = old
            self._cache.reset(new.version_id)  # older versions' scores stay in the scores table
            self._failure = None
        self._pinned.discard(new.name)  # served from `new` now: a pinned copy would only hold memory
        log.info("Serving scores from model version %s (was %s)", new.name, old.name if old else "none")
        del old, dropped  # nothing here holds a dropped model now, so the hook's collection can free it
        self._release()

    def _release(self) -> None:
        """Give the memory of dropped models back: the `after_swap` hook (the app settles its heap), the GPU cache."""
        if self._after_swap is not None:
            self._after_swap()
        if torch.device(self._device).type == "cuda":
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

    def score_upload(
        self, *, source: PIL.Image.Image, instruction: str, edited: list[PIL.Image.Image]
    ) -> list[ScoredItem]:
        """Scores of uploaded edits of `source` under `instruction`, in order (not cached); one version for all."""
        instruction = upload_instruction(instruction, self._settings)
        check_upload_images(source, edited, self._settings)
        outcomes = self._score_inputs([(source, image, instruction) for image in edited], version=None)
        for outcome in outcomes:
            if isinstance(outcome, InvalidInput):
                raise outcome
        return outcomes

    def score_items(self, items: Sequence[Input], *, version: str | None = None) -> list[ScoredItem | InvalidInput]:
        """Scores of (source, edited, instruction) items in order, each a `ScoredItem` or the `InvalidInput` that
        refused it; all by one version: the serving one, or the published version named `version`.

        Raises for the whole call: `NoScorerYet`, `NotFound` (no such version), `VersionLoading` (retry soon),
        `VersionUnavailable` (it cannot be loaded), `Overloaded` (queue full: retry later)."""
        outcomes: list[ScoredItem | InvalidInput | None] = []
        valid: list[Input] = []
        for source, edited, instruction in items:
            try:
                cleaned = upload_instruction(instruction, self._settings)
                check_picture("source image", source, self._settings)
                check_picture("edited image", edited, self._settings)
            except InvalidInput as exc:
                outcomes.append(exc)
                continue
            outcomes.append(None)
            valid.append((source, edited, cleaned))
        scored = iter(self._score_inputs(valid, version=version) if valid else [])
        return [next(scored) if outcome is None else outcome for outcome in outcomes]

    def serving_for(self, version: str | None) -> Serving:
        """The model that scores a request: the serving version (None), or the published version named `version`
        (the serving one when it is that; else pinned: loaded in the background, see `app.scoring.pinned`)."""
        if version is None:
            return self._require_serving()
        return self._resident(version) or self._pinned.get(version)

    def version_state(self, version: str | None) -> tuple[State, Serving | None, str | None]:
        """(state, model when ready, why when not) of the serving version (None) or a named one; starts nothing."""
        serving = self._serving if version is None else self._resident(version)
        if serving is not None:
            return "ready", serving, None
        return ("not loaded", None, self.last_error) if version is None else self._pinned.state(version)

    def pinned_models(self) -> list[Serving]:
        """The pinned versions in memory (besides the serving one), least recently used first."""
        return self._pinned.loaded()

    def wait_for_version(self, version: str, timeout_s: float) -> Serving:
        """The named version, loading it if needed and waiting up to `timeout_s` (start-up and tests, not requests)."""
        return self._resident(version) or self._pinned.wait(version, timeout_s)

    def _resident(self, name: str) -> Serving | None:
        """The serving or the previous model when it is version `name`; else None."""
        serving, previous = self._serving, self._previous
        return next((s for s in (serving, previous) if s is not None and s.name == name), None)

    def check_room(self, items: int) -> None:
        """Raise `Overloaded` now when `items` more would not fit in the queue (before the caller decodes them)."""
        self._batcher.check_room(items)

    @property
    def queued_items(self) -> int:
        """Items waiting for the inference thread (not yet in a batch)."""
        return self._batcher.waiting

    @property
    def device(self) -> str:
        """Where the models are loaded and run (`--device`, else a GPU when visible)."""
        return self._device

    def _score_inputs(self, inputs: list[Input], *, version: str | None) -> list[ScoredItem | InvalidInput]:
        """Validated inputs queued together for one version (resolved once, so one answer never mixes versions)."""
        futures: list[Future] = [Future() for _ in inputs]
        self._enqueue(inputs, futures, self.serving_for(version))
        outcomes: list[ScoredItem | InvalidInput] = []
        for future in futures:
            try:
                outcomes.append(stamp(None, *self._wait(future)))
            except InvalidInput as exc:  # the processor refused this item (see batching)
                outcomes.append(exc)
        return outcomes

    def _enqueue(self, inputs: list[Input], futures: list[Future], serving: Serving | None = None) -> None:
        """Queue the inputs, scored by `serving` (None: the version serving when their batch runs)."""
        with self._threads_lock:
            self._check_running()
            self._batcher.start()
            self._batcher.put_many(inputs, futures, serving)

    @staticmethod
    def _wait(future: Future) -> tuple[ModelScore, Serving]:
        try:
            return future.result(timeout=REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"Scoring took over {REQUEST_TIMEOUT_S:.0f} s; the scorer is overloaded.") from None
