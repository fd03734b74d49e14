"""Benchmark: fingerprints on Fashion-MNIST with the model-level conformal null (issue 14).

Every method is scored on the *same* held-out models:

- the owner: an ``mlp`` trained on the owner split (30k);
- surrogates extracted through the owner's API (:mod:`attacks.extract`) from the
  attacker split: labels and probabilities, 5k and 20k queries, the owner's
  architecture (two seeds each) and ``cnn`` (one seed each);
- independents trained on the reference split (10k) with the zoo's recipes and
  a seed stream (``evaluation``) disjoint from the null's: ``--independents``
  of the owner's architecture and 5 ``cnn``;
- the null: ``K`` zoo references of the owner's architecture (stream ``null``),
  committed with each probe set (:class:`core.nulls.Conformal`); conformal p
  of every held-out model by :meth:`core.nulls.Conformal.p_value`, on all probes.

Methods: AKH, SAC-w and SAC-m as committed probe sets (label agreement), SAC's
correlation distance (probabilities and label-only) on the same inputs, and
CAE (``--cae-eps``, one row per epsilon; small ensembles of the owner's
architecture, scored against the same zoo null; ``--cae-eps ''`` skips it).
The owner is an MLP so that ``K = 99`` references of its own architecture fit
a 2-core budget; every model is cached (``--cache``).

Run: ``python -m benchmarks.fingerprint --data fashion-mnist``
(writes ``benchmarks/results/fingerprint-fmnist.md``).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attacks.extract import Extract, query_inputs, query_model
from core.arch import build_model
from core.data import load_fashion_mnist
from core.modelio import weights_digest
from core.nulls import Conformal, conformal_p_value
from core.probeset import ProbeSet
from core.training import accuracy, predict, train_new
from fingerprint.akh import AKH
from fingerprint.build import EnsembleConfig, build_fingerprint
from fingerprint.cae import ConferrableExamples
from fingerprint.conformal import conformal_null, match_bits
from fingerprint.pipeline import SelectionScheme, ZooFingerprint, build_zoo_fingerprint, zoo_references
from fingerprint.sac import SAC, correlation_matrix, sac_distance
from fingerprint.zoo import ReferenceZoo, ZooRecipe

OUT = Path(__file__).parent / "results" / "fingerprint-fmnist.md"
OWNER_ARCH, OTHER_ARCH = "mlp", "cnn"
OWNER_EPOCHS = 10
RECIPES = {OWNER_ARCH: ZooRecipe(OWNER_ARCH, epochs=5, batch_size=128),
           OTHER_ARCH: ZooRecipe(OTHER_ARCH, epochs=2, batch_size=128)}


def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """ROC AUC of ``pos`` above ``neg`` (ties count half)."""
    p, q = np.asarray(pos, dtype=float)[:, None], np.asarray(neg, dtype=float)[None, :]
    return float(((p > q).sum() + 0.5 * (p == q).sum()) / (p.size * q.size))


def _cpu() -> float:
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def _cached(path: Path, arch: str, shape: tuple[int, ...], make: Callable[[], nn.Module]) -> nn.Module:
    if path.is_file():
        m = build_model(arch, shape, 10)
        m.load_state_dict(torch.load(path, weights_only=True))
        return m.eval()
    m = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(m.state_dict(), path)
    return m.eval()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--references", type=int, default=99, help="K, the null's references")
    parser.add_argument("--independents", type=int, default=40,
                        help="held-out independents of the owner's architecture")
    parser.add_argument("--size", type=int, default=100, help="probes per fingerprint")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("WM_HOME", "~/.wm"))
                        .expanduser() / "cache" / "fingerprint-fmnist")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cae-eps", default="0.1,0.25",
                        help="CAE epsilons (inputs in [0, 1]), comma-separated; empty: no CAE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t_start, cpu_start = time.time(), _cpu()
    sp = load_fashion_mnist()
    assert sp.attacker_pool is not None and sp.reference is not None
    shape = sp.input_shape
    owner = _cached(args.cache / f"owner-{OWNER_ARCH}-e{OWNER_EPOCHS}.pt", OWNER_ARCH, shape,
                    lambda: train_new(OWNER_ARCH, sp.train.x, sp.train.y, num_classes=10,
                                      epochs=OWNER_EPOCHS, seed=0, batch_size=128))
    owner_acc = accuracy(owner, sp.test.x, sp.test.y)
    print(f"owner {OWNER_ARCH}: test accuracy {owner_acc:.4f}", flush=True)

    # Held-out suspects: surrogates extracted through the owner's API, and independents.
    surrogates: list[tuple[str, nn.Module]] = []
    plan = [(a, out, q, s) for a, seeds in ((OWNER_ARCH, (1, 2)), (OTHER_ARCH, (1,)))
            for out in ("labels", "probabilities") for q in (5000, 20000) for s in seeds]
    for arch, output, budget, seed in plan:
        epochs = {(OWNER_ARCH, 5000): 20, (OWNER_ARCH, 20000): 10,
                  (OTHER_ARCH, 5000): 8, (OTHER_ARCH, 20000): 4}[(arch, budget)]
        att = Extract(arch=arch, epochs=epochs)
        queries = query_inputs(sp.attacker_pool.x, budget, seed=seed)
        name = f"{arch} {output[:5]} {budget // 1000}k"
        m = _cached(args.cache / f"surrogate-{att.name}-{output}-{budget}-s{seed}.pt".replace(":", "_"),
                    arch, shape, lambda att=att, output=output, queries=queries, seed=seed: att(
                        query_model(owner, output), queries, num_classes=10, seed=seed))
        surrogates.append((name, m))
    print(f"{len(surrogates)} surrogates", flush=True)
    zoo = ReferenceZoo(sp.reference.x, sp.reference.y, 10, cache_dir=args.cache / "zoo")
    indep_same = zoo_references(zoo, [RECIPES[OWNER_ARCH]], args.independents, "evaluation",
                                workers=args.workers)
    indep_other = zoo_references(zoo, [RECIPES[OTHER_ARCH]], 5, "evaluation", workers=args.workers)
    print(f"{len(indep_same) + len(indep_other)} independents", flush=True)
    t_suspects = time.time() - t_start

    # The null's references are trained (or loaded) inside the first build; time it apart.
    pool_x = torch.cat([sp.train.x, sp.test.x])
    pool_y = torch.cat([sp.train.y, sp.test.y])
    schemes: list[tuple[str, SelectionScheme]] = [
        ("AKH", AKH(n=args.size)), ("SAC-w", SAC(n=args.size, mode="w")),
        ("SAC-m", SAC(n=args.size, mode="m")),
    ]
    fps: list[tuple[str, ProbeSet, Conformal, int, float]] = []
    first: ZooFingerprint | None = None
    for label, scheme in schemes:
        c0 = _cpu()
        fp = build_zoo_fingerprint(owner, scheme, owner_arch=OWNER_ARCH, pool_x=pool_x, pool_y=pool_y,
                                   zoo=zoo, recipes=[RECIPES[OWNER_ARCH]], references=args.references,
                                   generation=10, workers=args.workers)
        first = first or fp
        fps.append((label, fp.probes, fp.null, fp.selection.candidates, _cpu() - c0))
        print(f"{label}: built in {fps[-1][4]:.0f} CPU s", flush=True)
    assert first is not None
    refs = first.references
    zoo_cpu = sum(m.cpu_s for m in refs) + sum(m.cpu_s for m in first.generation)
    for eps in [float(e) for e in args.cae_eps.split(",") if e.strip()]:
        c0 = _cpu()
        cae = build_fingerprint(
            owner, owner_arch=OWNER_ARCH, owner_digest=weights_digest(owner.state_dict()),
            train_x=sp.train.x, train_y=sp.train.y, seeds_x=pool_x, seeds_y=pool_y, num_classes=10,
            scheme=ConferrableExamples(n=args.size, eps=eps, candidates=2, threshold=0.0),
            ensembles=EnsembleConfig(archs=(OWNER_ARCH,), surrogates=4, references=4, epochs=5),
            cache_dir=args.cache / "cae", workers=args.workers)
        # scored against the same zoo null as the other methods
        null = conformal_null(refs, cae.probes.inputs, cae.probes.expected, data=zoo.data)
        fps.append((f"CAE eps={eps:g}", cae.probes, null, 2 * args.size, _cpu() - c0))
        print(f"CAE eps={eps:g}: built in {fps[-1][4]:.0f} CPU s", flush=True)

    rows, prow, notes = [], [], []
    sur_names = sorted({n for n, _ in surrogates}, key=[n for n, _ in surrogates].index)
    for label, probes, null, candidates, cpu in fps:
        x, y = probes.inputs, probes.expected
        n = len(probes)
        idx = list(range(n))
        sb = match_bits([m for _, m in surrogates], x, y)
        ib = match_bits([m.module for m in indep_same], x, y)
        ob = match_bits([m.module for m in indep_other], x, y)
        rb = [int(v) for v in null.reference_scores(idx)]
        sp_ = [null.p_value(idx, b.tolist()) for b in sb]
        ip = [null.p_value(idx, b.tolist()) for b in ib]
        op = [null.p_value(idx, b.tolist()) for b in ob]
        s_rate, i_rate = sb.mean(axis=1), ib.mean(axis=1)
        by = {nm: [float(s_rate[i]) for i, (k, _) in enumerate(surrogates) if k == nm] for nm in sur_names}
        rows.append(
            f"| {label} (labels) | {n} | " + " | ".join(f"{np.mean(v):.2f}" for v in by.values())
            + f" | {i_rate.mean():.2f} [{i_rate.min():.2f}-{i_rate.max():.2f}] | {ob.mean():.2f} | "
            f"{np.mean(rb) / n:.2f} | {auc(s_rate, i_rate):.3f} | {auc(s_rate, ob.mean(axis=1)):.3f} |")
        prow.append(_prow(f"{label} (labels)", sp_, ip, op, len(refs), cpu))
        # SAC's own score: the correlation distance, probabilities and label-only, same inputs.
        if label.startswith("SAC"):
            for labels_only in (False, True):
                oc = correlation_matrix(owner, x, labels_only=labels_only)

                def score(m: nn.Module, oc: torch.Tensor = oc, lo: bool = labels_only,
                          x: torch.Tensor = x) -> float:
                    return -sac_distance(oc, m, x, labels_only=lo)

                ss = [score(m) for _, m in surrogates]
                iss = [score(m.module) for m in indep_same]
                oss = [score(m.module) for m in indep_other]
                rs = [score(m.module) for m in refs]
                kind = "label-only" if labels_only else "probabilities"
                bys = {nm: [ss[i] for i, (k, _) in enumerate(surrogates) if k == nm] for nm in sur_names}
                rows.append(
                    f"| {label} correlation, {kind} (distance) | {n} | "
                    + " | ".join(f"{-np.mean(v):.3f}" for v in bys.values())
                    + f" | {-np.mean(iss):.3f} [{-max(iss):.3f}-{-min(iss):.3f}] | {-np.mean(oss):.3f} | "
                    f"{-np.mean(rs):.3f} | {auc(ss, iss):.3f} | {auc(ss, oss):.3f} |")
                prow.append(_prow(f"{label} correlation, {kind}", [conformal_p_value(v, rs) for v in ss],
                                  [conformal_p_value(v, rs) for v in iss],
                                  [conformal_p_value(v, rs) for v in oss], len(refs), cpu))
        notes.append(f"- {label}: {probes.scheme}, {len(probes)} kept of {candidates} candidates "
                     f"(AKH, SAC-w: that passed the filter; CAE: optimised); null floor "
                     f"{null.p_floor:.3g}; references' match rate "
                     f"{np.mean(rb) / n:.3f} (max {max(rb) / n:.2f}).")
        print(rows[-1], flush=True)

    fid = [float((predict(m, sp.test.x) == predict(owner, sp.test.x)).float().mean()) for _, m in surrogates]
    acc_s = [accuracy(m, sp.test.x, sp.test.y) for _, m in surrogates]
    acc_i = [accuracy(m.module, sp.test.x, sp.test.y) for m in indep_same]
    acc_r = [accuracy(m.module, sp.test.x, sp.test.y) for m in refs]
    wall = time.time() - t_start
    lines = [
        "# Fingerprints on Fashion-MNIST: AKH, SAC, with a model-level conformal null",
        "",
        f"Owner: `{OWNER_ARCH}`, {OWNER_EPOCHS} epochs on the owner split (30k), test accuracy "
        f"{owner_acc:.4f}. Null: K = {len(refs)} references of the owner's architecture "
        f"(`{RECIPES[OWNER_ARCH].name}`) on the reference split (10k), test accuracy "
        f"{np.mean(acc_r):.3f} [{min(acc_r):.3f}-{max(acc_r):.3f}]; their match bits, digests and recipe "
        "are committed in each probe set's `Conformal` null, and every p below is "
        "`Conformal.p_value` (or `conformal_p_value` on the same references, for SAC's distances).",
        "",
        f"Held-out suspects (the same for every method): {len(surrogates)} surrogates extracted "
        "through the owner's API from the attacker split (`attacks.extract`; `labels`/`proba` = "
        "answers, 5k/20k queries; owner's architecture 2 seeds each, `cnn` 1 seed each), test "
        f"accuracy {np.mean(acc_s):.3f} [{min(acc_s):.3f}-{max(acc_s):.3f}], fidelity to the owner "
        f"{np.mean(fid):.3f} [{min(fid):.3f}-{max(fid):.3f}]; {len(indep_same)} independents of the "
        f"owner's architecture (accuracy {np.mean(acc_i):.3f}) and {len(indep_other)} `cnn` "
        f"(`{RECIPES[OTHER_ARCH].name}`), on the reference split with a seed stream disjoint from "
        "the null's.",
        "",
        "## Match rates (mean over models) and AUC",
        "",
        "Surrogate columns: architecture, answers, queries. `indep` = independents; `refs` = the "
        "null's references. For the correlation rows the figure is SAC's distance (lower = closer "
        "to the owner) and the AUC ranks by closeness.",
        "",
        "| fingerprint | n | " + " | ".join(sur_names)
        + f" | indep {OWNER_ARCH} | indep {OTHER_ARCH} | refs | AUC surrogates vs indep {OWNER_ARCH} "
        f"| AUC vs indep {OTHER_ARCH} |",
        "|" + "---|" * (7 + len(sur_names)),
        *rows,
        "",
        f"## Conformal p-values (K = {len(refs)}, floor {1 / (len(refs) + 1):.3g})",
        "",
        "`surr. at floor`: surrogates whose p is the floor; `surr. p <= 0.01`; `indep <= t`: share "
        "of independents (owner's architecture) with p <= t (uniform: t); `CPU s`: generation and "
        "scoring of this fingerprint (references loaded from the zoo after the first build).",
        "",
        "| fingerprint | surr. at floor | surr. p <= 0.01 | surr. max p | indep <= 0.05 | indep <= 0.1 "
        f"| indep <= 0.5 | indep {OTHER_ARCH} min p | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
        *prow,
        "",
        "## Notes",
        "",
        *notes,
        f"- Reference zoo: {len(refs)} null + 10 generation references of `{RECIPES[OWNER_ARCH].name}` "
        f"took {zoo_cpu / 60:.1f} CPU-minutes to train (0 when loaded from the zoo cache: the zoo is "
        "paid once per data set; a first run's figure is the honest one, and benchmarks/README.md "
        "states the cold run's).",
        f"- Suspects took {t_suspects:.0f} s wall to train or load; the whole run {wall / 60:.1f} min "
        f"wall, {(_cpu() - cpu_start) / 60:.1f} CPU-minutes, on 2 shared cores (other agents busy), "
        f"{args.workers} workers, one torch thread each.",
        f"- Uniformity: with {len(indep_same)} independents one standard error at t = 0.05 is "
        f"{np.sqrt(0.05 * 0.95 / max(1, len(indep_same))):.3f}.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} in {wall:.0f} s")


def _prow(label: str, sp_: Sequence[float], ip: Sequence[float], op: Sequence[float], k: int,
          cpu: float) -> str:
    floor = 1 / (k + 1)
    s, i = np.asarray(sp_), np.asarray(ip)
    return (f"| {label} | {int((s <= floor + 1e-12).sum())}/{s.size} | {int((s <= 0.01).sum())}/{s.size} "
            f"| {s.max():.3g} | {(i <= 0.05).mean():.3f} | {(i <= 0.1).mean():.3f} | "
            f"{(i <= 0.5).mean():.3f} | {min(op):.3g} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
