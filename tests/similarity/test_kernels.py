"""Kernels and measures against straightforward float64 references."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from hpcgen.errors import ConfigError
from hpcgen.similarity.kernels import HeldOut, TopK, block_distances, candidates, distance_pass, stable_order
from hpcgen.similarity.measures import bigram_kl, bigrams, item_interval_curve, set_distance, wsd
from hpcgen.similarity.xp import array_module, gpu_available


def reference(train, test, metric):
    a, b = train.astype(np.float64), test.astype(np.float64)
    if metric == "cosine":
        d = -(a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None, :]
        c = (b / np.linalg.norm(b, axis=1)[:, None]).mean(axis=0)  # centroid of the unit test vectors
        cen = -(a @ c) / np.linalg.norm(a, axis=1) / np.linalg.norm(c)
    else:
        d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        cen = np.linalg.norm(a - b.mean(axis=0), axis=1)
    return d, {"min": d.min(1), "max": d.max(1), "avg": d.mean(1), "centroid": cen}


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("normalized", [True, False])
def test_block_distances_and_aggregates_match_float64(metric, normalized):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 48)).astype(np.float32)
    test = rng.normal(size=(37, 48)).astype(np.float32)
    if normalized:
        train /= np.linalg.norm(train, axis=1, keepdims=True)
        test /= np.linalg.norm(test, axis=1, keepdims=True)
    ref_d, ref_agg = reference(train, test, metric)
    ts = HeldOut.build(np, test, normalized)
    d, agg = block_distances(np, train, ts, metric, normalized)
    assert np.abs(d - ref_d).max() < 1e-5
    assert set(agg) == set(ref_agg)
    for name, values in agg.items():
        assert np.abs(values - ref_agg[name]).max() < 1e-5, name


def test_topk_is_exact_with_index_tie_breaking_and_block_independent():
    rng = np.random.default_rng(1)
    d = rng.integers(0, 6, size=(500, 9)).astype(np.float32)  # many exact ties
    k = 7
    expected = np.stack([np.lexsort((np.arange(500), d[:, c]))[:k] for c in range(9)], axis=1)
    for block in (500, 64, 7, 5, 1):
        top = TopK(np, k, 9)
        top.buffer = 50  # merge often, to exercise the buffered path too
        for lo in range(0, 500, block):
            top.update(d[lo:lo + block].copy(), lo)
        index, dist = top.result()
        assert (index == expected).all(), block
        assert (dist == np.take_along_axis(d, expected, 0)).all()


def test_backend_choice():
    assert array_module("numpy") is np
    assert array_module("auto") is (np if not gpu_available() else __import__("cupy"))
    if not gpu_available():
        with pytest.raises(ConfigError, match="backend 'cupy' needs CuPy and a GPU"):
            array_module("cupy")


def test_fixed_weight_wsd_and_item_interval_curve():
    agg = {"min": np.array([-0.9, -0.5, -0.1, 0.2, 0.4]), "avg": np.array([0.1, 0.0, 0.2, 0.3, 0.5])}
    d, _, _ = wsd(agg["min"], agg["avg"], "fixed", w_min=1.0, w_avg=0.5)
    assert np.allclose(d, [-0.85, -0.5, 0.0, 0.35, 0.65])
    order = np.array([4, 3, 2, 1, 0])
    assert np.allclose(item_interval_curve(d, order, 2), [(0.65 + 0.35) / 2, (0.0 - 0.5) / 2, -0.85])
    assert np.allclose(item_interval_curve(d, order, 2, window="cumulative"),
                       [(0.65 + 0.35) / 2, (0.65 + 0.35 + 0.0 - 0.5) / 4, d.mean()])


def test_bigram_kl_by_hand():
    """Eq. 11 as written: sum over p's bigrams of p_i log(p_i / (q_i + eps)), eps on q only."""
    p = bigrams(["a b a b", "a b"])
    assert p == Counter({("a", "b"): 3, ("b", "a"): 1})  # counts over distinct bigrams, not a list
    q = bigrams(["a b c"])
    eps = 1e-10
    expected = 0.75 * math.log(0.75 / (0.5 + eps)) + 0.25 * math.log(0.25 / eps)  # ("b", "c") has p = 0
    assert abs(bigram_kl(p, q) - expected) < 1e-9 and abs(expected - 5.71400) < 1e-4
    assert bigram_kl(p, p) < 1e-9 and bigram_kl(p, q) != bigram_kl(q, p)
    assert bigrams(["A b"]) != bigrams(["a b"])  # case is kept


