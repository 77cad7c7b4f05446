"""arrangement: the arrange stage's output, the training order of one run.

``arrangement.h5``:
    /order                 int64 (n)        training rows in training order (0 = first training record)
    /ids                   utf-8 (n)        their record ids
    /round                 int32 (n)        round of each position (round-based strategies only)
    /sd_curve              float64 (K)      the headline SD_k at every ``sd_interval`` items (when
                                            distances exist; see hpcgen.stages.arrange)
    /measures/items_seen   int64 (K)        items seen at checkpoint k: min(k * sd_interval, n)
    /measures/tasks        utf-8 (T)        the unseen test tasks
    /measures/overall/<m>  float64 (K)      each measure of B.4 / Figure 15 against the whole test set
    /measures/per_task/<m> float64 (K, T)   and against each unseen task
    attributes: strategy, params (the arrange section as JSON), n_train, n_test, n_selected,
    hpcgen_version; with an SD_k curve sd_distance, sd_metric, sd_interval, sd_measure (and
    sd_w_min, sd_w_avg for a WSD curve); what the strategy reports (rounds, passes, wsd_w_min,
    wsd_w_avg, ...)
The measures <m> are cosine_{min,max,avg,centroid}, euclidean_{...} and bigram_kl. Strategies
that need no embeddings have no curves (no /sd_curve, no /measures).

Written by ``write_arrangement``; the train stage reads the order (``read_order``), the report
all of it (``read_arrangement``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcgen.contracts import Node, node_dir, require, upstream_error
from hpcgen.version import __version__

ARRANGEMENT = "arrangement.h5"
STR = h5py.string_dtype("utf-8")


@dataclass
class Measures:
    """``/measures``: per checkpoint, each measure over the whole test set and per unseen task."""

    items_seen: np.ndarray  # (K,)
    tasks: list[str]  # (T,)
    overall: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K,)
    per_task: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (K, T)


@dataclass
class Arrangement:
    """One arrangement.h5, in memory."""

    order: np.ndarray
    attrs: dict[str, Any]
    ids: list[str] | None = None
    rounds: np.ndarray | None = None
    sd_curve: np.ndarray | None = None
    measures: Measures | None = None

    @property
    def strategy(self) -> str | None:
        return self.attrs.get("strategy")

    @property
    def sd_interval(self) -> int | None:
        v = self.attrs.get("sd_interval")
        return int(v) if v is not None else None

    @property
    def params(self) -> dict[str, Any]:
        """The arrange section it was made with ({} where the attribute is missing or malformed)."""
        try:
            value = json.loads(self.attrs.get("params") or "{}")
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def window(self) -> tuple[int, int] | None:
        """``params.window``, the TMA round window [i, j), if well formed."""
        window = self.params.get("window")
        if window is None:
            return None
        try:
            i, j = (int(x) for x in window)  # anything else: None below
            return (i, j)
        except (ValueError, TypeError):
            return None


def write_arrangement(path: Path, arrangement: Arrangement) -> None:
    a = arrangement
    with h5py.File(path, "w") as f:
        f.create_dataset("order", data=a.order)
        if a.ids is not None:
            f.create_dataset("ids", data=list(a.ids), dtype=STR)
        if a.rounds is not None:
            f.create_dataset("round", data=a.rounds)
        if a.sd_curve is not None:
            f.create_dataset("sd_curve", data=a.sd_curve)
        if a.measures is not None:
            g = f.create_group("measures")
            g.create_dataset("items_seen", data=a.measures.items_seen)
            g.create_dataset("tasks", data=a.measures.tasks, dtype=STR)
            for name, overall in a.measures.overall.items():
                g.create_dataset(f"overall/{name}", data=overall)
            for name, per_task in a.measures.per_task.items():
                g.create_dataset(f"per_task/{name}", data=per_task)
        f.attrs.update({**a.attrs, "hpcgen_version": __version__})


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_order(node: Node) -> np.ndarray:
    """The training order (``/order``) of the arrange node ``node``."""
    path = require(node, ARRANGEMENT)
    try:
        with h5py.File(path, "r") as f:
            if "order" not in f:
                raise upstream_error(node, ARRANGEMENT, "has no /order")
            return f["order"][:]
    except OSError as exc:
        raise upstream_error(node, ARRANGEMENT, f"cannot be read as HDF5 ({exc})") from None


def read_arrangement(path: Path) -> Arrangement:
    """arrangement.h5 at ``path`` (``arrangement_path(node)``), all of it. Measures whose shapes
    do not fit ``/measures/items_seen`` and ``/measures/tasks`` are left out."""
    with h5py.File(path, "r") as f:
        attrs = {k: _text(v) if isinstance(v, (bytes, str)) else v for k, v in f.attrs.items()}
        out = Arrangement(order=f["order"][:] if "order" in f else np.zeros(0, dtype=np.int64), attrs=attrs,
                          ids=[_text(x) for x in f["ids"][:]] if "ids" in f else None,
                          rounds=f["round"][:] if "round" in f else None,
                          sd_curve=f["sd_curve"][:] if "sd_curve" in f else None)
        m = f.get("measures")
        if isinstance(m, h5py.Group) and "items_seen" in m:
            items = m["items_seen"][:].astype(np.int64)
            tasks = [_text(t) for t in m["tasks"][:]] if "tasks" in m else []
            k = len(items)
            measures = Measures(items, tasks)
            for name, group in (("overall", measures.overall), ("per_task", measures.per_task)):
                g = m.get(name)
                if not isinstance(g, h5py.Group):
                    continue
                shape = (k,) if name == "overall" else (k, len(tasks))
                for key in g:
                    if g[key].shape == shape:
                        group[key] = g[key][:].astype(np.float64)
            out.measures = measures
    return out


def arrangement_path(node: Node) -> Path:
    """Where arrangement.h5 of the arrange node ``node`` is (whether or not it exists)."""
    return node_dir(node) / ARRANGEMENT
