"""Exact search: single device and sharded over real meshes of the 8 fake CPU devices, vs float64 numpy."""
import jax
import numpy as np
import pytest

from t1_jax.config import MeshConfig
from t1_jax.mesh import make_mesh
from t1_jax.retrieval.exact import ExactIndex, exact_search


def _data(n, d, b, seed=0):
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n, d)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    q = rng.standard_normal((b, d)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), docs


def _reference(q, docs, k):
    s = q.astype(np.float64) @ docs.astype(np.float64).T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


@pytest.mark.parametrize("mesh_shape", [None, (8, 1, 1), (2, 2, 2), (1, 4, 2)])
@pytest.mark.parametrize("n,k", [(1003, 10), (64, 64), (37, 50)])
def test_exact_matches_float64(mesh_shape, n, k):
    q, docs = _data(n, 24, 19)
    mesh = None if mesh_shape is None else make_mesh(MeshConfig(*mesh_shape))
    scores, idx = exact_search(q, docs, k, mesh=mesh)
    ref_s, ref_i = _reference(q, docs, min(k, n))
    assert idx.shape == (19, min(k, n))
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_sharded_docs_are_really_split_and_query_blocks_padded():
    q, docs = _data(500, 16, 70)
    mesh = make_mesh(MeshConfig(2, 2, 2))
    index = ExactIndex(docs, ids=[f"d{i}" for i in range(500)], mesh=mesh, query_block=32)
    shard_rows = {s.data.shape[0] for s in index._docs.addressable_shards}
    assert shard_rows == {504 // 8} and len(index._docs.addressable_shards) == 8  # padded to 504, 63 rows each
    scores, ids = index.search(q, 5)  # 70 queries = 3 blocks of 32, the last one padded
    ref_s, ref_i = _reference(q, docs, 5)
    assert ids.tolist() == [[f"d{i}" for i in row] for row in ref_i]
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_float16_documents():
    q, docs = _data(300, 32, 8, seed=3)
    scores, idx = exact_search(q, docs.astype(np.float16), 10)
    ref_s, _ = _reference(q, docs.astype(np.float16).astype(np.float32), 10)
    np.testing.assert_allclose(scores, ref_s, atol=1e-4)


def test_bad_shapes():
    q, docs = _data(10, 8, 2)
    with pytest.raises(ValueError, match=r"queries must be \[batch, 8\]"):
        exact_search(q[:, :4], docs, 3)
    with pytest.raises(ValueError, match="non-empty"):
        ExactIndex(np.zeros((0, 8), np.float32))
    assert jax.device_count() == 8
