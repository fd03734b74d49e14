"""Data sets: the built-in ``digits`` and ``fashion-mnist`` sets and validated ``.npz`` files.

``digits`` is scikit-learn's copy of the UCI 8x8 handwritten digits (1,797 real
images, 10 classes, shipped inside the package, no download), as float32
``[N, 1, 8, 8]`` in [0, 1] (pixel / 16), split by a fixed seed into
owner-train (898), attacker-pool (539) and test (360).

``fashion-mnist`` is Zalando's Fashion-MNIST (Xiao, Rasul, Vollgraf, arXiv
1708.07747): 70,000 real 28x28 greyscale images of 10 kinds of clothing, read
from the four IDX files in ``$WM_DATA_DIR/fashion-mnist/`` or
``/usr/share/datasets/fashion-mnist/`` (Debian package
``dataset-fashion-mnist``), each checked against its pinned SHA-256 (see
:mod:`core.idx`). As float32 ``[N, 1, 28, 28]`` in [0, 1] (pixel / 255), the
official 60,000 training images are split by a fixed seed into owner-train
(30,000), attacker-pool (20,000) and reference (10,000: for independent
models and calibration), disjoint; the test set is the official 10,000.

An ``.npz`` file holds ``x`` (float32 ``[N, C, H, W]`` images of any size,
or ``[N, D]`` feature vectors) and ``y`` (int64 ``[N]``, labels ``0..C-1``);
it is split by a fixed seed into train (80%) and test (20%) and has no
attacker pool. Its input range (:class:`~core.inputrange.InputRange`, where
watermarks and attack queries put their values) is, in this order: the
scalars ``low`` and ``high`` if the file has them; the range of
``(raw - mean) / std`` over raw values in [0, 1] if it has per-channel
``mean`` and ``std`` (normalised images); else the smallest range holding
every value of ``x`` (width 1 around the value if all are equal). Built-in
sets lie in [0, 1].
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError, InputError
from core.idx import find_idx, read_idx
from core.inputrange import UNIT, InputRange

__all__ = [
    "BUILTIN",
    "DIGITS_SPLIT_SEED",
    "FASHION_MNIST_SPLIT_SEED",
    "Dataset",
    "Splits",
    "decoy_data",
    "fashion_mnist_dir",
    "load_data",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "validate_arrays",
]

BUILTIN = ("digits", "fashion-mnist")
"""The built-in data sets' names, as ``--data`` takes them."""

DIGITS_SPLIT_SEED = 20180815  # fixed: every wm install splits digits the same way
DIGITS_SIZES = {"owner_train": 898, "attacker_pool": 539, "test": 360}

