"""The store's half of the garbage collection: image blobs and rows nothing uses, temp files, old exports.

Rules (docs/operations.md, "Retention"); every age is measured against `now`:

- **orphan image file**: a file `<blob_dir>/<sha[:2]>/<sha>.<format>` that no `images` row names (sha256 and
  format), last modified more than `ORPHAN_GRACE` ago: what a rolled-back transaction leaves behind.
- **unused image**: an `images` row that no task (as its source) and no candidate names, created more than
  `ORPHAN_GRACE` ago: the row and its file go. Nothing in the app leaves one (tasks and candidates are never
  deleted, and every importer stores an image in the transaction that uses it); the grace leaves a day to a
  script that stores images in one transaction and adds their tasks in the next. The foreign keys refuse to
  delete a row something still names, so a mistake here fails the collection instead of breaking a task.
- **temp file**: an `.incoming-*.tmp` file in the blob folders older than `ORPHAN_GRACE`: a write killed midway.
- **export**: a file or folder directly under `<data_dir>/exports` (the Research tab's downloads,
  `app.handlers.research.export_votes`) last modified more than `JRM_EXPORT_RETENTION_DAYS` ago (0: kept).

Planning reads in a read-only session with no lock, and a dry run stops there. Removing re-checks the planned
blobs in one write transaction holding the blob lock exclusively (`storage.images.lock_blobs`; on SQLite the write
lock), so no transaction storing images is in flight: rows are deleted, files unlinked, then it commits. A commit
that fails after the unlinks leaves rows without files, but only rows nothing uses, and the next store of the same
content writes the file again. The model registry and run folders are the trainer's (`trainer.retention`).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import engine_of, session_factory, transaction
from storage.images import blob_path, lock_blobs
from storage.models import Candidate, Image, Task, utcnow
from storage.settings import Settings

ORPHAN_GRACE = timedelta(hours=24)
BLOB_LOCK_WAIT_S = 60.0  # how long the collection retries for the blob lock while images are being stored
_BLOB_NAME = re.compile(r"(?P<sha>[0-9a-f]{64})\.(?P<format>png|jpeg|webp)")
_TEMP_GLOB = ".incoming-*.tmp"  # storage.images._write_blob's temp files
_CHUNK = 500  # ids or hashes per IN (...) list


@dataclass(frozen=True)
class Removal:
    """One thing the collection removed (or, in a dry run, would remove)."""

    kind: str  # e.g. "orphan image file", "run snapshot", "model version"
    path: Path
    bytes: int
    note: str = ""


@dataclass
class GcReport:
    """What a collection removed, or would remove in a dry run, and what it skipped and why."""

    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(removal.bytes for removal in self.removals)

    def summary(self) -> list[tuple[str, int, int]]:
        """(kind, items, bytes) per kind, in the order the kinds first appear."""
        totals: dict[str, list[int]] = {}
        for removal in self.removals:
            entry = totals.setdefault(removal.kind, [0, 0])
            entry[0], entry[1] = entry[0] + 1, entry[1] + removal.bytes
        return [(kind, items, size) for kind, (items, size) in totals.items()]

    def lines(self, *, itemised: bool = False) -> list[str]:
        """The report as a table: one row per kind (or per item), bytes freed, then what was skipped."""
        verb = "would remove (dry run: nothing was removed)" if self.dry_run else "removed"
        if itemised:
            rows = [(r.kind, str(r.path), _human(r.bytes), r.note) for r in self.removals]
            header = ("kind", "path", "bytes", "note")
        else:
            rows = [(kind, str(items), _human(size), "") for kind, items, size in self.summary()]
            header = ("kind", "items", "bytes", "")
        rows.append(("total", str(len(self.removals)), _human(self.bytes_freed), ""))
        return [f"garbage collection {verb}:", *_table(header, rows), *(f"skipped: {s}" for s in self.skipped)]


def _human(size: int) -> str:
    value, unit = float(size), "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def tree_bytes(path: Path) -> int:
    """Bytes in the file `path`, or in every file under the folder `path` (0 when it is gone)."""
    try:
        if not path.is_dir():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    except FileNotFoundError:
        return 0


def remove_tree(path: Path) -> None:
    """Delete a file or a folder; one already gone (another collection got there first) is no error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _older_than(path: Path, cutoff: datetime) -> bool:
    try:
        return path.stat().st_mtime < cutoff.timestamp()
    except FileNotFoundError:
        return False


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- blobs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobPlan:
    """Blob files and rows planned for removal: (sha256, format, file) and (image id, sha256, format)."""

    orphan_files: list[tuple[str, str, Path]]
    unused_images: list[tuple[int, str, str]]
    temp_files: list[Path]


def _blob_files(settings: Settings) -> Iterator[tuple[str, str, Path]]:
    """(sha256, format, path) of every file in the blob folders named as a blob; other files are not ours."""
    if not settings.blob_dir.is_dir():
        return
    for folder in sorted(settings.blob_dir.iterdir()):
        if not folder.is_dir() or len(folder.name) != 2:
            continue
        for path in sorted(folder.iterdir()):
            match = _BLOB_NAME.fullmatch(path.name)
            if match and match["sha"][:2] == folder.name and path.is_file():
                yield match["sha"], match["format"], path


