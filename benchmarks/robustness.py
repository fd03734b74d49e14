"""Robustness of wm's ownership evidence to removal attacks, in the spirit of the SoK.

Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image Classification Deep
Neural Network Watermarking?" (IEEE S&P 2022) found that every watermark they
tested was removed by some attack costing less than a point of accuracy. Here
one watermarked owner model is attacked with the whole catalogue of
:mod:`attacks` (fine-tuning, retraining, pruning, fine-pruning, quantisation,
noise, distillation, extraction through the API with and without ``wm
guard``, cross-architecture retraining), and for every attacked model the
benchmark asks whether the owner's evidence establishes ownership at
``alpha = 1e-6``. Independent models are controls that must never be owned.

It measures the product, not a copy of it:

- the owner is trained with ``wm train``'s default watermark
  (:data:`watermark.DEFAULT_WATERMARK`, its own hook, as many probes per
  batch as ``wm train`` mixes in), in the data's input range, with the data's
  recipe (:func:`core.training.default_recipe`);
- the fingerprint is :func:`fingerprint.build_fingerprint` with ``wm
  fingerprint``'s defaults (``--no-fingerprint`` leaves it out, and the
  table says so);
- the guard is ``wm guard`` itself (:class:`guard.service.GuardService`) in
  front of ``wm serve``'s app (:func:`verifier.server.build_app`), on
  loopback, with a registry: extraction attackers query it over HTTP, each
  with its own client header; afterwards its marked queries are committed
  as ``wm guard commit`` does (:func:`guard.probes.commit_guard_probes`),
  one probe set per deployment (a labels API and a probabilities API);
- every suspect is judged by :mod:`verifier`: the probes of every set are
  ordered by :class:`verifier.session.QueryPlan` and the answers turned into
  a verdict by :func:`verifier.stats.compute_statistics` (anytime-valid
  e-processes, averaged over a model's tests), exactly as ``wm verify``
  decides, with the whole of every set as the budget.

**The budget** (the SoK's criterion): an attack whose clean test accuracy is
more than 5 points below the owner's destroyed the model; it is marked "out
of budget", not counted as an escape.

Run: ``python -m benchmarks.robustness [--data digits|fashion-mnist]
[--no-fingerprint] [--cache DIR]``; writes
``benchmarks/results/robustness-DATA.{csv,md,png}``. Model training is
seeded; the guard draws a fresh epoch key per run, as ``wm guard`` does, so
its rows vary a little between runs. ``--quick`` is a small configuration for
development (not the published table). The attackers' effort (epochs, query
budgets) is the data's :data:`SETTINGS` unless ``--tune-epochs``,
``--distill-epochs``, ``--budgets``, ``--min-extract-epochs`` or
``--control-epochs`` say otherwise; the table states the command that made it.

**Cache.** With ``--cache DIR`` every trained model (the owner, each attacked
model, each control, each surrogate) is kept in ``DIR/models`` under a key
over everything that decides it: the data, the recipe, the attack's
canonical name and seed, the owner's weights digest (for what is derived
from the owner), the extraction's queries and answers (so a guarded
extraction, whose answers change with the guard's fresh key, is retrained),
and the source of the code that trains and attacks. A rerun with the same
settings trains nothing again; changing any of these retrains what it
touches. Fingerprint ensemble members are cached in ``DIR`` as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import torch
from torch import nn

import attacks
import core.arch
import core.training
import watermark
from attacks import (
    AnswerFn,
    Distill,
    Extract,
    FinePrune,
    FineTune,
    Prune,
    Quantize,
    Retrain,
    WeightAttack,
    WeightNoise,
    query_inputs,
    query_model,
)
from benchmarks.robustness_report import plot, render_markdown, write_csv
from core.arch import build_model, resolve_arch
from core.data import BUILTIN, Splits, load_data
from core.modelio import load_model, save_model, weights_digest
from core.probeset import ProbeSet
from core.serving import running_server
from core.training import Recipe, accuracy, default_recipe, predict, train_classifier, train_new
from fingerprint import ConferrableExamples, EnsembleConfig, build_fingerprint
from guard.probes import commit_guard_probes
from guard.service import GuardOptions, GuardService, open_vault
from registry.keys import generate_owner_key
from registry.log import Registry
from registry.register import register_model
from verifier.server import ServedModel, build_app
from verifier.session import DECOY, ProbeSource, QueryPlan
from verifier.stats import Statistics, TestInput, compute_statistics
from watermark import DEFAULT_WATERMARK, WatermarkKey, parse_scheme
from watermark.schemes.base import mixing_for_run

ALPHA = 1e-6
BUDGET_PP = 5.0
GUARD_RATE = 0.01  # `wm guard --rate` default
OWNER_SEED = 0
QUERY_SEED = 7
WATERMARK_KEY = WatermarkKey(hashlib.sha256(b"wm.benchmarks.robustness/watermark-key").digest())
OTHER_KEY = WatermarkKey(hashlib.sha256(b"wm.benchmarks.robustness/another-owner").digest())
FINGERPRINT_SALT = hashlib.sha256(b"wm.benchmarks.robustness/fingerprint-salts").digest()
PLAN_SEED = hashlib.sha256(b"wm.benchmarks.robustness/plan").digest()[:16]
PASSPHRASE = "benchmark-only passphrase"
OUTPUTS: tuple[Literal["labels", "probabilities"], ...] = ("labels", "probabilities")
Group = Literal["none", "weight theft", "extraction", "control"]


@dataclass(frozen=True)
class Setting:
    """How hard the attacks work on one data set: epochs scale with the attacker's data."""

    tune_epochs: int  # fine-tuning, retraining, fine-pruning
    distill_epochs: int
    budgets: tuple[int, ...]  # extraction queries
    min_extract_epochs: int
    control_epochs: int


