"""Set-level similarity measures between training data and test data (Appendix B.3-B.4 of the
data-arrangement paper: He et al., *The Right Time Matters*, arXiv:2406.11721; "the paper" below).

This module is their reference; each function names the equation it implements.

Per training item ``a`` and test set ``B`` with distance d (cosine: d = -cos, eq. 7; Euclidean:
||a - b||, eq. 8), the per-item aggregates min, max, avg and centroid are in
hpcgen.similarity.kernels.

**WSD, eq. 13** (the per-item distance NFT, FFT and coarse sort by, Section 3.2): Cosine-Min plus
Cosine-Avg scaled to Cosine-Min's magnitude,

    WSD(a) = w_min * min_b d(a, b) + w_avg * avg_b d(a, b),
    w_min = 1,  w_avg = mean_a(min) / mean_a(avg)              (``scaled_avg_weight``)

the means running over the items being ordered (training items; tasks for coarse). Fixed
weights are an option (``weights="fixed"``), not the paper's.

**SD_k, eq. 9**: ``SD_k = Op(D[:s*k][:])``, the operator applied to the whole sub-matrix of the
distances from the items seen by checkpoint k (cumulative: the first s*k of the training order)
to the test items: ``min`` and ``max`` over the whole sub-matrix, ``avg`` its mean, ``centroid``
the distance between the centroid of the seen items' embeddings and the test items' centroid.
The paper computes it per unseen task T (the columns of T) and for the whole test set
(``submatrix_curves``). ``item_interval_curve`` is an older, different curve (the mean per-item
distance of the items seen since checkpoint k-1), kept under its own name.

**Bigram KL, eqs. 10-12**: the word bigrams of each item's "{instruction} {answer}" text
(split on white space, case kept), counted over a data set and turned into a distribution over
the distinct bigrams; with p over the seen training data and q over the test data,

    KL(p, q, eps) = sum_i p_i log(p_i / (q_i + eps)),   eps = 1e-10, on q only

the sum running over the bigrams with p_i > 0 (``bigram_kl``; ``BigramKLCurve`` computes it at
every checkpoint, per task, incrementally).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

#: the nine measures of Appendix B.4 / Figure 15
EMBEDDING_MEASURES = tuple(f"{metric}_{op}" for metric in ("cosine", "euclidean")
                           for op in ("min", "max", "avg", "centroid"))
MEASURES = EMBEDDING_MEASURES + ("bigram_kl",)
KL_EPS = 1e-10


def scaled_avg_weight(min_values: np.ndarray, avg_values: np.ndarray) -> float:
    """Eq. 13's scale of Cosine-Avg: mean(min) / mean(avg) over the items."""
    mean_avg = float(np.mean(np.asarray(avg_values, dtype=np.float64)))
    if not math.isfinite(mean_avg) or abs(mean_avg) < 1e-12:
        raise ValueError("the mean of the avg distances is 0: eq. 13's scaled weight is undefined")
    return float(np.mean(np.asarray(min_values, dtype=np.float64))) / mean_avg


def wsd(min_values: np.ndarray, avg_values: np.ndarray, weights: str = "scaled", w_min: float = 1.0,
        w_avg: float = 1.0) -> tuple[np.ndarray, float, float]:
    """WSD per item (eq. 13) and the weights used: (values, w_min, w_avg). ``weights="scaled"``
    is the paper's (w_min 1, w_avg mean(min)/mean(avg)); ``"fixed"`` takes w_min and w_avg."""
    mn = np.asarray(min_values, dtype=np.float64)
    av = np.asarray(avg_values, dtype=np.float64)
    if weights == "scaled":
        w_min, w_avg = 1.0, scaled_avg_weight(mn, av)
    elif weights != "fixed":
        raise ValueError(f"unknown weights {weights!r}")
    return w_min * mn + w_avg * av, float(w_min), float(w_avg)


