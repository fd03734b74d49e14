"""A small real setting shared by the fingerprint tests: digits, a CNN owner, tiny ensembles.

Module-scoped and read-only: tests that need to mutate build their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from core.data import Splits, load_digits
from core.modelio import weights_digest
from core.training import train_new
from fingerprint.ensembles import Member, plan_members, train_members

ARCHS = ("cnn", "mlp")


@dataclass(frozen=True, eq=False)
class Setting:
    splits: Splits
    owner: nn.Module
    digest: str
    gen_s: list[Member]
    gen_r: list[Member]
    held_s: list[Member]
    held_r: list[Member]


def _members(splits: Splits, owner: nn.Module, digest: str, split: str, s: int,
             r: int, query: torch.Tensor) -> list[Member]:
    specs = plan_members(split=split, seed=11, archs=ARCHS,  # type: ignore[arg-type]
                         surrogates_per_arch=s, references_per_arch=r, epochs=20)
    return train_members(specs, owner=owner, owner_digest=digest, train_x=splits.train.x,
                         train_y=splits.train.y, query_x=query, num_classes=10)


@pytest.fixture(scope="session")
def setting() -> Setting:
    splits = load_digits()
    owner = train_new("cnn", splits.train.x, splits.train.y, num_classes=10, epochs=20, seed=5)
    digest = weights_digest(owner.state_dict())
    # surrogates query the owner with its own data, as `build_fingerprint` does by default
    own = seed_pool(splits)[0]
    gen = _members(splits, owner, digest, "generation", 3, 3, own)
    held = _members(splits, owner, digest, "calibration", 2, 3, own)
    return Setting(
        splits, owner, digest,
        [m for m in gen if m.spec.role == "surrogate"],
        [m for m in gen if m.spec.role == "reference"],
        [m for m in held if m.spec.role == "surrogate"],
        [m for m in held if m.spec.role == "reference"],
    )


def seed_pool(splits: Splits) -> tuple[torch.Tensor, torch.Tensor]:
    """The owner's own data: where seeds come from and what its surrogates query."""
    return (torch.cat([splits.train.x, splits.test.x]), torch.cat([splits.train.y, splits.test.y]))
