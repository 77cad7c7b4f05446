"""The experiment file's schema.

The top level is fixed (``name``, ``output_dir``, ``cluster``, ``matrix``); every other section
belongs to a stage, which brings its own pydantic model (see ``hpcgen.pipeline.stage``). The
schema is assembled from the pipeline's stages, so adding a stage adds its section.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    create_model,
)

from hpcgen.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Value types


def _no_control(value: str) -> str:
    # Anything here may reach an sbatch script, which is a shell script: a newline in a
    # partition name would be a command.
    bad = [c for c in value if ord(c) < 32 or ord(c) == 127]
    if bad:
        name = "a newline" if "\n" in bad or "\r" in bad else f"control character {ord(bad[0]):#04x}"
        raise ValueError(f"contains {name}, which would break the generated sbatch script")
    return value


SafeStr = Annotated[str, AfterValidator(_no_control)]

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(
            "must be 1-100 letters, digits, '.', '_', '+' or '-', starting with a letter or digit "
            "(it names a directory under the output root and must not escape it)"
        )
    return value


Slug = Annotated[str, AfterValidator(_slug)]


def _relpath(value: str) -> str:
    _no_control(value)
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError("must be a relative path inside the output root (no leading '/', no '..')")
    return value


RelPath = Annotated[str, AfterValidator(_relpath)]


def _input_path(value: str, info: ValidationInfo) -> str:
    """An input file or directory: relative paths are relative to the experiment file."""
    _no_control(value)
    base = (info.context or {}).get("base_dir")
    if base is None or value.startswith(("/", "hf://")) or "://" in value:
        return value
    from pathlib import Path

    path = Path(value).expanduser()  # "~/data" is the user's, not a folder named "~"
    return str(path if path.is_absolute() else (Path(base) / path).resolve())


def _portable(value: str, info: SerializationInfo) -> str:
    """In keys and run ids (dumps with ``context={"portable": True}``) a local input is its
    content, ``content:<sha256>``, never its absolute path: a copied checkout keeps its keys."""
    if (info.context or {}).get("portable"):
        from hpcgen.pipeline.fingerprint import portable

        return portable(value)
    return value


InputPath = Annotated[str, AfterValidator(_input_path), PlainSerializer(_portable)]


def _model_ref(value: str, info: ValidationInfo) -> str:
    """A model by hub name or by directory. A directory is named like every input path: relative
    to the file that names it (``./models/llama`` or ``models/llama`` when that exists there),
    absolute, or ``~/...``; anything else is a hub name, kept as written."""
    _no_control(value)
    base = (info.context or {}).get("base_dir")
    from pathlib import Path

    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if base is None:
        return value
    local = Path(base) / path
    if value.startswith(("./", "../")) or local.exists():
        return str(local.resolve())
    return value


ModelRef = Annotated[str, AfterValidator(_model_ref), PlainSerializer(_portable)]


def _profile_ref(value: str, info: ValidationInfo) -> str:
    """A resource profile: a name in jobs/profiles/ or a file; stored as the resolved file."""
    _no_control(value)
    from hpcgen.config import profiles

    context = info.context or {}
    path = profiles.resolve(value, context.get("base_dir"))
    profiles.load(path, context.get("stages"), context.get("stage_aliases"))  # errors name the profile's line
    return str(path)


ProfileRef = Annotated[str, AfterValidator(_profile_ref)]

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_minutes(value: Any) -> int:
    """Slurm time formats to whole minutes: 90, "90", "1:30:00", "2-00:00:00", "2-12"."""
    if isinstance(value, bool):
        raise ValueError("must be minutes or a Slurm time such as '1:30:00' or '2-00:00:00'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m:
            days, a, b, c = m.groups()
            d = int(days or 0)
            if days and b is None:  # D-HH
                h, mi, s = int(a), 0, 0
            elif days:  # D-HH:MM[:SS]
                h, mi, s = int(a), int(b), int(c or 0)
            elif c is not None:  # HH:MM:SS
                h, mi, s = int(a), int(b), int(c)
            elif b is not None:  # MM:SS
                h, mi, s = 0, int(a), int(b)
            else:  # MM
                h, mi, s = 0, int(a), 0
            total = d * 1440 + h * 60 + mi + (1 if s else 0)
            if total > 0:
                return total
    raise ValueError("must be minutes or a Slurm time such as '1:30:00' or '2-00:00:00'")


Minutes = Annotated[int, BeforeValidator(parse_minutes)]

_MEM = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)
_MEM_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_mem_mb(value: Any) -> int:
    """Memory to whole MiB: 4096 (MiB), "16G", "500M", "1.5T"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _MEM.match(value.strip())
        if m:
            mb = float(m.group(1)) * _MEM_MB[m.group(2).upper()]
            if mb >= 1:
                return int(round(mb))
    raise ValueError("must be MiB or a size such as '16G' or '500M'")


