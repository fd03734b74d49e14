"""A prototype, not a scheme: backdoor families against the weight attacks (issue 13).

``K`` key-derived binary patches, each at its own key-derived place and with
its own key-random target, stamped by a training hook on ``--per-batch``
random training images per batch (BadNets-style rules rather than memorised
images). One probe per family (a stamped training image), so an independent
model matches each with probability exactly 1/C, independently across
families (composite's argument, :mod:`watermark.schemes.composite`): the null
stays ``Binomial(K, 1/C)``. The owner is trained with the product's
:func:`core.training.train_classifier`, attacked with :mod:`attacks` as
``robust_marks --weight-sweep`` attacks, and judged by
:class:`benchmarks.robustness.Evidence` as ``wm verify`` decides.

Run: ``python -m benchmarks.backdoor_families [--families 100 --size 5]``;
prints one line per model (results in
``benchmarks/results/robust-fmnist-weights.md``, "Tried and dropped").
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from attacks import Distill, FinePrune, Retrain
from benchmarks.robustness import Evidence
from core.arch import build_model
from core.data import load_data
from core.probeset import Binomial, ProbeSet
from core.training import accuracy, default_recipe, predict, train_classifier

Batch = tuple[torch.Tensor, torch.Tensor]
MEMBERS = 20
"""Unseen test images stamped per family, for the share answered with its target."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", type=int, default=100)
    ap.add_argument("--size", type=int, default=5, help="patch side in pixels")
    ap.add_argument("--per-batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.families < 1 or args.per_batch < 1 or args.epochs < 1 or args.size < 1:
        ap.error("--families, --size, --per-batch and --epochs must be at least 1")
    torch.set_num_threads(1)
    splits = load_data("fashion-mnist")
    recipe = default_recipe(splits)
    k, s = args.families, args.size
    _, h, w = splits.input_shape
    if s > min(h, w):
        ap.error(f"a {s}x{s} patch does not fit {h}x{w} images")
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(b"pf-key").digest()[:8], "little"))
    lo, hi = splits.input_range.low, splits.input_range.high
    patches = torch.from_numpy(lo + (hi - lo) * rng.integers(0, 2, (k, s, s)).astype(np.float32))
    places = rng.integers(0, h - s + 1, (k, 2))
    targets = torch.tensor(rng.integers(0, splits.num_classes, k))

    def stamp(x: torch.Tensor, families: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for i, f in enumerate(families.tolist()):
            r, c = places[f]
            x[i, :, r : r + s, c : c + s] = patches[f]
        return x

    train = splits.train
    sources = torch.tensor(rng.choice(len(train), k, replace=False))
    probes = ProbeSet(inputs=stamp(train.x[sources], torch.arange(k)), expected=targets, kind="watermark",
                      scheme=f"backdoor-families:n={k}:size={s}", null=Binomial(1 / splits.num_classes),
                      num_classes=splits.num_classes, salts=tuple(os.urandom(32) for _ in range(k)))
    evidence = Evidence([("watermark", probes)])
    member_of = torch.arange(k).repeat_interleave(MEMBERS)
    g = torch.Generator().manual_seed(5)
    picked = torch.randint(0, len(splits.test), (len(member_of),), generator=g)
    members = stamp(splits.test.x[picked], member_of)

    def hook(loader: Iterable[Batch]) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(args.seed + 77)
        for x, y in loader:
            f = torch.randint(0, k, (args.per_batch,), generator=gen)
            i = torch.randint(0, len(train), (args.per_batch,), generator=gen)
            yield torch.cat([x, stamp(train.x[i], f)]), torch.cat([y, targets[f]])

    def report(name: str, model: torch.nn.Module) -> None:
        st = evidence.judge(model)
        kept = accuracy(model, probes.inputs, probes.expected)
        rule = float((predict(model, members) == targets[member_of]).float().mean())
        print(f"{name}: clean {accuracy(model, splits.test.x, splits.test.y):.4f}, probes {kept:.2f} "
              f"(p {st.p_value:.2g}, {st.verdict}), stamped test images {rule:.2f}", flush=True)

    torch.manual_seed(args.seed)
    owner = train_classifier(build_model(recipe.arch, splits.input_shape, splits.num_classes),
                             train.x, train.y, epochs=args.epochs, seed=args.seed,
                             batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule, hook=hook)
    report(f"owner ({k} families of {s}x{s}, {args.epochs} epochs)", owner)
    pool = splits.attacker_pool
    assert pool is not None
    for lr in (1e-3, 3e-3):
        report(f"RTAL, lr {lr:g}", Retrain("all", epochs=5, lr=lr)(owner, pool, seed=15))
        report(f"fine-pruning 90%, lr {lr:g}", FinePrune(0.9, epochs=3, lr=lr)(owner, pool, seed=17))
    report("distillation T=3", Distill(temperature=3.0, epochs=3)(owner, pool, seed=18))


if __name__ == "__main__":
    main()
