"""PyTorch Lightning adapter for the watermark hook (optional extra ``wm[lightning]``).

::

    trainer = pl.Trainer(callbacks=[WatermarkCallback(probes)])

Before each training step the callback appends the next probes to the batch,
exactly as :class:`watermark.WatermarkHook` does in a plain loop. Lightning
hands the same batch object to ``training_step``, so the batch must be a
mutable ``[x, y]`` list (what the default collate function gives for a
``TensorDataset``); a tuple batch is refused with a clear error.
"""

from __future__ import annotations

from typing import Any

from core.errors import InputError
from core.probeset import ProbeSet
from watermark.hook import WatermarkHook

try:
    import pytorch_lightning as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise InputError(
        "the Lightning adapter needs pytorch-lightning", hint="pip install 'wm[lightning]'"
    ) from exc

__all__ = ["WatermarkCallback"]


class WatermarkCallback(pl.Callback):
    """Mixes ``per_batch`` watermark probes into every Lightning training batch."""

    def __init__(self, probes: ProbeSet, per_batch: int = 6) -> None:
        super().__init__()
        self.hook = WatermarkHook(probes, per_batch=per_batch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Append probes to ``batch`` in place."""
        if not isinstance(batch, list) or len(batch) != 2:
            raise InputError(
                "the watermark callback needs each batch as a mutable [inputs, labels] list"
            )
        batch[0], batch[1] = self.hook.mix(batch[0], batch[1])
