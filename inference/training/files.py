"""The run's files: written whole with :func:`datasets.files.atomic_write` (the one
implementation, in the lowest layer), as text, and the temporaries a kill leaves behind."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List

from datasets.files import TMP_PREFIX, atomic_write

__all__ = ["TMP_PREFIX", "atomic_write", "atomic_write_text", "remove_temporaries"]


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def remove_temporaries(directory, names: Iterable[str]) -> List[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``directory`` when killed while
    writing a file whose name starts with one of ``names``; return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    prefixes = tuple(TMP_PREFIX + name for name in names)
    stale = [p for p in directory.iterdir() if p.name.startswith(prefixes) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
