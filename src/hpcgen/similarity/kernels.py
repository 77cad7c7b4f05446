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
from concurrent.futures import ThreadPoolExecutor
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
    rows = xp.asarray(rows, dtype=xp.float32)
    sq = (rows * rows).sum(axis=1)
    if metric == "cosine":
        unit = rows if normalized else rows / xp.sqrt(sq)[:, None]
        d = xp.matmul(unit, test.neg_unit_t, out=out)  # -cos(a, b)
        if not with_aggregates:
            return d, {}
        avg = -(unit @ test.mean_unit)  # mean_b -cos(a, b) = -a/|a| . mean(b/|b|)
        c_norm = float(xp.sqrt((test.mean_unit * test.mean_unit).sum()))
        agg = {"avg": avg, "centroid": avg / c_norm if c_norm else avg * 0}
    elif metric == "euclidean":
        d = xp.matmul(rows, test.t, out=out)
        d *= -2.0
        d += sq[:, None]
        d += test.sq[None, :]
        xp.maximum(d, 0, out=d)
        xp.sqrt(d, out=d)
        if not with_aggregates:
            return d, {}
        agg = {"avg": d.mean(axis=1),
               "centroid": xp.sqrt(xp.maximum(sq + test.centroid_sq - 2.0 * (rows @ test.centroid), 0))}
    else:
        raise ValueError(f"unknown metric {metric!r}")
    agg["min"], agg["max"] = row_min_max(xp, d)
    return d, agg


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


def _row_parts(xp, d) -> list[tuple[int, int]] | None:
    """Row ranges to spread a pass over CPU threads (NumPy releases the GIL); None: one thread."""
    global _POOL
    workers = _THREADS or os.cpu_count() or 1
    if xp.__name__ != "numpy" or workers < 2 or d.shape[0] < 64 * workers:
        return None
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers)
    return [(i * d.shape[0] // workers, (i + 1) * d.shape[0] // workers) for i in range(workers)]


def candidates(xp, d, threshold):
    """Flat indices of the entries strictly below their column's threshold."""
    # one thread: splitting this pass over threads measured slower (it contends with BLAS threads)
    return xp.flatnonzero(d < threshold[None, :])


def row_min_max(xp, d):
    """Per-row min and max, the rows spread over threads on the CPU."""
    lo_hi = _row_parts(xp, d)
    if lo_hi is None:
        return d.min(axis=1), d.max(axis=1)
    mins = xp.empty(d.shape[0], dtype=d.dtype)
    maxs = xp.empty(d.shape[0], dtype=d.dtype)

    def part(bounds):
        lo, hi = bounds
        xp.min(d[lo:hi], axis=1, out=mins[lo:hi])
        xp.max(d[lo:hi], axis=1, out=maxs[lo:hi])

    assert _POOL is not None  # _row_parts starts it when it splits the rows
    list(_POOL.map(part, lo_hi))
    return mins, maxs


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

    def update(self, d, first_row) -> None:
        """Offer the rows of block ``d``: ``first_row`` is the global index of its first row (rows
        consecutive), or an ascending array of the global indices of its rows."""
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
        affected = xp.unique(cols)
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
        key = (all_cols.astype(xp.uint64) << xp.uint64(32)) | _sortable(xp, all_dist)
        order = xp.argsort(key, kind="stable") if xp.__name__ == "numpy" else xp.argsort(key)
        all_rows, all_cols, all_dist = all_rows[order], all_cols[order], all_dist[order]
        # rank of each entry within its column: its position minus its column's first position
        # (no repeat() with an array of counts: some CuPy 13 releases raise on it)
        starts = xp.searchsorted(all_cols, affected)
        rank = xp.arange(all_cols.shape[0]) - starts[xp.searchsorted(affected, all_cols)]
        take = rank < k
        self.index[rank[take], all_cols[take]] = all_rows[take]
        self.dist[rank[take], all_cols[take]] = all_dist[take]


def _sortable(xp, values):
    """float32 -> uint64 holding a uint32 whose unsigned order is the float order."""
    bits = values.astype(xp.float32).view(xp.uint32)
    flipped = xp.where(bits >> 31 == 1, ~bits, bits | xp.uint32(0x80000000))
    return flipped.astype(xp.uint64)


def column_order(xp, dist, index):
    """argsort of every column by (dist, index): stable sort by index, then stable by dist."""
    stable = {"kind": "stable"} if xp.__name__ == "numpy" else {}  # CuPy's sort is stable already
    by_index = xp.argsort(index, axis=0, **stable)
    d_sorted = xp.take_along_axis(dist, by_index, axis=0)
    by_dist = xp.argsort(d_sorted, axis=0, **stable)
    return xp.take_along_axis(by_index, by_dist, axis=0)
