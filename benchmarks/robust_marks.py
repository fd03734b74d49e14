"""Extraction- and distillation-robust watermarks on Fashion-MNIST (issue 13): margin, composite, dark.

For each scheme, an owner of the data's recipe architecture is trained with
the scheme's own hook (``scheme.hook``, as ``wm train`` does) and attacked
with the catalogue of :mod:`attacks` that steals the function rather than the
weights: extraction through an unguarded API answering labels or
probabilities at 1k, 5k and 20k queries (KnockoffNets-style random sampling
of the attacker's split; a surrogate of the owner's architecture and one of
another), distillation of stolen weights on the attacker's data (T = 3, as
the SoK), RTAL and fine-pruning 90% on the attacker's data. Every model is
judged by the verifier exactly as ``wm verify`` decides
(:class:`benchmarks.robustness.Evidence`: the anytime-valid e-process at
alpha 1e-6, every probe of the set, dark-knowledge probes read as second
choices). Ten independent models (reference split, attacker pool, owner's
data; the owner's architecture and two others; other seeds) are controls
that must never be owned. A plain owner (no watermark, same seed) gives the
clean drop and the training-time ratio (CPU seconds, one torch thread, side
by side).

Run: ``python -m benchmarks.robust_marks [--epochs 3] [--cache DIR]``; writes
``benchmarks/results/robust-fmnist.md``. ``--headline --seed S`` trains
another owner and runs the three headline attacks only. ``--weight-sweep``
runs the SoK's attacks on stolen weights (FTAL, RTLL, RTAL, fine-pruning 90%;
and RTAL with weight decay) at three learning rates instead of the catalogue. A scheme written ``A+B``
trains one owner with both marks, as ``wm train --watermark A+B`` does, and
judges every set together. ``--agreement`` adds how much of the owner's
function each model shares (test images, the owner's own errors, noise,
noisy test images), for the attacked copies and the independent controls
alike. ``--guard-rates R1,R2`` also puts each owner behind ``wm guard`` (a
fresh owner key per rate, the product's server and guard on loopback) and
extracts it with labels at 20k queries through the guard, judging the
surrogates (``--guard-epochs``) and the controls on the guard's committed
marked queries; ``--guard-only`` runs that and nothing else. Trained models
are cached (keyed by everything that shapes them), so a rerun only
re-judges; guarded surrogates are trained afresh, as each run's guard has its
own key.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from attacks import Distill, Extract, FinePrune, FineTune, Retrain, query_inputs, query_model
from benchmarks.robustness import ALPHA, QUERY_SEED, Evidence, GuardedOwner, http_answer
from core.arch import build_model, resolve_arch
from core.data import Dataset, Splits, load_data
from core.modelio import save_model
from core.probeset import ProbeSet
from core.training import accuracy, default_recipe, predict, train_classifier, train_new
from watermark import CompositeMark, DarkMark, Scheme, WatermarkKey, parse_scheme
from watermark.hook import ChainedHooks
from watermark.schemes import ALIASES, CompositeHook, DarkHook

KEY = WatermarkKey(hashlib.sha256(b"wm.benchmarks.robust_marks/watermark-key").digest())
SCHEMES = ("margin", "composite", ALIASES["extraction-robust"])
OTHER_ARCH = "cnn"
"""The surrogate architecture that is not the owner's (the recipe's ``convnet`` on Fashion-MNIST)."""
CONTROLS = (  # (architecture or None for the owner's, data, seed)
    (None, "reference", 1001), (None, "attacker pool", 1002), ("mlp", "reference", 1003),
    (None, "owner-train", 1004), (None, "reference", 1005), (None, "attacker pool", 1006),
    ("mlp", "attacker pool", 1007), (OTHER_ARCH, "reference", 1008), (OTHER_ARCH, "attacker pool", 1009),
    (None, "owner-train", 1010),
)
EXTRACT_EPOCHS = {1000: 4, 5000: 2, 20000: 1}
"""Surrogate epochs per query budget, in multiples of ``--attack-epochs``: about as many steps each."""
PER_BATCH = 16
SWEEP_LRS = (3e-4, 1e-3, 3e-3)
"""Adam learning rates of ``--weight-sweep``: a gentle fine-tune, a usual one, the owner's own peak."""
SWEEP_ATTACKS = ("FTAL", "RTLL", "RTAL", "fine-pruning 90%", "RTAL wd 5e-4")
AGREEMENT_INPUTS = 2000
"""Noise images and noisy test images ``--agreement`` compares answers on."""


