"""From an owner model to a fingerprint with a model-level conformal null, on a reference zoo.

For the selection schemes (:class:`~fingerprint.akh.AKH`, :class:`~fingerprint.sac.SAC`):

1. ``generation`` references from the zoo (seed stream ``generation``)
   help choose the probes from the owner's pool;
2. ``references`` others (seed stream ``null``, disjoint) score them, and
   their per-probe matches, digests and recipe become the probe set's
   :class:`~core.nulls.Conformal` null (:mod:`fingerprint.conformal`),
   committed with it.

All references train on the reference data (disjoint from the owner's and
the attacker's where the task has such a split) with the recipe(s) given,
the owner's architecture among them; the zoo caches them across models of
the same data.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from core.errors import InputError
from core.inputrange import UNIT, InputRange
from core.nulls import Conformal
from core.probeset import ProbeSet
from fingerprint.akh import Selection
from fingerprint.build import probe_salts
from fingerprint.conformal import conformal_null
from fingerprint.zoo import ReferenceZoo, ZooModel, ZooRecipe, zoo_seeds

__all__ = ["SelectionScheme", "ZooFingerprint", "build_zoo_fingerprint", "zoo_references"]

ProgressFn = Callable[[str, int, int], None]
Model = Callable[[torch.Tensor], torch.Tensor]


class SelectionScheme(Protocol):
    """A fingerprint scheme that picks its probes with generation references."""

    @property
    def name(self) -> str: ...

    def select(self, owner: Model, references: Sequence[Model], pool_x: torch.Tensor,
               pool_y: torch.Tensor) -> Selection: ...


@dataclass(frozen=True, eq=False)
class ZooFingerprint:
    """A fingerprint, its conformal null, and the references behind both.

    ``cpu_s`` is the CPU time of everything this call did (references
    trained now, selection, scoring); cached references cost nothing.
    """

    probes: ProbeSet
    null: Conformal
    selection: Selection
    generation: tuple[ZooModel, ...] = field(repr=False)
    references: tuple[ZooModel, ...] = field(repr=False)
    cpu_s: float = 0.0


def zoo_references(zoo: ReferenceZoo, recipes: Sequence[ZooRecipe], count: int, stream: str, *,
                   workers: int = 1, progress: Callable[[int, int], None] | None = None,
                   ray_address: str | None = None) -> list[ZooModel]:
    """``count`` references of stream ``stream``, spread over ``recipes`` (the first gets the rest)."""
    if not recipes:
        raise InputError("name at least one reference recipe")
    per = [count // len(recipes)] * len(recipes)
    per[0] += count - sum(per)
    out: list[ZooModel] = []
    for r, k in zip(recipes, per, strict=True):
        if k:
            out += zoo.models(r, zoo_seeds(f"{stream}:{r.name}", k), workers=workers,
                              progress=progress, ray_address=ray_address)
    return out


def build_zoo_fingerprint(
    owner: Model,
    scheme: SelectionScheme,
    *,
    owner_arch: str | None,
    pool_x: torch.Tensor,
    pool_y: torch.Tensor,
    zoo: ReferenceZoo,
    recipes: Sequence[ZooRecipe],
    references: int = 99,
    generation: int = 10,
    input_range: InputRange = UNIT,
    salt_key: bytes | None = None,
    workers: int = 1,
    progress: ProgressFn | None = None,
    ray_address: str | None = None,
) -> ZooFingerprint:
    """Choose the probes with ``generation`` references and commit ``references`` others as the null.

    Args:
        owner: the owner's model (eval mode).
        scheme: how probes are chosen (AKH, SAC).
        owner_arch: the owner's architecture; when known, a recipe of it must be among ``recipes``.
        pool_x: inputs the owner holds, probes are chosen from them.
        pool_y: their true labels.
        zoo: the reference zoo of the reference data.
        recipes: how references are trained (the owner's architecture first).
        references: ``K``, the null's reference count (floor ``1/(K+1)`` per architecture group).
        generation: references that help choose the probes.
        input_range: where the inputs lie.
        salt_key: see :func:`fingerprint.build.probe_salts`.
        workers: parallel training processes.
        progress: called with ``(stage, done, total)``.
        ray_address: train missing references as Ray tasks there (:mod:`fingerprint.zoo`).

    Raises:
        InputError: bad counts, or the owner's architecture missing from ``recipes``.
        DataError: the pool yields too few probes.
    """
    if references < 1 or generation < 1:
        raise InputError("need at least one generation and one null reference")
    if owner_arch is not None and owner_arch not in {r.arch for r in recipes}:
        raise InputError(f"the references must include the owner's architecture {owner_arch}")
    t0 = _cpu()

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda d, t: progress(name, d, t))

    gen = zoo_references(zoo, recipes[:1], generation, "generation", workers=workers,
                         progress=stage("generation references"), ray_address=ray_address)
    sel = scheme.select(owner, [m.module for m in gen], pool_x, pool_y)
    refs = zoo_references(zoo, recipes, references, "null", workers=workers,
                          progress=stage("null references"), ray_address=ray_address)
    null = conformal_null(refs, sel.inputs, sel.labels, data=zoo.data)
    probes = ProbeSet(inputs=sel.inputs, expected=sel.labels, kind="fingerprint", scheme=scheme.name,
                      null=null, num_classes=zoo.num_classes,
                      salts=probe_salts(len(sel.labels), salt_key), input_range=input_range)
    return ZooFingerprint(probes=probes, null=null, selection=sel, generation=tuple(gen),
                          references=tuple(refs), cpu_s=_cpu() - t0)


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the training workers)."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime
