"""Robustness of wm's ownership evidence to removal attacks, in the spirit of the SoK.

Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image Classification Deep
Neural Network Watermarking?" (IEEE S&P 2022) found that every watermark they
tested was removed by some attack costing less than a point of accuracy. Here
one watermarked owner model is attacked with the whole catalogue of
:mod:`attacks` (fine-tuning, retraining, pruning, fine-pruning,
quantisation, noise, distillation, extraction through the API with and
without ``wm guard``, cross-architecture retraining), and for every attacked
model the benchmark asks whether the evidence still establishes ownership at
``alpha = 1e-6``. Independent models are controls that must never be owned.

**Owner.** ``cnn`` trained 30 epochs on digits owner-train (898 images) with
the default watermark, ``TriggerSet()`` (100 key-derived noise triggers,
key-random labels) mixed in by ``WatermarkHook(probes)`` (6 per batch).

**Attacker.** The digits attacker pool (539 labelled images, disjoint from
the owner's); extraction queries beyond 539 are shifted noisy copies
(:func:`attacks.query_inputs`).

**Evidence per model** (each a one-sided test of "independent of the owner"):

- *watermark*: matches on the 100 probes; exact ``Binomial(1/10)`` null.
- *fingerprint*: the CAE fingerprint of :mod:`fingerprint` (built here with
  ``wm fingerprint``'s defaults), its calibrated beta-binomial null with the
  floor its held-out references support; "n/a" when :mod:`fingerprint` is
  not importable or cannot build one.
- *guard*: the queries ``wm guard`` marked (its keyed PRF,
  :class:`guard.prf.Marker`, applied in-process to the API's answers, as the
  proxy does: a marked label replaces a label, and swaps places with the top
  class in a probability vector). For extraction through the guarded API,
  the marked queries of that attacker (the guard records a pseudonym of
  each client); for every other model, everything the guard marked (the
  largest guarded session; the other sessions' queries are a subset). Exact
  ``Binomial(1/10)`` null. "n/a" for extraction through an unguarded API, or
  when :mod:`guard` is not importable.

Each test's p-value is the anytime-valid one of :mod:`verifier.stats` (the
e-process ``wm verify`` decides with; Ville's inequality), so the verifier
may stop early; the fixed-n exact tails are in the CSV beside them. The
combined p-value is Bonferroni over the tests available for that model
(``min p * number of tests``), valid under any dependence; verdict ``owned``
iff it is at most ``alpha``.

**The 5-point budget** (the SoK's criterion): an attack whose clean test
accuracy is more than 5 points below the owner's destroyed the model; it is
marked "out of budget", not counted as an escape.

Run: ``python -m benchmarks.robustness`` (about 4 minutes on two shared cores, 2.5 of
them building the fingerprint);
writes ``benchmarks/results/robustness.{csv,md,png}``. Every seed is fixed, so
the same code on the same software writes the same files. ``--quick`` is a
small configuration for development (not the published table).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

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
from core.arch import build_model
from core.data import Splits, load_digits
from core.errors import WmError
from core.probeset import BetaBinomial, Binomial, Null, ProbeSet
from core.training import accuracy, predict, train_classifier, train_new
from watermark import TriggerSet, WatermarkHook, WatermarkKey

if TYPE_CHECKING:
    from guard.prf import Marker

ALPHA = 1e-6
BUDGET_PP = 5.0
_TOLERANCE = 1e-9  # accuracies are k/360: a drop of exactly 5 points is within budget
EVIDENCE = ("watermark", "fingerprint", "guard")
OWNER_SEED = 0
QUERY_SEED = 7
GUARD_RATE = 0.01  # `wm guard --rate` default
WATERMARK_KEY = WatermarkKey(hashlib.sha256(b"wm.benchmarks.robustness/watermark-key").digest())
OTHER_KEY = WatermarkKey(hashlib.sha256(b"wm.benchmarks.robustness/another-owner").digest())
GUARD_SECRET = hashlib.sha256(b"wm.benchmarks.robustness/guard-key").digest()
FINGERPRINT_SALT = hashlib.sha256(b"wm.benchmarks.robustness/fingerprint-salts").digest()

Group = Literal["none", "weight theft", "extraction", "control"]


# ---------------------------------------------------------------- statistics


def stats_mode() -> Literal["anytime", "fixed-n"]:
    """``anytime`` when :mod:`verifier.stats` offers its e-process, else ``fixed-n``."""
    try:
        from verifier.stats import log_e_trajectory  # noqa: F401
    except ImportError:
        return "fixed-n"
    return "anytime"


def _decision_p(null: Null, bits: list[bool]) -> float:
    """Anytime-valid p-value ``1 / max_t E_t`` (:mod:`verifier.stats`), else the fixed-n tail."""
    if stats_mode() == "fixed-n":
        return null.tail(sum(bits), len(bits))
    from verifier.stats import log_e_trajectory

    traj = log_e_trajectory(null, bits)
    p = min(1.0, math.exp(-max([0.0, *traj])))
    if isinstance(null, BetaBinomial):
        p = max(p, null.p_floor)
    return p


@dataclass(frozen=True)
class TestOutcome:
    """One test of one model: matches, fixed-n tail, anytime-valid p-value."""

    kind: str
    n: int
    matches: int
    p_fixed: float
    p_anytime: float


def run_test(kind: str, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             null: Null) -> TestOutcome:
    """Query ``model`` on the probes (in their committed order) and compute both p-values."""
    bits = (predict(model, inputs) == labels).tolist()
    k, n = int(sum(bits)), len(bits)
    return TestOutcome(kind, n, k, null.tail(k, n), _decision_p(null, bits))


# ---------------------------------------------------------------- the guard, in-process


class GuardSession:
    """``wm guard`` in front of one client's API calls, in-process.

    Uses the guard's own keyed PRF (:class:`guard.prf.Marker`) on each input's
    canonical bytes; a marked answer gets the key-random label (labels), or
    the label and the top class swap places (probabilities, as
    ``guard.protocols`` marks score vectors). Marked queries are recorded
    once per distinct input, in the order first seen: the guard's probe set
    for this client.
    """

    def __init__(self, marker: Marker, upstream: AnswerFn) -> None:
        from guard.prf import canonical_bytes

        self._bytes = canonical_bytes
        self.marker = marker
        self.upstream = upstream
        self.records: dict[bytes, tuple[torch.Tensor, int]] = {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.upstream(x).clone()
        for i in range(x.shape[0]):
            data = self._bytes(x[i].numpy())
            mark = self.marker.decide(data)
            if not mark.marked:
                continue
            self.records.setdefault(data, (x[i].clone(), int(mark.label)))
            if out.dim() == 1:
                out[i] = mark.label
            else:
                out[i] = _swap_top(out[i], int(mark.label))
        return out

    def probes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The marked inputs and their marked labels."""
        if not self.records:
            return torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64)
        xs, ys = zip(*self.records.values(), strict=True)
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _swap_top(row: torch.Tensor, label: int) -> torch.Tensor:
    """``row`` with ``label`` and the top class swapped; a tie is broken toward ``label``."""
    out = row.clone()
    top = int(out.argmax())
    out[top], out[label] = row[label], row[top]
    others = torch.ones_like(out, dtype=torch.bool)
    others[label] = False
    if bool((out[others] >= out[label]).any()):
        eps = max(1e-6, float(out[label]) * 1e-6)
        tied = others & (out >= out[label])
        take = torch.clamp(out[tied], max=eps)
        out[tied] -= take
        out[label] += take.sum()
    return out


