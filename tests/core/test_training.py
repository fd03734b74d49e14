"""The shared training loop really trains, on hard and soft targets."""

from __future__ import annotations

import pytest
import torch

from core.data import load_digits
from core.errors import InputError
from core.training import accuracy, predict, train_new

DIGITS = load_digits()


def test_hard_and_soft_targets_train() -> None:
    hard = train_new("mlp", DIGITS.train.x, DIGITS.train.y, num_classes=10, epochs=15, seed=0)
    assert accuracy(hard, DIGITS.test.x, DIGITS.test.y) >= 0.93
    with torch.no_grad():
        probs = torch.softmax(hard(DIGITS.attacker_pool.x), dim=1)  # type: ignore[union-attr]
    soft = train_new("mlp", DIGITS.attacker_pool.x, probs, num_classes=10, epochs=30, seed=1)  # type: ignore[union-attr]
    agreement = float((predict(soft, DIGITS.test.x) == predict(hard, DIGITS.test.x)).float().mean())
    assert agreement >= 0.9


def test_same_seed_same_model() -> None:
    a = train_new("cnn", DIGITS.train.x[:200], DIGITS.train.y[:200], num_classes=10, epochs=2, seed=3)
    b = train_new("cnn", DIGITS.train.x[:200], DIGITS.train.y[:200], num_classes=10, epochs=2, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="epochs must be at least 1"):
        train_new("mlp", DIGITS.train.x, DIGITS.train.y, num_classes=10, epochs=0, seed=0)
    with pytest.raises(InputError, match="accuracy of an empty set"):
        accuracy(lambda x: x, torch.zeros(0, 1), torch.zeros(0))
