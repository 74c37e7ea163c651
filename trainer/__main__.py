"""`python -m trainer train | evaluate | score | pretrain | gc | pin | unpin`: train a version, evaluate one, score
an edit, pretrain; collect garbage (docs/operations.md, "Retention") and pin versions against it.

Bad input (an unknown version, missing files, a negative λ, no version yet) prints one line `error: …` and exits
with status 2; a training run that fails exits with 1 after recording the error on its row. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer import retention_cli

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


class CliError(Exception):
    """Bad input: printed as one line, exit status 2."""


# --- arguments -------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The three subcommands and their options."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="Train a model version on the store's votes (a new run, or --run-id).")
    _database_option(train)
    train.add_argument("--run-id", type=_positive_int, help="Run this queued run (its params come from its row).")
    train.add_argument(
        "--worker-id",
        help="With --run-id: the worker that already claimed the run (the worker passes its own id); without it "
        "this command claims the queued run itself and refuses one that is running.",
    )
    train.add_argument(
        "--backbone", help="Preset ('tiny-edit' default; see docs/backbones.md), hub id or local folder."
    )
    train.add_argument("--lm-weight", type=_number, help="λ in L = L_pref + λ·L_lm (0: discriminative baseline).")
    train.add_argument("--epochs", type=_positive_int, help="Passes over the training votes.")
    train.add_argument("--max-steps", type=_positive_int, help="Stop after this many optimizer steps.")
    train.add_argument("--batch-size", type=_positive_int, help="Votes (pairs) per step and process.")
    train.add_argument("--lr", type=_number, help="Peak learning rate.")
    train.add_argument("--seed", type=int, help="Seed for the head's init and the data order.")
    train.add_argument("--finetune", choices=("full", "lora"), help="Train every weight, or LoRA adapters + head.")
    train.add_argument(
        "--mixed-precision", choices=("no", "bf16"), help="bf16 autocast for training on a GPU (default: no)."
    )
    train.add_argument(
        "--max-image-pixels", type=_positive_int, help="Pixel budget per image (dynamic-resolution backbones)."
    )
    train.add_argument("--no-promote", action="store_true", help="Publish the version but skip the promotion gate.")

    evaluate = commands.add_parser("evaluate", help="Print a JSON evaluation report of a version.")
    _database_option(evaluate)
    _version_option(evaluate)
    evaluate.add_argument("--editreward-json", type=Path, help="Evaluate on an EditReward-format JSON file instead.")
    evaluate.add_argument("--images-root", type=Path, help="Folder the EditReward file's image paths are under.")
    evaluate.add_argument("--batch-size", type=_positive_int, default=16, help="Sequences per forward.")

    score = commands.add_parser("score", help="Score one edited image for a source image and an instruction.")
    _database_option(score)
    _version_option(score)
    score.add_argument("source", type=Path, help="The source image file.")
    score.add_argument("edited", type=Path, help="The edited image file.")
    score.add_argument("--instruction", required=True, help="The edit instruction.")

    pretrain = commands.add_parser("pretrain", help="Build the tiny-edit preset from scratch on generated edits.")
    pretrain.add_argument("--out", type=Path, required=True, help="Folder for the preset (checkpoints in .work).")
    pretrain.add_argument("--steps", type=_positive_int, help="Optimizer steps (default: the recipe's).")
    pretrain.add_argument("--seed", type=int, help="Seed of the init and of the task stream (default 0).")
    pretrain.add_argument("--resume", action="store_true", help="Go on from the checkpoint in --out.")
    pretrain.add_argument("--checkpoint-every", type=_positive_int, help="Steps between checkpoints (default 250).")
    pretrain.add_argument("--tasks-per-step", type=_positive_int, help="Tasks per step (default 4).")
    pretrain.add_argument("--swap-share", type=float, help="Share of preference pairs that are instruction swaps.")
    retention_cli.add_commands(commands, _database_option)
    return parser


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", help="SQLAlchemy URL of the store (default: $JRM_DATABASE_URL or SQLite).")


def _version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", help="Version name (v0003) or id; default: the active version.")


TRAIN_FLAGS = {  # CLI option → run params key
    "backbone": "backbone",
    "lm_weight": "lm_weight",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "finetune": "finetune",
    "max_image_pixels": "max_image_pixels",
    "mixed_precision": "mixed_precision",
}


def train_params(args: argparse.Namespace) -> dict[str, Any]:
    """The run params given on the command line (only those given; the rest are the configs' defaults)."""
    params = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.no_promote:
        params["promote"] = False
    return params


# --- shared setup ----------------------------------------------------------------------------------------------


def _setup(args: argparse.Namespace):
    """Settings (with --database), torch threads, and a migrated engine's session factory."""
    import torch

    from storage.db import make_engine, session_factory, upgrade
    from storage.settings import load_settings

    settings = load_settings(database_url=args.database)
    torch.set_num_threads(settings.torch_threads)
    engine = make_engine(settings.resolved_database_url)
    return settings, engine, session_factory(engine), upgrade


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, allow_nan=False, default=str))