SETTINGS = {
    "digits": Setting(tune_epochs=20, distill_epochs=30, budgets=(100, 539, 2000),
                      min_extract_epochs=30, control_epochs=30),
    "fashion-mnist": Setting(tune_epochs=5, distill_epochs=10, budgets=(1000, 5000, 20000),
                             min_extract_epochs=10, control_epochs=10),
}


def code_digest() -> str:
    """SHA-256 over the source of the modules that decide how a model is trained, attacked or marked."""
    h = hashlib.sha256(b"wm.benchmarks.robustness/code")
    files: list[Path] = [Path(core.training.__file__), Path(core.arch.__file__)]
    for pkg in (attacks, watermark):
        files += sorted(Path(str(pkg.__file__)).parent.glob("*.py"))
    for f in files:
        h.update(f.name.encode() + b"\x00" + f.read_bytes())
    return h.hexdigest()


class ModelCache:
    """Trained models on disk, keyed by everything that decides them (``--cache DIR``); none without DIR."""

    def __init__(self, root: Path | None, data: str) -> None:
        self.root = root / "models" if root is not None else None
        self.prefix = f"{data}|{code_digest()}|{torch.__version__}"
        self.hits = 0
        self.misses = 0

    def get(self, key: str, build: Callable[[], nn.Module]) -> nn.Module:
        """The cached model for ``key``, else ``build()`` (then stored)."""
        if self.root is None:
            return build()
        path = self.root / (hashlib.sha256(f"{self.prefix}|{key}".encode()).hexdigest() + ".pt")
        if path.exists():
            self.hits += 1
            model: nn.Module = torch.load(path, weights_only=False)  # our own cache, written below
            return model.eval()
        self.misses += 1
        model = build()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model, tmp)
        tmp.replace(path)
        return model


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over tensors' shapes, dtypes and bytes (a cache key for data a model was trained on)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{list(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Row:
    """One model of the table, its accuracy and the verifier's statistics on it."""

    name: str
    group: Group
    spec: str
    accuracy: float
    stats: Statistics
    na: dict[str, str] = field(default_factory=dict)

    @property
    def owned(self) -> bool:
        return self.stats.verdict == "owned"

    def drop_pp(self, owner_acc: float) -> float:
        return 100.0 * (owner_acc - self.accuracy)

    def in_budget(self, owner_acc: float) -> bool:
        return self.drop_pp(owner_acc) <= BUDGET_PP + 1e-9  # a drop of exactly 5 points is within

    def outcome(self, owner_acc: float) -> str:
        if self.group == "control":
            return "FALSE CLAIM" if self.owned else "not owned (correct)"
        if self.group != "none" and not self.in_budget(owner_acc):
            return "out of budget"
        return "caught" if self.owned else "ESCAPES"


