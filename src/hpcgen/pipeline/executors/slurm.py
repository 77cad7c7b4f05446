"""Slurm executor: one sbatch array per stage (and resource shape), submitted up front.

Each array waits on its upstream arrays with ``afterok`` and ``--kill-on-invalid-dep=yes``, so
a failed upstream task cancels its dependents instead of leaving them pending forever. Arrays
larger than the cluster's MaxArraySize are split. ``submit`` returns once everything is queued.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string  # what submitit itself renders

from hpcgen.config.schema import Resources, signal_delay
from hpcgen.errors import ConfigError, SubmitError
from hpcgen.pipeline.executors.base import Batch, Executor, thread_setup
from hpcgen.pipeline.runner import TaskRunner
from hpcgen.pipeline.store import now, write_json

#: Slurm states in which a job may still run (anything else is final)
ACTIVE_STATES = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED",
}


def sbatch_parameters(resources: Resources, *, job_name: str, dependency: list[str],
                      signal_delay_s: int) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one array (plain data, easy to pin in a test)."""
    r = resources
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": r.time,
        "nodes": r.nodes or 1,
        "ntasks_per_node": r.tasks_per_node or 1,
        "cpus_per_task": r.cpus or 1,
        "signal_delay_s": signal_delay_s,
        "array_parallelism": r.array_parallelism or 256,
    }
    if r.gpus:
        params["gpus_per_node"] = r.gpus
    if r.mem:
        params["mem"] = f"{r.mem}M"
    for key in ("partition", "account", "qos"):
        if getattr(r, key):
            params[key] = getattr(r, key)
    if dependency:
        params["dependency"] = "afterok:" + ":".join(dependency)
    params["setup"] = thread_setup("${SLURM_CPUS_PER_TASK:-1}")
    # srun does not inherit sbatch's --cpus-per-task on Slurm 22.05-23.02 (each rank then gets one
    # core): pass it to srun as well
    params["srun_args"] = [f"--cpus-per-task={r.cpus or 1}"]
    extra = {"kill-on-invalid-dep": "yes"}
    extra.update(r.sbatch)
    params["additional_parameters"] = extra
    return params


def render_script(params: dict[str, Any], folder: Path, n_tasks: int, python: str | None = None) -> str:
    """The sbatch script submitit writes for these parameters (what ``plan --sbatch`` shows)."""
    python = python or shlex.quote(sys.executable)  # what submitit uses by default
    command = f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    params = dict(params)
    if n_tasks > 1:
        params["map_count"] = n_tasks
    return _make_sbatch_string(command=command, folder=folder, **params)


def per_task_dependency(batch: Batch, array_ids: list[list[str]], tasks_of: dict[str, set[str]],
                        job_of: dict[str, str]) -> list[str]:
    """``afterok`` ids for exactly the upstream tasks ``batch`` needs: a whole upstream array where
    it needs every task of it, else the array elements it needs (``ARRAY_INDEX``)."""
    needed = set(batch.upstream_tasks)
    out: list[str] = []
    for b in batch.after:
        for array in array_ids[b]:
            tasks = tasks_of[array]
            if tasks <= needed:
                out.append(array)
                needed -= tasks
    out += sorted(job_of[t] for t in needed if t in job_of)
    return out


def max_array_size() -> int:
    """The cluster's MaxArraySize (largest index + 1), from one ``scontrol show config``."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubmitError(f"cannot reach Slurm: scontrol failed ({exc})") from None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(m.group(1)) if m else 1001


def _expand_ids(job_id: str) -> list[str]:
    """'12_[1-3,7%2]' -> ['12_1', '12_2', '12_3', '12_7']; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubmitError(f"cannot reach Slurm: {cmd[0]} failed ({exc})") from None


def live_states(job_ids: list[str]) -> dict[str, str]:
    """States of the jobs still known to the controller, from ONE ``squeue`` call.

    The controller is the authority on live jobs (the accounting database lags, and after a
    controller restart may hold older jobs with the same ids). Ids that left the queue are absent.
    """
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)])
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():  # exit code 1 when none of the ids is known any more
        if "|" in line:
            jid, state = line.split("|", 1)
            for one in _expand_ids(jid.strip()):
                states[one] = state.strip()
    return {j: states[j] for j in job_ids if j in states}


