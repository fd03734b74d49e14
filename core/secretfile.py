"""The one reader and writer of the watermark secret sidecar's format.

``MODEL.pt2.wmkey`` (file mode 0600) is RFC 8785 canonical JSON::

    {"type": "wm.watermark-secret/v1", "key": base64(32 bytes), "scheme": str,
     "probeset": base64(ProbeSet.to_bytes()),
     "more": [base64(ProbeSet.to_bytes()), ...]}     # only when trained with A+B

``watermark`` writes it (``wm train``) and reads it back as a
:class:`watermark.WatermarkSecret`; ``registry`` reads it to seal the key and
commit the sets (``wm register``). Both call :func:`read_secret_file`, so a
sidecar one accepts the other accepts too. Errors name the file and what is
wrong with it, never its content.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.canonical import b64d, b64e, canonical_json, parse_json
from core.errors import InputError
from core.files import write_private

if TYPE_CHECKING:  # the registry imports this module; reading a sidecar needs torch, loading it must not
    from core.probeset import ProbeSet

__all__ = ["SECRET_KEY_SIZE", "SECRET_SUFFIX", "SECRET_TYPE", "read_secret_file", "write_secret_file"]

SECRET_TYPE = "wm.watermark-secret/v1"
SECRET_SUFFIX = ".wmkey"
SECRET_KEY_SIZE = 32


def write_secret_file(path: str | Path, key: bytes, sets: tuple[ProbeSet, ...]) -> Path:
    """Write the sidecar for ``key`` and its probe sets (first one first), atomically, mode 0600."""
    if not sets:
        raise InputError("a watermark secret holds at least one probe set")
    first, *more = sets
    data = canonical_json(
        {
            "type": SECRET_TYPE,
            "key": b64e(key),
            "scheme": first.scheme,
            "probeset": b64e(first.to_bytes()),
            **({"more": [b64e(s.to_bytes()) for s in more]} if more else {}),
        }
    )
    return write_private(Path(path), data)


def read_secret_file(path: str | Path) -> tuple[bytes, ProbeSet, tuple[ProbeSet, ...]]:
    """Key, first probe set and further sets of a sidecar, read and checked once.

    Raises:
        InputError: unreadable, not a sidecar, or malformed (a field missing or of the
            wrong type, a key that is not 32 bytes, a scheme that is not its set's).
    """
    from core.probeset import ProbeSet

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read watermark secret {p}: {exc.strerror}") from exc
    try:
        doc = parse_json(raw, what=str(p))
    except InputError as exc:
        raise InputError(f"watermark secret {p} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("type") != SECRET_TYPE:
        raise InputError(f"{p} is not a {SECRET_TYPE} file")
    if not isinstance(doc.get("key"), str) or not isinstance(doc.get("probeset"), str):
        raise InputError(f"watermark secret {p} lacks its key or probe set")
    key = b64d(doc["key"], what="watermark key")
    if len(key) != SECRET_KEY_SIZE:
        raise InputError(f"watermark secret {p}: its key is not {SECRET_KEY_SIZE} bytes")
    probeset = ProbeSet.from_bytes(b64d(doc["probeset"], what="probe set"))
    if "scheme" in doc and doc["scheme"] != probeset.scheme:
        raise InputError(f"watermark secret {p}: scheme differs from its probe set's")
    more = doc.get("more", [])
    if not isinstance(more, list) or not all(isinstance(m, str) for m in more):
        raise InputError(f"watermark secret {p}: its further probe sets are malformed")
    return key, probeset, tuple(ProbeSet.from_bytes(b64d(m, what="probe set")) for m in more)