@dataclass
class Evidence:
    """The owner's committed probe sets as ``(kind, set)``, and why any kind is missing."""

    sets: list[tuple[str, ProbeSet]]
    na: dict[str, str] = field(default_factory=dict)

    def judge(self, model: nn.Module) -> Statistics:
        """What ``wm verify`` concludes from ``model``'s answers to every probe of every set."""
        sources = [ProbeSource("owner", ps, tuple(range(len(ps)))) for _, ps in self.sets]
        plan = QueryPlan.build(sources, decoy_count=1, budget=sum(len(ps) for _, ps in self.sets),
                               batch_size=64, decoy_ratio=0.0, seed=PLAN_SEED)
        predicted = [predict(model, ps.inputs, rank=ps.rank) for _, ps in self.sets]
        bits: list[list[bool]] = [[] for _ in self.sets]
        positions: list[list[int]] = [[] for _ in self.sets]
        indices: list[list[int]] = [[] for _ in self.sets]
        order = (item for batch in plan.batches for item in batch if item.source != DECOY)
        for answered, item in enumerate(order, start=1):
            expected = int(self.sets[item.source][1].expected[item.index])
            bits[item.source].append(int(predicted[item.source][item.index]) == expected)
            positions[item.source].append(answered)
            indices[item.source].append(int(item.index))
        # The probe indices as `wm verify`'s transcript gives them: without them a conformal
        # (fingerprint) null claims nothing and every fingerprint p would read 1.
        tests = [TestInput("owner", kind, ps.null, tuple(b), tuple(p), indices=tuple(ix))
                 for (kind, ps), b, p, ix in zip(self.sets, bits, positions, indices, strict=True)]
        return compute_statistics(tests, alpha=ALPHA, mode="sequential")


class GuardedOwner:
    """The owner's model behind ``wm serve``'s app and ``wm guard``, on loopback, with a registry.

    Two deployments, one answering labels and one probabilities, each a
    registered model with its own guard. :meth:`commit` stops both (the
    guards flush every record) and commits their marked queries as ``wm guard
    commit`` does.
    """

    def __init__(self, work: Path, owner_path: Path, rate: float) -> None:
        self.home = work / "home"
        self.url = f"sqlite:///{self.home / 'registry.db'}"
        self.owner_path = owner_path
        self.rate = rate
        self.urls: dict[str, str] = {}
        self._stack = ExitStack()

    def __enter__(self) -> GuardedOwner:
        self.key = generate_owner_key(self.home, "benchmark-owner", PASSPHRASE, kdf_rounds=1)
        with Registry.open(self.url) as reg:
            for output in OUTPUTS:
                register_model(reg, self.key, self.owner_path, f"owner-{output}")
        for output in OUTPUTS:
            app = build_app({"owner": ServedModel(load_model(self.owner_path), output)})
            upstream = self._stack.enter_context(running_server(app))
            service = GuardService.open(self.home, self.url, self.key, GuardOptions(
                upstream=f"{upstream.url}/v2/models/owner/infer", model=f"owner-{output}",
                rate=self.rate, flush_interval=0.2)).start()
            self._stack.callback(service.close)
            guard = self._stack.enter_context(service.serve_background())
            self.urls[output] = f"{guard.url}/v2/models/owner/infer"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def commit(self) -> dict[str, ProbeSet]:
        """Stop the deployments and commit each one's marked queries; the guard probe set per output."""
        self._stack.close()
        out: dict[str, ProbeSet] = {}
        with Registry.open(self.url, create=False) as reg:
            for output in OUTPUTS:
                name = f"owner-{output}"
                result = commit_guard_probes(reg, self.key, open_vault(self.home, self.key, name), name)
                if result.probeset_ids:  # one epoch, so one set
                    out[output] = reg.load_probeset(result.probeset_ids[0], self.key)
        return out


