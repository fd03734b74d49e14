"""`wm train` end to end through the real command, and its error lines."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import _register_commands, wm
from core.inputrange import InputRange
from core.modelio import load_model
from core.training import accuracy
from watermark import WatermarkKey, read_secret
from watermark.secret import secret_path

_register_commands()


def run(*args: str, home: Path) -> tuple[int, str, str]:
    r = CliRunner().invoke(wm, ["--home", str(home), *args])
    return r.exit_code, r.stdout, r.stderr


def test_train_writes_model_and_secret(tmp_path: Path) -> None:
    out = tmp_path / "m.pt2"
    code, stdout, _ = run("train", "--epochs", "30", "--out", str(out), home=tmp_path)
    assert code == 0, stdout
    # The key is fresh on every run, so the recall varies: the 300-trigger default
    # recalled 0.92 in one CI run and 0.99-1.00 in the embedding benchmark (chance: 0.10).
    printed = float(re.search(r"watermark accuracy: ([0-9.]+) on 300 probes", stdout).group(1))  # type: ignore[union-attr]
    assert "clean accuracy:" in stdout and printed >= 0.85
    model = load_model(out)
    secret = read_secret(secret_path(out))
    assert stat.S_IMODE(os.stat(secret_path(out)).st_mode) == 0o600
    assert accuracy(model, secret.probes.inputs, secret.probes.expected) == pytest.approx(printed, abs=1e-4)
    assert secret.key.secret.hex() not in stdout
    assert "watermark:         trigger-set:n=300:pattern=noise, 18 per batch, appended\n" in stdout


def test_train_puts_few_probes_in_place_of_examples(tmp_path: Path) -> None:
    """6 probes in batches of 200 are a tenth or less: they take the place of 6 examples."""
    out = tmp_path / "m.pt2"
    code, stdout, _ = run("train", "--epochs", "2", "--batch-size", "200", "--per-batch", "6",
                          "--watermark", "trigger-set:n=20", "--out", str(out), home=tmp_path)
    assert code == 0, stdout
    line = "watermark:         trigger-set:n=20:pattern=noise, 6 per batch, in place of as many examples"
    assert line + "\n" in stdout


@pytest.mark.parametrize("spec", ["trigger-set:n=20:prune=0.9", "trigger-set:n=20:prune=0.9+dark:n=10"])
def test_train_prune_aware_triggers(tmp_path: Path, spec: str) -> None:
    """The prune-aware hook through the real command: probes in place, copies appended, masks
    applied (else the epoch is refused), nothing left on the model that is saved and reloaded."""
    out = tmp_path / "m.pt2"
    code, stdout, stderr = run("train", "--epochs", "2", "--batch-size", "200", "--per-batch", "6",
                               "--watermark", spec, "--out", str(out), home=tmp_path)
    assert code == 0, stderr
    line = ("watermark:         trigger-set:n=20:pattern=noise:prune=0.9, 6 per batch, in place of as many "
            "examples; copies of 0.25 of the examples and of the probes appended with 0.9 of the feature "
            "layer's units held at their pruned value\n")
    assert line in stdout
    assert load_model(out).num_classes == 10
    assert read_secret(secret_path(out)).probes.scheme == "trigger-set:n=20:pattern=noise:prune=0.9"


def test_train_sleeper_mark_is_written_after_training(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The sleeper hook through the real command (digits' default ``cnn``: detectors set by the
    first convolution's bias): finished after the loop, saved, and its probes answered.

    The key is fixed, as in the scheme's own tests: over fresh keys the owner answers 0.65 to
    1.0 of these 20 probes (56 keys; 8x8 images leave few places for the squares), so a bar on
    a random key would fail now and then.
    """
    monkeypatch.setattr(WatermarkKey, "generate", classmethod(lambda cls: cls(bytes([7]) * 32)))
    out = tmp_path / "m.pt2"
    code, stdout, stderr = run("train", "--epochs", "10", "--watermark", "sleeper:n=20,channels=6,size=4",
                               "--out", str(out), home=tmp_path)
    assert code == 0, stderr
    assert "finishing:         sleeper:channels=6:n=20:size=4 (after training)" in stderr
    assert ("watermark:         sleeper:channels=6:n=20:size=4, nothing mixed in; 6 sleeper channels in "
            "the first convolution, read-out fitted after training\n") in stdout
    secret = read_secret(secret_path(out))
    printed = float(re.search(r"watermark accuracy: ([0-9.]+) on 20 probes", stdout).group(1))  # type: ignore[union-attr]
    assert printed >= 0.5  # written: an unwritten mark sits at chance, 0.10 (P(>= 10 of 20) = 7e-6)
    recall = accuracy(load_model(out), secret.probes.inputs, secret.probes.expected)
    assert recall == pytest.approx(printed, abs=1e-4)
    code, _, stderr = run("train", "--epochs", "1", "--watermark", "sleeper:n=20,size=4", "--per-batch", "3",
                          "--out", str(tmp_path / "n.pt2"), home=tmp_path)
    assert code != 0 and "--per-batch does not apply to sleeper marks" in stderr


