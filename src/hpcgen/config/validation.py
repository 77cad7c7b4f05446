"""Walking a config schema by key path, and validation whose errors point at a line.

Overrides, matrix axes and suggestions check key paths here (``check_path``); every model that
reads a file (the experiment, a resource profile) is validated by ``validate``, whose failures
are one-line ConfigErrors located by the caller's ``where(loc)``.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from hpcgen.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

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


def validate(model: type[M], data: Any, where, context: dict[str, Any] | None = None) -> M:
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
