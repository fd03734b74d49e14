"""Fixtures for the guard tests: a really trained owner model, a registry, real loopback servers.

The upstream is the reference ``wm serve`` application (:func:`verifier.server.build_app`)
of a small CNN trained on ``digits``; the guard runs for real in front of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import load_digits
from core.modelio import LoadedModel, load_model, save_model
from core.serving import BackgroundServer, running_server
from core.training import train_new
from guard.http import BackgroundHTTPServer
from guard.service import GuardOptions, GuardService
from registry.keys import OwnerKey, generate_owner_key
from registry.log import Registry
from registry.register import register_model
from verifier.server import ServedModel, build_app

PASSPHRASE = "guard-test-passphrase"
MODEL = "digits-owner"
UPSTREAM_NAME = "digits"


@pytest.fixture(scope="session")
def owner_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN really trained on digits (10 epochs), saved as .pt2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        splits = load_digits()
        model = train_new("cnn", splits.train.x, splits.train.y, num_classes=10, epochs=10, seed=0)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("owner") / "owner.pt2"
    return save_model(model, path, input_shape=(1, 8, 8), num_classes=10, arch="cnn", data="digits")


@dataclass
class Owner:
    """A wm home with an owner key and the owner model registered."""

    home: Path
    key: OwnerKey
    registry_url: str
    model_path: Path

    def model(self) -> LoadedModel:
        return load_model(self.model_path)


@pytest.fixture
def owner(tmp_path: Path, owner_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> Owner:
    """A fresh home and registry (SQLite) with the owner model registered as ``digits-owner``."""
    monkeypatch.setenv("WM_PASSPHRASE", PASSPHRASE)
    home = tmp_path / "home"
    key = generate_owner_key(home, "alice", PASSPHRASE)
    url = f"sqlite:///{home / 'registry.db'}"
    with Registry.open(url) as reg:
        register_model(reg, key, owner_model_path, MODEL)
    return Owner(home, key, url, owner_model_path)


def oip_body(x: np.ndarray) -> dict[str, object]:
    """An Open Inference Protocol V2 request for inputs ``x`` ``[N, 1, 8, 8]``."""
    return {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP32",
                        "data": np.asarray(x, dtype=np.float32).reshape(-1).tolist()}]}


@dataclass
class Guarded:
    """An upstream server and a guard in front of it, both on loopback."""

    upstream: BackgroundServer
    guard: BackgroundHTTPServer
    service: GuardService

    def infer_url(self, base: str) -> str:
        return f"{base}/v2/models/{UPSTREAM_NAME}/infer"


@contextmanager
def guarded(owner: Owner, *, rate: float, output: str = "labels",
            **options: object) -> Iterator[Guarded]:
    """Serve the owner model (``output``) and a guard at ``rate`` in front of it.

    On exit the guard is closed (every record flushed) before the servers stop.
    """
    with ExitStack() as stack:
        app = build_app({UPSTREAM_NAME: ServedModel(owner.model(), output)})  # type: ignore[arg-type]
        upstream = stack.enter_context(running_server(app))
        service = GuardService.open(
            owner.home, owner.registry_url, owner.key,
            GuardOptions(upstream=f"{upstream.url}/v2/models/{UPSTREAM_NAME}/infer", model=MODEL,
                         rate=rate, flush_interval=0.05, **options),  # type: ignore[arg-type]
        ).start()
        stack.callback(service.close)
        guard = stack.enter_context(service.serve_background())
        yield Guarded(upstream, guard, service)


def digits_queries(n: int | None = None, noisy_copies: int = 0, seed: int = 0) -> np.ndarray:
    """The attacker pool (first ``n``) and ``noisy_copies`` Gaussian-noised copies of it."""
    pool = load_digits().attacker_pool.x.numpy()[:n]
    rng = np.random.default_rng(seed)
    copies = [np.clip(pool + rng.normal(0, 0.05, pool.shape).astype(np.float32), 0, 1)
              for _ in range(noisy_copies)]
    return np.concatenate([pool, *copies]).astype(np.float32)
