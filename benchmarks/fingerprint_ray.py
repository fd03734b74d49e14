"""Benchmark: the reference zoo on Ray, 1 worker vs 2 (issue 14).

Trains the same ``--models`` Fashion-MNIST references (the benchmark's zoo
recipe, no cache) as Ray tasks on a local Ray instance of 1 CPU, then of 2
CPUs, and reports the wall-clock times and their ratio, with the machine's
load average: on a shared machine the ratio measures the share of the cores
the run got as much as Ray. Checks that both runs give the same weights.

Run: ``python -m benchmarks.fingerprint_ray`` (needs ``wm[ray]``).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks.fingerprint_fmnist import OWNER_ARCH, RECIPES
from core.data import load_fashion_mnist
from fingerprint.zoo import ReferenceZoo, zoo_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=8)
    args = parser.parse_args()
    import ray

    torch.set_num_threads(1)
    sp = load_fashion_mnist()
    assert sp.reference is not None
    seeds = zoo_seeds("ray-benchmark", args.models)
    walls, digests = {}, {}
    for cpus in (1, 2):
        zoo = ReferenceZoo(sp.reference.x, sp.reference.y, 10)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        t0 = time.time()  # Ray is up: the time of the tasks alone
        models = zoo.models(RECIPES[OWNER_ARCH], seeds, workers=cpus, ray_address="auto")
        walls[cpus] = time.time() - t0
        digests[cpus] = [m.digest for m in models]
        ray.shutdown()
        print(f"{cpus} CPU(s): {walls[cpus]:.1f} s wall for {args.models} references "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    assert digests[1] == digests[2], "Ray runs gave different weights"
    print(f"speed-up 2 vs 1: {walls[1] / walls[2]:.2f}x (from submission to the last result)")


if __name__ == "__main__":
    main()
