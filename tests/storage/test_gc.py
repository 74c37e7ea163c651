"""The store's garbage collection (`storage.gc`) and the blob write's hash check, on SQLite and PostgreSQL.

Ages are tested by collecting at a later `now` instead of back-dating files and rows.
"""

from __future__ import annotations

import logging
import os
import random
from datetime import timedelta

import PIL.Image
import pytest
from sqlalchemy import func, select, text

from storage import repository as repo
from storage.db import transaction
from storage.gc import ORPHAN_GRACE, collect_store, exports_dir, plan_blobs, remove_blobs
from storage.images import image_path, store_pil_image
from storage.models import Image, utcnow
from storage.settings import SettingsError, load_settings

LATER = ORPHAN_GRACE + timedelta(hours=1)


def picture(seed: int) -> PIL.Image.Image:
    return PIL.Image.frombytes("RGB", (16, 16), random.Random(seed).randbytes(16 * 16 * 3))


def stored(factory, settings, *seeds: int) -> list[Image]:
    """Committed images with no task or candidate."""
    with transaction(factory) as session:
        return [store_pil_image(session, image=picture(seed), settings=settings) for seed in seeds]


def in_use(factory, settings, source: Image, candidate: Image) -> None:
    """A task with `source` and one candidate `candidate`."""
    with transaction(factory) as session:
        task = repo.create_task(session, source_image_id=source.id, instruction="tint it", settings=settings)
        repo.add_candidate(session, task_id=task.id, image_id=candidate.id, generator="model-a")


def orphan_file(factory, settings, seed: int):
    """A blob file whose row was rolled back, as a failed transaction leaves it."""
    with factory() as session:
        path = image_path(settings, store_pil_image(session, image=picture(seed), settings=settings))
        session.rollback()
    return path


def image_count(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Image))


def test_orphan_and_unused_blobs_go_referenced_ones_stay(factory, settings):
    source, candidate, unused = stored(factory, settings, 1, 2, 3)
    in_use(factory, settings, source, candidate)
    orphan = orphan_file(factory, settings, 4)
    stray = settings.blob_dir / "notes.txt"  # not named like a blob: not ours to remove
    stray.write_text("keep me")
    report = collect_store(factory, settings, now=utcnow() + LATER)
    assert {(r.kind, r.path) for r in report.removals} == {
        ("orphan image file", orphan),
        ("unused image", image_path(settings, unused)),
    }
    assert report.bytes_freed == sum(r.bytes for r in report.removals) > 0
    assert not orphan.exists() and not image_path(settings, unused).exists()
    assert image_path(settings, source).exists() and image_path(settings, candidate).exists() and stray.exists()
    assert image_count(factory) == 2  # the unused row went with its file


def test_young_orphans_and_unused_rows_are_kept(factory, settings):
    [unused] = stored(factory, settings, 1)
    orphan = orphan_file(factory, settings, 2)
    assert collect_store(factory, settings, now=utcnow() + ORPHAN_GRACE / 2).removals == []
    assert orphan.exists() and image_path(settings, unused).exists() and image_count(factory) == 1


def test_dry_run_removes_nothing_and_reports_what_the_run_removes(factory, settings):
    stored(factory, settings, 1)
    orphan_file(factory, settings, 2)
    temp = settings.blob_dir / "ab" / ".incoming-x.tmp"  # a write killed midway
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"half")
    exports_dir(settings).mkdir(parents=True)
    (exports_dir(settings) / "votes-parquet-old.parquet").write_bytes(b"x" * 100)
    now = utcnow() + timedelta(days=settings.export_retention_days + 1)
    before = sorted(p for p in settings.data_dir.rglob("*"))
    dry = collect_store(factory, settings, dry_run=True, now=now)
    assert sorted(p for p in settings.data_dir.rglob("*")) == before and image_count(factory) == 1
    assert {r.kind for r in dry.removals} == {"orphan image file", "unused image", "temp file", "export"}
    assert "would remove (dry run: nothing was removed)" in dry.lines()[0]
    real = collect_store(factory, settings, now=now)
    assert real.removals == dry.removals and real.lines()[1:] == dry.lines()[1:]
    assert not any(r.path.exists() for r in real.removals) and image_count(factory) == 0
    assert collect_store(factory, settings, now=now).removals == []


