"""losses: the evaluate stage's output, per-record test metrics of every snapshot of one run.

``losses-IIIII.h5``, one per evaluation array task (task i holds snapshots i, i + tasks, ...):
    /steps       int64 (k)          the snapshots' training steps
    /items_seen  int64 (k)
    /loss        float32 (k, n)     per snapshot and test record: the mean cross-entropy over the
                                    answer tokens (NaN where it could not be computed)
    /ids, /task  utf-8 (n)          the test records, in records.parquet order
    /generalist  bool (n)           in the generalist subset
    /seen        bool (n)           the record's task has training records (False for every unseen task)
    /source      utf-8 (n)          the data source (its label) of each test record
    /exact_match, /rouge1, /rougeL, /reward  float32 (k, n)  with ``eval.generate`` (greedy answers;
                                    rouge with ``eval.rouge``, reward with ``eval.reward_model``)
    /exact_match (or /exact_match_forced beside a generated one)  float32 (k, n)  with
                                    ``eval.forced_exact_match``: greedy decoding's verdict from
                                    the loss forward, no generation
    attributes: snapshots (k), block (i), blocks (the array size)
Files written before /seen and /source existed read as every record unseen, of source "all".

While a task runs, each snapshot's result is committed on its own in the task's work directory
(``step-SSSSSS.h5``: one (n,) dataset per metric, renamed into place), so that a requeued task
goes on with the next snapshot; those are not outputs.

Written by ``write_losses``; read by ``load_losses`` (the report joins a run's files in step order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpcgen.contracts import Node, node_dir

STR = h5py.string_dtype("utf-8")

#: the (k, n) metrics besides /loss that the report reads where every file of a run has them
GENERATION_METRICS = ("exact_match", "rouge1", "rougeL", "reward")
DEFAULT_SOURCE = "all"  # the source of records in files without /source (or with an empty label)


def losses_name(i: int) -> str:
    return f"losses-{i:05d}.h5"


def loss_files(node: Node) -> list[Path]:
    """The losses files of the evaluate node ``node`` (every array task's), by task."""
    return sorted(node_dir(node).glob("losses-*.h5"))


def write_losses(path: Path, steps: Sequence[int], items_seen: Sequence[int], results: dict[str, np.ndarray], *,
                 ids: list[str], tasks: list, generalist: Sequence[bool], seen: Sequence[bool],
                 source: list[str], block: int, blocks: int) -> None:
    """losses-IIIII.h5 at ``path``: ``results`` maps each metric (loss first) to (k, n) values."""
    with h5py.File(path, "w") as f:
        f.create_dataset("steps", data=np.asarray(steps, dtype=np.int64))
        f.create_dataset("items_seen", data=np.asarray(items_seen, dtype=np.int64))
        for metric, values in results.items():
            f.create_dataset(metric, data=values)
        f.create_dataset("ids", data=ids, dtype=STR)
        f.create_dataset("task", data=tasks, dtype=STR)
        f.create_dataset("generalist", data=np.asarray([bool(g) for g in generalist]))
        f.create_dataset("seen", data=np.asarray(seen, dtype=bool))
        f.create_dataset("source", data=source, dtype=STR)
        f.attrs.update({"snapshots": len(steps), "block": block, "blocks": blocks})


@dataclass
class Losses:
    """The evaluation outputs of one run, snapshots in step order."""

    steps: np.ndarray
    items_seen: np.ndarray
    loss: np.ndarray  # (k x n)
    task: np.ndarray  # (n)
    generalist: np.ndarray  # (n)
    metrics: dict[str, np.ndarray]  # (k x n) each, where every file has it
    seen: np.ndarray | None = None  # bool (n): the record's task has training records
    source: np.ndarray | None = None  # (n) the label of the test source of each record

    def __post_init__(self) -> None:
        n = len(self.task)
        if self.seen is None:  # older files: every test record is of an unseen task
            self.seen = np.zeros(n, dtype=bool)
        if self.source is None:
            self.source = np.full(n, DEFAULT_SOURCE, dtype=object)


def _strings(values) -> np.ndarray:
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def load_losses(files: list[Path]) -> Losses:
    """The snapshots of every file (each evaluation array task writes one) in step order. The
    records (task, generalist, seen, source) are the same in every file; the last file's are kept."""
    parts: dict[str, list[np.ndarray]] = {"steps": [], "items_seen": [], "loss": []}
    task = generalist = seen = source = None
    for path in files:
        with h5py.File(path, "r") as f:
            for key in ("steps", "items_seen", "loss", *GENERATION_METRICS):
                if key in f:
                    parts.setdefault(key, []).append(f[key][:])
            task = _strings(f["task"][:])
            generalist = f["generalist"][:]
            seen = f["seen"][:].astype(bool) if "seen" in f else None
            if "source" in f:
                source = _strings(f["source"][:])
                source[source == ""] = DEFAULT_SOURCE
            else:
                source = None
    if task is None or generalist is None:
        raise ValueError("load_losses needs at least one losses file")
    steps = np.concatenate(parts["steps"])
    order = np.argsort(steps, kind="stable")
    metrics = {m: np.concatenate(parts[m])[order] for m in GENERATION_METRICS if len(parts.get(m, [])) == len(files)}
    return Losses(steps[order], np.concatenate(parts["items_seen"])[order], np.concatenate(parts["loss"])[order],
                  task, generalist, metrics, seen, source)


# --------------------------------------------------------------------------------------------
# The work files of a running evaluation task: one snapshot's result each, committed on its own


def step_file(work_dir: Path, step: int) -> Path:
    return work_dir / f"step-{step:06d}.h5"


def write_step(path: Path, values: dict[str, np.ndarray]) -> None:
    """One snapshot's (n,) values per metric, written under a temporary name and renamed into
    place: the file exists only once complete."""
    tmp = path.with_name(f".tmp-{path.name}")
    with h5py.File(tmp, "w") as f:
        for metric, v in values.items():
            f.create_dataset(metric, data=v)
    os.replace(tmp, path)


def read_step(path: Path, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {m: f[m][:] for m in metrics}
