"""``wm serve`` under one large request body: does it stall other requests, and what does it hold?

Starts ``wm serve`` (this checkout's, or with ``--tree DIR`` another
checkout's, for a side-by-side run) on a 1x28x28 MLP, sends one Open
Inference Protocol request of ``--rows`` inputs (2,048 rows: 32.5 MB of JSON)
over a raw socket, and meanwhile sends ``GET /v2/health/live`` one after
another until the large answer arrives. It reports the time to the answer,
the health checks answered meanwhile and the slowest of them (an event loop
blocked by parsing answers none), and the growth of the peak resident memory
(``VmHWM``) of the server and its child processes (the parsing worker).

    python -m benchmarks.serve [--rows N] [--tree [LABEL=]DIR]... [--repeat K] [--out FILE]

Every ``--tree`` is run in turn, interleaved over ``--repeat`` rounds, and the
table goes to ``benchmarks/results/serve-body.md`` with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    """One large request against one server."""

    label: str
    body_mb: float
    answer_s: float
    health: int
    worst_health_ms: float
    rss_growth_mb: float
    status: int


def _listening_port(pid: int, deadline: float) -> int:
    """The TCP port process ``pid`` listens on (``ss``), whatever it printed or did not."""
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line:
                return int(line.split()[3].rsplit(":", 1)[1])
        time.sleep(0.2)
    raise SystemExit(f"server {pid} did not listen within the deadline")


def _peak_rss(pid: int) -> int:
    # children of any of its threads: a parsing worker may be started from one
    children = [c for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    total = 0
    for p in [pid, *map(int, children)]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def _body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).astype(np.float64).tolist()}]}).encode()


def measure(label: str, tree: Path, model: Path, rows: int) -> Run:
    """One server of ``tree``, one large request; see the module docstring."""
    env = {**os.environ, "PYTHONPATH": str(tree), "WM_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", "serve",
                             str(model), "--port", "0", "--name", "big"], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _listening_port(proc.pid, time.monotonic() + 600)
        url = f"http://127.0.0.1:{port}"
        x = np.random.default_rng(0).random((rows, 1, 28, 28)).astype(np.float32)
        with httpx.Client(timeout=600) as c:
            c.post(f"{url}/v2/models/big/infer", content=_body(x[:64]))  # warm: loads, starts workers
            body = _body(x)
            before = _peak_rss(proc.pid)
            with socket.create_connection(("127.0.0.1", port)) as conn:
                start = time.monotonic()
                conn.sendall(f"POST /v2/models/big/infer HTTP/1.1\r\nHost: bench\r\n"
                             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                             .encode() + body)
                health, worst = 0, 0.0
                while not select.select([conn], [], [], 0)[0]:
                    t = time.monotonic()
                    c.get(f"{url}/v2/health/live")
                    health, worst = health + 1, max(worst, time.monotonic() - t)
                head = b""
                while b"\r\n" not in head:
                    head += conn.recv(65536)
                answered = time.monotonic() - start
            grown = _peak_rss(proc.pid) - before
        return Run(label, len(body) / 1e6, answered, health, worst * 1000, grown / 1e6,
                   int(head.split(b" ")[1]))
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--tree", action="append", default=None,
                    help="LABEL=DIR: a checkout whose `wm serve` to run (repeatable; default this one)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve-body.md")
    args = ap.parse_args()
    import torch

    from core.arch import build_model
    from core.modelio import save_model

    trees = [(t.partition("=")[0], Path(t.partition("=")[2]).resolve()) if "=" in t
             else (t, Path(t).resolve()) for t in (args.tree or [str(ROOT)])]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = save_model(build_model("mlp", (1, 28, 28), 10), Path(tmp) / "big.pt2",
                           input_shape=(1, 28, 28), num_classes=10, arch="mlp")
        runs = []
        for r in range(args.repeat):
            for label, tree in trees:
                run = measure(label, tree, model, args.rows)
                runs.append(run)
                print(f"round {r + 1}: {run}", file=sys.stderr)
    load = os.getloadavg()
    lines = [f"Load average after the runs: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
             f"(1 / 5 / 15 min) on {os.cpu_count()} cores.", "",
             "| server | body MB | answered after s | health checks meanwhile | slowest ms "
             "| peak RSS growth MB (x body) | status |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.label} | {run.body_mb:.1f} | {run.answer_s:.2f} | {run.health} | "
                     f"{run.worst_health_ms:.0f} | {run.rss_growth_mb:.0f} "
                     f"({run.rss_growth_mb / run.body_mb:.1f}x) | {run.status} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