def _named_blobs(session: Session, shas: Iterable[str]) -> set[tuple[str, str]]:
    """The (sha256, format) pairs among `shas` that an `images` row names."""
    query, named = select(Image.sha256, Image.format), set()
    for chunk in _chunks(sorted(set(shas))):
        named.update(tuple(row) for row in session.execute(query.where(Image.sha256.in_(chunk))))
    return named


def _unused_images(session: Session, cutoff: datetime, ids: list[int] | None = None) -> list[tuple[int, str, str]]:
    """(id, sha256, format) of images created before `cutoff` that no task or candidate names (among `ids`)."""
    task_uses = exists().where(Task.source_image_id == Image.id)
    candidate_uses = exists().where(Candidate.image_id == Image.id)
    query = select(Image.id, Image.sha256, Image.format).where(Image.created_at < cutoff, ~task_uses, ~candidate_uses)
    if ids is None:
        return [tuple(row) for row in session.execute(query.order_by(Image.id))]
    found = [tuple(row) for chunk in _chunks(ids) for row in session.execute(query.where(Image.id.in_(chunk)))]
    return sorted(found)


def plan_blobs(session: Session, settings: Settings, *, now: datetime) -> BlobPlan:
    """What the blob rules would remove now (reads only)."""
    cutoff = now - ORPHAN_GRACE
    old_files = [(sha, fmt, path) for sha, fmt, path in _blob_files(settings) if _older_than(path, cutoff)]
    named = _named_blobs(session, (sha for sha, _, _ in old_files))
    orphans = [(sha, fmt, path) for sha, fmt, path in old_files if (sha, fmt) not in named]
    temp = sorted(p for p in settings.blob_dir.glob(f"*/{_TEMP_GLOB}") if _older_than(p, cutoff))
    return BlobPlan(orphans, _unused_images(session, cutoff), temp)


def _blob_removals(settings: Settings, plan: BlobPlan) -> list[Removal]:
    removals = [
        Removal("orphan image file", path, tree_bytes(path), "no images row names it")
        for _, _, path in plan.orphan_files
    ]
    removals += [
        Removal(
            "unused image",
            path := blob_path(settings, sha, fmt),
            tree_bytes(path),
            f"images row {image_id}: no task or candidate uses it",
        )
        for image_id, sha, fmt in plan.unused_images
    ]
    removals += [
        Removal("temp file", path, tree_bytes(path), "left by an interrupted write") for path in plan.temp_files
    ]
    return removals


def _lock_blobs_exclusively(session: Session, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while not lock_blobs(session, exclusive=True):
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(1.0, wait_s))
    return True


def remove_blobs(
    factory: sessionmaker[Session], settings: Settings, plan: BlobPlan, *, now: datetime, lock_wait_s: float
) -> list[Removal] | None:
    """Re-check `plan` under the blob lock and remove what still qualifies; None when the lock stayed taken."""
    cutoff = now - ORPHAN_GRACE
    with transaction(factory) as session:
        if not _lock_blobs_exclusively(session, lock_wait_s):
            return None
        named = _named_blobs(session, (sha for sha, _, _ in plan.orphan_files))
        orphans = [entry for entry in plan.orphan_files if entry[:2] not in named and _older_than(entry[2], cutoff)]
        unused = _unused_images(session, cutoff, [image_id for image_id, _, _ in plan.unused_images])
        still = BlobPlan(orphans, unused, [path for path in plan.temp_files if path.exists()])
        removals = _blob_removals(settings, still)
        for chunk in _chunks([image_id for image_id, _, _ in unused]):  # a row still named fails: nothing unlinked
            session.execute(delete(Image).where(Image.id.in_(chunk)))
        for removal in removals:
            remove_tree(removal.path)
    return removals


# --- exports ----------------------------------------------------------------------------------------------


def exports_dir(settings: Settings) -> Path:
    """Where the Research tab writes its downloads (`app.handlers.research.export_votes`)."""
    return settings.data_dir / "exports"


def plan_exports(settings: Settings, *, now: datetime) -> list[Removal]:
    """Exports older than `JRM_EXPORT_RETENTION_DAYS`, files and the scratch folders of interrupted ones."""
    folder = exports_dir(settings)
    if settings.export_retention_days == 0 or not folder.is_dir():
        return []
    cutoff = now - timedelta(days=settings.export_retention_days)
    return [
        Removal("export", path, tree_bytes(path), "older than JRM_EXPORT_RETENTION_DAYS")
        for path in sorted(folder.iterdir())
        if _older_than(path, cutoff)
    ]


# --- the store's collection -------------------------------------------------------------------------------


def collect_store(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    lock_wait_s: float = BLOB_LOCK_WAIT_S,
) -> GcReport:
    """Apply the blob and export rules (a dry run only reports what they would remove)."""
    now = now or utcnow()
    report = GcReport(dry_run=dry_run)
    with session_factory(engine_of(factory), read_only=True)() as session:
        plan = plan_blobs(session, settings, now=now)
    planned = _blob_removals(settings, plan)
    exports = plan_exports(settings, now=now)
    if dry_run:
        report.removals += planned + exports
        return report
    blobs = remove_blobs(factory, settings, plan, now=now, lock_wait_s=lock_wait_s) if planned else []
    if blobs is None:
        report.skipped.append(f"image blobs: images were being stored for {lock_wait_s:g} s; run it again later")
    report.removals += blobs or []
    for removal in exports:
        remove_tree(removal.path)
    report.removals += exports
    return report