FASHION_MNIST_SPLIT_SEED = 20170825  # fixed: the day Fashion-MNIST was published
FASHION_MNIST_SIZES = {"owner_train": 30_000, "attacker_pool": 20_000, "reference": 10_000}
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# (decompressed size, SHA-256 of the decompressed IDX bytes) of Zalando's release files.
FASHION_MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte": (
        47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (
        60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (
        7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (
        10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs ``x`` (float32 ``[N, C, H, W]`` or ``[N, D]``) and labels ``y`` (int64 ``[N]``)."""

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
    """A task's splits, disjoint.

    Attributes:
        name: the data set's name (``digits``, ``fashion-mnist``, or the file's stem).
        train: the owner's training data.
        test: held-out test data.
        attacker_pool: the attacker's data; ``None`` for user-supplied data.
        num_classes: the number of classes.
        reference: data for independently trained reference models, disjoint
            from the owner's and the attacker's; ``None`` where the task has none.
        input_range: where every input value lies.
        spec: what :func:`load_data` takes to load this task again (a
            built-in name, or the ``.npz`` file's absolute path).
    """

    name: str
    train: Dataset
    test: Dataset
    attacker_pool: Dataset | None
    num_classes: int
    reference: Dataset | None = None
    input_range: InputRange = UNIT
    spec: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return self.train.input_shape

    @property
    def recorded_name(self) -> str:
        """What a model file records of this data: a built-in name, or the file's name (no directory)."""
        return self.spec if self.spec in BUILTIN else Path(self.spec).name


def validate_arrays(x: object, y: object, *, source: str, num_classes: int | None = None) -> int:
    """Check ``x``/``y`` as DESIGN.md's data format fixes them; return the class count.

    Raises:
        DataError: naming ``source`` and the first problem found.
    """
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{source}: x and y must be arrays")
    if x.dtype != np.float32:
        raise DataError(f"{source}: x must be float32, got {x.dtype}")
    if x.ndim not in (2, 4):
        raise DataError(
            f"{source}: x must have shape [N, C, H, W] or [N, D], got {list(x.shape)}",
            hint="add a channel axis to images, e.g. x[:, None]",
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
    return Splits("digits", ds["owner_train"], ds["test"], ds["attacker_pool"], 10, spec="digits")


def _fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: ``$WM_DATA_DIR/fashion-mnist``, then the system's."""
    dirs = []
    env = os.environ.get("WM_DATA_DIR")
    if env:
        dirs.append(Path(env).expanduser() / "fashion-mnist")
    dirs.append(FASHION_MNIST_SYSTEM_DIR)
    return dirs


def fashion_mnist_dir() -> Path | None:
    """The first of ``$WM_DATA_DIR/fashion-mnist`` and the system's directory holding all four files."""
    return next((d for d in _fashion_mnist_dirs() if all(find_idx(d, n) for n in FASHION_MNIST_FILES)),
                None)


def _fashion_mnist_arrays(directory: Path) -> dict[str, np.ndarray]:
    """The four verified arrays of ``directory`` (read-only; 55 MB, verified once per file version)."""
    paths = {}
    for name in FASHION_MNIST_FILES:
        path = find_idx(directory, name)
        if path is None:
            raise DataError(f"{directory} lacks {name}.gz")
        paths[name] = path
    versions = tuple((name, str(p), p.stat().st_mtime_ns, p.stat().st_size) for name, p in paths.items())
    return _verified_arrays(versions)


@lru_cache(maxsize=2)
def _verified_arrays(versions: tuple[tuple[str, str, int, int], ...]) -> dict[str, np.ndarray]:
    out = {}
    for name, path, _mtime, _size in versions:
        size, digest = FASHION_MNIST_FILES[name]
        out[name] = read_idx(Path(path), size=size, sha256=digest)
    return out


def load_fashion_mnist() -> Splits:
    """The built-in ``fashion-mnist`` task, split by :data:`FASHION_MNIST_SPLIT_SEED`.

    Raises:
        DataError: if the files are in none of the directories searched
            (naming the package and the variable that provide them), or one
            of them is not the pinned file.
    """
    found = fashion_mnist_dir()
    if found is None:
        where = " or ".join(str(d) for d in _fashion_mnist_dirs())
        raise DataError(
            f"Fashion-MNIST is not installed (looked in {where})",
            hint=f"apt-get install {FASHION_MNIST_PACKAGE}, or put its four IDX files "
            "in $WM_DATA_DIR/fashion-mnist/",
        )
    arrays = _fashion_mnist_arrays(found)
    images = {k: arrays[f"{k}-images-idx3-ubyte"] for k in ("train", "t10k")}
    labels = {k: arrays[f"{k}-labels-idx1-ubyte"] for k in ("train", "t10k")}
    for k in ("train", "t10k"):
        if images[k].ndim != 3 or images[k].shape[0] != labels[k].shape[0]:
            raise DataError(f"Fashion-MNIST {k} images and labels do not match")

    def part(split: str, idx: np.ndarray | slice) -> Dataset:
        x = (images[split][idx].astype(np.float32) / np.float32(255.0))[:, None, :, :]
        return _dataset(x, labels[split][idx].astype(np.int64), 10)

    perm = np.random.default_rng(FASHION_MNIST_SPLIT_SEED).permutation(labels["train"].shape[0])
    a = FASHION_MNIST_SIZES["owner_train"]
    b = a + FASHION_MNIST_SIZES["attacker_pool"]
    c = b + FASHION_MNIST_SIZES["reference"]
    return Splits("fashion-mnist", part("train", perm[:a]), part("t10k", slice(None)),
                  part("train", perm[a:b]), 10, reference=part("train", perm[b:c]), spec="fashion-mnist")


_RANGE_KEYS = ("low", "high", "mean", "std")


def _npz_range(x: np.ndarray, extra: dict[str, np.ndarray], source: str) -> InputRange:
    """The input range an ``.npz`` declares (``low``/``high`` or ``mean``/``std``) or shows."""
    try:
        if "low" in extra or "high" in extra:
            if not ("low" in extra and "high" in extra) or extra["low"].size != 1 or extra["high"].size != 1:
                raise DataError(f"{source}: low and high must both be given, one number each")
            declared = InputRange(float(extra["low"].reshape(())), float(extra["high"].reshape(())))
        elif "mean" in extra or "std" in extra:
            if not ("mean" in extra and "std" in extra):
                raise DataError(f"{source}: mean and std must both be given")
            channels = x.shape[1]
            mean, std = extra["mean"].reshape(-1), extra["std"].reshape(-1)
            if mean.size != std.size or mean.size not in (1, channels):
                raise DataError(f"{source}: mean and std need 1 or {channels} values each")
            declared = InputRange.from_mean_std([float(v) for v in mean], [float(v) for v in std])
        else:
            low, high = float(x.min()), float(x.max())
            # a constant data set shows no range; take one of width 1 around its value
            return InputRange(low, high) if low < high else InputRange(low - 0.5, high + 0.5)
    except InputError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{source}: {exc}") from exc
    # float32 rounding of (raw - mean) / std may overshoot the exact bound by an ulp or so
    slack = 1e-5 * max(1.0, abs(declared.low), abs(declared.high))
    if float(x.min()) < declared.low - slack or float(x.max()) > declared.high + slack:
        raise DataError(f"{source}: x has values in [{float(x.min()):g}, {float(x.max()):g}], outside "
                        f"its declared input range [{declared.low:g}, {declared.high:g}]")
    return declared


def load_npz(path: str | Path, *, seed: int = 0) -> Splits:
    """A validated ``.npz`` task (``x``, ``y``; see the module docstring), split 80/20 by ``seed``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(f"{p}: missing array(s) {', '.join(missing)}; needs x and y")
            x, y = z["x"], z["y"]
            extra = {k: np.asarray(z[k], dtype=np.float64) for k in _RANGE_KEYS if k in z.files}
    except (OSError, ValueError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{p} is not a readable .npz file ({exc.__class__.__name__})") from exc
    classes = validate_arrays(x, y, source=str(p))
    input_range = _npz_range(x, extra, str(p))
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = max(1, round(0.8 * len(y)))
    if cut >= len(y):
        cut = len(y) - 1
    train, test = perm[:cut], perm[cut:]
    return Splits(p.stem, _dataset(x[train], y[train], classes),
                  _dataset(x[test], y[test], classes), None, classes, input_range=input_range,
                  spec=str(p.resolve()))


def load_data(spec: str) -> Splits:
    """A built-in data set by name (:data:`BUILTIN`) or a path to an ``.npz`` file."""
    if spec == "digits":
        return load_digits()
    if spec == "fashion-mnist":
        return load_fashion_mnist()
    if spec.endswith(".npz") or Path(spec).exists():
        return load_npz(spec)
    raise DataError(f"unknown data set {spec!r}",
                    hint=f"use {' or '.join(repr(b) for b in BUILTIN)} or a path to an .npz file")


def decoy_data(spec: str | None, recorded: dict[str, str | None]) -> Splits:
    """The data whose test split gives ``wm verify`` its decoys: ``spec``, else the models' own.

    Decoys are ordinary inputs of the suspect's task, shuffled among the
    probes so a suspect cannot pick the probes out; they must be the model's
    own kind of input, never some other data set by accident.

    Args:
        spec: ``--decoys`` as given (a built-in name or an ``.npz`` path), or ``None``.
        recorded: each named model's training data as the registry records it
            (a built-in name, or the training file's name; ``None`` when unknown).

    Raises:
        DataError: no ``spec`` and the models' data is unknown, differs between
            them, or is a file that is not in the current directory.
    """
    if spec is not None:
        return load_data(spec)
    hint = "give --decoys: a built-in data set, or an .npz of inputs like the model's"
    if not recorded:
        raise DataError("no model is named to take decoys from", hint=hint)
    for model, name in sorted(recorded.items()):
        if name is None:
            raise DataError(f"the registry does not say which data model {model!r} was trained on",
                            hint=hint)
    names = sorted({n for n in recorded.values() if n is not None})
    if len(names) > 1:
        raise DataError(f"the named models were trained on different data ({', '.join(names)})", hint=hint)
    name = names[0]
    if name in BUILTIN:
        return load_data(name)
    if Path(name).is_file():
        return load_npz(name)
    model = sorted(recorded)[0]
    raise DataError(f"model {model!r} was trained on {name}, which is not in the current directory",
                    hint=f"give --decoys PATH/TO/{name}")
