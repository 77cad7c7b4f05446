"""Local executor: the same graph on this machine, through submitit's LocalExecutor.

Each task runs in its own process (as on a cluster: pickled in, logs to files), started when its
upstream tasks have succeeded, as many at once as the machine's CPUs allow. A failed task fails
its dependents without running them; independent work goes on. ``submit`` returns when all is
done, with exit code 1 if anything failed.

While it runs, ``local.json`` in the experiment's directory names its host and pid: ``status``
counts its submitted tasks pending while that process lives, and ``cancel`` stops it (SIGTERM).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import submitit
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from hpcgen.config import Experiment
from hpcgen.config.schema import signal_delay
from hpcgen.pipeline.executors.base import (
    ACTIVE,
    PENDING,
    UNKNOWN,
    Batch,
    Executor,
    JobState,
    Submission,
    attempt_state,
    pid_alive,
    thread_setup,
)
from hpcgen.pipeline.runner import TaskRunner, TaskSpec
from hpcgen.pipeline.store import Store, now, progress_text, read_json, read_progress, write_json


@dataclass
class _Running:
    spec: TaskSpec
    job: submitit.Job[dict[str, Any]]  # TaskRunner's result: one per process of the task
    cpus: int
    started: float = field(default_factory=time.time)  # a progress file older than this is another attempt's
    said: float = 0.0  # when its progress was last printed (not interactive)


def free_port() -> int:
    """A TCP port no socket of this machine holds now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def logs_command(task_id: str, exp: Experiment) -> str:
    """The ``hpcgen logs`` command line that prints a task's logs, ready to paste into a shell:
    ``hpcgen logs train/3f2a1b2c4d5e6f70/00000 -f m9.yaml`` (with the submit's ``--set``, which
    the task's key depends on)."""
    words = ["hpcgen", "logs", task_id, "-f", str(exp.file)]
    for override in exp.overrides:
        words += ["--set", override]
    return shlex.join(words)


