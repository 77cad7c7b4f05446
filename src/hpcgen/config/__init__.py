"""Experiment files: load, validate, apply overrides, expand the matrix."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from hpcgen.config import yamlio
from hpcgen.config.matrix import Matrix, Run, expand, parse_matrix, parse_override, set_path
from hpcgen.config.schema import RESERVED, Cluster, experiment_model, suggest
from hpcgen.errors import ConfigError

if TYPE_CHECKING:
    from hpcgen.pipeline.registry import Pipeline

__all__ = ["Experiment", "Run", "load_experiment", "check_writable"]


@dataclass
class Experiment:
    name: str
    file: Path
    output_dir: Path  # the output root: shared store plus one directory per experiment
    cluster: Cluster
    runs: list[Run]
    matrix: Matrix
    model: type[BaseModel]
    doc: yamlio.Document | None = None
    raw_matrix: Any = None  # the matrix section as written
    overrides: tuple[str, ...] = ()

    def meta(self) -> dict[str, Any]:
        """What stages over many runs (the report) know of the experiment: each run's name, axis
        values and label, and the provenance the report prints at its top."""
        from hpcgen.provenance import describe

        runs = {r.id: {"name": r.name, "values": r.values, "label": r.label} for r in self.runs}
        return {"runs": runs, "experiment": self.name, "provenance": describe(self)}

    @property
    def dir(self) -> Path:
        return self.output_dir / "experiments" / self.name

    @property
    def store(self) -> Path:
        return self.output_dir / "store"

    def locate(self, err: ConfigError) -> ConfigError:
        """Point an error raised after loading (key ``data.sources[0].path``) at its line."""
        if err.file or not err.key or self.doc is None:
            return err
        parts: list = []
        for piece in re.findall(r"[^.\[\]]+|\[\d+\]", err.key):
            parts.append(int(piece[1:-1]) if piece.startswith("[") else piece)
        file, line = self.doc.where(tuple(parts))
        if line is None:
            file = str(self.file)
        return err.located(file, line)


def load_experiment(path: str | Path, pipeline: Pipeline, overrides: list[str] | tuple[str, ...] = (),
                    *, check_output: bool = True) -> Experiment:
    """Everything about an experiment file that can be checked without running anything.

    Raises ConfigError (exit code 2) on the first problem; writes nothing.
    """
    path = Path(path)
    model = experiment_model(pipeline.sections())
    doc = yamlio.load(path)
    data = dict(doc.data)
    raw_matrix = data.pop("matrix", None)
    for key in data:
        if key not in RESERVED and key not in model.model_fields:
            file, line = doc.where((key,))
            raise ConfigError("unknown key", file=file, line=line, key=key,
                              fix=suggest(key, list(model.model_fields)) or "remove it")
    if "preset" in data:
        from hpcgen.config import presets

        data = presets.apply({k: v for k, v in data.items() if k != "preset"}, data["preset"], doc.where(("preset",)))
    matrix = parse_matrix(doc, raw_matrix, model)
    for text in overrides:
        key, value = parse_override(text, model)
        for axis in matrix.axes:
            if key in axis.paths:  # an override of an axis pins it
                i = axis.paths.index(key)
                if len(axis.paths) == 1 and axis.labels is None:
                    axis.values = [(value,)]
                else:
                    keep = [j for j, v in enumerate(axis.values) if v[i] == value]
                    if len(axis.paths) == 1 and not keep:  # a labelled one-axis group: a new value, unnamed
                        axis.values, axis.labels = [(value,)], None
                        continue
                    axis.values = [axis.values[j] for j in keep]
                    if axis.labels is not None:
                        axis.labels = [axis.labels[j] for j in keep]
                    if not axis.values:
                        raise ConfigError(f"{value!r} is not one of the values of its zip group",
                                          file="--set", key=key, fix="pick a value from the zip group")
        data = set_path(data, key, value)
    runs = expand(doc, data, matrix, model, {"base_dir": str(path.resolve().parent), "stages": list(pipeline.order)})
    first: Any = runs[0].config
    root = Path(first.output_dir)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    exp = Experiment(name=first.name, file=path, output_dir=root, cluster=first.cluster, runs=runs,
                     matrix=matrix, model=model, doc=doc, raw_matrix=raw_matrix, overrides=tuple(overrides))
    if check_output:
        check_writable(root, doc.where(("output_dir",)))
    return exp


def check_writable(root: Path, origin: tuple[str | None, int | None] = (None, None)) -> None:
    """Fail unless ``root`` exists as a writable directory or could be created. Writes nothing there."""
    probe = root
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    file, line = origin
    if not probe.is_dir():
        raise ConfigError(f"output root {str(root)!r} is unusable: {str(probe)!r} is not a directory",
                          file=file, line=line, key="output_dir", fix="choose another output_dir")
    try:
        # os.access is not enough (root passes it on read-only mounts): try a real file.
        with tempfile.TemporaryFile(dir=probe) as fh:
            fh.write(b"\0" * 4096)  # a full disk accepts an empty file, not a block of data
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"output root {str(root)!r} is not writable ({reason} in {str(probe)!r})",
                          file=file, line=line, key="output_dir",
                          fix="choose a writable output_dir or fix its permissions") from None