def http_answer(url: str, client: str, output: str, num_classes: int) -> tuple[AnswerFn, httpx.Client]:
    """The attacker's own client of an Open Inference Protocol API: labels or probability vectors."""
    http = httpx.Client(timeout=300.0, headers={"x-client-id": client})

    def answer(x: torch.Tensor) -> torch.Tensor:
        arr = x.numpy().astype(np.float32)
        r = http.post(url, json={"inputs": [{"name": "input-0", "shape": list(arr.shape),
                                             "datatype": "FP32", "data": arr.reshape(-1).tolist()}]})
        r.raise_for_status()
        out = r.json()["outputs"][0]
        values = torch.tensor(out["data"]).reshape(out["shape"])
        return values.reshape(-1).long() if output == "labels" else values.reshape(-1, num_classes).float()

    return answer, http


# ---------------------------------------------------------------- the catalogue


def weight_attacks(s: Setting, quick: bool) -> list[tuple[str, WeightAttack, int]]:
    """(display name, attack, seed) for every weight-theft attack."""
    e, d = s.tune_epochs, s.distill_epochs
    rows: list[tuple[str, WeightAttack, int]] = [
        ("FTLL", FineTune("last", epochs=e, lr=1e-3), 11),
        ("FTAL", FineTune("all", epochs=e, lr=1e-3), 12),
        ("FTAL, high lr", FineTune("all", epochs=math.ceil(1.5 * e), lr=1e-2), 13),
        ("RTLL", Retrain("last", epochs=e, lr=1e-3), 14),
        ("RTAL", Retrain("all", epochs=math.ceil(1.5 * e), lr=3e-3), 15),
        ("pruning 30%", Prune(0.3), 0),
        ("pruning 50%", Prune(0.5), 0),
        ("pruning 70%", Prune(0.7), 0),
        ("pruning 90%", Prune(0.9), 0),
        ("fine-pruning 50%", FinePrune(0.5, epochs=e, lr=3e-3), 16),
        ("fine-pruning 90%", FinePrune(0.9, epochs=e, lr=3e-3), 17),
        ("int8 quantisation", Quantize(8), 0),
        ("weight noise 0.5σ", WeightNoise(0.5), 18),
        ("weight noise 1σ", WeightNoise(1.0), 19),
        ("distillation (same arch)", Distill(None, temperature=4.0, epochs=d), 20),
        ("distillation (mlp)", Distill("mlp", temperature=4.0, epochs=d), 21),
    ]
    if quick:
        keep = {"FTAL, high lr", "RTAL", "pruning 50%", "int8 quantisation", "distillation (same arch)"}
        rows = [r for r in rows if r[0] in keep]
    return rows


def extract_epochs(s: Setting, budget: int, min_steps: int = 400) -> int:
    """Enough epochs that a small query set still gets ``min_steps`` optimiser steps."""
    return max(s.min_extract_epochs, math.ceil(min_steps / math.ceil(budget / 64)))


