"""Plain JSON APIs (``--protocol json``): the inputs under one field, the answers at a path.

``POST URL`` with ``{INPUT_FIELD: [inputs...]}``; the answers are found at a
dotted ``OUTPUT_FIELD`` path of the answer (``result.labels``), as labels or
scores, or as objects of named outputs like V1's. Nothing can be learned
about such an endpoint beforehand, so :meth:`JsonClient.describe` only says
what it will send.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import InputError, SuspectError
from verifier.wire.client import Detection, SuspectClient
from verifier.wire.tensors import DecodedAnswer, read_listed

__all__ = ["JsonClient"]


class JsonClient(SuspectClient):
    """Plain JSON: ``{input_field: [inputs]}`` in, answers at ``output_field`` (dotted path) out."""

    protocol = "json"

    def __init__(self, url: str, *, input_field: str = "inputs", output_field: str = "outputs",
                 **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if not input_field or not output_field:
            raise InputError("json protocol needs non-empty input and output fields")
        self.input_field = input_field
        self.output_path = output_field.split(".")

    def describe(self) -> Detection:
        return Detection(
            "json", self.url,
            f"plain JSON: inputs in {self.input_field!r}, answers at {'.'.join(self.output_path)!r}",
        )

    def request_body(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        # float32 -> float64 is exact; JSON's shortest repr of that double reads back to it.
        return self.url, {self.input_field: x.astype(np.float64).tolist()}

    def parse_answer(self, doc: Any, n: int) -> DecodedAnswer:
        holder: Any = None
        v = doc
        for part in self.output_path:
            if not isinstance(v, dict) or part not in v:
                raise SuspectError(f"suspect's answer has no field {'.'.join(self.output_path)!r}")
            holder, v = v, v[part]
        last = self.output_path[-1]
        return read_listed([doc], v, n, self.num_classes, "suspect's answer",
                           lambda new: holder.__setitem__(last, new))
