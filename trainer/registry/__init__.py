"""The model registry: versions on disk under `settings.registry_dir` and rows in `model_versions`.

A version is a folder `registry_dir/<name>` (`v0001`, `v0002`, …) holding what the model's `save(dir)` wrote
plus `manifest.json` (name, created time, sha256 of every file). Publishing writes into a `.tmp-<uuid>` folder
and renames it into place only when complete, so a crash mid-save is never visible as a version. Exactly one
version is `active` at a time: every switch takes the registry lock and flips both rows in one transaction.
Functions that take a session never commit; the caller owns the transaction. See docs/registry.md.

One concern per module: `files` (folders, manifests, hashes), `publish` (staging, the atomic rename, the sweep),
`switch` (the gate's decision applied, manual promotion, rollback), `reading` (queries and the scorer loader),
`scores` (the score cache). The gate's decision itself is `trainer.gate`; its measurements `trainer.judge`.
"""

from trainer.registry.files import (
    MANIFEST,
    MANIFEST_FORMAT,
    VersionFilesError,
    files_sha256,
    verify_version_files,
    version_dir,
)
from trainer.registry.publish import (
    TMP_PREFIX,
    StagedVersion,
    add_version,
    publish_version,
    stage_version,
    sweep_incomplete,
)
from trainer.registry.reading import active_version, get_version, get_version_by_name, list_versions, load_scorer
from trainer.registry.scores import cached_scores, record_scores
from trainer.registry.switch import (
    MAX_REASON_CHARS,
    ROLLED_BACK,
    ActiveChanged,
    RegistryConflict,
    apply_promotion_gate,
    promote_version,
    require_same_active,
    rollback,
)

__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MAX_REASON_CHARS",
    "ROLLED_BACK",
    "TMP_PREFIX",
    "ActiveChanged",
    "RegistryConflict",
    "StagedVersion",
    "VersionFilesError",
    "active_version",
    "add_version",
    "apply_promotion_gate",
    "cached_scores",
    "files_sha256",
    "get_version",
    "get_version_by_name",
    "list_versions",
    "load_scorer",
    "promote_version",
    "publish_version",
    "record_scores",
    "require_same_active",
    "rollback",
    "stage_version",
    "sweep_incomplete",
    "verify_version_files",
    "version_dir",
]
