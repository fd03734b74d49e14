"""Watermark schemes, one module each, chosen by name.

``parse_scheme("trigger-set:n=100,pattern=noise")`` (the CLI's ``SCHEME[:k=v,...]``
form) and the canonical ``trigger-set:n=100:pattern=noise`` both work.

:data:`DEFAULT_WATERMARK` is what ``wm train`` embeds unless told otherwise:
300 key-derived triggers, so that one committed set checks many suspects.
Every probe sent to a suspect is spent for good; an owned copy costs about 10
of them at 1e-9 and an innocent one about 16 (the futility rule of
:mod:`verifier.futility`), so 100 probes checked one innocent model and 300
check ten innocent and three derived ones (``benchmarks/verifier.py``).
:func:`default_per_batch` has each probe seen at least as often over a
training run as the old 100-probe default at 6 per batch was on ``digits``.
"""

from __future__ import annotations

from core.errors import InputError
from watermark.schemes.base import Scheme, default_per_batch, keeps_batch_size
from watermark.schemes.composite import CompositeHook, CompositeMark
from watermark.schemes.content import ContentMark
from watermark.schemes.dark import DarkHook, DarkMark
from watermark.schemes.margin import MarginHook, MarginMark
from watermark.schemes.noise import NoiseMark
from watermark.schemes.sleeper import SleeperHook, SleeperMark
from watermark.schemes.trigger_set import TriggerSet
from watermark.schemes.unrelated import UnrelatedMark

__all__ = [
    "ALIASES",
    "DEFAULT_WATERMARK",
    "SCHEMES",
    "CompositeHook",
    "CompositeMark",
    "ContentMark",
    "DarkHook",
    "DarkMark",
    "MarginHook",
    "MarginMark",
    "NoiseMark",
    "Scheme",
    "SleeperHook",
    "SleeperMark",
    "TriggerSet",
    "UnrelatedMark",
    "default_per_batch",
    "keeps_batch_size",
    "parse_scheme",
]

DEFAULT_WATERMARK = "trigger-set:n=300"
"""The scheme ``wm train`` embeds by default (see the module docstring)."""

SCHEMES: dict[str, type[Scheme]] = {
    "trigger-set": TriggerSet,
    "content": ContentMark,
    "noise": NoiseMark,
    "unrelated": UnrelatedMark,
    "margin": MarginMark,
    "composite": CompositeMark,
    "dark": DarkMark,
    "sleeper": SleeperMark,
}

ALIASES: dict[str, str] = {
    # The scheme recommended against extraction and distillation, from the Fashion-MNIST
    # measurements in benchmarks/results/robust-fmnist.md (issue 13): dark-knowledge marks leave
    # copies extracted with probabilities (5k, 20k queries) and distilled copies owned at 1e-6 for
    # half a point of clean accuracy; composite and margin marks leave none. Against stolen weights
    # (FTAL, RTAL, fine-pruning 90% at any rate) it is `sleeper` (robust-fmnist-sleeper.md).
    "extraction-robust": "dark:n=80:mass=0.15",
}
"""Names that stand for a scheme with parameters; the probe set records the scheme's own name."""

_PARAM_TYPES: dict[str, type] = {"n": int, "size": int, "amplitude": float, "pattern": str,
                                 "steps": int, "step": float, "mass": float, "prune": float,
                                 "channels": int}


def parse_scheme(spec: str) -> Scheme:
    """A scheme from ``FAMILY[:k=v[,k=v]...]``, its canonical ``FAMILY:k=v:k=v`` name, or an alias.

    ``extraction-robust`` (:data:`ALIASES`) is the scheme recommended against
    extraction and distillation; parameters given with it override its own.
    """
    family, _, rest = spec.strip().partition(":")
    if family in ALIASES:  # the alias's parameters first, so the caller's override them
        family, _, preset = ALIASES[family].partition(":")
        rest = f"{preset}:{rest}"
    if family not in SCHEMES:
        raise InputError(
            f"unknown watermark scheme {family!r}", hint=f"choose one of {', '.join([*SCHEMES, *ALIASES])}"
        )
    kwargs: dict[str, object] = {}
    for item in (p for p in rest.replace(",", ":").split(":") if p):
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise InputError(f"watermark parameter {item!r} is not of the form key=value")
        if k == "source" and family == "unrelated":
            if v != "letters":
                raise InputError(f"unrelated: unknown source {v!r}; only 'letters' is built in")
            continue
        if k not in _PARAM_TYPES:
            raise InputError(f"{family}: unknown parameter {k!r}")
        try:
            kwargs[k] = _PARAM_TYPES[k](v)
        except ValueError:
            raise InputError(f"{family}: parameter {k}={v!r} is not a valid number") from None
    try:
        return SCHEMES[family](**kwargs)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"{family}: unsupported parameter(s) {', '.join(kwargs)}") from None


