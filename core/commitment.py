"""The commitment to a probe set: salted Merkle leaves, and openings anyone can check.

A probe set's commitment is the RFC 6962 Merkle root (:mod:`core.merkle`) over
one salted leaf per probe. The leaf data of probe ``i`` is the RFC 8785
canonical JSON of::

    {"index": i, "input": base64(float32 little-endian bytes, C order),
     "label": y_i, "salt": base64(32 secret bytes), "shape": [C, H, W],
     "type": "wm.probe/v1"}

The salt keeps unopened probes hidden behind the root: a suspect that sees the
root cannot test candidate inputs against it. In a dispute only the probes
that were sent are opened, each with its inclusion proof (RFC 9162 section
2.1.3); anyone checks an opening with :meth:`ProbeOpening.verify`. Torch-free,
so the offline evidence checker uses it without loading an ML stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core import merkle
from core.canonical import b64d, b64e, canonical_json
from core.errors import InputError, IntegrityError

__all__ = ["PROBE_LEAF_TYPE", "SALT_SIZE", "ProbeOpening", "probe_leaf"]

PROBE_LEAF_TYPE = "wm.probe/v1"
SALT_SIZE = 32


def probe_leaf(index: int, x: np.ndarray, label: int, salt: bytes) -> bytes:
    """The canonical leaf data of one probe (see the module docstring)."""
    arr = np.ascontiguousarray(x, dtype="<f4")
    return canonical_json(
        {
            "index": int(index),
            "input": b64e(arr.tobytes()),
            "label": int(label),
            "salt": b64e(salt),
            "shape": [int(s) for s in arr.shape],
            "type": PROBE_LEAF_TYPE,
        }
    )


@dataclass(frozen=True)
class ProbeOpening:
    """One probe revealed from a committed set, with its inclusion proof."""

    index: int
    input: np.ndarray
    label: int
    salt: bytes
    tree_size: int
    proof: tuple[bytes, ...]

    def leaf_data(self) -> bytes:
        """The committed leaf data this opening claims."""
        return probe_leaf(self.index, self.input, self.label, self.salt)

    def verify(self, root: bytes) -> None:
        """Raise :class:`IntegrityError` unless this probe is committed under ``root``."""
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(self.leaf_data()), self.index, self.tree_size, self.proof, root
            )
        except IntegrityError as exc:
            raise IntegrityError(f"probe {self.index} does not open against the commitment: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON form for evidence bundles."""
        arr = np.ascontiguousarray(self.input, dtype="<f4")
        return {
            "index": self.index,
            "input": b64e(arr.tobytes()),
            "shape": list(arr.shape),
            "label": self.label,
            "salt": b64e(self.salt),
            "tree_size": self.tree_size,
            "proof": [b64e(p) for p in self.proof],
        }

    @classmethod
    def from_dict(cls, d: Any) -> ProbeOpening:
        """Parse the JSON form strictly; :class:`InputError` if malformed."""
        if not isinstance(d, dict):
            raise InputError("a probe opening is a JSON object")
        try:
            shape = tuple(_int(s, "shape") for s in d["shape"])
            raw = b64d(d["input"], what="probe input")
            arr = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
            proof = d["proof"]
            if not isinstance(proof, list):
                raise InputError("its proof is not a list")
            return cls(
                index=_int(d["index"], "index"),
                input=arr,
                label=_int(d["label"], "label"),
                salt=b64d(d["salt"], what="probe salt"),
                tree_size=_int(d["tree_size"], "tree size"),
                proof=tuple(b64d(p, what="proof hash") for p in proof),
            )
        except (KeyError, TypeError, ValueError, InputError) as exc:
            raise InputError(f"malformed probe opening: {exc}") from exc


def _int(value: Any, what: str) -> int:
    """``value`` if it is a JSON integer (not a bool, float or string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"its {what} is not an integer")
    return value
