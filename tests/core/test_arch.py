"""Architectures: the built-ins on any input size, MODULE:FUNCTION, and registration from Python."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from core.arch import ARCHITECTURES, build_model, family_of, register_architecture, resolve_arch
from core.errors import InputError


@pytest.fixture
def clean_registry() -> Iterator[None]:
    before = dict(ARCHITECTURES)
    yield
    ARCHITECTURES.clear()
    ARCHITECTURES.update(before)


@pytest.mark.parametrize("name", ["cnn", "cnn-wide", "convnet", "resnet", "resnet-wide", "mlp", "mlp-wide"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 13, 7)])
def test_builtins_take_any_image_size(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = build_model(name, shape, 7).eval()
    assert net(torch.rand(3, *shape)).shape == (3, 7)
    assert any(isinstance(m, nn.Dropout) for m in net.modules())  # ensembles rely on dropout


def test_flat_features_need_an_mlp_or_your_own() -> None:
    assert build_model("mlp", (20,), 3)(torch.rand(4, 20)).shape == (4, 3)
    for name in ("cnn", "convnet", "resnet"):
        with pytest.raises(InputError, match=rf"architecture '{name}' takes inputs \[C, H, W\], got \[20\]"):
            build_model(name, (20,), 3)
    assert [family_of(n) for n in ("cnn", "convnet", "resnet", "mlp")] == ["cnn", "cnn", "resnet", "mlp"]


def _write_module(tmp_path: Path, body: str) -> str:
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    return name


USER_MODULE = '''
from torch import nn

def tiny(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.1), nn.Linear(4 * h * w, num_classes))

def not_a_model(input_shape, num_classes):
    return "a string"

def wrong_signature():
    return nn.Linear(1, 1)

VALUE = 3
'''


def test_module_function_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _write_module(tmp_path, USER_MODULE)
    monkeypatch.chdir(tmp_path)
    cwd = str(tmp_path)
    assert cwd not in sys.path  # as for the `wm` console script
    net = build_model(f"{name}:tiny", (3, 6, 6), 5)
    assert net(torch.rand(2, 3, 6, 6)).shape == (2, 5)
    assert cwd not in sys.path  # put back as it was
    assert resolve_arch(f"{name}:tiny").family == "custom"
    for spec, message in [
        (f"{name}:not_a_model", rf"architecture '{name}:not_a_model' returned str, not an nn.Module"),
        (f"{name}:wrong_signature", r"could not be built for inputs \[3, 6, 6\] and 5 classes \(TypeError"),
        (f"{name}:VALUE", rf"{name} has no function 'VALUE'"),
        (f"{name}:missing", rf"{name} has no function 'missing'"),
        ("no_such_module_xyz:fn", r"cannot import 'no_such_module_xyz' \(ModuleNotFoundError"),
        ("nope", "unknown architecture 'nope'"),
        (":fn", "unknown architecture ':fn'"),
        (f"{name}:", f"unknown architecture '{name}:'"),
    ]:
        with pytest.raises(InputError, match=message):
            build_model(spec, (3, 6, 6), 5)


def test_register_architecture_from_python(clean_registry: None) -> None:
    def build(shape: tuple[int, ...], k: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), k))

    register_architecture("linear-probe", build, family="linear")
    assert build_model("linear-probe", (2, 3), 4)(torch.rand(1, 2, 3)).shape == (1, 4)
    assert family_of("linear-probe") == "linear"
    with pytest.raises(InputError, match="architecture 'linear-probe' is already registered"):
        register_architecture("linear-probe", build)
    with pytest.raises(InputError, match="an architecture name is letters"):
        register_architecture("has:colon", build)
