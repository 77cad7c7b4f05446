"""``status``, ``cancel`` and ``logs``: read markers and records, ask each executor once.

Markers say what is done. Every other task that was submitted has a submission record naming
its executor; each executor named answers for all of its tasks at once, in one batched query of
its scheduler (see ``SlurmExecutor.states``). Nothing here knows a scheduler.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcgen.errors import ConfigError
from hpcgen.pipeline.executors import executor_class
from hpcgen.pipeline.executors.base import DONE, UNKNOWN, Executor, JobState, Submission, attempt_state, read_submission
from hpcgen.pipeline.graph import Graph
from hpcgen.pipeline.store import Store, read_json

if TYPE_CHECKING:
    from hpcgen.config import Run
    from hpcgen.pipeline.registry import Pipeline

STATES = ("done", "running", "pending", "failed", "cancelled", "missing")
#: what ``status`` shows for an executor's states that are not its own columns: a job that ended
#: well without a marker (its outputs were removed since), or one its executor cannot tell about
_SHOWN = {DONE: "missing", UNKNOWN: "missing"}


@dataclass
class TaskState:
    id: str
    state: str
    job_id: str | None = None
    detail: str = ""


@dataclass
class _Submitted:
    """The tasks of a graph that are not done and were submitted, by the executor that did it."""

    records: dict[str, dict[str, Submission]]  # executor name -> task id -> its record
    attempts: dict[str, dict[str, Any]]  # task id -> its attempt record, where newer than its submission


def _survey(graph: Graph, store: Store) -> tuple[list[TaskState], _Submitted]:
    """Every task's state as far as markers and attempt records tell, and what the executors
    must be asked about."""
    out: list[TaskState] = []
    submitted = _Submitted({}, {})
    for node in graph.nodes.values():
        done = store.completed(node.stage.name, node.key)
        for i in range(node.size):
            tid = f"{node.id}/{i:05d}"
            if i in done:
                out.append(TaskState(tid, "done"))
                continue
            sub = read_submission(store, node.stage.name, node.key, i)
            att = read_json(store.attempt(node.stage.name, node.key, i)) or {}
            if sub and att and sub.submitted > att.get("started", ""):
                att = {}  # resubmitted since that attempt: the new submission decides
            if sub is None:  # never submitted (the debug executor writes no records): its attempt tells
                found = attempt_state(att) or JobState(UNKNOWN)
                out.append(TaskState(tid, _SHOWN.get(found.state, found.state), None, found.detail))
                continue
            out.append(TaskState(tid, "missing", sub.job_id))
            submitted.records.setdefault(sub.executor, {})[tid] = sub
            submitted.attempts[tid] = att
    return out, submitted


def _executors(graph: Graph, store: Store, submitted: _Submitted) -> list[tuple[Executor, dict[str, Submission]]]:
    """Each executor the records name, with its records. A name no executor is registered under
    (a record of another hpcgen) is answered from the tasks' attempt records alone."""
    out = []
    for name, records in submitted.records.items():
        try:
            cls = executor_class(name)
        except ConfigError:  # the base class's answers, from the attempt records alone
            from hpcgen.pipeline.executors.debug import DebugExecutor as cls
        out.append((cls(graph.experiment, store), records))
    return out


def task_states(graph: Graph, store: Store) -> list[TaskState]:
    """The state of every task of the graph: markers, then each executor that the submission
    records name, asked once about all of its tasks."""
    out, submitted = _survey(graph, store)
    found: dict[str, JobState] = {}
    for executor, records in _executors(graph, store, submitted):
        found.update(executor.states(records, submitted.attempts))
    for state in out:
        if state.id in found:
            job = found[state.id]
            state.state, state.detail = _SHOWN.get(job.state, job.state), job.detail
    return out


def summarize(graph: Graph, states: list[TaskState]) -> dict[str, Counter[str]]:
    per_stage: dict[str, Counter[str]] = {}
    for node in graph.nodes.values():
        per_stage.setdefault(node.stage.name, Counter())
    for s in states:
        per_stage[s.id.split("/")[0]][s.state] += 1
    return per_stage


def cancel(graph: Graph, store: Store) -> tuple[int, str]:
    """Cancel this experiment's queued or running work: each executor the records name cancels
    its own tasks. Returns (count, how)."""
    _, submitted = _survey(graph, store)
    count, hows = 0, []
    for executor, records in _executors(graph, store, submitted):
        n, how = executor.cancel(records, submitted.attempts)
        count += n
        if how:
            hows.append(how)
    return count, "; ".join(hows) or "nothing to cancel"


def stage_list(graph: Graph) -> str:
    """The graph's stages, each with its other spelling (the config section) where that differs:
    ``prepare (data), embed, ..., evaluate (eval)``."""
    out: dict[str, str] = {}
    for node in graph.nodes.values():
        s = node.stage
        out.setdefault(s.name, f"{s.name} ({s.section})" if s.section and s.section != s.name else s.name)
    return ", ".join(out.values())


