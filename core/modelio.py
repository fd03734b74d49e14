"""Model files: ``.pt2`` programs written with ``torch.export``, dynamic batch dimension.

A wm model file takes float32 ``[N, C, H, W]`` or ``[N, D]`` and returns
logits ``[N, classes]``; ``N`` is dynamic. Beside the program it carries
``wm.json`` as an extra file, so tools know what the model expects without
running it::

    {"format": "wm.model/v1", "arch": "cnn" | "MODULE:FUNCTION" | null,
     "input_shape": [C, H, W] | [D], "num_classes": C,
     "input_range": {"low": l, "high": h}, "data": "fashion-mnist" | ... | null}

``input_range`` (:class:`~core.inputrange.InputRange`) is where every input
value lies; files written before it was recorded were all [0, 1] and read as
such. ``data`` names the data set the model was trained on, when known, so
``wm verify`` can draw in-distribution decoys from it. Loading is
``torch.export.load(path).module()``; the loaded module refuses ``.train()``
and ``.eval()``, so code that fine-tunes a loaded model rebuilds an
``nn.Module`` with :func:`to_trainable`. Loading never imports code: a
``MODULE:FUNCTION`` architecture is rebuilt only when the caller names it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from core.arch import ARCHITECTURES, build_model
from core.errors import InputError, ModelFileError
from core.files import file_sha256 as file_digest
from core.inputrange import UNIT, InputRange

__all__ = [
    "LoadedModel",
    "check_input_shape",
    "file_digest",
    "load_model",
    "predict_logits",
    "save_model",
    "to_trainable",
    "weights_digest",
]

META_NAME = "wm.json"
MAX_BATCH = 1 << 20


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A loaded ``.pt2``: the callable module and what it expects.

    Attributes:
        module: the exported program as a callable module.
        input_shape: one input's shape, without the batch dimension.
        num_classes: the number of logits.
        arch: the recorded architecture (a name or ``MODULE:FUNCTION``), if any.
        path: where it was loaded from.
        state_dict: a copy of its weights and buffers.
        input_range: the range its inputs lie in; ``None`` for a ``.pt2`` made
            without wm, which does not say.
        data: the data set it was trained on, if recorded.
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    arch: str | None
    path: Path
    state_dict: dict[str, torch.Tensor]
    input_range: InputRange | None = None
    data: str | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def save_model(
    module: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    arch: str | None = None,
    input_range: InputRange = UNIT,
    data: str | None = None,
) -> Path:
    """Export ``module`` (in eval mode) to ``path`` with a dynamic batch dimension.

    The file is written to a temporary name and renamed, so a crash never
    leaves a half-written model behind.

    Args:
        module: the trained model.
        path: where to write the ``.pt2``.
        input_shape: one input's shape, ``[C, H, W]`` or ``[D]``.
        num_classes: the number of logits.
        arch: the architecture's name or ``MODULE:FUNCTION``, so it can be rebuilt.
        input_range: where the model's input values lie; [0, 1] unless given —
            give it for normalised or tabular inputs.
        data: the name of the data set it was trained on, if it has one.
    """
    p = Path(path)
    if not isinstance(input_range, InputRange):
        raise InputError("input_range must be a core.inputrange.InputRange")
    was_training = module.training
    module.eval()
    try:
        example = (torch.zeros(2, *input_shape, dtype=torch.float32),)
        ep = torch.export.export(
            module, example, dynamic_shapes=({0: Dim("batch", min=1, max=MAX_BATCH)},)
        )
    finally:
        module.train(was_training)
    meta = {"arch": arch, "input_shape": [int(d) for d in input_shape], "num_classes": int(num_classes),
            "input_range": input_range.to_dict(), "data": data, "format": "wm.model/v1"}
    tmp = p.with_name(f".{p.stem}.{os.getpid()}.tmp.pt2")
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, str(tmp), extra_files={META_NAME: json.dumps(meta, sort_keys=True)})
    tmp.replace(p)
    return p


def load_model(path: str | Path) -> LoadedModel:
    """Load a wm ``.pt2``; :class:`ModelFileError` if it is missing or not one."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file {p} does not exist")
    extra = {META_NAME: ""}
    export_logger = logging.getLogger("torch.export")
    level = export_logger.level
    export_logger.setLevel(logging.ERROR)  # torch logs a traceback before raising
    try:
        ep = torch.export.load(str(p), extra_files=extra)
    except (RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(
            f"{p} is not a torch.export .pt2 model file ({exc.__class__.__name__})"
        ) from exc
    finally:
        export_logger.setLevel(level)
    meta: dict[str, Any] = {}
    if extra.get(META_NAME):
        try:
            meta = json.loads(extra[META_NAME])
        except ValueError as exc:
            raise ModelFileError(f"{p}: its wm.json metadata is not valid JSON") from exc
    module = ep.module()
    input_shape, num_classes = _shapes(ep, meta, p)
    arch, data = meta.get("arch"), meta.get("data")
    if not isinstance(arch, str | None) or not isinstance(data, str | None):
        raise ModelFileError(f"{p}: its wm.json metadata names its architecture or data oddly")
    return LoadedModel(
        module=module,
        input_shape=input_shape,
        num_classes=num_classes,
        arch=arch,
        path=p,
        state_dict={k: v.detach().clone() for k, v in ep.state_dict.items()},
        input_range=_input_range(meta, p),
        data=data,
    )


def _input_range(meta: dict[str, Any], p: Path) -> InputRange | None:
    if "input_range" in meta:
        try:
            return InputRange.from_dict(meta["input_range"])
        except InputError as exc:
            raise ModelFileError(f"{p}: its recorded input range is malformed ({exc})") from exc
    # wm recorded no range before it had one, and then every model took [0, 1]
    return UNIT if meta.get("format") == "wm.model/v1" else None


def _shapes(ep: Any, meta: dict[str, Any], p: Path) -> tuple[tuple[int, ...], int]:
    if "input_shape" in meta and "num_classes" in meta:
        return tuple(int(s) for s in meta["input_shape"]), int(meta["num_classes"])
    # A .pt2 made elsewhere: read the shapes off the graph's placeholders.
    try:
        inputs = [n for n in ep.graph.nodes if n.op == "placeholder"
                  and n.name not in ep.graph_signature.inputs_to_parameters
                  and n.name not in ep.graph_signature.inputs_to_buffers]
        in_shape = tuple(int(s) for s in inputs[0].meta["val"].shape[1:])
        out = next(n for n in ep.graph.nodes if n.op == "output").args[0][0]
        return in_shape, int(out.meta["val"].shape[-1])
    except (IndexError, KeyError, TypeError, ValueError, StopIteration) as exc:
        raise ModelFileError(f"{p}: cannot tell the model's input and output shapes") from exc


def check_input_shape(model: LoadedModel, input_shape: tuple[int, ...], *, what: str) -> None:
    """:class:`ModelFileError` unless ``what`` (the data) fits the model's input."""
    if tuple(input_shape) != tuple(model.input_shape):
        raise ModelFileError(
            f"{model.path} takes inputs of shape {list(model.input_shape)}, "
            f"but {what} has {list(input_shape)}"
        )


@torch.no_grad()
def predict_logits(module: nn.Module | LoadedModel, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for ``x``, in batches, without gradients."""
    outs = [module(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


def to_trainable(model: LoadedModel, arch: str | None = None) -> nn.Module:
    """An ordinary ``nn.Module`` of the model's architecture with its weights (for attacks).

    Args:
        model: the loaded model.
        arch: the architecture to rebuild (a name or ``MODULE:FUNCTION``).
            Without it the recorded one is used if it is a known name; a
            recorded ``MODULE:FUNCTION`` is never imported on the file's word
            (code named by a file is not run): name it here.

    Raises:
        ModelFileError: if no architecture can be rebuilt, or the weights do not fit it.
    """
    name = arch if arch is not None else model.arch
    if name is None:
        raise ModelFileError(f"{model.path} records no architecture to rebuild",
                             hint="name the architecture it was trained with")
    if arch is None and name not in ARCHITECTURES:
        raise ModelFileError(f"{model.path} was trained with architecture {name!r}, which is not "
                             "a known name", hint=f"name it to import its code (--arch {name})")
    net = build_model(name, model.input_shape, model.num_classes)
    try:
        net.load_state_dict(model.state_dict)
    except RuntimeError as exc:
        raise ModelFileError(f"{model.path}: its weights do not fit architecture {name!r}") from exc
    return net


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the weights in canonical form (sorted names, dtype, shape, LE bytes), hex.

    Unlike :func:`file_digest` it does not change when the same weights are
    exported again by another torch version.
    """
    h = hashlib.sha256(b"wm.weights/v1\x00")
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode() + b"\x00" + str(t.dtype).encode() + b"\x00")
        h.update(json.dumps(list(t.shape)).encode() + b"\x00")
        h.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()
