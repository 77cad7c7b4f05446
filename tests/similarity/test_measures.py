"""SD_k of eq. 9 on the whole seen sub-matrix and the bigram KL curves of eqs. 10-12, against
brute force on small hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from hpcgen.similarity.measures import (
    bigram_kl,
    bigram_kl_curves,
    bigrams,
    checkpoint_ends,
    scaled_avg_weight,
    submatrix_curves,
    wsd,
)


def brute(metric, seen, test):
    if metric == "cosine":
        a = seen / np.linalg.norm(seen, axis=1, keepdims=True)
        b = test / np.linalg.norm(test, axis=1, keepdims=True)
        return -a @ b.T
    return np.sqrt(((seen[:, None, :] - test[None, :, :]) ** 2).sum(-1))


def centroid_distance(metric, a, b):
    if metric == "cosine":
        return -float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return float(np.linalg.norm(a - b))


def test_submatrix_curves_equal_eq9_by_brute_force():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(40, 6)), rng.normal(size=(9, 6))
    task = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0])
    order = rng.permutation(40)
    res = submatrix_curves(train, test, task, order, 7, chunk_rows=3)  # chunks smaller than a checkpoint
    ends = checkpoint_ends(40, 7)
    assert ends.tolist() == [7, 14, 21, 28, 35, 40]
    for metric in ("cosine", "euclidean"):
        for k, hi in enumerate(ends):
            seen = train[order[:hi]]
            d = brute(metric, seen, test)
            for t in range(3):
                sub = d[:, task == t]
                got = {op: res["per_task"][f"{metric}_{op}"][k, t] for op in ("min", "max", "avg", "centroid")}
                assert got["min"] == pytest.approx(sub.min(), abs=1e-5)
                assert got["max"] == pytest.approx(sub.max(), abs=1e-5)
                assert got["avg"] == pytest.approx(sub.mean(), abs=1e-5)
                want = centroid_distance(metric, seen.mean(0), test[task == t].mean(0))
                assert got["centroid"] == pytest.approx(want, abs=1e-5)
            assert res["overall"][f"{metric}_avg"][k] == pytest.approx(d.mean(), abs=1e-5)
            assert res["overall"][f"{metric}_min"][k] == pytest.approx(d.min(), abs=1e-5)
            want = centroid_distance(metric, seen.mean(0), test.mean(0))
            assert res["overall"][f"{metric}_centroid"][k] == pytest.approx(want, abs=1e-5)


def test_sd_k_is_cumulative_not_per_interval():
    # 1-d embeddings along two directions: the first checkpoint sees the near item, the second
    # a far one; a cumulative min keeps the near one, an interval mean would not
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    test = np.array([[1.0, 0.01]])
    res = submatrix_curves(train, test, np.array([0]), np.array([0, 1]), 1, metrics=("cosine",))
    mins = res["overall"]["cosine_min"]
    assert mins[0] == pytest.approx(mins[1]) and mins[0] < -0.99
    assert res["overall"]["cosine_max"][1] > -0.1  # the far item enters the max


def test_eq13_scaled_weight():
    mn, av = np.array([-0.6, -0.4]), np.array([-0.05, -0.15])
    assert scaled_avg_weight(mn, av) == pytest.approx(5.0)
    values, w_min, w_avg = wsd(mn, av)
    assert (w_min, w_avg) == (1.0, pytest.approx(5.0)) and values == pytest.approx([-0.85, -1.15])
    assert wsd(mn, av, "fixed", 1.0, 1.0)[0] == pytest.approx([-0.65, -0.55])
    with pytest.raises(ValueError, match="undefined"):
        scaled_avg_weight(mn, np.zeros(2))


def test_bigram_kl_curves_equal_eq11_at_every_checkpoint():
    rng = np.random.default_rng(1)
    words = "a b c d e F f g".split()
    train = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(40)]  # some have no bigram
    test = [" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(9)]
    task = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0])
    order = rng.permutation(40)
    overall, per_task = bigram_kl_curves(train, test, task, order, 7)
    assert overall.shape == (6,) and per_task.shape == (6, 3)
    for k, hi in enumerate(checkpoint_ends(40, 7)):
        p = bigrams(train[i] for i in order[:hi])
        assert overall[k] == pytest.approx(bigram_kl(p, bigrams(test)), abs=1e-9)
        for t in range(3):
            q = bigrams(x for x, g in zip(test, task) if g == t)
            assert per_task[k, t] == pytest.approx(bigram_kl(p, q), abs=1e-9)
    # the seen data growing toward the test data's bigrams lowers the divergence
    close = bigram_kl_curves(["x y", "a b"], ["a b"], np.array([0]), np.array([0, 1]), 1)[0]
    assert close[1] < close[0]