# --- train -----------------------------------------------------------------------------------------------------


def command_train(args: argparse.Namespace) -> int:
    """Create a run (trigger "cli") unless --run-id names one, claim it, then train, evaluate, publish and gate it."""
    from accelerate import PartialState

    from trainer.pipeline import run_training_job
    from trainer.runs_queue import new_worker_id

    params = train_params(args)
    if args.run_id is not None and params:
        raise CliError(
            "--run-id trains a queued run with the params stored on its row; drop the other options "
            f"({', '.join('--' + k.replace('_', '-') for k in params)})."
        )
    if args.worker_id is not None and args.run_id is None:
        raise CliError("--worker-id names the worker that claimed --run-id; give --run-id too, or drop --worker-id.")
    settings, engine, factory, upgrade = _setup(args)
    state = PartialState()
    worker_id = args.worker_id or new_worker_id("cli")
    run_id, refusal = args.run_id, None
    if state.is_main_process:
        upgrade(engine)
        run_id, refusal = _claim(factory, run_id=run_id, params=params, worker_id=worker_id)
    run_id, refusal = _share(state, (run_id, refusal))  # every process stops on a refusal, not only the main one
    if refusal is not None:
        raise CliError(refusal)
    version = run_training_job(factory, run_id=run_id, settings=settings, worker_id=worker_id)
    if version is not None:
        _print_json(
            {
                "run_id": run_id,
                "version": version.name,
                "status": version.status,
                "reason": version.reason,  # the gate's reason (or a researcher's, after a manual promotion)
                "heldout_accuracy": (version.metrics or {}).get("heldout_accuracy"),
                "gate": (version.metrics or {}).get("gate"),  # None with --no-promote: the gate did not run
            }
        )
    return 0


def _claim(factory, *, run_id: int | None, params: dict[str, Any], worker_id: str) -> tuple[int | None, str | None]:
    """Claim run `run_id` for `worker_id`, or create a "cli" run claimed in the same transaction (so no worker ever
    sees it queued); (the run's id, None) or (the id given, why it cannot be trained here)."""
    from storage.db import transaction
    from storage.errors import InvalidInput, NotFound
    from trainer.pipeline import create_run
    from trainer.runs_queue import claim_run

    try:
        with transaction(factory) as session:
            claimed = run_id if run_id is not None else create_run(session, params=params, trigger="cli").id
            claim_run(session, run_id=claimed, worker_id=worker_id)
    except (InvalidInput, NotFound) as exc:  # e.g. "run 3 is running on worker …": nothing was changed
        return run_id, str(exc)
    return claimed, None


def _share(state, value: Any) -> Any:
    """The main process's `value`, on every process."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


# --- evaluate and score ----------------------------------------------------------------------------------------


def _find_version(session, spec: str | None):
    """The version row for `spec` (a name, an id, or None for the active version)."""
    from sqlalchemy import select

    from storage.models import ModelVersion
    from trainer.registry import active_version

    if spec is None:
        version = active_version(session)
        if version is None:
            raise CliError("No active model version yet: train one first with `python -m trainer train`.")
    else:
        query = select(ModelVersion).where(ModelVersion.name == spec)
        version = session.scalars(query).first() or (session.get(ModelVersion, int(spec)) if spec.isdigit() else None)
        if version is None:
            raise CliError(f"No model version {spec!r}; give a name such as v0001 or an id.")
    return version


def _load_model(settings, version):
    """The version's scorer, after checking its files (call with no session open: this reads the checkpoint)."""
    from trainer.registry import verify_version_files, version_dir
    from trainer.scorer import load_scorer_model

    path = version_dir(settings, version)
    verify_version_files(path)
    try:
        return load_scorer_model(path, settings=settings)
    except ValueError as exc:  # e.g. a LoRA version whose base changed: the message says what to do
        raise CliError(f"Cannot load model version {version.name}: {exc}") from None


