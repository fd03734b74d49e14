"""Each removal attack of :mod:`attacks` really does what its name says, on any input shape.

One small owner CNN (and one MLP, for the dense code paths) per module,
read-only: every attack is checked not to mutate it. Then the same attacks on
a normalised 3x12x12 ResNet and on flat features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from attacks import (
    Distill,
    Extract,
    FinePrune,
    FineTune,
    Prune,
    Quantize,
    Retrain,
    WeightAttack,
    WeightNoise,
    query_inputs,
    query_model,
)
from core.data import Dataset, load_digits
from core.errors import InputError
from core.inputrange import InputRange
from core.training import accuracy, predict, train_new
from tests.synthetic import synthetic_dataset

DIGITS = load_digits()
assert DIGITS.attacker_pool is not None
POOL: Dataset = DIGITS.attacker_pool
SMALL = Dataset(POOL.x[:128], POOL.y[:128], 10)  # enough for properties that hold at any size


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small models train faster on one thread, most of all on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def owner() -> nn.Module:
    return train_new("cnn", DIGITS.train.x, DIGITS.train.y, num_classes=10, epochs=8, seed=0)


@pytest.fixture(scope="module")
def owner_mlp() -> nn.Module:
    return train_new("mlp", DIGITS.train.x, DIGITS.train.y, num_classes=10, epochs=15, seed=0)


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _weights(m: nn.Module) -> list[torch.Tensor]:
    return [layer.weight for layer in _layers(m)]


def _layers(m: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    return [layer for layer in m.modules() if isinstance(layer, nn.Conv2d | nn.Linear)]


def _test_acc(m: nn.Module) -> float:
    return accuracy(m, DIGITS.test.x, DIGITS.test.y)


def _agreement(a: nn.Module, b: nn.Module) -> float:
    return float((predict(a, DIGITS.test.x) == predict(b, DIGITS.test.x)).float().mean())


# Cheap settings of every weight attack (the properties below hold at any size).
CHEAP: list[WeightAttack] = [
    FineTune("last", epochs=2),
    FineTune("all", epochs=2),
    Retrain("last", epochs=2),
    Retrain("all", epochs=2),
    Prune(0.5),
    FinePrune(0.5, epochs=2),
    Quantize(),
    WeightNoise(0.2),
    Distill(epochs=2),
    Distill("mlp", epochs=2),
]
SEEDED = [a for a in CHEAP if not isinstance(a, Prune | Quantize)]


@pytest.mark.parametrize("attack", CHEAP, ids=lambda a: a.name)
def test_input_not_mutated_and_output_is_a_new_eval_model(owner: nn.Module,
                                                           attack: WeightAttack) -> None:
    before = _state(owner)
    grads = [p.requires_grad for p in owner.parameters()]
    out = attack(owner, SMALL, seed=1)
    assert _same(before, _state(owner))
    assert [p.requires_grad for p in owner.parameters()] == grads
    assert not owner.training
    assert out is not owner and not out.training
    assert all(p.requires_grad for p in out.parameters())  # nothing left frozen
    assert not any(o is p for o in out.parameters() for p in owner.parameters())


@pytest.mark.parametrize("attack", SEEDED, ids=lambda a: a.name)
def test_same_seed_same_model_other_seed_other_model(owner: nn.Module, attack: WeightAttack) -> None:
    a = _state(attack(owner, SMALL, seed=3))
    assert _same(a, _state(attack(owner, SMALL, seed=3)))
    assert not _same(a, _state(attack(owner, SMALL, seed=4)))


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7, 0.9])
def test_prune_zeroes_exactly_the_smallest_weights(owner: nn.Module, fraction: float) -> None:
    out = Prune(fraction)(owner)
    for w0, w1 in zip(_weights(owner), _weights(out), strict=True):
        zeroed = w1 == 0
        assert int(zeroed.sum()) == round(fraction * w0.numel())
        # every zeroed weight was no larger than every kept one; kept ones are unchanged
        a0 = w0.detach().abs()
        assert float(a0[zeroed].max()) <= float(a0[~zeroed].min())
        assert torch.equal(w1[~zeroed], w0[~zeroed])
    for a, b in zip(_layers(owner), _layers(out), strict=True):
        assert a.bias is not None and b.bias is not None and torch.equal(a.bias, b.bias)


def test_prune_hurts_more_as_it_prunes_more(owner: nn.Module) -> None:
    assert _test_acc(Prune(0.3)(owner)) >= _test_acc(owner) - 0.05
    assert _test_acc(Prune(0.9)(owner)) < _test_acc(owner) - 0.2


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_rounds_to_integer_levels(owner: nn.Module, bits: int) -> None:
    attack = Quantize(bits)
    out = attack(owner)
    for w0, w1 in zip(_weights(owner), _weights(out), strict=True):
        scale = float(w0.detach().abs().max()) / attack.levels
        levels = w1.double() / scale
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert int(levels.round().abs().max()) == attack.levels
        assert len(torch.unique(levels.round())) <= 2 * attack.levels + 1
        assert float((w1 - w0).detach().abs().max()) <= scale / 2 + 1e-6
        assert not torch.equal(w0, w1)
    assert attack.levels == (127 if bits == 8 else 7)
    assert _test_acc(out) >= _test_acc(owner) - 0.05


def test_weight_noise_has_the_stated_size(owner: nn.Module) -> None:
    out = WeightNoise(0.5)(owner, POOL, seed=0)
    for w0, w1 in zip(_weights(owner), _weights(out), strict=True):
        ratio = float((w1 - w0).detach().std()) / float(w0.detach().std())
        assert 0.4 < ratio < 0.6, ratio
    assert _same(_state(WeightNoise(0.0)(owner, POOL, seed=0)), _state(owner))


def test_fine_tune_all_changes_every_layer_and_keeps_accuracy(owner: nn.Module) -> None:
    out = FineTune("all", epochs=3)(owner, POOL, seed=0)
    assert all(not torch.equal(a, b) for a, b in zip(_weights(owner), _weights(out), strict=True))
    assert _test_acc(out) >= _test_acc(owner) - 0.05


@pytest.mark.parametrize("attack", [FineTune("last", epochs=3), Retrain("last", epochs=5, lr=1e-2)],
                         ids=lambda a: a.name)
def test_last_layer_attacks_change_only_the_last_layer(owner: nn.Module,
                                                       attack: WeightAttack) -> None:
    out = attack(owner, POOL, seed=0)
    w0, w1 = _weights(owner), _weights(out)
    assert all(torch.equal(a, b) for a, b in zip(w0[:-1], w1[:-1], strict=True))
    assert not torch.equal(w0[-1], w1[-1])
    assert _test_acc(out) >= _test_acc(owner) - 0.05


def test_retrain_starts_the_last_layer_afresh(owner: nn.Module) -> None:
    # After one step the re-initialised head is still far from the owner's.
    out = Retrain("all", epochs=1, lr=1e-5)(owner, POOL, seed=0)
    head0, head1 = _weights(owner)[-1], _weights(out)[-1]
    assert float((head1 - head0).detach().norm()) > 0.5 * float(head0.detach().norm())
    assert torch.allclose(_weights(owner)[0], _weights(out)[0], atol=1e-3)
    assert _test_acc(Retrain("all", epochs=3, lr=3e-3)(owner, POOL, seed=0)) >= _test_acc(owner) - 0.05


@pytest.mark.parametrize("fraction", [0.5, 0.75])
def test_fine_prune_removes_the_least_active_units(owner: nn.Module, owner_mlp: nn.Module,
                                                   fraction: float) -> None:
    # the last convolution of the CNN, the last hidden dense layer of the MLP
    for model, index in ((owner, 1), (owner_mlp, 1)):
        out = FinePrune(fraction, epochs=3)(model, POOL, seed=0)
        layer = _layers(out)[index]
        assert layer.bias is not None
        units = layer.weight.shape[0]
        w, b = layer.weight.detach(), layer.bias.detach()
        dead = [i for i in range(units) if not w[i].any() and float(b[i]) == 0.0]
        assert len(dead) == round(fraction * units)
        assert not hasattr(layer, "weight_orig")  # the pruning is made permanent
        # the removed units are the least active of the original model on clean data
        with torch.no_grad():
            a = _layers(model)[index](_prefix(model, index)(POOL.x)).clamp(min=0)
        mean = a.mean(dim=[0, *range(2, a.dim())])
        alive = [i for i in range(mean.numel()) if i not in dead]
        assert float(mean[dead].max()) <= float(mean[alive].min()) + 1e-6
        assert _test_acc(out) >= _test_acc(model) - 0.05


def _prefix(model: nn.Module, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network up to the input of its ``index``-th weighted layer (both archs are Sequentials)."""
    layers = [m for m in model.modules() if not isinstance(m, nn.Sequential) and m is not model
              and not list(m.children())]
    target = _layers(model)[index]
    return nn.Sequential(*layers[: layers.index(target)])


