"""Experiment files: load, validate, apply overrides, expand the matrix."""

from __future__ import annotations

import os
import re
import tempfile
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from hpcgen.config import presets, profiles, schema, yamlio
from hpcgen.config.matrix import Matrix, Run, expand, parse_matrix, parse_override, set_path
from hpcgen.config.schema import RESERVED, Cluster, StageConfig, experiment_model
from hpcgen.config.validation import _unwrap, child_schema, suggest
from hpcgen.errors import ConfigError

__all__ = ["Experiment", "Run", "load_experiment", "check_writable"]


class _Stage(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def section(self) -> str | None: ...


class Pipeline(Protocol):
    """What loading an experiment needs of its pipeline (a ``hpcgen.pipeline.registry.Pipeline``):
    the stages in order, with the sections they own. Named here, not imported, so that the config
    layer imports nothing of the pipeline layer, which builds on it."""

    order: list[str]

    def __iter__(self) -> Iterator[_Stage]: ...

    def sections(self) -> dict[str, type[StageConfig]]: ...


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
    aliases = section_aliases(pipeline)
    doc = yamlio.load(path, aliases=aliases)
    data = rebase_paths(dict(doc.data), doc, model, path)
    raw_matrix = data.pop("matrix", None)
    for key in data:
        if key not in RESERVED and key not in model.model_fields:
            file, line = doc.where((key,))
            raise ConfigError("unknown key", file=file, line=line, key=key,
                              fix=suggest(key, list(model.model_fields)) or "remove it")
    if "preset" in data:
        data = presets.apply({k: v for k, v in data.items() if k != "preset"}, data["preset"], doc.where(("preset",)))
    matrix = parse_matrix(doc, raw_matrix, model)
    for text in overrides:
        key, value = parse_override(yamlio._canonical_dotted(text.strip(), aliases), model)
        # what the override sets is the command line's, not the file's: errors name --set
        keypath = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        for known in [k for k in doc.origins if k[:len(keypath)] == keypath]:
            del doc.origins[known]
        doc.origins[keypath] = ("--set", None)
        for axis in matrix.axes:
            if key in axis.paths:  # an override of an axis pins it
                axis.origin = ("--set", None)
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
    runs = expand(doc, data, matrix, model, {"base_dir": str(path.resolve().parent), "stages": list(pipeline.order),
                                                  "stage_aliases": {v: k for k, v in aliases.items()}})
    first: Any = runs[0].config
    root = Path(first.output_dir)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    exp = Experiment(name=first.name, file=path, output_dir=root, cluster=first.cluster, runs=runs,
                     matrix=matrix, model=model, doc=doc, raw_matrix=raw_matrix, overrides=tuple(overrides))
    if check_output:
        check_writable(root, doc.where(("output_dir",)))
    return exp


def section_aliases(pipeline: Pipeline) -> dict[str, str]:
    """Other names of a stage's section: the stage's own name (``evaluate`` for ``eval``,
    ``prepare`` for ``data``, ``aggregate`` for ``report``)."""
    return {s.name: s.section for s in pipeline if s.section and s.section != s.name}


def _path_kind(parent: Any, key: str) -> str | None:
    """``"input"``, ``"model"`` or ``"profile"`` when field ``key`` of the model (or union of
    models) ``parent`` is an InputPath / ModelRef / ProfileRef (Optional or not), else None."""

    def kind_of(annotation: Any, metadata: list) -> str | None:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            return next((k for a in typing.get_args(annotation) if (k := kind_of(a, []))), None)
        if origin is typing.Annotated:
            metadata = [*metadata, *typing.get_args(annotation)[1:]]
        for meta in metadata:
            func = getattr(meta, "func", None)
            if func is schema._input_path:
                return "input"
            if func is schema._model_ref:
                return "model"
            if func is profiles.profile_ref:
                return "profile"
        return None

    members = getattr(parent, "members", None) or [parent]
    for member in members:
        fields = getattr(member, "model_fields", None)
        if isinstance(fields, dict) and key in fields:
            kind = kind_of(fields[key].annotation, list(fields[key].metadata))
            if kind:
                return kind
    return None


def rebase_paths(data: dict[str, Any], doc: yamlio.Document, model: type[BaseModel], path: Path) -> dict[str, Any]:
    """Relative paths are relative to the file that writes them: a data directory, split file,
    image or model directory named in an included file (``include: [../base.yaml]``) is resolved
    against that file's folder here, before validation resolves the experiment file's own against
    its folder. A model name that is no path there (``gpt2``) stays a hub name, a profile name
    without ``/`` or ``.yaml`` a bundled profile."""
    home = path.resolve().parent

    def walk(node: Any, value: Any, keypath: tuple, parent: Any = None) -> Any:
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                ok, child = child_schema(node, str(k)) if node is not None else (False, None)
                out[k] = walk(child if ok else None, v, keypath + (k,), _unwrap(node) if node is not None else None)
            return out
        if isinstance(value, list):
            out_list = []
            for i, v in enumerate(value):
                ok, child = child_schema(node, str(i)) if node is not None else (False, None)
                out_list.append(walk(child if ok else None, v, keypath + (i,)))
            return out_list
        if not isinstance(value, str) or parent is None or "://" in value:
            return value
        kind = _path_kind(parent, str(keypath[-1]))
        if kind is None or Path(value).expanduser().is_absolute():
            return value
        file, _ = doc.where(keypath)
        if not file or file == "--set":
            return value
        folder = Path(file).resolve().parent
        if folder == home:
            return value
        local = folder / value
        if kind == "model" and not (value.startswith(("./", "../")) or local.exists()):
            return value
        if kind == "profile" and "/" not in value and not value.endswith((".yaml", ".yml")):
            return value  # a bundled profile's name
        return str(local.resolve())

    return walk(model, data, ())


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
