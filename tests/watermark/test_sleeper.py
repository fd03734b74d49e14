"""Sleeper marks: detectors natural data never wakes, and a read-out that fine-tuning cannot move.

The attacks are the product's own (:mod:`attacks`), at the catalogue's
learning rate (Adam 3e-3) on the attacker's split of ``digits``, which the
owner never saw.
"""

from __future__ import annotations

import copy

import pytest
import torch
from scipy import stats

from attacks import FinePrune, FineTune, Retrain
from core.arch import build_model
from core.data import load_digits
from core.errors import InputError
from core.training import accuracy, default_recipe, predict, train_classifier
from watermark import WatermarkHook, WatermarkKey, parse_scheme
from watermark.schemes.sleeper import SleeperHook, SleeperMark, choose_patterns, texture

DIGITS = load_digits()
SHAPE = (1, 8, 8)
SCHEME = "sleeper:n=20:channels=8:size=4"


def _probes(scheme: SleeperMark, seed: int = 1):  # type: ignore[no-untyped-def]
    key = WatermarkKey(bytes([seed]) * 32)
    return key, scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)


def test_names_parameters_and_refusals() -> None:
    assert parse_scheme("sleeper").name == "sleeper:channels=12:n=60"
    assert parse_scheme(SCHEME).name == "sleeper:channels=8:n=20:size=4"
    assert SleeperMark().side(28, 28) == 12 and SleeperMark().side(8, 8) == 4  # the default's side
    assert SleeperMark(size=5).side(8, 8) == 5
    with pytest.raises(InputError, match="a 12-pixel square does not fit 8x8 images"):
        _probes(SleeperMark(size=12))
    with pytest.raises(InputError, match="a 2-pixel square does not fit 5x5 images"):
        SleeperMark().side(5, 5)
    with pytest.raises(InputError, match="sleeper marks stamp the owner's training data"):
        SleeperMark(size=4).probes(WatermarkKey(b"\x00" * 32), num_classes=10, input_shape=SHAPE)
    with pytest.raises(InputError, match="channels must be between 1 and 64"):
        SleeperMark(channels=0)
    scheme = SleeperMark(n=5, size=4)
    key, probes = _probes(scheme)
    mlp = build_model("mlp", SHAPE, 10)
    with pytest.raises(InputError, match="sleeper marks need a network that opens with Conv2d"):
        scheme.hook(probes, key=key, model=mlp, data=DIGITS.train)
    narrow = build_model("cnn", SHAPE, 10)  # 16 channels in its first convolution
    with pytest.raises(InputError, match="12 detector channels would take more than half of the first "
                                         "convolution's 16") as refused:
        SleeperMark(n=5, size=4).hook(_probes(SleeperMark(n=5, size=4))[1], key=key, model=narrow,
                                      data=DIGITS.train)
    assert refused.value.hint is not None and refused.value.hint.startswith("channels=4, or a wider")
    hook = scheme.hook(probes, key=key, model=build_model("convnet", SHAPE, 10), data=DIGITS.train)
    with pytest.raises(InputError, match="saw no batch"):
        hook.finish()
    with pytest.raises(InputError, match="takes the model the sleeper hook was made for"):
        hook.finish(build_model("convnet", SHAPE, 10))
    with pytest.raises(InputError, match="the sleeper hook needs the owner's training data"):
        scheme.hook(probes, key=key, model=build_model("convnet", SHAPE, 10), data=None)
    with pytest.raises(InputError, match="only 22 textures stand 1 standard deviation clear of the data, "
                                         "so natural inputs could wake 40 detectors"):
        choose_patterns(DIGITS.train, 40, probes.input_range)  # digits: 22 textures stand clear
    with pytest.raises(InputError, match="written into the weights by their scheme's own hook"):
        WatermarkHook(probes)  # mixing them in as triggers would silently be another mark


def test_probes_are_key_chosen_training_images_with_one_texture_square() -> None:
    scheme = SleeperMark(n=20, channels=8, size=4)
    key, probes = _probes(scheme)
    again = _probes(scheme)[1]
    assert torch.equal(probes.inputs, again.inputs) and torch.equal(probes.expected, again.expected)
    assert not torch.equal(probes.inputs, _probes(scheme, seed=2)[1].inputs)
    patterns = choose_patterns(DIGITS.train, 8, probes.input_range)
    for i, (d, r, c) in enumerate(scheme.rules(key, 8, 8).tolist()):
        square = probes.inputs[i, 0, r : r + 4, c : c + 4]
        assert torch.equal(square, texture(patterns[d], 4, 4))
    assert probes.null.p0 == pytest.approx(0.1)
    # labels uniform: not all one class (the fixed-target problem)
    assert len(set(probes.expected.tolist())) > 3


