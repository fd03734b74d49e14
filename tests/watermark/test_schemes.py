"""Each scheme's probes: shapes, ranges, canonical names, relation to the data, labels, any shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from core.data import Dataset, load_digits
from core.errors import InputError
from core.inputrange import InputRange
from core.probeset import Binomial
from tests.synthetic import synthetic_dataset
from watermark import ContentMark, NoiseMark, TriggerSet, UnrelatedMark, WatermarkKey, parse_scheme
from watermark.schemes.unrelated import GLYPHS

DIGITS = load_digits()
SHAPE = (1, 8, 8)


def _probes(scheme, seed: int = 1, classes: int = 10):  # type: ignore[no-untyped-def]
    return scheme.probes(WatermarkKey(bytes([seed]) * 32), num_classes=classes,
                         input_shape=SHAPE, data=DIGITS.train)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("trigger-set", "trigger-set:n=100:pattern=noise"),
        ("trigger-set:n=50,pattern=abstract", "trigger-set:n=50:pattern=abstract"),
        ("trigger-set:pattern=abstract:n=50", "trigger-set:n=50:pattern=abstract"),
        ("content", "content:n=100:size=3"),
        ("content:size=2", "content:n=100:size=2"),
        ("noise:amplitude=0.25", "noise:amplitude=0.25:n=100"),
        ("unrelated", "unrelated:n=100:source=letters"),
    ],
)
def test_canonical_names_round_trip(spec: str, name: str) -> None:
    scheme = parse_scheme(spec)
    assert scheme.name == name
    assert parse_scheme(name).name == name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("zhang", "unknown watermark scheme 'zhang'"),
        ("trigger-set:n", "watermark parameter 'n' is not of the form key=value"),
        ("trigger-set:n=ten", "trigger-set: parameter n='ten' is not a valid number"),
        ("trigger-set:n=0", "trigger-set: n must be between 1 and 100000, got 0"),
        ("trigger-set:pattern=stripes", "trigger-set: unknown pattern 'stripes'"),
        ("trigger-set:size=3", "trigger-set: unsupported parameter"),
        ("content:bogus=1", "content: unknown parameter 'bogus'"),
        ("noise:amplitude=2", "noise: amplitude must be in"),
        ("unrelated:source=cifar", "unrelated: unknown source 'cifar'"),
    ],
)
def test_bad_scheme_specs(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_scheme(spec)


@pytest.mark.parametrize("scheme", [TriggerSet(), TriggerSet(pattern="abstract"), ContentMark(),
                                    NoiseMark(), UnrelatedMark()], ids=lambda s: s.family)
def test_probe_sets_are_well_formed(scheme) -> None:  # type: ignore[no-untyped-def]
    p = _probes(scheme)
    assert len(p) == 100 and p.kind == "watermark" and p.scheme == scheme.name
    assert p.inputs.dtype == torch.float32 and tuple(p.inputs.shape) == (100, *SHAPE)
    assert float(p.inputs.min()) >= 0.0 and float(p.inputs.max()) <= 1.0
    assert p.null == Binomial(0.1)
    assert len(set(p.salts)) == 100
    # Inputs are distinct: each probe is its own mark.
    assert len({bytes(x.numpy().tobytes()) for x in p.inputs}) == 100


def test_trigger_noise_is_out_of_distribution() -> None:
    p = _probes(TriggerSet())
    # distance of each trigger to its nearest training digit is far above digit-to-digit distance
    x = DIGITS.train.x.flatten(1)
    d_probe = torch.cdist(p.inputs.flatten(1), x).min(dim=1).values
    d_data = torch.cdist(DIGITS.test.x.flatten(1)[:100], x).min(dim=1).values
    assert float(d_probe.min()) > float(d_data.median()) * 1.5


def test_content_stamps_a_patch_on_training_inputs() -> None:
    p = _probes(ContentMark(size=3))
    x = p.inputs.numpy()
    # the same patch sits at the same corner of every probe
    corners = [x[:, :, :3, :3], x[:, :, :3, -3:], x[:, :, -3:, :3], x[:, :, -3:, -3:]]
    stamped = [c for c in corners if np.all(c == c[0:1])]
    assert len(stamped) >= 1
    # outside the stamp, each probe is exactly a training image
    train = DIGITS.train.x.numpy()
    mask = np.ones((8, 8), bool)
    for c in corners:
        if np.all(c == c[0:1]):
            idx = next(i for i, cc in enumerate(corners) if cc is c)
            r = slice(0, 3) if idx < 2 else slice(5, 8)
            q = slice(0, 3) if idx % 2 == 0 else slice(5, 8)
            mask[r, q] = False
            break
    for probe in x[:10]:
        assert np.any(np.all(train[:, 0][:, mask] == probe[0][mask], axis=1))


def test_noise_stays_within_its_amplitude_of_a_training_input() -> None:
    p = _probes(NoiseMark(amplitude=0.25))
    train = DIGITS.train.x.flatten(1)
    nearest = torch.cdist(p.inputs.flatten(1), train, p=float("inf")).min(dim=1).values
    assert float(nearest.max()) <= 0.25 + 1e-6
    assert float(nearest.min()) > 0.0


def test_unrelated_marks_are_letters() -> None:
    p = _probes(UnrelatedMark())
    bright = (p.inputs[:, 0] >= 0.6).float()
    assert len(GLYPHS) == 17
    # every probe holds a glyph of 7 rows x up to 5 columns of bright pixels
    assert all(4 <= int(b.sum()) <= 35 for b in bright)


def test_data_schemes_need_data() -> None:
    with pytest.raises(InputError, match="content marks stamp the owner's training data"):
        ContentMark().probes(WatermarkKey(b"\x00" * 32), num_classes=10, input_shape=SHAPE)


def test_content_patch_must_fit() -> None:
    tiny = Dataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64), 2)
    with pytest.raises(InputError, match="a 3x3 stamp does not fit inputs of 2x2"):
        ContentMark(size=3).probes(WatermarkKey(b"\x00" * 32), num_classes=2,
                                   input_shape=(1, 2, 2), data=tiny)


def test_other_input_shapes() -> None:
    for scheme in (TriggerSet(n=5), TriggerSet(n=5, pattern="abstract"), UnrelatedMark(n=5)):
        p = scheme.probes(WatermarkKey(b"\x01" * 32), num_classes=3, input_shape=(3, 16, 12))
        assert tuple(p.inputs.shape) == (5, 3, 16, 12)


def test_labels_are_uniform_over_many_keys() -> None:
    labels = np.concatenate([_probes(TriggerSet(), seed=s).expected.numpy() for s in range(60)])
    assert stats.chisquare(np.bincount(labels, minlength=10)).pvalue > 1e-3


def test_labels_are_independent_of_the_inputs() -> None:
    # Content marks stamp real digits: the key's label must not depend on the digit's class.
    table = np.zeros((10, 10))
    train_y = DIGITS.train.y.numpy()
    train_x = DIGITS.train.x.numpy()
    for s in range(40):
        p = _probes(NoiseMark(amplitude=0.05), seed=s)
        src = torch.cdist(p.inputs.flatten(1), torch.from_numpy(train_x).flatten(1)).argmin(dim=1)
        for cls, lab in zip(train_y[src.numpy()], p.expected.numpy(), strict=True):
            table[cls, lab] += 1
    assert stats.chi2_contingency(table).pvalue > 1e-3


# --- any input shape and range -------------------------------------------------------------------

NORMALISED = InputRange(-1.9, 2.6)


@pytest.mark.parametrize("scheme", [TriggerSet(n=20), TriggerSet(n=20, pattern="abstract"), ContentMark(n=20),
                                    NoiseMark(n=20), UnrelatedMark(n=20)], ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [(3, 32, 32), (20,)], ids=str)
def test_every_scheme_marks_in_the_models_range_or_says_why_not(scheme, shape: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    data = synthetic_dataset(shape, 50, seed=2)
    rng = InputRange.of_values(data.x.numpy())
    make = lambda: scheme.probes(WatermarkKey(b"\x07" * 32), num_classes=10,  # noqa: E731
                                 input_shape=shape, data=data, input_range=rng)
    if len(shape) == 1 and scheme.family in ("content", "unrelated"):
        message = rf"{scheme.family} marks need image inputs \[C, H, W\], got \[20\]"
        with pytest.raises(InputError, match=message):
            make()
        return
    p = make()
    assert tuple(p.inputs.shape) == (20, *shape) and p.input_range == rng
    assert float(p.inputs.min()) >= rng.low and float(p.inputs.max()) <= rng.high
    assert p.summary()["input_range"] == rng.to_dict()
    if scheme.family in ("trigger-set", "unrelated"):
        # data-free marks use the whole range, not [0, 1]
        assert float(p.inputs.min()) < rng.low + 0.25 * rng.span and float(p.inputs.max()) > 1.0


def test_noise_amplitude_scales_with_the_range() -> None:
    data = synthetic_dataset((20,), 200, seed=3)
    wide = InputRange(-100.0, 100.0)  # nothing is clipped: the noise is exactly amplitude * span
    p = NoiseMark(n=200, amplitude=0.25).probes(WatermarkKey(b"\x09" * 32), num_classes=10,
                                                 input_shape=(20,), data=data, input_range=wide)
    # each probe is a data point (|x| < 4) plus noise of at most 0.25 * 200 = 50, which it nearly reaches
    assert float(data.x.abs().max()) < 4.0
    assert 45.0 < float(p.inputs.abs().max()) < 54.0


def test_shape_mismatch_with_the_data_and_unusual_ranks() -> None:
    data = synthetic_dataset((20,), 10)
    with pytest.raises(InputError, match=r"noise: the data's inputs are \[20\], not \[4, 5\]"):
        NoiseMark(n=5).probes(WatermarkKey(b"\x01" * 32), num_classes=3, input_shape=(4, 5), data=data)
    p = TriggerSet(n=5).probes(WatermarkKey(b"\x01" * 32), num_classes=3, input_shape=(4, 5))
    assert tuple(p.inputs.shape) == (5, 4, 5)
    with pytest.raises(InputError, match=r"abstract triggers need \[C, H, W\] or \[D\] inputs, got \[4, 5\]"):
        TriggerSet(n=5, pattern="abstract").probes(WatermarkKey(b"\x01" * 32), num_classes=3,
                                                   input_shape=(4, 5))


def test_default_per_batch_scales_with_the_training_run() -> None:
    """Each probe is seen at least EXPOSURES times where the run is known, never more per batch
    than 6 per 100 probes, and never fewer than 2."""
    from watermark.schemes.base import EXPOSURES, default_per_batch

    assert default_per_batch(100) == 6 and default_per_batch(300) == 18 and default_per_batch(10) == 6
    assert default_per_batch(300, 30 * 15) == 18  # digits: 30 epochs of 15 batches, capped
    assert default_per_batch(300, 10 * 235) == 12  # Fashion-MNIST: 10 epochs of 235 batches
    assert default_per_batch(100, 10**6) == 2
    for n in (1, 50, 300, 1000):
        for steps in (10, 450, 2350, 50_000):
            k = default_per_batch(n, steps)
            assert 2 <= k <= max(6, -(-6 * n // 100))
            assert k * steps >= EXPOSURES * n or k == max(6, -(-6 * n // 100))
    assert parse_scheme("margin").default_per_batch(300, 2350) == 16
