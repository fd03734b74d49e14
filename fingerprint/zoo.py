"""The reference zoo: independent models of a data set, trained once, cached and logged.

A model-level null needs ``K`` reference models (``K = 99`` for a floor of
0.01), trained independently on data disjoint from the owner's and the
attacker's (DESIGN.md, "Statistics"). They depend on nothing of the owner:
only on the data, the architecture, the training recipe and the seed. The
zoo keys each one by exactly those (the data's digest, :class:`ZooRecipe`,
seed), keeps its weights in a cache directory and appends a line to
``zoo.jsonl`` there when it trains one (data digest, recipe, seed, weight
digest, CPU seconds), so every model of the same data reuses them: ``K``
references are paid once per data set, not per fingerprint.

**Ray.** ``models(..., ray_address=ADDRESS)`` trains each missing
reference as a Ray task (one CPU each) on the cluster at ``ADDRESS`` (or on
a Ray instance this process already started; ``local`` starts one here),
the extra ``wm[ray]``. Training is single-threaded and seeded, so a Ray task
returns the same weights, byte for byte, as the local process pool.

Seeds come in named *streams* (:func:`zoo_seeds`): the references that
choose a fingerprint's probes (``generation``) and those that calibrate its
null (``null``) are disjoint by construction, so the null's references took
no part in making the probes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.arch import build_model
from core.errors import InputError
from core.modelio import weights_digest
from core.training import train_classifier
from fingerprint.ensembles import data_digest

__all__ = ["ZOO_FORMAT", "ReferenceZoo", "ZooModel", "ZooRecipe", "zoo_seeds"]

ZOO_FORMAT = "wm.fingerprint.zoo/v1"
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ZooRecipe:
    """How a reference is trained: architecture, epochs, batch size, Adam learning rate."""

    arch: str
    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise InputError(f"bad reference recipe {self}")

    @property
    def name(self) -> str:
        """Canonical form, e.g. ``mlp:epochs=5:batch=128:lr=0.003``."""
        return f"{self.arch}:epochs={self.epochs}:batch={self.batch_size}:lr={self.lr:g}"


@dataclass(frozen=True, eq=False)
class ZooModel:
    """A trained reference (eval mode, frozen) and what identifies it."""

    recipe: ZooRecipe
    seed: int
    digest: str
    module: nn.Module
    cpu_s: float = 0.0  # CPU seconds its training took (0 when loaded from the cache)

    @property
    def arch(self) -> str:
        """Its architecture."""
        return self.recipe.arch


def zoo_seeds(stream: str, count: int, start: int = 0) -> list[int]:
    """``count`` seeds of a named stream (``null``, ``generation``, ``evaluation``...)."""
    out = []
    for i in range(start, start + count):
        h = hashlib.sha256(f"{ZOO_FORMAT}:{stream}:{i}".encode()).digest()
        out.append(int.from_bytes(h[:4], "big") & 0x7FFFFFFF)
    return out


def _train(recipe: ZooRecipe, seed: int, x: torch.Tensor, y: torch.Tensor,
           num_classes: int) -> tuple[dict[str, torch.Tensor], float]:
    """Train one reference on one torch thread; its state and the CPU seconds it took."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.process_time()
        torch.manual_seed(seed)
        model = build_model(recipe.arch, tuple(int(s) for s in x.shape[1:]), num_classes)
        train_classifier(model, x, y, epochs=recipe.epochs, seed=seed,
                         batch_size=recipe.batch_size, lr=recipe.lr)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return state, time.process_time() - t0
    finally:
        torch.set_num_threads(threads)


