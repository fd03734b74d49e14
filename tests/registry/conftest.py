"""Fixtures for registry tests: in-memory owner keys and small probe sets."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from registry import OwnerKey, Registry


@pytest.fixture
def owner_key() -> OwnerKey:
    """A fresh owner key (no files, no passphrase)."""
    return OwnerKey(name="alice", private_key=Ed25519PrivateKey.generate())


@pytest.fixture
def other_key() -> OwnerKey:
    """A second, unrelated owner key."""
    return OwnerKey(name="mallory", private_key=Ed25519PrivateKey.generate())


@pytest.fixture
def reg(db_url: str) -> Iterator[Registry]:
    """An open, empty registry on each database."""
    r = Registry.open(db_url)
    try:
        yield r
    finally:
        r.close()


def make_probeset(n: int = 8, seed: int = 0, kind: str = "watermark"):  # type: ignore[no-untyped-def]
    """A small real ProbeSet (torch is imported only by tests that need it)."""
    import torch

    from core.probeset import Binomial, ProbeSet

    g = torch.Generator().manual_seed(seed)
    return ProbeSet(
        inputs=torch.rand((n, 1, 8, 8), generator=g),
        expected=torch.randint(0, 10, (n,), generator=g),
        kind=kind,  # type: ignore[arg-type]
        scheme=f"trigger-set:n={n}:pattern=noise",
        null=Binomial(p0=1 / 10),
        num_classes=10,
        salts=tuple(os.urandom(32) for _ in range(n)),
    )
