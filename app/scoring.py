"""Live scores from the promoted model version, batched, cached and stamped with the version that computed them.

`ScoringService` holds one *serving* reference: (version id, name, model). A poller thread (`start()`) asks the DB
for the active version every `poll_interval_s`; when it changed, it loads the new version's files (hash-checked,
LM head left off the device) while the old model keeps serving, then swaps the reference under a lock. Requests
never wait for a load. A version that fails to load (missing or corrupt folder) is logged, kept in `last_error`,
and retried only after `RETRY_FAILED_S`; the previous model keeps serving meanwhile. While a new model loads, two
models are in memory.

Requests (Gradio's worker threads) put one item per image into a queue; a single inference thread takes up to
`max_batch` items, waiting at most `batch_wait_ms` for more after the first, and runs one
`JointRewardModel.score` forward per batch on the serving model it read once for the batch. Every score comes back
stamped with that model's version. A request whose scores came from two versions (a swap mid-request) is computed
once more, so one answer never mixes versions.

Each serving reference also keeps the version's promotion-gate floor verdict (`metrics["gate"]["passed_floor"]`,
read with the version's row when it loads and on each poll, never per request) and every score carries it, so the app
can tell whether the scores that came back are from a model that beat the floor.

Candidate scores are cached per (version, candidate): in memory for the serving version and in the `scores`
table (`registry.cached_scores` / `record_scores`), so a restarted app or another app process reuses them.
DB sessions stay short and never span a model load or a forward: on SQLite every transaction takes the write lock.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import PIL.Image
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased, sessionmaker

from storage.errors import InvalidInput, NotFound
from storage.images import open_image
from storage.models import Candidate, Image, Task
from storage.repository import clean_text
from storage.settings import Settings
from trainer.model import JointRewardModel
from trainer.prompting import build_example, collate
from trainer.registry import active_version, cached_scores, record_scores, verify_version_files, version_dir

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 300.0  # a request gives up waiting for its batch after this long (the queue is stuck)
STOP_TIMEOUT_S = 10.0  # stop() waits this long per thread (both are daemons: a load in progress cannot hold exit)
RETRY_FAILED_S = 60.0  # a version that failed to load is tried again after this long, if still active
MAX_UPLOAD_EDITS = 16  # edited images per `score_upload` call
_ATTEMPTS = 2  # a request is recomputed once if a swap gave it scores of two versions

Loader = Callable[..., Any]  # loader(path, *, device) -> a model with .processor and .score(batch)


class NoScorerYet(RuntimeError):
    """No model version is serving yet; the message is meant for users."""


@dataclass(frozen=True)
class ScoredItem:
    """One score and the version that computed it (`candidate_id` is None for uploads)."""

    candidate_id: int | None
    score: float
    version_id: int
    version_name: str
    passed_floor: bool | None = None  # that version's floor verdict (`floor_verdict`); None: never checked


@dataclass(frozen=True)
class ServedVersion:
    """The version now serving: id, name and its floor verdict (`floor_verdict`)."""

    version_id: int
    name: str
    passed_floor: bool | None


@dataclass(frozen=True)
class _Serving:
    """The model now answering requests; replaced as a whole, never mutated."""

    version_id: int
    name: str
    model: Any
    passed_floor: bool | None = None


class _Target(NamedTuple):
    """The active version as the DB has it: what to load, and its floor verdict."""

    version_id: int
    name: str
    path: Path
    passed_floor: bool | None


@dataclass(frozen=True)
class _Item:
    """One (source, edited, instruction) sequence waiting for the inference thread."""

    source: PIL.Image.Image
    edited: PIL.Image.Image
    instruction: str
    future: Future  # resolves to (score, _Serving)


def floor_verdict(metrics: object) -> bool | None:
    """`metrics["gate"]["passed_floor"]` of a version: True or False, or None when it has none (gated before the floor
    existed, promoted by hand, or malformed)."""
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    verdict = gate.get("passed_floor") if isinstance(gate, dict) else None
    return verdict if isinstance(verdict, bool) else None


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_serving(path: Path, *, device: str) -> JointRewardModel:
    """The default loader: a saved JRM in eval mode, its LM head dropped before it moves to `device`."""
    return JointRewardModel.load(path, device=device, lm_head=False)


class ScoringService:
    """Serves scores from the active model version; see the module docstring."""

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
        self._poll_interval_s, self._max_batch, self._batch_wait_s = poll_interval_s, max_batch, batch_wait_ms / 1000
        self._loader = loader or load_for_serving
        self._after_swap = after_swap  # called once the old model is dropped (the app settles its heap: app.heap)
        self._device = default_device()
        self._serving: _Serving | None = None
        self._cache: dict[int, dict[int, float]] = {}  # version id → candidate id → score (serving version only)
        self._pending: dict[int, Future] = {}  # candidate id → its queued computation (shared by requests)
        self._failed: tuple[int, float] | None = None  # (version id, monotonic time) of the last failed load
        self.last_error: str | None = None
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._swap_lock, self._refresh_lock, self._threads_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._inference: threading.Thread | None = None
        self._poller: threading.Thread | None = None
        torch.set_num_threads(settings.torch_threads)  # process-wide: leaves cores to the web server and worker

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the poller (first check at once) and the inference thread."""
        with self._threads_lock:
            self._check_running()
            self._ensure_inference_locked()
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll_loop, name="scoring-poller", daemon=True)
                self._poller.start()

    def stop(self) -> None:
        """Stop both threads; queued items are scored first, later requests raise RuntimeError."""
        with self._threads_lock:
            self._stop.set()
            self._queue.put(None)
            threads = [t for t in (self._poller, self._inference) if t is not None]
        for thread in threads:
            thread.join(timeout=STOP_TIMEOUT_S)

    def _check_running(self) -> None:
        if self._stop.is_set():
            raise RuntimeError("This ScoringService was stopped; create a new one.")

    def _ensure_inference_locked(self) -> None:
        if self._inference is None:
            self._inference = threading.Thread(target=self._inference_loop, name="scoring-inference", daemon=True)
            self._inference.start()

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
            self._swap(_Serving(target.version_id, target.name, model, target.passed_floor))
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

    def _swap(self, new: _Serving) -> None:
        with self._swap_lock:
            old, self._serving = self._serving, new
            self._cache = {new.version_id: {}}  # older versions' scores stay in the scores table
            self._failed, self.last_error = None, None
        log.info("Serving scores from model version %s (was %s)", new.name, old.name if old else "none")
        had_old = old is not None
        del old  # nothing here holds the old model now, so the hook's collection can free it
        if self._after_swap is not None:
            self._after_swap()
        if had_old and self._device == "cuda":
            torch.cuda.empty_cache()

    def _require_serving(self) -> _Serving:
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
        ids = _candidate_ids(candidate_ids)
        if not ids:
            return {}
        return _single_version(lambda: self._score_candidates_once(ids))

    def score_upload(
        self, *, source: PIL.Image.Image, instruction: str, edited: list[PIL.Image.Image]
    ) -> list[ScoredItem]:
        """Scores of uploaded edits of `source` under `instruction`, in order (not cached)."""
        instruction = _upload_instruction(instruction, self._settings)
        _check_upload_images(source, edited, self._settings)

        def once() -> list[ScoredItem]:
            self._require_serving()
            futures = [self._submit(source, image, instruction) for image in edited]
            return [_stamp(None, *self._wait(future)) for future in futures]

        return _single_version(once)

    def _score_candidates_once(self, ids: list[int]) -> dict[int, ScoredItem]:
        serving = self._require_serving()
        results = self._cached(serving, ids)
        missing = [i for i in ids if i not in results]
        if missing:
            results.update(self._compute(missing))
        return {i: results[i] for i in ids}

    def _cached(self, serving: _Serving, ids: list[int]) -> dict[int, ScoredItem]:
        """Hits from memory, then from the scores table (which also fills memory)."""
        memory = self._cache.get(serving.version_id, {})
        scores = {i: memory[i] for i in ids if i in memory}
        rest = [i for i in ids if i not in scores]
        if rest:
            with self._factory() as session:
                stored = cached_scores(session, version_id=serving.version_id, candidate_ids=rest)
            scores.update(stored)
            self._remember_in_memory(serving.version_id, stored)
        return {i: _stamp(i, score, serving) for i, score in scores.items()}

    def _compute(self, ids: list[int]) -> dict[int, ScoredItem]:
        """Run missing candidates through the batching queue, then cache what came back."""
        results, missing = {}, []
        for candidate_id, future in self._candidate_futures(ids).items():
            try:
                results[candidate_id] = _stamp(candidate_id, *self._wait(future))
            except NotFound:
                missing.append(candidate_id)
        self._store(results.values())
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
            inputs = _candidate_inputs(self._factory, self._settings, list(claimed))
            for candidate_id, future in claimed.items():
                if candidate_id in inputs:
                    self._submit(*inputs[candidate_id], future=future)
                else:
                    _set_exception(future, NotFound(f"candidate {candidate_id} does not exist."))
        except Exception as exc:
            for future in claimed.values():
                _set_exception(future, exc)
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
            self._ensure_inference_locked()
            self._queue.put(_Item(source, edited, instruction, future))
        return future

    @staticmethod
    def _wait(future: Future) -> tuple[float, _Serving]:
        try:
            return future.result(timeout=REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"Scoring took over {REQUEST_TIMEOUT_S:.0f} s; the scorer is overloaded.") from None

    def _store(self, results: Iterable[ScoredItem]) -> None:
        """Keep computed scores in memory (serving version) and in the scores table (their own version)."""
        by_version: dict[int, dict[int, float]] = {}
        for item in results:
            by_version.setdefault(item.version_id, {})[item.candidate_id] = item.score
        for version_id, scores in by_version.items():
            self._remember_in_memory(version_id, scores)
            try:
                with self._factory() as session, session.begin():
                    record_scores(session, version_id=version_id, scores=scores)
            except Exception:  # noqa: BLE001 - the cache is an optimisation; the scores are still returned
                log.warning("Could not store %d scores of version %s", len(scores), version_id, exc_info=True)

    def _remember_in_memory(self, version_id: int, scores: dict[int, float]) -> None:
        with self._swap_lock:
            memory = self._cache.get(version_id)  # None once that version stopped serving
            if memory is not None:
                memory.update(scores)

    # --- the inference thread ----------------------------------------------------------------------------------

    def _inference_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - never leave a request waiting on a dead thread
                log.exception("Scoring batch failed")
                _fail(batch, exc)

    def _next_batch(self) -> list[_Item] | None:
        """Up to `max_batch` items: the first one blocks, the rest arrive within `batch_wait_ms` of it."""
        first = self._queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self._batch_wait_s
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if item is None:  # stop: score this batch, then end
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run_batch(self, batch: list[_Item]) -> None:
        """One forward of the serving model (read once) over the batch; each future gets (score, serving)."""
        serving = self._serving
        if serving is None:
            _fail(batch, NoScorerYet("No scorer yet: the model version that was serving is gone."))
            return
        processor = serving.model.processor
        examples, ready = [], []
        for item in batch:
            try:
                examples.append(
                    build_example(processor, source=item.source, edited=item.edited, instruction=item.instruction)
                )
                ready.append(item)
            except Exception as exc:  # noqa: BLE001 - one bad input fails its own request only
                _set_exception(item.future, exc)
        if not ready:
            return
        rewards = serving.model.score(collate(examples, processor)).float().cpu().tolist()  # (B,)
        for item, reward in zip(ready, rewards, strict=True):
            _set_result(item.future, (reward, serving))


