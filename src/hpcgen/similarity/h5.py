"""HDF5 files of the embed and similarity stages: writers, readers and the documented layout.

The embeddings contract (embed stage: ``write_shard``; read by ``EmbeddingSet``) and the
distances contract (similarity stage: ``create_matrix``, ``write_block_results``,
``write_block_attrs`` and the virtual joins; read by ``SimilarityNode``, ``merge_topk`` and
``read_aggregate``). Missing or foreign files are an UpstreamError naming the node and file.

Embed shard ``embeddings-SSSSS.h5`` (one per array task, a contiguous range of records):
    /embeddings   float32|float16 (n, dim)   one row per record, in records.parquet order
    /ids          utf-8 strings (n)          record ids
    /split        utf-8 strings (n)          "train" or "test"
    /rows         int64 (n)                  global record index (row in records.parquet)
    attributes: model, model_source, weights_sha256, revision, dim, normalized, template, dtype,
                shard, shards, row_start, row_end, records_total, hpcgen_version

Similarity block ``similarity-BBBBB.h5`` (one per array task, a contiguous range of training rows):
    /cosine, /euclidean           float32|float16 (n, n_test)  distances (stored when asked), chunked
                                                                by row blocks, uncompressed
    /aggregates/<metric>/<agg>    float32 (n)      agg in min, max, avg, centroid (eq. 9)
    /topk/<metric>/index          int64 (k, n_test)  this block's k nearest training rows per test
    /topk/<metric>/distance       float32 (k, n_test) column, by (distance, row); see merge_topk
    /train_rows                   int64 (n)        global training row index (0 = first train record)
    attributes: metrics, row_start, row_end, n_train, n_test, dim, dtype, backend, block, blocks, k,
                model, hpcgen_version
Task 0 of the similarity stage also writes ``distances.h5`` and ``embeddings.h5``: virtual datasets
that join the blocks and the embedding shards without copying (paths relative to the node):
    distances.h5   /cosine, /euclidean   (n_train, n_test), the stored metrics (with store_matrix only)
                   attributes: metrics, n_train, n_test, blocks, hpcgen_version
    embeddings.h5  /train (n_train, dim), /test (n_test, dim)   the shards' dtype
                   attributes: the shards' (model, dim, normalized, ...) less shard, row_start,
                   row_end; hpcgen_version
"""

from __future__ import annotations

import bisect
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpcgen.contracts import Node, node_dir, require, upstream_error
from hpcgen.version import __version__

STR = h5py.string_dtype("utf-8")


def shard_name(i: int) -> str:
    return f"embeddings-{i:05d}.h5"


def block_name(i: int) -> str:
    return f"similarity-{i:05d}.h5"


#: the virtual joins task 0 of the similarity stage writes
DISTANCES = "distances.h5"
JOINED_EMBEDDINGS = "embeddings.h5"


def bounds(n: int, parts: int, i: int) -> tuple[int, int]:
    """Rows [lo, hi) of part i when n rows are cut into ``parts`` contiguous, near-equal parts."""
    return i * n // parts, (i + 1) * n // parts


@dataclass
class Shard:
    path: Path
    lo: int
    hi: int


def write_shard(path: Path, emb: np.ndarray, ids: list[str], splits: list[str], lo: int, hi: int,
                attrs: dict) -> None:
    """Embed shard ``path``: rows [lo, hi) of the records (``emb`` already in the stored dtype);
    ``attrs`` the documented attributes but for row_start, row_end and hpcgen_version."""
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=emb, chunks=(max(1, min(len(emb), 4096)), emb.shape[1]) if len(emb)
                         else None)
        f.create_dataset("ids", data=ids, dtype=STR)
        f.create_dataset("split", data=splits, dtype=STR)
        f.create_dataset("rows", data=np.arange(lo, hi, dtype=np.int64))
        f.attrs.update({**attrs, "row_start": lo, "row_end": hi, "hpcgen_version": __version__})