def command_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a version on the store's held-out split, or on an EditReward-format file."""
    if (args.editreward_json is None) != (args.images_root is None):
        raise CliError("--editreward-json and --images-root go together: give both or neither.")
    from storage.db import session_factory
    from trainer.data import HELDOUT, eval_pairs, make_snapshot
    from trainer.evaluate import evaluate_pairs

    settings, engine, _, upgrade = _setup(args)
    upgrade(engine)
    with session_factory(engine, read_only=True)() as session:  # rows only: images are decoded after it closes
        version = _find_version(session, args.version)
        rows = None if args.editreward_json is not None else _heldout_rows(session, settings)
    model = _load_model(settings, version)
    if rows is None:
        source, pairs = str(args.editreward_json), _editreward(args.editreward_json, args.images_root)
    else:
        source, pairs = "heldout", eval_pairs(make_snapshot(rows).split(HELDOUT))
    if not pairs:
        raise CliError(f"Nothing to evaluate: {source} has no votes.")
    report = evaluate_pairs(model, pairs, batch_size=args.batch_size)
    _print_json({"version": version.name, "source": source, **report})
    return 0


def _editreward(path: Path, images_root: Path) -> list:
    """EvalPairs read from an EditReward-format file (nothing is imported into the store)."""
    from trainer.evaluate import editreward_pairs

    try:
        return editreward_pairs(path, images_root)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _heldout_rows(session, settings) -> list:
    """The store's selected votes as snapshot rows (the held-out split is taken from them; no image is read)."""
    from storage.provenance import vote_selection
    from trainer.data import vote_rows

    return vote_rows(session, settings=settings, selection=vote_selection(session, settings=settings))


def _open_picture(path: Path):
    import PIL.Image

    if not path.is_file():
        raise CliError(f"{path}: no such file.")
    try:
        with PIL.Image.open(path) as picture:
            return picture.convert("RGB")
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as exc:
        raise CliError(f"{path} is not a readable image ({exc}).") from None


def command_score(args: argparse.Namespace) -> int:
    """Print the version's score of one edited image."""
    if not args.instruction.strip():
        raise CliError("The instruction is empty; pass the edit instruction with --instruction.")
    source, edited = _open_picture(args.source), _open_picture(args.edited)
    from storage.db import session_factory
    from trainer.evaluate import score_images

    settings, engine, _, upgrade = _setup(args)
    upgrade(engine)
    with session_factory(engine, read_only=True)() as session:
        version = _find_version(session, args.version)
    model = _load_model(settings, version)
    [score] = score_images(model, source=source, instruction=args.instruction, edited=[edited])
    _print_json({"version": version.name, "score": score})
    return 0


def command_pretrain(args: argparse.Namespace) -> int:
    """Pretrain the tiny-edit preset into --out and print its manifest's summary."""
    import shlex

    import torch

    from storage.settings import load_settings
    from trainer.pretrain.config import PretrainConfig
    from trainer.pretrain.recipe import pretrain

    torch.set_num_threads(load_settings().torch_threads)
    names = ("steps", "seed", "checkpoint_every", "tasks_per_step", "swap_share")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        config = PretrainConfig(**overrides)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    command = "python -m trainer " + shlex.join(sys.argv[1:] if sys.argv[0].endswith("__main__.py") else ["pretrain"])
    try:
        manifest = pretrain(config, args.out, resume=args.resume, command=command)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    summary = {k: manifest[k] for k in ("preset", "steps", "wall_s", "recipe_sha256")}
    _print_json({**summary, "out": str(args.out), "probes": manifest["metrics"]["probes"][-1:]})
    return 0


COMMANDS = {
    "train": command_train,
    "evaluate": command_evaluate,
    "score": command_score,
    "pretrain": command_pretrain,
    **retention_cli.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; 0 on success, 2 on bad input, 1 when training or evaluation failed."""
    from storage.errors import InvalidInput, NotFound
    from storage.settings import SettingsError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CliError, InvalidInput, NotFound, SettingsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
