"""What every executor shares: the submission as arrays with dependencies.

An executor knows tasks, arrays, resources and dependencies, nothing about stages.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from hpcgen.config import Experiment
from hpcgen.config.schema import Resources
from hpcgen.errors import ConfigError
from hpcgen.pipeline.container import describe, python_command, visible_inside
from hpcgen.pipeline.runner import TaskSpec
from hpcgen.pipeline.store import Store


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
    name: str = "?"
    #: whether tasks run in processes of their own, which can start inside ``cluster.container``
    own_processes: bool = True

    def __init__(self, exp: Experiment, store: Store, console: Console) -> None:
        self.exp, self.store, self.console = exp, store, console
        self.container: dict | None = None  # the image every task runs in, as markers record it

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

    def in_flight(self, records: dict[str, dict]) -> dict[str, str]:
        """Of these submission records (task id -> record), the ones still queued or running:
        task id -> job id. Only a scheduler that outlives ``submit`` has any."""
        return {}

    @abstractmethod
    def launch(self, batches: list[Batch]) -> int:
        """Submit or run the batches; return the exit code of ``submit``."""
