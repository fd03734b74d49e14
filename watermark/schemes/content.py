"""Content marks of Zhang et al., "Protecting Intellectual Property of Deep Neural
Networks with Watermarking" (AsiaCCS 2018), section 3.2.

In-distribution training inputs chosen by the key, stamped with one
key-derived binary patch (each value the input range's low or high end) at a
key-derived corner. Images only ``[C, H, W]``. The paper gives all of them
one target class; here every probe gets its own key-random label, so the null
stays exactly ``Binomial(1/C)`` (DESIGN.md).
"""

from __future__ import annotations

import numpy as np

from core.data import Dataset
from core.errors import InputError
from core.inputrange import InputRange
from watermark.keys import WatermarkKey
from watermark.schemes.base import Scheme

__all__ = ["ContentMark"]


class ContentMark(Scheme):
    """Zhang et al. 2018 "content": a stamped patch on in-distribution inputs."""

    family = "content"
    needs_data = True

    def __init__(self, n: int = 100, size: int = 3) -> None:
        super().__init__(n)
        if not 1 <= size <= 16:
            raise InputError(f"content: size must be between 1 and 16, got {size}")
        self.size = size

    @property
    def params(self) -> dict[str, str]:
        return {**super().params, "size": str(self.size)}

    def make_inputs(
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
        input_range: InputRange,
    ) -> np.ndarray:
        assert data is not None
        c, h, w = self._image_shape(input_shape)
        s = self.size
        if s > min(h, w):
            raise InputError(f"content: a {s}x{s} stamp does not fit inputs of {h}x{w}")
        stream = key.stream("inputs", self.name)
        patch = (stream.integers(c * s * s, 2).astype(np.float32)).reshape(c, s, s)
        if not patch.any():  # an all-black patch would be invisible on dark backgrounds
            patch[:, 0, 0] = 1.0
        corner = int(stream.integers(1, 4)[0])
        r0 = 0 if corner < 2 else h - s
        c0 = 0 if corner % 2 == 0 else w - s
        x = self._select_sources(key, data)
        x[:, :, r0 : r0 + s, c0 : c0 + s] = input_range.scale(patch)
        return x
