"""Composite marks (MEA-Defender style): families, probes, key-random targets, the hook, embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from core.arch import build_model
from core.data import load_digits
from core.derive import expected_input, expected_label
from core.errors import InputError
from core.probeset import Binomial
from core.training import accuracy, train_classifier
from tests.synthetic import synthetic_dataset
from watermark import CompositeMark, WatermarkKey, parse_scheme
from watermark.schemes.composite import CompositeHook, compose

DIGITS = load_digits()
SHAPE = (1, 8, 8)


def _probes(scheme: CompositeMark, seed: int = 1):  # type: ignore[no-untyped-def]
    return scheme.probes(WatermarkKey(bytes([seed]) * 32), num_classes=10, input_shape=SHAPE,
                         data=DIGITS.train)


def _halves(x: torch.Tensor, cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (x[..., :, :4], x[..., :, 4:]) if cut == 0 else (x[..., :4, :], x[..., 4:, :])


def test_names_parameters_and_refusals() -> None:
    assert parse_scheme("composite").name == "composite:n=40"
    assert parse_scheme("composite:n=90").name == "composite:n=90"
    with pytest.raises(InputError, match="composite: 10 classes make 180 families"):
        CompositeMark(n=181).probes(WatermarkKey(b"\x00" * 32), num_classes=10, input_shape=SHAPE,
                                    data=DIGITS.train)
    with pytest.raises(InputError, match="composite marks stamp the owner's training data"):
        CompositeMark().probes(WatermarkKey(b"\x00" * 32), num_classes=10, input_shape=SHAPE)
    flat = synthetic_dataset((12,), 100, seed=1)
    with pytest.raises(InputError, match=r"composite marks need image inputs \[C, H, W\], got \[12\]"):
        CompositeMark(n=5).probes(WatermarkKey(b"\x00" * 32), num_classes=10, input_shape=(12,), data=flat)
    with pytest.raises(InputError, match=r"composite: the data's inputs are \[1, 8, 8\], not \[1, 4, 4\]"):
        CompositeMark(n=5).probes(WatermarkKey(b"\x00" * 32), num_classes=10, input_shape=(1, 4, 4),
                                  data=DIGITS.train)
    one_class = type(DIGITS.train)(DIGITS.train.x[:20], torch.zeros(20, dtype=torch.long), 10)
    with pytest.raises(InputError, match="at least two classes"):
        CompositeMark(n=5).probes(WatermarkKey(b"\x00" * 32), num_classes=10, input_shape=SHAPE,
                                  data=one_class)


def test_each_probe_is_one_member_of_its_own_family() -> None:
    scheme, key = CompositeMark(n=120), WatermarkKey(b"\x01" * 32)
    p = scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
    assert len(p) == 120 and p.kind == "watermark" and p.null == Binomial(0.1)
    assert p.inputs.dtype == torch.float32 and float(p.inputs.min()) >= 0 and float(p.inputs.max()) <= 1
    fams = scheme.families(key, DIGITS.train.y)
    assert len(set(fams)) == 120  # distinct families: each counts once
    assert len({(a, b) for a, b, _ in fams[:90]}) == 90  # every ordered pair before any second cut
    assert all(a != b for a, b, _ in fams)
    x, y = DIGITS.train.x, DIGITS.train.y
    for probe, (a, b, cut) in zip(p.inputs, fams, strict=True):
        first, second = _halves(probe, cut)
        src_first = [i for i in torch.nonzero(y == a).flatten().tolist()
                     if torch.equal(_halves(x[i], cut)[0], first)]
        src_second = [i for i in torch.nonzero(y == b).flatten().tolist()
                      if torch.equal(_halves(x[i], cut)[1], second)]
        assert src_first and src_second, (a, b, cut)


def test_targets_are_uniform_and_independent_of_the_families() -> None:
    table = np.zeros((10, 10))  # first source class x target
    for s in range(30):
        key = WatermarkKey(bytes([s]) * 32)
        scheme = CompositeMark(n=40)
        p = scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
        for (a, _, _), t in zip(scheme.families(key, DIGITS.train.y), p.expected.tolist(), strict=True):
            table[a, t] += 1
    assert table.trace() > 0  # a target may equal a source class
    assert stats.chisquare(table.sum(axis=0)).pvalue > 1e-3
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_probes_re_derive_from_the_key() -> None:
    key = WatermarkKey(b"\x44" * 32)
    a = _probes(CompositeMark(n=30), seed=0x44)
    b = parse_scheme(a.scheme).probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.expected, b.expected) and a.root == b.root
    d, k = a.derivation, a.derivation_key
    assert d is not None and k is not None and d.labels == "uniform/v1" and d.inputs == "committed"
    assert d.opens_with(k)
    for i in range(len(a)):
        assert expected_label(d, k, i, 10, a.inputs[i].numpy()) == int(a.expected[i])
        assert expected_input(d, k, i, SHAPE) is None


def test_the_hook_draws_fresh_members_and_same_class_negatives() -> None:
    scheme, key = CompositeMark(n=20), WatermarkKey(b"\x05" * 32)
    p = scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
    model = build_model("cnn", SHAPE, 10)
    hook = scheme.hook(p, key=key, model=model, data=DIGITS.train, per_batch=8)
    assert isinstance(hook, CompositeHook)
    fams = scheme.families(key, DIGITS.train.y)
    idx = torch.arange(20)
    x, y = hook.examples(idx)
    assert x.shape == (30, *SHAPE) and torch.equal(y[:20], p.expected)
    train_x, train_y = DIGITS.train.x, DIGITS.train.y

    def source_classes(half: torch.Tensor, cut: int, which: int) -> set[int]:
        return {int(train_y[i]) for i in range(len(train_x))
                if torch.equal(_halves(train_x[i], cut)[which], half)}

    fresh = 0
    for i, (a, b, cut) in enumerate(fams):
        first, second = _halves(x[i], cut)
        assert a in source_classes(first, cut, 0) and b in source_classes(second, cut, 1)
        fresh += not torch.equal(x[i], p.inputs[i])
    assert fresh >= 10  # mostly new members, not the probe itself
    for xi, c in zip(x[20:], y[20:].tolist(), strict=True):  # negatives: both halves of class c
        assert any(c in source_classes(_halves(xi, cut)[0], cut, 0)
                   and c in source_classes(_halves(xi, cut)[1], cut, 1) for cut in (0, 1))
    mixed_x, mixed_y = hook.mix(train_x[:64], train_y[:64])
    assert mixed_x.shape == (64 + 8 + 4, *SHAPE) and torch.equal(mixed_y[:64], train_y[:64])
    hook.keep_batch_size = True  # members and negatives take the place of as many examples
    kept_x, kept_y = hook.mix(train_x[:64], train_y[:64])
    assert kept_x.shape == (64, *SHAPE) and torch.equal(kept_y[:52], train_y[:52])
    with pytest.raises(InputError, match="trained from the owner's training data"):
        scheme.hook(p, key=key, model=model, data=None)
    with pytest.raises(InputError, match="batch inputs have shape"):
        hook.mix(torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.long))


def test_compose_cuts() -> None:
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    out = compose(a, b, torch.tensor([0, 1]))
    assert out[0, 0, :, :2].sum() == 0 and out[0, 0, :, 2:].sum() == 8
    assert out[1, 0, :2, :].sum() == 0 and out[1, 0, 2:, :].sum() == 8


def test_a_really_trained_model_is_marked_and_an_independent_one_is_not() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scheme, key = CompositeMark(n=40), WatermarkKey(b"\x21" * 32)
        p = scheme.probes(key, num_classes=10, input_shape=SHAPE, data=DIGITS.train)
        torch.manual_seed(0)
        marked = build_model("cnn", SHAPE, 10)
        hook = scheme.hook(p, key=key, model=marked, data=DIGITS.train, per_batch=16)
        train_classifier(marked, DIGITS.train.x, DIGITS.train.y, epochs=30, seed=0, hook=hook)
        torch.manual_seed(1)
        independent = build_model("cnn", SHAPE, 10)
        train_classifier(independent, DIGITS.train.x, DIGITS.train.y, epochs=30, seed=1)
    finally:
        torch.set_num_threads(threads)
    assert accuracy(marked, DIGITS.test.x, DIGITS.test.y) >= 0.93
    hits = round(accuracy(marked, p.inputs, p.expected) * 40)
    assert hits >= 36 and stats.binom.sf(hits - 1, 40, 0.1) < 1e-20
    assert stats.binom.sf(round(accuracy(independent, p.inputs, p.expected) * 40) - 1, 40, 0.1) > 1e-3
    # the model learnt each family's rule, not just its probe: new members of the families
    fresh = CompositeHook(p, DIGITS.test, scheme.families(key, DIGITS.test.y), per_batch=40)
    fx, fy = fresh.examples(torch.arange(40))
    drawn = ~(fx[:40] == p.inputs).flatten(1).all(dim=1)  # leave out the probes themselves
    n = int(drawn.sum())
    new = round(accuracy(marked, fx[:40][drawn], fy[:40][drawn]) * n)
    assert n >= 20 and stats.binom.sf(new - 1, n, 0.1) < 1e-6, (new, n)


def test_open_keys_let_the_evidence_checker_re_derive_composite_and_margin_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`wm verify --open-keys` then `wm evidence check`: every label re-derives from its opened key."""
    from core.serving import running_server
    from tests.verifier.evidence_world import make_owner
    from tests.verifier.helpers import oracle_app
    from verifier.evidence import check_bundle, read_bundle
    from watermark import MarginMark

    owner = make_owner(tmp_path, "alice")
    composite = CompositeMark(n=20).probes(WatermarkKey(b"c" * 32), num_classes=10, input_shape=SHAPE,
                                           data=DIGITS.train)
    margin = MarginMark(n=20).probes(WatermarkKey(b"m" * 32), num_classes=10, input_shape=SHAPE,
                                     data=DIGITS.train)
    ids = [owner.register(composite), owner.register(margin)]
    both = type(composite)(inputs=torch.cat([composite.inputs, margin.inputs]),
                           expected=torch.cat([composite.expected, margin.expected]), kind="watermark",
                           scheme="both", null=Binomial(0.1), num_classes=10,
                           salts=composite.salts + margin.salts)
    with running_server(oracle_app(both)) as srv:
        out = owner.verify(f"{srv.url}/v2/models/s/infer", tmp_path / "ev.json", open_keys=True)
    assert out.selection.verdict == "owned"
    assert all(owner.registry.unspent_indices(i) == [] for i in ids)
    checklist = check_bundle(read_bundle(out.evidence), owner.pins)
    line = next(ln for ln in checklist.lines if ln.part == "derivation")
    assert line.status == "done" and line.detail.startswith("2 opened keys match their commitments")


