"""Embedding cost: clean vs watermarked training of the same architecture, side by side.

For each seed, one clean model and one watermarked model per scheme are
trained with the same architecture, epochs, batch size, learning rate,
initialisation and batch order (:func:`core.training.default_recipe` unless
overridden). After an untimed warm-up epoch (torch's one-off start-up costs)
they advance in turn, one epoch each (:func:`core.training.training_epochs`),
alternating which goes first, so that whatever else the machine is doing hits
them alike; each epoch's process CPU time and wall time are summed per model.
Reported, as the mean over seeds: clean test accuracy of each, watermark
accuracy of the marked model and of the clean model (chance is 1/C), and the
time ratio marked / clean, in process CPU time (training runs on one thread,
so this is the figure other work on a shared machine distorts least) and in
wall time.

Run: ``python -m benchmarks.embed [--data digits|fashion-mnist] [--seeds N]
[--schemes trigger-set,content,...]``; writes ``benchmarks/results/embed-DATA.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.arch import build_model
from core.data import BUILTIN, Dataset, Splits, load_data
from core.probeset import ProbeSet
from core.training import Recipe, accuracy, default_recipe, training_epochs
from watermark import Scheme, WatermarkHook, WatermarkKey, parse_scheme
from watermark.schemes.base import mixing_for_run

# (scheme, probes mixed into each batch): 100 triggers (the old default), and Zhang et al.'s
# in-distribution marks, which need more of them to be learnt.
# Probes are appended, or put in place of as many examples where wm train does that
# (watermark.keeps_batch_size: at most a tenth of the batch).
SCHEMES: dict[str, int | None] = {
    "trigger-set": 6, "trigger-set:pattern=abstract": 12, "content": 12, "noise": 12, "unrelated": 12,
    # wm train's default (watermark.DEFAULT_WATERMARK) at its default_per_batch for the run
    "trigger-set:n=300": None,
    # issue 13's dark knowledge: softens every target, mixes nothing in. (Sleeper marks, on images of
    # at least 12x12: `--schemes sleeper`; their read-out is fitted in the last epoch's time.)
    "dark:n=80:mass=0.15": None,
}


@dataclass
class Run:
    """One model's training, advanced an epoch at a time, with its summed times."""

    model: nn.Module
    epochs: Iterator[float]
    cpu: float = 0.0
    wall: float = 0.0

    def step(self) -> None:
        c0, w0 = time.process_time(), time.perf_counter()
        next(self.epochs)
        self.cpu += time.process_time() - c0
        self.wall += time.perf_counter() - w0


@dataclass
class Figures:
    """Per-seed figures of one scheme."""

    clean_acc: list[float] = field(default_factory=list)
    marked_acc: list[float] = field(default_factory=list)
    wm_marked: list[float] = field(default_factory=list)
    wm_clean: list[float] = field(default_factory=list)
    cpu_ratio: list[float] = field(default_factory=list)
    wall_ratio: list[float] = field(default_factory=list)


def _run(splits: Splits, recipe: Recipe, seed: int,
         mark: tuple[Scheme, WatermarkKey, ProbeSet, int, bool] | None = None) -> Run:
    """A run, clean or marked by ``(scheme, key, probes, per_batch, in_place)`` with the scheme's
    own hook, as ``wm train`` marks it."""
    torch.manual_seed(seed)
    model = build_model(recipe.arch, splits.input_shape, splits.num_classes)
    hook = None
    if mark is not None:
        scheme, key, probes, per_batch, in_place = mark
        hook = scheme.hook(probes, key=key, model=model, data=splits.train, per_batch=per_batch)
        hook.keep_batch_size = in_place
    steps = training_epochs(model, splits.train.x, splits.train.y, epochs=recipe.epochs, seed=seed,
                            batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule,
                            hook=hook)
    if hook is None:
        return Run(model, steps)

    def finishing(marker: WatermarkHook) -> Iterator[float]:
        """The epochs, with the hook's finish (sleeper marks' read-out) in the last one's time."""
        for epoch, out in enumerate(steps, start=1):
            if epoch == recipe.epochs:
                marker.finish(model)
            yield out

    return Run(model, finishing(hook))


def _warm_up(splits: Splits, recipe: Recipe) -> None:
    """One untimed epoch on a slice, so that torch's one-off start-up costs fall on no measured run."""
    part = Splits(splits.name, Dataset(splits.train.x[:512], splits.train.y[:512], splits.num_classes),
                  splits.test, None, splits.num_classes)
    for _ in _run(part, Recipe(recipe.arch, 1, recipe.batch_size), 0).epochs:
        pass