def make_marker(rate: float) -> tuple[Marker | None, str]:
    """The guard's marker, or ``None`` and the reason it is unavailable."""
    try:
        from guard.epochs import GuardEpoch
        from guard.prf import GuardKey, Marker
    except ImportError as exc:
        return None, f"guard/ not importable ({exc})"
    return Marker(GuardKey(GUARD_SECRET), GuardEpoch("robustness", 0, rate, 10, GUARD_SECRET, 0)), ""


# ---------------------------------------------------------------- the fingerprint


@dataclass(frozen=True)
class FingerprintInfo:
    """The owner's fingerprint probe set, or why there is none."""

    probes: ProbeSet | None
    reason: str = ""


def make_fingerprint(owner: nn.Module, splits: Splits, *, quick: bool, workers: int,
                     cache: Path | None) -> FingerprintInfo:
    """Build the owner's CAE fingerprint with :mod:`fingerprint` (``wm fingerprint``'s defaults)."""
    try:
        from core.modelio import weights_digest
        from fingerprint import ConferrableExamples, EnsembleConfig, build_fingerprint
    except ImportError as exc:
        return FingerprintInfo(None, f"fingerprint/ not importable ({exc})")
    ensembles = (EnsembleConfig(surrogates=2, references=2, epochs=10) if quick
                 else EnsembleConfig())
    scheme = ConferrableExamples(n=50, steps=30) if quick else ConferrableExamples()

    def progress(stage: str, done: int, total: int) -> None:
        print(f"  fingerprint: {stage} {done}/{total}", flush=True)

    try:
        fp = build_fingerprint(
            owner, owner_arch="cnn", owner_digest=weights_digest(owner.state_dict()),
            train_x=splits.train.x, train_y=splits.train.y,
            seeds_x=torch.cat([splits.train.x, splits.test.x]),
            seeds_y=torch.cat([splits.train.y, splits.test.y]),
            num_classes=splits.num_classes, scheme=scheme, ensembles=ensembles, seed=0,
            salt_key=FINGERPRINT_SALT, cache_dir=cache, workers=workers, progress=progress,
        )
    except WmError as exc:
        return FingerprintInfo(None, f"fingerprint could not be built: {exc}")
    return FingerprintInfo(fp.probes)


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    """One model of the table and its evidence."""

    name: str
    group: Group
    spec: str
    accuracy: float
    tests: dict[str, TestOutcome | None] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> list[TestOutcome]:
        return [t for t in self.tests.values() if t is not None]

    @property
    def combined_p(self) -> float:
        tests = self.available
        return min(1.0, len(tests) * min(t.p_anytime for t in tests)) if tests else 1.0

    @property
    def owned(self) -> bool:
        return self.combined_p <= ALPHA

    def drop_pp(self, owner_acc: float) -> float:
        return 100.0 * (owner_acc - self.accuracy)

    def in_budget(self, owner_acc: float) -> bool:
        return self.drop_pp(owner_acc) <= BUDGET_PP + _TOLERANCE

    def outcome(self, owner_acc: float) -> str:
        if self.group == "control":
            return "FALSE CLAIM" if self.owned else "not owned (correct)"
        if self.group == "none":
            return "caught" if self.owned else "ESCAPES"
        if not self.in_budget(owner_acc):
            return "out of budget"
        return "caught" if self.owned else "ESCAPES"


