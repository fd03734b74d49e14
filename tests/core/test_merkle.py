"""RFC 6962 hashing and RFC 9162 proofs: every shared test vector, and round-trip properties."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import merkle
from core.errors import IntegrityError

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "rfc6962"
if not VECTORS.is_dir():  # the checkout may sit elsewhere; fall back to the shared path
    VECTORS = Path("/work/shared/testdata/rfc6962")


def _files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def _b(x: str | None) -> bytes:
    return base64.b64decode(x) if x else b""


def _id(p: Path) -> str:
    return str(p.relative_to(VECTORS))


def test_vector_files_are_all_there() -> None:
    assert len(_files("inclusion")) + len(_files("consistency")) == 196


@pytest.mark.parametrize("path", _files("inclusion"), ids=_id)
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b(h) for h in v["proof"] or []]
    args = (_b(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, _b(v["root"]))
    if v["wantErr"]:
        with pytest.raises(IntegrityError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", _files("consistency"), ids=_id)
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b(h) for h in v["proof"] or []]
    args = (v["size1"], v["size2"], proof, _b(v["root1"]), _b(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(IntegrityError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f"]
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("n", range(1, 9))
def test_tree_hash_vectors(n: int) -> None:
    assert merkle.root_hash(LEAVES[:n]).hex() == ROOTS[n - 1]


def test_empty_tree_is_hash_of_nothing() -> None:
    assert merkle.root_hash([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def _recursive_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 literally: split at the largest power of two below n."""
    if len(leaves) == 1:
        return merkle.leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(_recursive_mth(leaves[:k]), _recursive_mth(leaves[k:]))


def _hashes(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70))
def test_iterative_root_matches_recursive_definition(leaves: list[bytes]) -> None:
    assert merkle.root_hash(leaves) == _recursive_mth(leaves)


@settings(max_examples=150)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_round_trip(case: tuple[int, int]) -> None:
    n, i = case
    hashes = _hashes(n)
    root = merkle.root_from_hashes(hashes)
    proof = merkle.inclusion_proof(hashes, i)
    merkle.verify_inclusion(hashes[i], i, n, proof, root)
    # The same proof must not place another leaf there, nor this leaf elsewhere.
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(merkle.leaf_hash(b"other"), i, n, proof, root)
    if n > 1:
        with pytest.raises(IntegrityError):
            merkle.verify_inclusion(hashes[i], (i + 1) % n, n, proof, root)


@settings(max_examples=150)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_consistency_round_trip(case: tuple[int, int]) -> None:
    n, m = case
    hashes = _hashes(n)
    proof = merkle.consistency_proof(hashes, m)
    root1, root2 = merkle.root_from_hashes(hashes[:m]), merkle.root_from_hashes(hashes)
    merkle.verify_consistency(m, n, proof, root1, root2)
    if m < n:
        with pytest.raises(IntegrityError):
            merkle.verify_consistency(m, n, proof, root2, root1)


@settings(max_examples=100)
@given(st.integers(2, 200).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, 10_000))
))
def test_inclusion_any_bit_flip_fails(case: tuple[int, int, int]) -> None:
    n, i, pick = case
    hashes = _hashes(n)
    root = merkle.root_from_hashes(hashes)
    proof = merkle.inclusion_proof(hashes, i)
    # Flip one bit anywhere in the leaf, the proof or the root.
    blobs = [hashes[i], *proof, root]
    bit = pick % (len(blobs) * 256)
    which, pos = divmod(bit, 256)
    flipped = bytearray(blobs[which])
    flipped[pos // 8] ^= 1 << (pos % 8)
    blobs[which] = bytes(flipped)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(blobs[0], i, n, blobs[1:-1], blobs[-1])


@settings(max_examples=100)
@given(st.integers(2, 200).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(1, n - 1), st.integers(0, 10_000))
))
def test_consistency_any_bit_flip_fails(case: tuple[int, int, int]) -> None:
    n, m, pick = case
    hashes = _hashes(n)
    proof = merkle.consistency_proof(hashes, m)
    blobs = [merkle.root_from_hashes(hashes[:m]), *proof, merkle.root_from_hashes(hashes)]
    bit = pick % (len(blobs) * 256)
    which, pos = divmod(bit, 256)
    flipped = bytearray(blobs[which])
    flipped[pos // 8] ^= 1 << (pos % 8)
    blobs[which] = bytes(flipped)
    with pytest.raises(IntegrityError):
        merkle.verify_consistency(m, n, blobs[1:-1], blobs[0], blobs[-1])


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=300))
def test_compact_range_grows_like_the_tree_and_reports_every_interior_node(n: int) -> None:
    hashes = _leaves(n)
    cr = merkle.CompactRange()
    nodes: dict[merkle.NodeId, bytes] = {(0, i + 1): h for i, h in enumerate(hashes)}
    for i, h in enumerate(hashes):
        for (level, end), node in cr.append(h):
            assert end == i + 1 and node == merkle.root_from_hashes(hashes[end - (1 << level) : end])
            nodes[(level, end)] = node
        assert cr.root() == merkle.root_from_hashes(hashes[: i + 1])
    again = merkle.CompactRange.from_bytes(n, cr.to_bytes())
    assert (again.size, again.root()) == (n, cr.root())
    # Proofs answered from stored perfect subtrees equal those computed from every leaf.
    for index in range(0, n, max(1, n // 7)):
        ranges = merkle.inclusion_ranges(index, n)
        from_nodes = [merkle.fold_subtrees([nodes[x] for x in merkle.perfect_subtrees(lo, hi)])
                      for lo, hi in ranges]
        assert from_nodes == merkle.inclusion_proof(hashes, index)
        size1 = index + 1
        ranges = merkle.consistency_ranges(size1, n)
        from_nodes = [merkle.fold_subtrees([nodes[x] for x in merkle.perfect_subtrees(lo, hi)])
                      for lo, hi in ranges]
        assert from_nodes == merkle.consistency_proof(hashes, size1)
        prefix = [nodes[x] for x in merkle.perfect_subtrees(0, size1)]
        assert merkle.fold_subtrees(prefix) == merkle.root_from_hashes(hashes[:size1])


def test_compact_range_refuses_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="a compact range of 3 leaves has 2 roots"):
        merkle.CompactRange(3, [b"\x00" * 32])
    with pytest.raises(ValueError, match="takes 64 bytes"):
        merkle.CompactRange.from_bytes(3, b"\x00" * 32)
