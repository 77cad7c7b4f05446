"""Distance kernels over row blocks, written once for NumPy and CuPy (``xp``).

Distances follow the data-arrangement paper's sign (He et al., arXiv:2406.11721): cosine
distance is ``-cos(a, b)`` (smaller is closer, from -1 to 1); Euclidean distance is
``||a - b||``. For one training item ``a`` and the test set ``B``
(paper Appendix B.3, eq. 9):

    min(a)      = min_b d(a, b)          the nearest test item
    max(a)      = max_b d(a, b)          the farthest test item
    avg(a)      = mean_b d(a, b)
    centroid(a) = d(a, mean_b b)         the distance to the test set's mean embedding
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

AGGREGATES = ("min", "max", "avg", "centroid")


@dataclass
class HeldOut:
    """What every block needs of the test embeddings, on the device, computed once.

    For cosine the test rows are normalized and negated once, so that one matrix product gives
    -cos directly; the average and centroid distances are then matrix-vector products.
    """

    neg_unit_t: Any  # d x m: -(b / |b|), transposed
    t: Any  # d x m: b, transposed (Euclidean)
    sq: Any  # m: |b|^2
    mean_unit: Any  # d: mean of b / |b|
    centroid: Any  # d: mean of b
    centroid_sq: float

    @classmethod
    def build(cls, xp, test, normalized: bool = True) -> HeldOut:
        test = xp.asarray(test, dtype=xp.float32)
        sq = (test * test).sum(axis=1)
        unit = test / xp.sqrt(sq)[:, None]
        centroid = test.mean(axis=0)
        return cls(neg_unit_t=xp.ascontiguousarray(-unit.T), t=xp.ascontiguousarray(test.T), sq=sq,
                   mean_unit=unit.mean(axis=0), centroid=centroid, centroid_sq=float((centroid * centroid).sum()))


def block_distances(xp, rows, test: HeldOut, metric: str, normalized: bool = True, out=None,
                    with_aggregates: bool = True):
    """The (n x m) distances of ``rows`` to the test set and the per-row aggregates (eq. 9).

    ``out``: an (n x m) float32 buffer to reuse for the distances; ``with_aggregates=False``
    returns only the distances (and an empty dict)."""
    d, agg, _ = distance_pass(xp, rows, test, metric, normalized, out=out, with_aggregates=with_aggregates)
    return d, agg


def distance_pass(xp, rows, test: HeldOut, metric: str, normalized: bool = True, out=None,
                  threshold=None, sign: float = 1.0, with_aggregates: bool = True, entries: bool = False):
    """``block_distances`` and the top-K candidate test in one pass: (distances, aggregates,
    ``candidates(d, threshold, sign)`` or None without a threshold). ``entries``: the candidates
    as (row in the block, column, distance) arrays instead, split on the pass's threads too.

    On the CPU the block's rows are cut into one part per thread of the task, and each thread
    runs its part's GEMM (BLAS at one thread) and then everything that reads those distances
    (the Euclidean epilogue, the row min/max/mean, the candidate test) while they are still in
    its core's cache: no BLAS thread spins on a core the reductions need, and the distances
    are not read back from memory once per reduction. Same operations on the same rows as one
    whole-block call, so the same results."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"unknown metric {metric!r}")
    rows = xp.asarray(rows, dtype=xp.float32)
    n, m = rows.shape[0], test.sq.shape[0]
    d = xp.empty((n, m), dtype=xp.float32) if out is None else out
    agg: dict = {}
    if with_aggregates:
        agg = {name: xp.empty(n, dtype=xp.float32) for name in AGGREGATES}
    c_norm = float(xp.sqrt((test.mean_unit * test.mean_unit).sum())) if with_aggregates and metric == "cosine" else 0

    def finish(lo: int, hi: int, sq):
        """Everything that reads the distances of rows [lo, hi), while they are in cache."""
        p = d[lo:hi]
        if sq is not None:  # ||a - b|| = sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))
            p *= -2.0
            p += sq[:, None]
            p += test.sq[None, :]
            xp.maximum(p, 0, out=p)
            xp.sqrt(p, out=p)
            if with_aggregates:
                xp.mean(p, axis=1, out=agg["avg"][lo:hi])
        if with_aggregates:
            xp.min(p, axis=1, out=agg["min"][lo:hi])
            xp.max(p, axis=1, out=agg["max"][lo:hi])
        if threshold is None:
            return None
        flat = candidates(xp, p, threshold, sign, sparse=not entries)
        if entries:
            return flat // m + lo, (flat % m).astype(xp.uint16 if m <= 2**16 else xp.int64), p.ravel()[flat]
        return flat + lo * m

    def part(lo: int, hi: int):
        r = rows[lo:hi]
        sq = None
        if metric == "cosine":
            unit = r if normalized else r / xp.sqrt((r * r).sum(axis=1))[:, None]
            xp.matmul(unit, test.neg_unit_t, out=d[lo:hi])  # -cos(a, b)
            if with_aggregates:
                avg = agg["avg"][lo:hi]
                avg[...] = -(unit @ test.mean_unit)  # mean_b -cos(a, b) = -a/|a| . mean(b/|b|)
                agg["centroid"][lo:hi] = avg / c_norm if c_norm else 0
        else:
            sq = (r * r).sum(axis=1)
            xp.matmul(r, test.t, out=d[lo:hi])
            if with_aggregates:
                agg["centroid"][lo:hi] = xp.sqrt(xp.maximum(sq + test.centroid_sq - 2.0 * (r @ test.centroid), 0))
        return finish(lo, hi, sq)

    parts = _row_parts(xp, n)
    if parts is None:
        found = [part(0, n)]
    else:
        assert _POOL is not None  # _row_parts starts it when it splits the rows
        with one_blas_thread():
            found = list(_POOL.map(lambda bounds: part(*bounds), parts))
    if threshold is None:
        return d, agg, None
    if entries:
        return d, agg, tuple(xp.concatenate([f[i] for f in found]) for i in range(3))
    return d, agg, found[0] if len(found) == 1 else xp.concatenate(found)


