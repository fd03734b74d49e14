"""Surrogate and reference ensembles for conferrable adversarial examples.

Lukas, Zhang, Kerschbaum, "Deep Neural Network Fingerprinting by Conferrable
Adversarial Examples" (ICLR 2021), Section 4: *surrogates* are trained on the
owner model's answers (hard labels, or probabilities) and stand in for stolen
copies; *references* are trained on ground truth, independently of the owner,
and stand in for innocent models. Both span several architectures and seeds;
here they always include the owner's own architecture, the hardest null
(DESIGN.md, "Statistics").

Members are trained in parallel processes (one torch thread each), reported
through a ``progress(done, total)`` callback, and cached as state dicts under
a cache directory, keyed by everything that shapes them (the owner's weights
digest for surrogates, the data digest, architecture, seed, targets, epochs),
so a second run with the same owner and data trains nothing.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from core.arch import ARCHITECTURES, build_model, family_of
from core.errors import InputError
from core.training import train_classifier

__all__ = [
    "Member",
    "MemberSpec",
    "Role",
    "Targets",
    "data_digest",
    "default_archs",
    "owner_outputs",
    "plan_members",
    "train_members",
]

Role = Literal["surrogate", "reference"]
Targets = Literal["labels", "probabilities", "truth"]
Split = Literal["generation", "calibration", "calibration-other", "evaluation"]
ProgressFn = Callable[[int, int], None]
CACHE_FORMAT = "wm.fingerprint.member/v1"


@dataclass(frozen=True)
class MemberSpec:
    """Everything that shapes one ensemble member (and its cache key).

    Attributes:
        role: ``surrogate`` (trained on the owner's answers) or ``reference``
            (trained on ground truth).
        arch: architecture name (:data:`core.arch.ARCHITECTURES`).
        seed: seeds initialisation, shuffling and dropout.
        targets: ``labels`` or ``probabilities`` of the owner for surrogates,
            ``truth`` for references.
        epochs: training epochs.
        subset: share of the training (or query) set the member sees, a
            random subset drawn from ``seed`` (1 = all of it).
    """

    role: Role
    arch: str
    seed: int
    targets: Targets
    epochs: int
    subset: float = 1.0

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.arch!r}")
        if (self.role == "reference") != (self.targets == "truth"):
            raise InputError(f"a {self.role} cannot be trained on {self.targets}")
        if self.epochs < 1:
            raise InputError(f"epochs must be at least 1, got {self.epochs}")
        if not 0.0 < self.subset <= 1.0:
            raise InputError(f"subset must be in (0, 1], got {self.subset}")

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``surrogate:cnn:labels:seed=123:epochs=30``."""
        name = f"{self.role}:{self.arch}:{self.targets}:seed={self.seed}:epochs={self.epochs}"
        return name if self.subset == 1.0 else f"{name}:subset={self.subset:g}"

    @property
    def family(self) -> str:
        """Architecture family (``cnn`` or ``mlp``)."""
        return family_of(self.arch)


@dataclass(frozen=True, eq=False)
class Member:
    """A trained ensemble member (in eval mode)."""

    spec: MemberSpec
    module: nn.Module


def _derive_seed(seed: int, *parts: object) -> int:
    h = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def default_archs(owner_arch: str) -> tuple[str, ...]:
    """The owner's architecture and the base architecture of the other family."""
    fam = family_of(owner_arch)
    other = "mlp" if fam == "cnn" else "cnn"
    return (owner_arch, other)


def plan_members(
    *,
    split: Split,
    seed: int,
    archs: Sequence[str],
    surrogates_per_arch: int,
    references_per_arch: int,
    epochs: int = 30,
    subset: float = 1.0,
) -> list[MemberSpec]:
    """The members of one ensemble split, seeds derived from ``seed`` and ``split``.

    Surrogates alternate between the owner's hard labels and probabilities.
    The ``generation`` and ``calibration`` splits get disjoint seed streams, so
    the calibration models take no part in the generation. ``subset`` < 1
    trains each member on its own random share of the data (see
    :class:`MemberSpec`).
    """
    if surrogates_per_arch < 0 or references_per_arch < 0:
        raise InputError("member counts must not be negative")
    if not archs:
        raise InputError("an ensemble needs at least one architecture")
    specs: list[MemberSpec] = []
    for arch in archs:
        for i in range(surrogates_per_arch):
            targets: Targets = "labels" if i % 2 == 0 else "probabilities"
            specs.append(MemberSpec("surrogate", arch, _derive_seed(seed, split, "s", arch, i),
                                    targets, epochs, subset))
        for i in range(references_per_arch):
            specs.append(MemberSpec("reference", arch, _derive_seed(seed, split, "r", arch, i),
                                    "truth", epochs, subset))
    return specs


def data_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over tensors' dtype, shape and bytes (a cache key), hex."""
    h = hashlib.sha256(b"wm.data/v1\x00")
    for t in tensors:
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}:{list(c.shape)}".encode() + b"\x00")
        h.update(c.numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def owner_outputs(owner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[
    torch.Tensor, torch.Tensor]:
    """The owner's hard labels (int64 ``[N]``) and probabilities (float32 ``[N, C]``) on ``x``."""
    logits = torch.cat([owner(x[i : i + 1024]) for i in range(0, x.shape[0], 1024)])
    return logits.argmax(dim=1), torch.softmax(logits.float(), dim=1)


@contextmanager
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _train_one(spec: MemberSpec, x: torch.Tensor, y: torch.Tensor,
               num_classes: int) -> dict[str, torch.Tensor]:
    """Train one member on one torch thread (same bytes in a worker or in-process)."""
    if spec.subset < 1.0:
        g = torch.Generator().manual_seed(spec.seed ^ 0x5EED)
        keep = torch.randperm(x.shape[0], generator=g)[: max(2, round(spec.subset * x.shape[0]))]
        x, y = x[keep], y[keep]
    with _one_thread():
        torch.manual_seed(spec.seed)
        model = build_model(spec.arch, tuple(int(s) for s in x.shape[1:]), num_classes)
        train_classifier(model, x, y, epochs=spec.epochs, seed=spec.seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _cache_key(spec: MemberSpec, owner_digest: str, train_digest: str, query_digest: str) -> str:
    parts = [CACHE_FORMAT, spec.name, f"torch={torch.__version__}"]
    if spec.role == "surrogate":
        parts += [f"owner={owner_digest}", f"query={query_digest}"]
    else:
        parts += [f"train={train_digest}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _build(spec: MemberSpec, state: dict[str, torch.Tensor], input_shape: tuple[int, ...],
           num_classes: int) -> Member:
    module = build_model(spec.arch, input_shape, num_classes)
    module.load_state_dict(state)
    for p in module.parameters():
        p.requires_grad_(False)
    return Member(spec, module.eval())


def train_members(
    specs: Sequence[MemberSpec],
    *,
    owner: Callable[[torch.Tensor], torch.Tensor],
    owner_digest: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    query_x: torch.Tensor | None = None,
    num_classes: int,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: ProgressFn | None = None,
) -> list[Member]:
    """Train (or load from cache) every member of ``specs``, in order.

    Args:
        specs: the members, e.g. from :func:`plan_members`.
        owner: the owner's model (eval mode); its answers on ``query_x`` train
            the surrogates.
        owner_digest: :func:`core.modelio.weights_digest` of the owner (cache key).
        train_x: the owner's training inputs; references train on them with
            ``train_y`` (the hardest null: the same data as the owner).
        train_y: ground-truth labels of ``train_x``.
        query_x: what surrogates query the owner with (default ``train_x``).
        num_classes: class count.
        cache_dir: where to keep trained members; ``None`` disables caching.
        workers: parallel training processes (1 trains in this process).
        progress: called with ``(done, total)`` as members finish (cached ones
            count at once).

    Returns:
        The members in the order of ``specs``, each in eval mode with frozen
        parameters.
    """
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    qx = train_x if query_x is None else query_x
    labels, probs = owner_outputs(owner, qx)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        "labels": (qx, labels), "probabilities": (qx, probs), "truth": (train_x, train_y),
    }
    tdig, qdig = data_digest(train_x, train_y), data_digest(qx)
    input_shape = tuple(int(s) for s in train_x.shape[1:])
    states: list[dict[str, torch.Tensor] | None] = [None] * len(specs)
    paths: list[Path | None] = [None] * len(specs)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for i, spec in enumerate(specs):
            paths[i] = cache_dir / f"{_cache_key(spec, owner_digest, tdig, qdig)}.pt"
            states[i] = _load_cached(paths[i])  # type: ignore[arg-type]
    done = sum(s is not None for s in states)
    total = len(specs)
    if progress is not None:
        progress(done, total)
    pending = [i for i, s in enumerate(states) if s is None]

    def finish(i: int, state: dict[str, torch.Tensor]) -> None:
        nonlocal done
        states[i] = state
        p = paths[i]
        if p is not None:
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            torch.save(state, tmp)
            tmp.replace(p)
        done += 1
        if progress is not None:
            progress(done, total)

    if workers == 1 or len(pending) <= 1:
        for i in pending:
            x, y = targets[specs[i].targets]
            finish(i, _train_one(specs[i], x, y, num_classes))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx) as pool:
            futures: dict[Future[dict[str, torch.Tensor]], int] = {}
            for i in pending:
                x, y = targets[specs[i].targets]
                futures[pool.submit(_train_one, specs[i], x, y, num_classes)] = i
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                finish(futures[fut], fut.result())
    return [_build(spec, st, input_shape, num_classes)  # type: ignore[arg-type]
            for spec, st in zip(specs, states, strict=True)]


def _load_cached(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError):
        return None  # a damaged cache entry is retrained, not trusted
    return state if isinstance(state, dict) else None
