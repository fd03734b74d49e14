"""Watermark schemes, one module each, chosen by name.

``parse_scheme("trigger-set:n=100,pattern=noise")`` (the CLI's ``SCHEME[:k=v,...]``
form) and the canonical ``trigger-set:n=100:pattern=noise`` both work.
"""

from __future__ import annotations

from core.errors import InputError
from watermark.schemes.base import Scheme
from watermark.schemes.composite import CompositeHook, CompositeMark
from watermark.schemes.content import ContentMark
from watermark.schemes.margin import MarginHook, MarginMark
from watermark.schemes.noise import NoiseMark
from watermark.schemes.trigger_set import TriggerSet
from watermark.schemes.unrelated import UnrelatedMark

__all__ = [
    "SCHEMES",
    "CompositeHook",
    "CompositeMark",
    "ContentMark",
    "MarginHook",
    "MarginMark",
    "NoiseMark",
    "Scheme",
    "TriggerSet",
    "UnrelatedMark",
    "parse_scheme",
]

SCHEMES: dict[str, type[Scheme]] = {
    "trigger-set": TriggerSet,
    "content": ContentMark,
    "noise": NoiseMark,
    "unrelated": UnrelatedMark,
    "margin": MarginMark,
    "composite": CompositeMark,
}

_PARAM_TYPES: dict[str, type] = {"n": int, "size": int, "amplitude": float, "pattern": str,
                                 "steps": int, "step": float}


def parse_scheme(spec: str) -> Scheme:
    """A scheme from ``FAMILY[:k=v[,k=v]...]`` or its canonical ``FAMILY:k=v:k=v`` name."""
    family, _, rest = spec.strip().partition(":")
    if family not in SCHEMES:
        raise InputError(
            f"unknown watermark scheme {family!r}", hint=f"choose one of {', '.join(SCHEMES)}"
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
