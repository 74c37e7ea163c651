"""Benchmark the vote path: record_vote throughput and next_pair latency at 10k / 100k / 1M stored votes.

    python bench/storage.py --backends sqlite,postgresql --sizes 10000,100000,1000000

    python bench/storage.py --import-rows 10000      # the import benchmark instead (SQLite)

Each (backend, size) gets its own fresh store (a temporary SQLite file, or a new PostgreSQL schema), migrated
with Alembic, seeded with bulk inserts (executemany on SQLite, COPY on PostgreSQL) that keep `pairs.vote_count`
and `pairs.filled` consistent with the seeded votes and done assignments, then measured through the real
repository functions, then dropped. Prints one table, with p95 ratios against the smallest size.

`--import-rows N` measures `import editreward` of N generated rows instead: the per-row path as it was at
`--baseline-rev` (its storage/importers.py read from git, so the old code needs no copy here) against the bulk path
of the working tree, each into a fresh SQLite store and blob folder, while a thread records one anonymous vote
every 20 ms in its own transaction (the app's 30 s busy timeout); the same votes on an idle store are the baseline.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import sqlalchemy  # noqa: E402
from sqlalchemy import Engine, select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from storage import annotation_queue  # noqa: E402
from storage import repository as repo  # noqa: E402
from storage.db import create_scratch_schema, make_engine, session_factory, transaction, upgrade  # noqa: E402
from storage.models import Base, Pair, User  # noqa: E402
from storage.settings import Settings, load_settings  # noqa: E402

CANDIDATES_PER_TASK = 4  # → 6 pairs per task
PAIR_OFFSETS = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]  # the order add_candidate creates them in
CHOICES = ("left", "right", "tie", "both_bad")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Layout:
    """Row counts for a store holding `votes` votes; every id is a function of its position (1-based)."""

    votes: int
    annotators: int
    k: int
    pair_fill: list[int]  # seeded votes per pair (index = pair id - 1): k (full), 1 (half) or 0 (open)

    @property
    def tasks(self) -> int:
        return len(self.pair_fill) // len(PAIR_OFFSETS)

    @classmethod
    def for_votes(cls, votes: int, annotators: int, k: int, open_pairs_min: int) -> Layout:
        half = votes // 20  # 5% of votes sit on pairs that wait for their second vote
        full, rest = divmod(votes - half, k)
        half += rest
        open_ = max(votes // 10, open_pairs_min)
        fill = [k] * full + [1] * half + [0] * open_
        fill += [0] * (-len(fill) % len(PAIR_OFFSETS))  # whole tasks
        random.Random(0).shuffle(fill)  # full, half and open pairs interleaved, as after real annotation
        return cls(votes=votes, annotators=annotators, k=k, pair_fill=fill)


# ------------------------------------------------------------------------------------------------ seed rows


VOTES_PER_DAY = 2000  # seeded votes are spread over days, for realistic created_at indexes and statistics


# Columns of each seeded table, in foreign-key order.
SEED_COLUMNS = {
    "images": "id sha256 width height format byte_size created_at".split(),
    "users": "id name role password_hash active created_at".split(),
    "tasks": "id source_image_id instruction category origin external_id created_at".split(),
    "candidates": "id task_id image_id generator extra created_at".split(),
    "pairs": "id task_id candidate_a_id candidate_b_id vote_count filled priority".split(),
    "votes": (
        "id task_id pair_id left_candidate_id right_candidate_id choice rationale dimension_scores annotator_id "
        "time_spent_ms client_submission_id origin created_at"
    ).split(),
    "assignments": "id pair_id annotator_id status created_at expires_at swapped".split(),
}


class SeedRows:
    """Row generators for every table of a `Layout`; `stamp(day, minute)` formats a datetime for the backend."""

    def __init__(self, layout: Layout, stamp: Callable[[int, int], str]) -> None:
        self.layout, self.stamp, self.epoch = layout, stamp, stamp(0, 0)

    def tables(self) -> dict[str, tuple[list[str], Callable]]:
        """table → (columns, generator function), in foreign-key order."""
        return {table: (columns, getattr(self, table)) for table, columns in SEED_COLUMNS.items()}

    def images(self):
        for i in range(1, self.layout.tasks * (CANDIDATES_PER_TASK + 1) + 1):
            yield i, f"{i:064x}", 512, 512, "png", 100_000, self.epoch

    def users(self):
        for u in range(1, self.layout.annotators + 1):
            yield u, f"annotator-{u}", "annotator", None, True, self.epoch

    def tasks(self):
        for t in range(1, self.layout.tasks + 1):
            source = (t - 1) * (CANDIDATES_PER_TASK + 1) + 1
            yield t, source, f"edit instruction {t}: make the sky purple", None, "bench", None, self.epoch

    def candidates(self):
        for t in range(1, self.layout.tasks + 1):
            for c in range(CANDIDATES_PER_TASK):
                image = (t - 1) * (CANDIDATES_PER_TASK + 1) + 2 + c
                yield (t - 1) * CANDIDATES_PER_TASK + c + 1, t, image, f"model-{c}", None, self.epoch

    def pairs(self):
        for p, filled in enumerate(self.layout.pair_fill, start=1):
            yield p, _pair_task(p), *_pair_candidates(p), filled, filled, 0.0

    def _votes(self):
        vote_id = 0
        for p, filled in enumerate(self.layout.pair_fill, start=1):
            for j in range(filled):
                vote_id += 1
                yield vote_id, p, (p + j) % self.layout.annotators + 1  # distinct annotators on one pair

    def votes(self):
        for vote_id, p, annotator in self._votes():
            rationale = "kept the background" if vote_id % 3 else None
            yield (
                vote_id,
                _pair_task(p),
                p,
                *_pair_candidates(p),
                CHOICES[vote_id % 4],
                rationale,
                None,
                annotator,
                4000,
                f"seed-{vote_id}",
                "bench",
                self.stamp(vote_id // VOTES_PER_DAY, 0),
            )

    def assignments(self):
        for vote_id, p, annotator in self._votes():
            day = vote_id // VOTES_PER_DAY
            yield vote_id, p, annotator, "done", self.stamp(day, 0), self.stamp(day, 10), vote_id % 2 == 1


def stamp_formatter(backend: str) -> Callable[[int, int], str]:
    """Datetime text as each backend stores it: SQLAlchemy's SQLite format (UTC wall time), or with +00."""
    suffix = "" if backend == "sqlite" else "+00"

    @functools.cache
    def stamp(day: int, minute: int) -> str:
        return (EPOCH + timedelta(days=day, minutes=minute)).strftime("%Y-%m-%d %H:%M:%S.%f") + suffix

    return stamp


