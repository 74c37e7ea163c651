"""The annotate handlers alone, in process (no Gradio, no HTTP): time and SQL statements per call.

    python bench/annotate_handlers.py --backends sqlite,postgresql --cycles 300 --rounds 3
    python bench/annotate_handlers.py --baseline /tmp/app-base --rounds 3   # another checkout, alternated

Per run: a fresh store (a temporary SQLite file, or a new PostgreSQL schema) with `--tasks` tasks of 6 small
pictures and `ANNOTATORS` password users; after `WARMUP` untimed cycles, `--cycles` cycles of
`app.handlers.annotate.load_pair` (the annotator's held pair, as a page reload or the API's /next_pair) then
`submit_vote` on it (which stores the vote and reserves the next pair), the annotators taking turns, auth on, each
handler given the request Gradio would pass. Reported per call: the mean wall time and the SQL statements sent
(BEGIN and COMMIT aside). Each run is a subprocess of its own on the checkout under test (`--baseline DIR` uses
`DIR/.venv`'s Python when it has one), and with `--baseline` the two alternate run by run (ABBA), so drift in the
machine's load falls on both; the ratios of their medians are the figures to trust.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANNOTATORS = 4
WARMUP = 20
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def measure(backend: str, cycles: int, tasks: int, postgres_url: str) -> dict[str, float]:
    """One run on the checkout that is first on sys.path; returns ms and statements per call."""
    import PIL.Image
    from sqlalchemy import event

    from app.deps import Deps
    from app.handlers.annotate import load_pair, submit_vote
    from storage.db import create_scratch_schema, make_engine, session_factory, transaction, upgrade
    from storage.images import store_pil_image
    from storage.repository import add_candidate, create_task
    from storage.settings import load_settings
    from storage.users import create_user

    folder = Path(tempfile.mkdtemp(prefix="jrm-handlers-"))
    drop = None
    url = f"sqlite:///{folder / 'jrm.db'}"
    if backend == "postgresql":
        url, drop = create_scratch_schema(postgres_url, prefix="bench")
    engine = make_engine(url)
    try:
        upgrade(engine)
        factory = session_factory(engine)
        settings = load_settings(environ={"JRM_AUTH": "1"}, data_dir=folder, database_url=url)
        names = [f"ann{i}" for i in range(ANNOTATORS)]
        rng = random.Random(0)

        def picture() -> PIL.Image.Image:
            return PIL.Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))

        with transaction(factory) as session:
            for index in range(tasks):
                source = store_pil_image(session, image=picture(), settings=settings)
                task = create_task(session, source_image_id=source.id, instruction=f"make it red ({index})",
                                   settings=settings, origin="bench")
                for generator in range(6):
                    image = store_pil_image(session, image=picture(), settings=settings)
                    add_candidate(session, task_id=task.id, image_id=image.id, generator=f"gen-{generator}")
            for name in names:
                create_user(session, name=name, role="annotator", password="bench-password-1")
        deps = Deps(factory=factory, settings=settings)
        # Apps from before the pair token took no `pair_token`; they are called as their page called them.
        with_token = "pair_token" in inspect.signature(submit_vote).parameters
        statements = {"load": 0, "submit": 0}
        current = ["load"]
        event.listen(engine, "before_cursor_execute", lambda *args: statements.__setitem__(
            current[0], statements[current[0]] + 1))
        spent = {"load": 0.0, "submit": 0.0}

        def cycle(i: int, timed: bool) -> None:
            request = types.SimpleNamespace(username=names[i % ANNOTATORS])
            current[0] = "load"
            started = time.perf_counter()
            view = load_pair(deps, request)
            loaded = time.perf_counter()
            current[0] = "submit"
            form = (rng.choice(["left", "right", "tie", "both_bad"]), "kept the background", False, 0, 0, 0)
            submit_vote(deps, view.shown, *form, *((view.token,) if with_token else ()), request)
            if timed:
                spent["load"] += loaded - started
                spent["submit"] += time.perf_counter() - loaded

        for i in range(WARMUP):
            cycle(i, timed=False)
        statements.update(load=0, submit=0)
        for i in range(cycles):
            cycle(i, timed=True)
        return {
            "load_ms": spent["load"] / cycles * 1000,
            "submit_ms": spent["submit"] / cycles * 1000,
            "load_statements": statements["load"] / cycles,
            "submit_statements": statements["submit"] / cycles,
        }
    finally:
        engine.dispose()
        if drop is not None:
            drop()
        shutil.rmtree(folder, ignore_errors=True)


def app_python(root: Path) -> Path:
    own = root / ".venv" / "bin" / "python"
    return own if root != REPO and own.exists() else Path(sys.executable)


def run(root: Path, backend: str, args: argparse.Namespace) -> dict[str, float]:
    """`measure` in a subprocess whose imports come from the checkout `root`."""
    command = [str(app_python(root)), str(Path(__file__).resolve()), "--measure", backend, "--cycles",
               str(args.cycles), "--tasks", str(args.tasks), "--postgres-url", args.postgres_url]
    env = {**os.environ, "JRM_BENCH_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the measurement on {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--postgres-url", default=os.environ.get("JRM_TEST_POSTGRES_URL", POSTGRES_URL))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    args = parser.parse_args(argv)
    if args.measure:
        sys.path.insert(0, os.environ.get("JRM_BENCH_ROOT", str(REPO)))
        print(json.dumps(measure(args.measure, args.cycles, args.tasks, args.postgres_url)))
        return 0
    apps = [("this", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    print(f"Python {sys.version.split()[0]} · {os.cpu_count()} CPUs · load average {os.getloadavg()[0]:.1f} · "
          + ", ".join(f"{name} = {root}" for name, root in apps))
    print("\n| app | backend | round | load_pair ms | submit_vote ms | statements: load_pair | submit_vote |")
    print("|---|---|---:|---:|---:|---:|---:|")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for backend in args.backends.split(","):
        for round_ in range(args.rounds):
            for name, root in apps if round_ % 2 == 0 else apps[::-1]:
                result = run(root, backend, args)
                results.setdefault((name, backend), []).append(result)
                print(f"| {name} | {backend} | {round_ + 1} | {result['load_ms']:.2f} | {result['submit_ms']:.2f} | "
                      f"{result['load_statements']:.1f} | {result['submit_statements']:.1f} |", flush=True)
    if args.baseline:
        print("\nMedians over the rounds, this / baseline:\n")
        print("| backend | load_pair ms | submit_vote ms |")
        print("|---|---:|---:|")
        for backend in args.backends.split(","):
            cells = []
            for key in ("load_ms", "submit_ms"):
                this, base = (statistics.median(r[key] for r in results[(app, backend)])
                              for app in ("this", "baseline"))
                cells.append(f"{this:.2f} / {base:.2f} ({this / base:.2f}×)")
            print(f"| {backend} | " + " | ".join(cells) + " |")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
