"""What runs inside a job: one array task of one stage node.

The order of events is the whole crash-safety story:
  1. take the task's lock (a second copy of the task waits here, then finds it done);
  2. if the completion marker is there, return: the work is done;
  3. remove what an interrupted attempt left under temporary names;
  4. run the stage, which writes only temporary names;
  5. rename each output into place, then write the marker (checksums, provenance) last.
A task killed anywhere before 5 ends leaves no marker, so it is not complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import ConfigError, DeviceError
from hpcgen.pipeline.stage import SectionView, Stage, Task, Upstream
from hpcgen.pipeline.store import Store, checksums, file_lock, now, provenance, write_json


@dataclass
class TaskSpec:
    """Everything a job needs to run one task; pickled by submitit."""

    stage: Stage
    key: str
    index: int
    size: int
    store_root: str
    config: SectionView
    inputs: dict[str, list[Upstream]]
    runs: tuple[str, ...]
    experiment: str
    extra: dict[str, Any] = field(default_factory=dict)
    gpus: int = 0  # per node, from the node's resources: the job must then see GPUs

    @property
    def id(self) -> str:
        return f"{self.stage.name}/{self.key}/{self.index:05d}"

    def __repr__(self) -> str:
        return f"<task {self.id}>"


def _logger(spec: TaskSpec) -> logging.Logger:
    log = logging.getLogger(f"hpcgen.stage.{spec.stage.name}")
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log


def _commit(staged: dict[str, Path], base: Path) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for name, tmp in staged.items():
        if not tmp.exists():
            raise RuntimeError(f"stage asked for output {name!r} but never wrote it")
        final = base / name
        if final.exists() and final.is_dir() and not final.is_symlink():
            trash = base / f".tmp.old.{uuid.uuid4().hex}.{name}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            if tmp.is_file():
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        outputs[name] = checksums(final)
    return outputs


def require_gpus(spec: TaskSpec) -> None:
    """A task given GPUs runs on them or not at all: DeviceError (one line) when the libraries the
    stage uses on a GPU cannot see one, instead of a silent fall-back to CPU, gloo or NumPy."""
    if spec.gpus <= 0:
        return
    problems = []
    for library in spec.stage.gpu_libraries(spec.config):
        if library == "torch":
            import torch

            if not torch.cuda.is_available():
                problems.append(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no usable GPU")
        elif library == "cupy":
            from hpcgen.similarity.xp import gpu_available

            if not gpu_available():
                problems.append("CuPy is missing or sees no usable GPU")
    if problems:
        raise DeviceError(f"{spec.id} asked for {spec.gpus} GPU(s) but {'; '.join(problems)} "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); run it on a GPU "
                          "node (in the image: apptainer --nv, cluster.container.gpu), or give the stage "
                          "resources.gpus: 0 to run it on CPU")


def process_rank() -> tuple[int, int]:
    """(rank, number of processes) of this task: several for multi-process jobs under submitit."""
    try:
        import submitit

        env = submitit.JobEnvironment()
        return env.global_rank, env.num_tasks
    except RuntimeError:  # not inside a submitit job (the debug executor)
        return 0, 1


def run_task(spec: TaskSpec) -> dict[str, Any]:
    """Run one task to completion (or return at once if it is already complete).

    Every process of a multi-process task runs the stage; rank 0 alone takes the lock, keeps the
    attempt record, commits the outputs and writes the marker."""
    store = Store(Path(spec.store_root))
    name, key, index = spec.stage.name, spec.key, spec.index
    base = store.node_dir(name, key)
    base.mkdir(parents=True, exist_ok=True)
    log = _logger(spec)
    rank, world = process_rank()
    if rank != 0:
        if store.is_complete(name, key, index):
            return {"task": spec.id, "skipped": True}
        task = Task(stage=name, key=key, index=index, size=spec.size, dir=base, config=spec.config,
                    inputs=spec.inputs, runs=spec.runs, log=log, attempt=f"rank{rank}", rank=rank, world_size=world,
                    meta=spec.extra)
        require_gpus(spec)
        spec.stage.run(task)
        return {"task": spec.id, "skipped": False, "rank": rank}
    with file_lock(store.lock(name, key, index)):
        if store.is_complete(name, key, index):
            log.info("%s is already complete; nothing to do", spec.id)
            return {"task": spec.id, "skipped": True}
        store.clean_staging(name, key, index)
        attempt = uuid.uuid4().hex[:8]
        started, t0 = now(), time.monotonic()
        record = {"task": spec.id, "attempt": attempt, "state": "running", "started": started,
                  "experiment": spec.experiment, "processes": world, **provenance(spec.extra.get("container"))}
        write_json(store.attempt(name, key, index), record)
        task = Task(stage=name, key=key, index=index, size=spec.size, dir=base, config=spec.config,
                    inputs=spec.inputs, runs=spec.runs, log=log, attempt=attempt, rank=0, world_size=world,
                    meta=spec.extra)
        try:
            log.info("%s: start (attempt %s)", spec.id, attempt)
            require_gpus(spec)
            spec.stage.run(task)
            outputs = _commit(task._staged, base)
            ended = now()
            marker = {
                "task": spec.id, "stage": name, "key": key, "index": index, "size": spec.size,
                "stage_version": spec.stage.version, "config": spec.config.dump(),
                "upstream": {s: [u.key for u in ups] for s, ups in spec.inputs.items()},
                "outputs": outputs, "experiment": spec.experiment, "runs": list(spec.runs),
                "attempt": attempt, "started": started, "ended": ended, "processes": world,
                "duration_s": round(time.monotonic() - t0, 3),
                "provenance": provenance(spec.extra.get("container")),
            }
            write_json(store.marker(name, key, index), marker)
        except (SystemExit, KeyboardInterrupt) as exc:  # requeued by the scheduler, or stopped
            record.update(state="interrupted", ended=now(), error=f"{type(exc).__name__}: {exc}")
            _record(store.attempt(name, key, index), record, log)
            raise
        except BaseException as exc:
            # staging first: on a full disk, removing it frees the space the record needs (and a
            # staged file that cannot be removed, NFS's .nfs* say, must not hide the task's error)
            with contextlib.suppress(OSError):
                store.clean_staging(name, key, index)
            record.update(state="failed", ended=now(), error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(), bad_input=isinstance(exc, ConfigError))
            if isinstance(exc, ConfigError):
                record["error"] = str(exc)
            _record(store.attempt(name, key, index), record, log)
            raise
        record.update(state="done", ended=ended)
        _record(store.attempt(name, key, index), record, log)  # the marker says it all; this is a courtesy
        log.info("%s: done in %.1f s", spec.id, marker["duration_s"])
        return {"task": spec.id, "skipped": False, "duration_s": marker["duration_s"]}


def _record(path: Path, record: dict[str, Any], log: logging.Logger) -> None:
    """Write the attempt record of a failed or interrupted attempt; the task's own error must
    reach the caller even when this cannot be written (a full disk)."""
    try:
        write_json(path, record)
    except OSError as exc:
        log.error("could not write %s (%s); the attempt ended with: %s", path, exc, record.get("error"))


class TaskRunner:
    """What a job runs: one task, requeued by submitit when the job is preempted or times out.

    On the requeue signal submitit calls ``checkpoint``, which hands back the same task: the
    requeued job starts it again, and stages that keep resumable state in ``task.work_dir``
    (training) carry on from there; the others simply run again.
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        return run_task(self.spec)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(TaskRunner(self.spec))

    def __repr__(self) -> str:
        return f"<runner {self.spec.id}>"
