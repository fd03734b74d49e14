"""RFC 6962 Merkle tree hashing, with inclusion and consistency proofs per RFC 9162.

Hashes (RFC 6962 section 2.1, RFC 9162 section 2.1.1): the empty tree is
``SHA-256("")``, a leaf is ``SHA-256(0x00 || data)``, an interior node is
``SHA-256(0x01 || left || right)``; a tree of ``n > 1`` leaves splits at ``k``,
the largest power of two smaller than ``n``.

Proof generation follows RFC 9162 sections 2.1.3.1 (``PATH``) and 2.1.4.1
(``PROOF``/``SUBPROOF``); verification follows sections 2.1.3.2 and 2.1.4.2
step by step. Verification raises :class:`~core.errors.IntegrityError` and
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
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
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


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    return root_from_hashes(hashes[lo:hi])


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(index, D[n])`` over the given leaf hashes (RFC 9162 2.1.3.1)."""
    n = len(hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} outside a tree of size {n}")
    proof: list[bytes] = []
    lo, hi = 0, n
    # Walk down from the root, collecting siblings, then reverse (leaf first).
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_mth(hashes, lo, lo + k))
            lo = lo + k
    return proof[::-1]


def consistency_proof(hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """``PROOF(size1, D[n])`` over the given leaf hashes (RFC 9162 2.1.4.1)."""
    n = len(hashes)
    if not 0 < size1 <= n:
        raise ValueError(f"no consistency proof from size {size1} to size {n}")

    def subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        size = hi - lo
        if m == size:
            return [] if complete else [_mth(hashes, lo, hi)]
        k = _split(size)
        if m <= k:
            return [*subproof(m, lo, lo + k, complete), _mth(hashes, lo + k, hi)]
        return [*subproof(m - k, lo + k, hi, False), _mth(hashes, lo, lo + k)]

    return subproof(size1, 0, n, True)


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
