"""What every executor shares: the whole contract between hpcgen and one scheduler.

An executor knows tasks, arrays, resources and dependencies, nothing about stages. All that
depends on a scheduler lives in its executor, behind these methods of :class:`Executor`:

``submit(batches)``
    run or queue the batches; returns the exit code of ``hpcgen submit``.
``in_flight(records)``
    which of these submitted tasks are still queued or running (they are not submitted again).
``states(records, attempts)``
    the state of each submitted task, from ONE batched query of the scheduler (and a second one
    only for what the first cannot tell).
``cancel(records, attempts)``
    cancel what of these tasks is still queued or running.
``record(...)`` and :func:`read_submission`
    the one writer and the one reader of submission records (:class:`Submission`).

Each scheduler maps its own job states to hpcgen's (:data:`PENDING` ... :data:`UNKNOWN`) in ONE
table, in its executor's module. ``status`` and ``cancel`` only ask the executors the records
name (the registry in ``hpcgen.pipeline.executors`` finds them by name).
"""

from __future__ import annotations

import os
import shutil
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console

from hpcgen.config import Experiment
from hpcgen.config.schema import Resources
from hpcgen.errors import ConfigError
from hpcgen.pipeline.container import describe, python_command, visible_inside
from hpcgen.pipeline.runner import TaskSpec
from hpcgen.pipeline.store import Store, now, read_json, write_json

# hpcgen's states of a submitted task, whatever the scheduler
PENDING = "pending"  # queued, held, or about to be requeued: it will still run
RUNNING = "running"  # has (or is setting up or releasing) an allocation
DONE = "done"  # the job ended well (``status`` says "missing" where no marker is there)
FAILED = "failed"
CANCELLED = "cancelled"
UNKNOWN = "unknown"  # the executor cannot tell (``status`` says "missing")
#: the states in which a task is in flight: not submitted again, cancelled by ``cancel``
ACTIVE = frozenset({PENDING, RUNNING})


@dataclass(frozen=True)
class JobState:
    """What an executor says about one submitted task."""

    state: str  # PENDING, RUNNING, DONE, FAILED, CANCELLED or UNKNOWN
    detail: str = ""  # the scheduler's own word for it (``TIMEOUT``), or the task's error


@dataclass(frozen=True)
class Submission:
    """The record of a task's last submission: ``submissions/NNNNN.json`` of its node.

    Written by :meth:`Executor.record` only, read by :func:`read_submission` only. Records of
    older versions of hpcgen lack some fields; they read as the defaults here.
    """

    executor: str  # the registry name of the executor that submitted it: it answers for the task
    job_id: str  # the scheduler's id of the task: ``1234_5`` (a Slurm array element), a local pid
    experiment: str = ""  # the experiment's name
    submitted: str = ""  # when, UTC ISO 8601 (``store.now()``): older scheduler records are not this job's
    host: str = ""  # the machine that submitted it
    stdout: str | None = None  # the task's log files (``hpcgen logs``); None where there are none
    stderr: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Submission:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["executor"] = str(values.get("executor") or "")
        values["job_id"] = str(values.get("job_id") or "")
        return cls(**values)


def read_submission(store: Store, stage: str, key: str, index: int) -> Submission | None:
    """A task's submission record; None where it was never submitted."""
    data = read_json(store.submission(stage, key, index))
    return Submission.from_dict(data) if data else None


