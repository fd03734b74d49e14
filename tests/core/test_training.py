"""The shared training loop really trains, on hard and soft targets, whole or epoch by epoch."""

from __future__ import annotations

import pytest
import torch

from core.arch import build_model
from core.data import load_digits
from core.errors import InputError
from core.training import accuracy, predict, train_classifier, train_new, training_epochs

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


def test_training_epochs_is_train_classifier_one_epoch_at_a_time() -> None:
    x, y = DIGITS.train.x[:200], DIGITS.train.y[:200]
    torch.manual_seed(0)
    stepped = build_model("cnn", (1, 8, 8), 10)
    steps = training_epochs(stepped, x, y, epochs=3, seed=4)
    losses = []
    for loss in steps:
        assert not stepped.training  # in eval mode between epochs
        losses.append(loss)
    seen: list[float] = []
    torch.manual_seed(0)
    whole = train_classifier(build_model("cnn", (1, 8, 8), 10), x, y, epochs=3, seed=4,
                             progress=lambda e, n, loss: seen.append(loss))
    assert len(losses) == 3 and losses == seen and losses[-1] < losses[0]
    assert all(torch.equal(p, q) for p, q in zip(stepped.parameters(), whole.parameters(), strict=True))
    with pytest.raises(InputError, match="batch size must be at least 1"):
        training_epochs(stepped, x, y, epochs=1, seed=0, batch_size=0)  # checked at once, not lazily



def test_cosine_schedule_starts_at_lr_and_decays() -> None:
    x, y = DIGITS.train.x[:200], DIGITS.train.y[:200]

    def weights(epochs: int, schedule: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        m = train_classifier(build_model("mlp", (1, 8, 8), 10), x, y, epochs=epochs, seed=1,
                             schedule=schedule)  # type: ignore[arg-type]
        return [p.detach().clone() for p in m.parameters()]

    # the first epoch runs at the full rate, later ones slower
    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(p, q) for p, q in zip(a, b, strict=True))

    assert same(weights(1, "cosine"), weights(1, "constant"))
    assert not same(weights(3, "cosine"), weights(3, "constant"))
    with pytest.raises(InputError, match="unknown learning-rate schedule 'step'"):
        training_epochs(build_model("mlp", (1, 8, 8), 10), x, y, epochs=1, seed=0, schedule="step")  # type: ignore[arg-type]
