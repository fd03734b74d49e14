"""Fingerprints by conferrable adversarial examples (Lukas, Zhang, Kerschbaum, ICLR 2021).

The pipeline, one module each: :mod:`~fingerprint.ensembles` (surrogates and
references, trained in parallel and cached), :mod:`~fingerprint.cae` (the
optimisation and the :class:`ConferrableExamples` scheme),
:mod:`~fingerprint.calibrate` (the null on held-out references, with its
uncertainty and floor), :mod:`~fingerprint.build` (all of it, to a
``ProbeSet``) and :mod:`~fingerprint.baseline` (plain adversarial examples,
for comparison). Knows only :mod:`core`.
"""

from fingerprint.baseline import AdversarialExamples
from fingerprint.build import EnsembleConfig, Fingerprint, build_fingerprint, probe_salts
from fingerprint.cae import (
    Candidates,
    ConferrableExamples,
    conferrability,
    parse_cae,
    transferability,
)
from fingerprint.calibrate import Calibration, GroupFit, calibrate_null, match_counts
from fingerprint.ensembles import Member, MemberSpec, plan_members, train_members

__all__ = [
    "AdversarialExamples",
    "Calibration",
    "Candidates",
    "ConferrableExamples",
    "EnsembleConfig",
    "Fingerprint",
    "GroupFit",
    "Member",
    "MemberSpec",
    "build_fingerprint",
    "calibrate_null",
    "conferrability",
    "match_counts",
    "parse_cae",
    "plan_members",
    "probe_salts",
    "train_members",
    "transferability",
]
