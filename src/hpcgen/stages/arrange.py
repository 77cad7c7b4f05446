"""arrange: the training order of a run, from its strategy (hpcgen.arrangements).

Reads the records (hpcgen.contracts.records) and, for strategies that use distances, the
similarity node (hpcgen.similarity.h5.SimilarityNode); writes ``arrangement.h5`` (the
arrangement contract, hpcgen.contracts.arrangement, documents its layout): the order, its ids
and rounds, and where distances exist the headline SD_k at every ``sd_interval`` items (eq. 9 on
the seen sub-matrix with the ``distance`` operator, ``wsd``: Cosine-Min_k + Scaled-Cosine-Avg_k,
eq. 13; or with ``sd_measure: item_interval`` the older per-item interval mean) and the measures
of B.4 / Figure 15: cosine_{min,max,avg,centroid}, euclidean_{...} (eq. 9, from the embeddings)
and bigram_kl (eqs. 10-12), as ``measures`` lists. Strategies that need no embeddings (random,
round_robin, cluster) depend on prepare only, so they cause no embedding or similarity work
(unless ``sd_curve: always``), and then have no curves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from pydantic import Field, field_validator

from hpcgen.arrangements.strategies import NEEDS_SIMILARITY, STRATEGIES, Context
from hpcgen.arrangements.tma import DenseDistances
from hpcgen.config.schema import Resources, StageConfig
from hpcgen.contracts import arrangement as contract
from hpcgen.contracts import records as records_contract
from hpcgen.contracts import upstream_error
from hpcgen.errors import ConfigError
from hpcgen.pipeline.stage import SectionView, Stage, Task
from hpcgen.similarity.h5 import SimilarityNode, block_name
from hpcgen.similarity.kernels import HeldOut, block_distances, distance_pass, one_blas_thread, set_threads
from hpcgen.similarity.measures import (
    EMBEDDING_MEASURES,
    MEASURES,
    bigram_kl_curves,
    checkpoint_ends,
    item_interval_curve,
    submatrix_curves,
    wsd,
)
from hpcgen.similarity.xp import array_module, to_numpy

Measure = Literal["cosine_min", "cosine_max", "cosine_avg", "cosine_centroid", "euclidean_min", "euclidean_max",
                  "euclidean_avg", "euclidean_centroid", "bigram_kl"]
assert get_args(Measure) == MEASURES, "Measure spells out hpcgen.similarity.measures.MEASURES, in its order"


def _all_measures() -> list[Measure]:
    return list(get_args(Measure))


class ArrangeConfig(StageConfig):
    strategy: str = Field("random", description="one of: " + ", ".join(STRATEGIES))
    seed: int = 0
    distance: Literal["wsd", "min", "max", "avg", "centroid"] = Field(
        "wsd", description="per-item distance for nft/fft/coarse: an aggregate, or WSD (eq. 13)")
    metric: Literal["cosine", "euclidean"] = "cosine"
    wsd_weights: Literal["scaled", "fixed"] = Field(
        "scaled", description="scaled: eq. 13 (w_min 1, w_avg mean(min)/mean(avg) over the items); "
        "fixed: w_min and w_avg as given (not the paper's)")
    w_min: float = Field(1.0, description="WSD weight of min (wsd_weights: fixed)")
    w_avg: float = Field(1.0, description="WSD weight of avg (wsd_weights: fixed)")
    coarse_order: Literal["nearest", "farthest"] = "nearest"
    direction: Literal["nearest", "reverse", "farthest_rounds"] = "nearest"
    within_round: Literal["index", "distance"] = "index"
    budget: int | None = Field(None, ge=1, description="M: how many items to keep (tma, tma_mix)")
    budget_mode: Literal["crossing", "fit", "exact"] = Field(
        "crossing", description="crossing: whole rounds until M is reached, the crossing round kept (C.3); "
        "fit: whole rounds that fit in M; exact: exactly M items")
    window: tuple[int, int] | None = Field(None, description="TMA rounds [i, j) (Figure 8)")
    mix: Literal["nft", "fft", "rt", "min", "max"] = Field(
        "nft", description="tma_mix: the five settings of Appendix C.3 / Figure 17")
    max_source: Literal["rounds", "farthest_pick"] = Field(
        "rounds", description="tma_mix max: the far end of the nearest-pick rounds (the paper's text) or a "
        "separate farthest-pick TMA (the authors' select_max_data)")
    sd_curve: Literal["auto", "always"] = Field(
        "auto", description="auto: SD_k curves when the strategy uses distances anyway; always: for every strategy")
    sd_measure: Literal["submatrix", "item_interval"] = Field(
        "submatrix", description="the headline SD_k: eq. 9 on the whole seen sub-matrix (cumulative), or the "
        "mean per-item distance of the items seen since the previous checkpoint (not the paper's)")
    sd_interval: int = Field(160, ge=1, description="s of eq. 9, items between checkpoints: global batch x "
                             "save_every (160 in the paper), or a divisor of it")
    measures: list[Measure] = Field(
        default_factory=_all_measures,
        description="the measures of Appendix B.4 stored per checkpoint and unseen task (empty: none)")
    block_rows: int = Field(4096, ge=1)
    dense_rows: int = Field(32768, ge=1, description="TMA: rows left when the last rounds run in memory")
    dense_limit_mb: int = Field(1024, ge=0, description="load a stored matrix up to this size, else recompute")

    @field_validator("strategy")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; valid: {', '.join(STRATEGIES)}")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError("must be [i, j) with 0 <= i < j")
        return value


@dataclass
class EmbeddingDistances:
    """Distances recomputed from the embeddings with the similarity stage's kernel, on ``xp``:
    NumPy, or CuPy with ``train`` and ``test`` on the GPU (the GEMM and the candidate test of each
    refill pass there; what comes back to the host is only the candidates, the rounds run on the
    CPU)."""

    train: Any
    test: HeldOut
    metric: str
    normalized: bool
    xp: Any = np

    @property
    def n_train(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test.sq.shape[0])

    def _rows(self, ids: np.ndarray) -> Any:
        if len(ids) and ids[-1] - ids[0] + 1 == len(ids):  # contiguous: a view, no copy
            return self.train[int(ids[0]):int(ids[-1]) + 1]
        return self.train[ids if self.xp is np else self.xp.asarray(ids)]

    def blocks(self, rows: np.ndarray, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        xp = self.xp
        buf = xp.empty((min(block_rows, max(len(rows), 1)), self.n_test), dtype=xp.float32)
        for lo in range(0, len(rows), block_rows):
            ids = rows[lo:lo + block_rows]
            d, _ = block_distances(xp, self._rows(ids), self.test, self.metric, self.normalized, out=buf[: len(ids)],
                                   with_aggregates=False)
            yield ids, to_numpy(d)

    def scan(self, rows: np.ndarray, threshold: np.ndarray, sign: float,
             block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(row ids, columns, values) of the entries of ``sign * d`` strictly below their
        column's threshold, block by block: the distances and the test in one fused pass."""
        xp = self.xp
        buf = xp.empty((min(block_rows, max(len(rows), 1)), self.n_test), dtype=xp.float32)
        bound = xp.asarray(threshold)
        with one_blas_thread():
            for lo in range(0, len(rows), block_rows):
                ids = rows[lo:lo + block_rows]
                _, _, found = distance_pass(xp, self._rows(ids), self.test, self.metric, self.normalized,
                                            out=buf[: len(ids)], threshold=bound, sign=sign, with_aggregates=False,
                                            entries=True)
                local, cols, values = (to_numpy(a) for a in found)
                yield ids[local], cols, values if sign > 0 else -values


