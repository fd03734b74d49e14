"""`wm fingerprint` end to end through the real command, and its error lines."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import _register_commands, wm
from core.modelio import save_model
from core.training import train_new
from registry.keys import generate_owner_key
from registry.log import Registry
from registry.register import register_model

_register_commands()

FAST = ["--size", "5", "--surrogates", "1", "--references", "2", "--epochs", "3",
        "--workers", "1", "--scheme", "cae:steps=10,candidates=2,conf=0"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with an owner key and one registered digits CNN, 'm1'."""
    h = tmp_path_factory.mktemp("home")
    key = generate_owner_key(h, "alice", "pw")
    from core.data import load_digits

    sp = load_digits()
    model = train_new("cnn", sp.train.x, sp.train.y, num_classes=10, epochs=8, seed=0)
    save_model(model, h / "m1.pt2", input_shape=(1, 8, 8), num_classes=10, arch="cnn")
    other = train_new("cnn", sp.train.x, sp.train.y, num_classes=10, epochs=1, seed=1)
    save_model(other, h / "copy.pt2", input_shape=(1, 8, 8), num_classes=10, arch="cnn")
    with Registry.open(f"sqlite:///{h / 'registry.db'}") as reg:
        register_model(reg, key, h / "m1.pt2", "m1")
    return h


