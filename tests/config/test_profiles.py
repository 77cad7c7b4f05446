"""Resource profiles (jobs/profiles/): one line of the experiment file moves it between clusters."""

from __future__ import annotations

import pytest

from hpcgen.config import load_experiment, profiles
from hpcgen.errors import ConfigError
from hpcgen.pipeline.graph import build_graph
from hpcgen.stages import default_pipeline
from tests.conftest import ROOT

EXPERIMENT = """
name: moving
output_dir: out
cluster:
  profile: {profile}
  account: lab42
embed: {{tasks: 2}}
arrange: {{strategy: tma}}
eval:
  resources: {{time: "0:30:00"}}
"""


def resources_of(path, pipeline, overrides=()):
    exp = load_experiment(path, pipeline, overrides, check_output=False)
    graph = build_graph(exp, pipeline)
    return {n.stage.name: n.resources for n in graph.nodes.values()}


@pytest.mark.parametrize("name", profiles.bundled())
def test_bundled_profiles_are_valid_for_the_real_pipeline(name):
    stages = list(default_pipeline().order)
    profile = profiles.load(ROOT / "jobs" / "profiles" / f"{name}.yaml", stages)
    assert profile.description
    assert set(profile.stages) == set(stages), "a bundled profile says something about every stage"
    train = profile.for_stage("train")
    if train.gpus:
        assert train.tasks_per_node == train.gpus, "one rank per GPU"


def test_bundled_profiles_include_the_cluster_shapes_named_in_the_docs():
    assert {"a800x8", "h100x8", "cpu"} <= set(profiles.bundled())


def test_one_line_moves_the_experiment_between_clusters(pipeline, write_exp):
    a800 = resources_of(write_exp(EXPERIMENT.format(profile="a800x8")), pipeline)
    h100 = resources_of(write_exp(EXPERIMENT.format(profile="h100x8")), pipeline)
    cpu = resources_of(write_exp(EXPERIMENT.format(profile="cpu")), pipeline)
    assert (a800["train"].gpus, a800["train"].tasks_per_node, a800["train"].partition) == (8, 8, "gpu")
    assert a800["train"].sbatch == {"exclusive": True}
    assert h100["train"].sbatch == {"constraint": "h100", "exclusive": True}
    assert h100["train"].time < a800["train"].time
    assert cpu["train"].gpus == 0 and cpu["embed"].gpus == 0
    assert (a800["embed"].gpus, a800["prepare"].gpus, a800["prepare"].partition) == (1, 0, "cpu")
    # what the experiment file says outright beats the profile, whichever profile it is
    for res in (a800, h100, cpu):
        assert all(r.account == "lab42" for r in res.values())
        assert res["evaluate"].time == 30


def test_precedence_stage_defaults_cluster_profile_stage(pipeline, write_exp, tmp_path):
    (tmp_path / "site.yaml").write_text("""
description: a test site
defaults: {partition: small, cpus: 3, mem: 2G, time: 10}
stages:
  train: {partition: big, gpus: 2, tasks_per_node: 2, sbatch: {constraint: a100, exclusive: true}}
  evaluate: {cpus: 5}
""")
    path = write_exp("""
name: layered
output_dir: out
cluster:
  profile: site.yaml          # relative to this file
  mem: 4G                     # the profile sets mem: it wins
  account: lab7               # the profile says nothing: this applies
  gpus: 0                     # under the profile's train entry
train:
  resources: {gpus: 4, tasks_per_node: 4, sbatch: {constraint: h100}}
""")
    res = resources_of(path, pipeline)
    stock = pipeline["prepare"].defaults
    # cluster over the stage's own needs; the profile over the cluster; the stage section over all
    assert (res["prepare"].partition, res["prepare"].cpus, res["prepare"].time) == ("small", 3, 10)
    assert res["prepare"].mem == 2048 and res["prepare"].tasks_per_node == stock.tasks_per_node
    assert all(r.account == "lab7" for r in res.values())
    assert res["evaluate"].gpus == 0
    assert (res["train"].partition, res["train"].gpus, res["train"].tasks_per_node) == ("big", 4, 4)
    assert res["train"].sbatch == {"constraint": "h100", "exclusive": True}
    assert res["evaluate"].cpus == 5 and res["evaluate"].partition == "small"