@pytest.mark.parametrize("student", [None, "mlp"])
def test_distillation_student_agrees_with_its_teacher(owner: nn.Module, student: str | None) -> None:
    out = Distill(student, epochs=8)(owner, POOL, seed=0)
    assert _agreement(out, owner) >= 0.9
    if student is None:
        # same architecture, but learnt afresh: no weight is the teacher's
        assert all(not torch.allclose(a, b, atol=1e-2)
                   for a, b in zip(_weights(owner), _weights(out), strict=True))


@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_extraction_surrogate_agrees_with_its_teacher(owner: nn.Module, output: str) -> None:
    calls: list[int] = []
    api = query_model(owner, output)  # type: ignore[arg-type]

    def answer(x: torch.Tensor) -> torch.Tensor:  # an opaque API: sees inputs, returns answers
        calls.append(x.shape[0])
        return api(x)

    queries = query_inputs(POOL.x, 539, seed=0)
    surrogate = Extract("mlp", epochs=10, query_batch=128)(answer, queries, num_classes=10, seed=0)
    assert sum(calls) == 539 and max(calls) <= 128
    assert _agreement(surrogate, owner) >= 0.9
    assert not surrogate.training


def test_extraction_reads_labels_shaped_n_by_1_and_rejects_garbage() -> None:
    x = POOL.x[:8]
    ex = Extract("mlp")
    labels = ex.answers(lambda q: torch.arange(q.shape[0])[:, None] % 10, x, num_classes=10)
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    bad: list[tuple[Callable[[torch.Tensor], torch.Tensor], str]] = [
        (lambda q: torch.full((q.shape[0],), 10), "label outside 0..9"),
        (lambda q: torch.zeros(q.shape[0] - 1, dtype=torch.int64), "answered 7 of 8"),
        (lambda q: torch.full((q.shape[0], 10), 0.5), "not probabilities"),
        (lambda q: torch.full((q.shape[0], 3), 1 / 3), r"shape \[N, 10\]"),
    ]
    for fn, message in bad:
        with pytest.raises(InputError, match=message):
            ex.answers(fn, x, num_classes=10)


