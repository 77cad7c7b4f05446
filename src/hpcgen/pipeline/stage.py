"""What a stage declares, and what it is handed when one of its tasks runs.

The orchestrator knows no stage internals. A stage says which config section it owns and which
others it reads, its upstream stages, how many array tasks it needs (``plan``), what each task
asks the scheduler for (``resources``), and ``run(task)``. Everything else (keys, deduplication,
markers, submission) happens outside it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from hpcgen.config.schema import Resources, StageConfig, layered

C = TypeVar("C")

if TYPE_CHECKING:  # the types of the typed accessors below; never imported at run time
    from hpcgen.pipeline.runner import StopRequest, TaskResources
    from hpcgen.stages.aggregate import ReportConfig
    from hpcgen.stages.arrange import ArrangeConfig
    from hpcgen.stages.embed import EmbedConfig
    from hpcgen.stages.evaluate import EvalConfig
    from hpcgen.stages.prepare import DataConfig
    from hpcgen.stages.similarity import SimilarityConfig
    from hpcgen.stages.train import TrainConfig


class SectionView:
    """Read-only access to the config sections a stage declared; anything else is an error.

    Keeping stages honest about what they read is what makes their keys correct: a stage that
    read an undeclared section would be shared between runs that differ in it.

    Sections are read as attributes (``cfg.data``) or by name (``cfg["data"]``). For the type
    checker the sections of hpcgen's own pipeline are typed: ``cfg.data`` is a ``DataConfig``,
    ``cfg.train`` a ``TrainConfig`` and so on (declared here, looked up by ``__getattr__`` at run
    time, so another pipeline's sections of the same names work as before). ``section(name,
    kind)`` is the typed lookup for any other section: it checks the type at run time too.
    """

    if TYPE_CHECKING:
        data: DataConfig
        embed: EmbedConfig
        similarity: SimilarityConfig
        arrange: ArrangeConfig
        train: TrainConfig
        eval: EvalConfig
        report: ReportConfig

    def __init__(self, stage: str, sections: dict[str, Any]) -> None:
        self._stage, self._sections = stage, sections

    def __getitem__(self, name: str) -> Any:
        try:
            return self._sections[name]
        except KeyError:
            raise KeyError(
                f"stage {self._stage!r} reads section {name!r} without declaring it in `reads`"
            ) from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def section(self, name: str, kind: type[C]) -> C:
        """Section ``name``, which must be a ``kind`` (a TypeError says which it is instead)."""
        value = self[name]
        if not isinstance(value, kind):
            raise TypeError(f"section {name!r} of stage {self._stage!r} is a {type(value).__name__}, "
                            f"not a {kind.__name__}")
        return value

    def names(self) -> list[str]:
        return list(self._sections)

    def dump(self) -> dict[str, Any]:
        """JSON-ready sections, without scheduler resources (they never change results)."""
        out = {}
        for name, section in self._sections.items():
            if hasattr(section, "model_dump"):
                out[name] = section.model_dump(mode="json", exclude={"resources"})
            else:
                out[name] = section
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"stage": self._stage, "sections": self._sections}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._stage, self._sections = state["stage"], state["sections"]


@dataclass(frozen=True)
class Estimate:
    """What ``plan`` adds up: accelerator time and disk a task will need."""

    gpu_hours: float | None = None  # None: the time limit times the GPUs asked for
    disk_bytes: int = 0
    records: int | None = None  # how many records the stage's output holds (an upper bound), if known


class Stage:
    """Base class of a pipeline stage. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    #: the config section this stage owns (None: it has no section of its own)
    section: ClassVar[str | None] = None
    Config: ClassVar[type[StageConfig]] = StageConfig
    #: other sections it reads; each enters its key
    reads: ClassVar[tuple[str, ...]] = ()
    upstream: ClassVar[tuple[str, ...]] = ()
    #: "run": one node per distinct config; "experiment": one node over all runs (fan-in)
    scope: ClassVar[Literal["run", "experiment"]] = "run"
    #: bump when the output format or the computation changes: it changes every key
    version: ClassVar[int] = 1
    defaults: ClassVar[Resources] = Resources(
        nodes=1, tasks_per_node=1, cpus=1, gpus=0, mem=4096, time=60
    )

    def sections_read(self) -> tuple[str, ...]:
        cached = self.__dict__.get("_sections_read")
        if cached is None:
            own = (self.section,) if self.section else ()
            cached = own + tuple(s for s in self.reads if s != self.section)
            self.__dict__["_sections_read"] = cached
        return cached

    def upstream_for(self, cfg: SectionView) -> tuple[str, ...]:
        """Upstream stages for this config (a strategy may need no embeddings, say)."""
        return self.upstream

    def check(self, cfg: SectionView) -> None:
        """Cheap checks of inputs before anything is submitted (raise ConfigError)."""

    def gpu_libraries(self, cfg: SectionView) -> tuple[str, ...]:
        """What must see a GPU when this stage's task has ``gpus > 0``: ``torch``, ``cupy``."""
        return ("torch",)

    def check_resources(self, cfg: SectionView, resources: Resources) -> None:
        """Checks of the config against the resources a node will get (its profile included), at
        ``plan`` and ``submit``: what would otherwise fail inside the job after the queue wait."""

    def fingerprint(self, cfg: SectionView) -> list[str]:
        """What this stage's external inputs look like now; enters the key, so changed input
        files are recomputed."""
        return []

    def plan(self, cfg: SectionView, upstream: dict[str, list[Any]] | None = None) -> int:
        """How many array tasks this stage runs for this config. ``upstream`` maps each upstream
        stage to its nodes, whose ``estimate`` may say how many records are coming."""
        return 1

    def resources(self, cfg: SectionView, cluster: Resources) -> Resources:
        """What one task asks for. Lowest first: these defaults, the ``cluster`` section, the
        resource profile (the stage's own ``resources.profile``, else ``cluster.profile``), the
        stage section's ``resources``. The more specific wins: a profile says what each stage
        needs on one cluster shape, so it overrides experiment-wide values, and a stage's own
        ``resources`` override the profile."""
        from hpcgen.config import profiles

        own = cfg[self.section].resources if self.section else None
        profile = profiles.chosen(own, cluster)
        chosen = profiles.load(profile).for_stage(self.name, self.section) if profile else None
        return layered(self.defaults, cluster, chosen, own)

    def estimate(self, cfg: SectionView, size: int, upstream: dict[str, list[Any]] | None = None) -> Estimate:
        """What ``plan`` adds up for this node (GPU-hours, checkpoint disk, records it holds)."""
        return Estimate()

    def run(self, task: Task) -> None:
        raise NotImplementedError(f"stage {self.name!r} has no run()")

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


