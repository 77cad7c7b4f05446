"""``verify``: does every completion marker still describe its outputs?

A marker records the sha256 and size of each output at the moment the task completed. Files are
the state, so an output deleted, truncated or edited later (by a person, a quota purge, a copy that
stopped half-way) makes the marker a lie: the next submit would skip the task and feed the damaged
file downstream. ``verify`` re-hashes every output of every complete task of the experiment's
graph and lists what no longer matches; ``repair`` drops those markers and the markers of
everything downstream in the graph (which was computed from the damaged files), so that the next
submit recomputes exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcgen.pipeline.graph import Graph
from hpcgen.pipeline.store import Store, read_json, sha256_file


@dataclass(frozen=True)
class Mismatch:
    task: str  # STAGE/KEY/INDEX
    node: str  # STAGE/KEY
    index: int
    output: str  # the output's name, with the file inside it for directory outputs
    reason: str

    def __str__(self) -> str:
        return f"{self.task}: {self.output}: {self.reason}"


@dataclass
class Verified:
    tasks: int  # complete tasks checked
    files: int  # output files re-hashed
    bytes: int
    mismatches: list[Mismatch]


def _check_file(path: Path, info: Mapping[str, Any], hashed: Callable[[int], None]) -> str | None:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != info.get("bytes"):
        return f"size {size} bytes, {info.get('bytes')} recorded"
    hashed(size)
    if sha256_file(path) != info.get("sha256"):
        return "content changed (sha256 differs from the marker's)"
    return None


def verify(graph: Graph, store: Store) -> Verified:
    """Re-hash the outputs of every task of ``graph`` that has a completion marker."""
    result = Verified(tasks=0, files=0, bytes=0, mismatches=[])

    def hashed(size: int) -> None:
        result.files += 1
        result.bytes += size

    for node in graph.nodes.values():
        stage, key = node.stage.name, node.key
        base = store.node_dir(stage, key)
        for index in sorted(store.completed(stage, key)):
            if index >= node.size:
                continue
            task = f"{node.id}/{index:05d}"
            marker = read_json(store.marker(stage, key, index))
            result.tasks += 1
            if not isinstance(marker, dict) or not isinstance(marker.get("outputs"), dict):
                result.mismatches.append(Mismatch(task, node.id, index, "(marker)", "unreadable marker"))
                continue
            for name, info in sorted(marker["outputs"].items()):
                target = base / name
                if "files" not in info:
                    reason = _check_file(target, info, hashed)
                    if reason:
                        result.mismatches.append(Mismatch(task, node.id, index, name, reason))
                    continue
                if not target.is_dir():
                    result.mismatches.append(Mismatch(task, node.id, index, name + "/", "missing"))
                    continue
                for rel, sub in sorted(info["files"].items()):
                    reason = _check_file(target / rel, sub, hashed)
                    if reason:
                        result.mismatches.append(Mismatch(task, node.id, index, f"{name}/{rel}", reason))
                recorded = set(info["files"])
                for extra in sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()):
                    if extra not in recorded:
                        result.mismatches.append(Mismatch(task, node.id, index, f"{name}/{extra}",
                                                          "not in the marker (added after completion)"))
    return result


def repair(graph: Graph, store: Store, mismatches: list[Mismatch]) -> list[str]:
    """Drop the markers of the damaged tasks and of every task downstream of them in ``graph``.
    Returns the tasks whose markers were dropped."""
    dropped: list[str] = []
    damaged = {(m.node, m.index) for m in mismatches}
    below = graph.downstream({m.node for m in mismatches}) - {m.node for m in mismatches}
    for node in graph.nodes.values():
        for index in range(node.size):
            if (node.id, index) in damaged or node.id in below:
                if store.marker(node.stage.name, node.key, index).exists():
                    store.invalidate(node.stage.name, node.key, index)
                    dropped.append(f"{node.id}/{index:05d}")
    return dropped