class ReferenceZoo:
    """The references of one data set ``(x, y)``, cached under ``cache_dir`` (``None``: no cache)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                 cache_dir: Path | None = None) -> None:
        if x.shape[0] != y.shape[0] or x.shape[0] < 2:
            raise InputError("the reference data needs inputs and labels, at least two")
        self.x, self.y, self.num_classes = x, y, num_classes
        self.cache_dir = cache_dir
        self.data = data_digest(x, y)

    def _path(self, recipe: ZooRecipe, seed: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = "\n".join([ZOO_FORMAT, self.data, recipe.name, str(seed), f"torch={torch.__version__}"])
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.pt"

    def _load(self, path: Path | None) -> dict[str, torch.Tensor] | None:
        if path is None or not path.is_file():
            return None
        try:
            state = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError):
            return None  # a damaged entry is retrained, not trusted
        return state if isinstance(state, dict) else None

    def _store(self, recipe: ZooRecipe, seed: int, state: dict[str, torch.Tensor],
               digest: str, cpu_s: float) -> None:
        path = self._path(recipe, seed)
        if path is None or self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        line = {"format": ZOO_FORMAT, "data": self.data, "recipe": recipe.name, "seed": seed,
                "weights": digest, "file": path.name, "cpu_s": round(cpu_s, 3),
                "torch": torch.__version__}
        with (self.cache_dir / "zoo.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")

    def models(self, recipe: ZooRecipe, seeds: Sequence[int], *, workers: int = 1,
               progress: ProgressFn | None = None, ray_address: str | None = None) -> list[ZooModel]:
        """The references of ``recipe`` with ``seeds``, in order: cached ones loaded, the rest trained.

        ``workers`` local processes train them, or Ray tasks on ``ray_address`` (module docstring).
        """
        if workers < 1:
            raise InputError(f"workers must be at least 1, got {workers}")
        states: list[dict[str, torch.Tensor] | None] = [self._load(self._path(recipe, s))
                                                        for s in seeds]
        cpu = [0.0] * len(seeds)
        pending = [i for i, st in enumerate(states) if st is None]
        done, total = len(seeds) - len(pending), len(seeds)
        if progress is not None:
            progress(done, total)

        def finish(i: int, state: dict[str, torch.Tensor], cpu_s: float) -> None:
            nonlocal done
            states[i], cpu[i] = state, cpu_s
            self._store(recipe, seeds[i], state, weights_digest(state), cpu_s)
            done += 1
            if progress is not None:
                progress(done, total)

        if ray_address is not None and pending:
            for i, (trained, took) in _ray_train(ray_address, workers, recipe,
                                                 [seeds[i] for i in pending], self.x, self.y,
                                                 self.num_classes, pending):
                finish(i, trained, took)
        elif workers == 1 or len(pending) <= 1:
            for i in pending:
                finish(i, *_train(recipe, seeds[i], self.x, self.y, self.num_classes))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx) as pool:
                futures: dict[Future[tuple[dict[str, torch.Tensor], float]], int] = {
                    pool.submit(_train, recipe, seeds[i], self.x, self.y, self.num_classes): i
                    for i in pending
                }
                for fut in as_completed(futures):
                    finish(futures[fut], *fut.result())
        shape = tuple(int(s) for s in self.x.shape[1:])
        out = []
        for seed, state, cpu_s in zip(seeds, states, cpu, strict=True):
            assert state is not None
            module = build_model(recipe.arch, shape, self.num_classes)
            module.load_state_dict(state)
            for p in module.parameters():
                p.requires_grad_(False)
            out.append(ZooModel(recipe, seed, weights_digest(state), module.eval(), cpu_s))
        return out


def _ray_train(address: str, workers: int, recipe: ZooRecipe, seeds: Sequence[int], x: torch.Tensor,
               y: torch.Tensor, num_classes: int, keys: Sequence[int]
               ) -> Iterator[tuple[int, tuple[dict[str, torch.Tensor], float]]]:
    """Train each seed as a Ray task; yields ``(key, (state, cpu_s))`` as tasks finish."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray", hint="pip install 'wm[ray]'") from None
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    task = ray.remote(num_cpus=1)(_train)
    xr, yr = ray.put(x), ray.put(y)
    futures = {task.remote(recipe, s, xr, yr, num_classes): k for s, k in zip(seeds, keys, strict=True)}
    left = list(futures)
    while left:
        ready, left = ray.wait(left, num_returns=1)
        for ref in ready:
            yield futures[ref], ray.get(ref)