def run(home: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(wm, ["--home", str(home), "fingerprint", *args],
                           env={"WM_PASSPHRASE": "pw"})
    return r.exit_code, r.stdout, r.stderr


def test_fingerprint_is_committed_to_the_registry(home: Path) -> None:
    code, out, err = run(home, "m1", "--data", "digits", "--model", str(home / "m1.pt2"), *FAST)
    assert code == 0, err
    assert "fingerprint:       cae:n=5:" in out
    assert "p-value floor:     0.333" in out and "4 held-out references" in out
    with Registry.open(f"sqlite:///{home / 'registry.db'}") as reg:
        (info,) = reg.probesets("m1", "fingerprint")
        assert info.size == 5 and info.null["family"] == "conformal"
        assert info.null["references"] == 4 and info.root.hex() in out
    assert (home / "cache" / "fingerprint").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--data", "digits", "--model", "{m1}"], "no model named 'nope' in the registry"),
        (["m1", "--data", "digits", "--model", "{copy}x"], "does not exist"),
        (["m1", "--data", "digits", "--model", "{copy}"],
         "is not the file registered as 'm1' (SHA-256 differs)"),
        (["m1", "--data", "nodata", "--model", "{m1}"], "unknown data set 'nodata'"),
        (["m1", "--data", "{bad}", "--model", "{m1}"], "takes inputs of shape [1, 8, 8]"),
        (["m1", "--data", "digits", "--model", "{m1}", "--scheme", "cae:eps=9"],
         "eps must be in (0, 1]"),
        (["m1", "--data", "digits", "--model", "{m1}", "--scheme", "cae:steps=1,conf=1"],
         "candidates reach conferrability 1"),
    ],
)
def test_bad_inputs_give_one_clear_line(home: Path, tmp_path: Path, args: list[str],
                                        message: str) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 1, 4, 4), np.float32), y=np.arange(10, dtype=np.int64) % 2)
    paths = {"m1": home / "m1.pt2", "copy": home / "copy.pt2", "bad": bad}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    fast = [a for a in FAST if not a.startswith("cae:") and a != "--scheme"]
    code, _, err = run(home, *argv, *fast)
    assert code == 2
    assert message in err and err.startswith("wm: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_passphrase_is_one_line(home: Path) -> None:
    r = CliRunner().invoke(wm, ["--home", str(home), "fingerprint", "m1", "--data", "digits",
                                "--model", str(home / "m1.pt2")], env={"WM_PASSPHRASE": "no"})
    assert r.exit_code == 2 and "wrong passphrase" in r.stderr


ZOO = ["--size", "4", "--references", "9", "--generation", "3", "--epochs", "4", "--workers", "1"]


@pytest.mark.parametrize(("method", "extra", "scheme"),
                         [("akh", ["--scheme", "akh:agree=0.3"], "akh:n=4:agree=0.3"),
                          ("sac", ["--scheme", "sac-m"], "sac-m:n=4:seed=0")])
def test_akh_and_sac_commit_a_conformal_null(home: Path, method: str, extra: list[str],
                                             scheme: str) -> None:
    code, out, err = run(home, "m1", "--data", "digits", "--model", str(home / "m1.pt2"),
                         "--method", method, *ZOO, *extra)
    assert code == 0, err
    assert f"fingerprint:       {scheme}" in out
    assert "conformal, K = 9 references (9 cnn; cnn:epochs=4:batch=64" in out
    assert "p-value floor:     0.1 (1/(K+1)" in out
    with Registry.open(f"sqlite:///{home / 'registry.db'}") as reg:
        info = [p for p in reg.probesets("m1", "fingerprint") if p.scheme == scheme][-1]
        null = info.null
        assert null["family"] == "conformal" and null["references"] == 9 and len(null["matches"]) == 9
        assert null["p_floor"] == pytest.approx(0.1) and {m["arch"] for m in null["models"]} == {"cnn"}
        assert info.root.hex() in out
    assert (home / "cache" / "zoo" / "zoo.jsonl").is_file()


def test_other_reference_architectures_split_k_and_set_the_floor(home: Path) -> None:
    code, out, err = run(home, "m1", "--data", "digits", "--model", str(home / "m1.pt2"),
                         "--method", "sac", *ZOO, "--references", "10", "--reference-arch", "mlp",
                         "--scheme", "sac-m")
    assert code == 0, err
    assert "K = 10 references (5 cnn, 5 mlp;" in out and "p-value floor:     0.167" in out
    code, _, err = run(home, "m1", "--data", "digits", "--model", str(home / "m1.pt2"),
                       "--method", "sac", *ZOO, "--reference-arch", "nope")
    assert code == 2 and "nope" in err


def test_a_zoo_method_that_finds_too_few_probes_says_so(home: Path) -> None:
    code, _, err = run(home, "m1", "--data", "digits", "--model", str(home / "m1.pt2"),
                       "--method", "akh", *ZOO[:-2], "--size", "5000", "--workers", "1")
    assert code == 2 and "misclassified by the owner" in err and len(err.strip().splitlines()) == 1


def test_wm_verify_reports_the_conformal_p_of_an_akh_fingerprint(tmp_path: Path) -> None:
    import json

    from core.data import load_digits
    from tests.servers import wm_server

    key = generate_owner_key(tmp_path, "alice", "pw")
    sp = load_digits()
    model = train_new("cnn", sp.train.x, sp.train.y, num_classes=10, epochs=8, seed=0)
    save_model(model, tmp_path / "m.pt2", input_shape=(1, 8, 8), num_classes=10, arch="cnn",
               data="digits")
    with Registry.open(f"sqlite:///{tmp_path / 'registry.db'}") as reg:
        register_model(reg, key, tmp_path / "m.pt2", "m")
    code, _, err = run(tmp_path, "m", "--data", "digits", "--model", str(tmp_path / "m.pt2"),
                       "--method", "akh", *ZOO, "--scheme", "akh:agree=0.3")
    assert code == 0, err
    env = {"WM_PASSPHRASE": "pw"}
    with wm_server(["--home", str(tmp_path), "serve", str(tmp_path / "m.pt2"), "--name", "m",
                    "--port", "0"], env={**os.environ, **env}) as srv:
        r = CliRunner().invoke(wm, ["--home", str(tmp_path), "verify", "--suspect",
                                    f"{srv.url}/v2/models/m/infer", "--model", "m", "--json",
                                    "--fixed", "--budget", "4", "--evidence",
                                    str(tmp_path / "evidence.json")], env=env)
    assert r.exit_code in (0, 1), r.stderr
    out = json.loads(r.stdout)
    (t,) = out["tests"]
    assert t["kind"] == "fingerprint" and t["matches"] == t["n"] == 4  # the owner itself
    assert t["null"]["family"] == "conformal" and t["null"]["references"] == 9
    assert t["p_conformal"] >= 0.1 and t["p_value"] == t["p_conformal"]
    assert t["p_parametric"] >= 0.1 and out["p_value"] >= 0.1 and out["verdict"] != "owned"
    assert (tmp_path / "evidence.json").is_file()
