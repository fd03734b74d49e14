"""The watermark secret sidecar written beside a model by ``wm train``.

``MODEL.pt2.wmkey`` (file mode 0600) holds the 32-byte watermark key and the
secret probe set, as RFC 8785 JSON::

    {"type": "wm.watermark-secret/v1", "key": base64, "scheme": str,
     "probeset": base64(ProbeSet.to_bytes())}

``wm register`` moves both into the registry, encrypted under the owner key.
Anyone holding this file can open or evade the watermark: keep it private.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.canonical import b64d, b64e, canonical_json, parse_json
from core.errors import InputError, KeyError_
from core.files import write_private
from core.probeset import ProbeSet
from watermark.keys import WatermarkKey

__all__ = ["SECRET_SUFFIX", "WatermarkSecret", "read_secret", "secret_path", "write_secret"]

SECRET_TYPE = "wm.watermark-secret/v1"
SECRET_SUFFIX = ".wmkey"


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
    p = Path(path)
    data = canonical_json(
        {
            "type": SECRET_TYPE,
            "key": b64e(secret.key.secret),
            "scheme": secret.probes.scheme,
            "probeset": b64e(secret.probes.to_bytes()),
            **({"more": [b64e(p.to_bytes()) for p in secret.more]} if secret.more else {}),
        }
    )
    return write_private(p, data)


def read_secret(path: str | Path) -> WatermarkSecret:
    """Read a sidecar; :class:`InputError` / :class:`KeyError_` if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise KeyError_(f"watermark secret {p} does not exist")
    d = parse_json(p.read_bytes(), what=str(p))
    if not isinstance(d, dict) or d.get("type") != SECRET_TYPE:
        raise InputError(f"{p} is not a wm watermark secret")
    try:
        key = WatermarkKey(b64d(d["key"], what="watermark key"))
        probes = ProbeSet.from_bytes(b64d(d["probeset"], what="probe set"))
        more = d.get("more", [])
        if not isinstance(more, list) or not all(isinstance(m, str) for m in more):
            raise InputError(f"{p}: its further probe sets are malformed")
        extra = tuple(ProbeSet.from_bytes(b64d(m, what="probe set")) for m in more)
    except KeyError as exc:
        raise InputError(f"{p} lacks the field {exc.args[0]!r}") from exc
    return WatermarkSecret(key=key, probes=probes, more=extra)
