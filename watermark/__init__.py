"""Training-time watermarks: key-derived trigger sets and backdoor-style marks.

Public surface: :class:`WatermarkKey`, the schemes (:class:`TriggerSet`,
:class:`ContentMark`, :class:`NoiseMark`, :class:`UnrelatedMark`,
:class:`MarginMark`, :class:`CompositeMark`, :class:`DarkMark`, :class:`SleeperMark`,
:func:`parse_scheme`), and the :class:`WatermarkHook` that mixes a scheme's probes into any
PyTorch training loop (``scheme.hook(...)`` gives the one a scheme trains with; call its
``finish(model)`` after the loop). Each scheme yields a
:class:`core.probeset.ProbeSet` with the exact ``Binomial(1/C)`` null.
"""

from watermark.hook import WatermarkHook
from watermark.keys import WatermarkKey
from watermark.schemes import (
    DEFAULT_WATERMARK,
    CompositeMark,
    ContentMark,
    DarkMark,
    MarginMark,
    NoiseMark,
    Scheme,
    SleeperMark,
    TriggerSet,
    UnrelatedMark,
    default_per_batch,
    keeps_batch_size,
    parse_scheme,
)
from watermark.secret import WatermarkSecret, read_secret, write_secret

__all__ = [
    "DEFAULT_WATERMARK",
    "CompositeMark",
    "ContentMark",
    "DarkMark",
    "MarginMark",
    "NoiseMark",
    "Scheme",
    "SleeperMark",
    "TriggerSet",
    "UnrelatedMark",
    "WatermarkHook",
    "WatermarkKey",
    "WatermarkSecret",
    "default_per_batch",
    "keeps_batch_size",
    "parse_scheme",
    "read_secret",
    "write_secret",
]
