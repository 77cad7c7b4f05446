"""The arrangement strategies of the data-arrangement paper (sections 3 and 4, Appendices B.4 and
C.3): He et al., *The Right Time Matters: Data Arrangement Affects Zero-Shot Generalization in
Instruction Tuning*, Findings of ACL 2025, arXiv:2406.11721. "The paper" below is this one.

Orders are over training rows (0 = the first training record of records.parquet). Ties are
broken by row index everywhere, so an order is a deterministic function of its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpcgen.arrangements.tma import DistanceSource, TMAStats, order_from_rounds, tma_rounds
from hpcgen.errors import ConfigError


@dataclass
class Arrangement:
    order: np.ndarray  # training rows in training order
    rounds: np.ndarray | None = None  # round of each position of ``order``, for round-based strategies
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What a strategy may use; the similarity parts are loaded only when a strategy asks."""

    tasks: np.ndarray  # task of each training row
    seed: int
    params: Any  # the arrange config section
    item_distance: Callable[[str], np.ndarray] | None = None  # aggregate name -> per-row distance
    distances: Callable[[], DistanceSource] | None = None  # the train x test distances
    task_distance: Callable[..., np.ndarray] | None = None  # (task row groups, attrs) -> distance

    @property
    def n(self) -> int:
        return len(self.tasks)

    def need(self, what: str):
        value = getattr(self, what)
        if value is None:
            raise ConfigError(f"strategy {self.params.strategy!r} needs the similarity stage's outputs",
                              key="arrange.strategy")
        return value


STRATEGIES: dict[str, Callable[[Context], Arrangement]] = {}
#: strategies that need embeddings and distances (the others must not cause that work)
NEEDS_SIMILARITY: set[str] = set()
#: strategies that order by the records' tasks (every record needs one)
NEEDS_TASKS: set[str] = set()


def register(name: str, needs_similarity: bool = False, needs_tasks: bool = False):
    def wrap(fn):
        STRATEGIES[name] = fn
        if needs_similarity:
            NEEDS_SIMILARITY.add(name)
        if needs_tasks:
            NEEDS_TASKS.add(name)
        return fn
    return wrap


def _task_groups(tasks: np.ndarray) -> list[np.ndarray]:
    """Rows of each task, tasks in first-appearance order, rows ascending."""
    names, first = np.unique(tasks, return_index=True)
    order = np.argsort(first, kind="stable")
    return [np.flatnonzero(tasks == names[i]) for i in order]


@register("random")
def random_order(ctx: Context) -> Arrangement:
    """RT: a seeded random permutation of the training items; with a ``budget`` M, its first M
    (M items drawn at random, as an RT baseline for a TMA round window or budget)."""
    order = np.random.default_rng(ctx.seed).permutation(ctx.n).astype(np.int64)
    budget = ctx.params.budget
    if budget is not None:
        if budget > ctx.n:
            raise ConfigError(f"budget {budget} is larger than the pool of {ctx.n} items", key="arrange.budget",
                              fix="lower the budget")
        order = order[:budget]
    return Arrangement(order)


@register("round_robin", needs_tasks=True)
def round_robin(ctx: Context) -> Arrangement:
    """Section 3.1, round-robin: consecutive blocks each take one item from every task in turn
    (tasks in first-appearance order, items in record order; exhausted tasks drop out)."""
    groups = _task_groups(ctx.tasks)
    depth = max(len(g) for g in groups)
    rows = [g[k] for k in range(depth) for g in groups if k < len(g)]
    rounds = [k for k in range(depth) for g in groups if k < len(g)]
    return Arrangement(np.asarray(rows, dtype=np.int64), np.asarray(rounds, dtype=np.int32))


@register("cluster", needs_tasks=True)
def cluster(ctx: Context) -> Arrangement:
    """Section 3.1, cluster: all items of a task together; tasks in seeded random order."""
    groups = _task_groups(ctx.tasks)
    perm = np.random.default_rng(ctx.seed).permutation(len(groups))
    return Arrangement(np.concatenate([groups[i] for i in perm]).astype(np.int64))


def per_item_distance(ctx: Context, attrs: dict | None = None) -> np.ndarray:
    """The per-item distance to the whole test set that NFT/FFT sort by: an aggregate of the
    similarity stage, or ``wsd`` (eq. 13): Cosine-Min plus Cosine-Avg scaled by
    mean(min) / mean(avg) over the training items (``wsd_weights: scaled``, the paper's), or
    w_min * min + w_avg * avg (``wsd_weights: fixed``). The weights used go into ``attrs``."""
    from hpcgen.similarity.measures import wsd

    p = ctx.params
    get = ctx.need("item_distance")
    if p.distance == "wsd":
        values, w_min, w_avg = wsd(get("min"), get("avg"), p.wsd_weights, p.w_min, p.w_avg)
        if attrs is not None:
            attrs.update(wsd_w_min=w_min, wsd_w_avg=w_avg, wsd_weights=p.wsd_weights)
        return values
    return get(p.distance).astype(np.float64)


