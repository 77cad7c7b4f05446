"""What one array task asks the scheduler for (``Resources``), and how layers of it combine."""

from __future__ import annotations

from pydantic import BaseModel, Field

from hpcgen.config.base import MemMB, Minutes, Model, SafeStr, SbatchKey, SbatchValue


class Resources(Model):
    """What one array task asks the scheduler for. ``None`` means: inherit.

    Precedence, lowest first: the stage's built-in needs, the ``cluster`` section, the stage
    section's own ``resources``.
    """

    nodes: int | None = Field(default=None, ge=1)
    tasks_per_node: int | None = Field(default=None, ge=1)
    cpus: int | None = Field(default=None, ge=1, description="CPUs per task")
    gpus: int | None = Field(default=None, ge=0, description="GPUs per node")
    mem: MemMB | None = Field(default=None, description="memory per node")
    time: Minutes | None = Field(default=None, description="time limit")
    partition: SafeStr | None = None
    account: SafeStr | None = None
    qos: SafeStr | None = None
    array_parallelism: int | None = Field(default=None, ge=1, description="array tasks running at once")
    signal_delay_s: int | None = Field(
        default=None, ge=0, description="SIGUSR2 this many seconds before the time limit, then requeue (default 120): "
        "long enough for a step, a snapshot and a resumable save")
    sbatch: dict[SbatchKey, SbatchValue] = Field(
        default_factory=dict, description="extra sbatch options, e.g. {constraint: a100}"
    )


#: seconds between the requeue signal and the time limit, where no layer sets signal_delay_s
DEFAULT_SIGNAL_DELAY_S = 120


def signal_delay(resources: Resources) -> int:
    return DEFAULT_SIGNAL_DELAY_S if resources.signal_delay_s is None else resources.signal_delay_s


def layered(base: Resources, *layers: BaseModel | None) -> Resources:
    """``base`` with the values each layer sets on top, lowest first. Layers may be any model
    with Resources' fields (the cluster section, a stage's resources); ``sbatch`` options merge
    key by key."""
    merged = base.model_dump()
    fields = set(Resources.model_fields)
    for layer in layers:
        if layer is None:
            continue
        for key, value in layer.model_dump(include=fields).items():
            if key == "sbatch":
                merged["sbatch"] = {**merged["sbatch"], **value}
            elif value is not None:
                merged[key] = value
    return Resources(**merged)
