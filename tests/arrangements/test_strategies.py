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
                   task_distance=lambda groups, attrs=None: np.array([d[g].mean() for g in groups]))


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
    # eq. 13: min = [0.1, -0.2, 0.3, 0.3], avg = [0.3, 0.35, 0.3, 0.3], w_avg = 0.125 / 0.3125 = 0.4
    # wsd = [0.22, -0.06, 0.42, 0.42]
    nft = arrange(d, strategy="nft")
    assert nft.order.tolist() == [1, 0, 2, 3] and nft.attrs["wsd_w_min"] == 1.0
    assert abs(nft.attrs["wsd_w_avg"] - 0.4) < 1e-6 and nft.attrs["wsd_weights"] == "scaled"
    assert arrange(d, strategy="fft").order.tolist() == [2, 3, 0, 1]  # ties by index in both
    assert arrange(d, strategy="nft", distance="min").order.tolist() == [1, 0, 2, 3]
    assert arrange(d, strategy="nft", distance="max").order.tolist() == [2, 3, 0, 1]


def test_wsd_scaled_weight_is_eq13_not_fixed():
    # item 0: min -0.9, avg -0.1; item 1: min -0.6, avg -0.35. Fixed weights 1, 1: -1.0 vs -0.95,
    # item 0 first. Eq. 13: w_avg = mean(min) / mean(avg) = -0.75 / -0.225 = 3.33:
    # -1.233 vs -1.767, item 1 first.
    d = np.array([[-0.9, 0.7], [-0.6, -0.1]], dtype=np.float32)
    scaled = arrange(d, strategy="nft")
    assert scaled.order.tolist() == [1, 0] and abs(scaled.attrs["wsd_w_avg"] - 0.75 / 0.225) < 1e-5
    fixed = arrange(d, strategy="nft", wsd_weights="fixed")
    assert fixed.order.tolist() == [0, 1] and fixed.attrs["wsd_w_avg"] == 1.0
    assert arrange(d, strategy="fft").order.tolist() == [0, 1]


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
    fit = arrange(d, strategy="tma", budget=budget, budget_mode="fit")
    assert fit.order.size <= budget and (fit.order == nft.order[: fit.order.size]).all()
    assert fit.order.size == n or (nft.rounds[fit.order.size] != nft.rounds[fit.order.size - 1])
    crossing = arrange(d, strategy="tma", budget=budget)  # the paper's: the round crossing M kept whole
    size = crossing.order.size
    assert size >= budget and (crossing.order == nft.order[:size]).all()
    assert size == n or nft.rounds[size] != nft.rounds[size - 1]
    assert int((nft.rounds[:size] != nft.rounds[size - 1]).sum()) < budget  # one round fewer is short of M
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


def five_settings_matrix() -> np.ndarray:
    """8 training items x 2 test items whose TMA rounds are known by hand: round 0 = {0, 1}
    (each test item's nearest), round 1 = {2, 3}, round 2 = {4, 5}, round 3 = {6, 7}."""
    col0 = [-0.9, 0.0, -0.7, 0.0, -0.5, 0.0, -0.3, 0.1]
    col1 = [0.0, -0.9, 0.0, -0.7, 0.0, -0.5, 0.1, -0.3]
    return np.array([col0, col1], dtype=np.float32).T


def test_five_settings_of_c3_on_a_hand_made_matrix():
    d = five_settings_matrix()
    assert arrange(d, strategy="tma").rounds.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    mix = lambda **kw: arrange(d, strategy="tma_mix", **kw)  # noqa: E731
    # M = 3: the crossing round is kept whole
    assert mix(budget=3, mix="min").order.tolist() == [0, 1, 2, 3]
    assert mix(budget=3, mix="max").order.tolist() == [7, 6, 5, 4]  # rounds 3, 2 from the far end
    # M = 4: M/2 = 2 from each end: rounds 0 and 3, nearest to farthest
    nft = mix(budget=4, mix="nft")
    assert nft.order.tolist() == [0, 1, 6, 7] and nft.rounds.tolist() == [0, 0, 3, 3]
    assert mix(budget=4, mix="fft").order.tolist() == [7, 6, 1, 0]
    rt = mix(budget=4, mix="rt", seed=5).order.tolist()
    assert sorted(rt) == [0, 1, 6, 7] and rt == mix(budget=4, mix="rt", seed=5).order.tolist()
    assert any(mix(budget=4, mix="rt", seed=s).order.tolist() != [0, 1, 6, 7] for s in range(5))
    # M = 5: 2.5 from each end: rounds 0, 1 and 3, 2
    assert mix(budget=5, mix="nft").order.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    # exact M: ceil(M/2) from the near end, floor(M/2) from the far end
    assert mix(budget=5, mix="nft", budget_mode="exact").order.tolist() == [0, 1, 2, 6, 7]
    assert mix(budget=3, mix="min", budget_mode="exact").order.tolist() == [0, 1, 2]
    # the authors' MAX: a separate farthest-pick TMA; column 0's farthest is 7 (0.1), column 1's 6
    far = mix(budget=2, mix="max", max_source="farthest_pick")
    assert far.order.tolist() == [6, 7] and far.attrs["max_source"] == "farthest_pick"