@dataclass(frozen=True)
class Suite:
    """The evidence an owner holds: watermark, fingerprint, guard log."""

    watermark: ProbeSet
    fingerprint: FingerprintInfo
    marker: Marker | None
    marker_reason: str
    guard_log: tuple[torch.Tensor, torch.Tensor] | None

    def assess(self, name: str, group: Group, spec: str, model: nn.Module, splits: Splits, *,
               guard: tuple[torch.Tensor, torch.Tensor] | Literal["log"] | None = "log",
               guard_na: str = "") -> Row:
        """Every available test of ``model``."""
        row = Row(name, group, spec, accuracy(model, splits.test.x, splits.test.y))
        wm = self.watermark
        row.tests["watermark"] = run_test("watermark", model, wm.inputs, wm.expected, wm.null)
        fp = self.fingerprint.probes
        if fp is None:
            row.tests["fingerprint"] = None
            row.na["fingerprint"] = self.fingerprint.reason
        else:
            row.tests["fingerprint"] = run_test("fingerprint", model, fp.inputs, fp.expected, fp.null)
        probes = self.guard_log if guard == "log" else guard
        if self.marker is None:
            row.tests["guard"], row.na["guard"] = None, self.marker_reason
        elif probes is None:
            row.tests["guard"], row.na["guard"] = None, guard_na or "no guard records"
        elif probes[0].shape[0] == 0:
            row.tests["guard"], row.na["guard"] = None, "the guard marked none of the queries"
        else:
            row.tests["guard"] = run_test("guard", model, probes[0], probes[1], Binomial(0.1))
        return row


# ---------------------------------------------------------------- the run


def train_owner(splits: Splits, probes: ProbeSet, epochs: int) -> nn.Module:
    """The owner: ``cnn``, watermarked with the default hook."""
    torch.manual_seed(OWNER_SEED)
    model = build_model("cnn", splits.input_shape, splits.num_classes)
    return train_classifier(model, splits.train.x, splits.train.y, epochs=epochs, seed=OWNER_SEED,
                            hook=WatermarkHook(probes))