@register("nft", needs_similarity=True)
def nft(ctx: Context) -> Arrangement:
    """NFT (3.2.1, B.4): items sorted by their distance to the test set (eq. 13's WSD by
    default), nearest first; ties by row."""
    attrs: dict = {}
    d = per_item_distance(ctx, attrs)
    return Arrangement(np.lexsort((np.arange(ctx.n), d)).astype(np.int64), attrs=attrs)


@register("fine", needs_similarity=True)
def fine(ctx: Context) -> Arrangement:
    """Fine-grained (3.2.2): instance-level NFT."""
    return nft(ctx)


@register("fft", needs_similarity=True)
def fft(ctx: Context) -> Arrangement:
    """FFT (3.2.1, B.4): items sorted by their distance to the test set, farthest first; ties by
    row (so FFT is NFT reversed except inside groups of tied items)."""
    attrs: dict = {}
    d = per_item_distance(ctx, attrs)
    return Arrangement(np.lexsort((np.arange(ctx.n), -d)).astype(np.int64), attrs=attrs)


@register("coarse", needs_similarity=True, needs_tasks=True)
def coarse(ctx: Context) -> Arrangement:
    """Coarse-grained (3.2.2): a task is the mean embedding of its items; tasks are ordered by
    their distance to the test set (eq. 13's WSD of the task embeddings by default, the weights
    scaled over the tasks), nearest first (``coarse_order: farthest`` reverses), and the items of
    a task stay together in record order (the authors shuffle inside a task: FIDELITY row 10)."""
    groups = _task_groups(ctx.tasks)
    if len(groups) < 2:
        raise ConfigError(f"strategy 'coarse' needs training records grouped in tasks; these have "
                          f"{len(groups)} task", key="arrange.strategy", fix="use nft, or data with tasks")
    attrs: dict = {}
    d = ctx.need("task_distance")(groups, attrs)
    sign = -1.0 if ctx.params.coarse_order == "farthest" else 1.0
    order = np.lexsort((np.arange(len(groups)), sign * d))
    return Arrangement(np.concatenate([groups[i] for i in order]).astype(np.int64), attrs=attrs)


def _tma_base(ctx: Context, farthest: bool) -> tuple[np.ndarray, np.ndarray, TMAStats]:
    p = ctx.params
    stats = TMAStats()
    round_of = tma_rounds(ctx.need("distances")(), farthest=farthest, block_rows=p.block_rows,
                          dense_rows=p.dense_rows, stats=stats)
    key = None
    if p.within_round == "distance":
        key = ctx.need("item_distance")("max" if farthest else "min").astype(np.float64)
        key = -key if farthest else key
    order = order_from_rounds(round_of, within=p.within_round, key=key)
    return order.astype(np.int64), round_of[order], stats


def rounds_prefix(rounds: np.ndarray, budget: int, mode: str) -> int:
    """How many leading positions of a round-ordered sequence a budget M keeps.

    ``crossing`` (the paper, C.3): whole rounds until the count reaches or passes M, the round
    that crosses M kept whole; ``fit``: the whole rounds that fit in M; ``exact``: M positions."""
    n = int(rounds.size)
    if mode == "exact" or budget >= n:
        return min(budget, n)
    ends = np.append(np.flatnonzero(np.diff(rounds)) + 1, n)
    if mode == "crossing":
        return int(ends[np.searchsorted(ends, budget, side="left")])
    if mode == "fit":
        fit = ends[ends <= budget]
        return int(fit[-1]) if fit.size else 0
    raise ValueError(f"unknown budget mode {mode!r}")


def _window_and_budget(order: np.ndarray, rounds: np.ndarray, p) -> tuple[np.ndarray, np.ndarray]:
    if p.window is not None:
        i, j = p.window
        keep = (rounds >= i) & (rounds < j)
        order, rounds = order[keep], rounds[keep]
        if not order.size:
            raise ConfigError(f"round window [{i}, {j}) holds no items (there are {int(rounds.max(initial=-1)) + 1} "
                              "rounds)", key="arrange.window")
    if p.budget is not None:
        if p.budget > order.size:
            raise ConfigError(f"budget {p.budget} is larger than the pool of {order.size} items",
                              key="arrange.budget", fix="lower the budget")
        cut = rounds_prefix(rounds, p.budget, p.budget_mode)
        if cut == 0:
            raise ConfigError(f"budget {p.budget} is smaller than the first round", key="arrange.budget",
                              fix="raise the budget or use budget_mode: exact")
        order, rounds = order[:cut], rounds[:cut]
    return order, rounds