def controls(splits: Splits, recipe: Recipe, s: Setting, quick: bool, cache: ModelCache
             ) -> list[tuple[str, str, Callable[[], nn.Module]]]:
    """Independent models (name, spec, build): other seeds, architectures, data, and another watermark."""
    train, pool = splits.train, splits.attacker_pool
    assert pool is not None
    e, k = s.control_epochs, splits.num_classes
    other = "cnn-wide" if recipe.arch == "cnn" else "cnn"  # another CNN than the owner's

    def fit(arch: str, data: str, seed: int) -> Callable[[], nn.Module]:
        d = {"owner-train": train, "attacker pool": pool, "reference": splits.reference}[data]
        assert d is not None

        def build() -> nn.Module:
            return train_new(arch, d.x, d.y, num_classes=k, epochs=e, seed=seed,
                             batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule)

        return lambda: cache.get(f"control|{arch}|{data}|{seed}|{e}|{recipe}", build)

    rows = [(f"independent {recipe.arch}, owner-train, seed 1001", recipe.arch, "owner-train", 1001),
            (f"independent {recipe.arch}, owner-train, seed 1002", recipe.arch, "owner-train", 1002),
            (f"independent {other}, owner-train", other, "owner-train", 1003),
            ("independent mlp, owner-train", "mlp", "owner-train", 1004),
            (f"independent {recipe.arch}, attacker pool", recipe.arch, "attacker pool", 1006),
            ("independent mlp, attacker pool", "mlp", "attacker pool", 1007)]
    if splits.reference is not None:
        rows.append((f"independent {recipe.arch}, reference split", recipe.arch, "reference", 1009))
    out = [(name, f"train:{arch}:{data}:seed={seed}", fit(arch, data, seed))
           for name, arch, data, seed in rows]
    out.append((f"independent {recipe.arch}, own watermark (other key)",
                f"train:{recipe.arch}:owner-train:seed=1008:wm=other",
                lambda: train_owner(splits, dataclasses.replace(recipe, epochs=e), OTHER_KEY, 1008, cache)))
    return out[:1] + out[3:4] if quick else out


def train_owner(splits: Splits, recipe: Recipe, key: WatermarkKey, seed: int,
                cache: ModelCache | None = None) -> nn.Module:
    """A model of the data's recipe, marked as ``wm train`` marks it by default."""
    per_batch, in_place = owner_mixing(splits, recipe)
    if cache is not None and cache.root is not None:
        return cache.get(f"owner|{recipe}|{DEFAULT_WATERMARK}|{per_batch}|{in_place}|"
                         f"{hashlib.sha256(key.secret).hexdigest()}|{seed}",
                         lambda: train_owner(splits, recipe, key, seed))
    probes = watermark_probes(splits, key)
    torch.manual_seed(seed)
    model = build_model(recipe.arch, splits.input_shape, splits.num_classes)
    hook = parse_scheme(DEFAULT_WATERMARK).hook(probes, key=key, model=model, data=splits.train,
                                                per_batch=per_batch)
    hook.keep_batch_size = in_place
    return train_classifier(model, splits.train.x, splits.train.y, epochs=recipe.epochs, seed=seed,
                            batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule, hook=hook)


def owner_mixing(splits: Splits, recipe: Recipe) -> tuple[int, bool]:
    """Probes per batch, and whether they take the place of as many examples, as ``wm train``
    mixes its default watermark into a run of ``recipe``."""
    scheme = parse_scheme(DEFAULT_WATERMARK)
    return mixing_for_run(scheme, scheme.n, train_size=len(splits.train), epochs=recipe.epochs,
                          batch_size=recipe.batch_size)


def watermark_probes(splits: Splits, key: WatermarkKey) -> ProbeSet:
    """The default watermark (``wm train``'s, :data:`watermark.DEFAULT_WATERMARK`) in the data's range."""
    return parse_scheme(DEFAULT_WATERMARK).probes(key, num_classes=splits.num_classes,
                                                  input_shape=splits.input_shape, data=splits.train,
                                                  input_range=splits.input_range)


def fingerprint_set(owner: nn.Module, splits: Splits, arch: str, *, quick: bool, workers: int,
                    cache: Path | None) -> ProbeSet:
    """The owner's CAE fingerprint, built as ``wm fingerprint`` builds it."""
    ensembles = EnsembleConfig(surrogates=2, references=2, epochs=10) if quick else EnsembleConfig()
    scheme = ConferrableExamples(n=50, steps=30) if quick else ConferrableExamples()
    fp = build_fingerprint(
        owner, owner_arch=arch, owner_digest=weights_digest(owner.state_dict()),
        train_x=splits.train.x, train_y=splits.train.y,
        seeds_x=torch.cat([splits.train.x, splits.test.x]),
        seeds_y=torch.cat([splits.train.y, splits.test.y]),
        num_classes=splits.num_classes, scheme=scheme, ensembles=ensembles, seed=0,
        salt_key=FINGERPRINT_SALT, cache_dir=cache, workers=workers,
        progress=lambda stage, done, total: print(f"  fingerprint: {stage} {done}/{total}", flush=True),
    )
    return fp.probes


