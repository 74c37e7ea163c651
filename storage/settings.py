"""Every `JRM_*` environment variable is read here and nowhere else.

The store is the bottom layer that the trainer and the app both import, so their settings live here too;
each field carries its help text, which the README's configuration table mirrors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

SCORER_DTYPES = ("auto", "float32", "bfloat16", "float16")
SEED_DEMO_MODES = ("auto", "yes", "no")
SAMPLING_MODES = ("coverage", "active")
VOTE_PROVENANCES = ("human", "demo", "import")  # storage.models.PROVENANCES (this module imports nothing of ours)
REWARD_TOKEN_MIN_CHARS = 16


class SettingsError(ValueError):
    """A `JRM_*` value that cannot be used; the message names the variable and what to change."""


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class Settings:
    """Run-time configuration, built from the environment by `load_settings()`."""

    data_dir: Path = _help("Folder for the SQLite file, image blobs, the model registry and run logs.",
                           default=Path("./data"))
    database_url: str = _help("SQLAlchemy URL; default is SQLite at $JRM_DATA_DIR/jrm.db.", default="")
    max_upload_mb: float = _help("Largest accepted image file, in MB.", default=20.0)
    max_pixels: int = _help("Largest accepted image area (width × height), checked before decoding.",
                            default=40_000_000)
    min_image_side: int = _help("Smallest accepted width or height, in pixels.", default=8)
    instruction_max_chars: int = _help("Longest accepted edit instruction.", default=2000)
    rationale_min_chars: int = _help("Shortest rationale the annotate tab accepts (0: optional).", default=0)
    rationale_max_chars: int = _help("Longest accepted rationale.", default=4000)
    overlap_target: int = _help("Votes wanted per pair (k), from different annotators, for agreement.",
                                default=2)
    assignment_ttl_s: int = _help("Seconds a pair stays reserved for the annotator it was shown to.",
                                  default=600)
    torch_threads: int = _help("torch intra-op threads in the worker, the scorer and the tests.", default=1)
    scorer_dtype: str = _help("dtype of the scorer's backbone: auto (bfloat16 on CUDA, float32 on CPU), float32, "
                              "bfloat16 or float16; the reward head stays float32.", default="auto")
    retrain_min_votes: int = _help("New training votes (held-out tasks excluded) since the last successful run "
                                   "that queue a retrain.", default=50)
    retrain_check_minutes: float = _help("Minutes between the worker's retrain-threshold checks (0: no check).",
                                         default=10.0)
    retrain_cron: str = _help("Crontab line for scheduled retrains in the worker's time zone, e.g. '0 3 * * *' "
                              "(empty: none).", default="")
    queue_poll_s: float = _help("Seconds between the worker's looks for a queued run.", default=5.0)
    heartbeat_s: float = _help("Seconds between heartbeats the worker writes while a run trains.", default=5.0)
    stale_after_s: float = _help("A running run whose heartbeat is older than this is marked failed (dead worker).",
                                 default=60.0)
    train_processes: int = _help("Training processes per run: 0 = one per visible GPU (one on CPU); "
                                 ">1 runs `accelerate launch --num_processes N`.", default=0)
    gc_hour: int = _help("Hour (0-23, the worker's time zone) of the worker's daily garbage collection "
                         "(`python -m trainer gc`); -1: off.", default=4)
    keep_versions: int = _help("Model versions whose files the garbage collection keeps, newest first, besides the "
                               "active, the previous and pinned ones (0: keep every version's files).", default=10)
    snapshot_retention_days: float = _help("Days a finished run's vote snapshot is kept; those of the active, "
                                           "previous and pinned versions' runs stay (0: keep all).", default=30.0)
    export_retention_days: float = _help("Days an export under $JRM_DATA_DIR/exports (the Research tab's downloads) "
                                         "is kept (0: keep all).", default=7.0)
    host: str = _help("Interface the web app binds to; an address other than loopback needs JRM_AUTH=1.",
                      default="127.0.0.1")
    port: int = _help("TCP port of the web app.", default=7860)
    auth: bool = _help("1: log in with the store's users (roles enforced); 0: one local admin, loopback only.",
                       default=False)
    reveal_scores_after_vote: bool = _help("Show annotators the active scorer's scores of a pair after they vote.",
                                           default=True)
    first_run_max_steps: int = _help("Optimizer steps of the first run on a fresh install, so the app gets a scorer "
                                     "within minutes (0: the training defaults).", default=150)
    demo_tasks: int = _help("Demo tasks the app seeds into an empty store on its first start (0: none).",
                            default=200)
    seed_demo: str = _help("Seed the demo dataset into an empty store: auto (only in local mode: no log-in and a "
                           "SQLite file), yes, or no.", default="auto")
    train_provenances: str = _help("Comma-separated vote provenances that train, rank the leaderboard and count "
                                   "for agreement (human, import, demo); empty: human + import, plus demo only in "
                                   "a store whose votes are all demo.", default="")
    exclude_flagged: bool = _help("Leave out the votes of annotators the quality check flagged (until a researcher "
                                  "clears the flag).", default=True)
    daily_vote_cap: int = _help("Most votes one annotator may cast per UTC day (0: no cap); a user's own cap "
                                "(`storage users cap`) wins.", default=0)
    leaderboard_refresh_s: float = _help("Seconds between the worker's checks whether the leaderboard must be "
                                         "recomputed (new votes, another active version).", default=60.0)
    sampling: str = _help("Next-pair order: coverage (fewest votes first, uncertainty breaks ties) or active "
                          "(the priority mix alone).", default="coverage")
    sampling_coverage_weight: float = _help("Weight of coverage (few votes) in the pair priority.", default=1.0)
    sampling_uncertainty_weight: float = _help("Weight of the active scorer's uncertainty in the pair priority (0 by "
                                               "default: it did not pay in bench/active_learning.py).", default=0.0)
    sampling_disagreement_weight: float = _help("Weight of disagreement among earlier votes in the pair priority.",
                                                default=0.5)
    reward_host: str = _help("Interface the reward server (`python -m app.rewards`) binds to; an address other "
                             "than loopback needs JRM_REWARD_TOKEN.", default="127.0.0.1")
    reward_port: int = _help("TCP port of the reward server.", default=8008)
    reward_token: str = _help("Bearer token the reward server requires (empty: none, loopback only); at least "
                              f"{REWARD_TOKEN_MIN_CHARS} characters.", default="", repr=False)
    reward_max_batch: int = _help("Most (source, edited) items per model forward in the reward server.", default=32)
    reward_batch_wait_ms: float = _help("Milliseconds the reward server waits for more items after the first of a "
                                        "batch.", default=10.0)
    reward_max_queue: int = _help("Items the reward server queues before it answers 429 (retry later).",
                                  default=1024)
    reward_max_items: int = _help("Most items in one reward request.", default=256)
    reward_max_body_mb: float = _help("Largest reward request body, in MB.", default=256.0)
    reward_max_request_megapixels: float = _help("Most decoded megapixels of distinct images in one reward "
                                                 "request.", default=512.0)

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0:
            raise SettingsError("JRM_MAX_UPLOAD_MB must be > 0 (a size in megabytes, e.g. 20).")
        if self.max_pixels < self.min_image_side**2:
            raise SettingsError("JRM_MAX_PIXELS must be at least JRM_MIN_IMAGE_SIDE squared.")
        if self.min_image_side < 1:
            raise SettingsError("JRM_MIN_IMAGE_SIDE must be >= 1.")
        if not 0 <= self.rationale_min_chars <= self.rationale_max_chars:
            raise SettingsError("Need 0 <= JRM_RATIONALE_MIN_CHARS <= JRM_RATIONALE_MAX_CHARS.")
        if self.instruction_max_chars < 1:
            raise SettingsError("JRM_INSTRUCTION_MAX_CHARS must be >= 1.")
        if self.overlap_target < 1:
            raise SettingsError("JRM_OVERLAP_TARGET must be >= 1 (votes wanted per pair).")
        if self.assignment_ttl_s < 1:
            raise SettingsError("JRM_ASSIGNMENT_TTL_S must be >= 1 second.")
        if self.torch_threads < 1:
            raise SettingsError("JRM_TORCH_THREADS must be >= 1.")
        if self.scorer_dtype not in SCORER_DTYPES:
            raise SettingsError(f"JRM_SCORER_DTYPE={self.scorer_dtype!r} is not one of {', '.join(SCORER_DTYPES)} "
                                "(auto: bfloat16 on CUDA, float32 on CPU).")
        self._check_worker()
        self._check_retention()
        self._check_app()
        self._check_rewards()

    def _check_app(self) -> None:
        if not self.host.strip():
            raise SettingsError("JRM_HOST is empty; use 127.0.0.1 (this machine only) or an interface address.")
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"JRM_PORT must be a TCP port from 1 to 65535, got {self.port}.")
        if self.first_run_max_steps < 0:
            raise SettingsError("JRM_FIRST_RUN_MAX_STEPS must be >= 0 (0: the training defaults).")
        if self.demo_tasks < 0:
            raise SettingsError("JRM_DEMO_TASKS must be >= 0 (0: do not seed demo data).")
        if self.seed_demo not in SEED_DEMO_MODES:
            raise SettingsError(f"JRM_SEED_DEMO={self.seed_demo!r} is not one of {', '.join(SEED_DEMO_MODES)}.")
        self._check_votes()

    def _check_votes(self) -> None:
        unknown = set(self.train_provenance_list) - set(VOTE_PROVENANCES)
        if unknown:
            raise SettingsError(f"JRM_TRAIN_PROVENANCES names {', '.join(sorted(unknown))}; use a comma-separated "
                                f"list of {', '.join(VOTE_PROVENANCES)} (empty: the default).")
        if self.leaderboard_refresh_s <= 0:
            raise SettingsError("JRM_LEADERBOARD_REFRESH_S must be > 0 seconds.")
        if self.daily_vote_cap < 0:
            raise SettingsError("JRM_DAILY_VOTE_CAP must be >= 0 (0: no cap).")
        if self.sampling not in SAMPLING_MODES:
            raise SettingsError(f"JRM_SAMPLING={self.sampling!r} is not one of {', '.join(SAMPLING_MODES)}.")
        weights = (self.sampling_coverage_weight, self.sampling_uncertainty_weight, self.sampling_disagreement_weight)
        if not all(w >= 0 for w in weights) or not any(w > 0 for w in weights):
            raise SettingsError("The JRM_SAMPLING_*_WEIGHT values must be >= 0 and not all 0.")

    def _check_rewards(self) -> None:
        if not self.reward_host.strip():
            raise SettingsError("JRM_REWARD_HOST is empty; use 127.0.0.1 (this machine only) or an interface address.")
        if not 1 <= self.reward_port <= 65535:
            raise SettingsError(f"JRM_REWARD_PORT must be a TCP port from 1 to 65535, got {self.reward_port}.")
        if self.reward_token and len(self.reward_token) < REWARD_TOKEN_MIN_CHARS:
            raise SettingsError(f"JRM_REWARD_TOKEN is shorter than {REWARD_TOKEN_MIN_CHARS} characters; use a random "
                                "one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
        if self.reward_max_batch < 1 or self.reward_batch_wait_ms < 0:
            raise SettingsError("JRM_REWARD_MAX_BATCH must be >= 1 and JRM_REWARD_BATCH_WAIT_MS >= 0.")
        if not 1 <= self.reward_max_items <= self.reward_max_queue:
            raise SettingsError("Need 1 <= JRM_REWARD_MAX_ITEMS <= JRM_REWARD_MAX_QUEUE (a request must fit in the "
                                "queue).")
        if self.reward_max_body_mb <= 0 or self.reward_max_request_megapixels <= 0:
            raise SettingsError("JRM_REWARD_MAX_BODY_MB and JRM_REWARD_MAX_REQUEST_MEGAPIXELS must be > 0.")

    def _check_worker(self) -> None:
        if self.retrain_min_votes < 1:
            raise SettingsError("JRM_RETRAIN_MIN_VOTES must be >= 1 (new training votes that queue a retrain).")
        if self.retrain_check_minutes < 0:
            raise SettingsError("JRM_RETRAIN_CHECK_MINUTES must be >= 0 (0 turns the threshold check off).")
        if self.queue_poll_s <= 0 or self.heartbeat_s <= 0:
            raise SettingsError("JRM_QUEUE_POLL_S and JRM_HEARTBEAT_S must be > 0 seconds.")
        if self.stale_after_s < 3 * self.heartbeat_s:
            raise SettingsError("JRM_STALE_AFTER_S must be at least 3 × JRM_HEARTBEAT_S, or a busy but live worker "
                                "would have its run marked failed.")
        if self.train_processes < 0:
            raise SettingsError("JRM_TRAIN_PROCESSES must be >= 0 (0: one per visible GPU).")
        if self.retrain_cron.strip():
            _check_crontab(self.retrain_cron)

    def _check_retention(self) -> None:
        if not -1 <= self.gc_hour <= 23:
            raise SettingsError(f"JRM_GC_HOUR must be an hour from 0 to 23, or -1 to turn the daily garbage "
                                f"collection off; got {self.gc_hour}.")
        if self.keep_versions < 0:
            raise SettingsError("JRM_KEEP_VERSIONS must be >= 0 (0: keep every version's files).")
        if self.snapshot_retention_days < 0 or self.export_retention_days < 0:
            raise SettingsError("JRM_SNAPSHOT_RETENTION_DAYS and JRM_EXPORT_RETENTION_DAYS must be >= 0 days "
                                "(0: keep all).")

    @property
    def resolved_database_url(self) -> str:
        """The URL to connect to: `database_url`, or SQLite inside `data_dir`."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'jrm.db').as_posix()}"

    @property
    def train_provenance_list(self) -> tuple[str, ...]:
        """`train_provenances` as a tuple; empty means the default rule (`storage.provenance`)."""
        return tuple(sorted({p.strip() for p in self.train_provenances.split(",") if p.strip()}))

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def reward_max_body_bytes(self) -> int:
        return int(self.reward_max_body_mb * 1024 * 1024)