def final_states(submitted: dict[str, datetime]) -> dict[str, str]:
    """Final states of finished jobs from ONE ``sacct`` call.

    ``submitted`` maps job id to when we submitted it: accounting records older than that
    belong to an earlier job that had the same id, and are ignored.
    """
    if not submitted:
        return {}
    arrays = sorted({j.split("_")[0] for j in submitted})
    since = min(submitted.values()) - timedelta(minutes=5)
    out = _run(["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State,Submit", "-S", since.strftime("%Y-%m-%dT%H:%M:%S"),
                "-j", ",".join(arrays)])
    if out.returncode != 0:
        raise SubmitError(f"sacct failed: {out.stderr.strip() or out.stdout.strip()}")
    best: dict[str, tuple[datetime, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 3:
            continue
        try:
            when = datetime.fromisoformat(parts[2])
        except ValueError:
            continue
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"
        for one in _expand_ids(parts[0].strip()):
            if one in submitted and when >= submitted[one] - timedelta(minutes=2):
                if one not in best or when >= best[one][0]:
                    best[one] = (when, state)
    return {j: v[1] for j, v in best.items()}


def local_time(iso: str) -> datetime:
    """A recorded UTC timestamp as the naive local time Slurm prints."""
    return datetime.fromisoformat(iso).astimezone().replace(tzinfo=None)


class SlurmExecutor(Executor):
    name = "slurm"

    def check(self) -> None:
        super().check()
        for tool in ("sbatch", "squeue", "sacct", "scontrol"):
            if not shutil.which(tool):
                raise ConfigError(f"the slurm executor needs {tool!r} on PATH", key="cluster.executor",
                                  file=str(self.exp.file), fix="run on a Slurm login node or use executor: local")

    def in_flight(self, records: dict[str, dict]) -> dict[str, str]:
        ids = {task: rec["job_id"] for task, rec in records.items() if rec.get("job_id")}
        states = live_states(sorted(set(ids.values())))
        return {task: jid for task, jid in ids.items() if states.get(jid) in ACTIVE_STATES}

    def launch(self, batches: list[Batch]) -> int:
        cluster = self.exp.cluster
        limit = max_array_size() - 1
        if cluster.max_array_size:
            limit = min(limit, cluster.max_array_size)
        array_ids: list[list[str]] = []
        job_of: dict[str, str] = {}  # task id -> its array element, 'ARRAY_INDEX'
        tasks_of: dict[str, set[str]] = {}  # array job id -> its task ids
        n_jobs = 0
        for batch in batches:
            dependency = list(batch.after_jobs) + per_task_dependency(batch, array_ids, tasks_of, job_of)
            folder = self.log_dir(batch.stage)
            ex = submitit.SlurmExecutor(folder=folder, python=self.python(batch.resources),
                                        max_num_timeout=cluster.max_requeues)
            ex.update_parameters(**sbatch_parameters(
                batch.resources, job_name=f"{self.exp.name}.{batch.stage}", dependency=dependency,
                signal_delay_s=signal_delay(batch.resources)))
            self.stamp(batch.specs)
            ids: list[str] = []
            for start in range(0, len(batch.specs), limit):
                chunk = batch.specs[start:start + limit]
                try:
                    jobs = ex.submit_array([TaskRunner(spec) for spec in chunk])  # one sbatch call per chunk
                except Exception as exc:
                    raise SubmitError(f"sbatch refused the {batch.stage} array: {exc}") from None
                ids.append(jobs[0].job_id.split("_")[0])
                tasks_of[ids[-1]] = {spec.id for spec in chunk}
                for spec, job in zip(chunk, jobs):
                    job_of[spec.id] = job.job_id
                    write_json(self.store.submission(spec.stage.name, spec.key, spec.index), {
                        "executor": self.name, "job_id": job.job_id, "experiment": self.exp.name,
                        "submitted": now(), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                    })
                n_jobs += len(chunk)
            array_ids.append(ids)
            after = f" after {','.join(dependency)}" if dependency else ""
            self.console.print(f"queued {batch.stage}: {len(batch.specs)} task(s) as job(s) "
                               f"{','.join(ids)}{after}", highlight=False)
        self.console.print(f"[green]submitted {n_jobs} task(s) in {sum(map(len, array_ids))} array(s)[/]; "
                           f"follow with: hpcgen status {self.exp.file}")
        return 0