def set_distance(a, b, *, metric: str = "cosine", agg: str = "min", w_min: float = 1.0, w_avg: float = 1.0,
                 chunk_rows: int = 4096, xp=np) -> float:
    """The mean over a in A of its per-item aggregate distance to B (``agg``: min, max, avg,
    centroid, or ``wsd`` with fixed weights), computed in row chunks. Not eq. 9's set-level SD
    except for avg: eq. 9's min and max run over the whole sub-matrix (``submatrix_curves``)."""
    from hpcgen.similarity.kernels import HeldOut, block_distances

    held = HeldOut.build(xp, b)
    total, n = 0.0, len(a)
    for lo in range(0, n, chunk_rows):
        _, aggs = block_distances(xp, np.asarray(a[lo:lo + chunk_rows], dtype=np.float32), held, metric, False)
        values = w_min * aggs["min"] + w_avg * aggs["avg"] if agg == "wsd" else aggs[agg]
        total += float(values.astype(xp.float64).sum())
    return total / n


def checkpoint_ends(n: int, interval: int) -> np.ndarray:
    """Items seen at checkpoints k = 1..ceil(n / interval): min(k * interval, n)."""
    if interval < 1:
        raise ValueError("interval must be at least 1")
    return np.minimum(np.arange(1, math.ceil(n / interval) + 1, dtype=np.int64) * interval, n)


def item_interval_curve(item_distance: np.ndarray, order: np.ndarray, interval: int,
                        window: str = "interval") -> np.ndarray:
    """Not eq. 9: the mean per-item distance of the items seen since the previous checkpoint
    (``window="interval"``) or of all seen items (``"cumulative"``), at every ``interval`` items."""
    values = np.asarray(item_distance, dtype=np.float64)[np.asarray(order)]
    ends = checkpoint_ends(len(values), interval)
    if window == "cumulative":
        return np.cumsum(values)[ends - 1] / ends
    if window == "interval":
        sums = np.add.reduceat(values, np.arange(0, len(values), interval)) if len(values) else np.array([])
        return sums / np.diff(np.concatenate([[0], ends]))
    raise ValueError(f"unknown window {window!r}")


def _pair_distance(metric: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each row of ``a`` to each row of ``b`` (float64, small inputs)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if metric == "cosine":
        na = np.linalg.norm(a, axis=-1, keepdims=True)
        nb = np.linalg.norm(b, axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return -(a / na) @ (b / nb).T
    if metric == "euclidean":
        return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))
    raise ValueError(f"unknown metric {metric!r}")