def test_five_settings_invariants_on_random_matrices():
    rng = np.random.default_rng(3)
    d = rng.normal(size=(60, 7)).astype(np.float32)
    tma = arrange(d, strategy="tma")
    near, rounds = tma.order, tma.rounds
    pos = {int(r): i for i, r in enumerate(near)}
    for budget in (5, 17, 30, 59):
        mn = arrange(d, strategy="tma_mix", budget=budget, mix="min")
        k = mn.order.size
        assert k >= budget and (mn.order == near[:k]).all() and (k == 60 or rounds[k] != rounds[k - 1])
        nft = arrange(d, strategy="tma_mix", budget=budget, mix="nft").order
        assert [pos[int(r)] for r in nft] == sorted(pos[int(r)] for r in nft)  # nearest to farthest
        head = [r for r in nft if pos[int(r)] < 30]
        assert len(set(nft.tolist())) == len(nft) and len(head) >= min(budget / 2, 30)
        fft = arrange(d, strategy="tma_mix", budget=budget, mix="fft").order
        assert fft.tolist() == nft[::-1].tolist()
        rt = arrange(d, strategy="tma_mix", budget=budget, mix="rt").order
        assert sorted(rt.tolist()) == sorted(nft.tolist())
        mx = arrange(d, strategy="tma_mix", budget=budget, mix="max").order
        assert mx.tolist() == near[::-1][: mx.size].tolist() and mx.size >= budget


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


def _read(group) -> dict:
    out = {}
    for k, v in group.items():
        out[k] = _read(v) if isinstance(v, h5py.Group) else v[:]
    return out


def test_arrange_stage_end_to_end(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(EXP)
    assert main(["submit", str(tmp_path / "exp.yaml"), "--until", "arrange"]) == 0
    files = {}
    for path in (tmp_path / "out" / "store" / "arrange").glob("*/arrangement.h5"):
        with h5py.File(path) as f:
            files[f.attrs["strategy"]] = _read(f) | {"attrs": dict(f.attrs)}
    assert set(files) == {"random", "nft", "tma"}
    for name, f in files.items():
        assert sorted(f["order"].tolist()) == list(range(270)), name
        assert len(f["ids"]) == 270
    assert "round" in files["tma"] and files["tma"]["attrs"]["rounds"] >= 270 // 40
    k = -(-270 // 16)
    assert len(files["tma"]["sd_curve"]) == k
    nft = files["nft"]
    assert nft["attrs"]["wsd_weights"] == "scaled" and nft["attrs"]["wsd_w_avg"] > 1  # eq. 13's scale
    m = nft["measures"]
    assert m["items_seen"].tolist() == [min(16 * (i + 1), 270) for i in range(k)]
    tasks = [t.decode() if isinstance(t, bytes) else t for t in m["tasks"]]
    assert len(tasks) == 20 and sorted(m["overall"]) == sorted(
        [f"{a}_{b}" for a in ("cosine", "euclidean") for b in ("min", "max", "avg", "centroid")] + ["bigram_kl"])
    for name, curve in m["overall"].items():
        assert curve.shape == (k,) and m["per_task"][name].shape == (k, 20), name
        assert np.isfinite(curve).all(), name
    # eq. 9 on growing sets: the min over the seen sub-matrix can only fall, the max only rise
    for metric in ("cosine", "euclidean"):
        assert (np.diff(m["overall"][f"{metric}_min"]) <= 1e-12).all()
        assert (np.diff(m["per_task"][f"{metric}_max"], axis=0) >= -1e-12).all()
        assert np.allclose(m["overall"][f"{metric}_min"], m["per_task"][f"{metric}_min"].min(axis=1))
    # the headline is eq. 13: Cosine-Min_k + Cosine-Avg_k scaled over the checkpoints
    mn, av = m["overall"]["cosine_min"], m["overall"]["cosine_avg"]
    assert np.allclose(nft["sd_curve"], mn + av * (mn.mean() / av.mean()))
    assert "sd_curve" not in files["random"]  # random needs no embeddings, so it has no curve
    plan = capsys.readouterr().out
    assert "3 runs" in plan.replace("\n", " ")


def test_random_with_a_budget_draws_m_items():
    d = np.zeros((50, 2), dtype=np.float32)
    full = arrange(d, strategy="random", seed=4).order
    part = arrange(d, strategy="random", seed=4, budget=12).order
    assert part.tolist() == full[:12].tolist() and len(set(part.tolist())) == 12
    with pytest.raises(ConfigError, match="budget 51 is larger than the pool of 50"):
        arrange(d, strategy="random", budget=51)
