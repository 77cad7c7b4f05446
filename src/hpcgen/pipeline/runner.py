"""What runs inside a job: one array task of one stage node.

The order of events is the whole crash-safety story:
  1. take the task's lock (a second copy of the task waits here, then finds it done);
  2. if the completion marker is there, return: the work is done;
  3. remove what an interrupted attempt left under temporary names;
  4. run the stage, which writes only temporary names;
  5. rename each output into place, then write the marker (checksums, provenance) last.
A task killed anywhere before 5 ends leaves no marker, so it is not complete.

Everything that knows the scheduler is here, not in the stages: the CPUs and GPUs the task was
given (``TaskResources``, and the one thread count decided from them, ``task_threads``), the
torch.distributed environment of a multi-process task (``export_distributed_env``), and the
requeue signal: a stage that can stop at safe points (training) watches the task's
``StopRequest``, saves its resumable state when it is set and raises ``StoppedForRequeue``; the
runner then asks submitit to requeue the job (``hand_over``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hpcgen.errors import ConfigError, DeviceError
from hpcgen.pipeline.stage import SectionView, Stage, Task, TaskMeta, Upstream
from hpcgen.pipeline.store import Store, checksums, file_lock, now, provenance, write_json

if TYPE_CHECKING:  # submitit is imported inside the job only
    from submitit.helpers import DelayedSubmission


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


@dataclass(frozen=True)
class TaskResources:
    """What the scheduler gave one process of a task: CPUs (None: not known, a task run in the
    caller's own process) and GPUs per node."""

    cpus: int | None = None
    gpus: int = 0

    @property
    def threads(self) -> int | None:
        return task_threads(self)


def task_resources(spec: TaskSpec) -> TaskResources:
    """The task's resources: its CPUs as the executor exported them (``HPCGEN_CPUS``, or Slurm's
    ``SLURM_CPUS_PER_TASK``), its GPUs per node from the node's resources."""
    cpus = os.environ.get("HPCGEN_CPUS") or os.environ.get("SLURM_CPUS_PER_TASK")
    return TaskResources(cpus=int(cpus) if cpus and cpus.isdigit() and int(cpus) > 0 else None, gpus=spec.gpus)


def task_threads(resources: TaskResources) -> int | None:
    """The one decision on CPU threads: one per CPU the task was given (None where unknown: the
    process keeps what it has)."""
    return resources.cpus


#: the variables numeric libraries read their thread count from when they load
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def use_threads(resources: TaskResources) -> None:
    """Give this process's numeric libraries ``task_threads`` threads: torch at once if it is
    loaded, the libraries that load later through their variables (which the executors' job
    scripts already set to the same number; kept where they are)."""
    threads = task_threads(resources)
    if not threads:
        return
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def export_distributed_env() -> None:
    """torch.distributed's env:// variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE) from submitit's view of the allocation, for a task of several
    processes. ``CUDA_VISIBLE_DEVICES`` stays as it is: every rank of a node sees all its GPUs and
    binds to ``cuda:LOCAL_RANK`` (see hpcgen.training.loop.setup_distributed)."""
    import submitit

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


class StopRequest:
    """The scheduler's request that the task stop early and run again later: SIGUSR2, which Slurm
    sends before the time limit or a preemption (submitit's handler then checkpoints and requeues).

    A stage that can stop at safe points reads ``requested()`` there, inside ``watch()``: while
    that is open the signal only sets the request (acting in the handler could interrupt a
    collective halfway); outside it, and in stages that never watch, the signal goes to the
    handler that was there (submitit's: requeue at once). Where the task does not run in the main
    thread no signal can be caught, and nothing is requested."""

    def __init__(self) -> None:
        self._set = threading.Event()

    def requested(self) -> bool:
        return self._set.is_set()

    def request(self) -> None:
        self._set.set()

    @contextlib.contextmanager
    def watch(self) -> Iterator[StopRequest]:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGUSR2, lambda signum, frame: self.request())
        try:
            yield self
        finally:
            if previous is not None:
                signal.signal(signal.SIGUSR2, previous)


class StoppedForRequeue(Exception):
    """Raised by a stage that stopped on the task's stop request with its resumable state saved:
    the runner hands the job to the scheduler to requeue, and the next run goes on from there."""


def hand_over(rank: int) -> NoReturn:
    """After a stage stopped for a requeue: rank 0 calls the SIGUSR2 handler of the scheduler's
    job (submitit's: ``TaskRunner.checkpoint``, requeue, exit); the other ranks stop and are
    ended by the requeue. Without such a handler (the debug executor), rank 0 stops too, with
    status 1: the resumable state is saved for the next run."""
    handler = signal.getsignal(signal.SIGUSR2)
    if rank == 0 and callable(handler):
        handler(signal.SIGUSR2, None)
    raise SystemExit(0 if rank else 1)


def run_task(spec: TaskSpec, stop: StopRequest | None = None) -> dict[str, Any]:
    """Run one task to completion (or return at once if it is already complete).

    Every process of a multi-process task runs the stage; rank 0 alone takes the lock, keeps the
    attempt record, commits the outputs and writes the marker. The stage's task carries the stop
    request and the resources in its ``meta`` (``stop``, ``resources``)."""
    store = Store(Path(spec.store_root))
    name, key, index = spec.stage.name, spec.key, spec.index
    base = store.node_dir(name, key)
    base.mkdir(parents=True, exist_ok=True)
    log = _logger(spec)
    stop = stop if stop is not None else StopRequest()
    resources = task_resources(spec)
    use_threads(resources)
    rank, world = process_rank()
    if world > 1:
        export_distributed_env()
    meta = TaskMeta.from_dict({**spec.extra, "stop": stop, "resources": resources})  # spec.extra stays picklable
    if rank != 0:
        if store.is_complete(name, key, index):
            return {"task": spec.id, "skipped": True}
        task = Task(stage=name, key=key, index=index, size=spec.size, dir=base, config=spec.config,
                    inputs=spec.inputs, runs=spec.runs, log=log, attempt=f"rank{rank}", rank=rank, world_size=world,
                    meta=meta)
        require_gpus(spec)
        try:
            spec.stage.run(task)
        except StoppedForRequeue:
            hand_over(rank)
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
                    meta=meta)
        try:
            log.info("%s: start (attempt %s)", spec.id, attempt)
            require_gpus(spec)
            try:
                spec.stage.run(task)
            except StoppedForRequeue as exc:  # the stage saved its state: the scheduler runs it again
                log.warning("%s: %s; handing over to the scheduler to requeue", spec.id, exc)
                hand_over(rank)  # SystemExit: recorded as interrupted below
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

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        import submitit

        return submitit.helpers.DelayedSubmission(TaskRunner(self.spec))

    def __repr__(self) -> str:
        return f"<runner {self.spec.id}>"