def extraction_epochs(budget: int, min_steps: int = 400) -> int:
    """Enough epochs that a small query set still gets ``min_steps`` optimiser steps (at least 30)."""
    steps_per_epoch = math.ceil(budget / 64)
    return max(30, math.ceil(min_steps / steps_per_epoch))


def weight_attacks(quick: bool) -> list[tuple[str, WeightAttack, int]]:
    """(display name, attack, seed) for every weight-theft attack."""
    rows: list[tuple[str, WeightAttack, int]] = [
        ("FTLL", FineTune("last", epochs=20, lr=1e-3), 11),
        ("FTAL", FineTune("all", epochs=20, lr=1e-3), 12),
        ("FTAL, high lr", FineTune("all", epochs=30, lr=1e-2), 13),
        ("RTLL", Retrain("last", epochs=20, lr=1e-3), 14),
        ("RTAL", Retrain("all", epochs=30, lr=3e-3), 15),
        ("pruning 30%", Prune(0.3), 0),
        ("pruning 50%", Prune(0.5), 0),
        ("pruning 70%", Prune(0.7), 0),
        ("pruning 90%", Prune(0.9), 0),
        ("fine-pruning 50%", FinePrune(0.5, epochs=20, lr=3e-3), 16),
        ("fine-pruning 90%", FinePrune(0.9, epochs=20, lr=3e-3), 17),
        ("int8 quantisation", Quantize(8), 0),
        ("weight noise 0.5σ", WeightNoise(0.5), 18),
        ("weight noise 1σ", WeightNoise(1.0), 19),
        ("distillation (cnn)", Distill(None, temperature=4.0, epochs=30), 20),
        ("distillation (mlp)", Distill("mlp", temperature=4.0, epochs=30), 21),
    ]
    if quick:
        keep = {"FTAL, high lr", "RTAL", "pruning 50%", "int8 quantisation", "distillation (cnn)"}
        rows = [r for r in rows if r[0] in keep]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small configuration for development")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="default: benchmarks/results (quick: /tmp/wm-robustness-quick)")
    ap.add_argument("--guard-rate", type=float, default=GUARD_RATE,
                    help="fraction R of distinct inputs whose answers the guard marks "
                    "(default: wm guard's default --rate)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes for the fingerprint ensembles (results do not depend on it)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="cache directory for fingerprint ensemble members (default: none)")
    args = ap.parse_args()
    out_dir = args.out_dir or Path("/tmp/wm-robustness-quick" if args.quick else "benchmarks/results")
    torch.set_num_threads(1)  # determinism, and speed on a shared machine
    started = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    splits = load_digits()
    assert splits.attacker_pool is not None
    pool = splits.attacker_pool
    probes = TriggerSet().probes(WATERMARK_KEY, num_classes=10, input_shape=splits.input_shape)
    epochs = 30
    owner = train_owner(splits, probes, epochs)
    owner_acc = accuracy(owner, splits.test.x, splits.test.y)
    say(f"owner: clean accuracy {owner_acc:.4f}, watermark "
        f"{accuracy(owner, probes.inputs, probes.expected):.2f}")

    say("fingerprint: building (ensembles, conferrable examples, calibration)")
    fingerprint = make_fingerprint(owner, splits, quick=args.quick, workers=args.workers,
                                   cache=args.cache)
    if fingerprint.probes is None:
        say(f"fingerprint: n/a ({fingerprint.reason})")
    else:
        null = fingerprint.probes.null
        say(f"fingerprint: {len(fingerprint.probes)} probes, null {null}")

    marker, marker_reason = make_marker(args.guard_rate)
    budgets = [100, 539] if args.quick else [100, 539, 2000]
    guard_log = None
    if marker is not None:
        # Everything the guard marks, whoever asks: the largest session's queries (the
        # smaller sessions' queries are prefixes of it, and marking depends on the input only).
        full = GuardSession(marker, query_model(owner, "labels"))
        full(query_inputs(pool.x, max(budgets), seed=QUERY_SEED))
        guard_log = full.probes()
        say(f"guard: rate {args.guard_rate:g}, {guard_log[0].shape[0]} of {max(budgets)} "
            "distinct queries marked")
    suite = Suite(probes, fingerprint, marker, marker_reason, guard_log)

    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        tests = ", ".join(f"{t.kind} {t.matches}/{t.n} p={t.p_anytime:.1e}" for t in row.available)
        say(f"{row.name}: acc {row.accuracy:.4f}; {tests}; combined {row.combined_p:.1e} -> "
            f"{row.outcome(owner_acc)}")

    add(suite.assess("stolen copy, unmodified", "none", "none", owner, splits))
    for name, attack, seed in weight_attacks(args.quick):
        add(suite.assess(name, "weight theft", attack.name, attack(owner, pool, seed=seed), splits))

    extraction: list[tuple[str, str, str, int, bool]] = []
    for output in ("labels", "probabilities"):
        for guarded in (False, True):
            for budget in budgets:
                extraction.append((output, "cnn", "cnn", budget, guarded))
    for guarded in (False, True):
        extraction.append(("labels", "mlp", "mlp", 539, guarded))
    for i, (output, arch, _, budget, guarded) in enumerate(extraction):
        queries = query_inputs(pool.x, budget, seed=QUERY_SEED)
        api: AnswerFn = query_model(owner, output)  # type: ignore[arg-type]
        session = GuardSession(marker, api) if guarded and marker is not None else None
        extract = Extract(arch, epochs=extraction_epochs(budget))
        surrogate = extract(session or api, queries, num_classes=10, seed=100 + i)
        cross = " (cross-arch)" if arch != "cnn" else ""
        name = (f"extraction{cross}, {output}, {budget} queries, "
                f"{'guarded' if guarded else 'unguarded'} API")
        spec = f"{extract.name}:output={output}:queries={budget}:guard={'on' if guarded else 'off'}"
        if guarded:
            row = suite.assess(name, "extraction", spec, surrogate, splits,
                               guard=session.probes() if session is not None else None,
                               guard_na=marker_reason)
        else:
            row = suite.assess(name, "extraction", spec, surrogate, splits, guard=None,
                               guard_na="the API had no guard")
        add(row)

    controls: list[tuple[str, str, Callable[[], nn.Module]]] = [
        ("independent cnn, owner-train, seed 1001", "train:cnn:owner-train:seed=1001",
         lambda: train_new("cnn", splits.train.x, splits.train.y, num_classes=10, epochs=epochs,
                           seed=1001)),
        ("independent cnn, owner-train, seed 1002", "train:cnn:owner-train:seed=1002",
         lambda: train_new("cnn", splits.train.x, splits.train.y, num_classes=10, epochs=epochs,
                           seed=1002)),
        ("independent cnn-wide, owner-train", "train:cnn-wide:owner-train:seed=1003",
         lambda: train_new("cnn-wide", splits.train.x, splits.train.y, num_classes=10,
                           epochs=epochs, seed=1003)),
        ("independent mlp, owner-train", "train:mlp:owner-train:seed=1004",
         lambda: train_new("mlp", splits.train.x, splits.train.y, num_classes=10, epochs=epochs,
                           seed=1004)),
        ("independent mlp-wide, owner-train", "train:mlp-wide:owner-train:seed=1005",
         lambda: train_new("mlp-wide", splits.train.x, splits.train.y, num_classes=10,
                           epochs=epochs, seed=1005)),
        ("independent cnn, attacker pool", "train:cnn:attacker-pool:seed=1006",
         lambda: train_new("cnn", pool.x, pool.y, num_classes=10, epochs=epochs, seed=1006)),
        ("independent mlp, attacker pool", "train:mlp:attacker-pool:seed=1007",
         lambda: train_new("mlp", pool.x, pool.y, num_classes=10, epochs=epochs, seed=1007)),
        ("independent cnn, own watermark (other key)", "train:cnn:owner-train:seed=1008:wm=other",
         lambda: _watermarked_control(splits, epochs)),
    ]
    if args.quick:
        controls = controls[:1] + controls[3:4]
    for name, spec, build in controls:
        add(suite.assess(name, "control", spec, build(), splits))

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "robustness.csv", rows, owner_acc)
    md = render_markdown(rows, owner_acc, suite, args, budgets)
    (out_dir / "robustness.md").write_text(md)
    plot(out_dir / "robustness.png", rows, owner_acc)
    print(md)
    say(f"wrote {out_dir}/robustness.csv, robustness.md, robustness.png")


