"""Matrix expansion: product, zip, exclude, include, overrides; stable ids and readable names."""

from __future__ import annotations

import shutil

import pytest

from hpcgen.config import load_experiment
from hpcgen.errors import ConfigError
from tests.conftest import FIXTURES


def load(name, pipeline, overrides=(), tmp_path=None):
    path = FIXTURES / name
    if tmp_path is not None:  # keep outputs out of the source tree
        shutil.copy(path, tmp_path / name)
        for inc in FIXTURES.glob("base_*.yaml"):
            shutil.copy(inc, tmp_path / inc.name)
        path = tmp_path / name
    return load_experiment(path, pipeline, overrides, check_output=False)


def test_minimal_has_one_run_with_defaults(pipeline):
    exp = load("config_minimal.yaml", pipeline)
    assert [r.name for r in exp.runs] == ["default"]
    cfg = exp.runs[0].config
    assert cfg.train.lr == 1e-3 and cfg.arrange.strategy == "random"
    assert exp.output_dir == (FIXTURES / "out").resolve()
    assert exp.cluster.executor == "auto"


def test_product_of_axes_in_file_order(pipeline):
    exp = load("config_with_axes.yaml", pipeline)
    assert [r.name for r in exp.runs] == [
        "strategy=random,seed=1", "strategy=random,seed=2", "strategy=nft,seed=1",
        "strategy=nft,seed=2", "strategy=tma,seed=1", "strategy=tma,seed=2",
    ]
    assert {r.config.train.lr for r in exp.runs} == {0.002}
    assert [(r.config.arrange.strategy, r.config.train.seed) for r in exp.runs][3] == ("nft", 2)


def test_zip_groups_vary_together(pipeline):
    exp = load("config_with_zipped_parameters.yaml", pipeline)
    assert len(exp.runs) == 6
    pairs = {(r.config.train.lr, r.config.train.warmup) for r in exp.runs}
    assert pairs == {(0.001, 5), (0.002, 10), (0.004, 20)}
    assert exp.runs[0].name == "strategy=nft,lr=0.001,warmup=5"


def test_exclude_drops_matching_combinations(pipeline):
    exp = load("config_with_exclude.yaml", pipeline)
    combos = {(r.config.arrange.strategy, r.config.train.seed) for r in exp.runs}
    assert combos == {("random", 1), ("random", 2), ("nft", 1), ("nft", 2), ("nft", 3)}


def test_include_merges_underneath(pipeline):
    exp = load("config_with_include.yaml", pipeline)
    cfg = exp.runs[0].config
    assert cfg.cluster.partition == "gpu"  # from the included file
    assert cfg.cluster.mem == 16 * 1024
    assert cfg.cluster.time == 90  # the including file wins
    assert cfg.train.lr == 0.25 and cfg.train.warmup == 7


def test_overrides_set_keys_and_pin_axes(pipeline):
    exp = load("config_with_axes.yaml", pipeline, ["train.lr=0.5", "arrange.strategy=tma",
                                                    "cluster.sbatch.constraint=a100"])
    assert [r.name for r in exp.runs] == ["strategy=tma,seed=1", "strategy=tma,seed=2"]
    assert all(r.config.train.lr == 0.5 for r in exp.runs)
    assert exp.cluster.sbatch == {"constraint": "a100"}


def test_override_of_missing_key_is_an_error_with_suggestion(pipeline):
    with pytest.raises(ConfigError) as err:
        load("config_minimal.yaml", pipeline, ["train.seeed=3"])
    assert "does not exist" in str(err.value) and "did you mean 'seed'?" in str(err.value)
    assert str(err.value).startswith("--set: train.seeed:")


def test_run_ids_are_stable_and_depend_only_on_resolved_config(pipeline, tmp_path):
    a = load("config_with_axes.yaml", pipeline)
    b = load("config_with_axes.yaml", pipeline)
    assert [r.id for r in a.runs] == [r.id for r in b.runs]
    assert len({r.id for r in a.runs}) == len(a.runs)
    # a scheduler setting does not change what a run computes, so not its id
    c = load("config_with_axes.yaml", pipeline, ["cluster.partition=other", "train.resources.cpus=8"])
    assert [r.id for r in c.runs] == [r.id for r in a.runs]
    # a science setting does
    d = load("config_with_axes.yaml", pipeline, ["train.lr=0.9"])
    assert not {r.id for r in d.runs} & {r.id for r in a.runs}
    # the id of a run is the same whether it comes from a matrix or is written out by hand
    (tmp_path / "one.yaml").write_text("name: axes\noutput_dir: out\ntrain: {lr: 0.002, seed: 2}\n"
                                       "arrange: {strategy: nft}\n")
    single = load_experiment(tmp_path / "one.yaml", pipeline, check_output=False)
    assert single.runs[0].id == a.runs[3].id


