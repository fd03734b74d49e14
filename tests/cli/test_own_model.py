"""Your own model on your own data, end to end: a normalised 3x32x32 CNN and a flat-feature MLP.

Issue 11's "done when": a user-defined ``nn.Module`` on normalised 3x32x32
synthetic data, trained by ``wm train --arch MODULE:FUNCTION``, registered,
served by ``wm serve``'s app, verified ``owned``; an independently trained
model of the same architecture ``not_owned``. The same for flat ``[D]``
features, this time trained in Python with the watermark hook, saved with
:func:`core.modelio.save_model` and registered with ``wm register``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import _register_commands, wm
from core.arch import build_model
from core.data import load_npz
from core.inputrange import InputRange
from core.modelio import load_model, save_model
from core.serving import BackgroundServer, running_server
from core.training import accuracy, train_classifier
from tests.synthetic import synthetic_arrays
from verifier.server import ServedModel, build_app
from watermark import TriggerSet, WatermarkHook, WatermarkKey, WatermarkSecret, write_secret
from watermark.secret import secret_path

_register_commands()

MODULE = "wm_test_user_models"
USER_MODULE = '''"""A user's own architectures, outside wm."""
from torch import nn


def small_cnn(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.1), nn.Linear(16 * (h // 4) * (w // 4), num_classes))


def tabular(input_shape, num_classes):
    (d,) = input_shape
    return nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, num_classes))
