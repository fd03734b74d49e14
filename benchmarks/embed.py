"""Embedding cost: clean vs watermarked training of the same architecture, side by side.

For each seed, a clean model and one watermarked model per scheme are trained
on ``digits`` with the same architecture, epochs, initialisation and batch
order, interleaved so that machine noise hits both alike; each wall time is
the fastest of ``--repeats`` runs (training is deterministic). Reported, as the
mean over seeds: clean test accuracy of each, watermark accuracy of the marked
model and of the clean model (chance is 1/C), and the time ratio marked /
clean, in process CPU time (training runs on one thread, so this is the
figure other work on a shared machine does not distort) and in wall time.

Run: ``python -m benchmarks.embed [--seeds 3] [--epochs 30]``; writes
``benchmarks/results/embed.md``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from core.arch import build_model
from core.data import load_digits
from core.probeset import ProbeSet
from core.training import accuracy, train_classifier
from watermark import WatermarkHook, WatermarkKey, parse_scheme

DEFAULT = ("trigger-set", 6)
SCHEMES = [DEFAULT, ("trigger-set:pattern=abstract", 12), ("content", 12), ("noise", 12),
           ("unrelated", 12)]


def _train(
    arch: str, seed: int, epochs: int, probes: ProbeSet | None, per_batch: int, repeats: int
) -> tuple[torch.nn.Module, float, float]:
    """Train ``repeats`` times (training is deterministic); the fastest CPU and wall times."""
    splits = load_digits()
    best_cpu = best_wall = float("inf")
    model: torch.nn.Module | None = None
    for _ in range(repeats):
        torch.manual_seed(seed)
        model = build_model(arch, splits.input_shape, splits.num_classes)
        hook = WatermarkHook(probes, per_batch) if probes is not None else None
        c0, w0 = time.process_time(), time.perf_counter()
        train_classifier(model, splits.train.x, splits.train.y, epochs=epochs, seed=seed, hook=hook)
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    assert model is not None
    return model, best_cpu, best_wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--repeats", type=int, default=5, help="timing: fastest of this many runs")
    ap.add_argument("--out", default="benchmarks/results/embed.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = load_digits()
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        key = WatermarkKey(bytes([seed + 1]) * 32)
        for spec, per_batch in SCHEMES:
            scheme = parse_scheme(spec)
            probes = scheme.probes(key, num_classes=10, input_shape=(1, 8, 8), data=splits.train)
            clean, c_clean, w_clean = _train(args.arch, seed, args.epochs, None, 0, args.repeats)
            marked, c_marked, w_marked = _train(args.arch, seed, args.epochs, probes, per_batch,
                                                args.repeats)
            r = rows.setdefault(f"{scheme.name} (per_batch={per_batch})", {k: [] for k in
                                ("clean_acc", "marked_acc", "wm_marked", "wm_clean", "ratio", "wall")})
            r["clean_acc"].append(accuracy(clean, splits.test.x, splits.test.y))
            r["marked_acc"].append(accuracy(marked, splits.test.x, splits.test.y))
            r["wm_marked"].append(accuracy(marked, probes.inputs, probes.expected))
            r["wm_clean"].append(accuracy(clean, probes.inputs, probes.expected))
            r["ratio"].append(c_marked / c_clean)
            r["wall"].append(w_marked / w_clean)
            print(f"seed {seed} {scheme.name}: clean {r['clean_acc'][-1]:.4f} marked "
                  f"{r['marked_acc'][-1]:.4f} wm {r['wm_marked'][-1]:.2f} ratio {r['ratio'][-1]:.3f}",
                  flush=True)
    lines = [
        f"Embedding cost on digits, {args.arch}, {args.epochs} epochs, batch 64, mean of "
        f"{args.seeds} seeds; time = fastest of {args.repeats} runs each, clean and marked "
        f"interleaved; training is single-threaded, so process CPU time is the figure that "
        f"other work on the machine does not distort (`python -m benchmarks.embed`; {platform.machine()}, "
        f"torch {torch.__version__}, 1 thread).",
        "",
        "| scheme | clean acc (clean model) | clean acc (marked) | drop (pp) | wm acc (marked) "
        "| wm acc (clean model) | CPU-time ratio marked/clean | wall-time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        m = {k: float(np.mean(v)) for k, v in r.items()}
        lines.append(
            f"| {name} | {m['clean_acc']:.4f} | {m['marked_acc']:.4f} | "
            f"{100 * (m['clean_acc'] - m['marked_acc']):+.2f} | {m['wm_marked']:.4f} | "
            f"{m['wm_clean']:.4f} | {m['ratio']:.3f} | {m['wall']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