def _watermarked_control(splits: Splits, epochs: int) -> nn.Module:
    other = TriggerSet().probes(OTHER_KEY, num_classes=10, input_shape=splits.input_shape)
    torch.manual_seed(1008)
    model = build_model("cnn", splits.input_shape, splits.num_classes)
    return train_classifier(model, splits.train.x, splits.train.y, epochs=epochs, seed=1008,
                            hook=WatermarkHook(other))


# ---------------------------------------------------------------- output


def _p(p: float) -> str:
    if p >= 0.01:
        return f"{p:.2f}"
    if p < 1e-300:
        return "<1e-300"
    return f"{p:.0e}".replace("e-0", "e-")


def write_csv(path: Path, rows: list[Row], owner_acc: float) -> None:
    """One line per model: accuracy, each test's counts and p-values, combined verdict."""
    header = ["model", "group", "spec", "clean_accuracy", "drop_pp", "in_budget"]
    for kind in EVIDENCE:
        header += [f"{kind}_matches", f"{kind}_n", f"{kind}_p_anytime", f"{kind}_p_fixed",
                   f"{kind}_owned"]
    header += ["tests", "combined_p", "verdict", "outcome"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line: list[object] = [r.name, r.group, r.spec, f"{r.accuracy:.4f}",
                                  f"{r.drop_pp(owner_acc):.2f}",
                                  r.in_budget(owner_acc)]
            for kind in EVIDENCE:
                t = r.tests.get(kind)
                if t is None:
                    line += ["n/a", "n/a", "n/a", "n/a", "n/a"]
                else:
                    line += [t.matches, t.n, f"{t.p_anytime:.3e}", f"{t.p_fixed:.3e}",
                             t.p_anytime <= ALPHA]
            line += [len(r.available), f"{r.combined_p:.3e}",
                     "owned" if r.owned else "not_owned", r.outcome(owner_acc)]
            w.writerow(line)


def render_markdown(rows: list[Row], owner_acc: float, suite: Suite, args: argparse.Namespace,
                    budgets: list[int]) -> str:
    """The README table, its legend and a plain summary of what escaped."""
    fp = suite.fingerprint.probes
    fp_note = (f"CAE fingerprint, {len(fp)} probes, beta-binomial null fitted on "
               f"{fp.null.references} held-out references, floor p >= {fp.null.p_floor:.3g}"  # type: ignore[union-attr]
               if fp is not None else f"n/a: {suite.fingerprint.reason}")
    guard_note = (f"`wm guard` PRF at rate R = {args.guard_rate:g}; "
                  f"{suite.guard_log[0].shape[0] if suite.guard_log is not None else 0} of the "
                  f"{max(budgets)} distinct queries of the largest session marked"
                  if suite.marker is not None else f"n/a: {suite.marker_reason}")
    lines = [
        f"Owner: `cnn`, 30 epochs on digits owner-train, watermark `{suite.watermark.scheme}` "
        f"(hook, 6 per batch); clean test accuracy {owner_acc:.4f}. "
        f"Attacker: the 539-image attacker pool. Decision level alpha = {ALPHA:g}; "
        f"budget: clean accuracy within {BUDGET_PP:g} points of the owner's (the SoK's criterion).",
        "",
        f"Evidence: **WM** = watermark, 100 trigger probes, exact Binomial(1/10) null; "
        f"**FP** = {fp_note}; **Guard** = {guard_note}, exact Binomial(1/10) null. "
        + ("p = anytime-valid p-value (`verifier.stats` e-process, what `wm verify` decides with); "
           if stats_mode() == "anytime" else
           "p = fixed-n exact tail (`verifier.stats` was not importable, so no anytime-valid p); ")
        + "**combined** = Bonferroni over the tests available for that model. "
        "`k/n` = matches / probes.",
        "",
        "| model | clean acc (Δ pp) | WM k/n | WM p | FP k/n | FP p | Guard k/n | Guard p "
        "| combined p | verdict | outcome |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    section = None
    titles = {"none": "No attack", "weight theft": "Weight theft (attacker holds the weights)",
              "extraction": "Extraction through the prediction API",
              "control": "Controls (independent models: must never be owned)"}
    for r in rows:
        if r.group != section:
            section = r.group
            lines.append(f"| **{titles[r.group]}** | | | | | | | | | | |")
        cells = [r.name, f"{r.accuracy:.4f} ({round(-r.drop_pp(owner_acc), 1) + 0.0:+.1f})"]
        for kind in EVIDENCE:
            t = r.tests.get(kind)
            cells += (["n/a", "n/a"] if t is None else
                      [f"{t.matches}/{t.n}", _p(t.p_anytime) + (" ✓" if t.p_anytime <= ALPHA else "")])
        outcome = r.outcome(owner_acc)
        shown = {"ESCAPES": "**ESCAPES**", "FALSE CLAIM": "**FALSE CLAIM**"}.get(outcome, outcome)
        cells += [_p(r.combined_p), "owned" if r.owned else "not owned", shown]
        lines.append("| " + " | ".join(cells) + " |")
    attacks = [r for r in rows if r.group in ("weight theft", "extraction")]
    in_budget = [r for r in attacks if r.outcome(owner_acc) != "out of budget"]
    escaped = [r for r in in_budget if not r.owned]
    controls = [r for r in rows if r.group == "control"]
    false_claims = [r for r in controls if r.owned]
    lines += [
        "",
        "✓ = that test alone reaches alpha.",
        "",
        f"**Summary.** {len(attacks)} attacks: {len(attacks) - len(in_budget)} out of budget "
        f"(destroyed the model), {len(in_budget) - len(escaped)} of {len(in_budget)} within budget "
        f"caught, **{len(escaped)} within budget escape the combined evidence**"
        + (": " + "; ".join(r.name for r in escaped) + "." if escaped else ".")
        + f" Controls: {len(false_claims)} of {len(controls)} owned"
        + (" (**false claims**: " + "; ".join(r.name for r in false_claims) + ")."
           if false_claims else " (no false claim)."),
    ]
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[Row], owner_acc: float) -> None:
    """Two panels: accuracy drop against the budget; -log10 p of each test and combined vs alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap = 30.0
    names = [r.name for r in rows][::-1]
    rr = rows[::-1]
    y = np.arange(len(rr))
    colours = {"caught": "#2b8a3e", "ESCAPES": "#c92a2a", "out of budget": "#868e96",
               "not owned (correct)": "#1c7ed6", "FALSE CLAIM": "#e8590c"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.28 * len(rr) + 1.6), sharey=True,
                                   gridspec_kw={"width_ratios": [1, 2]})
    drops = [r.drop_pp(owner_acc) for r in rr]
    top = 3 * BUDGET_PP  # larger drops are drawn to the edge and labelled
    ax1.barh(y, [min(d, top) for d in drops], color=[colours[r.outcome(owner_acc)] for r in rr])
    for i, d in enumerate(drops):
        if d > top:
            ax1.text(top, i, f"{d:.0f} ", ha="right", va="center", fontsize=6, color="w")
    ax1.axvline(BUDGET_PP, color="k", ls="--", lw=1)
    ax1.set_xlabel("clean accuracy drop (points)")
    ax1.set_yticks(y, names, fontsize=7)
    ax1.set_xlim(min(-2.0, min(drops) - 1), top)

    def lp(p: float) -> float:
        return min(cap, -math.log10(max(p, 1e-300)))

    ax2.barh(y, [lp(r.combined_p) for r in rr], color=[colours[r.outcome(owner_acc)] for r in rr],
             alpha=0.35, label="combined (bar)")
    for kind, marker in zip(EVIDENCE, ("o", "s", "^"), strict=True):
        pts = [(lp(t.p_anytime), i) for i, r in enumerate(rr) if (t := r.tests.get(kind)) is not None]
        if pts:
            ax2.scatter([p for p, _ in pts], [i for _, i in pts], marker=marker, s=14, label=kind,
                        zorder=3)
    ax2.axvline(-math.log10(ALPHA), color="k", ls="--", lw=1)
    ax2.text(-math.log10(ALPHA), len(rr) - 0.3, " alpha = 1e-6", fontsize=7, va="bottom")
    ax2.set_xlabel(f"-log10 p (anytime-valid; capped at {cap:g})")
    ax2.set_xlim(0, cap + 1)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax2.legend(loc="lower right", fontsize=7)
    ax1.legend(handles, list(colours), loc="lower right", fontsize=6, title="outcome (bar colour)",
               title_fontsize=6)
    fig.suptitle("wm robustness: ownership evidence after removal attacks (digits, cnn owner)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    main()