def test_old_exports_go_recent_ones_stay_and_zero_keeps_all(factory, settings):
    folder = exports_dir(settings)
    (folder / "tmpscratch").mkdir(parents=True)  # an export killed midway leaves its scratch folder
    (folder / "tmpscratch" / "votes.json").write_text("[]")
    old, new = folder / "votes-trl-old.parquet", folder / "votes-trl-new.parquet"
    old.write_bytes(b"o" * 10)
    new.write_bytes(b"n" * 10)
    week_ago = (utcnow() - timedelta(days=settings.export_retention_days + 1)).timestamp()
    for path in (old, folder / "tmpscratch"):
        os.utime(path, (week_ago, week_ago))
    keep_all = load_settings(environ={}, data_dir=settings.data_dir, export_retention_days=0)
    assert collect_store(factory, keep_all).removals == []
    report = collect_store(factory, settings)
    assert sorted(r.path.name for r in report.removals) == ["tmpscratch", "votes-trl-old.parquet"]
    assert new.exists() and not old.exists() and not (folder / "tmpscratch").exists()


def test_an_image_used_after_planning_is_kept(factory, settings):
    source, candidate = stored(factory, settings, 1, 2)
    now = utcnow() + LATER
    with factory() as session:
        plan = plan_blobs(session, settings, now=now)
    assert sorted(image_id for image_id, _, _ in plan.unused_images) == sorted([source.id, candidate.id])
    in_use(factory, settings, source, candidate)  # a task took them between the plan and the removal
    assert remove_blobs(factory, settings, plan, now=now, lock_wait_s=0) == []
    assert image_path(settings, source).exists() and image_count(factory) == 2


def test_blobs_are_skipped_while_an_upload_holds_the_blob_lock(factory, settings, engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("on SQLite the write lock serialises the collection with every upload")
    stored(factory, settings, 1)
    with factory() as uploading:  # a transaction in the middle of storing images
        store_pil_image(uploading, image=picture(2), settings=settings)
        report = collect_store(factory, settings, now=utcnow() + LATER, lock_wait_s=0)
        uploading.rollback()
    assert report.removals == [] and report.skipped and "image blobs" in report.skipped[0]
    assert collect_store(factory, settings, now=utcnow() + LATER, lock_wait_s=0).skipped == []


def test_a_damaged_blob_of_the_right_size_is_rewritten_on_the_next_store(factory, settings, caplog):
    [image] = stored(factory, settings, 1)
    path = image_path(settings, image)
    good = path.read_bytes()
    path.write_bytes(bytes(len(good)))  # same size, wrong bytes: the old size check trusted this file
    with caplog.at_level(logging.WARNING, logger="storage.images"), transaction(factory) as session:
        assert store_pil_image(session, image=picture(1), settings=settings).id == image.id
    assert path.read_bytes() == good
    assert "is damaged" in caplog.text and str(path) in caplog.text
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_an_intact_blob_is_not_rewritten(factory, settings, caplog):
    [image] = stored(factory, settings, 1)
    before = image_path(settings, image).stat()
    with caplog.at_level(logging.WARNING, logger="storage.images"), transaction(factory) as session:
        store_pil_image(session, image=picture(1), settings=settings)
    after = image_path(settings, image).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and caplog.text == ""


def test_storing_holds_the_shared_blob_lock_on_postgresql(factory, settings, engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    with factory() as session:
        store_pil_image(session, image=picture(1), settings=settings)
        modes = set(
            session.scalars(text("SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"))
        )
        session.rollback()
    assert modes == {"ShareLock"}


@pytest.mark.parametrize(
    ("name", "value", "phrase"),
    [
        ("gc_hour", 24, "JRM_GC_HOUR must be an hour from 0 to 23, or -1"),
        ("gc_hour", -2, "JRM_GC_HOUR"),
        ("keep_versions", -1, "JRM_KEEP_VERSIONS must be >= 0"),
        ("snapshot_retention_days", -1.0, "JRM_SNAPSHOT_RETENTION_DAYS"),
        ("export_retention_days", -0.5, "JRM_EXPORT_RETENTION_DAYS"),
    ],
)
def test_retention_settings_are_checked(tmp_path, name, value, phrase):
    with pytest.raises(SettingsError, match=phrase):
        load_settings(environ={}, data_dir=tmp_path, **{name: value})


def test_retention_settings_come_from_the_environment(tmp_path):
    environ = {"JRM_GC_HOUR": "-1", "JRM_KEEP_VERSIONS": "3", "JRM_SNAPSHOT_RETENTION_DAYS": "0.5"}
    settings = load_settings(environ=environ, data_dir=tmp_path)
    assert (settings.gc_hour, settings.keep_versions, settings.snapshot_retention_days) == (-1, 3, 0.5)
