"""Data sets: the built-in ``digits`` set and validated ``.npz`` files.

``digits`` is scikit-learn's copy of the UCI 8x8 handwritten digits (1,797 real
images, 10 classes, shipped inside the package, no download), as float32
``[N, 1, 8, 8]`` in [0, 1] (pixel / 16), split by a fixed seed into
owner-train (898), attacker-pool (539) and test (360).

An ``.npz`` file holds ``x`` (float32 ``[N, C, H, W]``) and ``y`` (int64
``[N]``, labels ``0..C-1``); it is split by a fixed seed into train (80%) and
test (20%) and has no attacker pool.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError

__all__ = [
    "DIGITS_SPLIT_SEED",
    "Dataset",
    "Splits",
    "load_data",
    "load_digits",
    "load_npz",
    "validate_arrays",
]

DIGITS_SPLIT_SEED = 20180815  # fixed: every wm install splits digits the same way
DIGITS_SIZES = {"owner_train": 898, "attacker_pool": 539, "test": 360}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs ``x`` (float32 ``[N, C, H, W]``) and labels ``y`` (int64 ``[N]``)."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(int(s) for s in self.x.shape[1:])


@dataclass(frozen=True, eq=False)
class Splits:
    """A task's splits. ``attacker_pool`` is ``None`` for user-supplied data."""

    name: str
    train: Dataset
    test: Dataset
    attacker_pool: Dataset | None
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return self.train.input_shape


def validate_arrays(x: object, y: object, *, source: str, num_classes: int | None = None) -> int:
    """Check ``x``/``y`` as DESIGN.md's data format fixes them; return the class count.

    Raises:
        DataError: naming ``source`` and the first problem found.
    """
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{source}: x and y must be arrays")
    if x.dtype != np.float32:
        raise DataError(f"{source}: x must be float32, got {x.dtype}")
    if x.ndim != 4:
        raise DataError(
            f"{source}: x must have shape [N, C, H, W], got {list(x.shape)}",
            hint="add a channel axis, e.g. x[:, None]",
        )
    if y.dtype != np.int64:
        raise DataError(f"{source}: y must be int64, got {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{source}: y must have shape [N], got {list(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{source}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] < 2:
        raise DataError(f"{source}: needs at least 2 examples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise DataError(f"{source}: x contains NaN or infinity")
    if y.min() < 0:
        raise DataError(f"{source}: labels must be >= 0, got {int(y.min())}")
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    if y.max() >= classes:
        raise DataError(f"{source}: label {int(y.max())} is out of range for {classes} classes")
    if classes < 2:
        raise DataError(f"{source}: needs at least 2 classes")
    return classes


def _dataset(x: np.ndarray, y: np.ndarray, classes: int) -> Dataset:
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)),
                   torch.from_numpy(np.ascontiguousarray(y)), classes)


def load_digits() -> Splits:
    """The built-in ``digits`` task, split by :data:`DIGITS_SPLIT_SEED`."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y))
    a = DIGITS_SIZES["owner_train"]
    b = a + DIGITS_SIZES["attacker_pool"]
    parts = {"owner_train": perm[:a], "attacker_pool": perm[a:b], "test": perm[b:]}
    ds = {k: _dataset(x[idx], y[idx], 10) for k, idx in parts.items()}
    return Splits("digits", ds["owner_train"], ds["test"], ds["attacker_pool"], 10)


def load_npz(path: str | Path, *, seed: int = 0) -> Splits:
    """A validated ``.npz`` task (``x``, ``y``), split 80/20 into train/test by ``seed``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(f"{p}: missing array(s) {', '.join(missing)}; needs x and y")
            x, y = z["x"], z["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{p} is not a readable .npz file ({exc.__class__.__name__})") from exc
    classes = validate_arrays(x, y, source=str(p))
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = max(1, round(0.8 * len(y)))
    if cut >= len(y):
        cut = len(y) - 1
    train, test = perm[:cut], perm[cut:]
    return Splits(p.stem, _dataset(x[train], y[train], classes),
                  _dataset(x[test], y[test], classes), None, classes)


def load_data(spec: str) -> Splits:
    """``digits`` or a path to an ``.npz`` file."""
    if spec == "digits":
        return load_digits()
    if spec.endswith(".npz") or Path(spec).exists():
        return load_npz(spec)
    raise DataError(f"unknown data set {spec!r}", hint="use 'digits' or a path to an .npz file")
