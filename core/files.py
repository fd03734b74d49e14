"""Writing and hashing files: atomic, durable writes for public files and for secrets.

:func:`write_atomic` writes a temporary file beside the target, syncs it,
renames it over the target and syncs the directory, so a crash leaves either
the old file or the new one, never a torn one. :func:`write_private` does the
same with mode 0600 from the start (never readable by others, not even
briefly) for keys, sealed data keys and watermark secrets.
:func:`file_sha256` is the one file hasher of the tree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["file_sha256", "write_atomic", "write_private"]


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Atomically replace ``path`` with ``data`` (file mode ``mode``), synced to disk.

    Args:
        path: the file to write; its directory must exist.
        data: the whole new content.
        mode: permission bits of the new file (before the umask, as ``open`` does,
            except that 0600 files are exactly 0600).
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if mode == 0o600:
            os.fchmod(fd, 0o600)  # an older tmp file left by a crash may have kept another mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return p


def write_private(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``, mode 0600, synced to disk."""
    return write_atomic(path, data, mode=0o600)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
