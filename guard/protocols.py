"""Marking an answer the guard has read: the marked rows rewritten where the answer holds them.

The guard reads requests and answers with the codecs that ``wm serve`` and
the verifier use (:mod:`verifier.wire.incoming`: :func:`~verifier.wire.incoming.route_of`,
:class:`~verifier.wire.incoming.RequestReader`, :func:`~verifier.wire.incoming.read_answer`),
so the guard and a server agree on every request: what a server would
answer, the guard can mark, and what the guard cannot read it refuses. An
answer read by those codecs names every place (column) that holds answers
for the inputs; :func:`encode_marked` rewrites the marked rows in each: a
label is replaced, a score row permuted so that its argmax is the marked
label, integers stay integers.
"""

from __future__ import annotations

import json

import numpy as np

from verifier.wire.tensors import DecodedAnswer, OutputKind

__all__ = ["encode_marked"]


def _mark_scores(row: np.ndarray, label: int, kind: OutputKind) -> np.ndarray:
    """Scores whose argmax is ``label``: the top score and ``label``'s swap places.

    A swap keeps the answer a permutation of the honest one (probabilities
    still sum to 1, the confidence profile is unchanged); ties are broken
    toward ``label`` by a tiny shift of mass (probabilities) or value (logits).
    """
    out = row.astype(np.float64).copy()
    top = int(np.argmax(out))
    out[top], out[label] = out[label], out[top]
    others = np.delete(np.arange(out.size), label)
    if out.size > 1 and out[others].max() >= out[label]:
        if kind == "probabilities":
            eps = max(1e-6, float(out[label]) * 1e-6)
            tied = others[out[others] >= out[label]]
            take = np.minimum(out[tied], eps)
            out[tied] -= take
            out[label] += take.sum()
        else:
            out[label] = np.nextafter(np.float32(out[others].max()), np.float32(np.inf))
    return out


def _mark_rows(values: np.ndarray, marks: dict[int, int], kind: OutputKind) -> np.ndarray:
    out = values.astype(np.float64).copy()
    for i, label in marks.items():
        if out.ndim == 1:
            out[i] = label
        elif out.shape[1] == 1:
            out[i, 0] = label
        else:
            out[i] = _mark_scores(out[i], label, kind)
    return out


def encode_marked(answer: DecodedAnswer, marks: dict[int, int]) -> bytes:
    """The answer with rows ``marks`` (row index -> label) marked in every column, as JSON bytes.

    Raises:
        ValueError: the answer has a column that cannot be rewritten (check
            :attr:`~verifier.wire.tensors.DecodedAnswer.writable` first).
    """
    for column in answer.columns:
        column.replace(_mark_rows(column.values, marks, column.kind))
    return json.dumps(answer.doc, separators=(",", ":")).encode()
