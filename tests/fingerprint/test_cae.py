"""The CAE optimisation: it descends, conferrability rises, and held-out thieves match more."""

from __future__ import annotations

import pytest
import torch

from core.errors import DataError, InputError
from fingerprint.baseline import AdversarialExamples
from fingerprint.cae import Candidates, ConferrableExamples, parse_cae
from fingerprint.calibrate import match_counts
from tests.fingerprint.conftest import Setting, seed_pool

SCHEME = ConferrableExamples(n=40, candidates=2, steps=60)


@pytest.fixture(scope="module")
def candidates(setting: Setting) -> Candidates:
    x, y = seed_pool(setting.splits)
    return SCHEME.generate(setting.owner, "cnn", setting.gen_s, setting.gen_r, x, y, seed=3)


def test_conferrability_rises_over_the_optimisation(candidates: Candidates) -> None:
    steps = [s for s, _ in candidates.history]
    conf = [c for _, c in candidates.history]
    assert steps[0] == 0 and steps[-1] == SCHEME.steps
    assert conf[0] < 0.05  # at the seeds every model agrees with the owner: nothing conferrable
    assert conf[-1] > conf[0] + 0.2
    assert conf[len(conf) // 2] > conf[0]


def test_the_loss_descends_and_its_gradient_reaches_the_input(setting: Setting,
                                                              candidates: Candidates) -> None:
    x, _ = seed_pool(setting.splits)
    x0 = x[candidates.seed_index]
    p0 = torch.softmax(setting.owner(x0), dim=1).detach()
    rw = torch.ones(len(setting.gen_r))
    before = SCHEME.loss(setting.owner, setting.gen_s, setting.gen_r, rw, x0, p0).mean()
    after = SCHEME.loss(setting.owner, setting.gen_s, setting.gen_r, rw, candidates.inputs, p0)
    assert float(after.detach().mean()) < float(before.detach()) - 0.5  # a sign error ascends
    probe = x0[:4].clone().requires_grad_(True)
    SCHEME.loss(setting.owner, setting.gen_s, setting.gen_r, rw, probe, p0[:4]).sum().backward()
    assert probe.grad is not None and float(probe.grad.abs().sum()) > 0


def test_candidates_stay_in_the_eps_ball_and_the_valid_range(setting: Setting,
                                                             candidates: Candidates) -> None:
    x, _ = seed_pool(setting.splits)
    delta = (candidates.inputs - x[candidates.seed_index]).abs().amax()
    assert float(delta) <= SCHEME.eps + 1e-6
    assert float(candidates.inputs.min()) >= 0.0 and float(candidates.inputs.max()) <= 1.0
    assert torch.equal(candidates.labels, setting.owner(candidates.inputs).argmax(dim=1))


def test_held_out_surrogates_match_more_than_references_of_every_architecture(
        setting: Setting, candidates: Candidates) -> None:
    """Models that took no part in the generation: surrogates (on the owner's answers to its
    own data, as the generation ones) match more than references of the owner's own
    architecture and of the other family. (Thieves querying *other* data, and references
    trained on other data, are the benchmark's business: see benchmarks/results.)"""
    keep = torch.argsort(-candidates.conferrability, stable=True)[:SCHEME.n]
    x, y = candidates.inputs[keep], candidates.labels[keep]
    surrogates = match_counts([m.module for m in setting.held_s], x, y)
    mean_s = sum(surrogates) / len(surrogates)
    for arch in ("cnn", "mlp"):
        refs = match_counts([m.module for m in setting.held_r if m.spec.arch == arch], x, y)
        assert mean_s > sum(refs) / len(refs) + 0.05 * SCHEME.n, (arch, surrogates, refs)


def test_plain_adversarial_examples_fool_the_owner_within_eps(setting: Setting) -> None:
    x, y = seed_pool(setting.splits)
    adv, labels = AdversarialExamples(n=20, eps=0.25, steps=20).generate(setting.owner, x, y,
                                                                          seed=1)
    assert adv.shape == (20, 1, 8, 8)
    assert torch.equal(labels, setting.owner(adv).argmax(dim=1))


def test_select_refuses_when_too_few_pass() -> None:
    c = Candidates(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long),
                   torch.tensor([0.9, 0.2, 0.95]), torch.arange(3))
    assert c.select(2, 0.85).tolist() == [2, 0]
    with pytest.raises(DataError, match=r"only 2 of 3 candidates reach conferrability 0\.85"):
        c.select(3, 0.85)


def test_canonical_name_round_trips_and_names_every_parameter() -> None:
    s = ConferrableExamples(n=50, eps=0.3, ref_weight=2.0, select="worst-group")
    assert s.name == ("cae:n=50:eps=0.3:steps=100:lr=0.03:alpha=1:beta=0.1:gamma=1:conf=0.5"
                      ":candidates=4:ref-weight=2:select=worst-group")
    assert parse_cae(s.name) == s
    assert parse_cae("cae:n=7,steps=3") == ConferrableExamples(n=7, steps=3)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ipguard", "unknown fingerprint scheme 'ipguard'"),
        ("cae:size=3", "unknown parameter 'size=3'"),
        ("cae:eps=big", "eps='big' is not a valid float"),
        ("cae:eps=2", r"eps must be in \(0, 1\]"),
        ("cae:select=best", "unknown selection 'best'"),
        ("cae:n=0", "n must be at least 1"),
    ],
)
def test_bad_scheme_specs(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_cae(spec)
