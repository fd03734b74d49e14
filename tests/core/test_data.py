"""The built-in digits and Fashion-MNIST splits, the IDX format, and .npz validation."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from core import data as data_module
from core.data import (
    Splits,
    decoy_data,
    fashion_mnist_dir,
    load_data,
    load_digits,
    load_fashion_mnist,
    load_npz,
)
from core.errors import DataError
from core.idx import find_idx, parse_idx, read_idx
from core.inputrange import UNIT, InputRange


def test_digits_split() -> None:
    s = load_digits()
    assert (len(s.train), len(s.attacker_pool or []), len(s.test)) == (898, 539, 360)
    for part in (s.train, s.attacker_pool, s.test):
        assert part is not None
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert part.input_shape == (1, 8, 8)
        assert float(part.x.min()) >= 0.0 and float(part.x.max()) <= 1.0
    rows = [{r.numpy().tobytes() for r in p.x} for p in (s.train, s.attacker_pool, s.test)]
    assert sum(map(len, rows)) >= 1790  # (a handful of digits are duplicated in the source)
    assert torch.equal(load_digits().train.x, s.train.x)  # fixed seed
    assert set(s.test.y.tolist()) == set(range(10))


def _save(tmp_path: Path, **arrays: object) -> Path:
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


GOOD_X = np.random.default_rng(0).random((20, 1, 4, 4), dtype=np.float32)
GOOD_Y = np.arange(20, dtype=np.int64) % 3


def test_good_npz(tmp_path: Path) -> None:
    s = load_npz(_save(tmp_path, x=GOOD_X, y=GOOD_Y))
    assert s.num_classes == 3 and len(s.train) == 16 and len(s.test) == 4
    assert s.attacker_pool is None and s.input_shape == (1, 4, 4)
    assert load_data(str(tmp_path / "d.npz")).num_classes == 3
    assert s.spec == str((tmp_path / "d.npz").resolve()) and load_data(s.spec).name == "d"
    # no declared range: the smallest one holding every value
    assert s.input_range == InputRange(float(GOOD_X.min()), float(GOOD_X.max()))
    constant = load_npz(_save(tmp_path, x=np.full_like(GOOD_X, 2.0), y=GOOD_Y))
    assert constant.input_range == InputRange(1.5, 2.5)


def test_flat_features_and_declared_ranges(tmp_path: Path) -> None:
    flat = (GOOD_X.reshape(20, -1) * 4 - 2).astype(np.float32)  # values in [-2, 2)
    s = load_npz(_save(tmp_path, x=flat, y=GOOD_Y, low=np.float32(-3), high=np.float32(3)))
    assert s.input_shape == (16,) and s.input_range == InputRange(-3.0, 3.0)
    assert load_digits().input_range == UNIT
    # normalised images: the range follows from per-channel mean and std over raw [0, 1]
    mean, std = np.array([0.5, 0.25], np.float32), np.array([0.5, 0.25], np.float32)
    raw = np.random.default_rng(1).random((20, 2, 3, 3), dtype=np.float32)
    x = ((raw - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    s = load_npz(_save(tmp_path, x=x, y=GOOD_Y, mean=mean, std=std))
    assert s.input_range == InputRange(-1.0, 3.0)  # channel 0: [-1, 1], channel 1: [-1, 3]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"low": np.float32(0)}, "low and high must both be given"),
        ({"low": np.zeros(2), "high": np.ones(2)}, "one number each"),
        ({"low": np.float32(0.5), "high": np.float32(1)}, r"outside its declared input range \[0.5, 1\]"),
        ({"low": np.float32(1), "high": np.float32(0)}, "needs low < high"),
        ({"mean": np.zeros(1)}, "mean and std must both be given"),
        ({"mean": np.zeros(3), "std": np.ones(3)}, "need 1 or 1 values each"),
        ({"mean": np.zeros(1), "std": np.zeros(1)}, "every std must be positive"),
        ({"mean": np.full(1, 0.9), "std": np.ones(1)}, "outside its declared input range"),
    ],
)
def test_bad_declared_ranges(tmp_path: Path, extra: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_npz(_save(tmp_path, x=GOOD_X, y=GOOD_Y, **extra))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": GOOD_X}, "missing array"),
        ({"x": GOOD_X.astype(np.float64), "y": GOOD_Y}, "x must be float32, got float64"),
        ({"x": GOOD_X[:, 0], "y": GOOD_Y}, r"x must have shape \[N, C, H, W\] or \[N, D\], got \[20, 4, 4\]"),
        ({"x": GOOD_X, "y": GOOD_Y.astype(np.float32)}, "y must be int64, got float32"),
        ({"x": GOOD_X, "y": GOOD_Y[:, None]}, r"y must have shape \[N\]"),
        ({"x": GOOD_X, "y": GOOD_Y[:5]}, "x has 20 rows but y has 5"),
        ({"x": np.where(GOOD_X > 0.5, np.nan, GOOD_X).astype(np.float32), "y": GOOD_Y},
         "x contains NaN or infinity"),
        ({"x": GOOD_X, "y": GOOD_Y - 1}, "labels must be >= 0, got -1"),
        ({"x": GOOD_X, "y": np.zeros(20, np.int64)}, "needs at least 2 classes"),
        ({"x": GOOD_X[:1], "y": GOOD_Y[:1]}, "needs at least 2 examples"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_npz(_save(tmp_path, **arrays))


def test_not_an_npz(tmp_path: Path) -> None:
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"is not a readable \.npz file"):
        load_npz(p)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object), y=GOOD_Y)
    with pytest.raises(DataError, match=r"is not a readable \.npz file"):
        load_npz(p)


@pytest.mark.parametrize(("spec", "message"), [("nope", "unknown data set 'nope'"),
                                              ("/no/such.npz", "does not exist")])
def test_unknown_data(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_data(spec)


# --- Fashion-MNIST and the IDX format -------------------------------------------------------------


def test_fashion_mnist_split(fashion_mnist: Splits) -> None:
    s = fashion_mnist
    assert s.name == "fashion-mnist" and s.num_classes == 10
    parts = {"train": s.train, "attacker_pool": s.attacker_pool, "reference": s.reference, "test": s.test}
    assert {k: len(v or []) for k, v in parts.items()} == {
        "train": 30_000, "attacker_pool": 20_000, "reference": 10_000, "test": 10_000}
    for part in parts.values():
        assert part is not None
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert part.input_shape == (1, 28, 28)
        assert float(part.x.min()) == 0.0 and float(part.x.max()) == 1.0
        assert set(part.y.tolist()) == set(range(10))
    # owner, attacker and reference are disjoint and together the official 60,000 (no duplicates there)
    rows: set[bytes] = set()
    for part in (s.train, s.attacker_pool, s.reference):
        assert part is not None
        rows |= {r.numpy().tobytes() for r in part.x}
    assert len(rows) == 60_000
    # the test set is the official one, in its published order; the split is fixed
    assert s.test.y[:8].tolist() == [9, 2, 1, 1, 6, 1, 4, 6]
    assert torch.equal(load_data("fashion-mnist").train.y, s.train.y)
    assert torch.bincount(s.test.y).tolist() == [1000] * 10


def _copy_fashion_mnist(tmp_path: Path, *, plain_labels: bytes | None = None) -> Path:
    """A $WM_DATA_DIR with links to the installed images and plain (uncompressed) label files."""
    src = fashion_mnist_dir()
    assert src is not None
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (d / f"{name}.gz").symlink_to(find_idx(src, name))  # type: ignore[arg-type]
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        path = find_idx(src, name)
        assert path is not None
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if plain_labels is not None and name.startswith("t10k"):
            data = plain_labels
        (d / name).write_bytes(data)
    return tmp_path


def test_fashion_mnist_from_wm_data_dir_plain_files(fashion_mnist: Splits, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WM_DATA_DIR", str(_copy_fashion_mnist(tmp_path)))
    assert fashion_mnist_dir() == tmp_path / "fashion-mnist"
    assert torch.equal(load_fashion_mnist().test.y, fashion_mnist.test.y)


def test_fashion_mnist_tampered_file_is_refused(fashion_mnist: Splits, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = fashion_mnist_dir()
    assert src is not None
    labels = gzip.decompress(find_idx(src, "t10k-labels-idx1-ubyte").read_bytes())  # type: ignore[union-attr]
    flipped = labels[:-1] + bytes([(labels[-1] + 1) % 10])  # one label changed, still valid IDX
    monkeypatch.setenv("WM_DATA_DIR", str(_copy_fashion_mnist(tmp_path, plain_labels=flipped)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte is not the expected file"):
        load_fashion_mnist()  # never a silent fall-back to the system copy


def test_fashion_mnist_missing_names_package_and_variable(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WM_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        load_data("fashion-mnist")
    assert err.value.diagnostics() == (
        f"Fashion-MNIST is not installed (looked in {tmp_path}/fashion-mnist or {tmp_path}/nowhere) "
        "(apt-get install dataset-fashion-mnist, or put its four IDX files in $WM_DATA_DIR/fashion-mnist/)"
    )


def _idx(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def test_parse_idx_types_and_shapes() -> None:
    a = parse_idx(_idx(0x08, (2, 3), bytes(range(6))), source="t")
    assert a.shape == (2, 3) and a.dtype == np.uint8 and a[1, 2] == 5
    b = parse_idx(_idx(0x0C, (2,), struct.pack(">2i", -7, 1 << 20)), source="t")
    assert b.tolist() == [-7, 1 << 20]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "is not an IDX file"),
        (b"", "is not an IDX file"),
        (_idx(0x07, (1,), b"\x00"), "unknown IDX element type 0x07"),
        (b"\x00\x00\x08\x00", "needs at least one dimension"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated IDX header"),
        (_idx(0x08, (2, 3), bytes(5)), r"dimensions \[2, 3\] need 6 bytes of data, the file has 5"),
        (_idx(0x0B, (2,), bytes(5)), r"dimensions \[2\] need 4 bytes of data, the file has 5"),
    ],
)
def test_parse_idx_refuses_malformed(data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_idx(data, source="t")


def test_read_idx_checks_digest_and_bounds_decompression(tmp_path: Path) -> None:
    good = _idx(0x08, (4,), b"\x01\x02\x03\x04")
    digest = hashlib.sha256(good).hexdigest()
    (tmp_path / "a.gz").write_bytes(gzip.compress(good))
    assert read_idx(tmp_path / "a.gz", size=len(good), sha256=digest).tolist() == [1, 2, 3, 4]
    (tmp_path / "b").write_bytes(good)
    assert read_idx(tmp_path / "b", size=len(good), sha256=digest).tolist() == [1, 2, 3, 4]
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(bytes(5_000_000)))
    with pytest.raises(DataError, match="is not the expected file"):
        read_idx(tmp_path / "bomb.gz", size=len(good), sha256=digest)
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"junk.gz cannot be read \(BadGzipFile"):
        read_idx(tmp_path / "junk.gz", size=len(good), sha256=digest)


def test_decoys_come_from_the_models_own_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert decoy_data(None, {"m": "digits"}).name == "digits"
    assert decoy_data(None, {"a": "digits", "b": "digits"}).name == "digits"
    _save(tmp_path, x=GOOD_X, y=GOOD_Y)
    assert decoy_data(str(tmp_path / "d.npz"), {"m": None}).name == "d"  # --decoys wins
    monkeypatch.chdir(tmp_path)
    assert decoy_data(None, {"m": "d.npz"}).input_shape == (1, 4, 4)  # the file's name, found here
    for recorded, message in [
        ({"m": None}, "the registry does not say which data model 'm' was trained on"),
        ({"a": "digits", "b": "d.npz"}, r"the named models were trained on different data \(d.npz, digits\)"),
        ({"m": "elsewhere.npz"}, "model 'm' was trained on elsewhere.npz, which is not in the current"),
        ({}, "no model is named to take decoys from"),
    ]:
        with pytest.raises(DataError, match=message):
            decoy_data(None, recorded)
