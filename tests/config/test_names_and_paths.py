"""One name per thing and one base for paths: section/stage spellings, --set attribution,
paths of included files, model directories, and resource precedence under a profile."""

from __future__ import annotations

import shutil

import pytest

from hpcgen.config import load_experiment
from hpcgen.errors import ConfigError
from hpcgen.pipeline.graph import build_graph
from hpcgen.stages import default_pipeline
from tests.conftest import ROOT

NIV2 = ROOT / "examples" / "data" / "niv2-sample"


def load(path, overrides=()):
    return load_experiment(path, default_pipeline(), overrides, check_output=False)


def resources(path, overrides=()):
    exp = load(path, overrides)
    return {n.stage.name: n.resources for n in build_graph(exp, default_pipeline()).nodes.values()}


def test_stage_names_are_accepted_as_section_names_everywhere(write_exp, tmp_path):
    (tmp_path / "site.yaml").write_text("description: s\ndefaults: {cpus: 1}\nstages:\n  eval: {cpus: 7}\n"
                                        "  data: {cpus: 3}\n")
    path = write_exp(f"""
name: names
output_dir: out
cluster: {{profile: site.yaml}}
prepare: {{sources: [{{format: niv2, path: {NIV2}}}]}}
evaluate: {{tasks: 3}}
aggregate: {{title: spelled as the stage}}
matrix:
  evaluate.batch_size: [4, 8]
""")
    exp = load(path, ["aggregate.baseline=x"])
    cfg = exp.runs[0].config
    assert cfg.eval.tasks == 3 and cfg.report.title == "spelled as the stage" and cfg.report.baseline == "x"
    assert sorted(r.config.eval.batch_size for r in exp.runs) == [4, 8]
    res = resources(path)
    assert res["evaluate"].cpus == 7 and res["prepare"].cpus == 3  # profile entries by section name


def test_both_spellings_of_one_section_are_refused(write_exp):
    path = write_exp("name: twice\noutput_dir: out\neval: {tasks: 2}\nevaluate: {tasks: 3}\n")
    with pytest.raises(ConfigError, match="both 'evaluate' and 'eval' are given") as info:
        load(path)
    assert info.value.line == 4


def test_a_bad_set_is_blamed_on_the_command_line_not_the_file(write_exp):
    path = write_exp("name: s\noutput_dir: out\ntrain:\n  lr: 1.0e-3\nmatrix:\n  train.seed: [0, 1]\n")
    for override, key in (("train.lr=abc", "train.lr"), ("train.seed=abc", "train.seed")):
        with pytest.raises(ConfigError) as info:
            load(path, [override])
        assert info.value.file == "--set" and info.value.line is None and info.value.key == key, str(info.value)
    # the file's own mistakes still point at their line
    bad = write_exp("name: s\noutput_dir: out\ntrain:\n  lr: abc\n", name="bad.yaml")
    with pytest.raises(ConfigError) as info:
        load(bad)
    assert info.value.line == 4


def test_paths_in_an_included_file_are_relative_to_that_file(tmp_path):
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    shutil.copytree(NIV2, shared / "data" / "niv2")
    model = shared / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (shared / "base.yaml").write_text("""
output_dir: out
data:
  sources: [{format: niv2, path: data/niv2}]
train: {model: models/tiny, tokenizer: char}
embed: {model: sentence-transformers/all-MiniLM-L6-v2}
""")
    study = tmp_path / "studies" / "one"
    study.mkdir(parents=True)
    (study / "exp.yaml").write_text("include: [../../shared/base.yaml]\nname: inc\n")
    cfg = load(study / "exp.yaml").runs[0].config
    assert cfg.data.sources[0].path == str((shared / "data" / "niv2").resolve())
    assert cfg.train.model == str(model.resolve())
    assert cfg.embed.model == "sentence-transformers/all-MiniLM-L6-v2"  # a hub name stays a name
    # the experiment file's own paths are relative to it
    (study / "mine").mkdir()
    shutil.copytree(NIV2, study / "mine" / "niv2")
    (study / "own.yaml").write_text("include: [../../shared/base.yaml]\nname: own\n"
                                    "data: {sources: [{format: niv2, path: mine/niv2}]}\n")
    assert load(study / "own.yaml").runs[0].config.data.sources[0].path == str((study / "mine" / "niv2").resolve())


def test_a_model_directory_is_relative_to_the_experiment_file_not_the_working_directory(write_exp, tmp_path,
                                                                                        monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    path = write_exp("name: m\noutput_dir: out\ntrain: {model: m, tokenizer: char}\n")
    monkeypatch.chdir("/")
    assert load(path).runs[0].config.train.model == str((tmp_path / "m").resolve())
    gone = write_exp("name: m\noutput_dir: out\ntrain: {model: ./missing, tokenizer: char}\n", name="gone.yaml")
    assert load(gone).runs[0].config.train.model == str(tmp_path / "missing")  # refused by its stage's check


def test_the_bundled_experiment_moves_to_a_cluster_with_its_profile_line():
    """The laptop's settings live in the `laptop` profile, so another profile replaces all of them."""
    laptop = resources(ROOT / "experiments.yaml")
    assert {r.cpus for r in laptop.values()} <= {1, 2} and all(r.gpus == 0 for r in laptop.values())
    a800 = resources(ROOT / "experiments.yaml", ["cluster.profile=a800x8", "train.micro_batch=2"])
    assert (a800["train"].gpus, a800["train"].tasks_per_node, a800["train"].partition) == (8, 8, "gpu")
    assert a800["train"].cpus > 1 and a800["embed"].gpus == 1 and a800["prepare"].partition == "cpu"


def test_the_cluster_section_is_beneath_the_profile_and_stage_resources_above_it(write_exp):
    path = write_exp("""
name: prec
output_dir: out
cluster: {profile: a800x8, cpus: 99, gpus: 0, partition: mine, account: lab}
eval:
  resources: {cpus: 3}
""")
    res = resources(path, ["train.micro_batch=2"])
    assert res["train"].gpus == 8 and res["train"].partition == "gpu"  # the profile beats the cluster section
    assert res["evaluate"].cpus == 3  # a stage's own resources beat the profile
    assert all(r.account == "lab" for r in res.values())  # what the profile leaves open comes from the cluster


def test_a_profile_file_named_in_an_included_file_is_relative_to_that_file(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "mine.yaml").write_text("description: d\ndefaults: {cpus: 6}\n")
    (tmp_path / "site" / "base.yaml").write_text(f"output_dir: out\ncluster: {{profile: mine.yaml}}\n"
                                                 f"data: {{sources: [{{format: niv2, path: {NIV2}}}]}}\n")
    (tmp_path / "exp.yaml").write_text("include: [site/base.yaml]\nname: p\neval: {resources: {profile: cpu}}\n")
    res = resources(tmp_path / "exp.yaml")
    assert res["prepare"].cpus == 6 and res["evaluate"].partition == "cpu"


def test_a_deepspeed_file_is_relative_to_the_experiment_file_and_a_preset_stays_a_name(write_exp, tmp_path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 1}}')
    cfg = load(write_exp("name: d\noutput_dir: out\ntrain: {deepspeed: ds.json}\n")).runs[0].config
    assert cfg.train.deepspeed == str((tmp_path / "ds.json").resolve())
    cfg = load(write_exp("name: d\noutput_dir: out\ntrain: {deepspeed: zero3}\n", name="p.yaml")).runs[0].config
    assert cfg.train.deepspeed == "zero3"
