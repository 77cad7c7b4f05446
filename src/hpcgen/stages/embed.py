"""embed: sentence embeddings of the prepared records, one contiguous shard per array task.

Each task encodes records [lo, hi) of records.parquet (``embed_text``; read through
hpcgen.contracts.records) with sentence-transformers and writes ``embeddings-SSSSS.h5`` (the
embeddings contract: hpcgen.similarity.h5 documents the layout and has the writer and reader).
sentence-transformers sorts each call's texts by length before batching, so batches hold texts of
similar length; on a GPU the model runs in fp16 (``dtype_on_gpu``). Rows are checked: a NaN or
zero-norm embedding is an error naming the record ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypedDict

import numpy as np
from pydantic import Field

from hpcgen.config.schema import ModelRef, Resources, StageConfig
from hpcgen.contracts import records as records_contract
from hpcgen.errors import ConfigError, DataError  # DataError lived here; still importable from here
from hpcgen.pipeline.stage import SectionView, Stage, Task
from hpcgen.similarity.h5 import bounds, shard_name, write_shard
from hpcgen.similarity.model import DEFAULT_MODEL, resolve_model, revision_of, weights_sha256


class EmbedConfig(StageConfig):
    model: ModelRef = Field(DEFAULT_MODEL, description="sentence-transformers name or directory")
    shards: int | None = Field(None, ge=1, description="array tasks (default: from shard_size, else 1)")
    shard_size: int | None = Field(None, ge=1, description="target records per shard")
    batch_size: int = Field(64, ge=1)
    max_seq_length: int | None = Field(None, ge=1, description="default: the model's own")
    normalize: bool = Field(True, description="store unit-length rows")
    dtype: Literal["float32", "float16"] = Field("float32", description="stored precision")
    dtype_on_gpu: Literal["float16", "float32"] = "float16"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ModelAttrs(TypedDict):
    """What ``encode`` says of the model that made the embeddings (attributes of every shard)."""

    model: str
    model_source: str
    weights_sha256: str
    revision: str
    dim: int
    max_seq_length: int
    device: str


def check_rows(emb: np.ndarray, ids: list[str], where: str) -> np.ndarray:
    """Norms of the rows; NaN or zero-norm rows are an error that names their record ids."""
    norms: np.ndarray = np.linalg.norm(emb.astype(np.float64), axis=1)
    bad = np.nonzero(~np.isfinite(norms) | (norms == 0))[0]
    if bad.size:
        named = ", ".join(repr(ids[i]) for i in bad[:5]) + (f" and {bad.size - 5} more" if bad.size > 5 else "")
        raise DataError(f"{bad.size} record(s) have a NaN or zero-norm embedding: {named}", key=where,
                        fix="check their embed_text (empty or odd text) or the model")
    return norms


#: texts per ``encode`` call: sentence-transformers sorts each call's texts by length, and between
#: calls the task reports its progress
PROGRESS_CHUNK = 8192


def encode(texts: list[str], cfg: EmbedConfig, threads: int | None = None,
           progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, ModelAttrs]:
    """Embeddings (float32, not normalized) of ``texts`` and the attributes naming the model;
    ``progress(done, total)`` after every ``PROGRESS_CHUNK`` texts."""
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    source = resolve_model(cfg.model)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = SentenceTransformer(source, device=device)
    except OSError as exc:
        raise ConfigError(f"cannot load model {cfg.model!r} ({str(exc).splitlines()[0]})", key="embed.model",
                          fix="give a local model directory, or run where the hub is reachable") from None
    if device == "cuda" and cfg.dtype_on_gpu == "float16":
        model = model.half()
    if cfg.max_seq_length:
        model.max_seq_length = cfg.max_seq_length
    parts = []
    for lo in range(0, len(texts), PROGRESS_CHUNK):
        parts.append(model.encode(texts[lo:lo + PROGRESS_CHUNK], batch_size=cfg.batch_size, convert_to_numpy=True,
                                  normalize_embeddings=False, show_progress_bar=False))
        if progress is not None:
            progress(min(lo + PROGRESS_CHUNK, len(texts)), len(texts))
    emb = np.concatenate(parts) if parts else None
    dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim, max_seq_length = dim_of(), model.max_seq_length
    assert dim is not None and max_seq_length is not None, "a sentence-transformers model has both"
    attrs: ModelAttrs = {"model": cfg.model, "model_source": source, "weights_sha256": weights_sha256(source),
                         "revision": revision_of(source), "dim": int(dim),
                         "max_seq_length": int(max_seq_length), "device": device}
    if emb is None:
        emb = np.zeros((0, attrs["dim"]), dtype=np.float32)
    return np.asarray(emb, dtype=np.float32), attrs


class Embed(Stage):
    name = "embed"
    section = "embed"
    Config = EmbedConfig
    upstream = ("prepare",)
    defaults = Resources(nodes=1, tasks_per_node=1, cpus=2, gpus=0, mem=8192, time=120)

    def check(self, cfg: SectionView) -> None:
        resolve_model(cfg.embed.model)

    def plan(self, cfg: SectionView, upstream: dict[str, list[Any]] | None = None) -> int:
        if cfg.embed.shards:
            return cfg.embed.shards
        if cfg.embed.shard_size:
            records: list[int | None] = [n.estimate.records for n in (upstream or {}).get("prepare", [])]
            if not records or records[0] is None:
                raise ConfigError("embed.shard_size needs a record count the prepare stage cannot estimate "
                                  "for these sources", key="embed.shard_size", fix="set embed.shards instead")
            return max(1, math.ceil(records[0] / cfg.embed.shard_size))
        return 1

    def run(self, task: Task) -> None:
        cfg: EmbedConfig = task.config.embed
        prepared = task.input("prepare")
        records = records_contract.read_records(prepared, ["id", "split", "embed_text"])
        n = len(records)
        lo, hi = bounds(n, task.size, task.index)
        ids = records.column("id")[lo:hi]
        texts = records.column("embed_text")[lo:hi]
        splits = records.column("split")[lo:hi]
        threads = task.meta.resources.threads if task.meta.resources else None
        emb, attrs = encode(texts, cfg, threads, lambda done, total: task.progress(done, total, "texts"))
        norms = check_rows(emb, ids, "embed")
        if cfg.normalize and len(emb):
            emb /= norms[:, None].astype(np.float32)
        summary = records_contract.read_summary(prepared)
        write_shard(task.output(shard_name(task.index)), emb.astype(cfg.dtype), ids, splits, lo, hi,
                    {**attrs, "normalized": bool(cfg.normalize), "dtype": cfg.dtype,
                     "template": summary.embed_template, "shard": task.index, "shards": task.size,
                     "records_total": n})
        task.log.info("embedded records [%d, %d) of %d with %s (dim %d)", lo, hi, n, cfg.model, attrs["dim"])
