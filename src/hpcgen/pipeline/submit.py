"""``submit``: from an experiment to queued (or finished) work, skipping what is complete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from hpcgen.config import Experiment
from hpcgen.errors import ConfigError
from hpcgen.pipeline.executors import executor_class, make_executor
from hpcgen.pipeline.executors.base import Batch, Executor, Submission, read_submission
from hpcgen.pipeline.graph import Graph, Node
from hpcgen.pipeline.registry import Pipeline
from hpcgen.pipeline.runner import TaskSpec
from hpcgen.pipeline.stage import Upstream
from hpcgen.pipeline.store import Store, file_lock, lock_holder, write_json


def check_inputs(exp: Experiment, graph: Graph) -> None:
    """Each stage's cheap input checks and the container image, before anything is written;
    errors point at their line. ``plan`` and ``submit`` both run them."""
    from hpcgen.pipeline.container import check_image

    container = exp.cluster.container
    name = exp.cluster.executor  # an executor that runs tasks in this process ignores images
    if container is not None and (name == "auto" or executor_class(name).own_processes):
        try:
            check_image(container)
        except ConfigError as err:
            raise exp.locate(err) from None
    for node in graph.nodes.values():
        try:
            node.stage.check(node.config)
            node.stage.check_resources(node.config, node.resources)
        except ConfigError as err:
            raise exp.locate(err) from None


def task_specs(graph: Graph, store: Store, node: Node) -> list[TaskSpec]:
    inputs: dict[str, list[Upstream]] = {}
    for up_id in node.upstream:
        up = graph.nodes[up_id]
        inputs.setdefault(up.stage.name, []).append(Upstream(
            stage=up.stage.name, key=up.key, dir=store.node_dir(up.stage.name, up.key), size=up.size,
            runs=tuple(up.runs)))
    mine = set(node.runs)
    names = {r.id: {"name": r.name, "values": r.values, "label": r.label} for r in graph.experiment.runs
             if r.id in mine}
    extra: dict[str, Any] = {"runs": names, "experiment": graph.experiment.name}
    if getattr(node.stage, "scope", "run") == "experiment":  # the report prints where its results came from
        from hpcgen.provenance import describe

        extra["provenance"] = describe(graph.experiment)
    runs, gpus = tuple(node.runs), node.resources.gpus or 0
    return [TaskSpec(stage=node.stage, key=node.key, index=i, size=node.size, store_root=str(store.root),
                     config=node.config, inputs=inputs, runs=runs, experiment=graph.experiment.name, extra=extra,
                     gpus=gpus)
            for i in range(node.size)]


@dataclass
class Todo:
    """What a submit found: per node, which task indices still need work."""

    pending: dict[str, list[int]]  # node id -> indices to run
    complete: dict[str, set[int]]
    in_flight: dict[str, str]  # task id -> job id, left alone


def survey(graph: Graph, store: Store, executor: Executor, forced: set[str] | frozenset[str] = frozenset()) -> Todo:
    """What is complete, what is queued or running, what is left to run. Nodes in ``forced``
    count as not complete (what a forced submit would run)."""
    pending: dict[str, list[int]] = {}
    complete: dict[str, set[int]] = {}
    records: dict[str, Submission] = {}
    for node in graph.nodes.values():
        listed = store.completed(node.stage.name, node.key) if node.id not in forced else set()
        done = {i for i in listed if i < node.size and store.is_complete(node.stage.name, node.key, i)}
        complete[node.id] = done
        pending[node.id] = [i for i in range(node.size) if i not in done]
        for i in pending[node.id]:
            rec = read_submission(store, node.stage.name, node.key, i)
            if rec and rec.executor == executor.name:
                records[f"{node.id}/{i:05d}"] = rec
    in_flight = executor.in_flight(records) if records else {}
    for node in graph.nodes.values():
        pending[node.id] = [i for i in pending[node.id] if f"{node.id}/{i:05d}" not in in_flight]
    return Todo(pending=pending, complete=complete, in_flight=in_flight)


def make_batches(graph: Graph, store: Store, todo: Todo) -> list[Batch]:
    batches: list[Batch] = []
    batch_of_task: dict[str, int] = {}
    by_group: dict[tuple[str, str, tuple[str, ...]], int] = {}  # (stage, resources, upstream) -> batch
    for node in graph.nodes.values():
        indices = todo.pending[node.id]
        if not indices:
            continue
        # one array per stage, resource shape and set of upstream nodes: a run's evaluation then
        # waits for its own training only, and a failed run cancels only its own dependents
        group = (node.stage.name, node.resources.model_dump_json(), tuple(sorted(node.upstream)))
        if group not in by_group:
            by_group[group] = len(batches)
            batches.append(Batch(stage=node.stage.name, resources=node.resources, specs=[]))
        b = by_group[group]
        batch = batches[b]
        specs = task_specs(graph, store, node)
        upstream_tasks = [
            f"{u}/{i:05d}" for u in node.upstream for i in range(graph.nodes[u].size)
        ]
        waiting_on = {t for t in upstream_tasks if t in batch_of_task}
        for t in upstream_tasks:
            if t in batch_of_task:
                batch.upstream_tasks.add(t)
                if batch_of_task[t] not in batch.after:
                    batch.after.append(batch_of_task[t])
            if t in todo.in_flight and todo.in_flight[t] not in batch.after_jobs:
                batch.after_jobs.append(todo.in_flight[t])
        for i in indices:
            spec = specs[i]
            batch.specs.append(spec)
            batch.deps[spec.id] = waiting_on
            batch_of_task[spec.id] = b
    return batches


def forced_nodes(graph: Graph, stages: list[str]) -> set[str]:
    """The nodes of the named stages and everything downstream of them in this graph."""
    from hpcgen.pipeline.status import stage_list

    known = {n.stage.name for n in graph.nodes.values()}
    for stage in stages:
        if stage not in known:
            raise ConfigError(f"no stage {stage!r} in this experiment's graph", key="--force",
                              fix=f"choose one of: {stage_list(graph)}")
    return graph.downstream({n.id for n in graph.nodes.values() if n.stage.name in stages})


def apply_force(graph: Graph, store: Store, forced: set[str]) -> list[str]:
    """Reset every task of the ``forced`` nodes so that each starts from nothing: no marker, no
    resumable state. Returns the tasks left alone because they are running."""
    busy = []
    for node_id in sorted(forced):
        node = graph.nodes[node_id]
        for i in range(node.size):
            if not store.reset(node.stage.name, node.key, i):
                busy.append(f"{node_id}/{i:05d}")
    return busy


def submit(exp: Experiment, pipeline: Pipeline, graph: Graph, *, executor_name: str | None = None,
           force: list[str] | None = None, dry_run: bool = False, console: Console | None = None) -> int:
    console = console or Console(stderr=True)
    store = Store(exp.store)
    executor = make_executor(executor_name or exp.cluster.executor, exp, store, console)
    executor.check()
    check_inputs(exp, graph)
    if force:  # either spelling of a stage: its name (evaluate) or its config section's (eval)
        force = list(dict.fromkeys(pipeline.canonical(s) for s in force))
    forced = forced_nodes(graph, force) if force else set()
    if dry_run:
        todo = survey(graph, store, executor, forced)
        _describe(console, graph, todo, executor.name, dry_run=True, force=force)
        return 0
    lock = exp.dir / "submit.lock"
    with file_lock(lock, blocking=False) as held:
        if not held:
            console.print(f"[yellow]another submit of {exp.name!r} is running ({lock_holder(lock)}); "
                          "waiting for it to finish[/]")
    with file_lock(lock):
        for node in graph.nodes.values():
            node_json = store.node_dir(node.stage.name, node.key) / "node.json"
            if not node_json.exists():
                write_json(node_json, {
                    "stage": node.stage.name, "key": node.key, "stage_version": node.stage.version,
                    "array_size": node.size, "config": node.config.dump(),
                    "upstream": [graph.nodes[u].key for u in node.upstream],
                })
        write_json(exp.dir / "plan.json", graph.to_dict())
        if force:
            for task_id in apply_force(graph, store, forced):
                console.print(f"[yellow]{task_id} is running now: --force leaves it alone "
                              "(cancel it first to recompute it)[/]")
        todo = survey(graph, store, executor)
        _describe(console, graph, todo, executor.name, dry_run=False, force=force)
        batches = make_batches(graph, store, todo)
        code = executor.submit(batches) if batches else 0
    queued = set()
    if executor.detached and code == 0:  # queued now or by an earlier submit, still in the queue
        queued = {spec.id for batch in batches for spec in batch.specs} | set(todo.in_flight)
    _say_report(console, graph, store, queued)
    return code


def report_paths(graph: Graph, store: Store) -> list[tuple[Node, Path]]:
    """Each aggregate node of the graph (the stage over the whole experiment) with where its
    report is: ``report/report.html`` in its node directory of the store, or the directory
    itself for an aggregate stage that writes no such report."""
    out = []
    for node in graph.nodes.values():
        if getattr(node.stage, "scope", "run") != "experiment":
            continue
        base = store.node_dir(node.stage.name, node.key)
        html = base / "report" / "report.html"
        out.append((node, html if html.is_file() or not store.is_complete(node.stage.name, node.key, 0) else base))
    return out


def _say_report(console: Console, graph: Graph, store: Store, queued: set[str]) -> None:
    """The last line of a submit: where the report is ("report: PATH") once its node is complete,
    or where it will be ("report (when done): PATH") while a scheduler has its tasks queued."""
    for node, path in report_paths(graph, store):
        tasks = [f"{node.id}/{i:05d}" for i in range(node.size)]
        if all(store.is_complete(node.stage.name, node.key, i) for i in range(node.size)):
            console.print(f"report: {path}", highlight=False, markup=False)
        elif any(t in queued for t in tasks):
            console.print(f"report (when done): {path}", highlight=False, markup=False)


def _describe(console: Console, graph: Graph, todo: Todo, executor: str, *, dry_run: bool,
              force: list[str] | None) -> None:
    n_done = sum(len(v) for v in todo.complete.values())
    n_todo = sum(len(v) for v in todo.pending.values())
    verb = "would run" if dry_run else "to run"
    console.print(
        f"[bold]{graph.experiment.name}[/]: {_n(len(graph.experiment.runs), 'run')}, "
        f"{_n(len(graph.nodes), 'stage node')}, {_n(graph.n_tasks(), 'task')}: "
        f"{n_done} complete, {len(todo.in_flight)} already queued, "
        f"{n_todo} {verb} ({executor} executor)"
        + (f"; forced: {', '.join(force)}" if force else "")
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
