"""From an owner model and its data to a calibrated CAE fingerprint ``ProbeSet``.

The whole of Lukas, Zhang, Kerschbaum (ICLR 2021), Sections 4-5, in one call:
train (or load) the generation ensembles, optimise conferrable examples
(:mod:`fingerprint.cae`), keep the most conferrable, then train (or load) a
*disjoint* calibration set of surrogates and references, measure how often
each matches the fingerprint, and fit the conservative null on the held-out
references (:mod:`fingerprint.calibrate`). The probe set's null is a
:class:`core.nulls.Conformal`: the held-out references' per-probe matches and
weight digests, grouped as the calibration groups them, with the
conservative beta-binomial envelope as its parametric figure, so that the
verifier reports the conformal p-value beside it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.errors import InputError
from core.modelio import weights_digest
from core.nulls import Conformal
from core.probeset import SALT_SIZE, ProbeSet
from fingerprint.cae import ConferrableExamples
from fingerprint.calibrate import Calibration, calibrate_null, match_counts
from fingerprint.conformal import match_bits, pack_bits
from fingerprint.ensembles import (
    Member,
    MemberSpec,
    data_digest,
    default_archs,
    plan_members,
    train_members,
)

__all__ = ["EnsembleConfig", "Fingerprint", "build_fingerprint", "probe_salts"]

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EnsembleConfig:
    """How many models of which architectures make the ensembles.

    The same numbers are used for the generation ensembles and, with other
    seeds, for the held-out calibration set.

    Attributes:
        archs: architectures; ``()`` means the owner's own and the base
            architecture of the other family (:func:`default_archs`).
        surrogates: surrogates per architecture (alternately on the owner's
            labels and probabilities).
        references: references per architecture (ground truth).
        epochs: training epochs of every member.
    """

    archs: tuple[str, ...] = ()
    surrogates: int = 4
    references: int = 6
    epochs: int = 30

    def __post_init__(self) -> None:
        if self.surrogates < 1:
            raise InputError(f"need at least 1 surrogate per architecture, got {self.surrogates}")
        if self.references < 2:
            raise InputError(
                f"need at least 2 references per architecture, got {self.references}",
                hint="the null is fitted on held-out references",
            )
        if self.epochs < 1:
            raise InputError(f"epochs must be at least 1, got {self.epochs}")

    def resolve(self, owner_arch: str | None) -> tuple[str, ...]:
        """The architectures used, the owner's included."""
        if self.archs:
            if owner_arch is not None and owner_arch not in self.archs:
                raise InputError(f"the ensembles must include the owner's architecture {owner_arch}")
            return self.archs
        if owner_arch is None:
            raise InputError("the owner's architecture is unknown; name the ensemble architectures")
        return default_archs(owner_arch)


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """A calibrated fingerprint and how it came about.

    Attributes:
        probes: the ``ProbeSet`` (kind ``fingerprint``, null from the calibration).
        calibration: the null fit on held-out references.
        surrogate_matches: held-out surrogates' match counts (the power side).
        conferrability: each probe's conferrability on the generation ensembles.
        history: mean conferrability of all candidates over the optimisation.
        generation: the generation ensemble members' specs.
        held_out: the calibration members' specs.
    """

    probes: ProbeSet
    calibration: Calibration
    surrogate_matches: tuple[int, ...]
    conferrability: torch.Tensor
    history: tuple[tuple[int, float], ...]
    generation: tuple[MemberSpec, ...] = field(repr=False)
    held_out: tuple[MemberSpec, ...] = field(repr=False)


def probe_salts(count: int, salt_key: bytes | None) -> tuple[bytes, ...]:
    """Per-probe commitment salts: HMAC-SHA256(``salt_key``, index), or fresh random bytes.

    Production uses random salts (``salt_key=None``): they hide unopened
    probes behind the commitment and must not be guessable from a seed. A
    fixed ``salt_key`` makes the whole ProbeSet, root included, reproducible.
    """
    if salt_key is None:
        return tuple(os.urandom(SALT_SIZE) for _ in range(count))
    return tuple(
        hmac.new(salt_key, b"wm.fingerprint.salt/v1:" + str(i).encode(), hashlib.sha256).digest()
        for i in range(count)
    )


def _split(members: Sequence[Member]) -> tuple[list[Member], list[Member]]:
    return ([m for m in members if m.spec.role == "surrogate"],
            [m for m in members if m.spec.role == "reference"])


