"""The base backbone of a LoRA version: the folder its files are in, and their identity.

A LoRA version stores only its adapters and reward head and names its base (`JRMConfig.backbone`). `save` records
the base's identity beside them (its hub revision when there is one, and the sha256 of every weight, config and
tokenizer/processor file), and every load checks the base available now against it, so a version is never scored
on a base other than the one it was trained on. Why record-and-refuse rather than copying or merging the base:
docs/registry.md, "Self-contained versions".
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from trainer.backbones import preset_folder
from trainer.edit_view import MARKER as EDIT_VIEW_MARKER
from trainer.presets import REWARD_HEAD_FILE

# Files that decide what the base computes: weights (and their shard indexes), the architecture, and everything that
# turns text and pictures into tensors. Not: a preset's pretrained reward head (a version carries its own), its
# manifest or build marker, READMEs, generation settings.
IDENTITY_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.index.json",
    "config.json",
    "*tokenizer*",
    "*.model",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "*processor*",
    EDIT_VIEW_MARKER,
)
NOT_IDENTITY = frozenset({REWARD_HEAD_FILE})


@dataclass(frozen=True)
class BaseIdentity:
    """What a LoRA version was trained on: the base's name, its hub revision (None off the hub), file hashes."""

    name: str
    revision: str | None
    files: dict[str, str]  # file name → sha256

    def to_dict(self) -> dict:
        """JSON-ready fields (stored under "base" in the version's jrm_config.json)."""
        return {"name": self.name, "revision": self.revision, "files": dict(sorted(self.files.items()))}

    @classmethod
    def from_dict(cls, data: object) -> BaseIdentity:
        """The record `to_dict` wrote; ValueError when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or not data["files"]:
            raise ValueError(f"not a base identity record: {data!r}")
        return cls(str(data["name"]), data.get("revision"), {str(k): str(v) for k, v in data["files"].items()})


def base_folder(name: str, *, cache_dir: str | Path | None, revision: str | None = None) -> Path:
    """The folder `load_backbone(name, cache_dir=…)` reads: a preset's, a local folder, or a hub snapshot in the cache
    (at `revision` when given)."""
    preset = preset_folder(name, cache_dir)
    if preset is not None:
        return preset
    if Path(name).is_dir():
        return Path(name)
    found = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision)
    if not isinstance(found, str):
        at, flag = (f" at revision {revision}", f" --revision {revision}") if revision else ("", "")
        raise ValueError(
            f"The base backbone {name!r}{at} is not in the local model cache ({cache_dir or 'the default cache'}); "
            f"download it first (`huggingface-cli download {name}{flag}`)."
        )
    return Path(found).parent


def identity_files(folder: Path) -> dict[str, str]:
    """sha256 of each file in `folder` (not below it) that decides what the base computes, by name."""
    hashes = {}
    for path in sorted(folder.iterdir()):
        wanted = any(fnmatch.fnmatch(path.name, pattern) for pattern in IDENTITY_PATTERNS)
        if path.is_file() and wanted and path.name not in NOT_IDENTITY:
            with path.open("rb") as handle:  # streamed: shards of a large base are gigabytes each
                hashes[path.name] = hashlib.file_digest(handle, "sha256").hexdigest()
    if not hashes:
        raise ValueError(f"{folder} holds no weight or processor files; it is not a backbone folder.")
    return hashes


def describe_base(name: str, *, cache_dir: str | Path | None, revision: str | None) -> BaseIdentity:
    """The identity of base `name` as it is on disk now."""
    return BaseIdentity(name, revision, identity_files(base_folder(name, cache_dir=cache_dir, revision=revision)))


def verified_base_folder(version: Path, record: object, *, name: str, cache_dir: str | Path | None) -> Path:
    """The folder of the base LoRA version `version` was trained on, after checking that its files still hash as
    `record` says; ValueError naming the version, the files, both hashes and what to do otherwise."""
    if record is None:
        raise ValueError(
            f"The LoRA version in {version} does not record which files its base {name!r} had (it was saved before "
            "versions recorded their base), so it cannot be checked against the base available now; train it again."
        )
    try:
        expected = BaseIdentity.from_dict(record)
    except ValueError as exc:
        raise ValueError(f"The LoRA version in {version} has a damaged base record ({exc}); train it again.") from None
    folder = base_folder(expected.name, cache_dir=cache_dir, revision=expected.revision)
    found = identity_files(folder)
    changed = sorted(n for n in set(expected.files) | set(found) if expected.files.get(n) != found.get(n))
    if changed:
        details = "; ".join(
            f"{file}: expected {expected.files.get(file, '(no such file)')}, found {found.get(file, '(missing)')}"
            for file in changed[:3]
        )
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise ValueError(
            f"The LoRA version in {version} was trained on base {expected.name!r} (revision {expected.revision}), "
            f"but the base in {folder} has different files: {details}{more}. Restore the base it was trained on "
            "(the same preset build, checkout or hub revision), or train the version again on this base."
        )
    return folder
