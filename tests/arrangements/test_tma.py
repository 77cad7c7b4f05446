"""TMA against a straightforward implementation of Algorithm 1, plus property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcgen.arrangements.tma import DenseDistances, TMAStats, by_column, order_from_rounds, tma_rounds


def reference_tma(d: np.ndarray, farthest: bool = False) -> np.ndarray:
    """Algorithm 1, obviously: every round, every test item scans all remaining items."""
    n, m = d.shape
    remaining = list(range(n))
    round_of = np.full(n, -1)
    r = 0
    while remaining:
        picks = set()
        for j in range(m):
            best = None
            for i in remaining:  # ascending: the first of equal distances wins
                if best is None or (d[i, j] > d[best, j] if farthest else d[i, j] < d[best, j]):
                    best = i
            picks.add(best)
        for i in picks:
            round_of[i] = r
        remaining = [i for i in remaining if i not in picks]
        r += 1
    return round_of


def run(d, farthest=False, **kw):
    return tma_rounds(DenseDistances(d.astype(np.float32)), farthest=farthest, **kw)


# small settings force every code path: tiny lists, many refill passes, a late dense tail
PATHS = [dict(), dict(first_list=1, max_list=2, block_rows=3, dense_rows=2),
         dict(first_list=2, max_list=4, block_rows=5, dense_rows=0), dict(dense_rows=10**6)]


@pytest.mark.parametrize("kw", PATHS)
@pytest.mark.parametrize("farthest", [False, True])
def test_equals_reference_with_ties_and_collisions(kw, farthest):
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        d = rng.integers(0, 4, size=(n, m)).astype(np.float32)  # few values: ties and shared nearest items
        assert (run(d, farthest, **kw) == reference_tma(d, farthest)).all(), (trial, n, m)


def test_real_valued_large_matches_reference():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(300, 25)).astype(np.float32)
    stats = TMAStats()
    got = tma_rounds(DenseDistances(d), first_list=4, max_list=16, dense_rows=20, block_rows=64, stats=stats)
    assert (got == reference_tma(d)).all()
    assert stats.passes > 1 and stats.dense_from_round > 0


@pytest.mark.parametrize("farthest", [False, True])
def test_dense_tail_runs_lists_in_memory_and_stays_exact(monkeypatch, farthest):
    """Above the argmin size the in-memory tail runs the same lists-and-pointers rounds on the
    held distances (a nested pass with its own dense tail): still Algorithm 1 exactly."""
    import hpcgen.arrangements.tma as tma

    monkeypatch.setattr(tma, "_ARGMIN_ROWS", 7)
    calls = []
    nested = tma.tma_rounds

    def counting(source, **kw):
        calls.append(source.n_train)
        return nested(source, **kw)

    monkeypatch.setattr(tma, "tma_rounds", counting)
    rng = np.random.default_rng(5)
    for trial in range(10):
        n, m = int(rng.integers(20, 60)), int(rng.integers(2, 7))
        d = rng.integers(0, 5, size=(n, m)).astype(np.float32)
        got = nested(DenseDistances(d), farthest=farthest, first_list=2, max_list=4, block_rows=4, dense_rows=30)
        assert (got == reference_tma(d, farthest)).all(), (trial, n, m)
    assert calls and max(calls) <= 30  # the nested runs were over the in-memory tail only


@pytest.mark.parametrize("n", [50, 2**24, 2**30])  # one packed key; beyond 32 bits of row and column: argsort
def test_by_column_orders_by_column_distance_row(n):
    rng = np.random.default_rng(n)
    size, m = 3000, 9
    rows = np.sort(rng.integers(0, n, size)).astype(np.int32)
    cols = rng.integers(0, m, size).astype(np.uint16)
    dist = (rng.integers(-3, 4, size) / 2).astype(np.float32)  # many ties, negatives, zeros
    dist[::7] = -0.0  # equal to 0.0: ordered by row like any other tie
    expect = np.lexsort((rows, dist, cols))
    got_rows, got_cols = by_column(rows, cols, dist.copy(), n, m)
    assert np.array_equal(got_rows, rows[expect]) and np.array_equal(got_cols, cols[expect])


def test_lists_are_capped_by_max_entries():
    """Lists are capped by max_entries // N_test whatever first_list asks for."""
    rng = np.random.default_rng(2)
    d = rng.normal(size=(500, 40)).astype(np.float32)
    stats = TMAStats()
    got = tma_rounds(DenseDistances(d), first_list=10**6, max_list=10**6, max_entries=400, dense_rows=10, stats=stats)
    assert (got == reference_tma(d)).all()
    assert stats.max_list <= 2 * 400 // 40 and stats.passes > 1


matrices = st.integers(1, 30).flatmap(lambda n: st.integers(1, 8).flatmap(
    lambda m: st.lists(st.integers(0, 5), min_size=n * m, max_size=n * m).map(
        lambda v: np.asarray(v, dtype=np.float32).reshape(n, m))))


@settings(max_examples=150, deadline=None)
@given(d=matrices, small=st.booleans())
def test_properties(d, small):
    n, m = d.shape
    kw = PATHS[1] if small else {}
    round_of = run(d, **kw)
    order = order_from_rounds(round_of)
    assert sorted(order.tolist()) == list(range(n))  # every item exactly once
    sizes = np.bincount(round_of)
    assert (sizes >= 1).all() and (sizes <= m).all()  # rounds of 1..N_test items
    first = set(np.flatnonzero(round_of == 0).tolist())
    column_minima = {int(np.flatnonzero(d[:, j] == d[:, j].min())[0]) for j in range(m)}
    assert first == column_minima  # round 0 is exactly the set of column minima
    rounds_in_order = round_of[order]
    assert (np.diff(rounds_in_order) >= 0).all()
