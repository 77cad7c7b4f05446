"""EmbeddingSet's reads from the shard files' pages against its plain HDF5 reads."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcgen.similarity.h5 import EmbeddingSet, shard_name, write_shard


def shards(folder, sizes, dtype="float32", chunk_rows=None):
    """Embed shards of ``sizes`` rows (all training rows but the last 3), written by the stage's writer."""
    rng = np.random.default_rng(0)
    total, lo = sum(sizes), 0
    rows = rng.normal(size=(total, 6)).astype(dtype)
    splits = ["train"] * (total - 3) + ["test"] * 3
    for i, size in enumerate(sizes):
        hi = lo + size
        write_shard(folder / shard_name(i), rows[lo:hi], [str(j) for j in range(lo, hi)], splits[lo:hi], lo, hi,
                    {"dim": 6, "model": "m", "normalized": False})
        if chunk_rows:  # rewrite with smaller stored chunks, so a range can straddle them
            with h5py.File(folder / shard_name(i), "a") as f:
                del f["embeddings"]
                f.create_dataset("embeddings", data=rows[lo:hi], chunks=(chunk_rows, 6))
        lo = hi
    return rows


@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_mapped_rows_equal_hdf5_reads_inside_and_across_chunks_and_shards(tmp_path, chunk_rows):
    rows = shards(tmp_path, [40, 25, 38], chunk_rows=chunk_rows)
    emb = EmbeddingSet(tmp_path, 3)
    for lo, hi in [(0, 5), (3, 40), (30, 70), (0, emb.n_train), (64, 66), (10, 11)]:
        got = emb.mapped(lo, hi)
        assert got is not None and np.array_equal(got, rows[lo:hi]) and np.array_equal(got, emb.rows(lo, hi))
    chunks = list(emb.train_chunks(0, emb.n_train, 9))
    assert [c for c, _ in chunks] == list(range(0, emb.n_train, 9))
    assert np.array_equal(np.concatenate([x for _, x in chunks]), rows[: emb.n_train])
    view = emb.mapped(0, 5)
    assert view is not None and not view.flags.writeable  # the file's pages, read-only


def test_float16_shards_are_read_through_hdf5(tmp_path):
    rows = shards(tmp_path, [20, 20], dtype="float16")
    emb = EmbeddingSet(tmp_path, 2)
    assert emb.mapped(0, 10) is None
    got = np.concatenate([x for _, x in emb.train_chunks(0, emb.n_train, 8)])
    assert got.dtype == np.float32 and np.array_equal(got, rows[: emb.n_train].astype(np.float32))