def agreement_inputs(splits: Splits, n: int = AGREEMENT_INPUTS, seed: int = 3
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform-noise inputs in the data's range, and ``n`` test images blended half and half
    with noise."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = splits.input_range.low, splits.input_range.high
    shape = (n, *splits.input_shape)
    noise = lo + (hi - lo) * torch.rand(shape, generator=g)
    test = splits.test.x[:n]
    blend = 0.5 * test + 0.5 * (lo + (hi - lo) * torch.rand(test.shape, generator=g))
    return noise, blend


def agreement(owner: tuple[torch.Tensor, ...], model: nn.Module, splits: Splits,
              inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float, float, float]:
    """How much of the owner's function ``model`` shares, read from top answers only.

    ``owner`` is the owner's top answers to the test images and to each of
    ``inputs`` (noise, noisy test images). Returns the share of test images
    both answer alike; of the test images the owner gets wrong, the share
    ``model`` answers with the owner's wrong label; and the shares of
    ``inputs`` answered alike. Independent models set the level a copy that
    kept nothing of the owner would show (they share most of the owner's
    errors: the Rashomon set).
    """
    on_test, *on_inputs = owner
    pm = predict(model, splits.test.x)
    wrong = on_test != splits.test.y
    same_error = float((pm[wrong] == on_test[wrong]).float().mean()) if bool(wrong.any()) else float("nan")
    alike = [float((predict(model, z) == o).float().mean()) for z, o in zip(inputs, on_inputs, strict=True)]
    return float((pm == on_test).float().mean()), same_error, alike[0], alike[1]


def guarded_extraction(marked: nn.Module, splits: Splits, arch: str, rate: float, epochs: tuple[int, ...],
                       controls: list[tuple[str, nn.Module]], budget: int = 20000) -> list[str]:
    """Table rows: ``marked`` behind ``wm guard`` at ``rate``, extracted with labels at ``budget`` queries.

    The attacker's queries (the catalogue's) go over HTTP through the guard in
    front of the product's server; the guard's marked queries are committed as
    ``wm guard commit`` does, and every surrogate (one per ``epochs``) and
    every control is judged on them alone, as ``wm verify`` decides.
    """
    pool = splits.attacker_pool
    assert pool is not None
    k = splits.num_classes
    queries = query_inputs(pool.x, budget, seed=QUERY_SEED, input_range=splits.input_range)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(marked, Path(tmp) / "owner.pt2", input_shape=splits.input_shape, num_classes=k,
                          arch=arch, input_range=splits.input_range)
        with GuardedOwner(Path(tmp), path, rate) as guarded:
            answer, http = http_answer(guarded.urls["labels"], "attacker-0", "labels", k)
            try:
                answers = Extract(arch, epochs=1).answers(answer, queries, num_classes=k)
            finally:
                http.close()
            sets = guarded.commit()
    if "labels" not in sets:
        return [f"| {rate:g} | - | the guard marked none of the {budget} queries | - | - | - | - |"]
    marks = sets["labels"]
    changed = float((answers != predict(marked, queries)).float().mean())
    evidence = Evidence([("guard", marks)])
    rows = []
    suspects = [(f"surrogate, {e} epochs", Extract(arch, epochs=e).fit(queries, answers, num_classes=k,
                                                                      seed=101).eval()) for e in epochs]
    for name, model in suspects + controls:
        st = evidence.judge(model)
        kept = accuracy(model, marks.inputs, marks.expected)
        rows.append(f"| {rate:g} | {name} | {len(marks)} marked, {changed:.4f} of the answers changed "
                    f"| {accuracy(model, splits.test.x, splits.test.y):.4f} "
                    f"| {kept:.3f} | {st.p_value:.1e} | {st.verdict} |")
    return rows


def cached(cache: Path, name: str, build: Callable[[], nn.Module], like: Callable[[], nn.Module]
           ) -> tuple[nn.Module, float]:
    """``build()`` once; its state dict and CPU seconds are kept under ``cache/name.pt``."""
    path = cache / f"{name}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model = like()
        model.load_state_dict(saved["state"])
        return model.eval(), float(saved["cpu"])
    t = time.process_time()
    model = build()
    cpu = time.process_time() - t
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "cpu": cpu}, path)
    return model.eval(), cpu