def canonical_stage(graph: Graph, name: str, pipeline: Pipeline | None = None) -> str:
    """The stage ``name`` means, by its own name or its config section's (``eval``: ``evaluate``);
    unknown names come back unchanged."""
    if pipeline is not None:
        return pipeline.canonical(name)
    for node in graph.nodes.values():
        if name in (node.stage.name, node.stage.section):
            return node.stage.name
    return name


def match_runs(runs: list[Run], ref: str) -> list[Run]:
    """The runs ``ref`` names: its full name, its label or its id, else a prefix of its name or id."""
    exact = [r for r in runs if ref in (r.name, r.id) or (r.label is not None and ref == r.label)]
    return exact or [r for r in runs if r.name.startswith(ref) or r.id.startswith(ref)]


def _run_ref(stage: str, run: Run, runs: list[Run]) -> str:
    """``STAGE@NAME`` (``STAGE@ID`` where the name is not unique), quoted for a shell where needed."""
    unique = sum(1 for r in runs if r.name == run.name) == 1
    return shlex.quote(f"{stage}@{run.name if unique else run.id}")


def _listed(items: list[str], limit: int = 8) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def find_task(graph: Graph, ref: str, pipeline: Pipeline | None = None) -> tuple[str, str, int]:
    """STAGE[/KEYPREFIX][/INDEX] or STAGE@RUN[/INDEX]: 'embed', 'embed/3f2a/2', 'train@tma', 'eval@seed=1/3'.

    STAGE is a stage's name or its config section's (``evaluate`` or ``eval``); RUN is a run's full
    name, its label, its id, or a prefix of its name or id that picks one node of STAGE."""
    runs = graph.experiment.runs
    head = ref.split("/", 1)[0]
    run_ref = None
    if "@" in head:  # a run's name or label may itself hold "/" (labels read "a / b")
        stage, run_ref = ref.split("@", 1)
        key_prefix, index = "", 0
        tail = re.fullmatch(r"(.*?)\s*/\s*(\d+)", run_ref)
        if tail and not match_runs(runs, run_ref) and tail.group(1):
            run_ref, index = tail.group(1), int(tail.group(2))
    else:
        stage, _, rest = ref.partition("/")
        parts = [p for p in rest.split("/") if p]
        key_prefix = parts[0] if parts and not parts[0].isdigit() else ""
        index = int(parts[-1]) if parts and parts[-1].isdigit() else 0
    stage = canonical_stage(graph, stage, pipeline)
    stage_nodes = [n for n in graph.nodes.values() if n.stage.name == stage]
    if not stage_nodes:
        raise ConfigError(f"no stage {stage!r} in this experiment's graph ({ref!r})", key="TASK",
                          fix=f"write STAGE[/KEY][/INDEX] or STAGE@RUN; stages: {stage_list(graph)}")
    nodes = [n for n in stage_nodes if n.key.startswith(key_prefix)]
    if run_ref is not None:
        matched = match_runs(runs, run_ref)
        if not matched:
            raise ConfigError(f"no run matches {run_ref!r} ({ref!r})", key="TASK",
                              fix="write STAGE@RUN with a run's name, label, id or a prefix of one; runs: "
                                  + _listed([_run_ref(stage, r, runs) for r in runs]))
        ids = {r.id for r in matched}
        nodes = [n for n in nodes if ids & set(n.runs)]
        if len(nodes) > 1:
            choices = [_run_ref(stage, r, runs) for r in matched]
            raise ConfigError(f"{run_ref!r} matches {len(matched)} runs ({ref!r}): {_listed(choices)}",
                              key="TASK", fix="write more of the run's name")
    if not nodes:
        raise ConfigError(f"no task matches {ref!r}", key="TASK",
                          fix=f"write STAGE[/KEY][/INDEX] or STAGE@RUN; stages: {stage_list(graph)}")
    if len(nodes) > 1:
        by_id = {r.id: r for r in runs}
        choices = []
        for n in nodes:
            first = next((by_id[r] for r in n.runs if r in by_id), None)
            choices.append(_run_ref(stage, first, runs) + f" ({n.key[:8]})" if first else f"{stage}/{n.key[:8]}")
        raise ConfigError(f"{ref!r} matches {len(nodes)} nodes: {_listed(choices)}", key="TASK",
                          fix="add a run (STAGE@RUN) or a key prefix (STAGE/KEY)")
    node = nodes[0]
    if index >= node.size:
        raise ConfigError(f"{node.id} has {node.size} task(s); index {index} is out of range", key="TASK")
    return node.stage.name, node.key, index


def log_paths(store: Store, stage: str, key: str, index: int) -> list[Path]:
    sub = read_submission(store, stage, key, index)
    return [Path(p) for p in (sub.stdout, sub.stderr) if p] if sub else []