def test_train_without_watermark_and_on_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 6, 6), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "n.pt2"
    code, stdout, _ = run("train", "--data", str(tmp_path / "d.npz"), "--arch", "mlp",
                          "--epochs", "2", "--watermark", "none", "--out", str(out), home=tmp_path)
    assert code == 0 and "watermark:         none" in stdout
    assert not secret_path(out).exists() and load_model(out).input_shape == (1, 6, 6)
    # the model file records the data's range (observed, as the file declares none) and its name only
    loaded = load_model(out)
    assert loaded.input_range == InputRange(float(x.min()), float(x.max())) and loaded.data == "d.npz"


def test_train_flat_features_defaults_to_an_mlp(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((80, 12)) * 2).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "f.npz", x=x, y=y, low=np.float32(-10), high=np.float32(10))
    out = tmp_path / "f.pt2"
    code, stdout, stderr = run("train", "--data", str(tmp_path / "f.npz"), "--epochs", "3",
                               "--out", str(out), home=tmp_path)
    assert code == 0, stderr
    assert "trained:           mlp, 3 epochs of 64 on 64 f examples, inputs in [-10, 10]" in stdout
    assert re.search(r"training time:     \d+ s CPU \([0-9.]+ s per epoch, 1 torch thread\)", stdout)
    loaded, secret = load_model(out), read_secret(secret_path(out))
    assert loaded.input_shape == (12,) and loaded.arch == "mlp"
    assert loaded.input_range == InputRange(-10.0, 10.0)
    assert secret.probes.input_shape == (12,) and secret.probes.input_range == InputRange(-10.0, 10.0)
    assert float(secret.probes.inputs.min()) < -5.0  # triggers drawn over the data's range, not [0, 1]
    code, _, stderr = run("train", "--data", str(tmp_path / "f.npz"), "--watermark", "content",
                          "--out", str(tmp_path / "g.pt2"), home=tmp_path)
    assert code == 2 and "content marks need image inputs [C, H, W], got [12]" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "m.txt"], "wm: error: --out must end in .pt2, got m.txt"),
        (["--data", "missing.npz", "--out", "m.pt2"], "wm: error: data file missing.npz does not exist"),
        (["--watermark", "zhang", "--out", "m.pt2"], "wm: error: unknown watermark scheme 'zhang'"),
        (["--watermark", "content:size=99", "--out", "m.pt2"], "wm: error: content: size must be"),
        (["--data", "bad.npz", "--out", "m.pt2"], "wm: error: bad.npz: x must be float32, got float64"),
        (["--arch", "nope", "--out", "m.pt2"], "wm: error: unknown architecture 'nope'"),
        (["--arch", "no_such_module:fn", "--out", "m.pt2"],
         "wm: error: --arch no_such_module:fn: cannot import"),
        (["--epochs", "0", "--out", "m.pt2"], "Invalid value for '--epochs'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 1, 2, 2)), y=np.zeros(4, np.int64))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(wm, ["--home", str(tmp_path), "train", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    if message.startswith("wm: error"):
        assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.pt2"))


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", "train", "--data", "nope.npz", "--out",
                           "m.pt2"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "WM_HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr == "wm: error: data file nope.npz does not exist\n"


def test_train_and_register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry import Registry

    monkeypatch.setenv("WM_PASSPHRASE", "a passphrase for tests")
    assert run("keygen", "--name", "alice", home=tmp_path)[0] == 0
    out = tmp_path / "m.pt2"
    code, stdout, stderr = run("train", "--epochs", "2", "--out", str(out), "--register", "m1",
                               home=tmp_path)
    assert code == 0, stderr
    assert "registered:        m1 (log entry" in stdout
    with Registry.open(f"sqlite:///{tmp_path / 'registry.db'}", create=False) as reg:
        [mark] = reg.probesets("m1", kind="watermark")
        assert mark.root == read_secret(secret_path(out)).probes.root
        assert reg.model("m1").data == "digits"  # the registry knows the model's own data (decoys)
    assert run("audit", "verify", home=tmp_path)[0] == 0  # the record with its data name audits
    # the name is checked before any training happens
    code, _, stderr = run("train", "--epochs", "2", "--out", str(tmp_path / "m2.pt2"),
                          "--register", "m1", home=tmp_path)
    assert code == 2 and "a model named 'm1' is already registered" in stderr
    assert not (tmp_path / "m2.pt2").exists()
    monkeypatch.setenv("WM_PASSPHRASE", "wrong")
    code, _, stderr = run("train", "--epochs", "2", "--out", str(tmp_path / "m3.pt2"),
                          "--register", "m3", home=tmp_path)
    assert code == 2 and "wrong passphrase" in stderr and not (tmp_path / "m3.pt2").exists()