def family_members(scheme: Scheme, probes: ProbeSet, splits: Splits, per_family: int = 400
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """New members of every family or cell, from test images, with their labels (composite, dark).

    The share a model answers with the label says whether it learnt each family's rule
    (Lv et al.'s watermark success rate), or each cell's runner-up, not only the one
    committed probe. Dark: the test images of the cells whose label is not their class.
    """
    if isinstance(scheme, DarkMark):
        hook = DarkHook(probes, splits.train, mass=scheme.mass)
        cells = hook.cells(splits.test.x, splits.test.y)
        label = probes.expected[cells]
        keep = (cells >= 0) & (label != splits.test.y)
        return splits.test.x[keep], label[keep]
    if not isinstance(scheme, CompositeMark):
        return None
    hook = CompositeHook(probes, splits.test, scheme.families(KEY, splits.test.y), per_batch=1)
    idx = torch.arange(len(probes)).repeat(max(1, per_family // len(probes)))
    x, y = hook.examples(idx)
    x, y = x[: len(idx)], y[: len(idx)]
    new = ~(x == probes.inputs[idx]).flatten(1).all(dim=1)  # leave out the probes themselves
    return x[new], y[new]


def validity(scheme: Scheme, controls: list[tuple[str, nn.Module]], splits: Splits, keys: int
             ) -> tuple[list[str], int]:
    """Table rows: over ``keys`` keys and every control, the share of p-values at or below t.

    Each key makes its own probe set (for data-stamping schemes, its own images and cells);
    every control answers every set, read as the verifier reads it (dark: second choices).
    Returns the rows and the number of (key, control) pairs ``owned`` at alpha (must be 0).
    """
    from verifier.session import DEFAULT_FUTILITY
    from verifier.stats import TestInput, compute_statistics

    p_fixed: list[float] = []
    p_any: list[float] = []
    owned = hits = trials = 0
    for i in range(keys):
        key = WatermarkKey(hashlib.sha256(b"wm.benchmarks.robust_marks/validity/%d" % i).digest())
        probes = scheme.probes(key, num_classes=splits.num_classes, input_shape=splits.input_shape,
                               data=splits.train, input_range=splits.input_range)
        for _, model in controls:
            bits = tuple(bool(b) for b in predict(model, probes.inputs, rank=probes.rank) == probes.expected)
            hits, trials = hits + sum(bits), trials + len(bits)
            t = TestInput("owner", "watermark", probes.null, bits, tuple(range(1, len(bits) + 1)),
                          population=len(bits))
            fixed = compute_statistics([t], alpha=ALPHA, mode="fixed")
            anytime = compute_statistics([t], alpha=ALPHA, mode="sequential", futility=DEFAULT_FUTILITY)
            owned += fixed.verdict == "owned" or anytime.verdict == "owned"
            p_fixed.append(fixed.p_value)
            p_any.append(anytime.p_value)
    rows = []
    for level in (0.001, 0.01, 0.05, 0.1):
        share_f = sum(p <= level for p in p_fixed) / len(p_fixed)
        share_a = sum(p <= level for p in p_any) / len(p_any)
        rows.append(f"| {scheme.name} | {level:g} | {share_f:.4f} | {share_a:.4f} |")
    rows.append(f"| {scheme.name} | match rate | {hits / trials:.4f} (chance {1 / splits.num_classes:.2f}) "
                f"| smallest p {min(p_fixed):.1e} / {min(p_any):.1e} |")
    return rows, owned


def weight_sweep(marked: nn.Module, pool: Dataset, ae: int, lrs: tuple[float, ...] = SWEEP_LRS,
                 only: tuple[str, ...] | None = None) -> list[tuple[str, Callable[[], nn.Module]]]:
    """The SoK's attacks on stolen weights, each at the learning rates ``lrs``.

    FTAL and RTAL train every layer on the attacker's hard labels (RTAL from a
    re-initialised output layer), RTLL only a new output layer on the frozen
    features, fine-pruning removes 90% of the last feature layer first; "RTAL wd 5e-4" is
    RTAL with Adam's L2 weight decay (an attacker who knows sleeper marks: it gives every
    weight a gradient). Epochs as the catalogue's (RTAL and FTAL 1.5x ``--attack-epochs``).
    ``only`` keeps the attacks of those names.
    """
    out: list[tuple[str, Callable[[], nn.Module]]] = []
    long = math.ceil(1.5 * ae)
    for lr in lrs:
        attacks: list[tuple[str, Callable[[nn.Module, Dataset], nn.Module]]] = [
            ("FTAL", lambda m, d, lr=lr: FineTune("all", epochs=long, lr=lr)(m, d, seed=16)),
            ("RTLL", lambda m, d, lr=lr: Retrain("last", epochs=long, lr=lr)(m, d, seed=15)),
            ("RTAL", lambda m, d, lr=lr: Retrain("all", epochs=long, lr=lr)(m, d, seed=15)),
            ("fine-pruning 90%", lambda m, d, lr=lr: FinePrune(0.9, epochs=ae, lr=lr)(m, d, seed=17)),
            ("RTAL wd 5e-4", lambda m, d, lr=lr: Retrain("all", epochs=long, lr=lr, weight_decay=5e-4)(
                m, d, seed=15)),
        ]
        assert tuple(name for name, _ in attacks) == SWEEP_ATTACKS
        out += [(f"{name}, lr {lr:g}", lambda a=attack: a(marked, pool)) for name, attack in attacks
                if only is None or name in only]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--arch", default=None, help="the owner's architecture (default: the data's recipe)")
    ap.add_argument("--epochs", type=int, default=5, help="owner epochs (the recipe's schedule)")
    ap.add_argument("--attack-epochs", type=int, default=5,
                    help="epochs of distillation, label extraction, fine-pruning (RTAL: 1.5x)")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--seed", type=int, default=0, help="the owner's training seed (plain and marked)")
    ap.add_argument("--headline", action="store_true",
                    help="only the headline attacks (extraction 5k probabilities / 20k labels, distillation)")
    ap.add_argument("--controls", type=int, default=len(CONTROLS), help="independent controls (at most 10)")
    ap.add_argument("--control-epochs", type=int, default=None, help="controls' epochs (default: --epochs)")
    ap.add_argument("--validity-keys", type=int, default=0,
                    help="instead of the attacks: p-values of every control over this many keys per scheme")
    ap.add_argument("--weight-sweep", action="store_true",
                    help="instead of the catalogue: the SoK's weight attacks (FTAL, RTLL, RTAL, fine-pruning "
                         "90%%) at three learning rates")
    ap.add_argument("--sweep-lrs", default=",".join(f"{lr:g}" for lr in SWEEP_LRS),
                    help="--weight-sweep's learning rates, comma-separated")
    ap.add_argument("--sweep-attacks", default=None,
                    help="--weight-sweep's attacks, comma-separated (FTAL, RTLL, RTAL, 'fine-pruning 90%%', "
                         "'RTAL wd 5e-4'); default: all")
    ap.add_argument("--per-batch", type=int, default=PER_BATCH,
                    help=f"examples each scheme's hook appends to a batch (default {PER_BATCH})")
    ap.add_argument("--agreement", action="store_true",
                    help="add columns: how much of the owner's function each model shares (test images, "
                         "the owner's errors, noise, noisy test images)")
    ap.add_argument("--guard-rates", default=None,
                    help="also extract each owner with labels at 20k queries through `wm guard` at these "
                         "marking rates, comma-separated")
    ap.add_argument("--guard-only", action="store_true",
                    help="with --guard-rates: judge the owner, the controls and the guarded surrogates only "
                         "(no catalogue, no weight attacks)")
    ap.add_argument("--guard-epochs", default=None,
                    help="--guard-rates' surrogate epochs, comma-separated (default: the catalogue's at 20k)")
    ap.add_argument("--cache", type=Path, default=Path(".cache/robust-marks"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/robust-fmnist.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    sweep_lrs = tuple(float(v) for v in args.sweep_lrs.split(","))
    sweep_only = None if args.sweep_attacks is None else tuple(args.sweep_attacks.split(","))
    if sweep_only is not None and (unknown := set(sweep_only) - set(SWEEP_ATTACKS)):
        ap.error(f"--sweep-attacks: unknown {', '.join(sorted(unknown))}; "
                 f"choose from {', '.join(SWEEP_ATTACKS)}")
    try:
        guard_rates = tuple(float(v) for v in args.guard_rates.split(",")) if args.guard_rates else ()
        guard_epochs = tuple(int(v) for v in args.guard_epochs.split(",")) if args.guard_epochs else None
    except ValueError:
        ap.error("--guard-rates takes numbers and --guard-epochs whole numbers, comma-separated")
    if args.guard_only and (not guard_rates or args.weight_sweep or args.headline):
        ap.error("--guard-only needs --guard-rates and goes with neither --weight-sweep nor --headline")
    if args.per_batch < 1:
        ap.error("--per-batch must be at least 1")
    if any(not 0.0 < r <= 1.0 for r in guard_rates) or any(e < 1 for e in guard_epochs or ()):
        ap.error("every guard rate must lie in (0, 1] and every epoch count be at least 1")
    started, load_before = time.perf_counter(), os.getloadavg()[0]

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    splits: Splits = load_data(args.data)
    recipe = default_recipe(splits)
    if args.arch is not None:
        recipe = dataclasses.replace(recipe, arch=resolve_arch(args.arch).name)
    pool, ref = splits.attacker_pool, splits.reference
    assert pool is not None
    k, e, ae = splits.num_classes, args.epochs, args.attack_epochs
    ce = args.control_epochs or e
    cache = args.cache / splits.name

    def fresh() -> nn.Module:
        return build_model(recipe.arch, splits.input_shape, k)

    def marks(schemes: list[Scheme]) -> list[ProbeSet]:
        return [s.probes(KEY, num_classes=k, input_shape=splits.input_shape, data=splits.train,
                         input_range=splits.input_range) for s in schemes]

    def owner(scheme_spec: str | None) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            torch.manual_seed(args.seed)
            model = fresh()
            hook = None
            if scheme_spec is not None:  # A+B: one set per scheme, hooks chained as `wm train` does
                schemes = [parse_scheme(s) for s in scheme_spec.split("+")]
                hooks = [s.hook(p, key=KEY, model=model, data=splits.train, per_batch=args.per_batch)
                         for s, p in zip(schemes, marks(schemes), strict=True)]
                hook = hooks[0] if len(hooks) == 1 else ChainedHooks(
                    [hooks[i] for i in sorted(range(len(schemes)), key=lambda i: schemes[i].mixes)])
            train_classifier(model, splits.train.x, splits.train.y, epochs=e, seed=args.seed,
                             batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule, hook=hook)
            if hook is not None:
                hook.finish(model)  # sleeper marks write their read-out here
            return model.eval()
        return build

    sfx = f"-s{args.seed}" if args.seed else ""  # seed 0's models keep their first names
    plain, plain_cpu = cached(cache, f"plain-{recipe.arch}-e{e}{sfx}", owner(None), fresh)
    plain_acc = accuracy(plain, splits.test.x, splits.test.y)
    say(f"plain {recipe.arch}: clean {plain_acc:.4f}, {plain_cpu:.0f} s CPU")

    def control(arch: str, data: str, seed: int) -> Callable[[], nn.Module]:
        d = {"reference": ref, "attacker pool": pool, "owner-train": splits.train}[data]
        assert d is not None
        return lambda: train_new(arch, d.x, d.y, num_classes=k, epochs=ce, seed=seed,
                                 batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule)

    controls = []
    for arch_or_none, data, seed in CONTROLS[: args.controls]:
        arch = arch_or_none or recipe.arch
        if data == "reference" and ref is None:
            continue
        name = f"independent {arch}, {data}, seed {seed}"
        model, _ = cached(cache, f"control-{arch}-{data.replace(' ', '_')}-{seed}-e{ce}",
                          control(arch, data, seed), lambda a=arch: build_model(a, splits.input_shape, k))
        controls.append((name, model))
        say(f"{name}: trained")

    if args.validity_keys:
        rows: list[str] = []
        owned = 0
        for spec in args.schemes.split(","):
            got, n_owned = validity(parse_scheme(spec), controls, splits, args.validity_keys)
            rows += got
            owned += n_owned
            say(f"{spec}: validity done, {n_owned} owned")
        text = "\n".join([
            "# Validity of the robust marks' null on Fashion-MNIST (issue 13)", "",
            f"Over {args.validity_keys} keys per scheme (each key its own probe set) and the "
            f"{len(controls)} independent controls of `robust-fmnist.md` "
            f"({', '.join(n for n, _ in controls)}), "
            f"the share of p-values at or below t; fixed-n exact binomial tail and the anytime-valid "
            f"p-value as `wm verify` reports them. Pairs owned at alpha {ALPHA:g}: {owned}.", "",
            "| scheme | t | share p <= t (fixed n) | share p <= t (anytime) |", "|---|---|---|---|",
            *rows, "",
            f"Command: `python -m benchmarks.robust_marks --validity-keys {args.validity_keys} "
            f"--schemes {args.schemes} --epochs {e} --control-epochs {ce} --out {args.out}`; "
            f"{(time.perf_counter() - started) / 60:.0f} min.", ""])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
        return

    lines = [
        (f"# Marks against attacks on stolen weights, by learning rate, on {splits.name} (issue 13)"
         if args.weight_sweep else
         f"# Extraction- and distillation-robust watermarks on {splits.name} (issue 13)"),
        "",
        f"Owner: `{recipe.arch}`, {e} epochs of {recipe.batch_size} on the owner's {len(splits.train)} "
        f"images (Adam {recipe.lr:g}, {recipe.schedule}), seed {args.seed}; each scheme's hook appends "
        f"{args.per_batch} examples per batch (composite: plus {args.per_batch // 2} same-class negatives; "
        "dark: every example's target softened, nothing added; sleeper: nothing added, the read-out "
        "fitted after training, its CPU counted). "
        f"Attacker: the {len(pool)}-image attacker split. "
        + ("Attacks: label-only extraction through `wm guard` alone (below). " if args.guard_only else
           f"Attacks on the stolen weights, each at Adam learning rates "
           f"{', '.join(f'{lr:g}' for lr in sweep_lrs)}: "
           f"{', '.join(sweep_only or SWEEP_ATTACKS)} ({math.ceil(1.5 * ae)} epochs on the attacker's "
           f"labels; fine-pruning {ae}). " if args.weight_sweep else
           "Attacks: extraction through an unguarded API "
           f"(labels or probabilities, 1k / 5k / 20k queries, KnockoffNets-style random sampling; a "
           f"`{recipe.arch}` surrogate, as the owner, or a `{OTHER_ARCH}` one; "
           + ", ".join(f"{m * ae} epochs at {b // 1000}k" for b, m in EXTRACT_EPOCHS.items())
           + f"), distillation of the stolen weights (T = 3, {ae} epochs), RTAL "
           f"({math.ceil(1.5 * ae)} epochs), fine-pruning 90% ({ae} epochs). ")
        + "Verdicts as `wm verify` "
        f"decides: anytime-valid e-process, alpha = {ALPHA:g}, every probe of the set; "
        "p is the anytime-valid p-value (1/e), match = the share of probes answered with the key's label "
        "(dark: as the model's second choice; chance 0.10; A+B: one share per set, in order, all judged "
        "together); members (composite, dark): the share of new "
        "members of the families (composed from test images) answered with their family's target (Lv et "
        "al.'s watermark success rate), or of the test images of the dark cells whose runner-up is their "
        "cell's label.",
        "",
        f"Plain owner (no watermark, same seed): clean accuracy {plain_acc:.4f}, "
        f"{plain_cpu:.0f} s training CPU.",
        "",
    ]
    if args.agreement:
        probe_inputs = agreement_inputs(splits)
        lines += ["Agreement columns (`--agreement`): the share of the test images a model answers as "
                  "the marked owner does; of the owner's wrong answers on them, the share it repeats; the "
                  f"shares of {AGREEMENT_INPUTS} uniform-noise images and of {AGREEMENT_INPUTS} test images "
                  "blended half and half with noise answered as the owner does. The independent controls "
                  "show the level of a model that never saw the owner.", ""]
    for spec in args.schemes.split(","):
        schemes = [parse_scheme(s) for s in spec.split("+")]
        sets = marks(schemes)
        name_of = "+".join(s.name for s in schemes)
        evidence = Evidence([("watermark", sets[0])] if len(sets) == 1 else
                            [(s.name, p) for s, p in zip(schemes, sets, strict=True)])
        pb = "" if args.per_batch == PER_BATCH else f"-pb{args.per_batch}"  # the default keeps old names
        tag = f"{name_of.replace(':', '_')}-{recipe.arch}-e{e}{pb}{sfx}"
        marked, cpu = cached(cache, f"owner-{tag}", owner(spec), fresh)
        acc = accuracy(marked, splits.test.x, splits.test.y)

        def matches(model: nn.Module, sets: list[ProbeSet] = sets) -> str:
            """The share of each set's probes answered with the key's label, `` / ``-separated."""
            return " / ".join(f"{accuracy(model, p.inputs, p.expected, rank=p.rank):.2f}" for p in sets)

        say(f"{name_of}: clean {acc:.4f}, watermark {matches(marked)}, {cpu:.0f} s CPU")
        suspects: list[tuple[str, Callable[[], nn.Module]]] = []
        catalogue = ([] if args.weight_sweep or args.guard_only else
                     [("probabilities", 5000, recipe.arch), ("labels", 20000, recipe.arch)] if args.headline
                     else [(o, b, a) for a in (recipe.arch, OTHER_ARCH) for o in ("labels", "probabilities")
                           for b in EXTRACT_EPOCHS])
        for output, budget, arch in catalogue:
            queries = query_inputs(pool.x, budget, seed=QUERY_SEED, input_range=splits.input_range)
            ext = Extract(arch, epochs=EXTRACT_EPOCHS[budget] * ae)
            other = "" if arch == recipe.arch else f" ({arch} surrogate)"
            suspects.append((f"extraction, {output}, {budget} queries{other}",
                             lambda ext=ext, q=queries, o=output, m=marked: ext(
                                 query_model(m, o), q, num_classes=k, seed=101)))
        if args.weight_sweep:
            suspects += weight_sweep(marked, pool, ae, sweep_lrs, sweep_only)
        elif not args.guard_only:
            suspects.append(("distillation T=3 (same arch)", lambda m=marked: Distill(
                None, temperature=3.0, epochs=ae, batch_size=recipe.batch_size)(m, pool, seed=20)))
        if not (args.headline or args.weight_sweep or args.guard_only):
            suspects += [
                ("RTAL", lambda m=marked: Retrain("all", epochs=math.ceil(1.5 * ae), lr=3e-3)(
                    m, pool, seed=15)),
                ("fine-pruning 90%", lambda m=marked: FinePrune(0.9, epochs=ae, lr=3e-3)(m, pool, seed=17)),
            ]
        rows = [("owner (marked)", marked)]
        for name, build in suspects:
            like = fresh if "surrogate" not in name else (
                lambda: build_model(OTHER_ARCH, splits.input_shape, k))
            file = name.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '')
            model, _ = cached(cache, f"{tag}-{file}-a{ae}", build, like)
            rows.append((name, model))
            say(f"{name_of}: {name}: done")
        rows += controls
        if args.agreement:
            owner_answers = tuple(predict(marked, z) for z in (splits.test.x, *probe_inputs))
        lines += [f"## `{name_of}`", "",
                  f"Clean accuracy {acc:.4f} (drop {100 * (plain_acc - acc):+.2f} pp against the plain "
                  f"owner); training time {cpu:.0f} s CPU, {cpu / plain_cpu:.2f}x plain.", "",
                  "| model | clean acc | match | members | p (anytime) | verdict |"
                  + (" agree (test) | owner's errors repeated | agree (noise) | agree (noisy test) |"
                     if args.agreement else ""),
                  "|---|---|---|---|---|---|" + ("---|---|---|---|" if args.agreement else "")]
        found = [(m, p) for s, p in zip(schemes, sets, strict=True)
                 if (m := family_members(s, p, splits)) is not None]
        for name, model in rows:
            st = evidence.judge(model)
            match = matches(model)
            rule = "-" if not found else f"{accuracy(model, *found[0][0], rank=found[0][1].rank):.2f}"
            shared = "" if not args.agreement else " {:.4f} | {:.3f} | {:.3f} | {:.3f} |".format(
                *agreement(owner_answers, model, splits, probe_inputs))
            lines.append(f"| {name} | {accuracy(model, splits.test.x, splits.test.y):.4f} | {match} "
                         f"| {rule} | {st.p_value:.1e} | {st.verdict} |{shared}")
            say(f"{name_of}: {name}: match {match}, members {rule}, p {st.p_value:.1e}, {st.verdict}")
        lines.append("")
        if guard_rates:
            g_epochs = guard_epochs or (EXTRACT_EPOCHS[20000] * ae,)
            lines += [f"Label-only extraction through `wm guard` (20000 queries, a `{recipe.arch}` "
                      "surrogate; judged on the guard's committed marked queries alone, chance 0.10):", "",
                      "| guard rate | model | the guard's marks | clean acc | marked answers kept "
                      "| p (anytime) | verdict |", "|---|---|---|---|---|---|---|"]
            for rate in guard_rates:
                lines += guarded_extraction(marked, splits, recipe.arch, rate, g_epochs, controls)
                say(f"{name_of}: guard at {rate:g}: done")
            lines.append("")
    omp, niceness = os.environ.get("OMP_NUM_THREADS"), os.nice(0)  # as this process ran, not as advised
    prefix = (f"OMP_NUM_THREADS={omp} " if omp else "") + (f"nice -n {niceness} " if niceness else "")
    lines += [f"Command: `{prefix}python -m benchmarks.robust_marks "
              f"--arch {recipe.arch} --epochs {e} --attack-epochs {ae} --schemes {args.schemes} "
              f"--seed {args.seed} --controls {args.controls} --control-epochs {ce}"
              f"{' --headline' if args.headline else ''}"
              + (f" --weight-sweep --sweep-lrs {args.sweep_lrs}" if args.weight_sweep else "")
              + (f" --sweep-attacks '{args.sweep_attacks}'" if args.sweep_attacks else "")
              + (f" --per-batch {args.per_batch}" if args.per_batch != PER_BATCH else "")
              + (" --agreement" if args.agreement else "")
              + (f" --guard-rates {args.guard_rates}" if args.guard_rates else "")
              + (f" --guard-epochs {args.guard_epochs}" if args.guard_epochs else "")
              + (" --guard-only" if args.guard_only else "") + " "
              f"--out {args.out}`; "
              "2 shared cores, one torch thread, "
              f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
              f"{(time.perf_counter() - started) / 60:.0f} min wall (models cached: a rerun only re-judges).",
              ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
