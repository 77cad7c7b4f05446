"""similarity: distances from training rows to the test set, one block of training rows per task.

For its rows [lo, hi) of the training set, a task computes in chunks of ``chunk_rows`` (memory is
O(chunk_rows x n_test), whatever the number of rows): the distance block for each metric
(stored unless ``store_matrix: false``), the per-row aggregates min / max / avg / centroid, and
each test column's K nearest rows of this block. One code path on NumPy or CuPy (``backend``).
Its files (``similarity-BBBBB.h5``, and from task 0 the joins ``distances.h5`` and
``embeddings.h5``) are the distances contract of hpcgen.similarity.h5, which documents them.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Literal

import h5py
import numpy as np
from pydantic import Field

from hpcgen.config.schema import Resources, StageConfig
from hpcgen.errors import ConfigError
from hpcgen.pipeline.stage import SectionView, Stage, Task
from hpcgen.similarity import h5
from hpcgen.similarity.h5 import EmbeddingSet, block_name, bounds
from hpcgen.similarity.kernels import AGGREGATES, HeldOut, TopK, distance_pass, one_blas_thread, set_threads
from hpcgen.similarity.xp import array_module, to_numpy


class SimilarityConfig(StageConfig):
    metrics: list[Literal["cosine", "euclidean"]] = Field(["cosine"], min_length=1)
    dtype: Literal["float32", "float16"] = Field("float32", description="stored precision of the matrices")
    tasks: int | None = Field(None, ge=1, description="array tasks (default: from block_rows, else 1)")
    block_rows: int | None = Field(None, ge=1, description="target training rows per array task")
    chunk_rows: int = Field(2048, ge=1, description="rows per step inside a task (bounds memory)")
    topk: int = Field(32, ge=1, description="nearest training rows kept per test item")
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    store_matrix: bool = True


def compute_block(emb: EmbeddingSet, f: h5py.File, lo: int, hi: int, cfg: SimilarityConfig,
                  xp: ModuleType) -> None:
    """Distances, aggregates and top-K of training rows [lo, hi) into the open file ``f``."""
    n, m = hi - lo, emb.n_test
    test = HeldOut.build(xp, emb.test(), emb.normalized)
    # HDF5 chunks of about 2 MiB whose row count divides the compute chunk: every write then
    # covers whole chunks, which HDF5 writes straight through (no read-modify-write in its cache)
    h5_rows = max(1, min(cfg.chunk_rows, n or 1, (2 << 20) // (4 * m)))
    chunk = max(h5_rows, (min(cfg.chunk_rows, max(n, 1)) // h5_rows) * h5_rows)
    if not cfg.store_matrix:  # nothing written by rows: the compute chunk as asked
        chunk = max(1, min(cfg.chunk_rows, n or 1))
    dsets: dict[str, h5py.Dataset] = {}
    if cfg.store_matrix:
        for metric in cfg.metrics:
            dsets[metric] = h5.create_matrix(f, metric, n, m, cfg.dtype, h5_rows)
    aggs: dict[str, dict[str, np.ndarray]] = {metric: {a: np.empty(n, dtype=np.float32) for a in AGGREGATES}
                                             for metric in cfg.metrics}
    tops: dict[str, TopK] = {metric: TopK(xp, min(cfg.topk, max(n, 1)), m) for metric in cfg.metrics}
    with one_blas_thread():
        _compute_chunks(emb, lo, hi, chunk, cfg, xp, test, aggs, tops, dsets)
    for metric in cfg.metrics:
        index, dist = tops[metric].result()
        h5.write_block_results(f, metric, aggs[metric], to_numpy(index), to_numpy(dist))
    h5.write_block_rows(f, lo, hi)


def _compute_chunks(emb: EmbeddingSet, lo: int, hi: int, chunk: int, cfg: SimilarityConfig, xp: ModuleType,
                    test: HeldOut, aggs: dict[str, dict[str, np.ndarray]], tops: dict[str, TopK],
                    dsets: dict[str, h5py.Dataset]) -> None:
    m = emb.n_test
    # one reused distance buffer: fresh allocations would page-fault on every block. Writes are
    # synchronous: h5py holds the GIL while writing, so a writer thread only adds contention.
    buffer = xp.empty((chunk, m), dtype=xp.float32) if hi > lo else None
    for c_lo, rows in emb.train_chunks(lo, hi, chunk):
        c_hi = c_lo + len(rows)
        assert buffer is not None  # there are rows to compute only when n > 0
        for metric in cfg.metrics:
            d, agg, flat = distance_pass(xp, rows, test, metric, emb.normalized, out=buffer[: c_hi - c_lo],
                                         threshold=tops[metric].threshold())
            for name, values in agg.items():
                aggs[metric][name][c_lo - lo:c_hi - lo] = to_numpy(values)
            tops[metric].update(d, c_lo, flat)
            if cfg.store_matrix:
                block = to_numpy(d)
                dsets[metric][c_lo - lo:c_hi - lo] = block if cfg.dtype == "float32" else block.astype(cfg.dtype)


class Similarity(Stage):
    name = "similarity"
    section = "similarity"
    Config = SimilarityConfig
    upstream = ("embed",)
    defaults = Resources(nodes=1, tasks_per_node=1, cpus=2, gpus=0, mem=16384, time=120)

    def gpu_libraries(self, cfg: SectionView) -> tuple[str, ...]:
        return () if cfg.similarity.backend == "numpy" else ("cupy",)

    def plan(self, cfg: SectionView, upstream: dict[str, list[Any]] | None = None) -> int:
        sim = cfg.similarity
        if sim.tasks:
            return sim.tasks
        if sim.block_rows:
            records: list[int | None] = [n.estimate.records for n in (upstream or {}).get("embed", [])]
            if not records or records[0] is None:
                raise ConfigError("similarity.block_rows needs a record count that cannot be estimated for "
                                  "these sources", key="similarity.block_rows", fix="set similarity.tasks instead")
            return max(1, math.ceil(records[0] / sim.block_rows))
        return 1

    def run(self, task: Task) -> None:
        cfg: SimilarityConfig = task.config.similarity
        set_threads(task.meta.resources.threads if task.meta.resources else None)
        emb = EmbeddingSet(task.input("embed"))
        if emb.n_train == 0 or emb.n_test == 0:
            raise ConfigError(f"the embeddings hold {emb.n_train} training and {emb.n_test} test rows", key="data",
                              fix="both splits must be non-empty")
        xp = array_module(cfg.backend)
        lo, hi = bounds(emb.n_train, task.size, task.index)
        with h5py.File(task.output(block_name(task.index)), "w") as f:
            compute_block(emb, f, lo, hi, cfg, xp)
            h5.write_block_attrs(f, h5.BlockInfo(
                metrics=list(cfg.metrics), row_start=lo, row_end=hi, n_train=emb.n_train, n_test=emb.n_test,
                dim=emb.dim, dtype=cfg.dtype, backend=xp.__name__, block=task.index, blocks=task.size,
                k=min(cfg.topk, max(hi - lo, 1)), model=str(emb.attrs.get("model", ""))))
        if task.index == 0:  # the joined views, for people and later stages
            h5.write_virtual_embeddings(task.output(h5.JOINED_EMBEDDINGS), emb)
            if cfg.store_matrix:
                h5.write_virtual_distances(task.output(h5.DISTANCES), [block_name(i) for i in range(task.size)],
                                           [bounds(emb.n_train, task.size, i) for i in range(task.size)],
                                           emb.n_train, emb.n_test, list(cfg.metrics), np.dtype(cfg.dtype))
        task.log.info("block %d/%d: training rows [%d, %d) x %d test rows on %s", task.index + 1, task.size,
                      lo, hi, emb.n_test, xp.__name__)
