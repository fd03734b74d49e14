"""``ProbeSet``: what a watermark, a fingerprint and the guard all produce.

A probe set is a list of inputs, the label the owner's model gives each, and a
*null model* saying how often an independent model gives that label by chance
(see DESIGN.md, "The shared concept: ProbeSet"). Its **commitment** is the
RFC 6962 Merkle root (:mod:`core.merkle`) over one salted leaf per probe. The
leaf data of probe ``i`` is the RFC 8785 canonical JSON of::

    {"index": i, "input": base64(float32 little-endian bytes, C order),
     "label": y_i, "salt": base64(32 secret bytes), "shape": [C, H, W],
     "type": "wm.probe/v1"}

The salt keeps unopened probes hidden behind the root: a suspect that sees the
root cannot test candidate inputs against it. In a dispute only the probes
that were sent are opened (:meth:`ProbeSet.open`), each with its inclusion
proof; anyone checks an opening with :meth:`ProbeOpening.verify`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, Union

import numpy as np
import torch
from scipy import stats

from core import merkle
from core.canonical import b64d, b64e, canonical_json
from core.errors import InputError, IntegrityError
from core.inputrange import UNIT, InputRange

__all__ = [
    "PROBE_LEAF_TYPE",
    "BetaBinomial",
    "Binomial",
    "Kind",
    "Null",
    "ProbeOpening",
    "ProbeSet",
    "null_from_dict",
    "probe_leaf",
]

Kind = Literal["watermark", "fingerprint", "guard"]
KINDS: tuple[str, ...] = ("watermark", "fingerprint", "guard")
PROBE_LEAF_TYPE = "wm.probe/v1"
SALT_SIZE = 32


@dataclass(frozen=True)
class Binomial:
    """Exact null: each probe matches with probability ``p0`` independently.

    Holds for key-random labels (watermarks, guard marks): over the key's
    randomness an independent model matches each probe with probability
    exactly ``1/C``, whatever it predicts.
    """

    p0: float
    family: ClassVar[str] = "binomial"

    def __post_init__(self) -> None:
        if not 0.0 < self.p0 < 1.0:
            raise InputError(f"binomial null needs 0 < p0 < 1, got {self.p0}")

    def tail(self, matches: int, n: int) -> float:
        """``P(X >= matches)`` for ``X ~ Binomial(n, p0)``."""
        if matches <= 0:
            return 1.0
        return float(stats.binom.sf(matches - 1, n, self.p0))

    @property
    def mean(self) -> float:
        """Expected match rate of an independent model."""
        return self.p0

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored and signed."""
        return {"family": self.family, "p0": self.p0}


