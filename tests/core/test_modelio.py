""".pt2 model files: round trip with another batch size, digests, bad files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from core.arch import ARCHITECTURES, build_model, family_of
from core.errors import InputError, ModelFileError
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