@dataclass
class Upstream:
    """One upstream node a task reads from: its stage, key, directory and the runs it served."""

    stage: str
    key: str
    dir: Path
    size: int
    runs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunInfo:
    """One run as stages over many runs see it: its name, matrix axis values and label."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": self.values, "label": self.label}


@dataclass(frozen=True)
class TaskMeta:
    """What a task knows of its experiment besides its config sections and inputs.

    ``submit`` fills it in (``TaskSpec.extra``, a plain dict on its way to the job; ``from_dict``
    turns it into this): the experiment's name, the runs the node serves, and for stages over the
    whole experiment (the report) the provenance it prints; the executor adds the container image
    the task runs in, and the runner, in the job, the stop request and the task's resources."""

    experiment: str = ""
    runs: dict[str, RunInfo] = field(default_factory=dict)  # run id -> run
    provenance: dict[str, Any] | None = None  # hpcgen.provenance.describe (experiment-scoped stages)
    container: dict[str, Any] | None = None  # the image's description (cluster.container), if any
    stop: StopRequest | None = None  # the scheduler's request to stop early (the runner's)
    resources: TaskResources | None = None  # CPUs and GPUs this process got (the runner's)

    @classmethod
    def from_dict(cls, data: TaskMeta | Mapping[str, Any] | None) -> TaskMeta:
        """From ``TaskSpec.extra`` or ``Experiment.meta()``; an unknown key is an error (a new
        piece of metadata gets a field here)."""
        if isinstance(data, TaskMeta):
            return data
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"task metadata has no field {unknown[0]!r}: add it to TaskMeta (hpcgen.pipeline.stage)")
        runs = {run_id: info if isinstance(info, RunInfo) else
                RunInfo(name=info["name"], values=dict(info.get("values") or {}), label=info.get("label"))
                for run_id, info in (data.get("runs") or {}).items()}
        return cls(experiment=data.get("experiment") or "", runs=runs, provenance=data.get("provenance"),
                   container=data.get("container"), stop=data.get("stop"), resources=data.get("resources"))


