"""YAML loading that remembers where every key came from (file and line), with ``include``.

Errors about a value must name the line a person has to edit, so the loader keeps, for each
key path, the file and line that set it last. ``include: [base.yaml, ...]`` at the top of a file
merges other files underneath it (paths relative to the including file; the including file wins;
mappings merge key by key, anything else is replaced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcgen.errors import ConfigError

KeyPath = tuple[Any, ...]
#: the file and line that set a key; line None: set elsewhere (``--set`` on the command line)
Origin = tuple[str, int | None]


@dataclass
class Document:
    """Plain data plus the origin (file, line) of every key path in it."""

    data: dict[str, Any]
    origins: dict[KeyPath, Origin] = field(default_factory=dict)
    path: Path | None = None

    def where(self, keypath: KeyPath) -> tuple[str | None, int | None]:
        """The file and line that set ``keypath``, or of its nearest parent that has one."""
        keypath = tuple(keypath)
        while keypath:
            if keypath in self.origins:
                return self.origins[keypath]
            keypath = keypath[:-1]
        return (str(self.path) if self.path else None, None)


def dotted(keypath: KeyPath) -> str:
    out = ""
    for part in keypath:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _to_python(node: yaml.Node, loader: yaml.SafeLoader, file: str, keypath: KeyPath,
               origins: dict[KeyPath, Origin]) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise ConfigError(f"keys must be strings, got {key!r}", file=file, line=line,
                                  key=dotted(keypath) or None, fix="quote the key")
            if key in out:
                raise ConfigError("duplicate key", file=file, line=line, key=dotted(keypath + (key,)),
                                  fix="keep one of the two entries")
            origins[keypath + (key,)] = (file, line)
            out[key] = _to_python(value_node, loader, file, keypath + (key,), origins)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            origins[keypath + (i,)] = (file, item.start_mark.line + 1)
            items.append(_to_python(item, loader, file, keypath + (i,), origins))
        return items
    return loader.construct_object(node, deep=True)


def _parse(path: Path) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    file = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file, fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file ({exc})", file=file) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        origins: dict[KeyPath, Origin] = {}
        data = {} if node is None else _to_python(node, loader, file, (), origins)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
            problem += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise ConfigError(f"YAML syntax error: {problem}", file=file,
                          line=mark.line + 1 if mark else None,
                          fix="fix the YAML syntax (indentation, a missing ':' or quote)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {exc}", file=file) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys to values", file=file, line=1)
    return data, origins


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _replaced(base: dict[str, Any], top: dict[str, Any], prefix: KeyPath = ()) -> list[KeyPath]:
    """Key paths whose value ``top`` replaces outright (not merged) in ``base``."""
    out: list[KeyPath] = []
    for key, value in top.items():
        if key not in base:
            continue
        if isinstance(value, dict) and isinstance(base[key], dict):
            out += _replaced(base[key], value, prefix + (key,))
        else:
            out.append(prefix + (key,))
    return out


def _layer(merged: dict[str, Any], origins: dict[KeyPath, Origin], data: dict[str, Any],
           new_origins: dict[KeyPath, Origin]) -> dict[str, Any]:
    """Merge ``data`` over ``merged``; a replaced value takes its origins along (a list an
    including file rewrites must not keep the lines of the included file's items)."""
    gone = _replaced(merged, data)
    if gone:
        for keypath in [k for k in origins if any(k[:len(g)] == g and len(k) > len(g) for g in gone)]:
            del origins[keypath]
    origins.update(new_origins)
    return _merge(merged, data)


def _canonical_dotted(key: str, aliases: dict[str, str]) -> str:
    head, dot, rest = key.partition(".")
    return aliases.get(head, head) + dot + rest


def _renamed(data: dict[str, Any], origins: dict[KeyPath, Origin], aliases: dict[str, str],
             file: str) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    """One file's data with every alias of a section (``evaluate:`` for ``eval:``) written as the
    section's own name: at the top level and in the matrix's dotted keys (axes, zip groups and
    exclude entries). Both spellings in one place is refused."""
    if not aliases:
        return data, origins
    mapping: dict[KeyPath, KeyPath] = {}

    def rename(obj: dict[str, Any], at: KeyPath, dotted_keys: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            new = _canonical_dotted(key, aliases) if dotted_keys else aliases.get(key, key)
            if new in out:
                line = origins.get(at + (key,), (file, None))[1]
                raise ConfigError(f"both {key!r} and {new!r} are given", file=file, line=line,
                                  key=dotted(at + (key,)), fix=f"{key!r} is another name for {new!r}: keep one")
            if new != key:
                mapping[at + (key,)] = at + (new,)
            out[new] = value
        return out

    data = rename(data, (), False)
    matrix = data.get("matrix")
    if isinstance(matrix, dict):
        matrix = rename(matrix, ("matrix",), True)
        for group in ("zip", "exclude"):
            entries = matrix.get(group)
            if isinstance(entries, list):
                matrix[group] = [rename(e, ("matrix", group, i), True) if isinstance(e, dict) else e
                                 for i, e in enumerate(entries)]
        data["matrix"] = matrix
    if mapping:
        moved: dict[KeyPath, Origin] = {}
        for keypath, origin in origins.items():
            for old, new in mapping.items():
                if keypath[:len(old)] == old:
                    keypath = new + keypath[len(old):]
                    break
            moved[keypath] = origin
        origins = moved
    return data, origins


def load(path: str | Path, _stack: tuple[Path, ...] = (), aliases: dict[str, str] | None = None) -> Document:
    """Load an experiment file and everything it includes. ``aliases`` maps other names of a
    top-level section to the section (``{"evaluate": "eval"}``), in every file."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _stack:
        chain = " -> ".join(_display(p) for p in _stack + (resolved,))
        raise ConfigError(f"include cycle: {chain}", file=_display(_stack[-1]), key="include",
                          fix="remove one of the includes")
    data, origins = _parse(path)
    file = _display(path)
    data, origins = _renamed(data, origins, aliases or {}, file)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        line = origins.get(("include",), (file, None))[1]
        raise ConfigError("must be a list of YAML file paths", file=file, line=line, key="include",
                          fix="write include: [base.yaml]")
    merged: dict[str, Any] = {}
    merged_origins: dict[KeyPath, Origin] = {}
    for i, inc in enumerate(includes):
        inc_path = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
        if not inc_path.is_file():
            line = origins.get(("include", i), origins.get(("include",), (file, None)))[1]
            raise ConfigError(f"included file {inc!r} not found", file=file, line=line,
                              key="include", fix="paths are relative to the including file")
        sub = load(inc_path, _stack + (resolved,), aliases)
        merged = _layer(merged, merged_origins, sub.data, sub.origins)
    merged = _layer(merged, merged_origins, data, {k: v for k, v in origins.items() if k != ("include",)})
    return Document(data=merged, origins=merged_origins, path=path)
