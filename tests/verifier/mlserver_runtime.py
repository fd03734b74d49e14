"""An MLServer custom runtime serving a wm ``.pt2`` model, as a user would deploy one.

Copied beside each model's ``model-settings.json`` by ``tests/verifier/test_mlserver.py``
and run by MLServer in its own venv (it imports ``mlserver``, which wm does not depend
on). Like most custom runtimes it declares no input or output metadata: MLServer then
answers ``GET /v2/models/NAME`` with ``"inputs": []`` and ``"outputs": []``.
"""

from __future__ import annotations

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TorchExportRuntime(MLModel):  # type: ignore[misc]
    """Answers the labels of the ``.pt2`` at ``parameters.uri`` (INT64, MLServer's NumPy codec)."""

    async def load(self) -> bool:
        torch.set_num_threads(1)
        self._model = torch.export.load(self.settings.parameters.uri).module()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        with torch.no_grad():
            labels = self._model(torch.from_numpy(x)).argmax(dim=1).numpy().astype(np.int64)
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output(name="output-0", payload=labels)])
