"""RFC 6962 Merkle tree hashing, with inclusion and consistency proofs per RFC 9162.

Hashes (RFC 6962 section 2.1, RFC 9162 section 2.1.1): the empty tree is
``SHA-256("")``, a leaf is ``SHA-256(0x00 || data)``, an interior node is
``SHA-256(0x01 || left || right)``; a tree of ``n > 1`` leaves splits at ``k``,
the largest power of two smaller than ``n``.

Proof generation follows RFC 9162 sections 2.1.3.1 (``PATH``) and 2.1.4.1
(``PROOF``/``SUBPROOF``); verification follows sections 2.1.3.2 and 2.1.4.2
step by step; proofs are first planned as leaf ranges
(:func:`inclusion_ranges`, :func:`consistency_ranges`), so a store that keeps
interior nodes (:class:`CompactRange` reports each one it completes) answers
them by reading the O(log n) perfect subtrees that tile those ranges
(:func:`perfect_subtrees`). Verification raises :class:`~core.errors.IntegrityError` and
returns nothing, so a failure cannot be silently ignored. The registry log,
probe commitments and the evidence check all use this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from core.errors import IntegrityError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "NodeId",
    "consistency_proof",
    "consistency_ranges",
    "fold_subtrees",
    "inclusion_proof",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "perfect_subtrees",
    "root_from_hashes",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_hashes(hashes: Sequence[bytes]) -> bytes:
    """Merkle tree hash of a list of *leaf hashes* (iterative, O(n))."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    # Bottom-up pairing gives the same tree as RFC 6962's recursive split:
    # an odd node at the end of a level is promoted unchanged.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """Merkle tree hash ``MTH(D[n])`` of a list of leaf *data*."""
    return root_from_hashes([leaf_hash(d) for d in leaves])


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges ``[lo, hi)`` whose subtree hashes form ``PATH(index, D[size])``, leaf first.

    RFC 9162 section 2.1.3.1: walking down from the root, the sibling of the
    side that holds ``index`` at each split.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} outside a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    return ranges[::-1]


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """The leaf ranges ``[lo, hi)`` whose subtree hashes form ``PROOF(size1, D[size2])``.

    RFC 9162 section 2.1.4.1 (``SUBPROOF``), in proof order.
    """
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")

    def subproof(m: int, lo: int, hi: int, complete: bool) -> list[tuple[int, int]]:
        if m == hi - lo:
            return [] if complete else [(lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return [*subproof(m, lo, lo + k, complete), (lo + k, hi)]
        return [*subproof(m - k, lo + k, hi, False), (lo, lo + k)]

    return subproof(size1, 0, size2, True)


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(index, D[n])`` over the given leaf hashes (RFC 9162 2.1.3.1)."""
    return [root_from_hashes(hashes[lo:hi]) for lo, hi in inclusion_ranges(index, len(hashes))]


def consistency_proof(hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """``PROOF(size1, D[n])`` over the given leaf hashes (RFC 9162 2.1.4.1)."""
    return [root_from_hashes(hashes[lo:hi]) for lo, hi in consistency_ranges(size1, len(hashes))]


NodeId = tuple[int, int]
"""A perfect subtree ``(level, end)``: the ``2**level`` leaves ending just before leaf ``end``."""


def perfect_subtrees(lo: int, hi: int) -> list[NodeId]:
    """The perfect subtrees that tile the leaves ``[lo, hi)``, left to right, largest first.

    For the ranges a proof names (an RFC 6962 subtree, or a prefix ``[0, n)``)
    their sizes strictly decrease, so :func:`fold_subtrees` gives the range's
    Merkle tree hash.
    """
    out: list[NodeId] = []
    while lo < hi:
        size = lo & -lo if lo else 1 << ((hi - lo).bit_length() - 1)
        while size > hi - lo:
            size >>= 1
        lo += size
        out.append((size.bit_length() - 1, lo))
    return out


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of adjacent perfect subtrees of strictly decreasing size.

    ``hashes`` are the subtrees' roots left to right (as :func:`perfect_subtrees`
    lists them); an empty list is the empty tree.
    """
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for node in reversed(hashes[:-1]):
        root = node_hash(node, root)
    return root


class CompactRange:
    """The right edge of a growing tree: the roots of the perfect subtrees over ``[0, size)``.

    After transparency-dev's ``compact.Range``: one root per set bit of
    ``size``, largest first. Appending a leaf merges equal-sized subtrees and
    reports each interior node it completes, so a store can keep them and serve
    proofs by reading O(log n) nodes instead of recomputing from every leaf.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a compact range of {size} leaves has {size.bit_count()} roots")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> list[tuple[NodeId, bytes]]:
        """Add a leaf hash; the interior nodes it completes, lowest first, as ``((level, end), hash)``."""
        node, n, level = leaf, self.size, 0
        made: list[tuple[NodeId, bytes]] = []
        self.size += 1
        while n & 1:
            node = node_hash(self.hashes.pop(), node)
            n >>= 1
            level += 1
            made.append(((level, self.size), node))
        self.hashes.append(node)
        return made

    def root(self) -> bytes:
        """The RFC 6962 root of the ``size`` leaves."""
        return fold_subtrees(self.hashes)

    def to_bytes(self) -> bytes:
        """The roots concatenated (``32 * popcount(size)`` bytes)."""
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, blob: bytes) -> CompactRange:
        """Inverse of :meth:`to_bytes` for a range of ``size`` leaves; ``ValueError`` if it does not fit."""
        if len(blob) != HASH_SIZE * size.bit_count():
            raise ValueError(f"a compact range of {size} leaves takes {HASH_SIZE * size.bit_count()} bytes")
        return cls(size, [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)])


def _check_len(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise IntegrityError(f"{name} is {len(value)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that the leaf hash ``leaf`` sits at ``index`` in the tree ``(size, root)``.

    RFC 9162 section 2.1.3.2. Raises :class:`IntegrityError` when it does not.
    """
    if index < 0 or index >= size:
        raise IntegrityError(f"leaf index {index} is outside a tree of size {size}")
    _check_len("leaf hash", leaf)
    _check_len("root hash", root)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        _check_len("proof hash", p)
        if sn == 0:
            raise IntegrityError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise IntegrityError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise IntegrityError("inclusion proof does not lead to the root hash")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes] | None, root1: bytes, root2: bytes
) -> None:
    """Check that the tree ``(size2, root2)`` extends ``(size1, root1)``.

    RFC 9162 section 2.1.4.2. A first tree of size 0 proves nothing and is
    rejected. Raises :class:`IntegrityError` when the proof does not hold.
    """
    path = list(proof or [])
    if size1 > size2:
        raise IntegrityError(f"first tree size {size1} exceeds second tree size {size2}")
    if size1 == 0:
        raise IntegrityError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if path:
            raise IntegrityError("trees of equal size need an empty consistency proof")
        if root1 != root2:
            raise IntegrityError("trees of equal size have different root hashes")
        return
    if not path:
        raise IntegrityError("consistency proof is empty")
    _check_len("first root hash", root1)
    _check_len("second root hash", root2)
    for p in path:
        _check_len("proof hash", p)
    if size1 & (size1 - 1) == 0:  # exact power of two
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise IntegrityError("consistency proof is longer than the trees need")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise IntegrityError("consistency proof is shorter than the trees need")
    if fr != root1:
        raise IntegrityError("consistency proof does not lead to the first root hash")
    if sr != root2:
        raise IntegrityError("consistency proof does not lead to the second root hash")
