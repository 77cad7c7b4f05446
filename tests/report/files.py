"""Hand-made stage outputs for the report tests: losses-*.h5, arrangement.h5, train summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np


def losses_file(path: Path, steps, loss, tasks, items_per_step: int = 16, metrics: dict | None = None) -> Path:
    """``loss``: (k, n) per snapshot and test record; ``tasks``: n task names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("steps", data=np.asarray(steps, dtype=np.int64))
        f.create_dataset("items_seen", data=np.asarray(steps, dtype=np.int64) * items_per_step)
        f.create_dataset("loss", data=np.asarray(loss, dtype=np.float32))
        f.create_dataset("ids", data=[f"r{i}" for i in range(len(tasks))], dtype=h5py.string_dtype())
        f.create_dataset("task", data=list(tasks), dtype=h5py.string_dtype())
        f.create_dataset("generalist", data=np.ones(len(tasks), dtype=bool))
        for name, values in (metrics or {}).items():
            f.create_dataset(name, data=np.asarray(values, dtype=np.float32))
    return path


def arrangement_file(path: Path, n: int = 160, sd=None, sd_interval: int = 16, measures: dict | None = None,
                     per_task: dict | None = None, tasks=(), measure_interval: int = 16, window=None,
                     strategy: str = "tma") -> Path:
    """``measures``: name -> (K,) over the overall test set; ``per_task``: name -> (K, T)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("order", data=np.arange(n, dtype=np.int64))
        f.attrs["strategy"] = strategy
        f.attrs["sd_interval"] = sd_interval
        f.attrs["params"] = json.dumps({"strategy": strategy, "window": list(window) if window else None})
        if sd is not None:
            f.create_dataset("sd_curve", data=np.asarray(sd, dtype=np.float64))
        if measures or per_task:
            k = len(next(iter((measures or per_task).values())))
            g = f.create_group("measures")
            g.create_dataset("items_seen", data=np.minimum(np.arange(1, k + 1) * measure_interval, n))
            g.create_dataset("tasks", data=list(tasks), dtype=h5py.string_dtype())
            for name, v in (measures or {}).items():
                g.create_dataset(f"overall/{name}", data=np.asarray(v, dtype=np.float64))
            for name, v in (per_task or {}).items():
                g.create_dataset(f"per_task/{name}", data=np.asarray(v, dtype=np.float64))
    return path


class Store:
    """Upstream node directories as the aggregate stage sees them (one node per run and stage)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta: dict = {"runs": {}, "experiment": "hand-made"}
        self.inputs: dict[str, list] = {"evaluate": [], "arrange": [], "train": []}

    def node(self, stage: str, run_id: str) -> Path:
        folder = self.root / stage / run_id
        folder.mkdir(parents=True, exist_ok=True)
        if not any(run_id in u.runs for u in self.inputs[stage]):
            self.inputs[stage].append(SimpleNamespace(stage=stage, dir=folder, runs=(run_id,)))
        return folder

    def run(self, run_id: str, name: str, values: dict, label: str | None, steps, loss, tasks=("t1", "t2"),
            train: dict | None = None, **arrangement) -> None:
        """A run: its losses (``loss`` per snapshot: a number for every record, or a list per record)."""
        self.meta["runs"][run_id] = {"name": name, "values": values, "label": label}
        rows = [[v] * len(tasks) if np.isscalar(v) else v for v in loss]
        losses_file(self.node("evaluate", run_id) / "losses-00000.h5", steps, rows, tasks)
        if "measure_tasks" in arrangement:  # the arrangement's /measures/tasks
            arrangement["tasks"] = arrangement.pop("measure_tasks")
        if arrangement:
            arrangement_file(self.node("arrange", run_id) / "arrangement.h5", **arrangement)
        if train is not None:
            (self.node("train", run_id) / "summary.json").write_text(json.dumps(train))
