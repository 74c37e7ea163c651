"""Time a fresh install's first start: empty store → demo data → the worker's first run → an active version.

    .venv/bin/python bench/first_start.py [--tasks 200] [--keep DIR]

Runs the real commands in a fresh data folder (SQLite, one torch thread, offline): `python -m storage demo
--tasks N` (N defaults to the app's first-run size), then `python -m trainer.worker`, which queues the
"first_run" run by itself and trains it with the default parameters. Prints one table of phases in seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from sqlalchemy import select  # noqa: E402

from storage.db import make_engine, session_factory  # noqa: E402
from storage.demo import DEFAULT_TASKS  # noqa: E402
from storage.models import ModelVersion, TrainingRun  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 3600


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite gives the UTC wall time back naive


def _first_run(factory) -> tuple[TrainingRun | None, ModelVersion | None]:
    with factory() as session:
        run = session.scalars(select(TrainingRun).order_by(TrainingRun.id).limit(1)).first()
        active = session.scalars(select(ModelVersion).where(ModelVersion.status == "active")).first()
        return run, active


def _wait_for_version(factory, worker: subprocess.Popen) -> tuple[TrainingRun, ModelVersion | None, float]:
    started = time.monotonic()
    while time.monotonic() - started < TIMEOUT_S:
        run, active = _first_run(factory)
        if run is not None and run.status in ("succeeded", "failed", "cancelled"):
            return run, active, time.monotonic()
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with {worker.returncode} before the first run ended")
        time.sleep(0.5)
    raise SystemExit(f"no result after {TIMEOUT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="demo tasks (default: the app's)")
    parser.add_argument("--keep", type=Path, help="use (and keep) this data folder instead of a temporary one")
    args = parser.parse_args()
    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="jrm-first-start-"))
    env = {**os.environ, "JRM_DATA_DIR": str(data_dir), "JRM_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("JRM_DATABASE_URL", None)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "storage", "demo", "--tasks", str(args.tasks)], cwd=REPO, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    t1, worker_started = time.monotonic(), datetime.now(UTC)
    with (data_dir / "worker.out").open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "trainer.worker"], cwd=REPO, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    factory = session_factory(make_engine(f"sqlite:///{data_dir / 'jrm.db'}"), read_only=True)
    try:
        run, active, t2 = _wait_for_version(factory, worker)
    finally:
        worker.terminate()
        worker.wait()
    train_s = (run.finished_at - run.started_at).total_seconds() if run.finished_at else float("nan")
    rows = [
        ("demo data (python -m storage demo)", t1 - t0),
        ("worker start → first run queued", (_utc(run.created_at) - worker_started).total_seconds()),
        ("training process (claimed → finished)", train_s),
        ("fresh store → active version", t2 - t0),
    ]
    print(f"first start, {args.tasks} demo tasks, run {run.id} ({run.trigger}) {run.status}, "
          f"{run.step} steps, active: {active.name if active else None}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}")
    for name, seconds in rows:
        print(f"| {name:<40} | {seconds:8.1f} |")
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
