"""In-process executor: every task in this Python process, in order. For debuggers and tests.

It writes no submission records (the tasks' own attempt records say what happened) and nothing
outlives ``submit``: the base class's ``states``, ``in_flight`` and ``cancel`` are its own.
"""

from __future__ import annotations

from hpcgen.pipeline.executors.base import Batch, Executor
from hpcgen.pipeline.runner import run_task


class DebugExecutor(Executor):
    name = "debug"
    own_processes = False

    def submit(self, batches: list[Batch]) -> int:
        for batch in batches:  # batches come in topological order
            for spec in batch.specs:
                self.console.print(f"[dim]debug:[/] {spec.id}")
                run_task(spec)  # exceptions propagate, so a debugger stops where it failed
        return 0
