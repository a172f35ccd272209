"""Atomic file writes: the one home (a temporary file in the same folder, then one rename).

A reader, or a crash, never sees a half-written file; the file gets the mode a plain ``open()`` would
give it (0666 minus the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text"]


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600: give the file the mode a plain open() would (0666 minus the umask)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


# Read once at import: os.umask is process-wide, so reading it later (while the app's worker
# threads create files) could let another thread create a file under a zero umask.
_UMASK = _read_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically."""
    _atomic(Path(path), lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_save(path: str | Path, save: Callable[[Path], None]) -> None:
    """Call ``save(tmp_path)`` and move the result onto ``path`` atomically."""
    _atomic(Path(path), save)
