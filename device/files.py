"""Durable file writes for models: atomic replacement and clean-up of unfinished writes.

Standard library only, so the daemon's API process can use it without importing torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Temporary files of unfinished writes start with this prefix; see :func:`remove_partial_files`.
PARTIAL_PREFIX = ".partial-"
#: Permissions of written model files: owner read/write, everyone else read.
FILE_MODE = 0o644


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` via temp file, fsync and rename; fsync the directory too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=PARTIAL_PREFIX + path.name + ".", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); a model must be readable like any written file.
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave a partial file behind on failure (a crash mid-write is cleaned at start-up).
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def remove_partial_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left by writes that never finished; returns what was removed."""
    removed = []
    for candidate in Path(directory).glob(PARTIAL_PREFIX + "*"):
        if candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed
