"""Ensembles (parallel, cached, deterministic) and the whole fingerprint, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import InputError
from core.nulls import Conformal
from fingerprint.build import EnsembleConfig, build_fingerprint
from fingerprint.cae import ConferrableExamples
from fingerprint.ensembles import MemberSpec, plan_members, train_members
from tests.fingerprint.conftest import Setting, seed_pool

TINY = EnsembleConfig(surrogates=1, references=2, epochs=4)
SCHEME = ConferrableExamples(n=10, candidates=2, steps=15, threshold=0.0)


def _build(setting: Setting, cache: Path, seed: int):  # type: ignore[no-untyped-def]
    x, y = seed_pool(setting.splits)
    return build_fingerprint(
        setting.owner, owner_arch="cnn", owner_digest=setting.digest,
        train_x=setting.splits.train.x, train_y=setting.splits.train.y, seeds_x=x, seeds_y=y,
        num_classes=10, scheme=SCHEME, ensembles=TINY, seed=seed, salt_key=b"k" * 32,
        cache_dir=cache,
    )


def test_fingerprints_are_deterministic_for_a_fixed_seed(setting: Setting,
                                                         tmp_path: Path) -> None:
    first = _build(setting, tmp_path / "a", seed=4)
    again = _build(setting, tmp_path / "b", seed=4)  # fresh cache: every model retrained
    cached = _build(setting, tmp_path / "a", seed=4)  # same cache: every model loaded
    assert first.probes.to_bytes() == again.probes.to_bytes() == cached.probes.to_bytes()
    assert first.probes.root == again.probes.root
    other = _build(setting, tmp_path / "a", seed=5)
    assert not torch.equal(other.probes.inputs, first.probes.inputs)


def test_fingerprint_probeset_carries_the_calibrated_null(setting: Setting,
                                                          tmp_path: Path) -> None:
    fp = _build(setting, tmp_path, seed=4)
    p = fp.probes
    assert p.kind == "fingerprint" and p.scheme == SCHEME.name and len(p) == SCHEME.n
    assert p.null.to_dict()["references"] == 4  # 2 per architecture, held out
    assert p.null.to_dict()["p_floor"] == pytest.approx(1 / 3)
    assert {g.group for g in fp.calibration.groups} == {"cnn", "mlp"}
    assert not {s.seed for s in fp.generation} & {s.seed for s in fp.held_out}
    assert torch.equal(p.expected, setting.owner(p.inputs).argmax(dim=1))
    # the conformal null: the held-out references' matches, grouped by architecture
    null = p.null
    assert isinstance(null, Conformal) and null.group_sizes == {"cnn": 2, "mlp": 2}
    counts = {g.group: sorted(g.matches) for g in fp.calibration.groups}
    scores = null.reference_scores(list(range(len(p))))
    assert {a: sorted(s for (g, _, _), s in zip(null.models, scores, strict=True) if g == a)
            for a in ("cnn", "mlp")} == counts
    assert null.p_value(list(range(len(p))), [True] * len(p)) >= 1 / 3


def test_parallel_training_gives_the_same_bytes_and_the_cache_is_reused(
        setting: Setting, tmp_path: Path) -> None:
    specs = [MemberSpec("reference", "mlp", 1, "truth", 2),
             MemberSpec("surrogate", "mlp", 2, "probabilities", 2)]
    kw: dict[str, Any] = dict(owner=setting.owner, owner_digest=setting.digest,
              train_x=setting.splits.train.x, train_y=setting.splits.train.y, num_classes=10)
    serial = train_members(specs, **kw)
    seen: list[tuple[int, int]] = []
    parallel = train_members(specs, cache_dir=tmp_path, workers=2,
                             progress=lambda d, t: seen.append((d, t)), **kw)
    for a, b in zip(serial, parallel, strict=True):
        for (ka, va), (kb, vb) in zip(a.module.state_dict().items(),
                                      b.module.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    seen.clear()
    train_members(specs, cache_dir=tmp_path, workers=2,
                  progress=lambda d, t: seen.append((d, t)), **kw)
    assert seen == [(2, 2)]  # everything from the cache


def test_plans_include_the_owner_architecture_and_disjoint_splits() -> None:
    gen = plan_members(split="generation", seed=0, archs=("cnn", "mlp"),
                       surrogates_per_arch=2, references_per_arch=3)
    cal = plan_members(split="calibration", seed=0, archs=("cnn", "mlp"),
                       surrogates_per_arch=2, references_per_arch=3)
    assert len(gen) == 10 and {s.targets for s in gen} == {"labels", "probabilities", "truth"}
    assert not {s.seed for s in gen} & {s.seed for s in cal}
    with pytest.raises(InputError, match="must include the owner's architecture cnn"):
        EnsembleConfig(archs=("mlp",)).resolve("cnn")
    with pytest.raises(InputError, match="at least 2 references per architecture"):
        EnsembleConfig(references=1)
    with pytest.raises(InputError, match="a reference cannot be trained on labels"):
        MemberSpec("reference", "cnn", 0, "labels", 1)