_BLAS: Any = None  # threadpoolctl's controller of the BLAS libraries loaded, made once
_BLAS_DEPTH = 0


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS at one thread while ``distance_pass``'s threads each run a part's GEMM (a BLAS pool
    beside them would oversubscribe the cores). Enter it once around a loop of passes: each
    change of BLAS's thread count wakes its threads, which then spin for a while on the cores
    the passes need. Reentrant; only the outermost entry sets and restores."""
    global _BLAS, _BLAS_DEPTH
    if _BLAS_DEPTH:
        _BLAS_DEPTH += 1
        try:
            yield
        finally:
            _BLAS_DEPTH -= 1
        return
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        _BLAS_DEPTH = 1
        try:
            yield
        finally:
            _BLAS_DEPTH = 0


_POOL: ThreadPoolExecutor | None = None
_THREADS: int | None = None  # set_threads: the task's CPUs; None: every CPU of the machine


def set_threads(threads: int | None) -> None:
    """How many threads the row passes may use: the task's CPUs (``task.meta.resources.threads``),
    set by the stage that runs the kernels; None: every CPU of the machine."""
    global _THREADS, _POOL
    if threads != _THREADS and _POOL is not None:
        _POOL.shutdown(wait=True)
        _POOL = None
    _THREADS = threads


#: the most rows of one part of a CPU pass: 1,024 x 1,121 float32 distances (4.6 MB) are read
#: back by the reductions while still in cache; bigger blocks are cut into more parts
PART_ROWS = 1024


def _row_parts(xp, n: int) -> list[tuple[int, int]] | None:
    """Row ranges to spread a pass over CPU threads (NumPy releases the GIL): one per thread,
    more when a part would exceed ``PART_ROWS``; None: one thread."""
    global _POOL
    workers = _THREADS or os.cpu_count() or 1
    if xp.__name__ != "numpy" or workers < 2 or n < 64 * workers:
        return None
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers)
    parts = workers * max(1, -(-n // (workers * PART_ROWS)))
    return [(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


_MASKS = threading.local()  # each thread's reused mask buffer (fresh pages would fault on every call)


def candidates(xp, d, threshold, sign: float = 1.0, sparse: bool = True):
    """Flat indices (ascending) of the entries strictly below their column's threshold
    (``sign=-1``: of the negated entries, i.e. ``d > -threshold``: negation is exact, so this
    is the same test).

    ``sparse`` (on the CPU): the mask is scanned 8 entries at a time (as uint64 words) and
    only the nonzero words are expanded, faster where almost no entry is a candidate (top-K
    after its first blocks), slower where many are (a TMA pass collecting about 1 %)."""
    if xp.__name__ != "numpy" or not d.flags.c_contiguous or not sparse:
        return xp.flatnonzero(d < threshold[None, :] if sign > 0 else d > -threshold[None, :])
    size = d.size
    words = -(-size // 8)
    buf = getattr(_MASKS, "buf", None)
    if buf is None or buf.size < words * 8:
        buf = _MASKS.buf = np.zeros(words * 8, dtype=bool)
    mask = buf[: words * 8]
    mask[size:] = False
    (np.less if sign > 0 else np.greater)(d, threshold[None, :] if sign > 0 else -threshold[None, :],
                                          out=mask[:size].reshape(d.shape))
    hit = np.flatnonzero(mask.view(np.uint64) != 0)  # != 0 first: NumPy's nonzero is fast on bools
    if hit.size == 0:
        return hit
    sub = np.flatnonzero(mask.view(np.uint8).reshape(-1, 8)[hit])
    return hit[sub >> 3] * 8 + (sub & 7)


class TopK:
    """The K nearest training rows of every test column, merged block by block.

    Exact, with ties broken by the smaller training row index, so the result depends only on
    the distance matrix. Blocks arrive in row order, so a later row can only enter a column by
    being strictly closer than the column's current K-th row: one comparison pass finds the
    candidates, which are buffered and merged (sorted) only when the buffer fills. A stale
    threshold only lets more candidates through; the merge keeps the K best.
    """

    def __init__(self, xp, k: int, m: int, buffer: int | None = None) -> None:
        # merging once about K candidates per column are waiting keeps the threshold tight
        self.xp, self.k, self.m, self.buffer = xp, k, m, buffer or max(k * m, 4096)
        self.dist = xp.full((k, m), xp.inf, dtype=xp.float32)
        self.index = xp.full((k, m), -1, dtype=xp.int64)
        self.pending: list[tuple] = []
        self.n_pending = 0

    def threshold(self):
        """The per-column bound a later row must beat, or None while some column is filling (then
        ``update`` needs the whole block)."""
        return None if bool((self.index[-1] < 0).any()) else self.dist[-1].copy()

    def update(self, d, first_row, flat=None) -> None:
        """Offer the rows of block ``d``: ``first_row`` is the global index of its first row (rows
        consecutive), or an ascending array of the global indices of its rows. ``flat``: the
        block's ``candidates`` against ``threshold()``, already computed (``distance_pass``)."""
        xp = self.xp
        ids = None if isinstance(first_row, (int, np.integer)) else first_row

        def global_rows(local):
            return local.astype(xp.int64) + first_row if ids is None else ids[local]

        if bool((self.index[-1] < 0).any()):  # still filling: a block's own K best (with ties) are candidates
            self.flush()
            if d.shape[0] > self.k:
                kth = xp.partition(d, self.k - 1, axis=0)[self.k - 1]
                limit = xp.minimum(kth, self.dist[-1])
                flat = xp.flatnonzero(d <= limit[None, :])
            else:
                flat = xp.arange(d.size)
            self._merge(global_rows(flat // self.m), (flat % self.m).astype(xp.int64), d.ravel()[flat])
            return
        if flat is None:
            flat = candidates(xp, d, self.dist[-1])
        if flat.shape[0] == 0:
            return
        self.pending.append((global_rows(flat // self.m), flat % self.m, d.ravel()[flat]))
        self.n_pending += flat.shape[0]
        if self.n_pending >= self.buffer:
            self.flush()

    def flush(self) -> None:
        """Merge the buffered candidates (call once more after the last block)."""
        if not self.pending:
            return
        xp = self.xp
        rows = xp.concatenate([p[0] for p in self.pending]).astype(xp.int64)
        cols = xp.concatenate([p[1] for p in self.pending]).astype(xp.int64)
        dist = xp.concatenate([p[2] for p in self.pending])
        self.pending, self.n_pending = [], 0
        self._merge(rows, cols, dist)

    def result(self):
        self.flush()
        return self.index, self.dist

    def _merge(self, rows, cols, dist) -> None:
        xp, k = self.xp, self.k
        # the columns with candidates, ascending (bincount: a tenth of unique's time on the CPU)
        affected = xp.flatnonzero(xp.bincount(cols, minlength=self.m)) if xp.__name__ == "numpy" else xp.unique(cols)
        keep_rows = self.index[:, affected].T.ravel()
        keep_dist = self.dist[:, affected].T.ravel()
        keep_cols = xp.broadcast_to(affected[:, None], (affected.shape[0], k)).ravel()
        valid = keep_rows >= 0
        all_rows = xp.concatenate([keep_rows[valid], rows])
        all_cols = xp.concatenate([keep_cols[valid], cols])
        all_dist = xp.concatenate([keep_dist[valid], dist.astype(xp.float32)])
        # Within equal (column, distance) the entries are already in row order (kept entries come
        # first, per column in rank order, and have smaller rows than any candidate; candidates
        # arrive in ascending row order), so one stable sort on a (column, distance) key orders by
        # row too.
        order = stable_order(xp, (all_cols.astype(xp.uint64) << xp.uint64(32)) | _sortable(xp, all_dist))
        all_rows, all_cols, all_dist = all_rows[order], all_cols[order], all_dist[order]
        # rank of each entry within its column: its position minus its column's first position
        # (no repeat() with an array of counts: some CuPy 13 releases raise on it)
        starts = xp.searchsorted(all_cols, affected)
        rank = xp.arange(all_cols.shape[0]) - starts[xp.searchsorted(affected, all_cols)]
        take = rank < k
        self.index[rank[take], all_cols[take]] = all_rows[take]
        self.dist[rank[take], all_cols[take]] = all_dist[take]


def stable_order(xp, key):
    """``argsort(key, kind="stable")``, faster on the CPU: NumPy's default (vectorized) sort,
    then each run of equal keys put back in ascending position, which is what a stable sort
    gives. CuPy's sort is stable already."""
    if xp.__name__ != "numpy":
        return xp.argsort(key)
    order = np.argsort(key)
    ordered = key[order]
    equal = ordered[1:] == ordered[:-1]
    if not equal.any():
        return order
    in_run = np.zeros(order.size, dtype=bool)
    in_run[1:] |= equal
    in_run[:-1] |= equal
    at = np.flatnonzero(in_run)
    run = np.cumsum(np.concatenate([[True], ~equal]))[at]  # which run of equal keys
    tied = order[at]
    order[at] = tied[np.lexsort((tied, run))]
    return order


def _sortable(xp, values):
    """float32 -> uint64 holding a uint32 whose unsigned order is the float order."""
    bits = (values.astype(xp.float32) + xp.float32(0)).view(xp.uint32)  # + 0: -0.0 sorts as 0.0
    flipped = xp.where(bits >> 31 == 1, ~bits, bits | xp.uint32(0x80000000))
    return flipped.astype(xp.uint64)


def column_order(xp, dist, index):
    """argsort of every column by (dist, index): stable sort by index, then stable by dist."""
    stable = {"kind": "stable"} if xp.__name__ == "numpy" else {}  # CuPy's sort is stable already
    by_index = xp.argsort(index, axis=0, **stable)
    d_sorted = xp.take_along_axis(dist, by_index, axis=0)
    by_dist = xp.argsort(d_sorted, axis=0, **stable)
    return xp.take_along_axis(by_index, by_dist, axis=0)


def nearest(xp, train, test: HeldOut, k: int, metric: str = "cosine", normalized: bool = True,
            chunk_rows: int = 2048):
    """The ``k`` nearest rows of ``train`` (in memory) to every test column: (index, distance),
    (k x m), by (distance, row). The similarity stage's top-K without its aggregates or files."""
    n, m = train.shape[0], test.neg_unit_t.shape[1]
    top = TopK(xp, min(k, max(n, 1)), m)
    buffer = xp.empty((min(chunk_rows, max(n, 1)), m), dtype=xp.float32)
    with one_blas_thread():
        for lo in range(0, n, chunk_rows):
            rows = train[lo:lo + chunk_rows]
            d, _, flat = distance_pass(xp, rows, test, metric, normalized, out=buffer[: rows.shape[0]],
                                       threshold=top.threshold(), with_aggregates=False)
            top.update(d, lo, flat)
        return top.result()
