"""``status``, ``cancel`` and ``logs``: read markers and records, ask Slurm once."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcgen.errors import ConfigError, SubmitError
from hpcgen.pipeline.graph import Graph
from hpcgen.pipeline.store import Store, read_json

if TYPE_CHECKING:
    from hpcgen.config import Run
    from hpcgen.pipeline.registry import Pipeline

STATES = ("done", "running", "pending", "failed", "cancelled", "missing")
_SLURM_TO_STATE = {
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "CONFIGURING": "running", "SUSPENDED": "running",
    "SIGNALING": "running", "STAGE_OUT": "running", "RESIZING": "running", "PREEMPTED": "pending",
    "FAILED": "failed", "TIMEOUT": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "failed", "CANCELLED": "cancelled",
    "COMPLETED": "missing",  # the job ended well but left no marker: outputs were removed since
    "PREEMPTED_REQUEUE": "pending",
}


@dataclass
class TaskState:
    id: str
    state: str
    job_id: str | None = None
    detail: str = ""
    recorded_failure: bool = False  # the task itself wrote down that it failed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def task_states(graph: Graph, store: Store) -> list[TaskState]:
    """The state of every task of the graph.

    Markers say what is done. For the rest, ONE ``squeue`` call says what is still queued or
    running; only tasks that left the queue with neither a marker nor a recorded failure need
    ``sacct`` (one more call) to name how they ended (cancelled, timed out, out of memory).
    """
    out: list[TaskState] = []
    slurm: dict[str, dict] = {}  # task id -> submission record, for tasks not known done or failed
    for node in graph.nodes.values():
        done = store.completed(node.stage.name, node.key)
        for i in range(node.size):
            tid = f"{node.id}/{i:05d}"
            if i in done:
                out.append(TaskState(tid, "done"))
                continue
            sub = read_json(store.submission(node.stage.name, node.key, i)) or {}
            att = read_json(store.attempt(node.stage.name, node.key, i)) or {}
            if sub and att and sub.get("submitted", "") > att.get("started", ""):
                att = {}  # resubmitted since that attempt: the new submission decides
            if sub.get("executor") == "slurm":
                state = TaskState(tid, "?", sub["job_id"], att.get("error", ""),
                                  recorded_failure=att.get("state") == "failed")
                slurm[tid] = sub
            elif att.get("state") == "failed":
                state = TaskState(tid, "failed", sub.get("job_id"), att.get("error", ""))
            elif att.get("state") == "running":
                alive = att.get("host") != socket.gethostname() or _pid_alive(int(att.get("pid", 0)))
                state = TaskState(tid, "running" if alive else "failed", sub.get("job_id"),
                                  "" if alive else "its process is gone")
            elif sub:
                state = TaskState(tid, "pending" if _local_submit_alive(graph) else "missing",
                                  sub.get("job_id"))
            else:
                state = TaskState(tid, "missing")
            out.append(state)
    if slurm:
        from hpcgen.pipeline.executors.slurm import final_states, live_states, local_time

        live = live_states(sorted({s["job_id"] for s in slurm.values()}))
        pending_final = {}
        for state in out:
            if state.state != "?":
                continue
            raw = live.get(state.job_id or "")
            if raw is not None:
                state.state, state.detail = _SLURM_TO_STATE.get(raw, "running"), raw
            elif state.recorded_failure:
                state.state = "failed"
            else:
                pending_final[state.job_id] = local_time(slurm[state.id]["submitted"])
        final = final_states(pending_final) if pending_final else {}
        for state in out:
            if state.state == "?":
                raw = final.get(state.job_id or "")
                state.state = _SLURM_TO_STATE.get(raw or "", "failed")
                state.detail = raw or "left the queue without finishing"
    return out


def _local_submit_alive(graph: Graph) -> bool:
    rec = read_json(graph.experiment.dir / "local.json")
    return bool(rec) and rec.get("host") == socket.gethostname() and _pid_alive(int(rec.get("pid", 0)))


def summarize(graph: Graph, states: list[TaskState]) -> dict[str, Counter]:
    per_stage: dict[str, Counter] = {}
    for node in graph.nodes.values():
        per_stage.setdefault(node.stage.name, Counter())
    for s in states:
        per_stage[s.id.split("/")[0]][s.state] += 1
    return per_stage


def cancel(graph: Graph, store: Store) -> tuple[int, str]:
    """Cancel this experiment's queued or running work; returns (count, how)."""
    states = task_states(graph, store)
    live = [s for s in states if s.state in ("pending", "running") and s.job_id and _is_slurm(store, s)]
    slurm_ids = sorted({s.job_id for s in live})
    count = 0
    if slurm_ids:
        res = subprocess.run(["scancel", *slurm_ids], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise SubmitError(f"scancel failed: {res.stderr.strip()}")
        count += len(live)
    rec = read_json(graph.experiment.dir / "local.json")
    if rec and rec.get("host") == socket.gethostname() and _pid_alive(int(rec.get("pid", 0))):
        os.kill(int(rec["pid"]), signal.SIGTERM)
        count += sum(1 for s in states if s.state in ("pending", "running"))
        return count, f"stopped the local submit (pid {rec['pid']})"
    return count, "scancel" if slurm_ids else "nothing to cancel"


def _is_slurm(store: Store, state: TaskState) -> bool:
    stage, key, index = state.id.split("/")
    sub = read_json(store.submission(stage, key, int(index))) or {}
    return sub.get("executor") == "slurm"


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
    sub = read_json(store.submission(stage, key, index)) or {}
    return [Path(p) for p in (sub.get("stdout"), sub.get("stderr")) if p]
