"""FAISS wrapper: every search is compared with brute-force numpy on seeded synthetic data."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from simsearch import vectors


def brute_force(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric == "cosine":
        b = base / np.linalg.norm(base, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        d = 1.0 - q @ b.T
    else:
        d = np.sqrt(((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_search_equals_brute_force(metric: str, k: int) -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 16)).astype(np.float32)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    index = vectors.new_index(16, metric)
    ids = np.arange(1000, 1200)
    vectors.add_vectors(index, base, ids, metric)
    distances, found = vectors.search(index, queries, k, metric)
    ref_d, ref_rows = brute_force(base, queries, k, metric)
    assert found.shape == (30, min(k, 200))
    np.testing.assert_array_equal(found, ids[ref_rows])
    np.testing.assert_allclose(distances, ref_d, rtol=1e-4, atol=1e-4)


def test_results_never_exceed_min_k_n() -> None:
    index = vectors.new_index(4)
    vectors.add_vectors(index, np.eye(4, dtype=np.float32)[:3], np.array([7, 8, 9]))
    distances, ids = vectors.search(index, np.ones((2, 4), np.float32), 10)
    assert ids.shape == (2, 3) and distances.shape == (2, 3)
    assert set(ids[0]) == {7, 8, 9}
    empty = vectors.new_index(4)
    d, i = vectors.search(empty, np.ones((1, 4), np.float32), 5)
    assert d.shape == (1, 0) and i.shape == (1, 0)


def test_remove_ids_and_ids_survive_serialisation(tmp_path) -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    index = vectors.new_index(8)
    vectors.add_vectors(index, base, np.arange(50) * 3)
    assert vectors.remove_ids(index, np.array([0, 3, 6, 999])) == 3
    assert index.ntotal == 47
    restored = vectors.deserialize(vectors.serialize(index))
    np.testing.assert_array_equal(vectors.index_ids(restored), vectors.index_ids(index))
    path = tmp_path / "v.faiss"
    path.write_bytes(vectors.serialize(index))
    plain = faiss.read_index(str(path))
    assert plain.ntotal == 47
    _, ids = vectors.search(restored, base[10:11], 1)
    assert ids[0, 0] == 30


def test_exact_distances_self_is_zero() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    d = vectors.exact_distances(x, x[:, None, :])
    assert np.all(d == 0)


def test_bad_arguments_are_refused() -> None:
    index = vectors.new_index(4)
    with pytest.raises(ValueError, match="ids"):
        vectors.add_vectors(index, np.zeros((2, 4), np.float32), np.array([1]))
    with pytest.raises(ValueError, match="d=3"):
        vectors.add_vectors(index, np.zeros((2, 3), np.float32), np.array([1, 2]))
    with pytest.raises(ValueError, match="k must be"):
        vectors.search(index, np.zeros((1, 4), np.float32), 0)
    with pytest.raises(ValueError, match="metric"):
        vectors.new_index(4, "hamming")


@pytest.mark.gpu
def test_gpu_search_equals_cpu_search() -> None:
    if vectors.gpu_count() == 0:
        pytest.skip("FAISS sees no GPU (CPU-only FAISS build)")
    rng = np.random.default_rng(4)
    base = rng.normal(size=(5000, 32)).astype(np.float32)
    queries = rng.normal(size=(100, 32)).astype(np.float32)
    index = vectors.new_index(32)
    vectors.add_vectors(index, base, np.arange(5000) + 10)
    gpu = vectors.to_gpu(index)
    assert vectors.is_on_gpu(gpu)
    d_cpu, i_cpu = vectors.search(index, queries, 10)
    d_gpu, i_gpu = vectors.search(gpu, queries, 10)
    np.testing.assert_array_equal(i_cpu, i_gpu)
    np.testing.assert_allclose(d_cpu, d_gpu, rtol=1e-3, atol=1e-3)
    restored = vectors.deserialize(vectors.serialize(gpu))
    assert not vectors.is_on_gpu(restored) and restored.ntotal == 5000
