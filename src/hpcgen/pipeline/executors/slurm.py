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
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import read_job_id  # public (no underscore): submitit's own id parser

from hpcgen.config.schema import Resources, signal_delay
from hpcgen.errors import ConfigError, SubmitError
from hpcgen.pipeline.executors.base import (
    ACTIVE,
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    Batch,
    Executor,
    JobState,
    Submission,
    thread_setup,
)
from hpcgen.pipeline.runner import TaskRunner

#: THE table of Slurm's job states (squeue(1) and sacct(1), "JOB STATE CODES") -> hpcgen's.
#: ``status``, ``submit`` (what is in flight) and ``cancel`` all read it, through ``slurm_state``.
SLURM_STATES: dict[str, str] = {
    "PENDING": PENDING,  # awaiting resource allocation
    "REQUEUED": PENDING,  # completing job being requeued
    "REQUEUE_HOLD": PENDING,  # held job being requeued
    "REQUEUE_FED": PENDING,  # being requeued by a federation
    "RESV_DEL_HOLD": PENDING,  # held after its reservation was deleted
    "SPECIAL_EXIT": PENDING,  # requeued in a special (held) state
    "PREEMPTED": PENDING,  # terminated by preemption; requeued where PreemptMode=REQUEUE (as submitit expects)
    "PREEMPTED_REQUEUE": PENDING,  # not in Slurm 22.05's man pages: a preempted job on its way back to the queue
    "RUNNING": RUNNING,
    "CONFIGURING": RUNNING,  # allocated, nodes booting
    "COMPLETING": RUNNING,  # some processes still active
    "RESIZING": RUNNING,
    "SIGNALING": RUNNING,
    "STAGE_OUT": RUNNING,
    "SUSPENDED": RUNNING,  # keeps its allocation, released cores
    "STOPPED": RUNNING,  # keeps its allocation and cores
    "COMPLETED": DONE,
    "FAILED": FAILED,
    "TIMEOUT": FAILED,
    "OUT_OF_MEMORY": FAILED,
    "NODE_FAIL": FAILED,
    "BOOT_FAIL": FAILED,
    "DEADLINE": FAILED,
    "CANCELLED": CANCELLED,  # sacct writes "CANCELLED by UID"
    "REVOKED": CANCELLED,  # a federation sibling removed: it runs on another cluster
}


def slurm_state(raw: str, *, live: bool) -> str:
    """hpcgen's state for a Slurm state (its first word: ``CANCELLED by 0`` is CANCELLED).

    A state not in :data:`SLURM_STATES` (a newer Slurm's, ``UNKNOWN``) never fails: it is RUNNING
    while ``squeue`` still lists the job (the controller holds it, so it is in flight and not
    submitted twice), and FAILED once the job has left the queue (it ended without completing)."""
    words = raw.split()
    state = SLURM_STATES.get(words[0] if words else "")
    if state is None:
        return RUNNING if live else FAILED
    return state


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
    extra: dict[str, bool | int | float | str] = {"kill-on-invalid-dep": "yes"}
    extra.update(r.sbatch)
    params["additional_parameters"] = extra
    return params


def render_script(params: dict[str, Any], folder: Path, n_tasks: int, python: str | None = None) -> str:
    """The sbatch script submitit writes for these parameters (what ``plan --sbatch`` shows).

    The ONE private use of submitit in hpcgen: submitit has no public way to render a script
    without submitting it, and its ``SlurmExecutor`` cannot even be built where ``srun`` is not on
    PATH (``plan`` runs anywhere). ``_make_sbatch_string`` is what ``SlurmExecutor`` itself calls
    for every job (through ``_make_submission_file_text``); written against submitit 1.5.4
    (pyproject: ``submitit>=1.5``). Should it be renamed or change its arguments, ``plan --sbatch``
    fails with an ImportError or TypeError here, and submissions are unaffected;
    tests/pipeline/test_sbatch_golden.py pins the script, and tests/pipeline/test_slurm_contract.py
    that it is byte for byte what submitit hands to ``sbatch``."""
    from submitit.slurm.slurm import _make_sbatch_string  # private: see above

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


def expand_job_id(job_id: str) -> list[str]:
    """``12_[1-3,7%2]`` -> ``12_1, 12_2, 12_3, 12_7`` (a pending array as squeue or sacct print
    it), through submitit's parser; any other id unchanged."""
    try:
        parts = read_job_id(job_id)
    except ValueError:  # not an id submitit understands (a step, a heterogeneous job): as it is
        return [job_id]
    out: list[str] = []
    for main, *indices in parts:
        if indices:
            out += [f"{main}_{i}" for i in range(int(indices[0]), int(indices[-1]) + 1)]
        else:
            out.append(main)
    return out


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
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
            for one in expand_job_id(jid.strip()):
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
        for one in expand_job_id(parts[0].strip()):
            if one in submitted and when >= submitted[one] - timedelta(minutes=2):
                if one not in best or when >= best[one][0]:
                    best[one] = (when, state)
    return {j: v[1] for j, v in best.items()}


