"""Each strategy on small inputs with known answers, and the arrange stage end to end."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcgen.arrangements.strategies import STRATEGIES, Context
from hpcgen.arrangements.tma import DenseDistances
from hpcgen.cli import main
from hpcgen.errors import ConfigError
from hpcgen.stages.arrange import ArrangeConfig
from tests.arrangements.test_tma import reference_tma
from tests.conftest import ROOT


def ctx_for(d: np.ndarray, tasks=None, **params) -> Context:
    p = ArrangeConfig(**params)
    n = d.shape[0]
    aggs = {"min": d.min(1), "max": d.max(1), "avg": d.mean(1), "centroid": d.mean(1)}
    tasks = np.asarray(tasks if tasks is not None else [f"t{i % 3}" for i in range(n)], dtype=object)
    return Context(tasks=tasks, seed=p.seed, params=p, item_distance=lambda a: aggs[a],
                   distances=lambda: DenseDistances(d.astype(np.float32)),
                   task_distance=lambda groups: np.array([d[g].mean() for g in groups]))


def arrange(d, **params):
    return STRATEGIES[params["strategy"]](ctx_for(d, **params))


def test_round_robin_and_cluster():
    tasks = ["a", "a", "a", "b", "c", "c"]
    d = np.zeros((6, 2), dtype=np.float32)
    rr = STRATEGIES["round_robin"](ctx_for(d, tasks, strategy="round_robin"))
    assert rr.order.tolist() == [0, 3, 4, 1, 5, 2] and rr.rounds.tolist() == [0, 0, 0, 1, 1, 2]
    cl = STRATEGIES["cluster"](ctx_for(d, tasks, strategy="cluster", seed=3)).order.tolist()
    blocks = [tasks[i] for i in cl]
    assert sorted(cl) == list(range(6)) and all(blocks[i] == blocks[i + 1] or blocks[i] not in blocks[i + 1:]
                                                for i in range(5))


def test_random_is_seeded():
    d = np.zeros((50, 2), dtype=np.float32)
    a, b = arrange(d, strategy="random", seed=1).order, arrange(d, strategy="random", seed=1).order
    assert (a == b).all() and sorted(a) == list(range(50)) and (a != arrange(d, strategy="random", seed=2).order).any()


def test_nft_fft_and_weighted_distance():
    d = np.array([[0.5, 0.1], [-0.2, 0.9], [0.3, 0.3], [0.3, 0.3]], dtype=np.float32)
    # wsd = min + avg: [0.4, 0.15, 0.6, 0.6]
    assert arrange(d, strategy="nft").order.tolist() == [1, 0, 2, 3]
    assert arrange(d, strategy="fft").order.tolist() == [2, 3, 0, 1]  # ties by index in both
    assert arrange(d, strategy="nft", distance="min").order.tolist() == [1, 0, 2, 3]
    assert arrange(d, strategy="nft", distance="max").order.tolist() == [2, 3, 0, 1]


def test_coarse_keeps_tasks_together_and_needs_tasks():
    d = np.array([[0.9], [0.8], [0.1], [0.2], [0.5]], dtype=np.float32)
    tasks = ["x", "x", "y", "y", "z"]
    out = STRATEGIES["coarse"](ctx_for(d, tasks, strategy="coarse")).order.tolist()
    assert out == [2, 3, 4, 0, 1]
    far = STRATEGIES["coarse"](ctx_for(d, tasks, strategy="coarse", coarse_order="farthest")).order.tolist()
    assert far == [0, 1, 4, 2, 3]
    with pytest.raises(ConfigError, match="'coarse' needs training records grouped in tasks"):
        STRATEGIES["coarse"](ctx_for(d, ["one"] * 5, strategy="coarse"))


small = st.integers(2, 25).flatmap(lambda n: st.integers(1, 6).flatmap(
    lambda m: st.lists(st.integers(0, 4), min_size=n * m, max_size=n * m).map(
        lambda v: np.asarray(v, dtype=np.float32).reshape(n, m))))


@settings(max_examples=80, deadline=None)
@given(d=small)
def test_tma_directions_windows_and_budgets(d):
    n = d.shape[0]
    nft = arrange(d, strategy="tma")
    ref = reference_tma(d)
    assert (nft.rounds == ref[nft.order]).all() and sorted(nft.order.tolist()) == list(range(n))
    fft = arrange(d, strategy="tma", direction="reverse")
    assert (fft.order == nft.order[::-1]).all()  # FFT is the exact reverse of NFT
    far = arrange(d, strategy="tma", direction="farthest_rounds")
    assert (far.rounds == reference_tma(d, farthest=True)[far.order]).all()
    n_rounds = int(nft.rounds.max()) + 1
    win = arrange(d, strategy="tma", window=(0, max(1, n_rounds // 2)))
    assert set(win.rounds.tolist()) == set(range(max(1, n_rounds // 2)))
    budget = max(int((nft.rounds == 0).sum()), n // 2)
    whole = arrange(d, strategy="tma", budget=budget)
    assert whole.order.size <= budget and (whole.order == nft.order[: whole.order.size]).all()
    assert whole.order.size == n or (nft.rounds[whole.order.size] != nft.rounds[whole.order.size - 1])
    exact = arrange(d, strategy="tma", budget=budget, budget_mode="exact")
    assert (exact.order == nft.order[:budget]).all()


def test_within_round_by_distance_and_tma_mix():
    rng = np.random.default_rng(3)
    d = rng.normal(size=(40, 5)).astype(np.float32)
    by_dist = arrange(d, strategy="tma", within_round="distance")
    mins = d.min(1)
    for r in np.unique(by_dist.rounds):
        rows = by_dist.order[by_dist.rounds == r]
        assert (np.diff(mins[rows]) >= 0).all()
    nft = arrange(d, strategy="tma").order
    half = arrange(d, strategy="tma_mix", budget=11, mix="half").order
    assert half.tolist() == nft[:6].tolist() + nft[-5:].tolist()
    mn = arrange(d, strategy="tma_mix", budget=10, mix="min").order
    wsd = d.astype(np.float64).min(1) + d.astype(np.float64).mean(1)
    kth = np.sort(wsd)[9]
    chosen = np.zeros(len(d), dtype=bool)
    chosen[mn] = True
    # the ten smallest keys, up to rounding: a row near the cut may fall either side of it
    assert len(mn) == 10 and (wsd[chosen] <= kth + 1e-6).all() and (wsd[~chosen] >= kth - 1e-6).all()
    assert [r for r in nft if r in set(mn.tolist())] == mn.tolist()  # kept in TMA order


def test_bad_budgets_and_windows():
    d = np.arange(12, dtype=np.float32).reshape(6, 2)
    with pytest.raises(ConfigError, match="budget 7 is larger than the pool of 6"):
        arrange(d, strategy="tma", budget=7)
    with pytest.raises(ConfigError, match="tma_mix needs a budget"):
        arrange(d, strategy="tma_mix")
    with pytest.raises(ConfigError, match=r"round window \[50, 60\) holds no items"):
        arrange(d, strategy="tma", window=(50, 60))
    with pytest.raises(ValueError, match="unknown strategy 'nearest'; valid: random, round_robin"):
        ArrangeConfig(strategy="nearest")


EXP = f"""
name: arr
output_dir: out
cluster: {{executor: debug}}
data:
  sources: [{{format: niv2, path: {ROOT / "examples" / "data" / "niv2-sample"}}}]
  max_per_train_task: 3
  max_per_test_task: 2