def _check_crontab(line: str) -> None:
    from apscheduler.triggers.cron import CronTrigger  # lazy: only a configured schedule needs it

    try:
        CronTrigger.from_crontab(line)
    except ValueError as exc:
        raise SettingsError(f"JRM_RETRAIN_CRON={line!r} is not a crontab line ({exc}); "
                            "use five fields, e.g. '0 3 * * *' for 03:00 every day.") from None


def _parse_bool(raw: str) -> bool:
    # bool("0") is True, so switches are read from words, not by the type's constructor.
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def env_name(field_name: str) -> str:
    """`max_pixels` → `JRM_MAX_PIXELS`."""
    return "JRM_" + field_name.upper()


def load_settings(environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Build `Settings` from `JRM_*` variables; keyword overrides win (tests, CLI flags)."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is None or raw == "":
            continue
        kind = type(f.default)
        try:
            values[f.name] = Path(raw) if kind is Path else _parse_bool(raw) if kind is bool else kind(raw)
        except ValueError:
            raise SettingsError(f"{env_name(f.name)}={raw!r} is not a valid {kind.__name__}.") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def configuration_table() -> list[tuple[str, str, str]]:
    """(variable, default, help) rows for the README and `python -m storage config`."""
    rows = []
    for f in fields(Settings):
        rows.append((env_name(f.name), str(f.default) if f.default != "" else "(see help)", f.metadata["help"]))
    return rows


def password_from_env(environ: dict[str, str] | None = None) -> str | None:
    """`JRM_USER_PASSWORD`, read for non-interactive `storage users add`."""
    environ = os.environ if environ is None else environ
    return environ.get("JRM_USER_PASSWORD") or None


def reward_token_from_env(environ: dict[str, str] | None = None) -> str | None:
    """`JRM_REWARD_TOKEN`, read by `app.rewards.RewardClient` when it is given no token."""
    environ = os.environ if environ is None else environ
    return environ.get("JRM_REWARD_TOKEN") or None


def postgres_test_url(environ: dict[str, str] | None = None) -> str | None:
    """`JRM_TEST_POSTGRES_URL`: where the tests find a PostgreSQL server (CI sets it)."""
    environ = os.environ if environ is None else environ
    return environ.get("JRM_TEST_POSTGRES_URL") or None


def postgres_required_in_tests(environ: dict[str, str] | None = None) -> bool:
    """`JRM_TEST_REQUIRE_POSTGRES=1` (CI): an unreachable server fails the tests instead of skipping them."""
    environ = os.environ if environ is None else environ
    return environ.get("JRM_TEST_REQUIRE_POSTGRES", "") not in ("", "0")


def artifacts_dir(environ: dict[str, str] | None = None) -> Path:
    """`JRM_ARTIFACTS_DIR`: where tests leave screenshots and reports (default ./artifacts)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("JRM_ARTIFACTS_DIR") or "./artifacts")