def test_a_stage_can_take_another_profile(pipeline, write_exp):
    path = write_exp("""
name: mixed
output_dir: out
cluster: {profile: a800x8}
arrange: {strategy: tma}
eval:
  resources: {profile: cpu}
""")
    res = resources_of(path, pipeline)
    assert res["evaluate"].gpus == 0 and res["evaluate"].partition == "cpu"
    assert res["train"].gpus == 8 and res["embed"].gpus == 1


def test_plan_names_the_profiles_in_use(cli, write_exp):
    path = write_exp("name: p\noutput_dir: out\ncluster: {profile: h100x8}\narrange: {strategy: tma}\n"
                     "eval: {resources: {profile: cpu}}\n")
    code, out, err = cli("plan", path)
    assert code == 0, err
    assert f"resource profile {ROOT / 'jobs' / 'profiles' / 'h100x8.yaml'}: prepare, embed" in out
    assert f"resource profile {ROOT / 'jobs' / 'profiles' / 'cpu.yaml'}: evaluate" in out
    code, out, err = cli("plan", path, "--sbatch", "train")
    assert code == 0 and "#SBATCH --constraint=h100" in out and "#SBATCH --exclusive" in out


def test_unknown_profile_name_is_one_line_with_a_suggestion(cli, write_exp, tmp_path):
    path = write_exp("name: p\noutput_dir: out\ncluster:\n  profile: h100\n")
    code, out, err = cli("submit", path)
    assert code == 2
    line = err.strip()
    assert "\n" not in line
    assert "exp.yaml:4: cluster.profile: no profile 'h100'" in line and "did you mean 'h100x8'?" in line
    assert not (tmp_path / "out").exists()


def test_errors_inside_a_profile_name_the_profile_file_and_line(cli, write_exp, tmp_path):
    (tmp_path / "bad-stage.yaml").write_text("description: x\nstages:\n  training: {gpus: 8}\n")
    (tmp_path / "bad-time.yaml").write_text("description: x\ndefaults:\n  cpus: 2\n  time: soon\n")
    (tmp_path / "bad-key.yaml").write_text("description: x\ndefaults: {gpu: 1}\n")
    for name, expected in (
        ("bad-stage.yaml", "bad-stage.yaml:3: stages.training: no stage 'training' in this pipeline; "
                           "did you mean 'train'?"),
        ("bad-time.yaml", "bad-time.yaml:4: defaults.time: must be minutes or a Slurm time"),
        ("bad-key.yaml", "bad-key.yaml:2: defaults.gpu: unknown key; did you mean 'gpus'?"),
    ):
        path = write_exp(f"name: p\noutput_dir: out\ncluster: {{profile: {name}}}\n")
        code, out, err = cli("plan", path)
        assert code == 2, (name, out, err)
        assert expected in err.strip(), err
    path = write_exp("name: p\noutput_dir: out\ncluster: {profile: nowhere/site.yaml}\n")
    code, out, err = cli("plan", path)
    assert code == 2 and "nowhere/site.yaml' not found (paths are relative to the experiment file)" in err


def test_profile_lookup_respects_HPCGEN_JOBS_DIR(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.yaml").write_text("description: mine\ndefaults: {partition: p1}\n")
    monkeypatch.setenv("HPCGEN_JOBS_DIR", str(tmp_path))
    assert profiles.bundled() == ["mine"]
    assert profiles.load(profiles.resolve("mine", None)).for_stage("train").partition == "p1"
    with pytest.raises(ValueError, match="no profile 'a800x8'"):
        profiles.resolve("a800x8", None)


def test_profile_edits_are_seen_without_restarting(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("description: one\ndefaults: {cpus: 1}\n")
    assert profiles.load(path).for_stage("x").cpus == 1
    path.write_text("description: two\ndefaults: {cpus: 22}\n")
    assert profiles.load(path).for_stage("x").cpus == 22
    path.write_text("description: three\ndefaults: {cpus: -1}\n")
    with pytest.raises(ConfigError, match=r"p.yaml:2: defaults.cpus"):
        profiles.load(path)