embed: {{max_seq_length: 64}}
arrange: {{sd_interval: 16}}
matrix:
  arrange.strategy: [random, nft, tma]
"""


def test_arrange_stage_end_to_end(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(EXP)
    assert main(["submit", str(tmp_path / "exp.yaml"), "--until", "arrange"]) == 0
    files = {}
    for path in (tmp_path / "out" / "store" / "arrange").glob("*/arrangement.h5"):
        with h5py.File(path) as f:
            files[f.attrs["strategy"]] = {k: f[k][:] for k in f} | {"attrs": dict(f.attrs)}
    assert set(files) == {"random", "nft", "tma"}
    for name, f in files.items():
        assert sorted(f["order"].tolist()) == list(range(270)), name
        assert len(f["ids"]) == 270
    assert "round" in files["tma"] and files["tma"]["attrs"]["rounds"] >= 270 // 40
    assert len(files["tma"]["sd_curve"]) == -(-270 // 16)
    nft_sd = files["nft"]["sd_curve"]
    assert (np.diff(nft_sd) >= -1e-12).all()  # nearest first: the distance of what is seen grows
    assert "sd_curve" not in files["random"]  # random needs no embeddings, so it has no curve
    plan = capsys.readouterr().out
    assert "3 runs" in plan.replace("\n", " ")
