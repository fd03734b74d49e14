"""Secret files are written private, atomically, leaving nothing behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from core.files import write_private


def test_write_private_replaces_with_mode_0600(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    stale = tmp_path / f".secret.{os.getpid()}.tmp"
    stale.write_bytes(b"left by a crash")
    os.chmod(stale, 0o644)
    assert write_private(target, b"new") == target
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_write_atomic_replaces_public_files_and_hashes(tmp_path: Path) -> None:
    import hashlib

    from core.files import file_sha256, write_atomic

    target = tmp_path / "owner.pub"
    target.write_bytes(b"old")
    assert write_atomic(target, b"new" * 1000) == target
    assert target.read_bytes() == b"new" * 1000
    assert stat.S_IMODE(target.stat().st_mode) & 0o600 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owner.pub"]
    assert file_sha256(target) == hashlib.sha256(b"new" * 1000).hexdigest()