class Arrange(Stage):
    name = "arrange"
    section = "arrange"
    Config = ArrangeConfig
    version = 2  # eq. 13's scaled WSD, eq. 9's SD_k and the measures
    upstream = ("prepare", "similarity")
    defaults = Resources(nodes=1, tasks_per_node=1, cpus=2, gpus=0, mem=8192, time=60)

    def upstream_for(self, cfg: SectionView) -> tuple[str, ...]:
        a = cfg.arrange
        if a.strategy in NEEDS_SIMILARITY or a.sd_curve == "always":
            return ("prepare", "similarity")
        return ("prepare",)

    def run(self, task: Task) -> None:
        p: ArrangeConfig = task.config.arrange
        set_threads(task.meta.resources.threads if task.meta.resources else None)
        records = records_contract.read_records(task.input("prepare"), ["id", "task", "split", "embed_text"])
        train, test = records.train_rows, records.test_rows
        if not test.size:
            raise ConfigError("the test set is empty", key="data", fix="arrangements are relative to a test set")
        all_tasks = np.asarray(records.column("task"), dtype=object)
        ids = np.asarray(records.column("id"), dtype=object)[train]
        ctx = Context(tasks=all_tasks[train], seed=p.seed, params=p)
        sim_input = task.inputs.get("similarity", [None])[0]
        sim = SimilarityNode(sim_input) if sim_input is not None else None
        if sim is not None:
            self._attach_similarity(ctx, sim, p, len(train))
        result = STRATEGIES[p.strategy](ctx)
        out = contract.Arrangement(order=result.order, ids=list(ids[result.order]), rounds=result.rounds, attrs={
            "strategy": p.strategy, "params": json.dumps(p.model_dump(mode="json", exclude={"resources"})),
            "n_train": len(train), "n_test": len(test), "n_selected": int(result.order.size)})
        if sim is not None:
            headline, measures, task_names, extra = self._curves(
                ctx, sim, p, result.order, records.train("embed_text"), records.test("embed_text"), all_tasks[test])
            out.sd_curve = headline
            out.attrs.update(sd_distance=p.distance, sd_metric=p.metric, sd_interval=p.sd_interval,
                             sd_measure=p.sd_measure, **extra)
            if measures:
                out.measures = contract.Measures(
                    checkpoint_ends(int(result.order.size), p.sd_interval), task_names,
                    {name: overall for name, (overall, _) in measures.items()},
                    {name: per_task for name, (_, per_task) in measures.items()})
        out.attrs.update({k: v for k, v in result.attrs.items() if v is not None})
        contract.write_arrangement(task.output(contract.ARRANGEMENT), out)
        task.log.info("%s: %d of %d training items%s", p.strategy, result.order.size, len(train),
                      f", {result.attrs['rounds']} rounds" if "rounds" in result.attrs else "")

    @staticmethod
    def _curves(ctx: Context, sim: SimilarityNode, p: ArrangeConfig, order: np.ndarray, train_texts: list[str],
                test_texts: list[str], test_tasks: np.ndarray
                ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], list[str], dict[str, float]]:
        """(headline SD_k, {measure: (overall (K,), per task (K, T))}, task names, attrs)."""
        names = [str(t) if t is not None else "(all)" for t in test_tasks]
        task_names = list(dict.fromkeys(names))
        col_task = np.asarray([task_names.index(t) for t in names], dtype=np.int64)
        wanted = [m for m in MEASURES if m in p.measures]
        metrics = sorted({m.split("_")[0] for m in wanted if m in EMBEDDING_MEASURES} |
                         ({p.metric} if p.sd_measure == "submatrix" else set()))
        measures: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        extra: dict[str, float] = {}
        if metrics:
            emb = sim.embeddings()
            sub = submatrix_curves(emb.train, emb.test, col_task, order, p.sd_interval, metrics, emb.normalized,
                                   p.block_rows)
            for name in sub["overall"]:
                measures[name] = (sub["overall"][name], sub["per_task"][name])
        if "bigram_kl" in wanted:
            measures["bigram_kl"] = bigram_kl_curves(train_texts, test_texts, col_task, order, p.sd_interval)
        if p.sd_measure == "item_interval":
            item_distance = ctx.item_distance
            assert item_distance is not None  # _attach_similarity set it: there is a similarity node
            mn, av = item_distance("min"), item_distance("avg")
            d = wsd(mn, av, p.wsd_weights, p.w_min, p.w_avg)[0] if p.distance == "wsd" else \
                item_distance(p.distance).astype(np.float64)
            headline = item_interval_curve(d, order, p.sd_interval)
        elif p.distance == "wsd":  # eq. 13: Cosine-Min_k + Cosine-Avg_k scaled over the checkpoints
            mn, av = measures[f"{p.metric}_min"][0], measures[f"{p.metric}_avg"][0]
            headline, w_min, w_avg = wsd(mn, av, p.wsd_weights, p.w_min, p.w_avg)
            extra.update(sd_w_min=w_min, sd_w_avg=w_avg)
        else:
            headline = measures[f"{p.metric}_{p.distance}"][0]
        measures = {k: v for k, v in measures.items() if k in wanted}
        return headline, measures, task_names, extra

    @staticmethod
    def _attach_similarity(ctx: Context, sim: SimilarityNode, p: ArrangeConfig, n_train: int) -> None:
        metrics, n_test = sim.info.metrics, sim.info.n_test
        if sim.info.n_train != n_train:
            raise upstream_error(sim.node, block_name(0), f"covers {sim.info.n_train} training rows, the records "
                                                          f"{n_train} (made from other records)")
        if p.metric not in metrics:
            raise ConfigError(f"the similarity stage computed {metrics}, not {p.metric!r}", key="arrange.metric",
                              fix=f"add {p.metric} to similarity.metrics")
        cache: dict[str, np.ndarray] = {}

        def item_distance(agg: str) -> np.ndarray:
            if agg not in cache:
                cache[agg] = sim.aggregate(p.metric, agg)
            return cache[agg]

        def distances() -> DenseDistances | EmbeddingDistances:
            if n_train * n_test * 4 <= p.dense_limit_mb * 2**20:
                stored = sim.matrix(p.metric)
                if stored is not None:
                    return DenseDistances(stored)
            emb = sim.embeddings()
            xp = array_module("auto")  # CuPy where the task has a GPU: the refill passes' GEMM runs there
            return EmbeddingDistances(xp.asarray(emb.train), HeldOut.build(xp, emb.test), p.metric, emb.normalized,
                                      xp)

        def task_distance(groups: list[np.ndarray], attrs: dict[str, Any] | None = None) -> np.ndarray:
            emb = sim.embeddings()
            means = np.stack([emb.train[g].mean(axis=0) for g in groups]).astype(np.float32)
            agg: dict[str, np.ndarray]  # NumPy arrays: xp is np
            _, agg = block_distances(np, means, HeldOut.build(np, emb.test), p.metric, False)
            if p.distance == "wsd":  # eq. 13 over the task embeddings
                values, w_min, w_avg = wsd(agg["min"], agg["avg"], p.wsd_weights, p.w_min, p.w_avg)
                if attrs is not None:
                    attrs.update(wsd_w_min=w_min, wsd_w_avg=w_avg, wsd_weights=p.wsd_weights)
                return values
            return agg[p.distance].astype(np.float64)

        ctx.item_distance, ctx.distances, ctx.task_distance = item_distance, distances, task_distance
