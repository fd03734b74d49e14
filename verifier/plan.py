"""The query plan: which probes to send, among which decoys, in which order and batches.

A :class:`QueryPlan` takes unspent probes from each committed probe set
(round-robin up to the budget, from a fresh secret permutation), mixes them
with decoys (ordinary in-distribution inputs, so that a suspect cannot tell
verification queries by their look or their order), and lays them out in
decision groups: each group's probes and decoys are shuffled together with a
fresh random seed and cut into batches (requests) of at most ``batch_size``
inputs. The decoys are ``--decoys FILE.npz`` (its test split), else the named
models' own recorded data: inputs of the same shape that the model's users
would send.

Probes are the scarce resource: every probe sent is spent for good. A
sequential plan (:meth:`QueryPlan.for_session`) therefore puts in its first
group exactly the probes a perfect copy needs to reach alpha
(:func:`first_decision`: 7 with 10 classes at ``1e-6``, 10 at ``1e-9``), and
after that groups of :data:`FOLLOW_UP_PROBES`, so that an innocent suspect,
which the futility rule of :mod:`verifier.futility` rules out after about 10 to 20
probes, is not sent a large batch it does not need. The session that sends a
plan is :mod:`verifier.session`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.canonical import b64e
from core.errors import InputError
from core.probeset import ProbeSet
from verifier.stats import Mode, TestInput, compute_statistics
from verifier.transcript import DECOY

__all__ = ["FOLLOW_UP_PROBES", "PlanItem", "ProbeSource", "QueryPlan", "first_decision"]

FOLLOW_UP_PROBES = 4  # probes per decision group after the first (see the module docstring)


@dataclass(frozen=True, eq=False)
class ProbeSource:
    """One committed probe set to test, and which of its probes may be sent.

    Attributes:
        model: the registered model the probes belong to.
        probes: the (secret) probe set.
        indices: probes that may be sent (the unspent ones).
        probeset_id: its id in the registry, when it came from one.
    """

    model: str
    probes: ProbeSet
    indices: tuple[int, ...]
    probeset_id: int | None = None

    def describe(self) -> dict[str, Any]:
        """Public description (no inputs, labels or salts)."""
        s = self.probes.summary()
        return {
            "model": self.model,
            "probeset_id": self.probeset_id,
            "kind": s["kind"],
            "scheme": s["scheme"],
            "size": s["size"],
            "num_classes": s["num_classes"],
            "input_shape": s["input_shape"],
            "null": s["null"],
            "root": b64e(self.probes.root),
            "unspent": len(self.indices),
        }


def _round_robin(queues: Sequence[Sequence[int]], budget: int) -> list[int]:
    """Source of each planned probe: round-robin over ``queues`` (by length) up to ``budget``."""
    left = [len(q) for q in queues]
    order: list[int] = []
    while len(order) < budget and any(left):
        for si in range(len(left)):
            if left[si] and len(order) < budget:
                order.append(si)
                left[si] -= 1
    return order


def _group_sizes(total: int, first: int, step: int) -> list[int]:
    """``total`` probes cut into a first group of ``first`` and later ones of ``step``."""
    sizes = [min(first, total)]
    while sum(sizes) < total:
        sizes.append(min(step, total - sum(sizes)))
    return sizes


def first_decision(
    sources: Sequence[ProbeSource], *, budget: int, alpha: float, models: Sequence[str] | None = None
) -> int | None:
    """Probes after which a perfect copy would reach ``alpha``, in round-robin plan order; None if never.

    This is the size of a sequential plan's first group: an exact copy is
    decided by the first batch, and no probe more than it needs is spent.
    """
    order = _round_robin([s.indices for s in sources], budget)
    positions: list[list[int]] = [[] for _ in sources]
    for t, si in enumerate(order, start=1):
        positions[si].append(t)
    tests = [
        TestInput(s.model, s.probes.kind, s.probes.null, (True,) * len(p), tuple(p), len(s.indices),
                  indices=tuple(s.indices[: len(p)]))
        for s, p in zip(sources, positions, strict=True)
    ]
    names = models if models is not None else [s.model for s in sources]
    st = compute_statistics(tests, alpha=alpha, mode="sequential", models=names)
    reached = [m.reached_at for m in st.models if m.reached_at is not None]
    return min(reached, default=None)


@dataclass(frozen=True)
class PlanItem:
    """One input of the plan: probe ``index`` of source ``source``, or decoy ``index`` (source -1)."""

    source: int
    index: int


@dataclass(frozen=True)
class QueryPlan:
    """Batches of shuffled probes and decoys, fixed before the first query."""

    batches: tuple[tuple[PlanItem, ...], ...]
    seed: bytes

    @classmethod
    def build(
        cls,
        sources: Sequence[ProbeSource],
        *,
        decoy_count: int,
        budget: int,
        batch_size: int,
        decoy_ratio: float = 1.0,
        seed: bytes | None = None,
        first: int | None = None,
        step: int | None = None,
    ) -> QueryPlan:
        """Draw up to ``budget`` probes round-robin over ``sources``, mix in decoys, batch.

        Args:
            sources: the probe sets and their unspent probes.
            decoy_count: decoys to draw from (indices ``0..decoy_count - 1``).
            budget: most probes to plan.
            batch_size: most inputs (probes and decoys) per request.
            decoy_ratio: decoys per probe.
            seed: the plan's secret seed (default: fresh random bytes).
            first: probes in the first decision group; ``None``: one group of all.
            step: probes in each later group (default: ``first``).

        Raises:
            InputError: no sources, no unspent probes, a bad budget, batch or group size.
        """
        if not sources:
            raise InputError("no probe sets to verify with", hint="register a model with a watermark")
        if budget < 1:
            raise InputError(f"budget must be at least 1, got {budget}")
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        if decoy_ratio < 0:
            raise InputError("decoy ratio must be >= 0")
        if decoy_ratio > 0 and decoy_count < 1:
            raise InputError("decoys were asked for but none were given")
        if (first is not None and first < 1) or (step is not None and step < 1):
            raise InputError("decision groups need at least one probe each")
        seed = seed if seed is not None else secrets.token_bytes(16)
        rng = np.random.default_rng(np.frombuffer(hashlib.sha256(seed).digest(), dtype=np.uint32))
        queues = [list(rng.permutation(np.asarray(s.indices, dtype=np.int64))) for s in sources]
        if not any(queues):
            raise InputError("every probe of the named models is already spent",
                             hint="commit a new watermark or fingerprint")
        probes = [PlanItem(si, int(queues[si].pop(0))) for si in _round_robin(queues, budget)]
        sizes = [len(probes)] if first is None else _group_sizes(len(probes), first, step or first)
        batches: list[tuple[PlanItem, ...]] = []
        start = 0
        for size in sizes:
            group = probes[start : start + size]
            start += size
            n_decoys = round(decoy_ratio * len(group))
            decoys = [PlanItem(DECOY, int(i)) for i in rng.integers(0, max(decoy_count, 1), n_decoys)]
            items = group + decoys
            shuffled = [items[int(i)] for i in rng.permutation(len(items))]
            batches += [tuple(shuffled[i : i + batch_size]) for i in range(0, len(shuffled), batch_size)]
        return cls(batches=tuple(batches), seed=seed)

    @classmethod
    def for_session(
        cls,
        sources: Sequence[ProbeSource],
        *,
        mode: Mode,
        alpha: float,
        models: Sequence[str] | None = None,
        decoy_count: int,
        budget: int,
        batch_size: int,
        decoy_ratio: float = 1.0,
        seed: bytes | None = None,
    ) -> QueryPlan:
        """The plan ``wm verify`` uses: decision groups sized for the mode.

        Sequential: a first group of :func:`first_decision` probes, then groups
        of :data:`FOLLOW_UP_PROBES`. Fixed: one group (everything is sent anyway).

        Raises:
            InputError: as :meth:`build`.
        """
        first = step = None
        if mode == "sequential":
            step = FOLLOW_UP_PROBES
            first = first_decision(sources, budget=budget, alpha=alpha, models=models) or step
        return cls.build(sources, decoy_count=decoy_count, budget=budget, batch_size=batch_size,
                         decoy_ratio=decoy_ratio, seed=seed, first=first, step=step)

    def to_json(self) -> list[list[list[int]]]:
        """``[[[source, index], ...], ...]`` per batch."""
        return [[[it.source, it.index] for it in b] for b in self.batches]

    @classmethod
    def from_json(cls, batches: Any, seed: bytes) -> QueryPlan:
        """Inverse of :meth:`to_json`."""
        try:
            return cls(
                batches=tuple(tuple(PlanItem(int(s), int(i)) for s, i in b) for b in batches),
                seed=seed,
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"transcript plan is malformed: {exc}") from exc
