"""The guard's cost and its evidence: latency, throughput, accuracy cost, extraction p-values.

Three parts, each written to ``benchmarks/results/guard.md``:

1. **Latency and throughput** (``--part speed``): ``wm serve`` (the owner's
   CNN) and ``wm guard`` in front of it (one guard per ``--workers`` count,
   default rate 1% with PRADA monitoring and the fsynced journal on) run as
   separate processes on loopback; ``wrk`` (Debian package ``wrk``) sends
   single-input Open Inference Protocol requests, rotating over 1,617 distinct
   inputs, straight to the upstream and through each guard, interleaved within
   every round. Reported: p50/p99 latency and requests per second at 1 and 16
   connections, the CPU each process spent per request (from ``/proc``: robust
   to other load on a shared machine), the added p50 and the throughput ratio
   guard/direct (medians over rounds, with the spread), and the load average.
2. **Accuracy cost** (``--part cost``): every digits image and four noisy copies
   (8,985 inputs) through the guard at each rate; share of answers changed and
   test accuracy, against the expected ``R * (1 - 1/C)``.
3. **Extraction** (``--part extraction``): per rate, output kind and seed, a
   fresh owner key (so a fresh guard key); the attacker sends the 539-image
   attacker pool and two noisy copies (1,617 queries) through the guard,
   trains a CNN on the answers (labels, or probabilities as soft targets),
   ``wm guard commit`` commits the marked queries, and ``wm verify --fixed``
   (exact binomial p-value) tests the surrogate and four independent models:
   a CNN and an MLP trained on the owner's data with other seeds, a CNN trained
   on the attacker pool's ground truth, and a CNN extracted from the *unguarded*
   upstream with the same queries (it learned the owner's function, not the key).

Run: ``python -m benchmarks.guard [--part all|speed|cost|extraction] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from core.data import load_digits
from core.modelio import load_model, save_model
from core.serving import running_server
from core.training import accuracy, train_new
from guard.probes import commit_guard_probes
from guard.service import GuardOptions, GuardService, open_vault
from registry.keys import OwnerKey, generate_owner_key
from registry.log import Registry
from registry.register import register_model
from verifier.server import ServedModel, build_app
from verifier.verify import VerifyOptions, verify_suspect
from verifier.wire import HttpSettings

MODEL = "digits-owner"
NAME = "digits"
PASSPHRASE = "benchmark-passphrase"
WM = [sys.executable, "-c", "from cli.main import main; main()"]


def queries(copies: int = 2, seed: int = 0) -> np.ndarray:
    """The attacker pool and ``copies`` Gaussian (sigma 0.05) noisy copies, clipped to [0, 1]."""
    pool = load_digits().attacker_pool.x.numpy()
    rng = np.random.default_rng(seed)
    noisy = [np.clip(pool + rng.normal(0, 0.05, pool.shape).astype(np.float32), 0, 1)
             for _ in range(copies)]
    return np.concatenate([pool, *noisy]).astype(np.float32)


def oip(x: np.ndarray) -> dict[str, Any]:
    """An Open Inference Protocol request body."""
    return {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}


@dataclass
class Owner:
    home: Path
    key: OwnerKey
    url: str


def make_owner(home: Path, model_path: Path) -> Owner:
    """A fresh owner key and registry with the owner model registered."""
    key = generate_owner_key(home, "owner", PASSPHRASE)
    url = f"sqlite:///{home / 'registry.db'}"
    with Registry.open(url) as reg:
        register_model(reg, key, model_path, MODEL)
    return Owner(home, key, url)


@contextmanager
def guarded(owner: Owner, model_path: Path, rate: float, output: str) -> Iterator[tuple[str, str]]:
    """(direct URL, guard URL) for the owner model answering ``output``; records flushed on exit."""
    app = build_app({NAME: ServedModel(load_model(model_path), output)})  # type: ignore[arg-type]
    with running_server(app) as up:
        svc = GuardService.open(owner.home, owner.url, owner.key, GuardOptions(
            upstream=f"{up.url}/v2/models/{NAME}/infer", model=MODEL, rate=rate, monitor=False,
            flush_interval=0.2)).start()
        try:
            with svc.serve_background() as g:
                yield f"{up.url}/v2/models/{NAME}/infer", f"{g.url}/v2/models/{NAME}/infer"
        finally:
            svc.close()


def ask(url: str, x: np.ndarray, client: str = "mallory", batch: int = 64) -> np.ndarray:
    """Answers (labels ``[N]`` or scores ``[N, C]``) of ``x`` from ``url``."""
    out: list[Any] = []
    with httpx.Client(timeout=60) as c:
        for i in range(0, len(x), batch):
            r = c.post(url, json=oip(x[i:i + batch]), headers={"x-client-id": client})
            r.raise_for_status()
            t = r.json()["outputs"][0]
            out.append(np.asarray(t["data"]).reshape(t["shape"]))
    return np.concatenate(out)


# ---------------------------------------------------------------- part 2: accuracy cost


def part_cost(model_path: Path, rates: list[float]) -> list[str]:
    """Share of answers the guard changes, and test accuracy, per rate."""
    d = load_digits()
    everything = np.concatenate([d.train.x.numpy(), d.attacker_pool.x.numpy(), d.test.x.numpy()])
    rng = np.random.default_rng(7)
    x = np.concatenate([everything] + [np.clip(everything + rng.normal(0, 0.05, everything.shape)
                                               .astype(np.float32), 0, 1) for _ in range(4)])
    lines = ["| rate R | inputs | answers changed | expected R(1-1/C) | test acc direct "
             "| test acc via guard |",
             "|---|---|---|---|---|---|"]
    for rate in rates:
        with tempfile.TemporaryDirectory() as tmp:
            owner = make_owner(Path(tmp) / "home", model_path)
            with guarded(owner, model_path, rate, "labels") as (direct, guard):
                a, b = ask(direct, x, "legit", 256), ask(guard, x, "legit", 256)
                ta, tb = ask(direct, d.test.x.numpy(), "legit"), ask(guard, d.test.x.numpy(), "legit")
        y = d.test.y.numpy()
        lines.append(f"| {rate:g} | {len(x)} | {np.mean(a != b):.4f} | {rate * 0.9:.4f} | "
                     f"{np.mean(ta == y):.4f} | {np.mean(tb == y):.4f} |")
        print(lines[-1], flush=True)
    return lines


# ---------------------------------------------------------------- part 3: extraction


def _verify(owner: Owner, model: torch.nn.Module | Path, tmp: Path, tag: str,
            budget: int) -> dict[str, Any]:
    """``wm verify --fixed`` of one suspect against a copy of the owner's registry."""
    home = tmp / f"verify-{tag}"
    shutil.copytree(owner.home, home)
    path = model if isinstance(model, Path) else save_model(
        model, tmp / f"{tag}.pt2", input_shape=(1, 8, 8), num_classes=10, arch="cnn")
    app = build_app({"suspect": ServedModel(load_model(path), "labels")})
    decoys = load_digits().test.x
    with running_server(app) as srv, Registry.open(f"sqlite:///{home / 'registry.db'}") as reg:
        options = VerifyOptions(suspect=f"{srv.url}/v2/models/suspect/infer", models=(MODEL,),
                                protocol="oip", alpha=1e-6, budget=budget, mode="fixed",
                                evidence=tmp / f"{tag}.evidence.json",
                                settings=HttpSettings(timeout=60))
        outcome = verify_suspect(reg, owner.key, options, decoys)
    st = outcome.result.statistics
    test = next(t for t in st.tests if t.kind == "guard")
    return {"verdict": st.verdict, "p": st.p_value, "n": test.n, "k": test.matches}


