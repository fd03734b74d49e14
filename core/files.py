"""Writing secret files: private (mode 0600), atomic, and durable.

Keys, sealed data keys and watermark secrets are written to a temporary file
created with mode 0600 (never readable by others, not even briefly), synced,
renamed over the target, and the directory synced, so a crash leaves either
the old file or the new one, never a torn or world-readable one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``, mode 0600, synced to disk."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older tmp file left by a crash may have kept another mode
        os.write(fd, data)
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
