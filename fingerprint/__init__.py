"""Fingerprints: conferrable adversarial examples, AKH and SAC, with calibrated nulls.

AKH (:mod:`~fingerprint.akh`: the owner's mistakes that independent models get
right) and SAC (:mod:`~fingerprint.sac`: sample correlation) choose their
probes with references from the reference zoo (:mod:`~fingerprint.zoo`) and
commit a model-level conformal null of ``K`` others
(:mod:`~fingerprint.conformal`, :mod:`~fingerprint.pipeline`).

Conferrable adversarial examples (Lukas, Zhang, Kerschbaum, ICLR 2021), one
module each: :mod:`~fingerprint.ensembles` (surrogates and references,
trained in parallel and cached), :mod:`~fingerprint.cae` (the optimisation
and the :class:`ConferrableExamples` scheme), :mod:`~fingerprint.calibrate`
(the null on held-out references, with its uncertainty and floor),
:mod:`~fingerprint.build` (all of it, to a ``ProbeSet``) and
:mod:`~fingerprint.baseline` (plain adversarial examples, for comparison).
Knows only :mod:`core`.
"""

from fingerprint.akh import AKH, Selection, parse_akh
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
from fingerprint.conformal import conformal_null, match_bits
from fingerprint.ensembles import Member, MemberSpec, plan_members, train_members
from fingerprint.pipeline import ZooFingerprint, build_zoo_fingerprint, zoo_references
from fingerprint.sac import SAC, correlation_matrix, cutmix, parse_sac, sac_distance
from fingerprint.zoo import ReferenceZoo, ZooModel, ZooRecipe, zoo_seeds

__all__ = [
    "AKH",
    "SAC",
    "AdversarialExamples",
    "Calibration",
    "Candidates",
    "ConferrableExamples",
    "EnsembleConfig",
    "Fingerprint",
    "GroupFit",
    "Member",
    "MemberSpec",
    "ReferenceZoo",
    "Selection",
    "ZooFingerprint",
    "ZooModel",
    "ZooRecipe",
    "build_fingerprint",
    "build_zoo_fingerprint",
    "calibrate_null",
    "conferrability",
    "conformal_null",
    "correlation_matrix",
    "cutmix",
    "match_bits",
    "match_counts",
    "parse_akh",
    "parse_cae",
    "parse_sac",
    "plan_members",
    "probe_salts",
    "sac_distance",
    "train_members",
    "transferability",
    "zoo_references",
    "zoo_seeds",
]