@register("tma", needs_similarity=True)
def tma(ctx: Context) -> Arrangement:
    """TMA (section 4, Algorithm 1): round r is the union over test items of each one's nearest
    training item among those not chosen in earlier rounds; repeat until none remain.

    ``direction``: ``nearest`` (NFT: rounds in order), ``reverse`` (FFT: the exact reverse of the
    nearest order), ``farthest_rounds`` (the same algorithm with farthest picks, rounds in order).
    ``within_round``: ``index`` (row order, as the authors' code does) or ``distance`` (each item's
    own nearest-test distance, farthest-test for farthest picks). ``window: [i, j)`` keeps rounds
    i..j-1 (4.2, Figure 8); ``budget`` M keeps the first rounds until M is reached, the crossing
    round whole (``budget_mode: crossing``, C.3), the rounds that fit (``fit``) or exactly the first M
    items (``exact``)."""
    p = ctx.params
    order, rounds, stats = _tma_base(ctx, farthest=p.direction == "farthest_rounds")
    if p.direction == "reverse":
        order, rounds = order[::-1].copy(), rounds[::-1].copy()
    order, rounds = _window_and_budget(order, rounds, p)
    return Arrangement(order, rounds.astype(np.int32), {"rounds": stats.rounds, "passes": stats.passes})


def _take(seq: np.ndarray, rounds: np.ndarray, budget: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    cut = rounds_prefix(rounds, budget, mode)
    return seq[:cut], rounds[:cut]


@register("tma_mix", needs_similarity=True)
def tma_mix(ctx: Context) -> Arrangement:
    """The five settings of Appendix C.3 / Figure 17 over a budget of M items, from the TMA rounds
    D^1..D^N of the whole pool (Algorithm 1, nearest picks; rounds in order, inside a round as
    ``within_round`` says):

    - ``min``: rounds 1, 2, ... until the count reaches M (the crossing round whole), in that order;
    - ``max``: rounds N, N-1, ... likewise, farthest first (``max_source: rounds``, the paper's
      text), or rounds 1, 2, ... of a separate farthest-pick TMA (``max_source: farthest_pick``,
      the authors' ``select_max_data``); the two differ in almost every position;
    - ``nft``: rounds from the near end until M/2 is reached (D_train1) plus rounds from the far
      end until M/2 is reached (D_train2), merged and ordered nearest to farthest;
    - ``fft``: the same items, farthest to nearest (NFT reversed);
    - ``rt``: the same items in a seeded random order (``seed``).

    ``budget_mode`` ``crossing`` keeps crossing rounds whole, as the paper does; ``exact`` keeps
    exactly M (M/2 from each end, the first half rounded up); ``fit`` only rounds that fit."""
    p = ctx.params
    if p.budget is None:
        raise ConfigError("tma_mix needs a budget", key="arrange.budget", fix="set arrange.budget: M")
    order, rounds, stats = _tma_base(ctx, farthest=False)
    if p.budget > order.size:
        raise ConfigError(f"budget {p.budget} is larger than the pool of {order.size} items", key="arrange.budget",
                          fix="lower the budget")
    attrs = {"rounds": stats.rounds, "passes": stats.passes, "mix": p.mix, "budget_mode": p.budget_mode}
    near_o, near_r = order, rounds
    far_o, far_r = order[::-1].copy(), rounds[::-1].copy()
    if p.mix == "min":
        sel_o, sel_r = _take(near_o, near_r, p.budget, p.budget_mode)
    elif p.mix == "max":
        attrs["max_source"] = p.max_source
        if p.max_source == "farthest_pick":
            f_o, f_r, f_stats = _tma_base(ctx, farthest=True)
            attrs["farthest_rounds"] = f_stats.rounds
            sel_o, sel_r = _take(f_o, f_r, p.budget, p.budget_mode)
        else:
            sel_o, sel_r = _take(far_o, far_r, p.budget, p.budget_mode)
    else:
        half_near = (p.budget + 1) // 2 if p.budget_mode == "exact" else p.budget / 2
        half_far = p.budget // 2 if p.budget_mode == "exact" else p.budget / 2
        head = rounds_prefix(near_r, math.ceil(half_near), p.budget_mode) if half_near else 0
        tail = rounds_prefix(far_r, math.ceil(half_far), p.budget_mode) if half_far else 0
        chosen = np.zeros(order.size, dtype=bool)  # by position in the nearest order
        chosen[:head] = True
        chosen[order.size - tail:] = True  # D_train1 and D_train2 may overlap on a small pool: their union
        sel_o, sel_r = near_o[chosen], near_r[chosen]
        if p.mix == "fft":
            sel_o, sel_r = sel_o[::-1].copy(), sel_r[::-1].copy()
        elif p.mix == "rt":
            perm = np.random.default_rng(p.seed).permutation(sel_o.size)
            sel_o, sel_r = sel_o[perm], sel_r[perm]
    if not sel_o.size:
        raise ConfigError(f"budget {p.budget} keeps no whole round", key="arrange.budget",
                          fix="raise the budget or use budget_mode: exact")
    return Arrangement(sel_o.astype(np.int64), sel_r.astype(np.int32), attrs)