def submatrix_curves(train: np.ndarray, test: np.ndarray, test_task: np.ndarray, order: np.ndarray, interval: int,
                     metrics: Sequence[str] = ("cosine", "euclidean"), normalized: bool = False,
                     chunk_rows: int = 4096) -> dict[str, dict[str, np.ndarray]]:
    """SD_k of eq. 9 for every checkpoint k (every ``interval`` items of ``order``), every
    operator and metric, overall and per test task.

    ``train`` (n x d) and ``test`` (m x d) are embeddings, ``test_task`` (m) the task index of each
    test column (0..T-1). Returns ``{"overall": {name: (K,)}, "per_task": {name: (K, T)}}`` with
    names ``<metric>_<op>``. One pass over the seen rows: the distances of each checkpoint's new
    rows are reduced to per-task minima, maxima and sums, then accumulated."""
    from hpcgen.similarity.kernels import HeldOut, block_distances

    order = np.asarray(order, dtype=np.int64)
    test_task = np.asarray(test_task, dtype=np.int64)
    n_tasks = int(test_task.max()) + 1 if test_task.size else 0
    perm = np.argsort(test_task, kind="stable")  # columns grouped by task, for reduceat
    counts = np.bincount(test_task, minlength=n_tasks)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if (counts == 0).any():
        raise ValueError("every task index in 0..T-1 needs at least one test column")
    ends = checkpoint_ends(len(order), interval)
    k_total = len(ends)
    test = np.asarray(test, dtype=np.float32)
    held = HeldOut.build(np, test, normalized)
    test64 = test.astype(np.float64)
    task_centroids = np.stack([test64[test_task == t].mean(axis=0) for t in range(n_tasks)]) if n_tasks else \
        np.zeros((0, test.shape[1]))
    all_centroid = test64.mean(axis=0, keepdims=True)
    out: dict[str, dict[str, np.ndarray]] = {"overall": {}, "per_task": {}}
    for metric in metrics:
        cur_min = np.full(n_tasks, np.inf)
        cur_max = np.full(n_tasks, -np.inf)
        cur_sum = np.zeros(n_tasks)
        emb_sum = np.zeros(test.shape[1])
        res = {op: np.empty((k_total, n_tasks)) for op in ("min", "max", "avg", "centroid")}
        res_all = {op: np.empty(k_total) for op in ("min", "max", "avg", "centroid")}
        lo = 0
        for k, hi in enumerate(ends):
            for c_lo in range(lo, hi, chunk_rows):
                rows = order[c_lo:min(hi, c_lo + chunk_rows)]
                block = np.asarray(train[np.sort(rows)], dtype=np.float32)
                d, _ = block_distances(np, block, held, metric, normalized, with_aggregates=False)
                d = d[:, perm].astype(np.float64)
                np.minimum(cur_min, np.minimum.reduceat(d, starts, axis=1).min(axis=0), out=cur_min)
                np.maximum(cur_max, np.maximum.reduceat(d, starts, axis=1).max(axis=0), out=cur_max)
                cur_sum += np.add.reduceat(d, starts, axis=1).sum(axis=0)
                emb_sum += block.astype(np.float64).sum(axis=0)
            lo = hi
            seen = float(hi)
            res["min"][k], res["max"][k] = cur_min, cur_max
            res["avg"][k] = cur_sum / (seen * counts)
            centroid = (emb_sum / seen)[None, :]
            res["centroid"][k] = _pair_distance(metric, centroid, task_centroids)[0]
            res_all["min"][k], res_all["max"][k] = cur_min.min(), cur_max.max()
            res_all["avg"][k] = cur_sum.sum() / (seen * counts.sum())
            res_all["centroid"][k] = _pair_distance(metric, centroid, all_centroid)[0, 0]
        for op in res:
            out["per_task"][f"{metric}_{op}"] = res[op]
            out["overall"][f"{metric}_{op}"] = res_all[op]
    return out


def words_bigrams(text: str) -> list[tuple[str, str]]:
    """Eq. 10 with n = 2: consecutive word pairs of a text (white-space words, case kept)."""
    words = text.split()
    return list(zip(words, words[1:]))


