"""The reference zoo on a real local Ray instance (2 CPUs): the same weights as the local path."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data import load_digits
from fingerprint.zoo import ReferenceZoo, ZooRecipe, zoo_seeds

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'wm[ray]')")


def test_ray_tasks_train_the_same_references_as_local_processes(tmp_path: Path) -> None:
    sp = load_digits()
    assert sp.attacker_pool is not None
    recipe = ZooRecipe("mlp", epochs=2, batch_size=64)
    seeds = zoo_seeds("null", 3)
    local = ReferenceZoo(sp.attacker_pool.x, sp.attacker_pool.y, 10).models(recipe, seeds)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        zoo = ReferenceZoo(sp.attacker_pool.x, sp.attacker_pool.y, 10, cache_dir=tmp_path)
        seen: list[int] = []
        remote = zoo.models(recipe, seeds, ray_address="auto", progress=lambda d, t: seen.append(d))
    finally:
        ray.shutdown()
    assert [m.digest for m in remote] == [m.digest for m in local]
    assert seen == [0, 1, 2, 3] and all(m.cpu_s > 0 for m in remote)
    assert len((tmp_path / "zoo.jsonl").read_text().splitlines()) == 3