def _pair_task(pair_id: int) -> int:
    return (pair_id - 1) // len(PAIR_OFFSETS) + 1


def _pair_candidates(pair_id: int) -> tuple[int, int]:
    task_index, offset = divmod(pair_id - 1, len(PAIR_OFFSETS))
    first = task_index * CANDIDATES_PER_TASK + 1
    low, high = PAIR_OFFSETS[offset]
    return first + low, first + high


# ------------------------------------------------------------------------------------------------ backends


class Store:
    """A fresh, migrated store on one backend, with a bulk loader; `close()` drops it."""

    def __init__(self, backend: str, postgres_url: str) -> None:
        self.backend = backend
        if backend == "sqlite":
            self._folder = Path(tempfile.mkdtemp(prefix="jrm-bench-"))
            url = f"sqlite:///{self._folder / 'bench.db'}"
        else:
            url, self._drop_schema = create_scratch_schema(postgres_url, prefix="bench")
        self.engine: Engine = make_engine(url)
        upgrade(self.engine)

    def load(self, rows: dict[str, tuple[list[str], Callable]]) -> None:
        """Bulk-insert `rows`; secondary indexes are dropped first and rebuilt after (a sort beats row-by-row)."""
        indexes = [index for table in Base.metadata.sorted_tables for index in table.indexes]
        with self.engine.begin() as conn:
            for index in indexes:
                index.drop(conn)
        raw = self.engine.raw_connection()
        try:
            if self.backend == "sqlite":
                _load_sqlite(raw.driver_connection, rows)
            else:
                _load_postgres(raw.driver_connection, rows)
        finally:
            raw.close()
        with self.engine.begin() as conn:
            for index in indexes:
                index.create(conn)
        if self.backend == "postgresql":
            # What autovacuum does soon after a bulk load: statistics for the planner, and the visibility map
            # that lets index-only scans skip the heap. Without it the plans would be guesses.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")

    def close(self) -> None:
        self.engine.dispose()
        if self.backend == "sqlite":
            shutil.rmtree(self._folder, ignore_errors=True)
        else:
            self._drop_schema()


# Both loaders skip foreign-key checks: the generated rows are consistent by construction, and checking each
# row's references costs more than writing it.


