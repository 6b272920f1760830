"""Atomic file writes: a temporary file in the same directory, fsync, then ``os.replace``.

The one implementation for every layer (dataset caches and previews, checkpoints, logs, pretrained models).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

TMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # best effort: some filesystems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file (0o666 less the umask); ``mkstemp`` gives 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and move it into place.

    Readers see either the old file or the complete new one, never a partial file; on any error
    (including ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched.
    The file gets the same mode as one made by ``open``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path