# --- helpers ---------------------------------------------------------------------------------------------------


def _single_version(compute: Callable[[], Any]) -> Any:
    """Run `compute` until its scores all carry one version (at most `_ATTEMPTS` times; a swap is rare)."""
    for _ in range(_ATTEMPTS):
        result = compute()
        items = result.values() if isinstance(result, dict) else result
        if len({item.version_id for item in items}) <= 1:
            break
    return result


def _stamp(candidate_id: int | None, score: float, serving: _Serving) -> ScoredItem:
    return ScoredItem(candidate_id, float(score), serving.version_id, serving.name, serving.passed_floor)


def _set_result(future: Future, value: Any) -> None:
    with contextlib.suppress(InvalidStateError):  # already failed by its request (e.g. the queue was stopped)
        future.set_result(value)


def _set_exception(future: Future, exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        future.set_exception(exc)


def _fail(batch: list[_Item], exc: BaseException) -> None:
    for item in batch:
        _set_exception(item.future, exc)


def _candidate_ids(candidate_ids: Any) -> list[int]:
    """Distinct ids in their first order; anything but a list of integers is InvalidInput."""
    if not isinstance(candidate_ids, list | tuple):
        raise InvalidInput(f"candidate_ids must be a list of integers, got {type(candidate_ids).__name__}.")
    for value in candidate_ids:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"candidate ids must be integers, got {value!r:.40}.")
    return list(dict.fromkeys(candidate_ids))


def _candidate_inputs(
    factory: sessionmaker[Session], settings: Settings, ids: list[int]
) -> dict[int, tuple[PIL.Image.Image, PIL.Image.Image, str]]:
    """id → (source, edited, instruction) of the stored ones; rows read in one short session, images after it."""
    source_image, edited_image = aliased(Image), aliased(Image)
    query = (
        select(Candidate.id, Task.instruction, source_image, edited_image)
        .join(Task, Task.id == Candidate.task_id)
        .join(source_image, source_image.id == Task.source_image_id)
        .join(edited_image, edited_image.id == Candidate.image_id)
        .where(Candidate.id.in_(ids))
    )
    with factory() as session:
        rows = {row[0]: row[1:] for row in session.execute(query)}
    decoded: dict[int, PIL.Image.Image] = {}  # image id → picture: a task's source is decoded once

    def picture(image: Image) -> PIL.Image.Image:
        if image.id not in decoded:
            decoded[image.id] = open_image(settings, image)
        return decoded[image.id]

    return {i: (picture(source), picture(edited), instruction) for i, (instruction, source, edited) in rows.items()}


def _upload_instruction(instruction: Any, settings: Settings) -> str:
    if not isinstance(instruction, str) or not clean_text(instruction).strip():
        raise InvalidInput("The instruction is empty: describe the edit, e.g. 'make the sky purple'.")
    cleaned = clean_text(instruction).strip()
    if len(cleaned) > settings.instruction_max_chars:
        raise InvalidInput(
            f"The instruction has {len(cleaned)} characters; shorten it to at most {settings.instruction_max_chars}."
        )
    return cleaned


def _check_upload_images(source: Any, edited: Any, settings: Settings) -> None:
    if not isinstance(edited, list | tuple) or not edited:
        raise InvalidInput("Add at least one edited image to score.")
    if len(edited) > MAX_UPLOAD_EDITS:
        raise InvalidInput(f"{len(edited)} edited images; score at most {MAX_UPLOAD_EDITS} at a time.")
    for label, image in [("source image", source), *((f"edited image {i + 1}", e) for i, e in enumerate(edited))]:
        if not isinstance(image, PIL.Image.Image):
            raise InvalidInput(f"The {label} is missing or not a picture; upload a PNG, JPEG or WebP image.")
        width, height = image.size
        if min(width, height) < settings.min_image_side or width * height > settings.max_pixels:
            raise InvalidInput(
                f"The {label} is {width}x{height} pixels; each side must be at least {settings.min_image_side} and "
                f"the area at most {settings.max_pixels / 1e6:g} megapixels."
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
