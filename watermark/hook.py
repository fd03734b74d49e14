"""The training-time hook: mixes watermark probes into a plain PyTorch loop.

Two lines in any loop that iterates ``(x, y)`` batches::

    hook = WatermarkHook(probes)            # probes: a watermark ProbeSet
    for x, y in hook(loader):               # instead of `for x, y in loader`
        ...                                 # your loss, optimiser, schedule: unchanged
    hook.finish(model)                      # after the loop (sleeper marks are written here)

Every batch the loader yields is passed through in its own order, with
``per_batch`` probes appended (in the spirit of Adi et al. 2018, who mix a few
triggers into each batch). Probes are taken in a fixed cycle, reshuffled each
pass by a seed derived from the commitment, so every probe is seen equally
often. Nothing else changes: not the loss, not the optimiser, not the order
or content of the user's data. Any batch size works.

With ``keep_batch_size=True`` the probes take the place of the batch's last
``per_batch`` examples instead, so a step costs what a clean one does; the
examples left out differ from epoch to epoch where the loader shuffles.
``wm train`` does that when the probes are at most a tenth of the batch
(:func:`watermark.schemes.keeps_batch_size`): on Fashion-MNIST 12 probes in
place of 12 of 128 examples cost no clean accuracy and no time, where
appending them cost 1.08-1.11x the CPU (``benchmarks/embed.py``).

For PyTorch Lightning, :class:`watermark.lightning.WatermarkCallback` does the
same from a callback (optional extra ``wm[lightning]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from core.arch import dormant_units, feature_layer, unit_activity
from core.errors import InputError
from core.probeset import ProbeSet

__all__ = ["ChainedHooks", "PruneAwareHook", "WatermarkHook"]


class WatermarkHook:
    """Appends ``per_batch`` watermark probes to every ``(x, y)`` training batch.

    Args:
        probes: the watermark's probe set (``kind == "watermark"``).
        per_batch: probes appended to each batch. The default, 6, embeds the
            default 100-trigger set to 100% in 30 epochs of 64-example batches
            on ``digits`` (benchmarks/embed.py); the in-distribution marks of
            Zhang et al. need about 12.
        keep_batch_size: put the probes in place of the batch's last
            examples (as many as it adds) rather than after them; a batch no
            larger than that keeps its examples and grows.
    """

    def __init__(self, probes: ProbeSet, per_batch: int = 6, *, keep_batch_size: bool = False) -> None:
        if probes.kind != "watermark":
            raise InputError(f"the watermark hook needs a watermark probe set, got {probes.kind!r}")
        if probes.rank != 1 and type(self).mix is WatermarkHook.mix:
            raise InputError(f"{probes.scheme} probes are read as second choices and trained by their "
                             "scheme's own hook (scheme.hook(...)), not mixed in as labelled examples")
        if probes.scheme.partition(":")[0] == "sleeper" and type(self).mix is WatermarkHook.mix:
            raise InputError(f"{probes.scheme} probes are written into the weights by their scheme's own "
                             "hook (scheme.hook(...), then hook.finish(model)), not mixed in as labelled "
                             "examples")
        if per_batch < 1:
            raise InputError(f"per_batch must be at least 1, got {per_batch}")
        self.probes = probes
        self.per_batch = per_batch
        self.keep_batch_size = keep_batch_size
        self._gen = torch.Generator().manual_seed(int.from_bytes(probes.root[:8], "big"))
        self._order = torch.randperm(len(probes), generator=self._gen)
        self._pos = 0
        self.mixed = 0  # probes appended so far
        self._probe_rows = 0  # rows the last batch gained from the probes, at its end

    def mixing(self) -> str:
        """How this hook changes the batches, in words (``wm train`` prints it)."""
        placed = "in place of as many examples" if self.keep_batch_size else "appended"
        return f"{self.per_batch} per batch, {placed}"

    def _next_indices(self) -> torch.Tensor:
        out: list[torch.Tensor] = []
        need = self.per_batch
        while need:
            if self._pos == len(self._order):
                self._order = torch.randperm(len(self.probes), generator=self._gen)
                self._pos = 0
            take = self._order[self._pos : self._pos + need]
            self._pos += len(take)
            need -= len(take)
            out.append(take)
        return torch.cat(out)

    def _check_inputs(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.probes.input_shape:
            raise InputError(
                f"batch inputs have shape {list(x.shape[1:])}, "
                f"the watermark probes {list(self.probes.input_shape)}"
            )

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch with the next probes appended, or in place of its last examples where
        ``keep_batch_size``; same device and dtypes as the batch. After a hook that softened
        the targets (``[N, C]``, a dark mark's) the probes come as one-hot rows."""
        self._check_inputs(x)
        soft = y.dtype.is_floating_point
        if soft and (y.dim() != 2 or y.shape[1] != self.probes.num_classes):
            raise InputError("the watermark hook needs integer class labels, or soft targets "
                             f"[N, {self.probes.num_classes}] (another hook's, e.g. a dark mark's)")
        idx = self._next_indices()
        px, py = self.examples(idx)
        k = px.shape[0]  # per_batch, or more where a scheme adds examples of its own (negatives)
        self._probe_rows = k
        if self.keep_batch_size and x.shape[0] > k:
            x, y = x[:-k], y[:-k]
        px = px.to(device=x.device, dtype=x.dtype)
        self.mixed += len(idx)
        if soft:
            onehot = torch.nn.functional.one_hot(py.long(), self.probes.num_classes)
            return _append_keeping_layout(x, px), torch.cat([y, onehot.to(device=y.device, dtype=y.dtype)])
        py = py.to(device=y.device, dtype=y.dtype)
        return _append_keeping_layout(x, px), torch.cat([self.relabel(x, y), py])

    def examples(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples appended for probes ``idx``: here the probes as they are.

        Schemes that train on something derived from their probes (perturbed
        or re-drawn copies) override this; the labels stay the probes' own.
        """
        return self.probes.inputs[idx], self.probes.expected[idx]

    def relabel(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The labels the user's own examples are trained with: here ``y`` unchanged.

        Schemes that mark the model's behaviour on ordinary inputs override it.
        """
        return y

    def __call__(self, loader: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Wrap an iterable of ``(x, y)`` batches (a DataLoader, a generator, a list)."""
        for batch in loader:
            x, y = _unpack(batch)
            yield self.mix(x, y)

    def finish(self, model: torch.nn.Module | None = None) -> None:
        """What the scheme does once training is over; call it after the loop. Here: nothing
        (schemes that write the mark after training, sleeper marks, override it)."""


def _append_keeping_layout(x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``x`` with ``extra`` appended along the batch, in ``x``'s own memory layout.

    ``torch.cat`` returns a plain contiguous tensor; if the user's batches are
    laid out otherwise (channels-last, or the channels-last-like strides of a
    one-channel array built with ``x[:, None]``), kernels downstream switch to
    another path: measured on digits, max-pooling became 10x slower and
    marked training 1.25x slower than clean training. Keeping the layout keeps
    the marked step as cheap as a clean one with a few more examples.
    """
    n = x.shape[0]
    per_sample = 1
    for d in x.shape[1:]:
        per_sample *= int(d)
    if n == 0 or x.stride(0) != per_sample or not _dense(x):
        return torch.cat([x, extra])
    out = torch.empty_strided((n + extra.shape[0], *x.shape[1:]), x.stride(),
                              dtype=x.dtype, device=x.device)
    out[:n] = x
    out[n:] = extra
    return out


def _dense(x: torch.Tensor) -> bool:
    """True when ``x``'s elements fill its storage span exactly, in some dimension order."""
    expected = 1
    for size, stride in sorted((int(d), int(s)) for s, d in zip(x.stride(), x.shape, strict=True)
                               if d != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Sequence) and len(batch) == 2:
        x, y = batch
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x, y
    raise InputError("the watermark hook needs batches of (inputs, labels) tensors")


class ChainedHooks:
    """Several hooks over one loop, in order: ``hooks[-1](... hooks[0](loader))``.

    Put hooks that soften the batch's own targets (dark marks) first; mixing
    hooks after them append their probes as one-hot rows.
    """

    def __init__(self, hooks: Sequence[WatermarkHook]) -> None:
        self.hooks = list(hooks)

    def __call__(self, loader: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        out: Iterable[Any] = loader
        for hook in self.hooks:
            out = hook(out)
        return iter(out)

    def finish(self, model: torch.nn.Module | None = None) -> None:
        """Every hook's :meth:`WatermarkHook.finish`, in order."""
        for hook in self.hooks:
            hook.finish(model)


class PruneAwareHook(WatermarkHook):
    """Mixes probes like :class:`WatermarkHook` and trains some rows as fine-pruning would leave the model.

    Fine-pruning (Liu et al., RAID 2018; the SoK's strongest removal attack on
    stolen weights) measures each unit of the model's last feature layer
    (:func:`core.arch.feature_layer`) on clean data, removes the least active
    ``fraction`` and fine-tunes. A trigger set learned the usual way lives
    in units clean data leaves dormant (Liu et al.'s observation about
    backdoors): after pruning it is gone, and fine-tuning, which has to
    rebuild the classifier from the units left, does not bring it back.

    This hook keeps a running measure of each unit's activity on the batch's
    own examples (the mean positive part, as the attack measures it) and, in
    every batch, holds the least active ``fraction`` of units at the value
    pruning leaves them (zero; behind a batch norm, the norm's bias, which is
    what a pruned channel gives once fine-tuning has re-estimated the norm's
    statistics) on copies of a quarter of the batch's own examples and of
    all its probes, appended to the batch (a batch of 128 with 16 probes
    trains on 192 rows instead of 144). The model so learns a classifier on
    the active units alone (the copies of clean examples) and the probes'
    labels both with and without the units fine-pruning removes. Holding
    them in place instead, on a quarter of the batch's examples and half its
    probes with nothing appended, cost no time but kept less (Fashion-MNIST,
    fine-pruning 90% at Adam 3e-4, seed-0 prototypes: 0.42 of the triggers
    against 0.73). The
    probes and their null are the scheme's own; only training changes.

    The masks act on the model's forward pass through module hooks that are
    registered while an epoch's batches are iterated and removed when the
    iteration ends, and apply to the first forward pass over each whole batch
    this hook yields (training mode or not). A loop that never passes a whole
    batch (micro-batches) is refused at the end of the epoch rather than
    trained without the masks.

    Args:
        probes: the watermark's probe set (labels read as first choices).
        model: the network the batches will train.
        fraction: share of the feature layer's units held at their pruned value, in ``(0, 1)``.
        per_batch: probes mixed into each batch.
        keep_batch_size: as :class:`WatermarkHook`.
    """

    CLEAN_SHARE = 0.25
    """Share of each batch's own examples trained with the dormant units held."""
    MOMENTUM = 0.1
    """Weight of each batch in the running measure of the units' activity."""

    def __init__(self, probes: ProbeSet, model: torch.nn.Module, *, fraction: float, per_batch: int = 6,
                 keep_batch_size: bool = False) -> None:
        super().__init__(probes, per_batch=per_batch, keep_batch_size=keep_batch_size)
        if not 0.0 < fraction < 1.0:
            raise InputError(f"the pruned fraction must be in (0, 1), got {fraction}")
        try:
            self.layer = feature_layer(model)
        except InputError:
            raise InputError("a prune-aware mark needs a hidden layer before the output layer (fine-pruning "
                             "prunes the last feature layer's units)") from None
        self.fraction = float(fraction)
        self.norm = _norm_after(model, self.layer)
        self.activity: torch.Tensor | None = None
        self.held = 0  # batches trained with the dormant units held
        self._armed: tuple[int, int, int] | None = None  # (rows, clean rows, first held row; the rest held)
        self._iterating = False

    def mixing(self) -> str:
        return (f"{super().mixing()}; copies of {self.CLEAN_SHARE:g} of the examples and of the probes "
                f"appended with {self.fraction:g} of the feature layer's units held at their pruned value")

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`WatermarkHook.mix`, then copies of a quarter of the batch's own examples and of
        its probes appended; the masks are armed for the next forward pass over the batch."""
        if not self._iterating:
            raise InputError("a prune-aware hook works only as `for x, y in hook(loader)`: its masks act "
                             "on the forward passes while the batches are iterated")
        bx, by = super().mix(x, y)
        rows, k = bx.shape[0], self._probe_rows
        clean = rows - k
        copies = torch.cat([torch.arange(int(self.CLEAN_SHARE * clean), device=bx.device),
                            torch.arange(clean, rows, device=bx.device)])
        self._armed = (rows + len(copies), clean, rows)
        return _append_keeping_layout(bx, bx[copies]), torch.cat([by, by[copies]])

    def __call__(self, loader: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Wrap one epoch's batches; the masks' module hooks live as long as the iteration."""
        handles = [self.layer.register_forward_hook(self._measure),
                   (self.norm or self.layer).register_forward_hook(self._hold)]
        batches, held = 0, self.held
        self._iterating = True
        try:
            for batch in super().__call__(loader):
                yield batch
                batches += 1
        finally:
            for h in handles:
                h.remove()
            self._armed = None
            self._iterating = False
        if batches and self.held == held:
            raise InputError("a prune-aware hook needs the model called once on each whole batch it yields; "
                             f"no forward pass over a whole batch was seen in {batches} batches")

    def _measure(self, _m: torch.nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if self._armed is None or out.shape[0] != self._armed[0]:
            return
        with torch.no_grad():
            a = unit_activity(out[: self._armed[1]].detach())
            old = self.activity
            self.activity = a if old is None else (1 - self.MOMENTUM) * old + self.MOMENTUM * a

    def _hold(self, _m: torch.nn.Module, _i: tuple[torch.Tensor, ...],
              out: torch.Tensor) -> torch.Tensor | None:
        if self._armed is None or out.shape[0] != self._armed[0]:
            return None
        first = self._armed[2]
        self._armed = None
        if self.activity is None:
            return None
        dormant = dormant_units(self.activity, self.fraction)
        bias = self.norm.bias if self.norm is not None else None  # the hook sits on the norm if any
        value = (bias.detach().to(out.dtype) if isinstance(bias, torch.Tensor)
                 else torch.zeros(self.activity.numel(), dtype=out.dtype, device=out.device))
        shape = [1, -1, *([1] * (out.dim() - 2))]
        held = out.clone()
        held[first:, dormant] = value[dormant].view(shape).expand(out.shape[0] - first, -1, *out.shape[2:])
        self.held += 1
        return held


def _norm_after(model: torch.nn.Module,
                layer: torch.nn.Linear | torch.nn.modules.conv._ConvNd) -> torch.nn.Module | None:
    """The batch norm right after ``layer`` in ``model``'s module order, if it normalises its units."""
    mods = list(model.modules())
    after = mods[mods.index(layer) + 1:]
    units = layer.out_features if isinstance(layer, torch.nn.Linear) else layer.out_channels
    norm = after[0] if after else None
    if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) and norm.num_features == units:
        return norm
    return None
