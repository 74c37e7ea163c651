"""`python -m trainer pretrain`: build `tiny-edit` from scratch, train it on the stream, write the preset folder.

The preset folder is what ships in `trainer/presets/tiny-edit`: the backbone (`save_pretrained`, safetensors),
its processor and tokenizer, the pretrained reward head (`reward_head.safetensors`, which a fine-tune starts from)
and `jrm_preset.json`, the manifest (command, seed, steps, wall time, a hash of the recipe's code and settings,
the pretraining metrics and every file's sha256). Checkpoints and the loss log live in `<out>/.work`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import save_file

from storage.demo_kinds import EDIT_KINDS, sample_spec
from trainer.backbones import Backbone, build_tiny_llava, train_tiny_tokenizer
from trainer.edit_view import EditViewProcessor
from trainer.model import JointRewardModel, JRMConfig
from trainer.presets import MANIFEST, PRESET_NAME, REWARD_HEAD_FILE, file_hashes
from trainer.pretrain.config import PretrainConfig
from trainer.pretrain.loop import Pretrainer
from trainer.pretrain.phrasing import instruction
from trainer.pretrain.stream import HELDOUT_PHOTOS, caption_of, step_data, stream_task

WORK = ".work"
RECIPE_FILES = (
    "trainer/pretrain/phrasing.py",
    "trainer/pretrain/stream.py",
    "trainer/pretrain/loop.py",
    "trainer/pretrain/config.py",
    "trainer/pretrain/checkpoint.py",
    "trainer/edit_view.py",
)


def tokenizer_corpus(seed: int, n: int = 4000) -> list[str]:
    """Instructions and captions from a stream of their own, so the tokenizer knows the words of the recipe."""
    rng = random.Random(f"jrm-pretrain-tokenizer:{seed}")
    texts = [instruction(sample_spec(rng.choice(tuple(EDIT_KINDS)), rng), rng) for _ in range(n)]
    for i in range(n // 8):
        texts += [caption_of(c) for c in stream_task(seed, i, 0, namespace="jrm-pretrain-tokenizer").candidates]
    return texts


def build_model(config: PretrainConfig) -> JointRewardModel:
    """A fresh, random-init tiny LLaVA of the recipe's shape with its reward head."""
    tokenizer = train_tiny_tokenizer(config.seed, extra_corpus=tokenizer_corpus(config.seed))
    model, processor = build_tiny_llava(
        config.seed,
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_layers=config.vision_layers,
        text_layers=config.text_layers,
        tokenizer=tokenizer,
    )
    if config.edit_view:
        processor = EditViewProcessor(processor)
    set_seed(config.seed)
    backbone = Backbone(model, processor, PRESET_NAME, image_size=config.image_size, is_tiny=True)
    return JointRewardModel(backbone, JRMConfig(backbone=PRESET_NAME, lm_weight=config.caption_weight))


def recipe_hash(config: PretrainConfig) -> str:
    """sha256 of the recipe's code and its settings (not of the number of steps); the demo generator it draws
    from is covered by `data_fingerprint` instead, so its unrelated parts (votes, rationales) can change."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for name in RECIPE_FILES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    settings = {k: v for k, v in config.to_dict().items() if k != "steps"}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def data_fingerprint(config: PretrainConfig, steps: int = 4) -> str:
    """sha256 of the stream's first `steps` steps (pixels, texts, tie flags): changes when the data would."""
    digest = hashlib.sha256()
    for step in range(steps):
        data = step_data(config.seed, step, config.tasks_per_step, swap_share=config.swap_share)
        for pair in data.preferences + data.checks:
            for image in (pair.source, pair.chosen, pair.rejected):
                digest.update(image.tobytes())
            digest.update(f"{pair.chosen_instruction}\0{pair.rejected_instruction}\0{pair.is_tie}".encode())
        for caption in data.captions:
            digest.update(caption.edited.tobytes() + caption.caption.encode())
    return digest.hexdigest()


def pretrain(config: PretrainConfig, out: str | Path, *, resume: bool = False, command: str = "") -> dict:
    """Train (or go on training) and write the preset to `out`; returns the manifest."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the preset (it is created if missing).")
    work = out / WORK
    if not resume and (work / "checkpoint").exists():
        raise ValueError(f"{work} already holds a pretraining checkpoint: pass --resume, or choose another --out.")
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(config)
    log_file = (work / "log.jsonl").open("a")

    def log(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()

    trainer = Pretrainer(model, config, work, log)
    resumed_from = trainer.state.step
    if resume and trainer.resume():
        resumed_from = trainer.state.step
    state = trainer.run()
    log_file.close()
    manifest = {
        "preset": PRESET_NAME,
        "command": command,
        "seed": config.seed,
        "steps": state.step,
        "resumed_from_step": resumed_from or None,
        "wall_s": round(state.wall_s, 1),
        "recipe_sha256": recipe_hash(config),
        "data_sha256": data_fingerprint(config),
        "config": config.to_dict(),
        "heldout_photos": list(HELDOUT_PHOTOS),
        "metrics": {"probes": state.probes, "final_losses": _final_losses(state.history)},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
    }
    export_preset(model, out, manifest)
    return manifest


def _final_losses(history: dict[str, list[float]]) -> dict[str, float]:
    """The mean of each curve over its last five records."""
    return {k: round(sum(v[-5:]) / len(v[-5:]), 4) for k, v in history.items() if k not in ("step", "lr") and v}


def export_preset(model: JointRewardModel, out: Path, manifest: dict) -> None:
    """Write the preset files into `out` (the manifest last, with the files' sha256), replacing an older export."""
    staging = Path(tempfile.mkdtemp(prefix=".preset-", dir=out))
    try:
        model.backbone.save_pretrained(staging)
        model.processor.save_pretrained(staging)
        head = {k: v.detach().contiguous().cpu() for k, v in model.reward_head.state_dict().items()}
        save_file(head, staging / REWARD_HEAD_FILE)
        manifest = {**manifest, "files": file_hashes(staging)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for old in out.iterdir():
            if old.name not in (WORK, staging.name):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        for item in staging.iterdir():
            item.rename(out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
