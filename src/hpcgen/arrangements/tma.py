"""Test-centric Multi-turn Arrangement (TMA), paper section 4, Algorithm 1: exact and scalable.

Algorithm 1 (with ``farthest=False``):

    R <- all training items; r <- 0
    while R is not empty:
        S_r <- { argmin_{i in R} d(i, j) : j in test items }   (ties: the smaller index i)
        R <- R \\ S_r;  r <- r + 1

R is not updated inside a round, so several test items may pick the same training item: S_r is
their union, between 1 and N_test items. With ``farthest=True`` every test item picks its
farthest remaining item instead (argmax, ties again by the smaller index).

Implementation (same result, much less work than rescanning R every round):
- each test column keeps a list of its L nearest remaining training rows, ordered by
  (distance, row), and a pointer; in a round it skips rows taken in earlier rounds and picks the
  first free one. A row found free is exactly the column's argmin over R, because every row
  before it in the column's order is already taken.
- when some column runs out, one streaming pass over the remaining rows (top-L per column with a
  threshold filter, hpcgen.similarity.kernels.TopK) refills every column; L doubles each pass,
  since late rounds reach deeper into each column's order.
- when few rows remain (``dense_rows``), their distances are held in memory and each round is an
  argmin per column over them, removing the picked rows.
Memory: the lists (N_test x L), one block of distances (block_rows x N_test), the dense tail
(dense_rows x N_test) and the per-row round array (N): bounded by the settings, linear in N only
through that array and whatever the distance source holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hpcgen.similarity.kernels import TopK, _sortable, candidates, stable_order


class DistanceSource(Protocol):
    """Distances from training rows to every test column, by blocks of rows."""

    @property
    def n_train(self) -> int: ...

    @property
    def n_test(self) -> int: ...

    def blocks(self, rows: np.ndarray, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row ids, distances (len(ids) x n_test) float32) for ``rows`` (ascending), in blocks."""
        ...


@dataclass
class DenseDistances:
    """A distance matrix in memory (or any array that slices by rows, such as an h5py dataset)."""

    d: np.ndarray

    @property
    def n_train(self) -> int:
        return self.d.shape[0]

    @property
    def n_test(self) -> int:
        return self.d.shape[1]

    def blocks(self, rows: np.ndarray, block_rows: int):
        for lo in range(0, len(rows), block_rows):
            ids = rows[lo:lo + block_rows]
            if len(ids) and ids[-1] - ids[0] + 1 == len(ids):  # contiguous: a plain slice
                yield ids, np.asarray(self.d[ids[0]:ids[-1] + 1], dtype=np.float32)
            else:
                yield ids, np.asarray(self.d[ids], dtype=np.float32)


@dataclass
class TMAStats:
    rounds: int = 0
    passes: int = 0
    rows_scanned: int = 0
    dense_from_round: int = -1
    max_list: int = 0
    pass_seconds: float = 0.0
    dense_seconds: float = 0.0
    seconds: float = 0.0


def tma_rounds(source: DistanceSource, *, farthest: bool = False, first_list: int = 1024, max_list: int = 8192,
               block_rows: int = 4096, dense_rows: int = 32768, stats: TMAStats | None = None) -> np.ndarray:
    """The round of every training row under Algorithm 1 (int32, one per row)."""
    t_start = time.perf_counter()
    n, m = source.n_train, source.n_test
    if m == 0:
        raise ValueError("TMA needs at least one test item")
    stats = stats if stats is not None else TMAStats()
    sign = np.float32(-1.0 if farthest else 1.0)  # farthest picks: nearest under the negated distance
    round_of = np.full(n, -1, dtype=np.int32)
    taken = np.zeros(n, dtype=bool)
    r = 0
    cols = np.arange(m)
    lists = np.empty((m, 0), dtype=np.int64)
    ptr = np.zeros(m, dtype=np.int64)
    length = first_list
    n_taken = 0  # rows taken so far
    while n_taken < n:
        if n - n_taken <= dense_rows:
            stats.dense_from_round = r
            t0 = time.perf_counter()
            r = _dense_tail(source, np.flatnonzero(~taken), round_of, r, sign, block_rows)
            stats.dense_seconds += time.perf_counter() - t0
            break
        # a round: every column's first free row in its list
        need_pass = lists.shape[1] == 0
        if not need_pass:
            cur = lists[cols, ptr]
            busy = (cur < 0) | taken[cur]
            while busy.any():
                if (cur[busy] < 0).any():
                    need_pass = True
                    break
                ptr[busy] += 1
                if (ptr >= lists.shape[1]).any():
                    need_pass = True
                    break
                cur = lists[cols, ptr]
                busy = (cur < 0) | taken[cur]
        if need_pass:
            remaining = np.flatnonzero(~taken)
            if remaining.size <= dense_rows:
                continue
            t0 = time.perf_counter()
            lists = _top_lists(source, remaining, min(length, remaining.size), sign, block_rows, stats)
            stats.pass_seconds += time.perf_counter() - t0
            stats.max_list = max(stats.max_list, lists.shape[1])
            if (lists[:, 0] < 0).any():
                raise RuntimeError("a column got no candidates from a refill pass")
            length = min(max_list, length * 2)
            ptr[:] = 0
            continue  # the lists hold only free rows: the round starts over on them
        picked = np.unique(cur)
        taken[picked] = True
        round_of[picked] = r
        r += 1
        n_taken += picked.size
    stats.rounds = r
    stats.seconds = time.perf_counter() - t_start
    return round_of


def _top_lists(source, remaining, length, sign, block_rows, stats) -> np.ndarray:
    """For every column, a prefix of its order (distance, row) over ``remaining``: about
    ``length`` rows, padded with -1. A column's list ending in -1 (or at the array's end) means
    that prefix is used up.

    Each column's threshold comes from a random sample of the remaining rows (the distance of
    rank ~1.25 * length scaled to the sample); one pass then collects every row strictly below
    its column's threshold. All rows strictly below a threshold form an exact prefix of the
    column's order, so the sample only affects speed, never the result. Columns that collect
    nothing (ties at the threshold) get their exact top-``length`` from a streaming pass.
    """
    n_rem, m = remaining.size, source.n_test
    stats.passes += 1
    if length >= n_rem:
        threshold = np.full(m, np.inf, dtype=np.float32)
    else:
        # enough rows that the threshold's rank in the sample is about 16: a good quantile estimate
        size = min(n_rem, max(block_rows, -(-n_rem * 16 // length)))
        sample = np.sort(np.random.default_rng(n_rem).choice(remaining, size, replace=False))
        ds = np.empty((m, size), dtype=np.float32)
        pos = 0
        for ids, d in source.blocks(sample, block_rows):
            ds[:, pos:pos + len(ids)] = d.T if sign > 0 else -d.T
            pos += len(ids)
        stats.rows_scanned += size
        rank = min(size - 1, max(1, int(1.25 * length * size / n_rem)))
        # contiguous: a strided threshold makes the broadcast compare below several times slower
        threshold = np.ascontiguousarray(np.partition(ds, rank, axis=1)[:, rank])
        del ds
    found_rows, found_cols, found_dist = [], [], []
    for ids, d in source.blocks(remaining, block_rows):
        if sign < 0:
            d = -d
        flat = candidates(np, d, threshold)
        found_rows.append(ids[flat // m])
        found_cols.append(flat % m)
        found_dist.append(d.ravel()[flat])
        stats.rows_scanned += len(ids)
    rows = np.concatenate(found_rows).astype(np.int64)
    cols = np.concatenate(found_cols).astype(np.int64)
    dist = np.concatenate(found_dist)
    # rows arrive in ascending order, so a stable sort on (column, distance) orders ties by row
    order = stable_order(np, (cols.astype(np.uint64) << np.uint64(32)) | _sortable(np, dist))
    rows, cols = rows[order], cols[order]
    counts = np.bincount(cols, minlength=m)
    width = int(min(max(counts.max(initial=0), 1), 2 * length))
    lists = np.full((m, width), -1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_col = np.arange(rows.size) - np.repeat(starts, counts)
    keep = rank_in_col < width
    lists[cols[keep], rank_in_col[keep]] = rows[keep]
    empty = np.flatnonzero(counts == 0)
    if empty.size:  # ties at the threshold: these columns get their exact top rows the slow way
        top = TopK(np, min(length, n_rem), empty.size)
        for ids, d in source.blocks(remaining, block_rows):
            top.update(np.ascontiguousarray(d[:, empty] if sign > 0 else -d[:, empty]), ids)
        index, _ = top.result()
        lists[empty] = -1
        lists[empty, : min(width, index.shape[0])] = index.T[:, :width]
    return lists


def _dense_tail(source, remaining, round_of, r, sign, block_rows) -> int:
    """The last rounds in memory: distances of the remaining rows, held transposed (one
    contiguous row per test column) so each round is a fast argmin along rows; taken rows are
    set to +inf and squeezed out once half of them are gone."""
    m = source.n_test
    d = np.empty((m, remaining.size), dtype=np.float32)
    pos = 0
    for ids, block in source.blocks(remaining, block_rows):
        d[:, pos:pos + len(ids)] = block.T if sign > 0 else -block.T
        pos += len(ids)
    rows = remaining.copy()
    alive = rows.size
    while alive:
        first = np.unique(d.argmin(axis=1))  # argmin returns the first minimum: the smaller row
        round_of[rows[first]] = r
        r += 1
        d[:, first] = np.inf
        alive -= first.size
        if alive and alive <= rows.size // 2:
            keep = np.isfinite(d[0]) if m else np.ones(rows.size, dtype=bool)
            keep &= round_of[rows] < 0
            rows, d = rows[keep], np.ascontiguousarray(d[:, keep])
    return r


def order_from_rounds(round_of: np.ndarray, *, within: str = "index", key: np.ndarray | None = None) -> np.ndarray:
    """Training rows in round order; inside a round by row index (``index``, as the authors' code
    does) or by ``key`` ascending (``distance``), ties by index."""
    n = len(round_of)
    if within == "index" or key is None:
        return np.lexsort((np.arange(n), round_of))
    return np.lexsort((np.arange(n), key, round_of))