def local_time(iso: str) -> datetime:
    """A recorded UTC timestamp as the naive local time Slurm prints."""
    return datetime.fromisoformat(iso).astimezone().replace(tzinfo=None)


class SlurmExecutor(Executor):
    name = "slurm"
    detached = True

    @classmethod
    def available(cls) -> bool:
        """``auto``: Slurm where ``sbatch`` is on PATH. Where it is but no controller answers (a
        login node whose controller is down or unreachable), refuse: running a whole study on a
        login node is never what ``auto`` should mean."""
        if not shutil.which("sbatch"):
            return False
        reason = None
        if not shutil.which("scontrol"):
            reason = "scontrol is not, so the controller cannot be asked"
        else:
            try:
                ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
                if ping.returncode == 0 and "UP" in ping.stdout:
                    return True
                said = (ping.stdout + ping.stderr).strip().splitlines()
                first = said[0] if said else f"exit {ping.returncode}"
                reason = f"no Slurm controller answers (scontrol ping: {first})"
            except subprocess.TimeoutExpired:
                reason = "no Slurm controller answers (scontrol ping timed out after 15 s)"
            except OSError as exc:
                reason = f"scontrol could not run ({exc})"
        raise ConfigError(f"executor auto: sbatch is on PATH but {reason}", key="cluster.executor",
                          fix="pass --executor local to run on this machine, or --executor slurm once the "
                              "controller answers")

    def check(self) -> None:
        super().check()
        for tool in ("sbatch", "squeue", "sacct", "scontrol"):
            if not shutil.which(tool):
                raise ConfigError(f"the slurm executor needs {tool!r} on PATH", key="cluster.executor",
                                  file=str(self.exp.file), fix="run on a Slurm login node or use executor: local")

    def _live(self, records: Mapping[str, Submission]) -> dict[str, str]:
        """Task id -> hpcgen's state, for the tasks the controller still lists (ONE squeue)."""
        raw = live_states(sorted({r.job_id for r in records.values() if r.job_id}))
        return {task: raw[r.job_id] for task, r in records.items() if r.job_id in raw}

    def in_flight(self, records: Mapping[str, Submission]) -> dict[str, str]:
        live = self._live(records)
        return {task: records[task].job_id for task, raw in live.items() if slurm_state(raw, live=True) in ACTIVE}

    def states(self, records: Mapping[str, Submission],
               attempts: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, JobState]:
        """ONE ``squeue`` call says what is still queued or running; only tasks that left the
        queue with no recorded failure need ``sacct`` (one more call) to say how they ended
        (cancelled, timed out, out of memory). A task that failed said so in its attempt record,
        with its own error: that is its detail."""
        attempts = attempts or {}
        out: dict[str, JobState] = {}
        live = self._live(records) if records else {}
        ended: dict[str, datetime] = {}  # job id -> when we submitted it, for tasks sacct must explain
        for task, rec in records.items():
            attempt = attempts.get(task) or {}
            if task in live:
                out[task] = JobState(slurm_state(live[task], live=True), live[task])
            elif attempt.get("state") == "failed":
                out[task] = JobState(FAILED, attempt.get("error", ""))
            else:
                ended[rec.job_id] = local_time(rec.submitted) if rec.submitted else datetime.now()
        final = final_states(ended) if ended else {}
        for task, rec in records.items():
            if task not in out:
                raw = final.get(rec.job_id)
                out[task] = JobState(slurm_state(raw, live=False), raw) if raw else \
                    JobState(FAILED, "left the queue without finishing")
        return out

    def cancel(self, records: Mapping[str, Submission],
               attempts: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[int, str]:
        """ONE ``squeue`` call, then ONE ``scancel`` of every job still queued or running."""
        live = self.in_flight(records)
        if not live:
            return 0, ""
        res = _run(["scancel", *sorted(set(live.values()))])
        if res.returncode != 0:
            raise SubmitError(f"scancel failed: {res.stderr.strip()}")
        return len(live), "scancel"

    def submit(self, batches: list[Batch]) -> int:
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
                    self.record(spec, job.job_id, stdout=job.paths.stdout, stderr=job.paths.stderr)
                n_jobs += len(chunk)
            array_ids.append(ids)
            after = f" after {','.join(dependency)}" if dependency else ""
            self.console.print(f"queued {batch.stage}: {len(batch.specs)} task(s) as job(s) "
                               f"{','.join(ids)}{after}", highlight=False)
        self.console.print(f"[green]submitted {n_jobs} task(s) in {sum(map(len, array_ids))} array(s)[/]; "
                           f"follow with: hpcgen status {self.exp.file}")
        return 0
