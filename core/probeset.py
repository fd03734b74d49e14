"""``ProbeSet``: what a watermark, a fingerprint and the guard all produce.

A probe set is a list of inputs, the label the owner's model gives each, and a
*null model* saying how often an independent model gives that label by chance
(see DESIGN.md, "The shared concept: ProbeSet"). Its **commitment** is the
Merkle root over one salted leaf per probe (:mod:`core.commitment`); in a
dispute only the probes that were sent are opened (:meth:`ProbeSet.open`).

A probe set with key-random labels also carries a per-set **derivation key**
(secret, sealed with the probes) and its public :class:`~core.derive.Derivation`
descriptor, whose key commitment :meth:`ProbeSet.summary` hands to the registry
to sign: opening the key later lets anyone re-derive the opened probes
(:mod:`core.derive`). The null families live in :mod:`core.nulls` and the
commitment in :mod:`core.commitment` (both torch-free, for the offline
checker); this module re-exports them.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import torch

from core import merkle
from core.canonical import canonical_json
from core.commitment import PROBE_LEAF_TYPE, SALT_SIZE, ProbeOpening, probe_leaf
from core.derive import Derivation
from core.errors import InputError
from core.inputrange import UNIT, InputRange
from core.nulls import (
    SECOND_CHOICE_FAMILIES,
    BetaBinomial,
    Binomial,
    Null,
    answer_rank,
    null_from_dict,
    ranked,
)

__all__ = [
    "PROBE_LEAF_TYPE",
    "SALT_SIZE",
    "SECOND_CHOICE_FAMILIES",
    "BetaBinomial",
    "Binomial",
    "Kind",
    "Null",
    "ProbeOpening",
    "ProbeSet",
    "answer_rank",
    "null_from_dict",
    "probe_leaf",
    "ranked",
]

Kind = Literal["watermark", "fingerprint", "guard"]
KINDS: tuple[str, ...] = ("watermark", "fingerprint", "guard")


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
        derivation: for key-random labels, how the probes follow from the
            derivation key (public; its key commitment is signed at registration).
        derivation_key: that key (secret, sealed with the probes).
    """

    inputs: torch.Tensor
    expected: torch.Tensor
    kind: Kind
    scheme: str
    null: Null
    num_classes: int
    salts: tuple[bytes, ...] = field(repr=False)
    input_range: InputRange = UNIT
    derivation: Derivation | None = None
    derivation_key: bytes | None = field(default=None, repr=False)

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
        if (self.derivation is None) != (self.derivation_key is None):
            raise InputError("a derivation descriptor and its key go together")
        if self.derivation is not None and not self.derivation.opens_with(self.derivation_key or b""):
            raise InputError("the derivation key does not match its commitment")

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

    @property
    def rank(self) -> int:
        """1: a probe is answered by the suspect's label; 2: by its second choice (:func:`answer_rank`)."""
        return answer_rank(self.scheme)

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
            "derivation": self.derivation.to_dict() if self.derivation is not None else None,
        }

    def to_bytes(self) -> bytes:
        """Secret serialisation (inputs, labels, salts and metadata); encrypt before storing."""
        meta = {
            "kind": self.kind,
            "scheme": self.scheme,
            "null": self.null.to_dict(),
            "num_classes": self.num_classes,
            "input_range": self.input_range.to_dict(),
            "derivation": None if self.derivation is None else self.derivation.to_dict(),
        }
        arrays: dict[str, np.ndarray] = {
            "inputs": self.inputs.numpy(),
            "expected": self.expected.numpy(),
            "salts": np.frombuffer(b"".join(self.salts), dtype=np.uint8),
            "meta": np.frombuffer(canonical_json(meta), dtype=np.uint8),
        }
        if self.derivation_key is not None:
            arrays["derivation_key"] = np.frombuffer(self.derivation_key, dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # the stub types allow_pickle as a kwarg
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProbeSet:
        """Inverse of :meth:`to_bytes`; :class:`InputError` if malformed."""
        import json

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                salts_raw = z["salts"].tobytes()
                derivation = meta.get("derivation")
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
                    derivation=None if derivation is None else Derivation.from_dict(derivation),
                    derivation_key=z["derivation_key"].tobytes() if "derivation_key" in z else None,
                )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"malformed probe set: {exc}") from exc
