"""End to end: a surrogate extracted through ``wm guard`` is found ``owned``; others are not.

The attacker queries the guard with the digits attacker pool and two noisy
copies of it (1,617 inputs, as a client named ``mallory``), trains a CNN on
the labels it got, and serves it. ``wm guard commit`` turns the marked
queries into a guard probe set and ``wm verify`` tests suspects against it
at alpha 1e-6. ``wm guard report`` flags mallory (PRADA) and not a client
sending ordinary test images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import _register_commands, wm
from core.data import load_digits
from core.modelio import save_model
from core.serving import running_server
from core.training import train_new
from guard.monitor import ExtractionMonitor
from tests.guard.conftest import MODEL, Owner, digits_queries, guarded, oip_body
from verifier.server import ServedModel, build_app

_register_commands()


def _wm(home: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(wm, ["--home", str(home), *args])
    return r.exit_code, r.stdout, r.stderr


def _verify(home: Path, model_path: Path, tmp: Path) -> dict[str, object]:
    from core.modelio import load_model

    app = build_app({"suspect": ServedModel(load_model(model_path), "labels")})
    with running_server(app) as srv:
        code, out, err = _wm(home, "verify", "--suspect", f"{srv.url}/v2/models/suspect/infer",
                             "--model", MODEL, "--json", "--evidence",
                             str(tmp / f"{model_path.stem}.evidence.json"))
    assert code in (0, 1), err
    doc = json.loads(out)
    assert (code == 0) == (doc["verdict"] == "owned")
    return doc


def test_extracted_surrogate_is_owned_independent_model_is_not(owner: Owner, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    splits = load_digits()
    queries = digits_queries(None, noisy_copies=2)
    assert queries.shape[0] == 1617
    with guarded(owner, rate=0.05) as g, httpx.Client(timeout=30) as c:
        answers: list[int] = []
        for i in range(0, len(queries), 64):
            r = c.post(g.infer_url(g.guard.url), json=oip_body(queries[i:i + 64]),
                       headers={"x-client-id": "mallory"})
            answers += r.json()["outputs"][0]["data"]
        for i in range(0, 360, 20):  # an ordinary client
            c.post(g.infer_url(g.guard.url), json=oip_body(splits.test.x[i:i + 20].numpy()),
                   headers={"x-client-id": "bob"}).raise_for_status()
    surrogate = train_new("cnn", torch.from_numpy(queries), torch.tensor(answers), num_classes=10,
                          epochs=60, seed=1)
    independent = train_new("cnn", splits.attacker_pool.x, splits.attacker_pool.y, num_classes=10,
                            epochs=30, seed=2)
    paths = {}
    for name, model in (("surrogate", surrogate), ("independent", independent)):
        paths[name] = save_model(model, tmp_path / f"{name}.pt2", input_shape=(1, 8, 8),
                                 num_classes=10, arch="cnn")

    code, out, err = _wm(owner.home, "guard", "commit", "--model", MODEL, "--client",
                         "x-client-id:mallory", "--json")
    assert code == 0, err
    committed = json.loads(out)
    assert 50 <= committed["probes"] <= 130 and committed["duplicates"] == 0

    code, out, err = _wm(owner.home, "guard", "report", "--model", MODEL, "--json")
    assert code == 0, err
    rows = {r["client"]: r for r in json.loads(out)["clients"]}
    assert rows["x-client-id:mallory"]["queries"] == 1617
    assert rows["x-client-id:mallory"]["marked"] == committed["probes"]
    assert rows["x-client-id:mallory"]["flagged"] is True
    assert rows["x-client-id:bob"]["flagged"] is False

    other_home = tmp_path / "home2"  # a second dispute needs unspent probes: same registry, copied
    shutil.copytree(owner.home, other_home)
    owned = _verify(owner.home, paths["surrogate"], tmp_path)
    assert owned["verdict"] == "owned" and owned["p_value"] <= 1e-6  # type: ignore[operator]
    guard_test = next(t for t in owned["tests"] if t["kind"] == "guard")  # type: ignore[attr-defined]
    assert guard_test["null"] == {"family": "binomial", "p0": 0.1}
    clean = _verify(other_home, paths["independent"], tmp_path)
    assert clean["verdict"] == "not_owned" and clean["p_value"] > 1e-3  # type: ignore[operator]


@pytest.mark.parametrize("delta", [0.96])
def test_prada_flags_noisy_copies_not_natural_queries(delta: float) -> None:
    splits = load_digits()
    monitor = ExtractionMonitor(None, delta=delta)
    rng = np.random.default_rng(0)
    attack = digits_queries(None, noisy_copies=2)
    order = rng.permutation(len(attack))
    labels = np.concatenate([splits.attacker_pool.y.numpy()] * 3)
    monitor.observe("attacker", attack[order], labels[order], 0.0)
    monitor.observe("benign", splits.test.x.numpy(), splits.test.y.numpy(), 0.0)
    monitor.observe("few", splits.test.x.numpy()[:20], splits.test.y.numpy()[:20], 0.0)
    reports = {r.client: r for r in monitor.reports()}
    assert reports["attacker"].flagged and not reports["benign"].flagged
    assert reports["few"].shapiro_w is None and not reports["few"].flagged


def test_prada_distances_match_a_brute_force_reference() -> None:
    """The fast growing sets (one matrix-vector product per query) keep PRADA's exact rule."""
    from guard.monitor import PradaState

    x = digits_queries(None, noisy_copies=1)
    labels = np.concatenate([load_digits().attacker_pool.y.numpy()] * 2)
    order = np.random.default_rng(3).permutation(len(x))
    state = PradaState(max_growing=10)
    growing: dict[int, list[np.ndarray]] = {}
    joined: dict[int, list[float]] = {}
    for i in order:
        v, c = x[i].reshape(-1).astype(np.float64), int(labels[i])
        got = state.observe(x[i], c)
        if c not in growing:
            assert got is None
            growing[c], joined[c] = [v], []
            continue
        want = min(float(np.sqrt(((g - v) ** 2).sum())) for g in growing[c])
        assert got == pytest.approx(want, abs=1e-9)
        dc = joined[c]
        threshold = max(0.0, float(np.mean(dc) - np.std(dc))) if dc else 0.0
        if want > threshold and len(growing[c]) < 10:
            growing[c].append(v)
            dc.append(want)
    assert any(len(g) == 10 for g in growing.values())  # the cap was reached and held