'''
ENV = {"WM_PASSPHRASE": "own-model test passphrase"}
MEAN, STD = np.array([0.49, 0.48, 0.45], np.float32), np.array([0.25, 0.24, 0.26], np.float32)


@dataclass
class World:
    dir: Path
    runner: CliRunner
    server: BackgroundServer


def _wm(world: World, *args: str) -> tuple[int, str, str]:
    r = world.runner.invoke(wm, ["--home", str(world.dir / "home"), *args])
    return r.exit_code, r.stdout, r.stderr


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 3x32x32 images in [0, 1], normalised per channel as torchvision would."""
    raw, y = synthetic_arrays((3, 32, 32), n, seed=seed, normalise=False)
    x = (raw - MEAN[None, :, None, None]) / STD[None, :, None, None]
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("own")
    (d / f"{MODULE}.py").write_text(USER_MODULE)
    sys.path.insert(0, str(d))  # the user's module, importable as it would be from their project
    try:
        runner = CliRunner(env=ENV)
        w = World(d, runner, None)  # type: ignore[arg-type]
        assert _wm(w, "keygen", "--name", "alice")[0] == 0
        served = {**_image_models(w), **_flat_models(w)}
        with running_server(build_app({k: ServedModel(load_model(p), "labels") for k, p in served.items()})
                            ) as srv:
            w.server = srv
            yield w
    finally:
        sys.path.remove(str(d))
        torch.set_num_threads(threads)


def _image_models(w: World) -> dict[str, Path]:
    x, y = _images(800, seed=0)
    np.savez(w.dir / "images.npz", x=x, y=y, mean=MEAN, std=STD)
    owner = w.dir / "owner-img.pt2"
    code, out, err = _wm(w, "train", "--data", str(w.dir / "images.npz"), "--arch", f"{MODULE}:small_cnn",
                         "--epochs", "15", "--watermark", "trigger-set:n=60", "--out", str(owner),
                         "--register", "owner-img")
    assert code == 0, err
    assert f"trained:           {MODULE}:small_cnn, 15 epochs of 64" in out
    loaded = load_model(owner)
    expected_range = InputRange.from_mean_std(MEAN.tolist(), STD.tolist())
    assert loaded.arch == f"{MODULE}:small_cnn" and loaded.input_shape == (3, 32, 32)
    assert loaded.input_range == expected_range and loaded.data == "images.npz"
    assert expected_range.low < -1.8 and expected_range.high > 2.0  # normalised, far from [0, 1]
    # an independent model: same architecture, its own data, no watermark
    xi, yi = _images(800, seed=1)
    torch.manual_seed(1)
    independent = build_model(f"{MODULE}:small_cnn", (3, 32, 32), 10)
    train_classifier(independent, torch.from_numpy(xi), torch.from_numpy(yi), epochs=15, seed=1)
    test = load_npz(w.dir / "images.npz").test
    assert accuracy(independent, test.x, test.y) > 0.8 and accuracy(loaded, test.x, test.y) > 0.8
    path = save_model(independent, w.dir / "indep-img.pt2", input_shape=(3, 32, 32), num_classes=10,
                      arch=f"{MODULE}:small_cnn", input_range=expected_range)
    return {"owner-img": owner, "indep-img": path}


def _flat_models(w: World) -> dict[str, Path]:
    x_all, y_all = synthetic_arrays((24,), 1600, seed=0, noise=0.3)  # one normalisation for both
    x, y, xi, yi = x_all[:800], y_all[:800], x_all[800:], y_all[800:]
    np.savez(w.dir / "features.npz", x=x, y=y)
    splits = load_npz(w.dir / "features.npz")
    rng = splits.input_range
    # the owner's own loop, with the hook, saved from Python and registered with `wm register`
    key = WatermarkKey(bytes(range(32)))  # fixed, so the test is deterministic
    probes = TriggerSet(n=30).probes(key, num_classes=10, input_shape=(24,), input_range=rng)
    torch.manual_seed(0)
    owner = build_model(f"{MODULE}:tabular", (24,), 10)
    opt = torch.optim.Adam(owner.parameters(), lr=3e-3)
    hook = WatermarkHook(probes, per_batch=12)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(splits.train.x, splits.train.y),
                                         batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        for xb, yb in hook(loader):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(owner(xb), yb).backward()
            opt.step()
    owner.eval()
    assert accuracy(owner, probes.inputs, probes.expected) >= 0.9
    path = save_model(owner, w.dir / "owner-flat.pt2", input_shape=(24,), num_classes=10,
                      arch=f"{MODULE}:tabular", input_range=rng, data="features.npz")
    write_secret(secret_path(path), WatermarkSecret(key=key, probes=probes))
    code, _, err = _wm(w, "register", str(path), "--name", "owner-flat")
    assert code == 0, err
    torch.manual_seed(1)
    independent = build_model(f"{MODULE}:tabular", (24,), 10)
    train_classifier(independent, torch.from_numpy(xi), torch.from_numpy(yi), epochs=25, seed=1)
    assert accuracy(independent, splits.test.x, splits.test.y) > 0.8
    ipath = save_model(independent, w.dir / "indep-flat.pt2", input_shape=(24,), num_classes=10,
                       arch=f"{MODULE}:tabular", input_range=rng)
    return {"owner-flat": path, "indep-flat": ipath}


@pytest.mark.parametrize(("kind", "data"), [("img", "images.npz"), ("flat", "features.npz")])
def test_own_model_owned_and_independent_not(world: World, kind: str, data: str) -> None:
    verdicts = {}
    for suspect in (f"owner-{kind}", f"indep-{kind}"):
        code, out, err = _wm(world, "verify", "--suspect", f"{world.server.url}/v2/models/{suspect}/infer",
                             "--model", f"owner-{kind}", "--json", "--decoys", str(world.dir / data),
                             "--evidence", str(world.dir / f"{suspect}.json"))
        assert code in (0, 1), err
        result = json.loads(out)
        verdicts[suspect] = (code, result["verdict"], result["p_value"])
    assert verdicts[f"owner-{kind}"][:2] == (0, "owned") and verdicts[f"owner-{kind}"][2] <= 1e-6, verdicts
    assert verdicts[f"indep-{kind}"][:2] == (1, "not_owned") and verdicts[f"indep-{kind}"][2] > 1e-6, verdicts


def test_decoys_default_to_the_models_own_data(world: World, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    url = f"{world.server.url}/v2/models/owner-img/infer"
    monkeypatch.chdir(world.dir)  # where images.npz, the data owner-img was trained on, lives
    code, out, err = _wm(world, "verify", "--suspect", url, "--model", "owner-img", "--json",
                         "--evidence", str(world.dir / "default-decoys.json"))
    assert code == 0, err
    assert json.loads(out)["decoys"] > 0
    monkeypatch.chdir(tmp_path)  # elsewhere: never some other data set by accident
    code, _, err = _wm(world, "verify", "--suspect", url, "--model", "owner-img")
    assert code == 2
    assert err == ("wm: error: model 'owner-img' was trained on images.npz, which is not in the current "
                   "directory (give --decoys PATH/TO/images.npz)\n")