def test_query_inputs_nest_and_augment() -> None:
    small = query_inputs(POOL.x, 100, seed=5)
    full = query_inputs(POOL.x, 539, seed=5)
    big = query_inputs(POOL.x, 1200, seed=5)
    assert torch.equal(small, full[:100]) and torch.equal(full, big[:539])
    assert big.shape == (1200, 1, 8, 8) and float(big.min()) >= 0.0 and float(big.max()) <= 1.0
    # the pool, each image once; then new inputs, none a copy of a pool image
    assert len(torch.unique(full.flatten(1), dim=0)) == len(torch.unique(POOL.x.flatten(1), dim=0))
    assert not (big[539:, None].flatten(2) == POOL.x[None].flatten(2)).all(dim=2).any()
    assert torch.equal(big, query_inputs(POOL.x, 1200, seed=5))
    assert not torch.equal(big, query_inputs(POOL.x, 1200, seed=6))


def test_names_carry_every_parameter() -> None:
    assert FineTune("last", epochs=5, lr=0.01).name == "ftll:epochs=5:lr=0.01"
    assert Retrain("all").name == "rtal:epochs=20:lr=0.001"
    assert Retrain("all", weight_decay=5e-4).name == "rtal:epochs=20:lr=0.001:wd=0.0005"
    assert Prune(0.7).name == "prune:fraction=0.7"
    assert FinePrune(0.5).name == "fine-prune:fraction=0.5:epochs=10:lr=0.001"
    assert Quantize().name == "quantize:bits=8:scale=per-tensor"
    assert WeightNoise(0.25).name == "noise:scale=0.25"
    assert Distill("mlp", temperature=2).name == "distill:student=mlp:t=2:epochs=30:lr=0.003"
    assert Extract("cnn-wide").name == "extract:arch=cnn-wide:epochs=30:lr=0.003"


def test_bad_parameters_and_models_are_refused(owner: nn.Module) -> None:
    with pytest.raises(InputError, match="pruned fraction"):
        Prune(1.0)
    with pytest.raises(InputError, match="'last' or 'all'"):
        FineTune("some")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="epochs must be at least 1"):
        Retrain(epochs=0)
    with pytest.raises(InputError, match="weight decay must be at least 0"):
        FineTune(weight_decay=-1.0)
    with pytest.raises(InputError, match="unknown architecture 'nope'"):
        Extract("nope")
    with pytest.raises(InputError, match="unknown architecture 'nope'"):
        Distill("nope")
    with pytest.raises(InputError, match="query budget"):
        query_inputs(POOL.x, 0, seed=0)
    exported = torch.export.export(owner, (DIGITS.test.x[:2],)).module()
    with pytest.raises(InputError, match=r"exported \.pt2 module cannot be trained"):
        FineTune()(exported, POOL, seed=0)


