"""From runs to a graph of stage nodes, deduplicated by key.

A node's key hashes the stage's name and version, the config sections it reads (without
scheduler resources), the stage's input fingerprint and the keys of its upstream nodes. Runs that
agree on all of that share the node: five arrangements of one dataset embed it once. Local input
files enter by content, not by absolute path (``hpcgen.pipeline.fingerprint``), so a copied or
moved checkout has the same keys and finds its store complete.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hpcgen.config import Experiment, Run
from hpcgen.config.identity import short_hash
from hpcgen.config.schema import Cluster, Resources
from hpcgen.errors import ConfigError
from hpcgen.pipeline.registry import Pipeline
from hpcgen.pipeline.stage import Estimate, SectionView, Stage


@dataclass
class Node:
    stage: Stage
    key: str
    size: int
    config: SectionView
    resources: Resources
    upstream: list[str]  # node ids
    runs: list[str] = field(default_factory=list)
    estimate: Estimate = field(default_factory=Estimate)

    @property
    def id(self) -> str:
        return f"{self.stage.name}/{self.key}"

    def gpu_hours(self) -> float:
        if self.estimate.gpu_hours is not None:
            return self.estimate.gpu_hours
        r = self.resources
        return self.size * (r.nodes or 1) * (r.gpus or 0) * (r.time or 0) / 60.0


@dataclass
class Graph:
    nodes: dict[str, Node]  # topological order
    run_nodes: dict[str, dict[str, str]]  # run id -> stage -> node id
    experiment: Experiment

    def downstream(self, node_ids: set[str]) -> set[str]:
        out = set(node_ids)
        for node in self.nodes.values():
            if any(u in out for u in node.upstream):
                out.add(node.id)
        return out

    def until(self, stage: str) -> Graph:
        """The part of the graph that ``stage`` needs: its nodes and everything upstream of them."""
        keep = {n.id for n in self.nodes.values() if n.stage.name == stage}
        if not keep:
            stages = ", ".join(dict.fromkeys(n.stage.name for n in self.nodes.values()))
            raise ConfigError(f"no stage {stage!r} in this experiment's graph", key="--until",
                              fix=f"choose one of: {stages}")
        for node in reversed(list(self.nodes.values())):
            if node.id in keep:
                keep.update(node.upstream)
        return Graph(nodes={k: v for k, v in self.nodes.items() if k in keep},
                     run_nodes={r: {s: n for s, n in m.items() if n in keep} for r, m in self.run_nodes.items()},
                     experiment=self.experiment)

    def n_tasks(self) -> int:
        return sum(n.size for n in self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        """The graph as data: what ``plan --json`` prints and ``plan.json`` records."""
        runs = [
            {"id": r.id, "name": r.name, "label": r.label, "values": r.values, "nodes": self.run_nodes[r.id]}
            for r in self.experiment.runs
        ]
        nodes = []
        for n in self.nodes.values():
            nodes.append({
                "id": n.id, "stage": n.stage.name, "key": n.key, "array_size": n.size,
                "upstream": n.upstream, "runs": n.runs,
                "resources": n.resources.model_dump(exclude_none=True),
                "gpu_hours": round(n.gpu_hours(), 3), "disk_bytes": n.estimate.disk_bytes,
            })
        edges = [[u, n.id] for n in self.nodes.values() for u in n.upstream]
        return {
            "experiment": self.experiment.name,
            "file": str(self.experiment.file),
            "output_dir": str(self.experiment.output_dir),
            "runs": runs,
            "nodes": nodes,
            "edges": edges,
            "totals": {
                "runs": len(runs), "nodes": len(nodes), "tasks": self.n_tasks(),
                "gpu_hours": round(sum(n.gpu_hours() for n in self.nodes.values()), 3),
                "disk_bytes": sum(n.estimate.disk_bytes for n in self.nodes.values()),
            },
        }


@dataclass
class _FanIn:
    """The node of an experiment-scope stage for one config, gathered over every run that reaches
    it; it is made once all runs are known."""

    view: SectionView  # the config, as the first run to reach it has it
    texts: list[str]  # what its key hashes besides the upstream keys
    cluster: Resources
    upstream: set[str] = field(default_factory=set)  # node ids, over all its runs
    runs: list[str] = field(default_factory=list)


def run_cluster(run: Run) -> Cluster:
    """The ``cluster`` section of a run. The config of every run has one, whatever the pipeline's
    sections: a model made at run time (``hpcgen.config.schema.experiment_model``), so
    ``Run.config`` is typed as a BaseModel. (A plain isinstance: a runtime-checkable Protocol
    cost 0.6 s over the 12,000 nodes of a 10,800-run plan.)"""
    cluster = getattr(run.config, "cluster", None)
    assert isinstance(cluster, Cluster), "an experiment model always has a cluster section"
    return cluster


def _key(stage: Stage, texts: list[str], upstream_keys: list[str]) -> str:
    return short_hash("\n".join([stage.name, str(stage.version), *texts, "upstream:" + ",".join(upstream_keys)]),
                      "node")


def _texts(stage: Stage, run: Run, view: SectionView) -> list[str]:
    """The sections ``stage`` reads, as canonical JSON, and its input fingerprint."""
    return [f"{name}={run.sections[name].json}" for name in stage.sections_read()] + [
        f"input={line}" for line in stage.fingerprint(view)]


def build_graph(exp: Experiment, pipeline: Pipeline) -> Graph:
    nodes: dict[str, Node] = {}
    run_nodes: dict[str, dict[str, str]] = {}
    fan_in: dict[str, dict[tuple[str, ...], _FanIn]] = {}  # stage -> its sections' JSON -> entry
    order = {name: i for i, name in enumerate(pipeline.order)}
    # A node follows from its stage, the canonical JSON of the sections it reads and its upstream
    # nodes (its input fingerprint follows from the sections): runs that agree on them share it,
    # and its fingerprint and key are computed once.
    memo: dict[tuple[str, ...], str] = {}  # (stage, sections' JSON..., upstream node ids...) -> node id

    def _inherit(est: Estimate, ups: list[str]) -> Estimate:
        """A stage that does not say how many records it holds passes on its upstream's count."""
        if est.records is None:
            counts = [nodes[u].estimate.records for u in ups if nodes[u].estimate.records is not None]
            if counts:
                est = dataclasses.replace(est, records=counts[0])
        return est

    def _upstream_nodes(ups: list[str]) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for u in ups:
            out.setdefault(nodes[u].stage.name, []).append(nodes[u])
        return out

    for run in exp.runs:
        resolved: dict[str, str] = {}

        def resolve(stage: Stage, run: Run = run, resolved: dict[str, str] = resolved) -> str:
            if stage.name in resolved:
                return resolved[stage.name]
            view = SectionView(stage.name, {s: getattr(run.config, s) for s in stage.sections_read()})
            ups = [resolve(pipeline[u]) for u in stage.upstream_for(view)]
            sections = tuple(run.sections[s].json for s in stage.sections_read())
            if stage.scope == "experiment":
                # decided once all runs are known; remember what this run contributes
                group = fan_in.setdefault(stage.name, {})
                entry = group.get(sections)
                if entry is None:
                    entry = group[sections] = _FanIn(view, _texts(stage, run, view), run_cluster(run))
                entry.upstream.update(ups)
                entry.runs.append(run.id)
                resolved[stage.name] = f"{stage.name}/@pending"  # no stage depends on it: replaced below
                return resolved[stage.name]
            content = (stage.name, *sections, *ups)
            node_id = memo.get(content)
            if node_id is None:
                key = _key(stage, _texts(stage, run, view), [nodes[u].key for u in ups])
                node_id = f"{stage.name}/{key}"
                memo[content] = node_id
                if node_id not in nodes:
                    size = stage.plan(view, _upstream_nodes(ups))
                    nodes[node_id] = Node(
                        stage=stage, key=key, size=size, config=view, upstream=ups,
                        resources=stage.resources(view, run_cluster(run)),
                        estimate=_inherit(stage.estimate(view, size, _upstream_nodes(ups)), ups),
                    )
            nodes[node_id].runs.append(run.id)
            resolved[stage.name] = node_id
            return node_id

        for sink in pipeline.sinks():
            resolve(sink)
        run_nodes[run.id] = dict(resolved)

    # Fan-in stages: one node per distinct config, over every run that reached it.
    for stage_name in pipeline.order:
        stage = pipeline[stage_name]
        for entry in fan_in.get(stage_name, {}).values():
            ups = sorted(entry.upstream, key=lambda u: (order[u.split("/")[0]], u))
            key = _key(stage, entry.texts, [nodes[u].key for u in ups])
            size = stage.plan(entry.view, _upstream_nodes(ups))
            node = Node(stage=stage, key=key, size=size, config=entry.view, upstream=ups,
                        resources=stage.resources(entry.view, entry.cluster), runs=entry.runs,
                        estimate=stage.estimate(entry.view, size, _upstream_nodes(ups)))
            nodes[node.id] = node
            for run_id in entry.runs:
                run_nodes[run_id][stage_name] = node.id

    ordered = dict(sorted(nodes.items(), key=lambda kv: order[kv[1].stage.name]))
    return Graph(nodes=ordered, run_nodes=run_nodes, experiment=exp)