def bigrams(texts: Iterable[str]) -> Counter:
    """Counts of the word bigrams of the texts over distinct bigrams (eq. 12's distribution)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(words_bigrams(text))
    return counts


def bigram_kl(p: Counter, q: Counter, eps: float = KL_EPS) -> float:
    """Eq. 11: sum over the bigrams i with p_i > 0 of p_i log(p_i / (q_i + eps)), p and q the
    count distributions normalised to probabilities; eps on q only."""
    n_p, n_q = sum(p.values()), sum(q.values())
    if n_p == 0:
        return float("nan")
    kl = 0.0
    for b, c in p.items():
        if c <= 0:
            continue
        pb = c / n_p
        qb = q.get(b, 0) / n_q if n_q else 0.0
        kl += pb * math.log(pb / (qb + eps))
    return kl


class BigramKLCurve:
    """Eq. 11 between the growing seen training data and each test group, at every checkpoint.

    With counts c over the seen training data (N bigrams in all) and a test group's distribution
    q on its support Q:  KL = S/N - log N - (A + (N - B) log eps) / N, where S = sum_i c_i log c_i,
    A = sum_{i in Q} c_i log(q_i + eps) and B = sum_{i in Q} c_i. All three are updated as items
    are added, so a checkpoint costs the bigrams of its new items, not a pass over the vocabulary.
    """

    def __init__(self, groups: Sequence[Iterable[str]], eps: float = KL_EPS) -> None:
        self.eps = eps
        self.ids: dict[tuple[str, str], int] = {}
        self.counts = np.zeros(1024, dtype=np.int64)
        self.S, self.N = 0.0, 0
        rows, cols, logs = [], [], []
        for g, texts in enumerate(groups):
            q = bigrams(texts)
            total = sum(q.values())
            for b, c in q.items():
                rows.append(self._id(b))
                cols.append(g)
                logs.append(math.log(c / total + eps))
        self.n_groups = len(groups)
        self.q_rows = np.asarray(rows, dtype=np.int64)
        self.q_cols = np.asarray(cols, dtype=np.int64)
        self.q_logs = np.asarray(logs, dtype=np.float64)
        self.A = np.zeros(self.n_groups)
        self.B = np.zeros(self.n_groups)
        # the (group, log q) entries of the test support, sorted by bigram id for searchsorted
        sort = np.argsort(self.q_rows, kind="stable")
        self.q_rows, self.q_cols, self.q_logs = self.q_rows[sort], self.q_cols[sort], self.q_logs[sort]
        self.n_test_ids = len(self.ids)

    def _id(self, b: tuple[str, str]) -> int:
        i = self.ids.get(b)
        if i is None:
            i = self.ids[b] = len(self.ids)
            if i >= len(self.counts):
                self.counts = np.concatenate([self.counts, np.zeros(len(self.counts), dtype=np.int64)])
        return i

    def add(self, texts: Iterable[str]) -> None:
        """Count the bigrams of more seen training items."""
        ids = [self._id(b) for text in texts for b in words_bigrams(text)]
        if not ids:
            return
        uniq, delta = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        old = self.counts[uniq].astype(np.float64)
        new = old + delta
        with np.errstate(divide="ignore", invalid="ignore"):
            self.S += float(np.sum(new * np.log(new)) - np.sum(np.where(old > 0, old * np.log(np.maximum(old, 1)), 0)))
        self.counts[uniq] += delta
        self.N += int(delta.sum())
        in_test = uniq < self.n_test_ids
        if in_test.any():
            u, dl = uniq[in_test], delta[in_test].astype(np.float64)
            lo = np.searchsorted(self.q_rows, u, side="left")
            hi = np.searchsorted(self.q_rows, u, side="right")
            reps = hi - lo
            idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if reps.sum() else np.zeros(0, np.int64)
            weight = np.repeat(dl, reps)
            np.add.at(self.A, self.q_cols[idx], weight * self.q_logs[idx])
            np.add.at(self.B, self.q_cols[idx], weight)

    def value(self) -> np.ndarray:
        """KL(seen training || each group) now (NaN before any bigram was seen)."""
        if self.N == 0:
            return np.full(self.n_groups, np.nan)
        n = float(self.N)
        return self.S / n - math.log(n) - (self.A + (n - self.B) * math.log(self.eps)) / n


def bigram_kl_curves(train_texts: Sequence[str], test_texts: Sequence[str], test_task: np.ndarray,
                     order: np.ndarray, interval: int, eps: float = KL_EPS) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 12 at every checkpoint: (overall (K,), per task (K, T)) for the training items seen by
    checkpoint k (the first k * interval of ``order``) against the whole test set and each task."""
    test_task = np.asarray(test_task, dtype=np.int64)
    n_tasks = int(test_task.max()) + 1 if test_task.size else 0
    groups = [[t for t, g in zip(test_texts, test_task) if g == k] for k in range(n_tasks)] + [list(test_texts)]
    curve = BigramKLCurve(groups, eps)
    ends = checkpoint_ends(len(order), interval)
    out = np.empty((len(ends), n_tasks + 1))
    lo = 0
    for k, hi in enumerate(ends):
        curve.add(train_texts[int(i)] for i in order[lo:hi])
        out[k] = curve.value()
        lo = hi
    return out[:, -1].copy(), out[:, :-1].copy()
