"""The reference zoo, AKH and SAC selection, and the conformal null on real digits models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import load_digits
from core.errors import DataError
from core.training import predict, train_new
from fingerprint.akh import AKH, parse_akh
from fingerprint.conformal import conformal_null
from fingerprint.pipeline import build_zoo_fingerprint, zoo_references
from fingerprint.sac import SAC, correlation_matrix, cutmix, parse_sac, sac_distance
from fingerprint.zoo import ReferenceZoo, ZooRecipe, zoo_seeds

RECIPE = ZooRecipe("mlp", epochs=4, batch_size=64)


@pytest.fixture(scope="module")
def world() -> tuple:
    sp = load_digits()
    assert sp.attacker_pool is not None
    owner = train_new("mlp", sp.train.x, sp.train.y, num_classes=10, epochs=6, seed=3)
    pool_x = torch.cat([sp.train.x, sp.test.x])
    pool_y = torch.cat([sp.train.y, sp.test.y])
    return sp, owner, pool_x, pool_y


def test_zoo_trains_once_logs_and_reuses(tmp_path: Path, world: tuple) -> None:
    sp = world[0]
    zoo = ReferenceZoo(sp.attacker_pool.x, sp.attacker_pool.y, 10, cache_dir=tmp_path)
    seeds = zoo_seeds("null", 2)
    first = zoo.models(RECIPE, seeds)
    again = ReferenceZoo(sp.attacker_pool.x, sp.attacker_pool.y, 10, cache_dir=tmp_path).models(RECIPE, seeds)
    assert [m.digest for m in first] == [m.digest for m in again]
    assert all(m.cpu_s > 0 for m in first) and all(m.cpu_s == 0 for m in again)
    log = [json.loads(line) for line in (tmp_path / "zoo.jsonl").read_text().splitlines()]
    assert [(e["seed"], e["weights"], e["recipe"]) for e in log] == [
        (m.seed, m.digest, RECIPE.name) for m in first]
    assert {e["data"] for e in log} == {zoo.data}
    # other data: other models, even with the same recipe and seeds
    other = ReferenceZoo(sp.train.x, sp.train.y, 10, cache_dir=tmp_path).models(RECIPE, seeds[:1])
    assert other[0].digest != first[0].digest
    assert not set(zoo_seeds("null", 50)) & set(zoo_seeds("generation", 50))


def test_akh_keeps_the_owners_mistakes_that_references_get_right(world: tuple) -> None:
    sp, owner, pool_x, pool_y = world
    zoo = ReferenceZoo(sp.attacker_pool.x, sp.attacker_pool.y, 10)
    refs = zoo_references(zoo, [RECIPE], 4, "generation")
    sel = AKH(n=5, agree=0.5).select(owner, [r.module for r in refs], pool_x, pool_y)
    truth = pool_y[sel.index]
    assert (sel.labels != truth).all()
    assert torch.equal(sel.labels, predict(owner, sel.inputs))
    right = torch.stack([predict(r.module, sel.inputs) == truth for r in refs]).float().mean(0)
    assert torch.allclose(right, sel.refs_right) and (right >= 0.5).all()
    with pytest.raises(DataError, match="misclassified by the owner"):
        AKH(n=10_000).select(owner, [r.module for r in refs], pool_x, pool_y)
    assert parse_akh("akh:agree=0.6") == AKH(agree=0.6)


def test_sac_inputs_and_distance(world: tuple) -> None:
    _, owner, pool_x, pool_y = world
    sel = SAC(n=6, mode="w").select(owner, [], pool_x, pool_y)
    assert (sel.labels != pool_y[sel.index]).all()
    m = SAC(n=8, mode="m", seed=1).select(owner, [], pool_x, pool_y)
    assert m.inputs.shape == (8, 1, 8, 8) and torch.equal(m.labels, predict(owner, m.inputs))
    assert torch.equal(cutmix(pool_x, 8, seed=1), m.inputs)
    corr = correlation_matrix(owner, m.inputs)
    assert torch.allclose(corr.diagonal(), torch.ones(8), atol=1e-5)
    assert sac_distance(corr, owner, m.inputs) == pytest.approx(0.0, abs=1e-6)
    assert parse_sac("sac-m:n=8,seed=1") == SAC(n=8, mode="m", seed=1)


def test_conformal_p_of_independent_models_is_super_uniform(world: tuple) -> None:
    # Real models: K references and held-out independents, one recipe, disjoint seed streams;
    # the fingerprint chosen with a third stream. Each independent's rank among the K + 1 is
    # uniform, so P(p <= t) <= t; with 40 independents the share may exceed t by sampling error
    # only (3 standard errors).
    sp, owner, pool_x, pool_y = world
    zoo = ReferenceZoo(sp.attacker_pool.x, sp.attacker_pool.y, 10)
    fp = build_zoo_fingerprint(owner, AKH(n=8, agree=0.5), owner_arch="mlp", pool_x=pool_x,
                               pool_y=pool_y, zoo=zoo, recipes=[RECIPE], references=19, generation=4)
    assert fp.null.references == 19 and fp.null.p_floor == pytest.approx(0.05)
    assert fp.probes.null is fp.null and fp.probes.kind == "fingerprint"
    assert conformal_null(fp.references, fp.probes.inputs, fp.probes.expected, data=zoo.data) == fp.null
    indep = zoo_references(zoo, [RECIPE], 40, "evaluation")
    idx = list(range(len(fp.probes)))
    ps = np.asarray([fp.null.p_value(idx, (predict(m.module, fp.probes.inputs) == fp.probes.expected)
                                     .tolist()) for m in indep])
    assert ps.min() >= 0.05 - 1e-12 and len(set(ps.tolist())) > 2  # not vacuous
    for t in (0.1, 0.25, 0.5):
        assert (ps <= t).mean() <= t + 3 * np.sqrt(t * (1 - t) / ps.size)
    # the owner itself matches every probe: at the floor
    assert fp.null.p_value(idx, [True] * len(idx)) == pytest.approx(0.05)