def _load_sqlite(conn, rows) -> None:
    conn.execute("PRAGMA foreign_keys=OFF")  # only takes effect outside a transaction
    conn.execute("BEGIN IMMEDIATE")
    for table, (columns, generate) in rows.items():
        marks = ", ".join("?" * len(columns))
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", generate())
    conn.execute("COMMIT")
    conn.execute("PRAGMA foreign_keys=ON")


def _load_postgres(conn, rows) -> None:
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")  # no FK triggers (needs a superuser)
        for table, (columns, generate) in rows.items():
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in generate():
                    copy.write_row(row)
            # Explicit ids were copied in: move the id sequence past them.
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
            )


# ----------------------------------------------------------------------------------------------- measuring


@dataclass
class Subject:
    """One seeded store under measurement, and what was measured on it."""

    votes: int
    layout: Layout
    store: Store
    factory: sessionmaker[Session]
    seed_s: float
    next_pair_ms: list[float] = field(default_factory=list)
    vote_s: float = 0.0
    votes_recorded: int = 0


def seed_subject(backend: str, votes: int, args: argparse.Namespace, settings: Settings) -> Subject:
    layout = Layout.for_votes(
        votes, args.annotators, settings.overlap_target, open_pairs_min=2 * (args.vote_samples + args.next_samples)
    )
    store = Store(backend, args.postgres_url)
    started = time.perf_counter()
    store.load(SeedRows(layout, stamp_formatter(backend)).tables())
    seed_s = time.perf_counter() - started
    print(f"# {backend}: seeded {votes:,} votes in {seed_s:.1f} s", file=sys.stderr, flush=True)
    return Subject(votes, layout, store, session_factory(store.engine), seed_s)


def time_next_pair(subject: Subject, settings: Settings, rng: random.Random, tag: str) -> float:
    """One next_pair call in its own transaction (commit included), then an untimed vote on it; ms."""
    annotator = rng.randrange(1, subject.layout.annotators + 1)
    started = time.perf_counter()
    with transaction(subject.factory) as session:
        shown = annotation_queue.next_pair(session, annotator_id=annotator, settings=settings, rng=rng)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert shown is not None, "the seeded store ran out of open pairs"
    with transaction(subject.factory) as session:  # answer it, as an annotator would
        repo.record_vote(
            session,
            task_id=shown.task_id,
            left_candidate_id=shown.left_candidate_id,
            right_candidate_id=shown.right_candidate_id,
            choice="left",
            annotator_id=annotator,
            client_submission_id=tag,
            settings=settings,
        )
    return elapsed_ms


def vote_batches(subject: Subject, count: int, batch: int) -> list[list[dict]]:
    """record_vote arguments for `count` votes by 10 fresh annotators on open pairs, in transactions of `batch`."""
    with transaction(subject.factory) as session:
        open_pairs = session.execute(
            select(Pair.task_id, Pair.candidate_a_id, Pair.candidate_b_id).where(Pair.filled == 0).limit(count)
        ).all()
        users = [User(name=f"bench-voter-{i}", role="annotator") for i in range(10)]
        session.add_all(users)
        session.flush()
        voters = [user.id for user in users]
    calls = [
        dict(
            task_id=task_id,
            left_candidate_id=b,
            right_candidate_id=a,
            choice=CHOICES[i % 4],
            rationale="B kept the background",
            annotator_id=voters[i % 10],
            client_submission_id=f"bench-{i}",
            time_spent_ms=4200,
        )
        for i, (task_id, a, b) in enumerate(open_pairs)
    ]
    return [calls[start : start + batch] for start in range(0, len(calls), batch)]


