"""``wm demo``: the whole story on the built-in digits data, end to end.

The owner's side is exactly the ``wm`` commands a user would type (each is
printed, then run as a subprocess): create a key, train and register a
watermarked model, derive and register fingerprints, serve the model behind
``wm guard``, verify suspects over HTTP, check the evidence, audit the log.
The thieves' side uses the attack library (:mod:`attacks`): a copy of the
weights fine-tuned and pruned, a surrogate extracted through the guarded API
with labels only, and an independently trained model as the control.

Everything lives under ``--out`` (its own ``home/`` with a demo passphrase),
so the demo never touches the user's real ``$WM_HOME``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np
import torch

from cli.main import Context, wm
from core.errors import InputError, WmError

MARKER = ".wm-demo"
MODEL = "owner-cnn"
DEMO_PASSPHRASE = "wm-demo-passphrase"  # a throwaway key for the demo only
GUARD_RATE = 0.03
STARTUP_S = 300  # a server imports torch first: seconds on an idle machine, minutes on a busy one
DEMO_WATERMARK = "trigger-set:n=300+dark:mass=0.15:n=80"
"""The default trigger set, and dark-knowledge marks for distilled copies."""
BUDGET = 320
"""Probes per suspect at most, over every committed set of the model (the verifier stops once it
decides): enough for all 80 of the dark set, which gets about a quarter of them."""
EXTRACTION_QUERIES = 1617  # the attacker pool (539) and two noisy, shifted copies of it


class DemoError(WmError):
    """A step of the demo failed."""


_LISTENING = re.compile(rb" at (http://127\.0\.0\.1:\d+)")


class Runner:
    """Runs ``wm`` subcommands as a user would, echoing each command line."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.home = out / "home"
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "WM_HOME": str(self.home), "WM_PASSPHRASE": DEMO_PASSPHRASE,
                    "WM_TORCH_THREADS": os.environ.get("WM_TORCH_THREADS", "1")}
        self.env.pop("WM_REGISTRY_URL", None)
        self.background: list[subprocess.Popen[bytes]] = []

    def _argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "cli", *args]

    def run(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        """Run ``wm ARGS``; :class:`DemoError` with its error line if the exit code is unexpected."""
        click.echo(f"   $ wm {shlex.join(args)}")
        proc = subprocess.run(self._argv(list(args)), env=self.env, capture_output=True, text=True,
                              check=False)
        if proc.returncode not in ok_codes:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit {proc.returncode}"
            raise DemoError(f"`wm {args[0]}` failed: {last}")
        return proc

    def start(self, name: str, *args: str, ready_path: str) -> str:
        """Start ``wm ARGS --port 0`` in the background; its base URL once ``ready_path`` answers.

        The server binds a port of its own choosing and prints its URL (no port is
        picked here and bound again, which another process could take in between).
        """
        args = (*args, "--host", "127.0.0.1", "--port", "0")
        click.echo(f"   $ wm {shlex.join(args)} &")
        path = self.logs / f"{name}.log"
        log = open(path, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(self._argv(list(args)), env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.background.append(proc)
        deadline = time.monotonic() + STARTUP_S
        base = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoError(f"`wm {args[0]}` exited early; see {path}")
            if base is None:
                found = _LISTENING.search(path.read_bytes())
                base = found.group(1).decode() if found else None
            if base is not None:
                try:
                    if httpx.get(base + ready_path, timeout=1.0).status_code == 200:
                        return base
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise DemoError(f"`wm {args[0]}` did not come up within {STARTUP_S} s")

    def stop_all(self) -> None:
        """SIGTERM every background server (the guard flushes its journal), then wait."""
        for proc in self.background:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.background:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.background.clear()


@contextmanager
def _servers(runner: Runner) -> Iterator[Runner]:
    try:
        yield runner
    finally:
        runner.stop_all()


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise InputError(f"{out} is not empty and was not made by `wm demo`",
                             hint="choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `wm demo`; removed by the next run\n")


def _answer_via_http(url: str, num_classes: int, input_shape: tuple[int, ...]) -> Any:
    """The thief's view of the guarded API: an answer function over real HTTP (labels only)."""
    from verifier.wire.oip import OipClient

    client = OipClient(url, num_classes=num_classes, input_shape=input_shape)

    def answer(x: torch.Tensor) -> torch.Tensor:
        got = client.infer(x.numpy().astype(np.float32))
        return torch.from_numpy(np.asarray(got.labels, dtype=np.int64))

    return answer, client


def _decided_by(result: dict[str, Any]) -> str:
    tests = result.get("tests") or []
    if not tests:
        return "-"
    best = max(tests, key=lambda t: t.get("log10_e_max", 0.0))
    if result["verdict"] != "owned":
        return "none"
    return str(best["kind"])


@wm.command("demo")
@click.option("--out", "out", default="demo-out", show_default=True,
              type=click.Path(file_okay=False), help="Where the demo writes everything.")
@click.pass_obj
def demo_cmd(ctx: Context, out: str) -> None:
    """The whole story on digits: mark, fingerprint, guard, steal three ways, verify, audit."""
    import attacks
    from core.data import load_digits
    from core.modelio import load_model, save_model, to_trainable
    from core.training import accuracy, train_new

    started = time.monotonic()
    out_dir = Path(out).resolve()
    _prepare(out_dir)
    runner = Runner(out_dir)
    splits = load_digits()
    classes = splits.num_classes
    assert splits.attacker_pool is not None
    owner_pt2 = out_dir / "owner.pt2"
    with _servers(runner):
        click.echo("1. the owner creates a signing key (demo passphrase from the environment)")
        runner.run("keygen", "--name", "demo-owner")
        click.echo("2. trains a watermarked CNN on digits and registers it (two marks: triggers, and "
                   "dark knowledge for copies that learn from its probabilities)")
        runner.run("train", "--data", "digits", "--epochs", "30", "--watermark", DEMO_WATERMARK,
                   "--out", str(owner_pt2), "--register", MODEL)
        if _has_fingerprint():
            click.echo("3. derives conferrable-example fingerprints and registers them")
            runner.run("fingerprint", MODEL, "--data", "digits", "--model", str(owner_pt2))
        else:
            click.echo("3. (fingerprints are not available in this build; skipped)")
        click.echo(f"4. serves it, with wm guard in front (rate {GUARD_RATE:g})")
        model_path = f"/v2/models/{MODEL}"
        owner_url = runner.start("serve-owner", "serve", str(owner_pt2), "--name", MODEL,
                                 ready_path=model_path) + model_path
        guard_url = runner.start("guard", "guard", "--upstream", f"{owner_url}/infer", "--model", MODEL,
                                 "--rate", str(GUARD_RATE), ready_path=model_path) + model_path

        click.echo("5. four suspects appear")
        weights = to_trainable(load_model(owner_pt2))
        stolen = attacks.Prune(0.3)(
            attacks.FineTune("all", epochs=10)(weights, splits.attacker_pool, seed=11), seed=11)
        click.echo("   a. weight theft: the weights fine-tuned on the attacker's pool, then 30% pruned")
        answer, client = _answer_via_http(f"{guard_url}/infer", classes, splits.input_shape)
        with client:
            queries = attacks.query_inputs(splits.attacker_pool.x, EXTRACTION_QUERIES, seed=12)
            surrogate = attacks.Extract("cnn", epochs=60)(answer, queries, num_classes=classes, seed=12)
        click.echo(f"   b. model stealing: {EXTRACTION_QUERIES} queries to the guarded API, "
                   "labels only, a CNN trained on the answers")
        independent = train_new("cnn", splits.attacker_pool.x, splits.attacker_pool.y,
                                num_classes=classes, epochs=30, seed=13)
        distilled = attacks.Distill(None, temperature=3.0, epochs=30)(weights, splits.attacker_pool, seed=14)
        click.echo("   c. distillation: the stolen weights distilled into a fresh CNN on the attacker's "
                   "pool (T = 3), served with probabilities")
        click.echo("   d. an independent CNN trained on its own labelled digits (the control)")
        suspects = {"weight-theft": stolen, "extracted": surrogate, "distilled": distilled,
                    "independent": independent}
        for name, model in suspects.items():
            save_model(model, out_dir / f"suspect-{name}.pt2", input_shape=splits.input_shape,
                       num_classes=classes, arch="cnn", input_range=splits.input_range)

        click.echo("6. the owner commits the guard's marked queries (stops the guard first)")
        runner.stop_all()
        runner.run("guard", "commit", "--model", MODEL)

        click.echo("7. verifies each suspect over HTTP and checks each evidence bundle offline")
        rows = []
        for name in suspects:
            path = f"/v2/models/{name}"
            output = ["--output", "probabilities"] if name == "distilled" else []
            url = runner.start(f"serve-{name}", "serve", str(out_dir / f"suspect-{name}.pt2"),
                               "--name", name, *output, ready_path=path) + path
            bundle = out_dir / f"evidence-{name}.json"
            proc = runner.run("verify", "--suspect", f"{url}/infer", "--model", MODEL, "--json",
                              "--budget", str(BUDGET), "--evidence", str(bundle), ok_codes=(0, 1))
            result = json.loads(proc.stdout)
            runner.run("evidence", "check", str(bundle), "--owner-key", str(runner.home / "owner.pub"))
            runner.stop_all()
            acc = accuracy(load_model(out_dir / f"suspect-{name}.pt2"), splits.test.x, splits.test.y)
            rows.append((name, acc, result))
        click.echo("8. audits the whole registry log")
        runner.run("audit", "verify")

    click.echo("")
    click.echo(f"{'suspect':<14} {'accuracy':>8}  {'verdict':<12} {'p-value':>9}  "
               f"{'decided by':<12} {'queries':>7}")
    for name, acc, r in rows:
        click.echo(f"{name:<14} {acc:>8.4f}  {r['verdict']:<12} {r['p_value']:>9.2e}  "
                   f"{_decided_by(r):<12} {r['queries']:>7}")
    click.echo("")
    click.echo("HTML reports: " + ", ".join(Path(r["report"]).name for *_, r in rows))
    click.echo(f"everything is in {out_dir} (registry and keys in {runner.home}); "
               f"{time.monotonic() - started:.0f} s")
    expected = {"weight-theft": "owned", "extracted": "owned", "distilled": "owned",
                "independent": "not_owned"}
    wrong = [n for n, _, r in rows if r["verdict"] != expected[n]]
    if wrong:
        raise DemoError(f"unexpected verdict for {', '.join(wrong)}")


def _has_fingerprint() -> bool:
    return "fingerprint" in wm.commands
