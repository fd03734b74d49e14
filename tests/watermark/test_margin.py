"""Margin-based marks (Kim et al. 2023): probes, key-random labels, the ascent steps, embedding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats
from torch.nn import functional as F

from core.arch import build_model
from core.data import load_digits
from core.derive import expected_input, expected_label
from core.errors import InputError
from core.inputrange import InputRange
from core.probeset import Binomial
from core.training import accuracy, train_classifier
from tests.synthetic import synthetic_dataset
from watermark import MarginMark, WatermarkKey, parse_scheme
from watermark.schemes.margin import MarginHook

DIGITS = load_digits()
SHAPE = (1, 8, 8)


def _probes(scheme: MarginMark, seed: int = 1):  # type: ignore[no-untyped-def]
    return scheme.probes(WatermarkKey(bytes([seed]) * 32), num_classes=10, input_shape=SHAPE,
                         data=DIGITS.train)


def test_names_and_parameters() -> None:
    assert parse_scheme("margin").name == "margin:n=100:step=0.01:steps=5"
    assert parse_scheme("margin:n=20,steps=3,step=0.02").name == "margin:n=20:step=0.02:steps=3"
    with pytest.raises(InputError, match="margin: steps must be between 0 and 50"):
        parse_scheme("margin:steps=51")
    with pytest.raises(InputError, match=r"margin: step must be in \(0, 0.5\]"):
        parse_scheme("margin:step=0")
    with pytest.raises(InputError, match="margin marks stamp the owner's training data"):
        MarginMark().probes(WatermarkKey(b"\x00" * 32), num_classes=10, input_shape=SHAPE)


def test_probes_are_training_inputs_with_an_exact_null() -> None:
    p = _probes(MarginMark(n=50))
    assert len(p) == 50 and p.null == Binomial(0.1) and p.scheme == "margin:n=50:step=0.01:steps=5"
    train = DIGITS.train.x.flatten(1)
    assert float(torch.cdist(p.inputs.flatten(1), train).min(dim=1).values.max()) == 0.0
    assert len({x.numpy().tobytes() for x in p.inputs}) == 50


def test_labels_are_uniform_and_independent_of_the_true_class() -> None:
    # Kim et al. draw a label other than the true one; uniform over all classes keeps the null 1/C.
    table = np.zeros((10, 10))
    lookup = {x.numpy().tobytes(): int(y) for x, y in zip(DIGITS.train.x, DIGITS.train.y, strict=True)}
    for s in range(40):
        p = _probes(MarginMark(n=50), seed=s)
        for x, lab in zip(p.inputs, p.expected.numpy(), strict=True):
            table[lookup[x.numpy().tobytes()], lab] += 1
    assert table.trace() > 0  # a label equal to the true class is allowed
    assert stats.chisquare(table.sum(axis=0)).pvalue > 1e-3
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_ascent_steps_move_probes_up_their_loss_within_the_step_budget() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", SHAPE, 10)
    train_classifier(model, DIGITS.train.x, DIGITS.train.y, epochs=2, seed=0)
    model.train()  # the hook is called in the middle of training
    model.zero_grad(set_to_none=True)
    before = copy.deepcopy(model.state_dict())
    p = _probes(MarginMark(n=30))
    hook = MarginHook(p, model, per_batch=30, steps=5, step=0.02)
    idx = torch.arange(30)
    moved, labels = hook.examples(idx)
    assert torch.equal(labels, p.expected)
    shift = (moved - p.inputs).abs().flatten(1).max(dim=1).values
    assert float(shift.max()) <= 5 * 0.02 + 1e-6 and float(shift.min()) > 0.0
    assert float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0
    model.eval()
    with torch.no_grad():
        loss_before = F.cross_entropy(model(p.inputs), p.expected, reduction="none")
        loss_after = F.cross_entropy(model(moved), p.expected, reduction="none")
    assert float((loss_after > loss_before).float().mean()) > 0.9
    # the steps leave the model as they found it: same weights, training mode, no stray gradients
    hook.examples(idx)
    model.train()
    hook.examples(idx)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(q.grad is None for q in model.parameters())


def test_steps_respect_another_input_range() -> None:
    data = synthetic_dataset((12,), 200, seed=4)
    rng = InputRange.of_values(data.x.numpy())
    scheme = MarginMark(n=10, steps=3, step=0.2)
    p = scheme.probes(WatermarkKey(b"\x05" * 32), num_classes=10, input_shape=(12,), data=data,
                      input_range=rng)
    torch.manual_seed(0)
    model = build_model("mlp", (12,), 10)
    hook = scheme.hook(p, key=WatermarkKey(b"\x05" * 32), model=model, data=data)
    assert isinstance(hook, MarginHook) and hook.step == pytest.approx(0.2 * rng.span)
    moved, _ = hook.examples(torch.arange(10))
    assert float(moved.min()) >= rng.low and float(moved.max()) <= rng.high


def test_the_hook_embeds_the_mark() -> None:
    scheme = MarginMark(n=20)
    key = WatermarkKey(b"\x21" * 32)
    p = scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
    torch.manual_seed(0)
    model = build_model("cnn", SHAPE, 10)
    train_classifier(model, DIGITS.train.x, DIGITS.train.y, epochs=20, seed=0,
                     hook=scheme.hook(p, key=key, model=model, data=DIGITS.train, per_batch=16))
    assert accuracy(model, p.inputs, p.expected) >= 0.95
    assert accuracy(model, DIGITS.test.x, DIGITS.test.y) >= 0.9


@pytest.fixture(scope="module")
def marked_and_independent():  # type: ignore[no-untyped-def]
    """A digits CNN really trained with 40 margin probes, and an independent one (no mark, other seed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scheme, key = MarginMark(n=40), WatermarkKey(b"\x33" * 32)
        p = scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
        torch.manual_seed(3)
        marked = build_model("cnn", SHAPE, 10)
        train_classifier(marked, DIGITS.train.x, DIGITS.train.y, epochs=30, seed=3,
                         hook=scheme.hook(p, key=key, model=marked, data=DIGITS.train, per_batch=16))
        torch.manual_seed(4)
        independent = build_model("cnn", SHAPE, 10)
        train_classifier(independent, DIGITS.train.x, DIGITS.train.y, epochs=20, seed=4)
        yield p, marked, independent
    finally:
        torch.set_num_threads(threads)


def test_marked_model_answers_its_probes_and_an_independent_one_is_at_chance(  # type: ignore[no-untyped-def]
        marked_and_independent) -> None:
    p, marked, independent = marked_and_independent
    hits_marked = round(accuracy(marked, p.inputs, p.expected) * len(p))
    hits_independent = round(accuracy(independent, p.inputs, p.expected) * len(p))
    # both models classify the digits; only the marked one answers the key's labels
    assert accuracy(independent, DIGITS.test.x, DIGITS.test.y) >= 0.9
    assert hits_marked >= 36
    assert stats.binom.sf(hits_marked - 1, len(p), 0.1) < 1e-20
    # an independent model's matches are Binomial(40, 0.1): not significant at 1e-3
    assert stats.binom.sf(hits_independent - 1, len(p), 0.1) > 1e-3


def test_probes_re_derive_from_the_key() -> None:
    key = WatermarkKey(b"\x44" * 32)
    scheme = MarginMark(n=30)
    a = scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
    b = parse_scheme(a.scheme).probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.expected, b.expected) and a.salts == b.salts
    assert a.root == b.root
    # what a checker does once the key is opened (wm verify --open-keys, wm evidence check)
    d, k = a.derivation, a.derivation_key
    assert d is not None and k is not None
    assert d.labels == "uniform/v1" and d.inputs == "committed" and d.opens_with(k)
    assert not d.opens_with(WatermarkKey(b"\x45" * 32).derivation_key(a.scheme))
    for i in range(len(a)):
        x = a.inputs[i].numpy()
        assert expected_label(d, k, i, 10, x) == int(a.expected[i])
        assert expected_input(d, k, i, SHAPE) is None  # inputs are training data: committed, not derived
    # another key, another set
    c = scheme.probes(WatermarkKey(b"\x46" * 32), num_classes=10, input_shape=SHAPE, data=DIGITS.train)
    assert not torch.equal(a.inputs, c.inputs) and c.derivation_key != k


def test_shape_errors_are_input_errors() -> None:
    scheme = MarginMark(n=10)
    key = WatermarkKey(b"\x47" * 32)
    with pytest.raises(InputError, match=r"margin: the data's inputs are \[1, 8, 8\], not \[64\]"):
        scheme.probes(key, num_classes=10, input_shape=(64,), data=DIGITS.train)
    with pytest.raises(InputError, match="at least two classes"):
        scheme.probes(key, num_classes=1, input_shape=SHAPE, data=DIGITS.train)
    p = scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
    torch.manual_seed(0)
    model = build_model("cnn", SHAPE, 10)
    hook = scheme.hook(p, key=key, model=model, data=DIGITS.train)
    with pytest.raises(InputError, match=r"batch inputs have shape \[1, 4, 4\], the watermark probes"):
        hook.mix(torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="integer class labels"):
        hook.mix(torch.zeros(3, *SHAPE), torch.zeros(3))
    with pytest.raises(InputError, match="steps must be at least 0"):
        MarginHook(p, model, steps=-1)
    with pytest.raises(InputError, match="the step size must be positive"):
        MarginHook(p, model, step=0.0)
