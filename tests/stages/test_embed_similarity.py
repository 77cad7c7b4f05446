"""embed and similarity end to end on the real model and real data (a small NIV2 sample)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from hpcgen.cli import main
from hpcgen.errors import ConfigError, UpstreamError
from hpcgen.similarity.h5 import EmbeddingSet, merge_topk, read_aggregate
from hpcgen.stages.embed import EmbedConfig, check_rows, encode
from tests.conftest import ROOT

SMALL = f"""
name: sim
output_dir: out
cluster: {{executor: debug}}
data:
  sources: [{{format: niv2, path: {ROOT / "examples" / "data" / "niv2-sample"}}}]
  max_per_train_task: 2
  max_per_test_task: 2
embed: {{shards: 3, batch_size: 32, max_seq_length: 128}}
similarity: {{tasks: 2, chunk_rows: 50, topk: 5, metrics: [cosine, euclidean]}}
arrange: {{strategy: nft}}
"""


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    (tmp / "exp.yaml").write_text(SMALL)
    assert main(["submit", str(tmp / "exp.yaml"), "--until", "similarity"]) == 0
    store = tmp / "out" / "store"
    [embed_dir] = list((store / "embed").iterdir())
    [sim_dir] = list((store / "similarity").iterdir())
    [prep_dir] = list((store / "prepare").iterdir())
    return tmp, prep_dir, embed_dir, sim_dir


def test_real_model_puts_a_paraphrase_nearest():
    texts = ["A man is playing a guitar on stage.", "Someone performs music with a guitar in front of a crowd.",
             "The stock market fell sharply on Monday.", "Bake the bread at 200 degrees for forty minutes."]
    emb, attrs = encode(texts, EmbedConfig())
    assert emb.shape == (4, 384) and attrs["dim"] == 384 and len(attrs["weights_sha256"]) == 64
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.5 and sims[0, 1] > sims[0, 2] + 0.3 and sims[0, 1] > sims[0, 3] + 0.3


def test_nan_or_zero_rows_name_their_records():
    emb = np.ones((4, 3), dtype=np.float32)
    emb[1] = 0
    emb[3, 0] = np.nan
    with pytest.raises(ConfigError, match=r"2 record\(s\) have a NaN or zero-norm embedding: 'b', 'd'"):
        check_rows(emb, ["a", "b", "c", "d"], "embed")


def test_shards_join_and_carry_their_provenance(computed):
    _, prep_dir, embed_dir, sim_dir = computed
    records = pq.read_table(prep_dir / "records.parquet").to_pylist()
    emb = EmbeddingSet(embed_dir, 3)
    assert emb.n == len(records) == 220 and emb.n_train == 180 and emb.dim == 384
    assert list(emb.ids()) == [r["id"] for r in records]
    with h5py.File(embed_dir / "embeddings-00001.h5") as f:
        assert f.attrs["model"] == "sentence-transformers/all-MiniLM-L6-v2" and f.attrs["normalized"]
        assert f.attrs["template"] == "{prompt} {answer}" and len(f.attrs["weights_sha256"]) == 64
        assert (f.attrs["row_start"], f.attrs["row_end"]) == (73, 146)
        assert np.allclose(np.linalg.norm(f["embeddings"][:], axis=1), 1, atol=1e-5)
    with h5py.File(sim_dir / "embeddings.h5") as f:  # the virtual join, read with plain h5py
        assert f["train"].shape == (180, 384) and f["test"].shape == (40, 384)
        assert np.array_equal(f["test"][:], emb.test())


def test_stored_matrices_aggregates_and_topk_match_float64(computed):
    """The stored values agree with float64 within float32 accuracy; the top-k is exact with
    respect to the distances the stage computed (the stored float32 matrix), ties by row index.
    Which of two near-tied rows (equal in float64 up to rounding) comes first depends on the BLAS
    kernel's rounding, so the order is checked against the stored matrix, not against float64."""
    _, _, embed_dir, sim_dir = computed
    emb = EmbeddingSet(embed_dir, 3)
    train = emb.train(0, emb.n_train).astype(np.float64)
    test = emb.test().astype(np.float64)
    cos = -(train @ test.T)
    euc = np.sqrt(((train[:, None] - test[None]) ** 2).sum(-1))
    with h5py.File(sim_dir / "distances.h5") as f:
        stored = f["cosine"][:]
        assert stored.dtype == np.float32
        assert np.abs(stored - cos).max() < 1e-5
        assert np.abs(f["euclidean"][:] - euc).max() < 1e-5
    assert np.abs(read_aggregate(sim_dir, 2, "cosine", "min") - cos.min(1)).max() < 1e-5
    assert np.abs(read_aggregate(sim_dir, 2, "euclidean", "avg") - euc.mean(1)).max() < 1e-5
    centroid = test.mean(0)
    ref = -(train @ centroid) / np.linalg.norm(centroid)
    assert np.abs(read_aggregate(sim_dir, 2, "cosine", "centroid") - ref).max() < 1e-5
    index, dist = merge_topk(sim_dir, 2, "cosine")
    k = index.shape[0]
    rows = np.arange(len(stored))
    expected = np.stack([np.lexsort((rows, stored[:, c]))[:k] for c in range(stored.shape[1])], axis=1)
    assert (index == expected).all()
    assert np.array_equal(dist, np.take_along_axis(stored, expected, 0))
    # and against float64: the k-th distance is the float64 k-th within rounding, and no row left
    # out is closer than the kept ones by more than rounding
    kth64 = np.sort(cos, axis=0)[k - 1]
    assert np.abs(dist[-1] - kth64).max() < 1e-5
    left_out = np.ones_like(cos, dtype=bool)
    np.put_along_axis(left_out, index, False, axis=0)
    assert (np.where(left_out, cos, np.inf).min(0) >= dist[-1] - 1e-5).all()


