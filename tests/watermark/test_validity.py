"""Validity of the in-distribution marks' null: over 200 keys and independent models, P(p <= t) <= t.

Margin and dark-knowledge probes are the owner's training images and
composite probes are built from them, so an independent model trained on the
same data classifies them well (and ranks their runner-up alike: shirts look
like T-shirts to every model); the null must hold anyway, because the labels
are key-random (uniform, independent of the inputs), not because the model is
confused. Dark probes are read as the model's second choice, as the verifier
reads them. Independent
models here were trained on the owner's own data (the hardest case), on other
seeds and architectures, and never saw a key.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.data import load_digits
from core.training import predict, train_new
from verifier.session import DEFAULT_FUTILITY
from verifier.stats import TestInput, compute_statistics
from watermark import CompositeMark, DarkMark, MarginMark, SleeperMark, WatermarkKey

DIGITS = load_digits()
KEYS = 200
INDEPENDENT = (("cnn", 1), ("mlp", 2), ("cnn-wide", 3))


@pytest.fixture(scope="module")
def independent() -> dict[str, torch.nn.Module]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {f"{arch}-{seed}": train_new(arch, DIGITS.train.x, DIGITS.train.y, num_classes=10,
                                            epochs=10, seed=seed) for arch, seed in INDEPENDENT}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("scheme", [CompositeMark(n=40), MarginMark(n=40), DarkMark(n=40),
                                    SleeperMark(n=40, channels=8, size=4)],
                         ids=lambda s: s.family)
def test_p_values_are_valid_over_200_keys_and_independent_models(
        scheme: CompositeMark | MarginMark | DarkMark | SleeperMark,
        independent: dict[str, torch.nn.Module]) -> None:
    p_fixed: list[float] = []
    p_any: list[float] = []
    hits = 0
    for k in range(KEYS):
        probes = scheme.probes(WatermarkKey(k.to_bytes(32, "big")), num_classes=10,
                               input_shape=DIGITS.train.input_shape, data=DIGITS.train)
        for model in independent.values():
            answers = predict(model, probes.inputs, rank=probes.rank)
            bits = tuple(bool(b) for b in (answers == probes.expected))
            hits += sum(bits)
            t = TestInput("owner", "watermark", probes.null, bits, tuple(range(1, len(bits) + 1)),
                          population=len(bits))
            fixed = compute_statistics([t], alpha=1e-6, mode="fixed")
            anytime = compute_statistics([t], alpha=1e-6, mode="sequential", futility=DEFAULT_FUTILITY)
            assert fixed.verdict != "owned" and anytime.verdict != "owned"
            p_fixed.append(fixed.p_value)
            p_any.append(anytime.p_value)
    trials = KEYS * len(independent) * scheme.n
    # the match rate itself is 1/C: Binomial(trials, 0.1) within 4 standard deviations
    assert abs(hits - 0.1 * trials) <= 4 * math.sqrt(trials * 0.09), hits / trials
    report = {}
    for level in (0.01, 0.05, 0.1):
        for label, values in (("fixed", p_fixed), ("anytime", p_any)):
            share = sum(p <= level for p in values) / len(values)
            slack = 3 * math.sqrt(level * (1 - level) / len(values))
            report[f"{label}@{level}"] = share
            assert share <= level + slack, (label, level, share)
    print(f"\n{scheme.family} validity: " + json.dumps({k: round(v, 4) for k, v in report.items()})
          + f"; match rate {hits / trials:.4f}")
    assert min(p_fixed) > 1e-6 and min(p_any) > 1e-6
