"""Files that appear whole or not at all: write to a temporary file in the same folder, then rename.

A reader never sees half a file, and a writer killed half-way leaves only its temporary file
(``.<name>.<random>.tmp``), which :func:`remove_stale_temporaries` clears. The file gets the
permissions an ordinary ``open()`` would give it under the process's umask (``mkstemp`` alone
would make it 0600, unreadable to the group of a shared results folder).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: the file to (re)place; its folder must exist.
        data: its whole content.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = 3600.0) -> list[Path]:
    """Delete the temporary files that writers killed half-way left in ``folder``.

    Only files named like :func:`atomic_write_bytes`'s temporaries (``.*.tmp``) and not
    modified for ``older_than`` seconds (a live writer's file is younger) are removed.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for tmp in folder.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # gone already, or not ours to remove
    return removed
