"""The retraining worker — scheduled, threshold and on-demand runs, one at a time.

An APScheduler 3 scheduler (blocking for the CLI, background via `start_background_worker` for the app) runs:

- `consume-queue` (every `queue_poll_s`): claim one queued run atomically (`runs_queue.claim_next_run`) and run
  it in a subprocess (`python -m trainer train --run-id N`, through `accelerate launch` when more than one
  training process is configured), output to `<runs_dir>/<id>/train.log`; while it runs, write the heartbeat,
  stop it when the run is cancelled, and record a readable failure (exit code, log tail) if it dies;
- `housekeeping` (every `stale_after_s / 4`): fail runs whose heartbeat expired, queue the first run on a fresh
  install;
- `retrain-threshold` (every `retrain_check_minutes`) and `retrain-schedule` (`retrain_cron`): queue a run.

The two retrain jobs live in the store itself (`SQLAlchemyJobStore`, fixed ids, `replace_existing`), so a restart
replaces them instead of adding copies. The consumer and the housekeeping are per-process (a memory job store):
they carry this worker's identity, and the store's copy would be run by whichever scheduler polls first. Several
workers may share one store: every enqueue they make is idempotent under a queue lock, and every claim is atomic.

Modules: `process` (the training process's command, environment, log and stopping), `supervisor` (`Worker`: claim,
run, heartbeat, cancel, record the end), `scheduler` (the jobs, `start_background_worker`, `run_worker`),
`__main__` (the CLI); the run queue's SQL is `trainer.runs_queue`. See docs/operations.md ("Worker").
"""

from trainer.runs_queue import cancel_run, enqueue_run
from trainer.worker.process import child_environment, describe_exit, log_tail, run_log_path, training_command
from trainer.worker.scheduler import (
    CONSUMER_JOB,
    HOUSEKEEPING_JOB,
    JOBS_TABLE,
    SCHEDULE_JOB,
    THRESHOLD_JOB,
    WorkerHandle,
    build_scheduler,
    run_worker,
    start_background_worker,
)
from trainer.worker.supervisor import Worker

__all__ = [
    "CONSUMER_JOB",
    "HOUSEKEEPING_JOB",
    "JOBS_TABLE",
    "SCHEDULE_JOB",
    "THRESHOLD_JOB",
    "Worker",
    "WorkerHandle",
    "build_scheduler",
    "cancel_run",
    "child_environment",
    "describe_exit",
    "enqueue_run",
    "log_tail",
    "run_log_path",
    "run_worker",
    "start_background_worker",
    "training_command",
]