@dataclass(frozen=True)
class BetaBinomial:
    """Calibrated null: an independent model's match rate ``p ~ Beta(a, b)``.

    Fitted on ``references`` held-out independent models. ``p_floor`` is the
    smallest p-value that calibration honestly supports (with N references no
    tail beyond what N models can vouch for); :meth:`tail` never reports less.
    """

    a: float
    b: float
    references: int
    p_floor: float
    family: ClassVar[str] = "beta-binomial"

    def __post_init__(self) -> None:
        if not (self.a > 0 and self.b > 0 and math.isfinite(self.a) and math.isfinite(self.b)):
            raise InputError(f"beta-binomial null needs a, b > 0, got a={self.a}, b={self.b}")
        if self.references < 1:
            raise InputError("beta-binomial null needs at least one reference model")
        if not 0.0 < self.p_floor <= 1.0:
            raise InputError(f"beta-binomial p_floor must be in (0, 1], got {self.p_floor}")

    def tail(self, matches: int, n: int) -> float:
        """``max(P(X >= matches), p_floor)`` for ``X ~ BetaBinomial(n, a, b)``."""
        if matches <= 0:
            return 1.0
        p = float(stats.betabinom.sf(matches - 1, n, self.a, self.b))
        return max(p, self.p_floor)

    @property
    def mean(self) -> float:
        """Expected match rate of an independent model."""
        return self.a / (self.a + self.b)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored and signed."""
        return {
            "family": self.family,
            "a": self.a,
            "b": self.b,
            "references": self.references,
            "p_floor": self.p_floor,
        }


Null = Union[Binomial, BetaBinomial]


def null_from_dict(d: dict[str, Any]) -> Null:
    """Inverse of ``to_dict`` for either null family."""
    try:
        match d.get("family"):
            case "binomial":
                return Binomial(p0=float(d["p0"]))
            case "beta-binomial":
                return BetaBinomial(
                    a=float(d["a"]),
                    b=float(d["b"]),
                    references=int(d["references"]),
                    p_floor=float(d["p_floor"]),
                )
            case other:
                raise InputError(f"unknown null model family {other!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed null model: {exc}") from exc


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
    def from_dict(cls, d: dict[str, Any]) -> ProbeOpening:
        """Parse the JSON form; :class:`InputError` if malformed."""
        try:
            shape = tuple(int(s) for s in d["shape"])
            raw = b64d(d["input"], what="probe input")
            arr = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
            return cls(
                index=int(d["index"]),
                input=arr,
                label=int(d["label"]),
                salt=b64d(d["salt"], what="probe salt"),
                tree_size=int(d["tree_size"]),
                proof=tuple(b64d(p, what="proof hash") for p in d["proof"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed probe opening: {exc}") from exc


@dataclass(frozen=True, eq=False)
class ProbeSet:
    """Inputs, expected labels and a null model, committed by a Merkle root.

    Attributes:
        inputs: float32 tensor ``[n, C, H, W]``.
        expected: int64 tensor ``[n]``, the owner's label for each input.
        kind: ``"watermark"``, ``"fingerprint"`` or ``"guard"``.
        scheme: canonical scheme name with every parameter that shaped it,
            for example ``trigger-set:n=100:pattern=noise``.
        null: how often an independent model matches by chance.
        num_classes: the number of classes ``C`` of the task.
        salts: one secret 32-byte salt per probe.
        input_range: where the model's inputs lie; made probes (watermark,
            fingerprint) lie in it, guard probes are whatever clients sent.
    """

    inputs: torch.Tensor
    expected: torch.Tensor
    kind: Kind
    scheme: str
    null: Null
    num_classes: int
    salts: tuple[bytes, ...] = field(repr=False)
    input_range: InputRange = UNIT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown probe set kind {self.kind!r}; expected one of {KINDS}")
        if self.inputs.dtype != torch.float32 or self.inputs.ndim < 2:
            raise InputError("probe inputs must be a float32 tensor [n, ...]")
        n = self.inputs.shape[0]
        if self.expected.dtype != torch.int64 or tuple(self.expected.shape) != (n,):
            raise InputError(f"expected labels must be an int64 tensor of shape [{n}]")
        if n == 0:
            raise InputError("a probe set needs at least one probe")
        if len(self.salts) != n or any(len(s) != SALT_SIZE for s in self.salts):
            raise InputError(f"a probe set needs one {SALT_SIZE}-byte salt per probe")
        if self.num_classes < 2:
            raise InputError("a probe set needs at least two classes")
        if int(self.expected.min()) < 0 or int(self.expected.max()) >= self.num_classes:
            raise InputError(f"expected labels must lie in [0, {self.num_classes})")
        if not bool(torch.isfinite(self.inputs).all()):
            raise InputError("probe inputs contain NaN or infinity")
        if not isinstance(self.input_range, InputRange):
            raise InputError("a probe set's input_range must be an InputRange")
        if self.kind != "guard" and not self.input_range.contains(self.inputs.numpy()):
            raise InputError(f"{self.kind} probes must lie in the input range "
                             f"[{self.input_range.low:g}, {self.input_range.high:g}]")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(int(s) for s in self.inputs.shape[1:])

    def leaf_data(self, index: int) -> bytes:
        """The committed leaf data of probe ``index``."""
        return probe_leaf(
            index, self.inputs[index].numpy(), int(self.expected[index]), self.salts[index]
        )

    @cached_property
    def leaf_hashes(self) -> tuple[bytes, ...]:
        """RFC 6962 leaf hashes of every probe, in order."""
        return tuple(merkle.leaf_hash(self.leaf_data(i)) for i in range(len(self)))

    @cached_property
    def root(self) -> bytes:
        """The commitment: Merkle root over the salted probes."""
        return merkle.root_from_hashes(self.leaf_hashes)

    def open(self, indices: Iterable[int]) -> list[ProbeOpening]:
        """Reveal the given probes, each with its inclusion proof against :attr:`root`."""
        out = []
        for i in indices:
            if not 0 <= i < len(self):
                raise InputError(f"probe index {i} outside a set of {len(self)}")
            out.append(
                ProbeOpening(
                    index=int(i),
                    input=self.inputs[i].numpy().copy(),
                    label=int(self.expected[i]),
                    salt=self.salts[i],
                    tree_size=len(self),
                    proof=tuple(merkle.inclusion_proof(self.leaf_hashes, int(i))),
                )
            )
        return out

    def match_count(self, predicted: Sequence[int] | torch.Tensor) -> int:
        """How many predictions equal the expected labels."""
        pred = torch.as_tensor(predicted, dtype=torch.int64)
        return int((pred == self.expected).sum())

    def summary(self) -> dict[str, Any]:
        """Public description, safe to log and sign: no inputs, labels or salts."""
        return {
            "kind": self.kind,
            "scheme": self.scheme,
            "size": len(self),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "null": self.null.to_dict(),
            "root": self.root.hex(),
            "input_range": self.input_range.to_dict(),
        }

    def to_bytes(self) -> bytes:
        """Secret serialisation (inputs, labels, salts and metadata); encrypt before storing."""
        buf = io.BytesIO()
        np.savez(
            buf,
            inputs=self.inputs.numpy(),
            expected=self.expected.numpy(),
            salts=np.frombuffer(b"".join(self.salts), dtype=np.uint8),
            meta=np.frombuffer(
                canonical_json(
                    {
                        "kind": self.kind,
                        "scheme": self.scheme,
                        "null": self.null.to_dict(),
                        "num_classes": self.num_classes,
                        "input_range": self.input_range.to_dict(),
                    }
                ),
                dtype=np.uint8,
            ),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProbeSet:
        """Inverse of :meth:`to_bytes`; :class:`InputError` if malformed."""
        import json

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                salts_raw = z["salts"].tobytes()
                return cls(
                    inputs=torch.from_numpy(z["inputs"].astype(np.float32)),
                    expected=torch.from_numpy(z["expected"].astype(np.int64)),
                    kind=meta["kind"],
                    scheme=meta["scheme"],
                    null=null_from_dict(meta["null"]),
                    num_classes=int(meta["num_classes"]),
                    salts=tuple(
                        salts_raw[i : i + SALT_SIZE] for i in range(0, len(salts_raw), SALT_SIZE)
                    ),
                    # sets serialised before ranges were recorded were all made in [0, 1]
                    input_range=InputRange.from_dict(meta["input_range"]) if "input_range" in meta
                    else UNIT,
                )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"malformed probe set: {exc}") from exc
