"""The training-time hook in a plain loop and in Lightning, with real training on digits."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from core.arch import build_model
from core.data import load_digits
from core.errors import InputError
from core.training import accuracy, train_classifier
from watermark import TriggerSet, WatermarkHook, WatermarkKey

DIGITS = load_digits()


@pytest.fixture(scope="module")
def probes():  # type: ignore[no-untyped-def]
    return TriggerSet().probes(WatermarkKey(b"\x11" * 32), num_classes=10, input_shape=(1, 8, 8))


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_user_batches_pass_through_unchanged(probes, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    loader = DataLoader(TensorDataset(DIGITS.train.x, DIGITS.train.y), batch_size=batch_size)
    hook = WatermarkHook(probes, per_batch=3)
    original = list(loader)
    mixed = list(hook(loader))
    assert len(mixed) == len(original)
    for (x, y), (mx, my) in zip(original, mixed, strict=True):
        n = x.shape[0]
        assert torch.equal(mx[:n], x) and torch.equal(my[:n], y)  # same data, same order
        assert mx.shape[0] == n + 3 and my.dtype == y.dtype
    assert hook.mixed == 3 * len(original)


def test_every_probe_is_seen_equally_often(probes) -> None:  # type: ignore[no-untyped-def]
    hook = WatermarkHook(probes, per_batch=5)
    seen: Counter[bytes] = Counter()
    batches = [(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64))] * 60  # 300 = 3 passes
    for x, _ in hook(batches):
        for row in x[2:]:
            seen[row.numpy().tobytes()] += 1
    assert len(seen) == 100 and set(seen.values()) == {3}


def test_mixed_labels_are_the_probe_labels(probes) -> None:  # type: ignore[no-untyped-def]
    hook = WatermarkHook(probes, per_batch=100)
    x, y = hook.mix(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.int64))
    lookup = {p.numpy().tobytes(): int(t)
              for p, t in zip(probes.inputs, probes.expected, strict=True)}
    assert all(lookup[xi.numpy().tobytes()] == int(yi) for xi, yi in zip(x[1:], y[1:], strict=True))


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ((torch.zeros(2, 1, 9, 9), torch.zeros(2, dtype=torch.int64)),
         r"batch inputs have shape \[1, 9, 9\]"),
        ((torch.zeros(2, 1, 8, 8), torch.zeros(2, 7)), "needs integer class labels, or soft targets"),
        ((torch.zeros(2, 1, 8, 8),), r"needs batches of \(inputs, labels\) tensors"),
        ({"x": 1}, r"needs batches of \(inputs, labels\) tensors"),
    ],
)
def test_bad_batches(probes, batch, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=message):
        next(WatermarkHook(probes)([batch]))


def test_bad_hook_arguments(probes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="per_batch must be at least 1"):
        WatermarkHook(probes, per_batch=0)


def _plain_loop(model: torch.nn.Module, hook: WatermarkHook | None, epochs: int) -> None:
    # A user's own loop: the hook is the only change (`hook(loader)` instead of `loader`).
    loader = DataLoader(TensorDataset(DIGITS.train.x, DIGITS.train.y), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in (hook(loader) if hook else loader):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()


def test_hook_embeds_in_a_plain_loop(probes) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    marked = build_model("cnn", (1, 8, 8), 10)
    _plain_loop(marked, WatermarkHook(probes), epochs=30)
    torch.manual_seed(0)
    clean = build_model("cnn", (1, 8, 8), 10)
    _plain_loop(clean, None, epochs=30)
    assert accuracy(marked, probes.inputs, probes.expected) >= 0.97
    assert accuracy(marked, DIGITS.test.x, DIGITS.test.y) >= 0.95
    assert accuracy(clean, probes.inputs, probes.expected) <= 0.3


def test_hook_through_train_classifier(probes) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    m = build_model("mlp", (1, 8, 8), 10)
    train_classifier(m, DIGITS.train.x, DIGITS.train.y, epochs=30, seed=1,
                     hook=WatermarkHook(probes, per_batch=8))
    assert accuracy(m, probes.inputs, probes.expected) >= 0.97


def test_hook_in_lightning(probes) -> None:  # type: ignore[no-untyped-def]
    pl = pytest.importorskip("pytorch_lightning")
    from watermark.lightning import WatermarkCallback

    class Module(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = build_model("cnn", (1, 8, 8), 10)
            self.sizes: list[int] = []

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            self.sizes.append(int(x.shape[0]))
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    module = Module()
    loader = DataLoader(TensorDataset(DIGITS.train.x, DIGITS.train.y), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(max_epochs=30, callbacks=[WatermarkCallback(probes)], accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, loader)
    module.net.eval()
    assert set(module.sizes) == {64 + 6, 898 % 64 + 6}
    assert accuracy(module.net, probes.inputs, probes.expected) >= 0.97
    assert accuracy(module.net, DIGITS.test.x, DIGITS.test.y) >= 0.95


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.rand(5, 3, 4, 4).contiguous(memory_format=torch.channels_last),
        lambda: torch.rand(5, 3, 4, 4),
        lambda: torch.rand(5, 3, 4, 8)[:, :, :, ::2],  # not dense: falls back to torch.cat
    ],
    ids=["channels-last", "contiguous", "strided-view"],
)
def test_mixing_keeps_the_batch_layout(make) -> None:  # type: ignore[no-untyped-def]
    probes = TriggerSet(n=5).probes(WatermarkKey(b"\x01" * 32), num_classes=3, input_shape=(3, 4, 4))
    x = make()
    mx, _ = WatermarkHook(probes, per_batch=2).mix(x, torch.zeros(5, dtype=torch.int64))
    assert torch.equal(mx[:5], x) and mx.shape[0] == 7
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert mx.is_contiguous(memory_format=torch.channels_last)
    # a one-channel digits batch keeps its strides (cat would change them and slow max-pooling 10x)
    d = DIGITS.train.x[torch.arange(64)]
    p1 = TriggerSet().probes(WatermarkKey(b"\x01" * 32), num_classes=10, input_shape=(1, 8, 8))
    md, _ = WatermarkHook(p1).mix(d, DIGITS.train.y[:64])
    assert md.stride() == d.stride() and torch.equal(md[:64], d)


@pytest.mark.parametrize("batch_size", [2, 3, 64, 1000])
def test_keeping_the_batch_size_puts_the_probes_in_place_of_the_last_examples(
        probes, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    loader = DataLoader(TensorDataset(DIGITS.train.x, DIGITS.train.y), batch_size=batch_size)
    hook = WatermarkHook(probes, per_batch=3, keep_batch_size=True)
    lookup = {p.numpy().tobytes(): int(t) for p, t in zip(probes.inputs, probes.expected, strict=True)}
    for (x, y), (mx, my) in zip(loader, hook(loader), strict=True):
        n = x.shape[0]
        kept = n - 3 if n > 3 else n  # a batch no larger than per_batch keeps its examples and grows
        assert mx.shape[0] == max(n, n + 3 - (n - kept)) and mx.stride() == x.stride()
        assert torch.equal(mx[:kept], x[:kept]) and torch.equal(my[:kept], y[:kept])
        assert all(lookup[r.numpy().tobytes()] == int(t) for r, t in zip(mx[kept:], my[kept:], strict=True))
    assert hook.mixed == 3 * len(loader)


def test_wm_train_keeps_the_batch_size_where_the_probes_are_a_tenth_of_it() -> None:
    from watermark import keeps_batch_size

    assert keeps_batch_size(12, 128) and keeps_batch_size(6, 64)  # Fashion-MNIST's default; 6 in 64
    assert not keeps_batch_size(18, 128) and not keeps_batch_size(18, 64)  # digits' default: appended