def test_extraction_through_a_real_http_api(owner: nn.Module, tmp_path: Path) -> None:
    """The same attack, with an HTTP client (Open Inference Protocol, loopback) behind ``answer``."""
    from core.modelio import load_model, save_model
    from core.serving import running_server
    from verifier.server import ServedModel, build_app
    from verifier.wire import OipClient

    path = save_model(owner, tmp_path / "owner.pt2", input_shape=(1, 8, 8), num_classes=10, arch="cnn")
    app = build_app({"owner": ServedModel(load_model(path), "labels")})
    queries = query_inputs(POOL.x, 300, seed=0)
    with running_server(app) as srv, OipClient(f"{srv.url}/v2/models/owner/infer", num_classes=10,
                                               input_shape=(1, 8, 8)) as client:
        def answer(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(client.infer(x.numpy()).labels)

        extract = Extract("mlp", epochs=15, query_batch=100)
        labels = extract.answers(answer, queries, num_classes=10)
    assert torch.equal(labels, predict(owner, queries))  # the API answered what the model says
    surrogate = extract.fit(queries, labels, num_classes=10, seed=0)
    assert _agreement(surrogate, owner) >= 0.85


# --- any input shape and range: a normalised 3x12x12 ResNet (batch norm) and flat features -------------

IMAGES = synthetic_dataset((3, 12, 12), 400, seed=0)
FEATURES = synthetic_dataset((20,), 400, seed=0)


@pytest.fixture(scope="module")
def owner_resnet() -> nn.Module:
    return train_new("resnet", IMAGES.x, IMAGES.y, num_classes=10, epochs=3, seed=0)


@pytest.fixture(scope="module")
def owner_flat() -> nn.Module:
    return train_new("mlp", FEATURES.x, FEATURES.y, num_classes=10, epochs=10, seed=0)


@pytest.mark.parametrize("attack", CHEAP, ids=lambda a: a.name)
def test_every_attack_on_a_normalised_resnet_and_on_flat_features(
        owner_resnet: nn.Module, owner_flat: nn.Module, attack: WeightAttack) -> None:
    for owner_model, data in ((owner_resnet, IMAGES), (owner_flat, FEATURES)):
        before = _state(owner_model)
        out = attack(owner_model, Dataset(data.x[:64], data.y[:64], 10), seed=1)
        assert _same(before, _state(owner_model)) and not out.training
        with torch.no_grad():
            assert out(data.x[:5]).shape == (5, 10)


def test_fine_prune_finds_the_last_convolution_of_a_resnet(owner_resnet: nn.Module) -> None:
    out = FinePrune(0.5, epochs=1)(owner_resnet, IMAGES, seed=0)
    last = [m for m in out.modules() if isinstance(m, nn.Conv2d)][-1]
    dead = int((last.weight.detach().flatten(1).abs().sum(dim=1) == 0).sum())
    assert dead == round(0.5 * last.weight.shape[0])


def test_extraction_of_a_flat_feature_model(owner_flat: nn.Module) -> None:
    queries = query_inputs(FEATURES.x, 800, seed=0, input_range=InputRange.of_values(FEATURES.x.numpy()))
    surrogate = Extract("mlp-wide", epochs=15)(query_model(owner_flat), queries, num_classes=10, seed=0)
    agree = (predict(surrogate, FEATURES.x) == predict(owner_flat, FEATURES.x)).float().mean()
    assert float(agree) >= 0.9


@pytest.mark.parametrize("shape", [(3, 12, 12), (20,)])
def test_query_inputs_stay_in_the_models_input_range(shape: tuple[int, ...]) -> None:
    pool = IMAGES.x if len(shape) == 3 else FEATURES.x
    rng = InputRange.of_values(pool.numpy())
    assert rng.low < -1.0 and rng.high > 1.0  # normalised: far outside [0, 1]
    q = query_inputs(pool, 1000, seed=3, input_range=rng)
    assert q.shape == (1000, *shape)
    assert float(q.min()) >= rng.low and float(q.max()) <= rng.high
    assert float(q[400:].min()) < 0.0  # the augmented queries were not clipped to [0, 1]
    if len(shape) == 1:
        # flat inputs are not shifted, only jittered, by noise (0.05) times the range's span
        order = torch.randperm(400, generator=torch.Generator().manual_seed(3))
        diff = q[400:800] - pool[order]
        inside = (q[400:800] > rng.low) & (q[400:800] < rng.high)
        assert float(diff[inside].std()) == pytest.approx(0.05 * rng.span, rel=0.1)
