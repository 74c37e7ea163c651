"""Presets the project pretrains and ships: `tiny-edit` (trainer/presets/tiny-edit, built by `trainer pretrain`).

A preset folder is a `save_pretrained` backbone with its processor, the pretrained reward head and a manifest
(`jrm_preset.json`) that records how it was made and every file's sha256; `check_preset` verifies the files
against it, so a damaged or half-checked-out preset is refused with a message instead of scoring noise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PRESET_NAME = "tiny-edit"
MANIFEST = "jrm_preset.json"
REWARD_HEAD_FILE = "reward_head.safetensors"
PRESETS_DIR = Path(__file__).resolve().parent


def preset_dir(name: str = PRESET_NAME) -> Path:
    """The shipped folder of preset `name`."""
    return PRESETS_DIR / name


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder` (not below it) but the manifest, by name."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def read_manifest(folder: Path) -> dict:
    """The preset's manifest; a clear error when it is missing or unreadable."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{folder} is not a usable preset ({MANIFEST}: {exc}); rebuild it with `python -m trainer pretrain "
            f"--out {folder}` or check the repository out again."
        ) from exc


def check_preset(folder: Path) -> dict:
    """Verify the preset's files against its manifest; returns the manifest."""
    manifest = read_manifest(folder)
    expected = manifest.get("files") or {}
    actual = file_hashes(folder)
    bad = sorted(name for name in expected if actual.get(name) != expected[name])
    if bad or not expected:
        raise ValueError(
            f"The preset in {folder} does not match its manifest (changed or missing: {', '.join(bad) or 'all'}); "
            "check the repository out again or rebuild it with `python -m trainer pretrain`."
        )
    return manifest
