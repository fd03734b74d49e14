"""The built-in digits split and .npz validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import load_data, load_digits, load_npz
from core.errors import DataError


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


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": GOOD_X}, "missing array"),
        ({"x": GOOD_X.astype(np.float64), "y": GOOD_Y}, "x must be float32, got float64"),
        ({"x": GOOD_X[:, 0], "y": GOOD_Y}, r"x must have shape \[N, C, H, W\], got \[20, 4, 4\]"),
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
