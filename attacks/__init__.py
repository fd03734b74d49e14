"""Removal and extraction attacks on a marked model: the catalogue of the robustness benchmark.

After Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image Classification
Deep Neural Network Watermarking?" (IEEE S&P 2022), Section IV and Table II,
whose names are kept. Two threat models (DESIGN.md, "What it is for"):

*Weight theft* (the attacker holds the weights). Each attack is a frozen
dataclass called as ``attack(model, data, seed=...)``: it takes an
``nn.Module`` (from a ``.pt2``: :func:`core.modelio.to_trainable`), the
attacker's labelled data and a seed, and returns a **new** module in eval
mode; the input is never mutated.

========================  ===========================================================
``FineTune("last")``      FTLL: fine-tune the last layer only, the rest frozen.
``FineTune("all")``       FTAL: fine-tune every layer.
``Retrain("last")``       RTLL: re-initialise the last layer, train only it.
``Retrain("all")``        RTAL: re-initialise the last layer, train every layer.
``Prune(f)``              Weight pruning: zero the fraction ``f`` of smallest-magnitude
                          weights of every conv / dense layer (no fine-tuning).
``FinePrune(f)``          Fine-pruning (Liu et al., RAID 2018): remove the fraction
                          ``f`` of the last feature layer's units least active on
                          clean data, then fine-tune every layer.
``Quantize()``            Weight quantisation to int8 levels (symmetric, per tensor).
``WeightNoise(s)``        Gaussian noise of ``s`` times each weight tensor's spread.
``Distill()``             Knowledge distillation (Hinton et al. 2015) into a fresh
                          student, on the attacker's unlabelled inputs.
========================  ===========================================================

*Extraction through the API* (the attacker never sees the weights):
:class:`Extract` queries an :data:`AnswerFn` and trains a surrogate of any
architecture on the answers; :func:`query_model` is such a function over an
in-process model, :func:`query_inputs` draws a query set of any budget from
the attacker's pool.

Every attack works on any input shape (``[C, H, W]`` images of any size, flat
``[D]`` features) and class count; architectures are named as everywhere in
wm (a built-in name or ``MODULE:FUNCTION``, :func:`core.arch.resolve_arch`).
Randomness (initialisation, shuffling, dropout, noise, query order) flows
only from the ``seed`` argument; each attack's ``name`` holds every parameter
that changes its result. This package knows only :mod:`core`; the demo, the
benchmarks and the tests import it, no product package does.
"""

from attacks.base import Layers, WeightAttack
from attacks.distill import Distill
from attacks.extract import AnswerFn, Extract, query_inputs, query_model
from attacks.finetune import FineTune, Retrain
from attacks.perturb import Quantize, WeightNoise
from attacks.pruning import FinePrune, Prune

__all__ = [
    "AnswerFn",
    "Distill",
    "Extract",
    "FinePrune",
    "FineTune",
    "Layers",
    "Prune",
    "Quantize",
    "Retrain",
    "WeightAttack",
    "WeightNoise",
    "query_inputs",
    "query_model",
]
