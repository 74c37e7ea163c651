"""A version's files on disk: the folder it lives in, its manifest (sha256 of every file), fsync, verification."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from storage.errors import InvalidInput
from storage.models import ModelVersion
from storage.settings import Settings

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class VersionFilesError(InvalidInput):
    """A version folder that is missing, has no manifest, or whose files do not match it."""


def version_dir(settings: Settings, version: ModelVersion) -> Path:
    """The folder holding `version`'s files (its `path` is relative to `settings.registry_dir`)."""
    relative = Path(version.path)
    if relative.is_absolute() or len(relative.parts) != 1 or relative.name in ("", ".", ".."):
        raise VersionFilesError(f"Version {version.name} has path {version.path!r}; expected a plain folder name.")
    return settings.registry_dir / relative


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _payload_files(folder: Path) -> list[Path]:
    """Every file under `folder` except the manifest, in a stable order; links are refused."""
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise InvalidInput(f"save() wrote a symbolic link {path.name!r}; versions must hold real files.")
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST:
            files.append(path)
    return files


def hash_payload(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's `files` entry for what `save()` wrote: relative path → sha256 and size."""
    if (folder / MANIFEST).exists():
        raise InvalidInput(f"save() wrote {MANIFEST}, a name the registry reserves for itself.")
    files = {
        p.relative_to(folder).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in _payload_files(folder)
    }
    if not files:
        raise InvalidInput("save() wrote no files; nothing to publish.")
    return files


def write_manifest(folder: Path, *, name: str, created_at: datetime, files: dict[str, Any]) -> None:
    """Write `manifest.json` into `folder` (not flushed: the caller fsyncs)."""
    manifest = {"format": MANIFEST_FORMAT, "name": name, "created_at": created_at.isoformat(), "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def fsync_path(path: Path) -> None:
    """Flush one file or folder entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` (folders last, so their entries point at flushed data)."""
    for path in sorted(folder.rglob("*"), key=lambda p: p.is_dir()):
        fsync_path(path)
    fsync_path(folder)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise VersionFilesError(f"Version folder {path} is missing.")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VersionFilesError(f"{path} has no {MANIFEST}; it is not a complete registry version.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VersionFilesError(f"{path / MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise VersionFilesError(f"{path / MANIFEST} lists no files.")
    return manifest


def verify_version_files(path: Path) -> None:
    """Check every file the manifest lists exists with its recorded sha256; raise `VersionFilesError` if not."""
    manifest = _read_manifest(path)
    for relative, entry in manifest["files"].items():
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise VersionFilesError(f"{path / MANIFEST} lists {relative!r}, outside the version folder.")
        file = path / relative
        if not file.is_file():
            raise VersionFilesError(f"{file} is listed in the manifest but missing.")
        if not isinstance(entry, dict) or _sha256(file) != entry.get("sha256"):
            raise VersionFilesError(f"{file} does not match its sha256 in {MANIFEST}; the version is corrupt.")


def files_sha256(path: Path) -> str:
    """One sha256 for a version's content: of the manifest's {file: sha256} map as sorted JSON. Name and publish time
    are left out, so the same weights published twice get the same value; call `verify_version_files` first."""
    files = _read_manifest(path)["files"]
    listing = {relative: entry.get("sha256") if isinstance(entry, dict) else None for relative, entry in files.items()}
    return hashlib.sha256(json.dumps(listing, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def require_files(settings: Settings, version: ModelVersion) -> None:
    """`verify_version_files` of `version`'s folder."""
    verify_version_files(version_dir(settings, version))


def require_present(settings: Settings, version: ModelVersion) -> None:
    """The cheap check after a `verify_version_files` done outside the transaction: the folder and manifest exist."""
    folder = version_dir(settings, version)
    if not (folder / MANIFEST).is_file():
        raise VersionFilesError(f"{folder / MANIFEST} is missing; the version's files were removed.")
