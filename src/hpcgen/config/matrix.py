"""Matrix expansion: one experiment file to a list of runs.

Grammar of the ``matrix`` section (see tests/fixtures/config_with_*.yaml):

    matrix:
      arrange.strategy: [random, nft, tma]   # an axis: a dotted key path and its values
      train.seed: [1, 2, 3]
      zip:                                   # groups of axes that vary together
        - {train.lr: [1.0e-3, 2.0e-3], train.warmup: [5, 10]}
      exclude:                               # combinations to drop (all listed keys must match)
        - {arrange.strategy: random, train.seed: 3}
      zip:                                   # ``label``: a zip column naming each position
        - {arrange.strategy: [random, tma], label: [RT, TMA-NFT]}
      max_runs: 10000                        # refuse larger matrices (a typo can mean millions)

A ``label`` column in a zip group names the runs of each position in the report's legends and
tables (runs with the same label and different seeds are one setting with a seed spread); it is
not a config key and does not change what a run computes. Labels of several zip groups join with
" / ". Runs are the product of the axes and zip groups, in file order. ``--set key=value`` overrides
are applied to the base config first; an override of a matrix axis pins that axis.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hpcgen.config.identity import Section, canonical_json, run_identity
from hpcgen.config.validation import STRAY_ERRORS, check_path, validate
from hpcgen.config.yamlio import Document, KeyPath, dotted
from hpcgen.errors import ConfigError

DEFAULT_MAX_RUNS = 10_000
LABEL = "label"  # a zip column naming the runs, not a config key


@dataclass
class Axis:
    paths: tuple[str, ...]  # one path, or several for a zip group
    values: list[tuple[Any, ...]]  # one tuple per position, aligned with paths
    origin: tuple[str | None, int | None]
    labels: list[str] | None = None  # a zip group's label column, one per position


@dataclass
class Matrix:
    axes: list[Axis] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    max_runs: int = DEFAULT_MAX_RUNS

    def size(self) -> int:
        return math.prod(len(a.values) for a in self.axes) if self.axes else 1

    def paths(self) -> list[str]:
        return [p for a in self.axes for p in a.paths]


@dataclass
class Run:
    """One point of the matrix: its validated config, a stable id and a readable name."""

    id: str
    name: str
    config: BaseModel
    values: dict[str, Any]  # axis path -> value
    label: str | None = None  # the matrix's label for this run (zip column ``label``)
    #: every top-level field of ``config``, shared with the runs that agree on it: their canonical
    #: JSON is what run ids and stage keys hash
    sections: dict[str, Section] = field(default_factory=dict, repr=False)


# --------------------------------------------------------------------------------------------
# Parsing the matrix section


def parse_matrix(doc: Document, raw: Any, model: type[BaseModel]) -> Matrix:
    file = doc.where(("matrix",))
    if raw is None:
        return Matrix()
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of axes", file=file[0], line=file[1], key="matrix",
                          fix="write matrix: {arrange.strategy: [random, tma]}")
    matrix = Matrix()
    for key, value in raw.items():
        origin = doc.where(("matrix", key))
        if key == "max_runs":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError("must be a positive whole number", file=origin[0], line=origin[1],
                                  key="matrix.max_runs")
            matrix.max_runs = value
        elif key == "zip":
            groups = [value] if isinstance(value, dict) else value
            if not isinstance(groups, list):
                raise ConfigError("must be a list of groups of axes", file=origin[0], line=origin[1],
                                  key="matrix.zip", fix="write zip: [{a.x: [1, 2], a.y: [3, 4]}]")
            for i, group in enumerate(groups):
                matrix.axes.append(_zip_group(doc, model, group, ("matrix", "zip", i)
                                              if not isinstance(value, dict) else ("matrix", "zip")))
        elif key == "exclude":
            if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
                raise ConfigError("must be a list of mappings", file=origin[0], line=origin[1],
                                  key="matrix.exclude", fix="write exclude: [{arrange.strategy: random}]")
            matrix.exclude = value
        elif key == LABEL:
            raise ConfigError("'label' names the positions of a zip group", file=origin[0], line=origin[1],
                              key="matrix.label", fix="put label: [...] inside a zip group, beside the axes it names")
        else:
            matrix.axes.append(_axis(doc, model, key, value, ("matrix", key)))
    seen: set[str] = set()
    for axis in matrix.axes:  # the second place that varies a key is where the mistake is
        for path in axis.paths:
            if path not in seen:
                seen.add(path)
                continue
            file_, line = axis.origin
            raise ConfigError("the same key is varied twice", file=file_, line=line, key=f"matrix.{path}",
                              fix="keep it in one axis or zip group")
    for i, entry in enumerate(matrix.exclude):
        for path in entry:
            if path not in seen:
                file_, line = doc.where(("matrix", "exclude", i))
                raise ConfigError(f"'{path}' is not a matrix axis", file=file_, line=line,
                                  key="matrix.exclude", fix="exclude entries name axes of this matrix")
    return matrix


def _check_axis_path(doc: Document, model: type[BaseModel], path: str, keypath: KeyPath) -> None:
    file, line = doc.where(keypath)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", path):  # parts may be list indices
        raise ConfigError("an axis must be a dotted key path such as 'arrange.strategy'",
                          file=file, line=line, key=dotted(keypath))
    if path.split(".")[0] in ("name", "output_dir", "matrix"):
        raise ConfigError("this key cannot vary within one experiment", file=file, line=line,
                          key=dotted(keypath), fix="write a second experiment file instead")
    try:
        check_path(model, path)
    except ConfigError as exc:
        raise ConfigError(exc.reason, file=file, line=line, key=f"matrix.{path}", fix=exc.fix) from None


def _axis(doc: Document, model: type[BaseModel], path: str, values: Any, keypath: KeyPath) -> Axis:
    _check_axis_path(doc, model, path, keypath)
    file, line = doc.where(keypath)
    if not isinstance(values, list):
        raise ConfigError("a matrix axis must be a list of values", file=file, line=line,
                          key=dotted(keypath), fix=f"write {path}: [{values!r}]")
    if not values:
        raise ConfigError("matrix axis is empty", file=file, line=line, key=dotted(keypath),
                          fix="give at least one value or remove the axis")
    return Axis((path,), [(v,) for v in values], (file, line))


def _zip_group(doc: Document, model: type[BaseModel], group: Any, keypath: KeyPath) -> Axis:
    file, line = doc.where(keypath)
    if not isinstance(group, dict) or not group:
        raise ConfigError("a zip group must be a mapping of axes", file=file, line=line,
                          key=dotted(keypath), fix="write {a.x: [1, 2], a.y: [3, 4]}")
    group = dict(group)
    labels = group.pop(LABEL, None)
    if labels is not None:
        lf, ll = doc.where(keypath + (LABEL,))
        if not isinstance(labels, list) or not labels or not all(isinstance(x, (str, int, float)) and
                                                                  not isinstance(x, bool) for x in labels):
            raise ConfigError("must be a list of names, one per position of the group", file=lf, line=ll,
                              key=dotted(keypath + (LABEL,)), fix="write label: [RT, NFT, FFT]")
        labels = [str(x) for x in labels]
        bad = next((x for x in labels if not x.strip() or any(ord(c) < 32 for c in x)), None)
        if bad is not None:
            raise ConfigError(f"label {bad!r} is empty or holds a control character", file=lf, line=ll,
                              key=dotted(keypath + (LABEL,)), fix="use a short plain name such as TMA-NFT")
        if not group:
            raise ConfigError("a zip group of only labels varies nothing", file=file, line=line,
                              key=dotted(keypath), fix="add the axes the labels name")
    axes = [_axis(doc, model, p, v, keypath + (p,)) for p, v in group.items()]
    lengths = {a.paths[0]: len(a.values) for a in axes}
    if labels is not None:
        lengths[LABEL] = len(labels)
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{p} has {n}" for p, n in lengths.items())
        raise ConfigError(f"zip group of unequal lengths ({desc})", file=file, line=line,
                          key=dotted(keypath), fix="give every axis of a zip group the same number of values")
    paths = tuple(a.paths[0] for a in axes)
    values = [tuple(a.values[i][0] for a in axes) for i in range(len(axes[0].values))]
    return Axis(paths, values, (file, line), labels)


# --------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str, model: type[BaseModel]) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"expected KEY=VALUE, got {text!r}", file="--set", fix="write --set train.lr=1e-3")
    path, _, raw = text.partition("=")
    path = path.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError("contains a newline or control character", file="--set", key=path,
                          fix="values reach sbatch scripts, which are shell scripts: use plain text")
    try:
        check_path(model, path)
    except ConfigError as exc:
        raise ConfigError(f"override of a key that does not exist: {exc.reason}", file="--set",
                          key=path, fix=exc.fix) from None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def set_path(data: dict[str, Any], path: str | tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``path`` set; only the containers along the path are copied. A
    numeric part indexes a list (``data.sources.0.instructions``)."""
    parts = path.split(".") if isinstance(path, str) else path

    def put(node: Any, i: int) -> Any:
        part = parts[i]
        if isinstance(node, list) and part.isdigit():
            index = int(part)
            if index >= len(node):
                raise ConfigError(f"list index {index} is out of range ({len(node)} items)", key=".".join(parts))
            copy = list(node)
            copy[index] = value if i == len(parts) - 1 else put(copy[index], i + 1)
            return copy
        mapping = dict(node) if isinstance(node, dict) else {}
        mapping[part] = value if i == len(parts) - 1 else put(mapping.get(part), i + 1)
        return mapping

    return put(data, 0)


