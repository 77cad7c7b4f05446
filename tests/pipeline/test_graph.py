"""Stage graph: keys hash only what a stage reads, runs share upstream nodes, fan-in at the end."""

from __future__ import annotations

from hpcgen.config import load_experiment
from hpcgen.pipeline.graph import build_graph
from tests.conftest import FIXTURES


def graph_of(pipeline, name="config_with_shared_stages.yaml", overrides=()):
    exp = load_experiment(FIXTURES / name, pipeline, overrides, check_output=False)
    return exp, build_graph(exp, pipeline)


def nodes_by_stage(graph):
    out = {}
    for node in graph.nodes.values():
        out.setdefault(node.stage.name, []).append(node)
    return out


def test_runs_share_upstream_nodes(pipeline):
    exp, graph = graph_of(pipeline)
    by = nodes_by_stage(graph)
    assert len(exp.runs) == 6
    # one dataset: prepare, embed and similarity once for all six runs
    assert [len(by[s]) for s in ("prepare", "embed", "similarity")] == [1, 1, 1]
    # arrange depends on the strategy only; train and evaluate on strategy and seed
    assert len(by["arrange"]) == 3 and len(by["train"]) == 6 and len(by["evaluate"]) == 6
    assert len(by["aggregate"]) == 1 and len(by["aggregate"][0].upstream) == 6
    assert by["embed"][0].size == 2 and by["evaluate"][0].size == 3
    assert sorted(by["prepare"][0].runs) == sorted(r.id for r in exp.runs)


def test_config_dependent_upstream(pipeline):
    _, graph = graph_of(pipeline)
    arrange = {n.config.arrange.strategy: n for n in nodes_by_stage(graph)["arrange"]}
    assert [u.split("/")[0] for u in arrange["random"].upstream] == ["prepare"]
    assert [u.split("/")[0] for u in arrange["tma"].upstream] == ["prepare", "similarity"]
    # a random-order-only experiment plans no embedding work at all
    _, only_random = graph_of(pipeline, overrides=["arrange.strategy=random"])
    assert "embed" not in nodes_by_stage(only_random)


def test_key_changes_with_what_a_stage_reads_only(pipeline):
    _, base = graph_of(pipeline)
    _, lr = graph_of(pipeline, overrides=["train.lr=0.5"])
    keys = lambda g, s: sorted(n.key for n in nodes_by_stage(g)[s])  # noqa: E731
    for stage in ("prepare", "embed", "similarity", "arrange"):
        assert keys(base, stage) == keys(lr, stage)
    for stage in ("train", "evaluate", "aggregate"):
        assert not set(keys(base, stage)) & set(keys(lr, stage))
    # an upstream change reaches every node downstream through the upstream keys
    _, data = graph_of(pipeline, overrides=["data.value=7"])
    for stage in ("prepare", "embed", "similarity", "arrange", "train", "evaluate"):
        assert not set(keys(base, stage)) & set(keys(data, stage))
    # scheduler resources never change a key
    _, res = graph_of(pipeline, overrides=["train.resources.cpus=16", "cluster.partition=big"])
    for stage in ("train", "evaluate", "aggregate"):
        assert keys(base, stage) == keys(res, stage)


def test_graph_is_data(pipeline):
    exp, graph = graph_of(pipeline)
    data = graph.to_dict()
    assert data["totals"] == {"runs": 6, "nodes": 1 + 1 + 1 + 3 + 6 + 6 + 1,
                              "tasks": 1 + 2 + 1 + 3 + 6 + 18 + 1, "gpu_hours": 0.0, "disk_bytes": 0}
    ids = {n["id"] for n in data["nodes"]}
    assert all(u in ids and v in ids for u, v in data["edges"])
    position = {n["id"]: i for i, n in enumerate(data["nodes"])}
    assert all(position[u] < position[v] for u, v in data["edges"]), "nodes are in topological order"
    assert {r["name"] for r in data["runs"]} == {r.name for r in exp.runs}


def test_resources_precedence(pipeline):
    exp, graph = graph_of(pipeline, "config_with_resources.yaml")
    by = nodes_by_stage(graph)
    train = by["train"][0].resources
    prep = by["prepare"][0].resources
    assert (prep.partition, prep.cpus, prep.mem, prep.time, prep.gpus) == ("cpu", 2, 8192, 60, 0)
    assert (train.partition, train.cpus, train.nodes, train.tasks_per_node, train.gpus, train.time) == (
        "gpu", 2, 2, 4, 4, 1440)
    assert by["train"][0].gpu_hours() == 1 * 2 * 4 * 24.0


def test_equal_sections_share_a_node_however_they_were_written(pipeline, tmp_path):
    # "3" and 3 validate to equal, separate sections: nodes follow content, not objects
    (tmp_path / "eq.yaml").write_text("name: eq\noutput_dir: out\nmatrix:\n"
                                      "  zip:\n    - {train.seed: [1, 2], data.value: [3, '3']}\n")
    exp = load_experiment(tmp_path / "eq.yaml", pipeline, check_output=False)
    a, b = exp.runs
    assert a.config.data == b.config.data and a.config.data is not b.config.data
    by = nodes_by_stage(build_graph(exp, pipeline))
    assert len(by["prepare"]) == 1 and sorted(by["prepare"][0].runs) == sorted([a.id, b.id])
    assert len(by["train"]) == 2 and len(by["aggregate"]) == 1