def pid_alive(pid: int) -> bool:
    """Whether a process of this id is alive on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def attempt_state(attempt: Mapping[str, Any]) -> JobState | None:
    """What a task's own attempt record says (the runner writes it, on whatever executor): failed
    (with its error), running (while its process lives), or nothing (None)."""
    if attempt.get("state") == "failed":
        return JobState(FAILED, attempt.get("error", ""))
    if attempt.get("state") == "running":
        alive = attempt.get("host") != socket.gethostname() or pid_alive(int(attempt.get("pid", 0)))
        return JobState(RUNNING) if alive else JobState(FAILED, "its process is gone")
    return None


@dataclass
class Batch:
    """Tasks of one stage with identical resources: one scheduler array."""

    stage: str
    resources: Resources
    specs: list[TaskSpec]
    after: list[int] = field(default_factory=list)  # batches (by position) that must succeed first
    upstream_tasks: set[str] = field(default_factory=set)  # the tasks of this submit those are, by id
    after_jobs: list[str] = field(default_factory=list)  # already queued job ids that must succeed first
    deps: dict[str, set[str]] = field(default_factory=dict)  # task id -> upstream task ids in this submit


def thread_setup(cpus: str) -> list[str]:
    """Shell lines that give a task's numeric libraries exactly the CPUs it asked for."""
    return [f"export HPCGEN_CPUS={cpus}"] + [
        f"export {v}={cpus}" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")]


class Executor(ABC):
    #: the registry name: ``cluster.executor``, ``--executor`` and submission records use it
    name: ClassVar[str] = "?"
    #: whether tasks run in processes of their own, which can start inside ``cluster.container``
    own_processes: ClassVar[bool] = True
    #: whether tasks outlive ``submit`` (it returns once they are queued): a scheduler's queue
    detached: ClassVar[bool] = False

    def __init__(self, exp: Experiment, store: Store, console: Console | None = None) -> None:
        self.exp, self.store = exp, store
        self.console = console or Console(stderr=True)
        self.container: dict[str, Any] | None = None  # the image every task runs in, as markers record it

    # --- choosing an executor -------------------------------------------------------------

    @classmethod
    def available(cls) -> bool:
        """Whether ``executor: auto`` should pick this executor here (the registry asks each in
        turn); may refuse with a ConfigError where it is half there. Only explicit by default."""
        return False

    # --- submitting -----------------------------------------------------------------------

    def log_dir(self, stage: str) -> Path:
        return self.exp.dir / "logs" / stage

    def python(self, resources: Resources) -> str | None:
        """The command that starts the Python of a job with these resources (None: this
        interpreter)."""
        return python_command(self.exp.cluster.container, resources.gpus or 0) if self.own_processes else None

    def check(self) -> None:
        """Refuse, before anything is written, what this executor cannot run (ConfigError).

        A configured container image must exist; it is hashed here, once per submit."""
        container = self.exp.cluster.container
        if container is None:
            return
        if not self.own_processes:
            self.console.print(f"[yellow]the {self.name} executor runs tasks in this process: "
                               f"cluster.container ({container.image}) is not used[/]")
            return
        try:
            self.container = describe(container)
        except ConfigError as err:
            raise self.exp.locate(err) from None
        if not visible_inside(self.exp.output_dir, container):
            self.console.print(f"[yellow]the output root {self.exp.output_dir} is outside every bind path of "
                               "cluster.container (and $HOME, /tmp, the working directory): unless the site binds "
                               "it, jobs cannot write there; add it to cluster.container.bind[/]")
        if self.container["labels"] is None and not shutil.which("apptainer"):
            self.console.print("[yellow]'apptainer' is not on PATH here: the image's labels are read inside "
                               "the jobs instead[/]")

    def stamp(self, specs: list[TaskSpec]) -> None:
        """Give each task the description of the image it will run in (for its marker)."""
        if self.container is not None:
            for spec in specs:
                spec.extra = {**spec.extra, "container": self.container}

    @abstractmethod
    def submit(self, batches: list[Batch]) -> int:
        """Submit or run the batches (in topological order); return the exit code of ``submit``."""

    def record(self, spec: TaskSpec, job_id: str, *, stdout: Path | str | None = None,
               stderr: Path | str | None = None) -> Submission:
        """Write the submission record of one task: the only place records are written."""
        sub = Submission(executor=self.name, job_id=str(job_id), experiment=self.exp.name, submitted=now(),
                         host=socket.gethostname(), stdout=None if stdout is None else str(stdout),
                         stderr=None if stderr is None else str(stderr))
        write_json(self.store.submission(spec.stage.name, spec.key, spec.index), asdict(sub))
        return sub

    # --- watching and cancelling ------------------------------------------------------------
    # ``records`` are task id -> Submission (of this executor, for tasks with no marker);
    # ``attempts`` task id -> the task's own attempt record, where it has one newer than its submission

    def in_flight(self, records: Mapping[str, Submission]) -> dict[str, str]:
        """Of these submitted tasks, the ones still queued or running: task id -> job id. Only a
        scheduler whose tasks outlive ``submit`` has any."""
        return {}

    def states(self, records: Mapping[str, Submission],
               attempts: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, JobState]:
        """The state of each of these submitted tasks, from one batched query at most.

        By default, what the tasks' own attempt records say, else UNKNOWN: right for tasks that
        ran in processes of this submit."""
        attempts = attempts or {}
        return {task: attempt_state(attempts.get(task) or {}) or JobState(UNKNOWN) for task in records}

    def cancel(self, records: Mapping[str, Submission],
               attempts: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[int, str]:
        """Cancel what of these tasks is queued or running: (how many tasks, how it was done; ""
        where nothing was). By default nothing outlives ``submit``: nothing to cancel."""
        return 0, ""