class EmbeddingSet:
    """The embedding shards of one embed node, joined by an index of row ranges (no copy).

    ``node``: the embed node (``task.input("embed")``) or its directory; ``shards``: how many
    (default: the node's array size)."""

    def __init__(self, node: Node, shards: int | None = None) -> None:
        shards = node.size if shards is None else shards
        self.shards: list[Shard] = []
        attrs = None
        for i in range(shards):
            name = shard_name(i)
            path = require(node, name)
            try:
                with h5py.File(path, "r") as f:
                    a = dict(f.attrs)
                    found = "embeddings" in f
            except OSError as exc:
                raise upstream_error(node, name, f"cannot be read as HDF5 ({exc})") from None
            if not found or "row_start" not in a:
                raise upstream_error(node, name, "is not an hpcgen embedding shard")
            if attrs is not None and (a["dim"] != attrs["dim"] or a["model"] != attrs["model"]):
                raise upstream_error(node, name, f"has dim {a['dim']} of model {a['model']!r}, but shard 0 "
                                                 f"has dim {attrs['dim']} of {attrs['model']!r}")
            attrs = attrs or a
            self.shards.append(Shard(path, int(a["row_start"]), int(a["row_end"])))
        if not self.shards or attrs is None:
            raise upstream_error(node, shard_name(0), "no embedding shards")
        self.attrs = attrs
        self.dim = int(attrs["dim"])
        self.n = self.shards[-1].hi
        self.normalized = bool(attrs["normalized"])
        splits = [self._read("split", s) for s in self.shards]
        self.split = np.concatenate([np.asarray(x, dtype=object) for x in splits]) if splits else np.array([])
        self.n_train = int((self.split == "train").sum())
        if not (self.split[: self.n_train] == "train").all():
            raise upstream_error(node, shard_name(0), "training records are not first in the embeddings")

    @staticmethod
    def _read(name: str, shard: Shard):
        with h5py.File(shard.path, "r") as f:
            data = f[name][:]
        return [x.decode() if isinstance(x, bytes) else x for x in data] if name in ("ids", "split") else data

    def ids(self) -> np.ndarray:
        return np.concatenate([np.asarray(self._read("ids", s), dtype=object) for s in self.shards])

    def rows(self, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
        """Embeddings of global rows [lo, hi) as float32, read from the shards that hold them."""
        out = np.empty((hi - lo, self.dim), dtype=np.float32) if out is None else out[: hi - lo]
        for s in self.shards:
            a, b = max(lo, s.lo), min(hi, s.hi)
            if a < b:
                with h5py.File(s.path, "r") as f:
                    dset = f["embeddings"]
                    if dset.dtype == np.float32:  # straight into the buffer, no intermediate copy
                        dset.read_direct(out, np.s_[a - s.lo:b - s.lo], np.s_[a - lo:b - lo])
                    else:
                        out[a - lo:b - lo] = dset[a - s.lo:b - s.lo]
        return out

    def train(self, lo: int, hi: int) -> np.ndarray:
        return self.rows(lo, hi)

    def _mapped_chunks(self, shard: Shard) -> list[tuple[int, int, np.ndarray]] | None:
        """(first row, end row, zero-copy view) of every stored chunk of a shard's embeddings, or
        None where they cannot be mapped (not float32, filtered, or not in the file yet)."""
        with h5py.File(shard.path, "r") as f:
            dset = f["embeddings"]
            if dset.dtype != np.dtype("<f4") or dset.compression or dset.shape[0] == 0:
                return None
            n, dim = dset.shape
            if dset.chunks is None:
                offset = dset.id.get_offset()
                spans = [] if offset is None else [(0, n, offset)]
            else:
                spans = []
                for i in range(dset.id.get_num_chunks()):
                    info = dset.id.get_chunk_info(i)
                    if info.filter_mask or info.byte_offset is None or info.size != dset.chunks[0] * dim * 4:
                        return None
                    start = info.chunk_offset[0]
                    spans.append((start, min(n, start + dset.chunks[0]), info.byte_offset))
            if sum(b - a for a, b, _ in spans) != n:
                return None
        whole = np.memmap(shard.path, dtype=np.uint8, mode="r")
        return [(shard.lo + a, shard.lo + b, whole[off:off + (b - a) * dim * 4].view("<f4").reshape(b - a, dim))
                for a, b, off in sorted(spans)]

    def mapped(self, lo: int, hi: int) -> np.ndarray | None:
        """Global rows [lo, hi) from the shard files' pages: a read-only view (no copy) where they
        lie in one stored chunk, else the pieces joined (one copy, no HDF5 call); None where a
        shard cannot be mapped (not uncompressed float32)."""
        if not hasattr(self, "_chunks"):
            maps = [self._mapped_chunks(s) for s in self.shards if s.hi > s.lo]
            self._chunks = None if any(c is None for c in maps) else [c for m in maps for c in m or ()]
            self._starts = [a for a, _, _ in self._chunks or ()]
        if self._chunks is None:
            return None
        pieces = []
        for a, b, view in self._chunks[max(0, bisect.bisect_right(self._starts, lo) - 1):]:
            if a >= hi:
                break
            if lo < b:
                pieces.append(view[max(lo, a) - a:min(hi, b) - a])
        if sum(len(p) for p in pieces) != hi - lo:
            return None
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def train_chunks(self, lo: int, hi: int, chunk: int, slab: int = 32768):
        """(first row, embeddings) of training rows [lo, hi) in chunks. Uncompressed float32
        shards (the embed stage's own) are read from the file's pages: a chunk inside one stored
        chunk is a view (no copy), one across two is joined from their views. Otherwise slabs of
        rows are read on a thread one slab ahead, so reading overlaps the computation on the
        previous slab."""
        first = self.mapped(lo, min(hi, lo + chunk)) if hi > lo else None
        if first is not None:
            yield lo, first
            for c in range(lo + chunk, hi, chunk):
                rows = self.mapped(c, min(hi, c + chunk))
                assert rows is not None  # every shard maps once the first chunk did
                yield c, rows
            return
        slab = max(slab, chunk)
        starts = list(range(lo, hi, slab))
        if not starts:
            return
        # two slab buffers, reused: fresh allocations would page-fault on every slab
        buffers = [np.empty((min(slab, hi - lo), self.dim), dtype=np.float32) for _ in range(min(2, len(starts)))]
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(self.rows, starts[0], min(hi, starts[0] + slab), buffers[0])
            for i, s_lo in enumerate(starts):
                s_hi = min(hi, s_lo + slab)
                block = ahead.result()
                if i + 1 < len(starts):
                    nxt = starts[i + 1]
                    ahead = pool.submit(self.rows, nxt, min(hi, nxt + slab), buffers[(i + 1) % len(buffers)])
                for c_lo in range(s_lo, s_hi, chunk):
                    yield c_lo, block[c_lo - s_lo:min(s_hi, c_lo + chunk) - s_lo]

    def test(self) -> np.ndarray:
        return self.rows(self.n_train, self.n)

    @property
    def n_test(self) -> int:
        return self.n - self.n_train


def write_virtual_embeddings(target: Path, emb: EmbeddingSet) -> None:
    """``/train`` and ``/test`` virtual datasets over the shards (paths relative to ``target``)."""
    with h5py.File(emb.shards[0].path, "r") as f:
        dtype = f["embeddings"].dtype
    layouts = {"train": h5py.VirtualLayout((emb.n_train, emb.dim), dtype=dtype),
               "test": h5py.VirtualLayout((emb.n_test, emb.dim), dtype=dtype)}
    for s in emb.shards:
        src = h5py.VirtualSource(os.path.relpath(s.path, target.parent), "embeddings", shape=(s.hi - s.lo, emb.dim))
        for name, start, stop in (("train", 0, emb.n_train), ("test", emb.n_train, emb.n)):
            a, b = max(s.lo, start), min(s.hi, stop)
            if a < b:
                layouts[name][a - start:b - start] = src[a - s.lo:b - s.lo]
    with h5py.File(target, "w", libver="latest") as f:
        for name, layout in layouts.items():
            f.create_virtual_dataset(name, layout, fillvalue=np.nan)
        f.attrs.update({k: v for k, v in emb.attrs.items() if k not in ("shard", "row_start", "row_end")})
        f.attrs["hpcgen_version"] = __version__


def write_virtual_distances(target: Path, block_files: list[str], block_rows: list[tuple[int, int]],
                            n_train: int, n_test: int, metrics: list[str], dtype) -> None:
    """``/<metric>`` (n_train, n_test) virtual datasets over the block files (which may not exist yet)."""
    with h5py.File(target, "w", libver="latest") as f:
        for metric in metrics:
            layout = h5py.VirtualLayout((n_train, n_test), dtype=dtype)
            for name, (lo, hi) in zip(block_files, block_rows):
                if hi > lo:
                    layout[lo:hi] = h5py.VirtualSource(name, metric, shape=(hi - lo, n_test))
            f.create_virtual_dataset(metric, layout, fillvalue=np.nan)
        f.attrs.update({"metrics": metrics, "n_train": n_train, "n_test": n_test, "blocks": len(block_files),
                        "hpcgen_version": __version__})


# --------------------------------------------------------------------------------------------
# Similarity blocks: written by the similarity stage, one per array task


def create_matrix(f: h5py.File, metric: str, n: int, n_test: int, dtype: str, chunk_rows: int) -> h5py.Dataset:
    """The block's ``/<metric>`` (n, n_test) dataset, chunked by ``chunk_rows`` rows, for the
    caller to fill."""
    return f.create_dataset(metric, shape=(n, n_test), dtype=dtype, chunks=(chunk_rows, n_test) if n else None)


def write_block_results(f: h5py.File, metric: str, aggregates: dict[str, np.ndarray], index: np.ndarray,
                        distance: np.ndarray) -> None:
    """A block's per-row aggregates and top-K (index, distance: (k, n_test)) of one metric."""
    for name, values in aggregates.items():
        f.create_dataset(f"aggregates/{metric}/{name}", data=values)
    f.create_dataset(f"topk/{metric}/index", data=index)
    f.create_dataset(f"topk/{metric}/distance", data=distance)


def write_block_rows(f: h5py.File, lo: int, hi: int) -> None:
    """``/train_rows``: the block's global training rows [lo, hi)."""
    f.create_dataset("train_rows", data=np.arange(lo, hi, dtype=np.int64))


@dataclass(frozen=True)
class BlockInfo:
    """The attributes of a similarity block (every block of a node agrees on metrics, n_train,
    n_test, dim, dtype, blocks and model)."""

    metrics: list[str]
    row_start: int
    row_end: int
    n_train: int
    n_test: int
    dim: int
    dtype: str
    backend: str
    block: int
    blocks: int
    k: int
    model: str


def write_block_attrs(f: h5py.File, info: BlockInfo) -> None:
    f.attrs.update({**{name: getattr(info, name) for name in BlockInfo.__dataclass_fields__},
                    "metrics": list(info.metrics), "hpcgen_version": __version__})


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_block_info(node: Node, i: int = 0) -> BlockInfo:
    name = block_name(i)
    path = require(node, name)
    try:
        with h5py.File(path, "r") as f:
            a = dict(f.attrs)
    except OSError as exc:
        raise upstream_error(node, name, f"cannot be read as HDF5 ({exc})") from None
    missing = [k for k in BlockInfo.__dataclass_fields__ if k not in a]
    if missing:
        raise upstream_error(node, name, f"is not an hpcgen similarity block (no attribute {missing[0]!r})")
    ints = ("row_start", "row_end", "n_train", "n_test", "dim", "block", "blocks", "k")
    return BlockInfo(metrics=[_text(m) for m in a["metrics"]], dtype=_text(a["dtype"]), backend=_text(a["backend"]),
                     model=_text(a["model"]), **{k: int(a[k]) for k in ints})


def _read_blocks(node: Node, blocks: int, *datasets: str) -> list[list[np.ndarray]]:
    """``datasets`` of every block, in block order: one list per dataset."""
    out: list[list[np.ndarray]] = [[] for _ in datasets]
    for i in range(blocks):
        name = block_name(i)
        with h5py.File(require(node, name), "r") as f:
            for j, dataset in enumerate(datasets):
                if dataset not in f:
                    raise upstream_error(node, name, f"has no dataset /{dataset}")
                out[j].append(f[dataset][:])
    return out


def merge_topk(node: Node, blocks: int, metric: str = "cosine",
               k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The K nearest training rows of every test item over all blocks: (index, distance), (k, n_test),
    ordered by (distance, row index)."""
    dists, idx = _read_blocks(node, blocks, f"topk/{metric}/distance", f"topk/{metric}/index")
    d = np.concatenate(dists)
    ix = np.concatenate(idx)
    from hpcgen.similarity.kernels import column_order

    order = column_order(np, d, ix)
    k = k or dists[0].shape[0]
    return np.take_along_axis(ix, order, 0)[:k], np.take_along_axis(d, order, 0)[:k]


def read_aggregate(node: Node, blocks: int, metric: str, agg: str) -> np.ndarray:
    """Per-training-row aggregate over all blocks, in training row order."""
    [parts] = _read_blocks(node, blocks, f"aggregates/{metric}/{agg}")
    return np.concatenate(parts)


@dataclass(frozen=True)
class JoinedEmbeddings:
    """embeddings.h5 of a similarity node, read into memory as float32."""

    train: np.ndarray  # (n_train, dim)
    test: np.ndarray  # (n_test, dim)
    normalized: bool


class SimilarityNode:
    """What later stages read of one similarity node (``task.input("similarity")``): block 0's
    attributes (``info``), the aggregates and top-K over all blocks, the joined embeddings and,
    where it was stored, the whole matrix of a metric."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.dir = node_dir(node)
        self.blocks = int(node.size)
        self.info = read_block_info(node, 0)

    def aggregate(self, metric: str, agg: str) -> np.ndarray:
        return read_aggregate(self.node, self.blocks, metric, agg)

    def topk(self, metric: str = "cosine", k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return merge_topk(self.node, self.blocks, metric, k)

    def embeddings(self) -> JoinedEmbeddings:
        path = require(self.node, JOINED_EMBEDDINGS)
        with h5py.File(path, "r") as f:
            if "train" not in f or "test" not in f:
                raise upstream_error(self.node, JOINED_EMBEDDINGS, "has no /train and /test")
            return JoinedEmbeddings(np.asarray(f["train"][:], dtype=np.float32),
                                    np.asarray(f["test"][:], dtype=np.float32), bool(f.attrs.get("normalized", True)))

    def matrix(self, metric: str) -> np.ndarray | None:
        """The stored (n_train, n_test) distances of ``metric`` as float32; None where the node
        stored none (``store_matrix: false``) or not this metric."""
        stored = self.dir / DISTANCES
        if not stored.is_file():
            return None
        with h5py.File(stored, "r") as f:
            return np.asarray(f[metric][:], dtype=np.float32) if metric in f else None
