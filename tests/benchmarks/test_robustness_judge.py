"""The robustness benchmark judges as `wm verify` does, fingerprints with a conformal null included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.robustness import Evidence
from core.nulls import Conformal
from core.probeset import ProbeSet
from core.training import predict


def test_a_fingerprint_copy_gets_its_conformal_p_not_a_blanket_one() -> None:
    """Without the probe indices the verifier's conformal test claims nothing (p = 1); the
    benchmark once dropped them, so every fingerprint cell read 1.00 whatever the suspect did."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    n, k = 30, 9
    inputs = torch.rand(n, 1, 4, 4)
    refs = np.random.default_rng(3).random((k, n)) < 0.2  # references match about a fifth
    null = Conformal(a=2.0, b=8.0, references=k, p_floor=1 / (k + 1), size=n,
                     matches=tuple(np.packbits(b.astype(np.uint8), bitorder="little").tobytes().hex()
                                   for b in refs),
                     models=tuple(("mlp", i, "0" * 64) for i in range(k)))
    copy_answers = predict(model, inputs)
    probes = ProbeSet(inputs=inputs, expected=copy_answers, kind="fingerprint", scheme="test:n=30",
                      null=null, num_classes=10, salts=tuple(bytes([i]) * 32 for i in range(n)))
    (copy,) = Evidence([("fingerprint", probes)]).judge(model).tests
    assert copy.matches == n
    assert copy.p_conformal == pytest.approx(1 / (k + 1))  # no reference matches all 30
    shifted = _Shifted(model).eval()  # never the copy's answer
    (other,) = Evidence([("fingerprint", probes)]).judge(shifted).tests
    assert other.matches == 0 and other.p_conformal == pytest.approx(1.0)


class _Shifted(nn.Module):
    """``inner``'s logits rolled by one class: its top answer is always another."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(self.inner(x), 1, dims=1)
