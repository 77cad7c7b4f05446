"""A pipeline with the shape of hpcgen's own, for testing the orchestrator.

prepare -> embed[shards] -> similarity[blocks] -> arrange -> train -> evaluate[checkpoints] -> aggregate
``arrange`` skips embed/similarity when its strategy needs no embeddings, as the real one must.
Every task does small real work: it sums its config value and its upstream outputs into
``out-NNNNN.json``, counts its attempts in its work directory (the resumable state a requeued
task finds again), and appends what it did to the events file ``$HPCGEN_TEST_EVENTS`` (one JSON
line per start and end), so tests can check order, overlap and how often each task ran.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Literal

import cloudpickle
from pydantic import Field

from hpcgen.config.schema import StageConfig
from hpcgen.pipeline.registry import Pipeline
from hpcgen.pipeline.stage import Stage, Task

# Jobs unpickle these classes by value, so they need not import the tests package.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class StepConfig(StageConfig):
    value: int = 1
    tasks: int = Field(1, ge=1)
    sleep: float = 0.0
    # the node's tasks wait (up to 60 s) until this many of them have started: a test of parallel
    # execution then waits for what it checks, not for a time that a loaded machine can exceed
    rendezvous: int = 0
    fail: bool = False
    fail_index: int | None = None
    pad_bytes: int = 0  # also write pad-NNNNN.bin of this size (to fill a disk)


class ArrangeConfig(StepConfig):
    strategy: Literal["random", "nft", "tma"] = "random"


class TrainConfig(StepConfig):
    seed: int = 0
    lr: float = 1e-3
    warmup: int = 5


def event(kind: str, task: Task, **extra) -> None:
    path = os.environ.get("HPCGEN_TEST_EVENTS")
    if not path:
        return
    line = json.dumps({"event": kind, "task": f"{task.stage}/{task.key}/{task.index:05d}", "stage": task.stage,
                       "t": time.time(), "pid": os.getpid(), "rank": task.rank,
                       "node": os.environ.get("SLURMD_NODENAME"), "container": os.environ.get("APPTAINER_CONTAINER"),
                       "in_image": os.environ.get("HPCGEN_TEST_IN_IMAGE"),
                       "master_port": os.environ.get("MASTER_PORT"), **extra}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Step(Stage):
    Config = StepConfig

    def plan(self, cfg, upstream=None) -> int:
        return cfg[self.section].tasks

    def run(self, task: Task) -> None:
        cfg = task.config[self.section]
        # resumable state, as training keeps: how many attempts this task's work directory has seen
        progress = task.work_dir / f"attempts-rank{task.rank}"
        earlier = int(progress.read_text()) if progress.exists() else 0
        progress.write_text(str(earlier + 1))
        event("start", task, earlier_attempts=earlier)
        if task.rank:  # the other processes of a multi-process task only say they ran
            return
        if cfg.rendezvous:
            here = task.dir / ".rendezvous"
            here.mkdir(exist_ok=True)
            (here / str(task.index)).touch()
            deadline = time.monotonic() + 60
            while len(list(here.iterdir())) < cfg.rendezvous:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{task.stage}[{task.index}]: the node's other tasks never started beside it")
                time.sleep(0.05)
        if os.environ.get("HPCGEN_TEST_PROGRESS_STAGE") == task.stage:  # says half done, waits for the go file
            task.progress(1, 2, "steps")
            go = os.environ["HPCGEN_TEST_PROGRESS_GO"]
            deadline = time.monotonic() + 120
            while not os.path.exists(go):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{task.stage}[{task.index}]: nobody saw the progress")
                time.sleep(0.05)
            task.progress(2, 2, "steps")
        total = cfg.value
        for ups in task.inputs.values():
            for up in ups:
                for i in range(up.size):
                    total += json.loads((up.dir / f"out-{i:05d}.json").read_text())["total"]
        if cfg.pad_bytes:
            with open(task.output(f"pad-{task.index:05d}.bin"), "wb") as fh:
                for _ in range(0, cfg.pad_bytes, 1 << 16):
                    fh.write(b"\0" * min(1 << 16, cfg.pad_bytes))
        out = task.output(f"out-{task.index:05d}.json")
        with open(out, "w") as fh:  # written slowly, so a test can kill the task mid-write
            fh.write('{"total": ')
            fh.flush()
            deadline = time.monotonic() + cfg.sleep
            while time.monotonic() < deadline:
                time.sleep(0.05)
            if (cfg.fail and (cfg.fail_index is None or cfg.fail_index == task.index)
                    or os.environ.get("HPCGEN_TEST_FAIL_STAGE") == task.stage):  # a failure outside the key
                event("fail", task)
                raise RuntimeError(f"planned failure in {task.stage}[{task.index}]")
            fh.write(f"{total}, \"index\": {task.index}}}")
        event("end", task, total=total)


def _step(name: str, section: str, upstream: tuple[str, ...] = (), config=StepConfig, **attrs) -> Stage:
    cls = type(name.title(), (Step,), {"name": name, "section": section, "upstream": upstream,
                                        "Config": config, **attrs})
    return cls()


class Arrange(Step):
    name = "arrange"
    section = "arrange"
    Config = ArrangeConfig
    upstream = ("prepare", "similarity")

    def upstream_for(self, cfg):
        return ("prepare",) if cfg.arrange.strategy == "random" else ("prepare", "similarity")


class Aggregate(Step):
    name = "aggregate"
    section = "aggregate"
    scope = "experiment"
    upstream = ("evaluate",)


def chain() -> Pipeline:
    return Pipeline([
        _step("prepare", "data"),
        _step("embed", "embed", ("prepare",)),
        _step("similarity", "similarity", ("embed",)),
        Arrange(),
        _step("train", "train", ("arrange",), TrainConfig),
        _step("evaluate", "eval", ("train",)),
        Aggregate(),
    ])


PIPELINE = chain()
