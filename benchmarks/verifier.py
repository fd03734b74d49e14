"""Queries needed to decide, per suspect: black-box verification over loopback HTTP.

For each owner seed, a CNN is trained on ``digits`` with the default 100-probe
trigger-set watermark; its suspects are the exact copy, a copy fine-tuned on
the attacker pool (all layers, 10 epochs, lr 1e-3), a 50% magnitude-pruned
copy, and five independently trained models (cnn, cnn, mlp, cnn-wide,
mlp-wide). Each is served by the reference server (:mod:`verifier.server`)
with labels and with probabilities, and verified over the Open Inference
Protocol (V2) and KServe V1 with one input per request (so that the count is
exact), probes shuffled 1:1 among decoys, budget 100 probes.

Reported per suspect: the share of the 100 watermark probes it matches, the
verdict, and the probe queries after which the anytime-valid evidence first
reached alpha = 1e-6 and 1e-9 (``-`` if never), as the range over owner seeds,
protocols and outputs.

Run: ``python -m benchmarks.verifier [--seeds 3]``; writes ``benchmarks/results/verifier.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import tempfile
from pathlib import Path

import torch
from torch import nn

from core.arch import build_model
from core.data import load_digits
from core.modelio import load_model, save_model
from core.serving import running_server
from core.training import accuracy, predict, train_classifier, train_new
from verifier.server import ServedModel, build_app
from verifier.session import ProbeSource, QueryPlan, VerificationSession
from verifier.stats import log_e_trajectory
from verifier.wire import HttpSettings, make_client
from watermark import WatermarkHook, WatermarkKey, parse_scheme

INDEPENDENT = ("cnn", "cnn", "mlp", "cnn-wide", "mlp-wide")


def prune(model: nn.Module, fraction: float = 0.5) -> nn.Module:
    """Zero the smallest-magnitude ``fraction`` of every weight matrix or kernel."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for p in pruned.parameters():
            if p.ndim > 1:
                threshold = p.abs().flatten().kthvalue(int(p.numel() * fraction)).values
                p[p.abs() <= threshold] = 0.0
    return pruned.eval()


def first_reach(bits: list[bool], p0: float, alpha: float) -> int | None:
    """Probes after which the e-process first reaches 1/alpha."""
    from core.probeset import Binomial

    for t, v in enumerate(log_e_trajectory(Binomial(p0), bits), start=1):
        if v >= math.log(1 / alpha):
            return t
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/verifier.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = load_digits()
    pool = splits.attacker_pool
    assert pool is not None
    rows: dict[str, dict[str, list]] = {}
    for seed in range(args.seeds):
        key = WatermarkKey(bytes([seed]) * 32)
        probes = parse_scheme("trigger-set").probes(key, num_classes=10,
                                                    input_shape=splits.input_shape, data=splits.train)
        torch.manual_seed(seed)
        owner = build_model("cnn", splits.input_shape, 10)
        train_classifier(owner, splits.train.x, splits.train.y, epochs=30, seed=seed,
                         hook=WatermarkHook(probes))
        ft = copy.deepcopy(owner)
        train_classifier(ft, pool.x, pool.y, epochs=10, seed=100 + seed, lr=1e-3)
        suspects = {"exact copy": owner, "fine-tuned (attacker pool)": ft,
                    "pruned 50% (magnitude)": prune(owner)}
        for j, arch in enumerate(INDEPENDENT):
            suspects[f"independent {j + 1} ({arch})"] = train_new(
                arch, splits.train.x, splits.train.y, num_classes=10, epochs=10, seed=1000 * seed + j)
        with tempfile.TemporaryDirectory() as tmp:
            served = {}
            for i, (name, m) in enumerate(suspects.items()):
                path = save_model(m, Path(tmp) / f"{i}.pt2", input_shape=splits.input_shape,
                                  num_classes=10)
                loaded = load_model(path)
                for output in ("labels", "probabilities"):
                    served[f"s{i}-{output}"] = (name, ServedModel(loaded, output))  # type: ignore[arg-type]
            with running_server(build_app({k: v[1] for k, v in served.items()})) as srv:
                for model_name, (name, _) in served.items():
                    r = rows.setdefault(name, {"acc": [], "wm": [], "verdict": [], "q6": [], "q9": []})
                    r["acc"].append(accuracy(suspects[name], splits.test.x, splits.test.y))
                    r["wm"].append(float((predict(suspects[name], probes.inputs)
                                          == probes.expected).float().mean()))
                    for protocol, route in (("oip", f"/v2/models/{model_name}/infer"),
                                            ("tfserving", f"/v1/models/{model_name}:predict")):
                        src = [ProbeSource("owner", probes, tuple(range(len(probes))))]
                        plan = QueryPlan.build(src, decoy_count=len(splits.test), budget=100,
                                               batch_size=1)
                        with make_client(protocol, srv.url + route, num_classes=10,
                                         input_shape=splits.input_shape,
                                         settings=HttpSettings(concurrency=1)) as client:
                            res = VerificationSession(
                                client, src, splits.test.x, plan,
                                Path(tmp) / f"{model_name}-{protocol}.jsonl",
                                alpha=1e-9, mode="fixed").run()
                        bits = [int(lab) == int(probes.expected[idx]) for rec in res.records
                                for (s, idx, _), lab in zip(rec["items"], rec["labels"], strict=True)
                                if s >= 0]
                        r["verdict"].append("owned" if first_reach(bits, 0.1, 1e-6) else "not_owned")
                        r["q6"].append(first_reach(bits, 0.1, 1e-6))
                        r["q9"].append(first_reach(bits, 0.1, 1e-9))

    def span(values: list) -> str:
        if any(v is None for v in values):
            return "-" if all(v is None for v in values) else "sometimes -"
        lo, hi = min(values), max(values)
        return f"{lo}" if lo == hi else f"{lo}-{hi}"

    lines = [
        "# Verifier: probe queries needed per suspect",
        "",
        f"{args.seeds} owner seeds x 2 protocols (V2, V1) x 2 outputs (labels, probabilities); "
        "one input per request; probes 1:1 among decoys; budget 100 probes; "
        f"torch {torch.__version__}, {platform.machine()}.",
        "",
        "| suspect | clean acc. | watermark match | verdict | probes to p<=1e-6 | probes to p<=1e-9 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        verdicts = sorted(set(r["verdict"]))
        lines.append(
            f"| {name} | {min(r['acc']):.3f}-{max(r['acc']):.3f} | {min(r['wm']):.2f}-{max(r['wm']):.2f} "
            f"| {'/'.join(verdicts)} | {span(r['q6'])} | {span(r['q9'])} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