# ---------------------------------------------------------------- the run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=BUILTIN)
    ap.add_argument("--arch", default=None,
                    help="the owner's architecture, a name or MODULE:FUNCTION (default: the data's recipe)")
    ap.add_argument("--quick", action="store_true", help="small configuration for development")
    ap.add_argument("--no-fingerprint", dest="fingerprint", action="store_false",
                    help="leave the CAE fingerprint out (it trains dozens of models)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="default: benchmarks/results (quick: /tmp/wm-robustness-quick)")
    ap.add_argument("--guard-rate", type=float, default=GUARD_RATE,
                    help="fraction R of distinct inputs whose answers the guard marks (wm guard's default)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes for the fingerprint ensembles (results do not depend on it)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="cache for trained models (DIR/models) and fingerprint ensemble members")
    ap.add_argument("--tune-epochs", type=int, default=None,
                    help="fine-tuning, retraining and fine-pruning epochs (default: the data's setting)")
    ap.add_argument("--distill-epochs", type=int, default=None, help="default: the data's setting")
    ap.add_argument("--budgets", default=None,
                    help="extraction query budgets, comma-separated (default: the data's setting)")
    ap.add_argument("--min-extract-epochs", type=int, default=None, help="default: the data's setting")
    ap.add_argument("--control-epochs", type=int, default=None,
                    help="epochs of the independent controls (default: the data's setting)")
    args = ap.parse_args()
    overrides = {name: getattr(args, name) for name in
                 ("tune_epochs", "distill_epochs", "min_extract_epochs", "control_epochs")
                 if getattr(args, name) is not None}
    if any(v < 1 for v in overrides.values()):
        ap.error("epochs must be at least 1")
    if args.budgets is not None:
        try:
            budgets = tuple(int(b) for b in args.budgets.split(","))
        except ValueError:
            ap.error(f"--budgets takes whole numbers separated by commas, got {args.budgets!r}")
        if not budgets or min(budgets) < 1:
            ap.error("every query budget must be at least 1")
        overrides["budgets"] = budgets
    out_dir = args.out_dir or Path("/tmp/wm-robustness-quick" if args.quick else "benchmarks/results")
    torch.set_num_threads(1)
    started, load_before = time.perf_counter(), os.getloadavg()[0]

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    splits = load_data(args.data)
    recipe, setting = default_recipe(splits), dataclasses.replace(SETTINGS[args.data], **overrides)
    cache = ModelCache(args.cache, splits.name)
    if args.arch is not None:
        recipe = dataclasses.replace(recipe, arch=resolve_arch(args.arch).name)
    pool = splits.attacker_pool
    assert pool is not None
    k = splits.num_classes
    owner = train_owner(splits, recipe, WATERMARK_KEY, OWNER_SEED, cache)
    owner_digest = weights_digest(owner.state_dict())
    marks = watermark_probes(splits, WATERMARK_KEY)
    owner_acc = accuracy(owner, splits.test.x, splits.test.y)
    say(f"owner {recipe.arch}: clean accuracy {owner_acc:.4f}, watermark "
        f"{accuracy(owner, marks.inputs, marks.expected):.2f}")
    evidence = Evidence([("watermark", marks)])
    if args.fingerprint:
        evidence.sets.append(("fingerprint", fingerprint_set(owner, splits, recipe.arch, quick=args.quick,
                                                             workers=args.workers, cache=args.cache)))
        say(f"fingerprint: {len(evidence.sets[-1][1])} probes, null {evidence.sets[-1][1].null}")
    else:
        evidence.na["fingerprint"] = "not built in this run (--no-fingerprint)"

    models: list[tuple[str, Group, str, nn.Module]] = [("stolen copy, unmodified", "none", "none", owner)]
    for name, attack, seed in weight_attacks(setting, args.quick):
        attacked = cache.get(f"attack|{owner_digest}|{attack.name}|{seed}",
                             partial(attack, owner, pool, seed=seed))
        models.append((name, "weight theft", attack.name, attacked))
        say(f"{name}: done")
    budgets = setting.budgets[:2] if args.quick else setting.budgets
    sessions = [(out, recipe.arch, b, g) for out in OUTPUTS for g in (False, True) for b in budgets]
    sessions += [("labels", "mlp", budgets[1], g) for g in (False, True)]
    with tempfile.TemporaryDirectory() as tmp:
        owner_path = save_model(owner, Path(tmp) / "owner.pt2", input_shape=splits.input_shape,
                                num_classes=k, arch=recipe.arch, input_range=splits.input_range)
        with GuardedOwner(Path(tmp), owner_path, args.guard_rate) as guarded:
            for i, (output, arch, budget, is_guarded) in enumerate(sessions):
                queries = query_inputs(pool.x, budget, seed=QUERY_SEED, input_range=splits.input_range)
                extract = Extract(arch, epochs=extract_epochs(setting, budget))
                with ExitStack() as stack:
                    if is_guarded:
                        answer, http = http_answer(guarded.urls[output], f"attacker-{i}", output, k)
                        stack.callback(http.close)
                    else:
                        answer = query_model(owner, output)
                    answers = extract.answers(answer, queries, num_classes=k)
                surrogate = cache.get(f"extract|{extract.name}|{tensor_digest(queries, answers)}|{100 + i}",
                                      partial(extract.fit, queries, answers, num_classes=k, seed=100 + i))
                cross = " (cross-arch)" if arch != recipe.arch else ""
                name = (f"extraction{cross}, {output}, {budget} queries, "
                        f"{'guarded' if is_guarded else 'unguarded'} API")
                guard = "on" if is_guarded else "off"
                spec = f"{extract.name}:output={output}:queries={budget}:guard={guard}"
                models.append((name, "extraction", spec, surrogate))
                say(f"{name}: done")
            guard_sets = guarded.commit()
    for output in OUTPUTS:
        if output in guard_sets:
            evidence.sets.append((f"guard ({output} API)", guard_sets[output]))
            say(f"guard ({output} API): {len(guard_sets[output])} marked queries committed")
        else:
            evidence.na[f"guard ({output} API)"] = "the guard marked none of the queries"
    for name, spec, build in controls(splits, recipe, setting, args.quick, cache):
        models.append((name, "control", spec, build()))
        say(f"{name}: done")

    rows = []
    for name, group, spec, model in models:
        row = Row(name, group, spec, accuracy(model, splits.test.x, splits.test.y), evidence.judge(model))
        rows.append(row)
        say(f"{name}: acc {row.accuracy:.4f}, {row.stats.verdict} (p = {row.stats.p_value:.1e}) "
            f"-> {row.outcome(owner_acc)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"robustness-{splits.name}"
    kinds = [kind for kind, _ in evidence.sets] + list(evidence.na)
    write_csv(stem.with_suffix(".csv"), rows, owner_acc, kinds)
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    command = shlex.join(["python", "-m", "benchmarks.robustness", *sys.argv[1:]])
    if args.cache is not None:
        load += f"; cache: {cache.hits} models reused, {cache.misses} trained"
    md = render_markdown(rows, owner_acc, evidence, splits, recipe, args, load,
                         minutes=(time.perf_counter() - started) / 60, command=command,
                         setting=setting)
    stem.with_suffix(".md").write_text(md)
    plot(stem.with_suffix(".png"), rows, owner_acc, splits.name, recipe.arch)
    print(md)
    say(f"wrote {stem}.csv, .md, .png")


if __name__ == "__main__":
    main()
