"""Encryption of clients' marked inputs, with a retention period enforced by deleting keys.

A marked query's input is evidence if its sender turns out to be an
extraction attacker, and personal data if not. It is therefore never written
in plain text (not to the journal, not to the registry): it is sealed with
AES-256-GCM (NIST SP 800-38D) under a random **epoch key**, one per UTC day,
with associated data naming the model, the day and the input's keyed digest
(so a ciphertext moved to another record does not open).

Epoch keys live in ``$WM_HOME/guard/<model>/epochs/<YYYY-MM-DD>.key``, mode
0600, themselves sealed under the owner key (:mod:`registry.sealing`).
**Retention** is crypto-shredding: once a day is older than the retention
period its key file is deleted, and every copy of those inputs (in the
append-only registry log, in backups) becomes unreadable, while the log stays
complete and verifiable. Inputs committed to a guard probe set
(``wm guard commit``) are re-sealed with the probe set under the owner key and
kept as long as the registry keeps that probe set.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.canonical import canonical_json
from core.errors import InputError, IntegrityError
from core.files import write_private
from registry.keys import OwnerKey
from registry.sealing import open_sealed, seal

__all__ = ["DEFAULT_RETENTION_DAYS", "InputVault"]

DEFAULT_RETENTION_DAYS = 90
_EPOCH_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MAGIC = b"wmg1"


class InputVault:
    """Seals and opens marked inputs of one model under per-day epoch keys.

    Args:
        directory: where the epoch key files live (created with mode 0700).
        owner_key: seals the epoch keys.
        model: the model name (bound into every ciphertext).
        retention_days: days an input stays readable; 1 or more.
    """

    def __init__(
        self,
        directory: Path,
        owner_key: OwnerKey,
        model: str,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        if retention_days < 1:
            raise InputError(f"--retention-days must be at least 1, got {retention_days}")
        self.directory = Path(directory)
        self.model = model
        self.retention_days = int(retention_days)
        self._owner_key = owner_key
        self._keys: dict[str, AESGCM | None] = {}
        self._lock = threading.Lock()

    @staticmethod
    def epoch_of(when: datetime) -> str:
        """The epoch (UTC day) a record made at ``when`` belongs to."""
        return when.astimezone(UTC).date().isoformat()

    def _context(self, epoch: str) -> dict[str, str]:
        return {"purpose": "guard-epoch-key", "model": self.model, "epoch": epoch}

    def _key(self, epoch: str, *, create: bool) -> AESGCM | None:
        with self._lock:
            if epoch in self._keys:
                return self._keys[epoch]
            path = self.directory / f"{epoch}.key"
            if not path.exists():
                if not create:
                    return None
                self._create_key(path, epoch)
            raw = open_sealed(self._owner_key, path.read_bytes(), self._context(epoch))
            self._keys[epoch] = AESGCM(raw)
            return self._keys[epoch]

    def _create_key(self, path: Path, epoch: str) -> None:
        """Write a new epoch key unless another guard worker just did (under a file lock)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / ".create.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not path.exists():
                write_private(path, seal(self._owner_key, os.urandom(32), self._context(epoch)))
        finally:
            os.close(fd)

    def _aad(self, epoch: str, digest: str) -> bytes:
        return canonical_json(
            {"type": "wm.guard-input/v1", "model": self.model, "epoch": epoch, "digest": digest}
        )

    def seal(self, data: bytes, digest: str, when: datetime) -> tuple[str, bytes]:
        """Encrypt one input's canonical bytes; ``(epoch, ciphertext)``."""
        epoch = self.epoch_of(when)
        key = self._key(epoch, create=True)
        assert key is not None
        nonce = os.urandom(12)
        return epoch, _MAGIC + nonce + key.encrypt(nonce, data, self._aad(epoch, digest))

    def open(self, epoch: str, sealed: bytes, digest: str) -> bytes | None:
        """Decrypt one input; ``None`` when its epoch key was shredded (retention passed).

        Raises:
            IntegrityError: the ciphertext was changed, moved, or sealed for another model.
        """
        if not _EPOCH_RE.match(epoch):
            raise IntegrityError(f"guard record names no valid epoch ({epoch[:20]!r})")
        key = self._key(epoch, create=False)
        if key is None:
            return None
        if len(sealed) < 4 + 12 + 16 or not sealed.startswith(_MAGIC):
            raise IntegrityError("sealed guard input is malformed")
        try:
            return key.decrypt(sealed[4:16], sealed[16:], self._aad(epoch, digest))
        except InvalidTag as exc:
            raise IntegrityError(
                "a sealed guard input does not open: changed, moved to another record, "
                "or sealed for another model"
            ) from exc

    def expired(self, epoch: str, today: date | None = None) -> bool:
        """Whether ``epoch`` is past the retention period."""
        today = today or datetime.now(UTC).date()
        return date.fromisoformat(epoch) < today - timedelta(days=self.retention_days - 1)

    def shred_expired(self, today: date | None = None) -> list[str]:
        """Delete the keys of every epoch past retention; the epochs shredded."""
        shredded: list[str] = []
        if not self.directory.is_dir():
            return shredded
        for path in sorted(self.directory.glob("*.key")):
            epoch = path.stem
            if _EPOCH_RE.match(epoch) and self.expired(epoch, today):
                with self._lock:
                    path.unlink(missing_ok=True)
                    self._keys.pop(epoch, None)
                shredded.append(epoch)
        return shredded