def build_fingerprint(
    owner: nn.Module,
    *,
    owner_arch: str | None,
    owner_digest: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    seeds_x: torch.Tensor,
    seeds_y: torch.Tensor,
    num_classes: int,
    query_x: torch.Tensor | None = None,
    scheme: ConferrableExamples | None = None,
    ensembles: EnsembleConfig | None = None,
    seed: int = 0,
    salt_key: bytes | None = None,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: ProgressFn | None = None,
) -> Fingerprint:
    """Generate and calibrate a CAE fingerprint of ``owner``.

    Args:
        owner: the owner's model in eval mode (an ``nn.Module``).
        owner_arch: its architecture name (``None`` if unknown; then
            ``ensembles.archs`` must be given).
        owner_digest: :func:`core.modelio.weights_digest` of the owner (cache key).
        train_x: the owner's training inputs (references train on them with
            ``train_y``; surrogates on the owner's answers to them).
        train_y: ground-truth labels of ``train_x``.
        seeds_x: where seed inputs are drawn from (those the owner gets right).
        seeds_y: their labels.
        num_classes: class count.
        query_x: what the surrogates (generation and held-out) query the owner
            with (default ``seeds_x``).
        scheme: the CAE parameters (default :class:`ConferrableExamples()`).
        ensembles: ensemble sizes (default :class:`EnsembleConfig()`).
        seed: seeds member training, seed choice and dropout: the same seed
            gives the same inputs and labels, byte for byte.
        salt_key: see :func:`probe_salts` (``None``: random salts).
        cache_dir: where trained members are cached (``None``: no cache).
        workers: parallel training processes.
        progress: called with ``(stage, done, total)``; stages ``generation
            models``, ``held-out models``.

    Raises:
        InputError: inconsistent arguments.
        DataError: fewer than ``scheme.n`` candidates reach the cut-off.
    """
    scheme = scheme or ConferrableExamples()
    cfg = ensembles or EnsembleConfig()
    archs = cfg.resolve(owner_arch)
    if owner.training:
        raise InputError("the owner model must be in eval mode")
    if seeds_x.shape[1:] != train_x.shape[1:]:
        raise InputError("seed inputs and training inputs differ in shape")

    def stage(name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    query = seeds_x if query_x is None else query_x

    def members(split: str, name: str, q: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
                surrogates: int) -> list[Member]:
        specs = plan_members(split=split, seed=seed, archs=archs,  # type: ignore[arg-type]
                             surrogates_per_arch=surrogates,
                             references_per_arch=cfg.references, epochs=cfg.epochs)
        return train_members(specs, owner=owner, owner_digest=owner_digest, train_x=tx,
                             train_y=ty, query_x=q, num_classes=num_classes,
                             cache_dir=cache_dir, workers=workers, progress=stage(name))

    gen = members("generation", "generation models", query, train_x, train_y, cfg.surrogates)
    gs, gr = _split(gen)
    cands = scheme.generate(owner, owner_arch, gs, gr, seeds_x, seeds_y, seed=seed)
    keep = cands.select(scheme.n, scheme.threshold)
    inputs, labels = cands.inputs[keep].contiguous(), cands.labels[keep].contiguous()

    held = members("calibration", "held-out models", query, train_x, train_y, cfg.surrogates)
    hs, hr = _split(held)
    refs: list[tuple[str, Member]] = [(m.spec.arch, m) for m in hr]
    bits = match_bits([m.module for _, m in refs], inputs, labels)
    groups: dict[str, list[int]] = {}
    for (group, _), row in zip(refs, bits, strict=True):
        groups.setdefault(group, []).append(int(row.sum()))
    calibration = calibrate_null(groups, scheme.n, seed=seed)
    null = Conformal(
        a=calibration.null.a, b=calibration.null.b, references=len(refs),
        p_floor=calibration.null.p_floor, size=scheme.n,
        matches=tuple(pack_bits(row) for row in bits),
        models=tuple((g, m.spec.seed, weights_digest(m.module.state_dict())) for g, m in refs),
        recipe=f"cae-held-out:epochs={cfg.epochs};train={data_digest(train_x, train_y)}",
    )
    probes = ProbeSet(
        inputs=inputs, expected=labels, kind="fingerprint", scheme=scheme.name,
        null=null, num_classes=num_classes, salts=probe_salts(scheme.n, salt_key),
    )
    return Fingerprint(
        probes=probes,
        calibration=calibration,
        surrogate_matches=tuple(match_counts([m.module for m in hs], inputs, labels)),
        conferrability=cands.conferrability[keep].clone(),
        history=cands.history,
        generation=tuple(m.spec for m in gen),
        held_out=tuple(m.spec for m in held),
    )
