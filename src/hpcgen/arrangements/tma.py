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


def tma_rounds(source: DistanceSource, *, farthest: bool = False, first_list: int = 8192, max_list: int = 16384,
               block_rows: int = 4096, dense_rows: int = 32768, max_entries: int = 10_000_000,
               stats: TMAStats | None = None) -> np.ndarray:
    """The round of every training row under Algorithm 1 (int32, one per row).

    ``first_list``/``max_list``: the list length of the first refill pass and the most any
    pass uses (each pass doubles it), both capped at ``max_entries`` / N_test so the lists and
    the pass's candidates stay bounded in memory. ``dense_rows``: rows left when the last
    rounds run on their distances held in memory."""
    t_start = time.perf_counter()
    n, m = source.n_train, source.n_test
    if m == 0:
        raise ValueError("TMA needs at least one test item")
    stats = stats if stats is not None else TMAStats()
    cap = max(1, max_entries // m)
    first_list, max_list = max(1, min(first_list, cap)), max(1, min(max_list, cap))
    sign = np.float32(-1.0 if farthest else 1.0)  # farthest picks: nearest under the negated distance
    round_of = np.full(n, -1, dtype=np.int32)
    taken = np.zeros(n + 1, dtype=bool)  # taken[n]: never; a list's -1 reads it, so -1 looks free
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
            r = _dense_tail(source, np.flatnonzero(~taken[:n]), round_of, r, farthest, block_rows)
            stats.dense_seconds += time.perf_counter() - t0
            break
        # a round: every column's first free row in its list
        need_pass = lists.shape[1] == 0
        if not need_pass:
            cur = lists[cols, ptr]
            need_pass = _advance(lists, ptr, cur, taken)
        if need_pass:
            remaining = np.flatnonzero(~taken[:n])
            if remaining.size <= dense_rows:
                continue
            t0 = time.perf_counter()
            lists = _top_lists(source, remaining, min(length, remaining.size), sign, block_rows, stats)
            stats.pass_seconds += time.perf_counter() - t0
            stats.max_list = max(stats.max_list, lists.shape[1] - 1)
            if (lists[:, 0] < 0).any():
                raise RuntimeError("a column got no candidates from a refill pass")
            length = min(max_list, length * 2)
            ptr[:] = 0
            continue  # the lists hold only free rows: the round starts over on them
        taken[cur] = True  # the union of the picks
        round_of[cur] = r
        r += 1
        picks = np.sort(cur)  # how many distinct: a sort of N_test values (unique() hashes, far slower)
        n_taken += 1 + int(np.count_nonzero(picks[1:] != picks[:-1]))
    stats.rounds = r
    stats.seconds = time.perf_counter() - t_start
    return round_of


#: list entries a busy column looks at in its first step past rows taken by other columns
_STEP = 16


def _advance(lists: np.ndarray, ptr: np.ndarray, cur: np.ndarray, taken: np.ndarray) -> bool:
    """Move every column whose pointed row is taken to its next free row (``ptr`` and ``cur``
    in place). True where some column ran past its list (a refill pass is needed). ``lists``
    end in a column of -1 and ``taken[-1]`` is False, so -1 reads as free and stops a column.

    Only the busy columns are touched, ``_STEP`` entries in the first step and four times more
    in each next one: late rounds skip long runs of rows that other columns took, and one entry
    per step would cost a NumPy call each."""
    if (cur < 0).any():
        return True
    width = lists.shape[1]
    flat = lists.ravel()
    busy = np.flatnonzero(taken[cur])
    look = _STEP
    while busy.size:
        at = np.minimum(ptr[busy, None] + 1 + np.arange(look), width - 1)  # the next entries, at most the -1
        seg = flat[busy[:, None] * width + at]
        stop = ~taken[seg]  # a free row, or the list's end
        found = stop.any(axis=1)
        first = stop.argmax(axis=1)
        done = busy[found]
        ptr[done] = at[found, first[found]]
        cur[done] = seg[found, first[found]]
        if (cur[done] < 0).any():
            return True
        busy = busy[~found]
        ptr[busy] += look
        look *= 4  # the columns still busy are in long runs of taken rows
    return False


def scan(source: DistanceSource, rows: np.ndarray, threshold: np.ndarray, sign: float, block_rows: int):
    """(row ids, columns, values) per block of the entries of ``sign * d`` strictly below their
    column's threshold, in ascending row order: the source's own fused pass where it has one
    (``scan``)."""
    own = getattr(source, "scan", None)
    if own is not None:
        yield from own(rows, threshold, sign, block_rows)
        return
    m = source.n_test
    for ids, d in source.blocks(rows, block_rows):
        flat = candidates(np, d, threshold, sign)
        values = d.ravel()[flat]
        yield ids[flat // m], (flat % m).astype(np.uint16 if m <= 2**16 else np.int64), \
            values if sign > 0 else -values


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
    row_type = np.int32 if source.n_train < 2**31 else np.int64
    found_rows, found_cols, found_dist = [], [], []
    for got_rows, got_cols, values in scan(source, remaining, threshold, sign, block_rows):
        found_rows.append(got_rows.astype(row_type, copy=False))
        found_cols.append(got_cols)
        found_dist.append(values)
    stats.rows_scanned += n_rem
    # one list at a time, freed at once: a pass's candidates are its largest arrays
    rows = np.concatenate(found_rows)
    del found_rows
    cols = np.concatenate(found_cols)
    del found_cols
    dist = np.concatenate(found_dist)
    del found_dist
    rows, cols = by_column(rows, cols, dist, source.n_train, m)
    del dist
    counts = np.bincount(cols, minlength=m)
    del cols
    width = int(min(max(counts.max(initial=0), 1), 2 * length))
    lists = np.full((m, width + 1), -1, dtype=row_type)  # + a column of -1: every list ends in one
    start = 0
    for j, count in enumerate(counts.tolist()):  # each column's entries are one run: slice copies
        lists[j, :min(count, width)] = rows[start:start + min(count, width)]
        start += count
    del rows
    empty = np.flatnonzero(counts == 0)
    if empty.size:  # ties at the threshold: these columns get their exact top rows the slow way
        top = TopK(np, min(length, n_rem), empty.size)
        for ids, d in source.blocks(remaining, block_rows):
            top.update(np.ascontiguousarray(d[:, empty] if sign > 0 else -d[:, empty]), ids)
        index, _ = top.result()
        lists[empty] = -1
        lists[empty, : min(width, index.shape[0])] = index.T[:, :width]
    return lists


def _sortable_key(dist: np.ndarray) -> np.ndarray:
    """uint64 keys whose low 32 bits order as the float32 ``dist`` (``_sortable`` without its
    temporaries: negatives flipped whole, the rest get the sign bit). ``dist`` is changed in
    place (-0.0 to 0.0)."""
    dist += np.float32(0)  # -0.0 becomes 0.0: equal distances must get equal keys
    bits = dist.view(np.uint32)
    flip = (dist.view(np.int32) >> np.int32(31)).view(np.uint32)  # all ones for negatives
    flip |= np.uint32(0x80000000)
    flip ^= bits
    return flip.astype(np.uint64)


def by_column(rows: np.ndarray, cols: np.ndarray, dist: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the entries ordered by (column, distance, row).

    Where column, distance and row fit one 64-bit key (N_test * N_train <= 2^32), one plain
    sort of the keys does it and rows and columns are read back from them: no argsort and no
    gathers. Otherwise a stable argsort of (column, distance) keys, rows arriving in ascending
    order."""
    row_bits, col_bits = max(1, int(n - 1).bit_length()), max(1, int(m - 1).bit_length())
    if row_bits + col_bits > 32:
        order = stable_order(np, (cols.astype(np.uint64) << np.uint64(32)) | _sortable(np, dist))
        return rows[order], cols[order]
    key = _sortable_key(dist)
    key <<= np.uint64(row_bits)
    key |= rows.astype(np.uint64)
    key |= cols.astype(np.uint64) << np.uint64(32 + row_bits)
    key.sort()
    out_cols = (key >> np.uint64(32 + row_bits)).astype(cols.dtype)
    key &= np.uint64((1 << row_bits) - 1)
    return key.astype(rows.dtype), out_cols


#: where the in-memory tail is small enough that each round is one argmin per column over it
_ARGMIN_ROWS = 4096


def _dense_tail(source, remaining, round_of, r, farthest, block_rows) -> int:
    """The last rounds in memory: the distances of the remaining rows are computed once and
    held; over more than ``_ARGMIN_ROWS`` rows the same lists-and-pointers rounds run on them
    (refill passes now read memory, no GEMM), below it each round is an argmin per column."""
    m = source.n_test
    if remaining.size > _ARGMIN_ROWS:
        d = np.empty((remaining.size, m), dtype=np.float32)
        pos = 0
        for ids, block in source.blocks(remaining, block_rows):
            d[pos:pos + len(ids)] = block
            pos += len(ids)
        sub = tma_rounds(DenseDistances(d), farthest=farthest, first_list=1024, max_list=8192, block_rows=block_rows,
                         dense_rows=_ARGMIN_ROWS)
        round_of[remaining] = r + sub
        return r + int(sub.max()) + 1
    sign = np.float32(-1.0 if farthest else 1.0)
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
