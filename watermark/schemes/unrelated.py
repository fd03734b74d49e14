"""Unrelated marks of Zhang et al., "Protecting Intellectual Property of Deep Neural
Networks with Watermarking" (AsiaCCS 2018), section 3.2.

Inputs from outside the task: Zhang et al. use images of another data set;
with nothing to download, wm renders Latin capital letters (a 5x7 bitmap font,
letters that look like digits left out) at key-derived positions and
intensities on a faintly noisy background, nearest-upsampled to the task's
input size and mapped onto the input range. Images only ``[C, H, W]``.
Every probe gets its own key-random label, so the null stays exactly
``Binomial(1/C)``.
"""

from __future__ import annotations

import numpy as np

from core.data import Dataset
from core.inputrange import InputRange
from watermark.keys import WatermarkKey
from watermark.schemes.base import Scheme

__all__ = ["GLYPHS", "UnrelatedMark"]

# 5x7 bitmaps; B, D, G, I, O, S, Z are left out because they resemble digits.
GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "##.##", "#...#"),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
}
_BITMAPS = np.stack(
    [np.array([[ch == "#" for ch in row] for row in g], dtype=np.float32) for g in GLYPHS.values()]
)
_CANVAS = 8


class UnrelatedMark(Scheme):
    """Zhang et al. 2018 "unrelated": inputs from outside the task (rendered letters)."""

    family = "unrelated"

    def __init__(self, n: int = 100) -> None:
        super().__init__(n)

    @property
    def params(self) -> dict[str, str]:
        return {**super().params, "source": "letters"}

    def make_inputs(
        self, key: WatermarkKey, input_shape: tuple[int, ...], data: Dataset | None,
        input_range: InputRange,
    ) -> np.ndarray:
        c, h, w = self._image_shape(input_shape)
        s = key.stream("inputs", self.name)
        letters = s.integers(self.n, len(_BITMAPS))
        rows = s.integers(self.n, _CANVAS - 7 + 1)
        cols = s.integers(self.n, _CANVAS - 5 + 1)
        level = np.float32(0.6) + np.float32(0.4) * s.uniform(self.n)
        background = np.float32(0.1) * s.uniform(self.n * _CANVAS * _CANVAS).reshape(
            self.n, _CANVAS, _CANVAS
        )
        canvas = background.copy()
        for i in range(self.n):
            r, q = int(rows[i]), int(cols[i])
            glyph = _BITMAPS[int(letters[i])] * level[i]
            region = canvas[i, r : r + 7, q : q + 5]
            canvas[i, r : r + 7, q : q + 5] = np.maximum(region, glyph)
        ri = (np.arange(h) * _CANVAS) // h
        ci = (np.arange(w) * _CANVAS) // w
        img = input_range.scale(canvas[:, ri][:, :, ci])
        return np.ascontiguousarray(np.repeat(img[:, None], c, axis=1), dtype=np.float32)