MemMB = Annotated[int, BeforeValidator(parse_mem_mb)]

_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")


def _sbatch_key(key: str) -> str:
    if not _SBATCH_KEY.match(key):
        raise ValueError(f"sbatch option {key!r} must be a long option name such as 'constraint'")
    return key


def _sbatch_value(value: Any) -> Any:
    if isinstance(value, str):
        _no_control(value)
    return value


SbatchKey = Annotated[str, AfterValidator(_sbatch_key)]
SbatchValue = Annotated[bool | int | float | str, AfterValidator(_sbatch_value)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Jobs unpickle the config they were queued with. If hpcgen gained a setting since, the
        # pickle lacks it: give it its default instead of failing on a missing attribute.
        super().__setstate__(state)
        for name, info in type(self).model_fields.items():
            if name not in self.__dict__:
                self.__dict__[name] = info.get_default(call_default_factory=True)


# --------------------------------------------------------------------------------------------
# Resources and the cluster section


class Resources(Model):
    """What one array task asks the scheduler for. ``None`` means: inherit.

    Precedence, lowest first: the stage's built-in needs, the ``cluster`` section, the stage
    section's own ``resources``.
    """

    nodes: int | None = Field(None, ge=1)
    tasks_per_node: int | None = Field(None, ge=1)
    cpus: int | None = Field(None, ge=1, description="CPUs per task")
    gpus: int | None = Field(None, ge=0, description="GPUs per node")
    mem: MemMB | None = Field(None, description="memory per node")
    time: Minutes | None = Field(None, description="time limit")
    partition: SafeStr | None = None
    account: SafeStr | None = None
    qos: SafeStr | None = None
    array_parallelism: int | None = Field(None, ge=1, description="array tasks running at once")
    signal_delay_s: int | None = Field(
        None, ge=0, description="SIGUSR2 this many seconds before the time limit, then requeue (default 120): "
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


class StageResources(Resources):
    profile: ProfileRef | None = Field(
        None, description="a profile in jobs/profiles/ (or a file) for this stage instead of cluster.profile")


class Container(Model):
    """An Apptainer image every job's Python runs in."""

    image: InputPath = Field(description="a .sif file; relative to the experiment file")
    bind: list[SafeStr] = Field(default_factory=list)
    env: dict[SafeStr, SafeStr] = Field(default_factory=dict)
    gpu: bool | None = Field(None, description="pass --nv; default: for the jobs of stages with gpus > 0")


class Cluster(Resources):
    executor: Literal["auto", "slurm", "local", "debug"] = "auto"
    max_requeues: int = Field(3, ge=0, description="requeues after preemption or time-out")
    max_array_size: int | None = Field(
        None, ge=1, description="largest array to submit (default: the cluster's MaxArraySize - 1)"
    )
    container: Container | None = None
    profile: ProfileRef | None = Field(
        None, description="resource profile: a name in jobs/profiles/ (a800x8, h100x8, cpu) or a YAML file")


class StageConfig(Model):
    """Base of every stage section. ``resources`` never enters a stage's key."""

    resources: StageResources = Field(default_factory=StageResources)


RESERVED = ("name", "output_dir", "cluster", "matrix", "include", "preset")


def experiment_model(sections: dict[str, type[StageConfig]]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "name": (Slug, ...),
        "output_dir": (SafeStr, "outputs"),
        "cluster": (Cluster, Field(default_factory=Cluster)),
    }
    for section, model in sections.items():
        fields[section] = (model, Field(default_factory=model))
    return create_model("Experiment", __base__=Model, **fields)


# --------------------------------------------------------------------------------------------
# Walking the schema by key path (for overrides, matrix axes and suggestions)


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated down to the model or container type."""
    while True:
        if isinstance(annotation, _AnyOf):
            return annotation
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else args[0]
        else:
            return annotation


def child_schema(node: Any, key: str) -> tuple[bool, Any]:
    """(exists, schema of the child) for one step of a key path (a number indexes a list)."""
    node = _unwrap(node)
    if typing.get_origin(node) is list:
        if not key.isdigit():
            return False, None
        (item,) = typing.get_args(node) or (Any,)
        if typing.get_origin(item) is Annotated:  # a discriminated union: any member's keys
            item = typing.get_args(item)[0]
        members = [a for a in typing.get_args(item) if isinstance(a, type) and issubclass(a, BaseModel)]
        return True, (_AnyOf(members) if members else item)
    if isinstance(node, _AnyOf):
        found = [child_schema(m, key) for m in node.members]
        hits = [c for ok, c in found if ok]
        return (True, hits[0]) if hits else (False, None)
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(key)
        return (False, None) if field is None else (True, field.annotation)
    if typing.get_origin(node) is dict or node is dict or node is Any:
        args = typing.get_args(node)
        return True, (args[1] if len(args) == 2 else Any)
    return False, None


class _AnyOf:
    """The members of a union of models: a key exists if any member has it."""

    def __init__(self, members: list[type[BaseModel]]) -> None:
        self.members = members


def valid_keys(node: Any) -> list[str]:
    if isinstance(node, _AnyOf):
        return list(dict.fromkeys(k for m in node.members for k in m.model_fields))
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def suggest(key: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else (
        f"valid keys: {', '.join(choices)}" if choices and len(choices) <= 12 else None
    )


def check_path(model: type[BaseModel], path: str) -> None:
    """Raise ConfigError unless ``path`` (dotted) names a key of the schema."""
    node: Any = model
    done: list[str] = []
    for part in path.split("."):
        exists, child = child_schema(node, part)
        if not exists:
            where = ".".join(done) or "the top level"
            raise ConfigError(f"no key '{part}' in {where}", key=path,
                              fix=suggest(part, valid_keys(node)) or "check the spelling")
        node, done = child, done + [part]


# --------------------------------------------------------------------------------------------
# Validation with errors that point at a line


def _value_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def without_tags(model: type[BaseModel], loc: tuple) -> tuple:
    """``loc`` without the tags pydantic inserts after the index of a discriminated union's item
    (``data.sources.0.rewriting.budget`` is the file's ``data.sources.0.budget``)."""
    out: list = []
    node: Any = model
    for part in loc:
        if isinstance(node, _AnyOf) and isinstance(part, str):
            tags = {f.default: m for m in node.members for f in m.model_fields.values()
                    if typing.get_origin(f.annotation) is Literal and isinstance(f.default, str)}
            if part in tags and not child_schema(node, part)[0]:
                node = tags[part]
                continue
        out.append(part)
        if node is not None:
            ok, node = child_schema(node, str(part))
            node = node if ok else None
    return tuple(out)


def first_error(exc: ValidationError, model: type[BaseModel], where) -> ConfigError:
    """Turn pydantic's first error into a one-line ConfigError located by ``where(loc)``."""
    err = exc.errors()[0]
    loc = without_tags(model, tuple(str(p) if not isinstance(p, int) else p for p in err["loc"]))
    file, line = where(loc)
    key = ".".join(str(p) for p in loc) or None
    kind = err["type"]
    if kind == "extra_forbidden":
        node: Any = model
        for part in loc[:-1]:
            _, node = child_schema(node, str(part))
        return ConfigError("unknown key", file=file, line=line, key=key,
                           fix=suggest(str(loc[-1]), valid_keys(node)) or "remove it")
    if kind == "missing":
        return ConfigError("required key is missing", file=file, line=line, key=key, fix="add it")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = err.get("input")
    suffix = "" if isinstance(got, dict) else f" (got {_value_repr(got)})"
    return ConfigError(f"{msg}{suffix}", file=file, line=line, key=key, fix=None)


#: what a validator written against well-typed input raises on input of another type; pydantic
#: turns only ValueError and AssertionError into its errors and lets these through
STRAY_ERRORS = (TypeError, KeyError, AttributeError, IndexError, OverflowError)


def validate(model: type[BaseModel], data: Any, where, context: dict[str, Any] | None = None) -> BaseModel:
    """``model.model_validate`` whose every failure is a one-line ConfigError located by ``where``.

    A value of an unexpected type that slips past a field's check into a validator (a mapping
    where a name was expected, say) ends as ``TypeError`` inside pydantic: it is reported at the
    deepest section that still fails on it, never as a traceback."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise first_error(exc, model, where) from None
    except STRAY_ERRORS as exc:
        raise _stray(model, data, where, context, exc, ()) from None


def _stray(model: type[BaseModel], data: Any, where, context, exc: BaseException, loc: tuple) -> ConfigError:
    if isinstance(data, dict):
        for name, value in data.items():
            field = model.model_fields.get(name) if isinstance(name, str) else None
            sub = field.annotation if field is not None else None
            if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
                continue
            try:
                sub.model_validate(value, context=context)
            except STRAY_ERRORS as inner:
                return _stray(sub, value, where, context, inner, loc + (name,))
            except ValidationError:
                continue
    file, line = where(loc)
    return ConfigError(f"a value of an unexpected type ({type(exc).__name__}: {exc})", file=file, line=line,
                       key=".".join(map(str, loc)) or None, fix="check the types of this section's values")