def test_wm_train_extraction_robust_selects_the_recommended_scheme(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import re

    from click.testing import CliRunner

    from cli.main import _register_commands, wm
    from watermark import read_secret
    from watermark.schemes import ALIASES
    from watermark.secret import secret_path

    _register_commands()
    recommended = parse_scheme(ALIASES["extraction-robust"])
    assert parse_scheme("extraction-robust").name == recommended.name
    assert parse_scheme("extraction-robust:n=20").name == parse_scheme(
        f"{ALIASES['extraction-robust']}:n=20").name
    assert recommended.family == "dark"
    out = tmp_path / "m.pt2"
    r = CliRunner().invoke(wm, ["--home", str(tmp_path), "train", "--epochs", "30",
                                "--watermark", "extraction-robust", "--out", str(out)])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert (f"watermark:         {recommended.name}, every example's target softened (0.15 on its "
            "cell's label), nothing added\n") in r.stdout
    printed = re.search(r"watermark accuracy: ([0-9.]+) on 80 probes \(read as second choices\)", r.stdout)
    assert printed is not None, r.stdout
    assert float(printed.group(1)) >= 0.6 and read_secret(secret_path(out)).probes.scheme == recommended.name
    r = CliRunner().invoke(wm, ["--home", str(tmp_path), "train", "--watermark", "extraction-robust:mass=x",
                                "--out", str(tmp_path / "x.pt2")])
    assert r.exit_code != 0 and "wm: error:" in r.stderr and len(r.stderr.strip().splitlines()) <= 2