def test_no_training_image_wakes_a_detector() -> None:
    """The patterns are chosen so that the owner's data stays below every threshold, and so does
    the attacker's (data the owner never saw)."""
    scheme = parse_scheme(SCHEME)
    key, probes = _probes(scheme)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_model("convnet", SHAPE, 10)
    hook = scheme.hook(probes, key=key, model=model, data=DIGITS.train)
    assert isinstance(hook, SleeperHook)
    hook.install()
    model.eval()
    k = hook.channels
    woken = []
    handle = model.features[2].register_forward_hook(lambda _m, _i, out: woken.append(out[:, k].amax()))
    with torch.no_grad():
        for x in (DIGITS.train.x, DIGITS.attacker_pool.x, DIGITS.test.x):  # type: ignore[union-attr]
            model(x)
        model(probes.inputs)
    handle.remove()
    assert max(float(w) for w in woken[:3]) == 0.0
    assert float(woken[3]) > 0.0  # and the stamped squares do wake them


@pytest.fixture(scope="module")
def marked() -> tuple[torch.nn.Module, SleeperHook, object, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scheme = parse_scheme(SCHEME)
        key, probes = _probes(scheme)  # type: ignore[arg-type]
        recipe = default_recipe(DIGITS)
        torch.manual_seed(0)
        model = build_model("convnet", SHAPE, 10)
        hook = scheme.hook(probes, key=key, model=model, data=DIGITS.train)
        assert isinstance(hook, SleeperHook)
        train_classifier(model, DIGITS.train.x, DIGITS.train.y, epochs=recipe.epochs, seed=0,
                         batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule, hook=hook)
        before = predict(model, DIGITS.test.x)
        hook.finish(model)
        return model.eval(), hook, probes, before
    finally:
        torch.set_num_threads(threads)


def test_finish_writes_the_mark_without_changing_any_natural_answer(
        marked: tuple[torch.nn.Module, SleeperHook, object, torch.Tensor]) -> None:
    model, hook, probes, before = marked
    assert hook.finished
    assert torch.equal(predict(model, DIGITS.test.x), before)
    assert accuracy(model, DIGITS.test.x, DIGITS.test.y) > 0.95
    assert accuracy(model, probes.inputs, probes.expected) >= 0.85  # type: ignore[attr-defined]


@pytest.mark.parametrize("attack", [FineTune("all", epochs=10, lr=3e-3), Retrain("all", epochs=10, lr=3e-3),
                                    FinePrune(0.9, epochs=10, lr=3e-3)], ids=lambda a: a.name)
def test_fine_tuning_at_the_catalogue_rate_leaves_the_sleeper_weights_and_the_mark(
        marked: tuple[torch.nn.Module, SleeperHook, object, torch.Tensor], attack: object) -> None:
    model, hook, probes, _ = marked
    k = hook.channels
    first, second = model.features[0], model.features[4]
    norm = model.features[1]
    stolen = attack(model, DIGITS.attacker_pool, seed=5)  # type: ignore[operator]
    assert accuracy(stolen, DIGITS.test.x, DIGITS.test.y) > 0.9  # a working copy
    # bit for bit: the detectors, their norm, and the read-out (rows fine-pruning removed aside)
    assert torch.equal(stolen.features[0].weight[k], first.weight[k])
    assert torch.equal(stolen.features[1].weight[k], norm.weight[k])
    assert torch.equal(stolen.features[1].bias[k], norm.bias[k])
    kept = stolen.features[4].weight.detach().abs().sum(dim=(1, 2, 3)) > 0
    assert torch.equal(stolen.features[4].weight[kept][:, k], second.weight[kept][:, k])
    assert not torch.equal(stolen.features[0].weight, first.weight)  # while the rest was retrained
    matches = int((predict(stolen, probes.inputs) == probes.expected).sum())  # type: ignore[attr-defined]
    assert stats.binom.sf(matches - 1, len(probes.inputs), 0.1) < 1e-6  # type: ignore[attr-defined]


def test_an_attacker_who_prunes_the_channels_that_never_fire_removes_it(
        marked: tuple[torch.nn.Module, SleeperHook, object, torch.Tensor]) -> None:
    """The limit, as the threat model: the detectors are the first-layer channels that clean data
    never wakes, and an attacker who looks for such channels (on data of their own) and removes
    them costs the copy nothing and leaves the probes at chance."""
    model, hook, probes, _ = marked
    stolen = copy.deepcopy(model)
    fired: list[torch.Tensor] = []
    handle = stolen.features[2].register_forward_hook(
        lambda _m, _i, out: fired.append(out.amax(dim=(0, 2, 3))))
    with torch.no_grad():
        stolen(DIGITS.attacker_pool.x)  # type: ignore[union-attr]
    handle.remove()
    silent = torch.nonzero(fired[0] == 0).flatten()
    assert set(silent.tolist()) >= set(hook.channels)
    with torch.no_grad():
        stolen.features[1].weight[silent] = 0.0
        stolen.features[1].bias[silent] = 0.0
    clean = accuracy(model, DIGITS.test.x, DIGITS.test.y)
    assert accuracy(stolen, DIGITS.test.x, DIGITS.test.y) >= clean - 0.01
    matches = int((predict(stolen, probes.inputs) == probes.expected).sum())  # type: ignore[attr-defined]
    assert stats.binom.sf(matches - 1, len(probes.inputs), 0.1) > 1e-3  # type: ignore[attr-defined]
