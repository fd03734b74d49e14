"""A fingerprint's model-level null: its ``K`` references' per-probe matches, committed.

Scores every reference of the null (:mod:`fingerprint.zoo`, a seed stream
disjoint from any that chose the probes) on the fingerprint, probe by probe,
and packs the result into a :class:`core.nulls.Conformal` null: the
references' match bits, architectures, seeds and weight digests, the
recipe, and a beta-binomial fitted on their counts (method of moments,
:func:`fingerprint.calibrate.fit_moments`) as the secondary, parametric
figure. The null travels inside the ``ProbeSet`` and so is covered by the
registry's commitment; the conformal p-value of a suspect is
:meth:`core.nulls.Conformal.p_value` (see :mod:`core.nulls`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.errors import InputError
from core.nulls import Conformal
from fingerprint.calibrate import fit_moments
from fingerprint.zoo import ZooModel

__all__ = ["conformal_null", "match_bits", "pack_bits"]


@torch.no_grad()
def match_bits(models: Sequence[torch.nn.Module], inputs: torch.Tensor,
               expected: torch.Tensor) -> np.ndarray:
    """``[len(models), n]`` booleans: whether each (eval-mode) model predicts each expected label."""
    rows = []
    for m in models:
        pred = torch.cat([m(inputs[i : i + 2048]).argmax(dim=1) for i in range(0, inputs.shape[0], 2048)])
        rows.append((pred == expected).numpy())
    return np.stack(rows) if rows else np.zeros((0, inputs.shape[0]), dtype=bool)


def pack_bits(bits: np.ndarray) -> str:
    """One reference's match bits as :class:`~core.nulls.Conformal` stores them (hex, little-endian bits)."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little").tobytes().hex()


def conformal_null(references: Sequence[ZooModel], inputs: torch.Tensor, expected: torch.Tensor,
                   *, data: str) -> Conformal:
    """The conformal null of probes ``(inputs, expected)`` on ``references``.

    Args:
        references: the null's reference models (none of which chose the probes).
        inputs: the probes.
        expected: their committed labels.
        data: the digest of the references' training data (recorded in the recipe).

    Raises:
        InputError: no references, or no probes.
    """
    if not references:
        raise InputError("a conformal null needs at least one reference model")
    n = int(inputs.shape[0])
    if n < 1:
        raise InputError("a conformal null needs at least one probe")
    bits = match_bits([r.module for r in references], inputs, expected)
    counts = bits.sum(axis=1)
    if len(references) >= 2:
        mu, rho = (float(v) for v in fit_moments(counts, n))
    else:
        mu, rho = float(np.clip(counts.mean() / n, 0.5 / n, 1 - 0.5 / n)), 0.5
    groups: dict[str, int] = {}
    for r in references:
        groups[r.arch] = groups.get(r.arch, 0) + 1
    recipes = sorted({r.recipe.name for r in references})
    return Conformal(
        a=mu * (1 - rho) / rho,
        b=(1 - mu) * (1 - rho) / rho,
        references=len(references),
        p_floor=1.0 / (min(groups.values()) + 1),
        size=n,
        matches=tuple(pack_bits(b) for b in bits),
        models=tuple((r.arch, int(r.seed), r.digest) for r in references),
        recipe=f"data={data};" + ";".join(recipes),
    )