def part_extraction(model_path: Path, rates: list[float], seeds: int, epochs: int) -> list[str]:
    """Surrogates extracted through the guard vs independent models, per rate, output, seed."""
    d = load_digits()
    owner_model = load_model(model_path)
    q0 = queries(seed=0)
    with torch.no_grad():
        owner_labels = owner_model(torch.from_numpy(q0)).argmax(1)
    independents = {
        "cnn, owner data, seed 7": train_new("cnn", d.train.x, d.train.y, num_classes=10,
                                             epochs=30, seed=7),
        "mlp, owner data, seed 8": train_new("mlp", d.train.x, d.train.y, num_classes=10,
                                             epochs=30, seed=8),
        "cnn, attacker pool truth": train_new("cnn", d.attacker_pool.x, d.attacker_pool.y,
                                              num_classes=10, epochs=30, seed=9),
        "cnn extracted from unguarded API": train_new("cnn", torch.from_numpy(q0), owner_labels,
                                                      num_classes=10, epochs=epochs, seed=10),
    }
    lines = ["| rate R | answers | seed | marked probes | surrogate k/n | surrogate p (exact) | verdict "
             "| surrogate test acc | independents: k/n, p (min p) | verdicts |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rate in rates:
        for output in ("labels", "probabilities"):
            for seed in range(seeds):
                with tempfile.TemporaryDirectory() as tmp_s:
                    tmp = Path(tmp_s)
                    owner = make_owner(tmp / "home", model_path)
                    x = queries(seed=seed)
                    with guarded(owner, model_path, rate, output) as (_, guard):
                        answers = ask(guard, x)
                    y = (torch.from_numpy(answers.astype(np.float32)) if output == "probabilities"
                         else torch.from_numpy(answers.astype(np.int64)))
                    surrogate = train_new("cnn", torch.from_numpy(x), y, num_classes=10,
                                          epochs=epochs, seed=100 + seed)
                    with Registry.open(owner.url) as reg:
                        res = commit_guard_probes(reg, owner.key, open_vault(owner.home, owner.key, MODEL),
                                                  MODEL)
                    n = len(res.probes.inputs)  # every probe set of this (one-epoch) run
                    s = _verify(owner, surrogate, tmp, "surrogate", n)
                    ind = {name: _verify(owner, m, tmp, f"ind{i}", n)
                           for i, (name, m) in enumerate(independents.items())}
                    ind_text = "; ".join(f"{r['k']}/{r['n']}, {r['p']:.2g}" for r in ind.values())
                    verdicts = ", ".join(sorted({r["verdict"] for r in ind.values()}))
                    min_p = min(r["p"] for r in ind.values())
                    acc = accuracy(surrogate, d.test.x, d.test.y)
                    lines.append(f"| {rate:g} | {output} | {seed} | {n} | {s['k']}/{s['n']} | "
                                 f"{s['p']:.2g} | {s['verdict']} | {acc:.3f} | {ind_text} "
                                 f"(min {min_p:.2g}) | {verdicts} |")
                    print(lines[-1], flush=True)
    lines.append("")
    lines.append("Independent models, in order: " + "; ".join(independents) + ".")
    return lines


# ---------------------------------------------------------------- part 1: speed


def _bound_url(log: Path, proc: subprocess.Popen[bytes]) -> str:
    """The base URL ``wm serve``/``wm guard --port 0`` printed once it listens."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"at (http://127\.0\.0\.1:\d+)", log.read_text())
        if m:
            return m.group(1)
        time.sleep(0.1)
    raise RuntimeError(f"the server did not start: {log.read_text()[-500:]}")


def _lua(path: Path, bodies: list[str], target: str) -> None:
    items = ",\n".join("[==[" + b + "]==]" for b in bodies)
    path.write_text(
        f"local bodies = {{\n{items}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i % #bodies + 1\n"
        f"  return wrk.format('POST', '{target}', "
        "{['Content-Type'] = 'application/json', ['X-Client-Id'] = 'load'}, bodies[i])\nend\n"
    )


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes so far (all their threads, ended ones too), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _family(pid: int) -> list[int]:
    """``pid`` and its children (the guard's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *map(int, children.read_text().split())] if children.exists() else [pid]


def _pin(pids: list[int], cpu: int) -> None:
    """Bind every thread of ``pids`` to one CPU (threads started later inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), {cpu})


def _wrk(url: str, script: Path, connections: int, seconds: int,
         cpu: dict[str, list[int]], wrk_cpu: int | None) -> dict[str, float]:
    before = {k: _cpu_seconds(v) for k, v in cpu.items()}
    pin = ["taskset", "-c", str(wrk_cpu)] if wrk_cpu is not None else []
    out = subprocess.run([*pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    spent = {k: _cpu_seconds(v) - before[k] for k, v in cpu.items()}
    lat = {p: float(v) * _UNIT[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$",
                                                            out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error answers from {url}")
    return {"p50": lat["50"], "p99": lat["99"], "rps": rps,
            **{f"cpu_{k}": 1e3 * v / max(n, 1) for k, v in spent.items()}}


def part_speed(model_path: Path, rate: float, rounds: int, seconds: int,
               workers: list[int], pin: bool) -> list[str]:
    """wrk against the upstream and against guards of each worker count, interleaved.

    With ``pin``, the upstream runs on CPU 0 and every guard worker and wrk on
    CPU 1 (in the direct runs too): the deployment where the guard has a core
    of its own beside the inference server's, which a machine shared with
    other work does not otherwise give it.
    """
    if shutil.which("wrk") is None:
        raise SystemExit("part speed needs wrk (Debian: apt-get install wrk)")
    env = {**os.environ, "WM_PASSPHRASE": PASSPHRASE, "OMP_NUM_THREADS": "1", "WM_TORCH_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        make_owner(tmp / "home", model_path)
        up_log = tmp / "serve.log"
        up = subprocess.Popen([*WM, "serve", str(model_path), "--port", "0", "--name", NAME],
                              env=env, stderr=up_log.open("w"))
        procs = [up]
        try:
            targets = {"direct": _bound_url(up_log, up)}
            for w in workers:  # one guard per worker count, each with its own home (journal lock)
                home = tmp / f"home-{w}"
                shutil.copytree(tmp / "home", home)
                log = tmp / f"guard-{w}.log"
                g = subprocess.Popen(
                    [*WM, "--home", str(home), "guard", "--upstream",
                     f"{targets['direct']}/v2/models/{NAME}/infer", "--model", MODEL, "--rate",
                     str(rate), "--port", "0", "--workers", str(w)], env=env, stderr=log.open("w"))
                procs.append(g)
                targets[f"guard x{w}"] = _bound_url(log, g)
            pids = {"direct": [up.pid], **{name: _family(p.pid)
                                           for name, p in zip(list(targets)[1:], procs[1:], strict=True)}}
            if pin:
                _pin([up.pid], 0)
                _pin([p for name in list(targets)[1:] for p in pids[name]], 1)
            target = f"/v2/models/{NAME}/infer"
            script = tmp / "post.lua"
            _lua(script, [json.dumps(oip(r[None])) for r in queries()], target)
            results: dict[tuple[str, int], list[dict[str, float]]] = {}
            loads = []
            for _ in range(rounds):
                loads.append(os.getloadavg()[0])
                for c in (1, 16):
                    for name, base in targets.items():
                        cpu = {"upstream": [up.pid]} | ({"guard": pids[name]} if name != "direct" else {})
                        r = _wrk(base + target, script, c, seconds, cpu, 1 if pin else None)
                        results.setdefault((name, c), []).append(r)
                        print(name, c, {k: round(v, 3) for k, v in r.items()}, flush=True)
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)

    def med(name: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, c)])

    lines = ["| connections | path | p50 (ms) | p99 (ms) | requests/s | upstream CPU ms/request "
             "| guard CPU ms/request |", "|---|---|---|---|---|---|---|"]
    for c in (1, 16):
        for name in targets:
            g_cpu = f"{med(name, c, 'cpu_guard'):.3f}" if name != "direct" else "-"
            lines.append(f"| {c} | {name} | {med(name, c, 'p50'):.3f} | {med(name, c, 'p99'):.3f} | "
                         f"{med(name, c, 'rps'):.0f} | {med(name, c, 'cpu_upstream'):.3f} | {g_cpu} |")
    lines.append("")
    for name in list(targets)[1:]:
        ratios = [g["rps"] / d["rps"] for g, d in zip(results[(name, 16)], results[("direct", 16)],
                                                       strict=True)]
        for c in (1, 16):
            added = [g["p50"] - d["p50"] for g, d in zip(results[(name, c)], results[("direct", c)],
                                                         strict=True)]
            lines.append(f"- {name}: added p50 at {c} connection{'s' if c > 1 else ''}: "
                         f"**{statistics.median(added):.3f} ms** "
                         f"(per round: {', '.join(f'{a:.3f}' for a in added)})")
        lines.append(f"- {name}: throughput / direct at 16 connections: **{statistics.median(ratios):.3f}** "
                     f"(per round: {', '.join(f'{r:.3f}' for r in ratios)}; spread "
                     f"{min(ratios):.3f} to {max(ratios):.3f})")
    lines += ["", f"Load average (1 min) at the start of each round: "
              f"{', '.join(f'{x:.2f}' for x in loads)} on {os.cpu_count()} cores."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=["all", "speed", "cost", "extraction"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=80, help="surrogate training epochs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--speed-rate", type=float, default=0.01)
    ap.add_argument("--workers", default="1,2", help="guard worker counts to measure, comma-separated")
    ap.add_argument("--pin", action="store_true",
                    help="upstream on CPU 0, guard workers and wrk on CPU 1 (direct runs too)")
    ap.add_argument("--out", default="benchmarks/results/guard.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = load_digits()
    with tempfile.TemporaryDirectory() as tmp_s:
        model_path = Path(tmp_s) / "owner.pt2"
        owner = train_new("cnn", d.train.x, d.train.y, num_classes=10, epochs=30, seed=0)
        save_model(owner, model_path, input_shape=(1, 8, 8), num_classes=10, arch="cnn")
        head = (f"Owner: cnn, 30 epochs on digits owner-train, test accuracy "
                f"{accuracy(owner, d.test.x, d.test.y):.4f}. Machine: {platform.machine()}, "
                f"{os.cpu_count()} cores (shared), torch {torch.__version__}, 1 torch thread.")
        sections = [f"# wm guard benchmark (`python -m benchmarks.guard --part {args.part}`)", "", head, ""]
        if args.part in ("all", "speed"):
            sections += ["## Latency and throughput on loopback (wrk, 1-input OIP requests, "
                         f"rate {args.speed_rate:g}, {args.rounds} rounds of {args.seconds} s, medians"
                         f"{'; upstream pinned to CPU 0, guard and wrk to CPU 1' if args.pin else ''})",
                         "", *part_speed(model_path, args.speed_rate, args.rounds, args.seconds,
                                     [int(w) for w in args.workers.split(",")], args.pin), ""]
        if args.part in ("all", "cost"):
            sections += ["## Accuracy cost to legitimate clients", "",
                         *part_cost(model_path, [0.01, 0.03, 0.1]), ""]
        if args.part in ("all", "extraction"):
            sections += ["## Extraction through the guard (1,617 queries: attacker pool + 2 noisy "
                         f"copies; surrogate cnn, {args.epochs} epochs; `wm verify --fixed`, alpha 1e-6)",
                         "", *part_extraction(model_path, [0.01, 0.03], args.seeds, args.epochs), ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and args.part != "all":
        sections = [out.read_text().rstrip(), "", *sections[3:]]
    out.write_text("\n".join(sections) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