# --------------------------------------------------------------------------------------------
# Expansion


def _fmt(value: Any, index: int) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float, str)):
        text = format(value, "g") if isinstance(value, float) else str(value)
    else:
        return f"#{index}"
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")
    return text[:40] or f"#{index}"


def _labels(paths: list[str]) -> dict[str, str]:
    leaves: dict[str, list[str]] = {}
    for p in paths:
        leaves.setdefault(p.rsplit(".", 1)[-1], []).append(p)
    return {p: (leaf if len(ps) == 1 else p) for leaf, ps in leaves.items() for p in ps}


def _freeze_all(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_freeze(v) for v in values)


def _freeze(value: Any) -> Any:
    return canonical_json(value) if isinstance(value, (dict, list)) else (type(value).__name__, value)


def expand(doc: Document, base: dict[str, Any], matrix: Matrix, model: type[BaseModel],
           context: dict[str, Any] | None = None) -> list[Run]:
    size = matrix.size()
    if size > matrix.max_runs:
        file, line = doc.where(("matrix",))
        raise ConfigError(f"matrix expands to {size:,} runs, more than the limit of {matrix.max_runs:,}",
                          file=file, line=line, key="matrix",
                          fix="shrink an axis, or raise matrix.max_runs if you mean it")
    labels = _labels(matrix.paths())
    axis_of = {p: a for a in matrix.axes for p in a.paths}

    def where(loc: tuple[Any, ...]) -> tuple[str | None, int | None]:
        for path, axis in axis_of.items():
            if tuple(path.split(".")) == tuple(str(p) for p in loc[: len(path.split("."))]):
                return axis.origin
        return doc.where(loc)

    # One path for every run: the first is validated whole and gives the sections no axis varies;
    # a section an axis varies is validated alone, once per distinct combination of its axes'
    # values, and shared by the runs that have it. Where one fails, the whole run is validated
    # for its error, located at the line of the file (or axis) that wrote the value.
    shared: dict[tuple[Any, ...], Section] = {}  # (section, its axis values) -> the section
    first: BaseModel | None = None
    runs: list[Run] = []
    seen: dict[str, str] = {}
    seen_values: dict[str, dict[str, Any]] = {}
    positions = [range(len(a.values)) for a in matrix.axes]
    for combo in itertools.product(*positions):
        values: dict[str, Any] = {}
        parts: list[str] = []
        names: list[str] = []
        for axis, pos in zip(matrix.axes, combo):
            if axis.labels is not None:
                names.append(axis.labels[pos])
            for path, value in zip(axis.paths, axis.values[pos]):
                values[path] = value
                parts.append(f"{labels[path]}={_fmt(value, pos)}")
        if any(all(values.get(p) == v for p, v in entry.items()) for entry in matrix.exclude):
            continue
        data = base
        for path, value in values.items():
            data = set_path(data, path, value)
        varied: dict[str, list[tuple[str, Any]]] = {}
        for path, value in values.items():
            varied.setdefault(path.split(".")[0], []).append((path, _freeze(value)))
        keys = {section: (section, tuple(varied.get(section, ()))) for section in model.model_fields}
        if first is None:
            first = validate(model, data, where, context)
            shared.update((key, Section(getattr(first, section))) for section, key in keys.items())
        for section in varied:
            if keys[section] not in shared:
                shared[keys[section]] = Section(_validate_section(model, section, data, where, context))
        own = {section: shared[key] for section, key in keys.items()}
        config = first.model_copy(update={section: own[section].value for section in varied})
        run_id = run_identity(own)
        name = ",".join(parts) or "default"
        if run_id in seen:
            earlier = seen_values[run_id]
            # the axis that gives both runs the same config: one that holds a value twice, else the
            # first whose values differ between them (a key that changes nothing)
            twice = [a for a in matrix.axes if len(set(map(_freeze_all, a.values))) < len(a.values)
                     and all(values.get(p) == earlier.get(p) for p in a.paths)]
            differ = [a for a in matrix.axes if any(values.get(p) != earlier.get(p) for p in a.paths)]
            file, line = (twice or differ)[0].origin if (twice or differ) else doc.where(("matrix",))
            raise ConfigError(f"runs {seen[run_id]!r} and {name!r} resolve to the same config",
                              file=file, line=line, key="matrix",
                              fix="remove the duplicate axis value or add an exclude entry")
        seen[run_id] = name
        seen_values[run_id] = values
        runs.append(Run(id=run_id, name=name, config=config, values=values, label=" / ".join(names) or None,
                        sections=own))
    if not runs:
        file, line = doc.where(("matrix", "exclude"))
        raise ConfigError("every run of the matrix is excluded", file=file, line=line,
                          key="matrix.exclude", fix="remove an exclude entry")
    return runs


def _validate_section(model: type[BaseModel], name: str, data: dict[str, Any], where,
                      context: dict[str, Any] | None) -> Any:
    """Section ``name`` of the run ``data``, validated alone. Where it fails, the whole run is
    validated, which raises the error as ``validate`` locates it."""
    section = model.model_fields[name].annotation
    # every section is a model: axes never vary the plain fields (name, output_dir)
    assert isinstance(section, type) and issubclass(section, BaseModel), name
    try:
        return section.model_validate(data.get(name, {}), context=context)
    except (ValidationError, *STRAY_ERRORS):
        validate(model, data, where, context)
        raise
