"""snapshots: the train stage's output, the evaluation snapshots of one run and how training went.

``snapshots.json``: a JSON list, one entry per evaluation snapshot in step order (``Snapshot``):
    step        int    the global training step it was taken at
    path        str    its folder, relative to the train node (``work-IIIII/snapshots/step-SSSSSS``)
    bytes       int    the folder's size on disk
    items_seen  int    training items consumed up to that step
    loss        float  the training loss at that step
The folders themselves (a full model or a LoRA adapter, the tokenizer, and ``snapshot.json``
with step, items_seen and loss, written last) are hpcgen.training.snapshot's format, and
``load_snapshot`` loads either kind; they live in the work directory, so they are not
checksummed outputs and ``eval.delete_after`` may delete their weights.

``summary.json``: the training loop's result (hpcgen.training.loop.train): steps, global_batch,
world_size, records_truncated, records_too_long, too_long (the rows left out), parameters,
trainable_parameters, ... The report reads it where it exists and takes what it knows.

``metrics.jsonl``: one JSON object per training step (loss, lr, grad_norm, tokens/s, items; see
hpcgen.training.loop), copied from the work directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, TypedDict

from hpcgen.contracts import Node, node_dir, require, upstream_error

SNAPSHOTS = "snapshots.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
#: inside each snapshot folder (written by the training loop, last)
SNAPSHOT_INFO = "snapshot.json"


class Snapshot(TypedDict):
    """One entry of snapshots.json."""

    step: int
    path: str
    bytes: int
    items_seen: int
    loss: float


def collect_snapshots(folders: list[Path], node: Path) -> list[Snapshot]:
    """The entries of the snapshot folders ``folders`` (in order), paths relative to the train
    node directory ``node``, from each folder's snapshot.json."""
    out: list[Snapshot] = []
    for folder in folders:
        info = json.loads((folder / SNAPSHOT_INFO).read_text())
        out.append(Snapshot(step=info["step"], path=str(folder.relative_to(node)),
                            bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
                            items_seen=info["items_seen"], loss=info["loss"]))
    return out


def write_snapshots(path: Path, snapshots: list[Snapshot]) -> None:
    path.write_text(json.dumps(snapshots, indent=1) + "\n")


def write_summary(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=1) + "\n")


def write_metrics(path: Path, source: Path) -> None:
    """metrics.jsonl: the training loop's own file ``source``, copied."""
    shutil.copyfile(source, path)


def read_snapshots(node: Node) -> list[Snapshot]:
    """snapshots.json of the train node ``node``."""
    path = require(node, SNAPSHOTS)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise upstream_error(node, SNAPSHOTS, f"cannot be read as JSON ({exc})") from None
    keys = Snapshot.__annotations__
    if not isinstance(data, list) or not all(isinstance(s, dict) and all(k in s for k in keys) for s in data):
        raise upstream_error(node, SNAPSHOTS, f"is not a list of snapshots (each with {', '.join(keys)})")
    return data


def snapshot_dir(node: Node, snapshot: Snapshot) -> Path:
    """The folder of ``snapshot`` (an entry of the train node ``node``)."""
    return node_dir(node) / snapshot["path"]


def summary_path(node: Node) -> Path:
    """Where summary.json of the train node ``node`` is (whether or not it exists)."""
    return node_dir(node) / SUMMARY


def read_summary(path: Path | None) -> dict[str, Any]:
    """summary.json at ``path`` for the report, which makes do without: {} where it is missing,
    unreadable or not a JSON object."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