class LocalExecutor(Executor):
    name = "local"
    poll_s = 0.1

    @classmethod
    def available(cls) -> bool:
        return True  # this machine: what ``auto`` falls back to

    @property
    def marker(self) -> Path:
        """``local.json``: the host and pid of the submit running this experiment's tasks."""
        return self.exp.dir / "local.json"

    def _submit_pid(self) -> int | None:
        """The pid of this experiment's local submit, where one is alive on this machine."""
        rec = read_json(self.marker)
        if rec and rec.get("host") == socket.gethostname() and pid_alive(int(rec.get("pid", 0))):
            return int(rec["pid"])
        return None

    def states(self, records: Mapping[str, Submission],
               attempts: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, JobState]:
        """What the tasks' attempt records say; a task that has none is pending while the submit
        that started it lives (one read of ``local.json``), else UNKNOWN."""
        attempts = attempts or {}
        waiting = JobState(PENDING if records and self._submit_pid() is not None else UNKNOWN)
        return {task: attempt_state(attempts.get(task) or {}) or waiting for task in records}

    def cancel(self, records: Mapping[str, Submission],
               attempts: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[int, str]:
        """Stop the local submit (SIGTERM: it cancels its running tasks and starts no more)."""
        pid = self._submit_pid()
        if pid is None:
            return 0, ""
        count = sum(1 for s in self.states(records, attempts).values() if s.state in ACTIVE)
        os.kill(pid, signal.SIGTERM)
        return count, f"stopped the local submit (pid {pid})"

    def submit(self, batches: list[Batch]) -> int:
        capacity = max(1, os.cpu_count() or 1)
        specs: dict[str, tuple[TaskSpec, Batch]] = {}
        for batch in batches:
            self.stamp(batch.specs)
            for spec in batch.specs:
                specs[spec.id] = (spec, batch)
        waiting = list(specs)  # topological order
        done: set[str] = set()
        failed: dict[str, str] = {}
        bad_input: dict[str, str] = {}  # a stage found bad input data: exit code 2
        running: dict[str, _Running] = {}
        executors: dict[tuple[str, str | None], submitit.LocalExecutor] = {}
        marker = self.marker
        write_json(marker, {"host": socket.gethostname(), "pid": os.getpid(), "started": now()})

        def on_term(signum: int, frame: FrameType | None) -> NoReturn:  # `hpcgen cancel` sends SIGTERM
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_term)
        interactive = self.console.is_terminal
        progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                            console=self.console, disable=not interactive)
        totals: dict[str, int] = {}  # stage -> its tasks, stages in the order they come
        for batch in batches:
            totals[batch.stage] = totals.get(batch.stage, 0) + len(batch.specs)
        bars: dict[str, TaskID] = {stage: progress.add_task(stage, total=total, note="")
                                   for stage, total in totals.items()}

        def say(text: str) -> None:
            if not interactive:
                self.console.print(text, highlight=False)

        try:
            with progress:
                while waiting or running:
                    # start what is ready, in order, while CPUs are free
                    used = sum(r.cpus for r in running.values())
                    for task_id in list(waiting):
                        spec, batch = specs[task_id]
                        deps = batch.deps.get(task_id, set())
                        if any(d in failed for d in deps):
                            waiting.remove(task_id)
                            failed[task_id] = "not run: an upstream task failed"
                            progress.advance(bars[batch.stage])
                            say(f"[red]skipped[/] {task_id}: an upstream task failed")
                            continue
                        if not deps <= done:
                            continue
                        cpus = min(capacity, batch.resources.cpus or 1)
                        if running and used + cpus > capacity:
                            continue
                        running[task_id] = _Running(spec, self._start(spec, batch, executors), cpus)
                        used += cpus
                        waiting.remove(task_id)
                        say(f"started {task_id}")
                    time.sleep(self.poll_s)
                    for task_id, item in list(running.items()):
                        if not item.job.done():
                            continue
                        del running[task_id]
                        stage = item.spec.stage.name
                        try:
                            item.job.results()  # one result per process of the job
                        except Exception as exc:  # the task's own error, re-raised by submitit
                            failed[task_id], is_bad_input = self._error_of(item.spec, exc)
                            if is_bad_input:
                                bad_input[task_id] = failed[task_id]
                            n_failed = sum(1 for f in failed if f.startswith(stage + "/"))
                            progress.update(bars[stage], note=f"[red]{n_failed} failed")
                            say(f"[red]failed[/] {task_id}: {failed[task_id]}")
                        else:
                            done.add(task_id)
                            say(f"done {task_id}")
                        progress.advance(bars[stage])
                    self._show_progress(running, progress, bars, interactive)
        except KeyboardInterrupt:
            for item in running.values():
                item.job.cancel(check=False)
            deadline = time.monotonic() + 10
            while any(not r.job.done() for r in running.values()) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.console.print(f"[yellow]interrupted: {len(running)} running task(s) cancelled, "
                               f"{len(waiting)} not started[/]")
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
            marker.unlink(missing_ok=True)

        if bad_input:
            task_id, message = next(iter(bad_input.items()))
            print(f"error: {message}", file=sys.stderr)
            return 2
        if failed:
            first = next(t for t, why in failed.items() if not why.startswith("not run"))
            self.console.print(f"[red]{len(failed)} task(s) failed[/], e.g. {escape(first)}: {escape(failed[first])}")
            self.console.print(f"  logs: {logs_command(first, self.exp)}", highlight=False, markup=False)
            return 1
        self.console.print(f"[green]all {len(done)} task(s) done[/]")
        return 0

    def _error_of(self, spec: TaskSpec, exc: Exception) -> tuple[str, bool]:
        """The task's own error as the runner recorded it (and whether it is bad input), else
        what submitit says."""
        attempt = read_json(self.store.attempt(spec.stage.name, spec.key, spec.index)) or {}
        if attempt.get("state") == "failed" and attempt.get("error"):
            return attempt["error"], bool(attempt.get("bad_input"))
        text = str(exc).strip().splitlines()
        return (text[0] if text else type(exc).__name__), False

    #: how often a running task's progress is printed when the console is not a terminal (seconds)
    progress_print_s = 30.0

    def _show_progress(self, running: dict[str, _Running], progress: Progress, bars: dict[str, TaskID],
                       interactive: bool) -> None:
        """What running tasks say of their progress (``Task.progress``): beside the stage's bar
        in a terminal, else a line per task every ``progress_print_s`` seconds."""
        clock = time.monotonic()
        if clock - getattr(self, "_progress_read", 0.0) < 1.0:
            return
        self._progress_read = clock
        notes: dict[str, list[str]] = {}
        for task_id, item in running.items():
            spec = item.spec
            node_dir = Store(Path(spec.store_root)).node_dir(spec.stage.name, spec.key)
            data = read_progress(node_dir, spec.index)
            path = node_dir / "progress" / f"{spec.index:05d}.json"
            try:
                fresh = data is not None and path.stat().st_mtime >= item.started - 1
            except OSError:
                fresh = False
            if not fresh or data is None:
                continue
            text = progress_text(data)
            notes.setdefault(spec.stage.name, []).append(text)
            if not interactive and clock - item.said >= self.progress_print_s:
                item.said = clock
                self.console.print(f"  {task_id}: {text}", highlight=False)
        if interactive:
            for stage, texts in notes.items():
                if stage in bars:
                    progress.update(bars[stage], note=texts[0] if len(texts) == 1 else f"{len(texts)} running")

    def _start(self, spec: TaskSpec, batch: Batch,
               executors: dict[tuple[str, str | None], submitit.LocalExecutor]) -> submitit.Job[dict[str, Any]]:
        python = self.python(batch.resources)
        ex = executors.get((batch.stage, python))
        if ex is None:
            ex = submitit.LocalExecutor(folder=self.log_dir(batch.stage), python=python)
            executors[(batch.stage, python)] = ex
        r = batch.resources
        cpus = min(max(1, os.cpu_count() or 1), r.cpus or 1)
        setup = thread_setup(str(cpus))
        if (r.tasks_per_node or 1) > 1:
            # submitit's default port is drawn at random from 20000-60000, which overlaps the
            # ephemeral ports of this machine's own connections: a port in use makes rank 0 fail
            # and the other ranks wait for it. A port free now is far less likely to be taken.
            setup.append(f"export MASTER_PORT={free_port()}")
        ex.update_parameters(timeout_min=r.time or 60, tasks_per_node=r.tasks_per_node or 1,
                             nodes=1, gpus_per_node=r.gpus or 0,
                             signal_delay_s=signal_delay(r), setup=setup)
        job = ex.submit(TaskRunner(spec))
        self.record(spec, job.job_id, stdout=job.paths.stdout, stderr=job.paths.stderr)
        return job