def test_missing_model_path_is_exit_2_at_submit(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(SMALL.replace("embed: {shards: 3", "embed: {model: ./no-such-model, shards: 3"))
    code, _, err = run(["submit", tmp_path / "exp.yaml"], capsys)
    # relative to the experiment file, named in full
    assert code == 2 and f"exp.yaml:9: embed.model: model path '{tmp_path / 'no-such-model'}' does not exist" in err
    assert not (tmp_path / "out").exists()


def test_missing_or_mismatched_shards_are_errors(computed, tmp_path):
    _, _, embed_dir, _ = computed
    for i in range(3):
        (tmp_path / f"embeddings-{i:05d}.h5").write_bytes((embed_dir / f"embeddings-{i:05d}.h5").read_bytes())
    # a stale or incomplete upstream, not bad input: exit code 1, naming the node, file and fix
    with pytest.raises(UpstreamError, match=r"embeddings-00003.h5: is missing; hpcgen verify FILE --repair") as err:
        EmbeddingSet(tmp_path, 4)
    assert err.value.exit_code == 1 and not isinstance(err.value, ConfigError)
    assert err.value.node == f"{tmp_path.parent.name}/{tmp_path.name}"
    with h5py.File(tmp_path / "embeddings-00002.h5", "r+") as f:
        f.attrs["dim"] = 768
    with pytest.raises(UpstreamError, match="has dim 768 .* but shard 0 has dim 384"):
        EmbeddingSet(tmp_path, 3)


def test_a_damaged_shard_is_never_taken_as_complete(computed, capsys):
    tmp, _, embed_dir, sim_dir = computed
    shard = embed_dir / "embeddings-00001.h5"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])  # what a crash half-way through a copy would leave
    code, out, _ = run(["submit", tmp / "exp.yaml", "--until", "similarity"], capsys)
    assert code == 0 and "5 complete, 0 already queued, 1 to run" in out
    with h5py.File(shard) as f:
        assert f["embeddings"].shape == (73, 384)
    marker = json.loads((embed_dir / "completions" / "00001.json").read_text())
    assert marker["outputs"]["embeddings-00001.h5"]["bytes"] == shard.stat().st_size