def test_time_and_memory_formats(pipeline, tmp_path):
    exp = load("config_with_resources.yaml", pipeline)
    train = exp.runs[0].config.train.resources
    assert train.time == 24 * 60 and train.gpus == 4 and train.sbatch == {"constraint": "a100"}
    assert exp.cluster.mem == 8192


def test_axis_into_a_list_item():
    from hpcgen.stages import default_pipeline
    from tests.conftest import ROOT

    study = ROOT / "examples" / "diversity" / "transition.yaml"
    exp = load_experiment(study, default_pipeline(), check_output=False)
    sources = [r.config.data.sources[0] for r in exp.runs]
    assert [s.instructions for s in sources] == [10, 10, 100, 100, 1000, 1000, 10000, 10000]
    assert [s.seed for s in sources] == [0, 1] * 4 and [r.config.train.seed for r in exp.runs] == [0, 1] * 4
    assert {s.budget for s in sources} == {54400}  # the rest of the item (from the included base) is kept
    with pytest.raises(ConfigError, match="did you mean 'instructions'"):
        load_experiment(study, default_pipeline(), ["data.sources.0.instructionz=3"], check_output=False)


def test_configs_pickled_before_a_new_setting_unpickle_with_its_default():
    import pickle

    from hpcgen.stages.evaluate import EvalConfig

    cfg = EvalConfig(batch_size=8)
    state = cfg.__getstate__()
    state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k != "generate"}  # an older hpcgen's pickle
    restored = EvalConfig.__new__(EvalConfig)
    restored.__setstate__(state)
    assert restored.generate is False and restored.batch_size == 8
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_run_ids_and_node_keys_keep_their_values_and_lengths(pipeline):
    # They name the directories of existing stores (store/STAGE/KEY) and are recorded in them:
    # another hash, length or text would orphan every store made so far. The values hash the test
    # pipeline's sections (tests/pipeline/chain.py), so a new option there changes them too.
    from hpcgen.config.identity import HEX_DIGITS
    from hpcgen.pipeline.graph import build_graph

    assert HEX_DIGITS == {"run": 10, "node": 16}
    exp = load("config_with_axes.yaml", pipeline)
    assert [r.id for r in exp.runs][:2] == ["7aeca6eae8", "375f21b193"]
    nodes = {n.id for n in build_graph(exp, pipeline).nodes.values()}
    assert {"prepare/33507d0c166a906f", "aggregate/8b79a3f095b6c23f"} <= nodes
    assert all(len(n.split("/")[1]) == 16 for n in nodes)


def test_runs_share_the_sections_they_agree_on(pipeline):
    exp = load("config_with_axes.yaml", pipeline)
    first, *others = exp.runs
    assert all(r.config.data is first.config.data and r.sections["data"] is first.sections["data"] for r in others)
    same_seed = [r for r in others if r.config.train.seed == first.config.train.seed]
    assert same_seed and all(r.config.train is first.config.train for r in same_seed)
    assert all(r.sections[s].value is getattr(r.config, s) for r in exp.runs for s in type(r.config).model_fields)


def test_a_value_only_one_run_gets_wrong_is_located_at_its_axis(pipeline, tmp_path):
    (tmp_path / "late.yaml").write_text("name: late\noutput_dir: out\ntrain: {lr: bad}\nmatrix:\n"
                                        "  train.seed: [1, 2]\n  train.lr: [0.1, 0.2, x]\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(tmp_path / "late.yaml", pipeline, check_output=False)
    assert (err.value.line, err.value.key) == (6, "train.lr") and "(got 'x')" in err.value.reason
    # the file's own value is never validated where an axis replaces it in every run
    (tmp_path / "late.yaml").write_text("name: late\noutput_dir: out\ntrain: {lr: bad}\nmatrix:\n"
                                        "  train.lr: [0.1, 0.2]\n")
    assert [r.config.train.lr for r in load_experiment(tmp_path / "late.yaml", pipeline, check_output=False).runs] == [
        0.1, 0.2]
