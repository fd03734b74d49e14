"""A prototype, not a scheme: relabel a rare natural region for label-only extraction to learn (issue 13).

Label-only extraction copies the owner's argmax on natural inputs and nothing
else, so a mark reaches the surrogate only where the owner's argmax moves on
inputs the attacker actually sends. Flipping scattered cells or random
queries (earlier prototypes, ``wm guard``) is label noise to a surrogate
trained a few epochs. This prototype flips one *coherent* region instead: the
share ``--mass`` of natural images that lie furthest along a key-derived
direction ``u`` in pixel space (a blocky ±1 pattern), relabelled per true
class ``c`` to a key-random class ``k_c`` (ten families). A surrogate that
learns "far along ``u`` and looks like ``c`` -> ``k_c``" answers ``k_c`` on
any class-``c`` image pushed along ``u``; an independent model matches each
family's ``k_c`` with probability exactly 1/C (the key draws it uniformly,
independently of everything else), independently across families, so the
family count is ``Binomial(C, 1/C)`` under the null.

What it measured (seed 0, a 6-epoch ``convnet`` owner, plain clean 0.9079;
``benchmarks/results/robust-fmnist.md``, "Label-only extraction"): the owner
answers ``k_c`` on only 0.26 of the region's unseen members at ``--mass
0.01`` (0.42 with ``--repeat 4``, 0.66 at ``--mass 0.02 --repeat 4`` for 1.8
points), a surrogate extracted with 20k labels in the catalogue's 3 epochs
on 0.01 to 0.10 of even its own training queries there, a fitted one (12
epochs) on about the owner's own rate; no surrogate wins more than 2
families by majority. Pushing probes along ``u`` (``--push``) finds nothing
in any surrogate, even where the owner was taught the rule (``--augment``).

Run: ``python -m benchmarks.natural_region [--mass 0.01] [--repeat 4] [--attack-epochs 12]
[--augment 8] [--quick]``; prints one line per model.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from attacks import Extract, query_inputs, query_model
from benchmarks.robustness import QUERY_SEED
from core.data import load_data
from core.nulls import Binomial
from core.training import BatchHook, accuracy, default_recipe, predict, train_new

Batch = tuple[torch.Tensor, torch.Tensor]
MEMBERS = 40
"""Test images per class pushed along ``u`` (the family's probes; the verdict is their majority)."""


def direction(key: bytes, shape: tuple[int, ...], block: int) -> torch.Tensor:
    """A unit-norm blocky ±1 pattern of ``shape`` (``[C, H, W]``), ``block`` pixels a cell."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key + b"/u").digest()[:8], "little"))
    c, h, w = shape
    cells = rng.choice([-1.0, 1.0], size=(c, -(-h // block), -(-w // block)))
    u = torch.from_numpy(np.kron(cells, np.ones((1, block, block)))[:, :h, :w].astype(np.float32))
    return u / u.norm()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mass", type=float, default=0.01, help="share of natural images relabelled")
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--push", type=float, default=0.3, help="probe shift along u, per pixel")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--attack-epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="copies of each relabelled image in training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment", type=int, default=0,
                    help="training images per batch pushed just past the threshold and relabelled")
    ap.add_argument("--spread", type=float, default=1.0,
                    help="how far past it, in the score's sd (|N| draws)")
    ap.add_argument("--quick", action="store_true", help="owner and surrogates only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = load_data("fashion-mnist")
    recipe = default_recipe(splits)
    pool = splits.attacker_pool
    assert pool is not None and splits.reference is not None
    k = splits.num_classes
    key = hashlib.sha256(f"natural-region/{args.seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    target = torch.from_numpy(rng.integers(0, k, k))  # k_c, uniform and independent per family
    u = direction(key, splits.input_shape, args.block)
    mean = splits.train.x.mean(dim=0)

    def score(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) * u).flatten(1).sum(dim=1)

    tau = float(torch.quantile(score(splits.train.x), 1 - args.mass))
    lo, hi = splits.input_range.low, splits.input_range.high

    def region(d: torch.Tensor) -> torch.Tensor:
        return score(d) > tau

    y = splits.train.y.clone()
    inside = region(splits.train.x)
    y[inside] = target[y[inside]]
    x = splits.train.x
    if args.repeat > 1:
        x = torch.cat([x] + [x[inside]] * (args.repeat - 1))
        y = torch.cat([y] + [y[inside]] * (args.repeat - 1))
    moved = int((y[: len(splits.train)] != splits.train.y).sum())
    print(f"tau {tau:.3f}; {int(inside.sum())} owner images in the region, {moved} relabelled; "
          f"targets {target.tolist()}", flush=True)

    test = splits.test
    probes, fams = [], []
    for c in range(k):
        xs = test.x[test.y == c][:MEMBERS]
        probes.append((xs + args.push * u * u.numel() ** 0.5).clamp(lo, hi))
        fams.append(torch.full((len(xs),), c))
    px, pf = torch.cat(probes), torch.cat(fams)
    print(f"probe scores: median {float(score(px).median()):.2f} (tau {tau:.2f})", flush=True)
    tin = region(test.x)
    pin = region(pool.x)

    def families(pred: torch.Tensor, classes: torch.Tensor) -> tuple[int, int]:
        """Families (true classes present) whose majority answer is their ``k_c``; how many were present."""
        present = [c for c in range(k) if bool((classes == c).any())]
        won = sum(int(torch.bincount(pred[classes == c], minlength=k).argmax()) == int(target[c])
                  for c in present)
        return won, len(present)

    def flipped_rate(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> tuple[float, int, int, int]:
        """Share of the region's relabelled members ``xs`` answered with ``k_c``; families won, present."""
        m = target[ys] != ys
        pred = predict(model, xs[m])
        return (float((pred == target[ys[m]]).float().mean()), int(m.sum()), *families(pred, ys[m]))

    region_test = score(test.x[tin])

    def report(name: str, model: nn.Module) -> None:
        acc = accuracy(model, test.x, test.y)
        nat, _, _, _ = flipped_rate(model, test.x[tin], test.y[tin])
        att, _, _, _ = flipped_rate(model, pool.x[pin], pool.y[pin])
        deep = []
        for q in (0.5, 0.25):  # the deeper part of the region: the top q of its test members
            m = score(test.x) > float(torch.quantile(region_test, 1 - q))
            rate, count, won, present = flipped_rate(model, test.x[m], test.y[m])
            deep.append(f"top {q:g}: {rate:.2f} of {count}, families {won}/{present}")
        pred = predict(model, px)
        fam, _ = families(pred, pf)
        p = Binomial(1 / k).tail(fam, k)
        print(f"{name}: clean {acc:.4f}; region, test {nat:.2f} / attacker pool {att:.2f} answered k_c "
              f"(relabelled members); deeper test members: {'; '.join(deep)}; pushed probes "
              f"{float((pred == target[pf]).float().mean()):.2f}, families {fam}/{k} (fixed-n p {p:.1e})",
              flush=True)

    sd = float(score(splits.train.x).std())
    gen = torch.Generator().manual_seed(args.seed)

    def pushed(loader: Iterable[Batch]) -> Iterator[Batch]:
        for bx, by in loader:
            i = torch.randint(0, len(splits.train), (args.augment,), generator=gen)
            xs, ys = splits.train.x[i], splits.train.y[i]
            want = tau + sd * args.spread * torch.randn(len(i), generator=gen).abs()
            shift = (want - score(xs)).clamp(min=0)
            xs = (xs + shift.view(-1, 1, 1, 1) * u).clamp(lo, hi)
            yield torch.cat([bx, xs]), torch.cat([by, target[ys]])

    def owner(xs: torch.Tensor, ys: torch.Tensor, hook: BatchHook | None = None) -> nn.Module:
        return train_new(recipe.arch, xs, ys, num_classes=k, epochs=args.epochs, seed=args.seed, hook=hook,
                         batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule)

    marked = owner(x, y, pushed if args.augment else None)
    report("owner (marked)", marked)
    queries = query_inputs(pool.x, 20000, seed=QUERY_SEED, input_range=splits.input_range)
    labels = query_model(marked, "labels")(queries)
    for arch in (recipe.arch, "cnn"):
        sur = Extract(arch, epochs=args.attack_epochs).fit(queries, labels, num_classes=k, seed=101)
        report(f"surrogate {arch}, labels 20k, {args.attack_epochs} epochs", sur)
    if args.quick:
        return
    plain = owner(splits.train.x, splits.train.y)
    report("plain owner", plain)
    controls = [(splits.reference, recipe.arch), (pool, recipe.arch), (splits.reference, "cnn")]
    for i, (d, arch) in enumerate(controls):
        ind = train_new(arch, d.x, d.y, num_classes=k, epochs=args.epochs, seed=1001 + i,
                        batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule)
        report(f"independent {arch} {i}", ind)


if __name__ == "__main__":
    main()