def measure(subjects: list[Subject], settings: Settings, args: argparse.Namespace) -> None:
    """Interleave the sizes call by call, so the machine's noise falls on all of them alike."""
    rng = random.Random(0)
    for i in range(args.next_samples + args.warmup):
        for subject in subjects:
            elapsed = time_next_pair(subject, settings, rng, f"next-{i}")
            if i >= args.warmup:
                subject.next_pair_ms.append(elapsed)
    batches = {id(subject): vote_batches(subject, args.vote_samples, args.batch) for subject in subjects}
    for index in range(max(map(len, batches.values()))):
        for subject in subjects:
            calls = batches[id(subject)][index]
            started = time.perf_counter()
            with transaction(subject.factory) as session:
                for call in calls:
                    repo.record_vote(session, settings=settings, **call)
            subject.vote_s += time.perf_counter() - started
            subject.votes_recorded += len(calls)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def print_table(backend: str, subjects: list[Subject], batch: int) -> None:
    base = subjects[0]
    print(f"\n{backend} (record_vote: {batch} votes per transaction; next_pair: one call per transaction)")
    print(
        "| votes stored | seed s | record_vote votes/s | next_pair p50 ms | next_pair p95 ms | p95 / p95 at "
        f"{base.votes:,} |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for s in subjects:
        print(
            f"| {s.votes:,} | {s.seed_s:.1f} | {s.votes_recorded / s.vote_s:.0f} | "
            f"{statistics.median(s.next_pair_ms):.2f} | {p95(s.next_pair_ms):.2f} | "
            f"{p95(s.next_pair_ms) / p95(base.next_pair_ms):.2f}x |"
        )


# ------------------------------------------------------------------------------------------------ imports


def editreward_fixture(folder: Path, rows: int) -> tuple[Path, Path]:
    """`rows` EditReward records (4 candidates, so 6 pairs, per task) and their 64x64 noise PNGs, all distinct."""
    import json

    import PIL.Image

    images_root, records = folder / "images", []
    for t in range(-(-rows // len(PAIR_OFFSETS))):
        (images_root / str(t)).mkdir(parents=True)
        for name in ("src", *(f"m{c}" for c in range(CANDIDATES_PER_TASK))):
            PIL.Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(images_root / str(t) / f"{name}.png")
        for a, b in PAIR_OFFSETS:
            records.append({"prompt": f"edit {t}: make the sky purple", "path_src": f"{t}/src.png",
                            "path1": f"{t}/m{a}.png", "path2": f"{t}/m{b}.png", "model1": f"m{a}",
                            "model2": f"m{b}", "tie_case": len(records) % 5 == 0})
    path = folder / "train.json"
    path.write_text(json.dumps(records[:rows]), encoding="utf-8")
    return path, images_root


def baseline_importers(revision: str) -> types.ModuleType:
    """storage/importers.py as committed at `revision`, loaded as a module beside the current one."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{revision}:storage/importers.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("storage.importers_baseline")
    module.__file__ = f"{revision}:storage/importers.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up while they are built
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own committed code
    return module


@dataclass
class VoteClock:
    """Records anonymous votes on one pair, one per transaction, every 20 ms, until stopped; latencies in ms."""

    factory: sessionmaker[Session]
    settings: Settings
    pair: tuple[int, int, int]  # task, left candidate, right candidate
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, count: int | None = None) -> None:
        while not self.stop.is_set() and (count is None or len(self.latencies_ms) < count):
            started = time.perf_counter()
            try:
                with transaction(self.factory) as session:
                    repo.record_vote(session, task_id=self.pair[0], left_candidate_id=self.pair[1],
                                     right_candidate_id=self.pair[2], choice="left",
                                     client_submission_id=uuid.uuid4().hex, settings=self.settings)
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
            except sqlalchemy.exc.OperationalError:  # "database is locked" after the busy timeout
                self.failures += 1
            time.sleep(0.02)


def _vote_target(factory: sessionmaker[Session], settings: Settings) -> tuple[int, int, int]:
    from storage.models import Image

    with transaction(factory) as session:
        images = [Image(sha256=uuid.uuid4().hex * 2, width=64, height=64, format="png", byte_size=1)
                  for _ in range(3)]
        session.add_all(images)
        session.flush()
        task = repo.create_task(session, source_image_id=images[0].id, instruction="bench", settings=settings)
        left, right = (repo.add_candidate(session, task_id=task.id, image_id=i.id, generator=f"g{i.id}")
                       for i in images[1:])
        return task.id, left.id, right.id


def time_import(importers: types.ModuleType, json_path: Path, images_root: Path, votes: int) -> dict:
    """One import into a fresh store and blob folder, with the vote clock running; then the idle clock."""
    from storage import importers as current

    store, data = Store("sqlite", ""), Path(tempfile.mkdtemp(prefix="jrm-bench-data-"))
    try:
        settings = load_settings(environ={}, data_dir=data)
        factory = session_factory(store.engine)
        clock = VoteClock(factory, settings, _vote_target(factory, settings))
        thread = threading.Thread(target=clock.run)
        transaction_s = _time_transactions(importers, current)
        thread.start()
        started = time.perf_counter()
        with transaction(factory) as session:
            summary = importers.import_editreward(session, path=json_path, images_root=images_root, settings=settings)
        import_s = time.perf_counter() - started
        clock.stop.set()
        thread.join()
        idle = VoteClock(factory, settings, clock.pair)
        idle.run(count=votes)
        return {"summary": summary, "import_s": import_s, "transaction_s": transaction_s.get("s", import_s),
                "busy": clock, "idle": idle}
    finally:
        store.close()
        shutil.rmtree(data, ignore_errors=True)


def _time_transactions(importers: types.ModuleType, current: types.ModuleType) -> dict:
    """For the bulk path, time its database phase (`write_plan`); the per-row path is all one transaction."""
    timing: dict = {}
    if importers is current:
        write_plan = current.write_plan

        def timed(session, plan):
            started = time.perf_counter()
            try:
                return write_plan(session, plan)
            finally:
                timing["s"] = time.perf_counter() - started
                current.write_plan = write_plan

        current.write_plan = timed
    return timing


def import_benchmark(args: argparse.Namespace) -> None:
    """Old and new import paths side by side on the same generated file; prints one table."""
    from storage import importers as current

    folder = Path(tempfile.mkdtemp(prefix="jrm-bench-import-"))
    try:
        json_path, images_root = editreward_fixture(folder, args.import_rows)
        print(f"# {args.import_rows:,} EditReward rows, {len(list(images_root.rglob('*.png'))):,} images "
              f"(64x64 PNG); SQLite {sqlite3_version()}", flush=True)
        results = {f"per-row ({args.baseline_rev})": time_import(baseline_importers(args.baseline_rev), json_path,
                                                                 images_root, args.idle_votes),
                   "bulk (this tree)": time_import(current, json_path, images_root, args.idle_votes)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print_import_table(results)


def sqlite3_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def print_import_table(results: dict[str, dict]) -> None:
    base = next(iter(results.values()))["import_s"]
    print("\n| path | rows | new votes | import s | rows/s | speed-up | write transaction s | votes during import "
          "| vote p50 ms | vote p95 ms | vote max ms | votes failed | idle vote p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        busy, idle, summary = r["busy"].latencies_ms or [0.0], r["idle"].latencies_ms, r["summary"]
        print(f"| {name} | {summary.rows:,} | {summary.votes:,} | {r['import_s']:.1f} | "
              f"{summary.rows / r['import_s']:.0f} | {base / r['import_s']:.1f}x | {r['transaction_s']:.2f} | "
              f"{len(r['busy'].latencies_ms)} | "
              f"{statistics.median(busy):.1f} | {_p95_or_max(busy):.1f} | {max(busy):.0f} | {r['busy'].failures} | "
              f"{_p95_or_max(idle):.1f} |")


def _p95_or_max(values: list[float]) -> float:
    """Nearest-rank p95: never above the largest value, also for the few votes that get through a long lock."""
    return sorted(values)[max(0, -(-len(values) * 95 // 100) - 1)]


def main(argv: list[str] | None = None) -> None:
    """Parse flags; per backend seed every size, measure them interleaved, print the table, drop the stores."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="stored votes, comma-separated")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--annotators", type=int, default=100, help="annotators who cast the seeded votes")
    parser.add_argument("--vote-samples", type=int, default=2000, help="votes recorded for the throughput")
    parser.add_argument("--batch", type=int, default=100, help="record_vote calls per transaction")
    parser.add_argument("--next-samples", type=int, default=500, help="next_pair calls timed per size")
    parser.add_argument("--warmup", type=int, default=20, help="next_pair calls per size before timing")
    parser.add_argument("--import-rows", type=int, help="run the import benchmark with this many EditReward rows")
    parser.add_argument("--baseline-rev", default="df8c586", help="git revision whose per-row importer is the baseline")
    parser.add_argument("--idle-votes", type=int, default=100, help="votes timed on the idle store after an import")
    args = parser.parse_args(argv)
    if args.import_rows:
        import_benchmark(args)
        return
    settings = load_settings(environ={}, data_dir=Path(tempfile.gettempdir()) / "jrm-bench-unused")
    sizes = sorted(int(size) for size in args.sizes.split(","))
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, {args.annotators} annotators, k={settings.overlap_target}, "
        f"{args.next_samples} next_pair calls and {args.vote_samples} votes per size"
    )
    for backend in (b.strip() for b in args.backends.split(",")):
        subjects: list[Subject] = []
        try:
            for size in sizes:
                subjects.append(seed_subject(backend, size, args, settings))
            measure(subjects, settings, args)
            print_table(backend, subjects, args.batch)
        finally:
            for subject in subjects:
                subject.store.close()


if __name__ == "__main__":
    main()
