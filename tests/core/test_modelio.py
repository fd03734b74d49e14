""".pt2 model files: round trip with another batch size, recorded range and data, digests, bad files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from core.arch import ARCHITECTURES, build_model, family_of
from core.errors import InputError, ModelFileError
from core.inputrange import UNIT, InputRange
from core.modelio import (
    check_input_shape,
    file_digest,
    load_model,
    save_model,
    to_trainable,
    weights_digest,
)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_round_trip_with_other_batch_sizes(tmp_path: Path, arch: str) -> None:
    torch.manual_seed(0)
    net = build_model(arch, (1, 8, 8), 10).eval()
    path = save_model(net, tmp_path / "m.pt2", input_shape=(1, 8, 8), num_classes=10, arch=arch)
    loaded = load_model(path)
    assert (loaded.input_shape, loaded.num_classes, loaded.arch) == ((1, 8, 8), 10, arch)
    for n in (1, 3, 257):
        x = torch.rand(n, 1, 8, 8)
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert weights_digest(loaded.state_dict) == weights_digest(net.state_dict())
    rebuilt = to_trainable(loaded).eval()
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(rebuilt(x), net(x), atol=1e-6)
    assert not list(tmp_path.glob("*.tmp*"))


def test_digests(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = build_model("mlp", (1, 8, 8), 10)
    torch.manual_seed(1)
    b = build_model("mlp", (1, 8, 8), 10)
    assert weights_digest(a.state_dict()) != weights_digest(b.state_dict())
    p = save_model(a, tmp_path / "a.pt2", input_shape=(1, 8, 8), num_classes=10, arch="mlp")
    assert len(file_digest(p)) == 64


def test_wrong_input_shape_is_named(tmp_path: Path) -> None:
    p = save_model(build_model("cnn", (1, 8, 8), 10), tmp_path / "m.pt2", input_shape=(1, 8, 8),
                   num_classes=10, arch="cnn")
    message = r"takes inputs of shape \[1, 8, 8\], but data.npz has \[3, 8, 8\]"
    with pytest.raises(ModelFileError, match=message):
        check_input_shape(load_model(p), (3, 8, 8), what="data.npz")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match=r"is not a torch.export .pt2 model file"):
        load_model(junk)
    other_zip = tmp_path / "other.pt2"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(ModelFileError, match=r"is not a torch.export .pt2 model file"):
        load_model(other_zip)


def test_unknown_architecture() -> None:
    with pytest.raises(InputError, match="unknown architecture 'nope'"):
        build_model("nope", (1, 8, 8), 10)
    assert family_of("cnn-wide") == "cnn" and family_of("mlp") == "mlp"


def _export(net: torch.nn.Module, path: Path, shape: tuple[int, ...], meta: str | None) -> Path:
    ep = torch.export.export(net.eval(), (torch.zeros(2, *shape),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(ep, str(path), extra_files={"wm.json": meta} if meta is not None else None)
    return path


def test_input_range_and_data_are_recorded(tmp_path: Path) -> None:
    rng = InputRange(-2.1, 2.6)
    net = build_model("mlp", (20,), 3)
    p = save_model(net, tmp_path / "flat.pt2", input_shape=(20,), num_classes=3, arch="mlp",
                   input_range=rng, data="features.npz")
    loaded = load_model(p)
    assert (loaded.input_shape, loaded.input_range, loaded.data) == ((20,), rng, "features.npz")
    default = save_model(net, tmp_path / "d.pt2", input_shape=(20,), num_classes=3)
    assert load_model(default).input_range == UNIT
    # written by wm before ranges were recorded: every such model took [0, 1]
    old = json.dumps({"arch": "mlp", "input_shape": [20], "num_classes": 3, "format": "wm.model/v1"})
    assert load_model(_export(net, tmp_path / "old.pt2", (20,), old)).input_range == UNIT
    # made without wm: nothing is known, and nothing is assumed
    foreign = load_model(_export(net, tmp_path / "foreign.pt2", (20,), None))
    assert (foreign.input_shape, foreign.num_classes) == ((20,), 3)
    assert foreign.input_range is None and foreign.arch is None
    bad = json.dumps({"arch": "mlp", "input_shape": [20], "num_classes": 3, "format": "wm.model/v1",
                      "input_range": {"low": 1.0, "high": -1.0}})
    with pytest.raises(ModelFileError, match="recorded input range is malformed"):
        load_model(_export(net, tmp_path / "bad.pt2", (20,), bad))
    with pytest.raises(InputError, match="input_range must be"):
        save_model(net, tmp_path / "x.pt2", input_shape=(20,), num_classes=3, input_range=(0, 1))  # type: ignore[arg-type]


def test_to_trainable_never_imports_code_named_by_the_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_arch_modelio.py").write_text(
        "from torch import nn\n"
        "def net(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))\n"
        "def other(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 2 * num_classes))\n")
    monkeypatch.chdir(tmp_path)
    spec = "user_arch_modelio:net"
    net = build_model(spec, (6,), 2)
    loaded = load_model(save_model(net, tmp_path / "m.pt2", input_shape=(6,), num_classes=2, arch=spec))
    assert loaded.arch == spec
    with pytest.raises(ModelFileError, match="trained with architecture 'user_arch_modelio:net', which "
                       "is not a known name") as err:
        to_trainable(loaded)
    assert err.value.hint == "name it to import its code (--arch user_arch_modelio:net)"
    x = torch.rand(4, 6)
    assert torch.allclose(to_trainable(loaded, spec)(x), net(x))
    with pytest.raises(ModelFileError, match="weights do not fit architecture 'user_arch_modelio:other'"):
        to_trainable(loaded, "user_arch_modelio:other")
    foreign = load_model(_export(net, tmp_path / "f.pt2", (6,), None))
    with pytest.raises(ModelFileError, match="records no architecture"):
        to_trainable(foreign)