def test_set_distance_between_two_record_sets():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(20, 16))
    ref_d, ref = reference(a.astype(np.float32), b.astype(np.float32), "cosine")
    assert abs(set_distance(a, b, agg="min", chunk_rows=7) - ref["min"].mean()) < 1e-6
    assert abs(set_distance(a, b, agg="wsd", w_avg=0.5) - (ref["min"] + 0.5 * ref["avg"]).mean()) < 1e-6
    _, ref_e = reference(a.astype(np.float32), b.astype(np.float32), "euclidean")
    assert abs(set_distance(a, b, metric="euclidean", agg="centroid") - ref_e["centroid"].mean()) < 1e-5


@pytest.mark.parametrize("density", [0.0, 1e-4, 0.01, 0.5])
@pytest.mark.parametrize("sparse", [True, False])
def test_candidates_equal_flatnonzero_in_both_signs(density, sparse):
    rng = np.random.default_rng(3)
    d = rng.random((131, 37), dtype=np.float32)  # 4,847 entries: not a multiple of 8
    thr = np.full(37, density, dtype=np.float32)
    expect = np.flatnonzero(d < thr)
    assert np.array_equal(candidates(np, d, thr, sparse=sparse), expect)
    assert np.array_equal(candidates(np, -d, thr, -1.0, sparse=sparse), expect)  # -(-d) < thr


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_distance_pass_in_parts_equals_one_call(monkeypatch, metric):
    """Parts spread over threads (BLAS at one thread) give the whole-block results."""
    import hpcgen.similarity.kernels as kernels

    rng = np.random.default_rng(4)
    train, test = rng.normal(size=(700, 16)).astype(np.float32), rng.normal(size=(23, 16)).astype(np.float32)
    held = HeldOut.build(np, test)
    thr = np.full(23, np.quantile(block_distances(np, train, held, metric, False)[0], 0.05), dtype=np.float32)
    monkeypatch.setattr(kernels, "_row_parts", lambda xp, n: None)
    d1, agg1, flat1 = distance_pass(np, train, held, metric, False, threshold=thr)
    monkeypatch.undo()
    kernels.set_threads(2)
    monkeypatch.setattr(kernels, "PART_ROWS", 100)  # 8 parts on 2 threads
    try:
        d2, agg2, flat2 = distance_pass(np, train, held, metric, False, threshold=thr)
        rows, cols, values = distance_pass(np, train, held, metric, False, threshold=thr, entries=True)[2]
    finally:
        kernels.set_threads(None)
    np.testing.assert_allclose(d2, d1, rtol=1e-5, atol=1e-5)
    for name in agg1:
        np.testing.assert_allclose(agg2[name], agg1[name], rtol=1e-5, atol=1e-5)
    assert np.array_equal(flat2, np.flatnonzero(d2 < thr))
    assert np.array_equal(rows * 23 + cols, flat2) and np.array_equal(values, d2.ravel()[flat2])


@pytest.mark.parametrize("distinct", [3, 50, 10**6])  # mostly ties, some, almost none
def test_stable_order_is_numpys_stable_argsort(distinct):
    key = np.random.default_rng(distinct).integers(0, distinct, 20_000).astype(np.uint64)
    assert np.array_equal(stable_order(np, key), np.argsort(key, kind="stable"))
