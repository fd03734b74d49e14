"""The watermark secret sidecar written beside a model by ``wm train``.

``MODEL.pt2.wmkey`` (file mode 0600) holds the 32-byte watermark key and the
secret probe sets; :mod:`core.secretfile` fixes its format and reads it for
this package and for the registry alike.

``wm register`` moves both into the registry, encrypted under the owner key.
Anyone holding this file can open or evade the watermark: keep it private.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import KeyError_
from core.probeset import ProbeSet
from core.secretfile import SECRET_SUFFIX, read_secret_file, write_secret_file
from watermark.keys import WatermarkKey

__all__ = ["SECRET_SUFFIX", "WatermarkSecret", "read_secret", "secret_path", "write_secret"]


@dataclass(frozen=True)
class WatermarkSecret:
    """A watermark key with the probe set it produced (and any more sets it produced for the
    same model, one per scheme: ``wm train --watermark A+B``)."""

    key: WatermarkKey
    probes: ProbeSet
    more: tuple[ProbeSet, ...] = ()

    @property
    def sets(self) -> tuple[ProbeSet, ...]:
        """Every probe set, the first one first."""
        return (self.probes, *self.more)


def secret_path(model_path: str | Path) -> Path:
    """Where the secret of ``model_path`` lives: ``MODEL.pt2.wmkey``."""
    p = Path(model_path)
    return p.with_name(p.name + SECRET_SUFFIX)


def write_secret(path: str | Path, secret: WatermarkSecret) -> Path:
    """Write the sidecar atomically, durably, with mode 0600."""
    return write_secret_file(path, secret.key.secret, secret.sets)


def read_secret(path: str | Path) -> WatermarkSecret:
    """Read a sidecar (:func:`core.secretfile.read_secret_file` checks it).

    Raises:
        KeyError_: there is no such file. InputError: it is not a well-formed sidecar.
    """
    p = Path(path)
    if not p.is_file():
        raise KeyError_(f"watermark secret {p} does not exist")
    key, probes, more = read_secret_file(p)
    return WatermarkSecret(key=WatermarkKey(key), probes=probes, more=more)