#: how often ``Task.progress`` writes its file at most (seconds)
PROGRESS_EVERY_S = 2.0


@dataclass
class Task:
    """The context one array task runs in.

    Outputs go through ``output()``/``output_dir()``: they are written under temporary names and
    renamed into place only when ``run`` returns, before the completion marker. A task killed
    mid-write therefore leaves nothing that looks complete.
    """

    stage: str
    key: str
    index: int
    size: int
    dir: Path
    config: SectionView
    inputs: dict[str, list[Upstream]]
    runs: tuple[str, ...]
    log: logging.Logger
    attempt: str
    rank: int = 0  # this process among the task's processes (multi-node training has several)
    world_size: int = 1
    meta: TaskMeta = field(default_factory=TaskMeta)  # the experiment, its runs' names and axis values
    _staged: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.meta, TaskMeta):  # the runner hands over TaskSpec.extra, a dict
            self.meta = TaskMeta.from_dict(self.meta)

    @property
    def work_dir(self) -> Path:
        """A directory that survives failed and requeued attempts (resumable state lives here).
        Unlike outputs it is not checksummed, and nothing in it counts as complete by itself."""
        from hpcgen.pipeline.store import work_name

        path = self.dir / work_name(self.index)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def progress(self, done: int, total: int, unit: str = "items") -> None:
        """Say how far the task is (``done`` of ``total`` ``unit``). Written, at most every
        ``PROGRESS_EVERY_S`` seconds and always at the end, to ``progress/INDEX.json`` in the
        node directory (``hpcgen.pipeline.store.read_progress``), where the local executor
        shows it beside the stage's bar. Only rank 0 writes; nothing reads it for results."""
        if self.rank != 0:
            return
        import json
        import os
        import time

        clock = time.monotonic()
        first = self.__dict__.setdefault("_progress_start", (clock, done))
        if done < total and clock - self.__dict__.get("_progress_said", -1e9) < PROGRESS_EVERY_S:
            return
        self.__dict__["_progress_said"] = clock
        elapsed = clock - first[0]
        rate = (done - first[1]) / elapsed if elapsed > 0 else None
        path = self.dir / "progress" / f"{self.index:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"done": done, "total": total, "unit": unit, "rate_per_s": rate,
                                   "attempt": self.attempt}))
        os.replace(tmp, path)

    def output(self, name: str) -> Path:
        """A path to write the output file ``name`` to; it appears as ``dir/name`` on success."""
        return self._stage_path(name, is_dir=False)

    def output_dir(self, name: str) -> Path:
        """Like ``output`` for a directory of files (a model snapshot, say)."""
        return self._stage_path(name, is_dir=True)

    def _stage_path(self, name: str, is_dir: bool) -> Path:
        if "/" in name or name.startswith(".") or not name:
            raise ValueError(f"output name {name!r} must be a plain file name")
        if name in self._staged:
            return self._staged[name]
        tmp = self.dir / f".tmp.{self.index:05d}.{self.attempt}.{name}"
        if is_dir:
            tmp.mkdir(parents=True, exist_ok=True)
        self._staged[name] = tmp
        return tmp

    def input(self, stage: str) -> Upstream:
        """The single upstream node of ``stage`` (run-scoped stages have exactly one)."""
        nodes = self.inputs.get(stage, [])
        if len(nodes) != 1:
            raise LookupError(f"task {self.stage} has {len(nodes)} inputs from {stage!r}, expected 1")
        return nodes[0]
