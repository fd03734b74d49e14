"""Each scheme's probes: shapes, ranges, canonical names, relation to the data, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from core.data import Dataset, load_digits
from core.errors import InputError
from core.probeset import Binomial
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
