"""The training process: its command line, environment, log, exit status, and how it is stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from storage.settings import Settings, env_name

# (settings, run id, the worker id that claimed it) → the training process's argv; the id travels so the process
# trains the run as its claimer (`trainer.runs_queue.claim_run`) and refuses it if it was taken meanwhile.
Command = Callable[[Settings, int, str], list[str]]

TERMINATE_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
LOG_TAIL_LINES, LOG_TAIL_BYTES = 25, 4000
LOG_NAME = "train.log"

# Sets PR_SET_PDEATHSIG (SIGKILL) and then execs the training command, so `kill -9` of the worker also ends its
# training process (no orphan keeps training or heartbeating). It runs in the child, not as a `preexec_fn`, which
# is unsafe in a process with threads. If the worker died before prctl took effect, getppid() shows it.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the worker exited before its training process started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def process_count(settings: Settings) -> int:
    """Training processes per run: `train_processes`, or one per visible GPU (one on CPU)."""
    if settings.train_processes:
        return settings.train_processes
    import torch  # lazy: only deciding how to launch needs it

    return max(torch.cuda.device_count(), 1)


def training_command(settings: Settings, run_id: int, worker_id: str | None = None) -> list[str]:
    """`python -m trainer train --run-id N --worker-id W`, under `accelerate launch --num_processes K` when K > 1."""
    train = ["trainer", "train", "--run-id", str(run_id), *(["--worker-id", worker_id] if worker_id else [])]
    processes = process_count(settings)
    if processes > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "-m", *train]
    return [sys.executable, "-m", *train]


def run_log_path(settings: Settings, run_id: int) -> Path:
    """`<runs_dir>/<run id>/train.log`, beside the run's snapshot (`trainer.pipeline.run_folder`)."""
    # Not taken from the pipeline: importing it loads torch and transformers, which the worker process itself never
    # needs (a test checks that both name the same folder).
    return settings.runs_dir / str(run_id) / LOG_NAME


def child_environment(settings: Settings) -> dict[str, str]:
    """This process's environment plus every setting as its `JRM_*` variable (the child sees the same config)."""
    # The database URL travels here rather than as `--database`, so a password never shows in the process list.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is not None:  # None is every optional setting's default: leave the variable unset
            env[env_name(f.name)] = str(value.resolve()) if isinstance(value, Path) else str(value)
    env[env_name("database_url")] = settings.resolved_database_url
    return env


def with_parent_death(command: list[str]) -> list[str]:
    """`command`, started through `_DIE_WITH_PARENT` on Linux (elsewhere unchanged)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), command[0], *command[1:]]


def describe_exit(returncode: int) -> str:
    """A readable exit status: "exited with code 1", "was killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def log_tail(path: Path, *, lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last `lines` lines of a log (at most `max_bytes`), or a note when it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - max_bytes, 0))
            data = f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    # Progress bars rewrite one line with carriage returns; keep the last state of each.
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in data.rstrip("\n").split("\n")[-lines:])


def exited(child: subprocess.Popen, *, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the child; whether it has exited."""
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop_process_group(child: subprocess.Popen, *, grace_s: float = TERMINATE_GRACE_S) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace_s`, and reap the child."""
    signal_group(child, signal.SIGTERM)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(child, signal.SIGKILL)
        child.wait()
    signal_group(child, signal.SIGKILL)  # whatever the child left behind in its group


def signal_group(child: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(child.pid, sig)