def measure(splits: Splits, recipe: Recipe, seeds: int, schemes: list[str],
            first_seed: int = 0) -> dict[str, Figures]:
    """Train and measure ``seeds`` seeds from ``first_seed``; the figures per scheme (with ``per_batch``)."""
    _warm_up(splits, recipe)
    rows: dict[str, Figures] = {}
    for seed in range(first_seed, first_seed + seeds):
        key = WatermarkKey(bytes([seed + 1]) * 32)
        marked: dict[str, tuple[ProbeSet, Run]] = {}
        for spec in schemes:
            scheme = parse_scheme(spec)
            probes = scheme.probes(key, num_classes=splits.num_classes, input_shape=splits.input_shape,
                                   data=splits.train, input_range=splits.input_range)
            per_batch, in_place = mixing_for_run(  # as wm train mixes them
                scheme, len(probes), train_size=len(splits.train), epochs=recipe.epochs,
                batch_size=recipe.batch_size, per_batch=SCHEMES.get(spec))
            placed = ", in place" if in_place else ""
            how = f"per_batch={per_batch}{placed}" if scheme.mixes else "soft targets"
            marked[f"{scheme.name} ({how})"] = (
                probes, _run(splits, recipe, seed, (scheme, key, probes, per_batch, in_place)))
        clean = _run(splits, recipe, seed)
        runs = [clean, *(run for _, run in marked.values())]
        for epoch in range(recipe.epochs):
            for run in runs if epoch % 2 == 0 else runs[::-1]:  # neither always goes first
                run.step()
            print(f"seed {seed} epoch {epoch + 1}/{recipe.epochs}: clean {clean.cpu:.0f} s CPU, "
                  + ", ".join(f"{n.split(':')[0]} {r.cpu:.0f} s" for n, (_, r) in marked.items()),
                  flush=True)
        clean_acc = accuracy(clean.model, splits.test.x, splits.test.y)
        for name, (probes, run) in marked.items():
            f = rows.setdefault(name, Figures())
            f.clean_acc.append(clean_acc)
            f.marked_acc.append(accuracy(run.model, splits.test.x, splits.test.y))
            f.wm_marked.append(accuracy(run.model, probes.inputs, probes.expected, rank=probes.rank))
            f.wm_clean.append(accuracy(clean.model, probes.inputs, probes.expected, rank=probes.rank))
            f.cpu_ratio.append(run.cpu / clean.cpu)
            f.wall_ratio.append(run.wall / clean.wall)
            print(f"seed {seed} {name}: clean {clean_acc:.4f} marked {f.marked_acc[-1]:.4f} "
                  f"wm {f.wm_marked[-1]:.3f} CPU ratio {f.cpu_ratio[-1]:.3f}", flush=True)
    return rows


def render(rows: dict[str, Figures], splits: Splits, recipe: Recipe, seeds: int, load: str,
           command: str) -> str:
    """The markdown table."""
    lines = [
        f"Embedding cost on {splits.name} ({len(splits.train)} training images), `{recipe.arch}`, "
        f"{recipe.epochs} epochs of {recipe.batch_size} ({recipe.schedule} lr {recipe.lr:g}), "
        f"mean of {seeds} seed(s); clean and marked "
        f"models advance one epoch each in turn (alternating which goes first) after an untimed "
        f"warm-up; times summed over epochs, on one thread "
        f"(`{command}`; {platform.machine()}, "
        f"torch {torch.__version__}; load average {load}).",
        "",
        "| scheme | clean acc (clean model) | clean acc (marked) | drop (pp) | wm acc (marked) "
        "| wm acc (clean model) | CPU-time ratio marked/clean | wall-time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in rows.items():
        m = {k: float(np.mean(v)) for k, v in vars(f).items()}
        lines.append(
            f"| {name} | {m['clean_acc']:.4f} | {m['marked_acc']:.4f} | "
            f"{100 * (m['clean_acc'] - m['marked_acc']):+.2f} | {m['wm_marked']:.4f} | "
            f"{m['wm_clean']:.4f} | {m['cpu_ratio']:.3f} | {m['wall_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=BUILTIN)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds run from here (to add seeds to an earlier run in another process)")
    ap.add_argument("--schemes", default=",".join(SCHEMES),
                    help=f"comma-separated, from {', '.join(SCHEMES)}")
    ap.add_argument("--arch", default=None, help="default: the data's recipe")
    ap.add_argument("--epochs", type=int, default=None, help="default: the data's recipe")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the data's recipe")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/embed-DATA.md")
    args = ap.parse_args()
    schemes = [s for s in args.schemes.split(",") if s]
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        ap.error(f"unknown scheme(s) {', '.join(unknown)}")
    torch.set_num_threads(1)
    splits = load_data(args.data)
    base = default_recipe(splits)
    recipe = Recipe(args.arch or base.arch, args.epochs or base.epochs, args.batch_size or base.batch_size,
                    base.lr, base.schedule)
    load_before = os.getloadavg()[0]
    rows = measure(splits, recipe, args.seeds, schemes, args.first_seed)
    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    command = shlex.join(["python", "-m", "benchmarks.embed", *sys.argv[1:]])
    text = render(rows, splits, recipe, args.seeds, load, command)
    out = Path(args.out or f"benchmarks/results/embed-{splits.name}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
