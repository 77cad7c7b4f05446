"""Tables of records as users keep them: JSON Lines, Parquet, a ``datasets`` directory, the hub.

``read_table`` opens one by what it is (not by its name): a directory written by
``datasets.Dataset.save_to_disk`` (it holds ``dataset_info.json`` or ``state.json``), a Parquet
file (its magic bytes), a JSON array or JSON Lines file (anything else), or ``hf://NAME[:split]``
(``datasets.load_dataset``, which needs the hub or a warm cache). ``write_table`` writes the rows
of one in a given order, in a given format, with extra columns, through a temporary name renamed
at the end: an interrupted write never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from hpcgen.data.records import iter_json_records
from hpcgen.data.sourcebase import HUB_PREFIX as HUB
from hpcgen.data.sourcebase import load_hub
from hpcgen.errors import ConfigError

Kind = Literal["jsonl", "parquet", "dataset"]
KINDS: tuple[Kind, ...] = ("jsonl", "parquet", "dataset")


def split_hub(path: str) -> tuple[str, str]:
    """``hf://NAME[:split]`` to (NAME, split); the split defaults to ``train``."""
    name, _, split = path[len(HUB):].partition(":")
    return name, split or "train"


def detect(path: str) -> Kind:
    """What kind of table ``path`` is (a hub path reads as a ``datasets`` dataset)."""
    if path.startswith(HUB):
        return "dataset"
    p = Path(path)
    if p.is_dir():
        return "dataset"
    with open(p, "rb") as fh:
        return "parquet" if fh.read(4) == b"PAR1" else "jsonl"


def kind_of_output(out: str | Path, default: Kind) -> Kind:
    """The output format: by OUT's extension (.jsonl / .json, .parquet; a trailing / for a
    ``datasets`` directory), else the input's."""
    name = str(out)
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(("/", os.sep)):
        return "dataset"
    return default


@dataclass
class Table:
    """The rows of one input: ``rows`` (JSON records, kept as written) or ``arrow``."""

    path: str
    kind: Kind
    rows: list[Any] | None = None
    arrow: pa.Table | None = None
    name: str | None = None  # what errors call it (default: its path, quoted)

    @property
    def label(self) -> str:
        return self.name or repr(self.path)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else (self.arrow.num_rows if self.arrow is not None else 0)

    def records(self, fields: Sequence[str]) -> Iterator[tuple[int, Any]]:
        """(index, record) with at least ``fields`` (Arrow tables: only those columns are read)."""
        if self.rows is not None:
            yield from enumerate(self.rows)
            return
        assert self.arrow is not None
        names = [f for f in dict.fromkeys(fields) if f in self.arrow.column_names]
        missing = [f for f in dict.fromkeys(fields) if f not in self.arrow.column_names]
        columns = {n: self.arrow.column(n).to_pylist() for n in names}
        for i in range(self.arrow.num_rows):
            rec = {n: columns[n][i] for n in names}
            rec.update(dict.fromkeys(missing))
            yield i, rec

    def columns(self) -> list[str]:
        if self.arrow is not None:
            return list(self.arrow.column_names)
        seen: dict[str, None] = {}
        for rec in (self.rows or [])[:1000]:
            if isinstance(rec, dict):
                seen.update(dict.fromkeys(rec))
        return list(seen)


def read_table(path: str, key: str) -> Table:
    """The table at ``path``; a missing file, an unreadable one or an unknown hub dataset is a
    ConfigError naming ``key``."""
    if not path.startswith(HUB) and not Path(path).exists():
        raise ConfigError(f"{path!r} not found", key=key, fix="check the path")
    kind = detect(path)
    if kind == "jsonl":
        return Table(path, kind, rows=[rec for _, rec in iter_json_records(Path(path), key)])
    if kind == "parquet":
        try:
            return Table(path, kind, arrow=pq.read_table(path))
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(f"{path!r} is not a readable Parquet file ({str(exc).splitlines()[0]})", key=key,
                              fix="rewrite the file") from None
    return Table(path, kind, arrow=_dataset(path, key).data.table)


def _dataset(path: str, key: str) -> Any:
    if path.startswith(HUB):
        name, split = split_hub(path)
        return load_hub(name, None, split, key)
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{path!r} needs the `datasets` package", key=key, fix="pip install datasets") from None
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:  # offline, unknown name, not a dataset directory: all end the same way for a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load dataset {path!r} ({first})", key=key,
                          fix="give a JSONL or Parquet file, or a directory written by Dataset.save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise ConfigError(f"{path!r} holds several splits ({', '.join(loaded)})", key=key,
                          fix=f"name one: {path.rstrip('/')}/{next(iter(loaded))}")
    return loaded


def template_fields(template: str, key: str) -> list[str]:
    """The record fields a ``str.format`` template names (``{instruction} {input}``)."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"template {template!r} cannot be parsed ({exc})", key=key,
                          fix="write fields as {name}; double literal braces") from None
    bad = [n for n in names if not n or not n.isidentifier()]
    if bad:
        raise ConfigError(f"template {template!r} has a field {bad[0]!r} that is not a column name", key=key,
                          fix="name columns, as in '{instruction} {input}'")
    return list(dict.fromkeys(names))


def write_table(table: Table, order: Sequence[int], extra: Mapping[str, Sequence[Any]], out: Path, kind: Kind) -> None:
    """The rows ``order`` of ``table``, in that order, plus the ``extra`` columns, to ``out``."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        if table.rows is not None and kind == "jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                for j, i in enumerate(order):
                    rec = dict(table.rows[i])
                    rec.update({name: values[j] for name, values in extra.items()})
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            arrow = table.arrow if table.arrow is not None else pa.Table.from_pylist(list(table.rows or []))
            arrow = ordered_arrow(arrow, order, extra)
            if kind == "parquet":
                pq.write_table(arrow, tmp)
            elif kind == "jsonl":
                with open(tmp, "w", encoding="utf-8") as fh:
                    for rec in arrow.to_pylist():
                        fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            else:
                import datasets

                datasets.Dataset(arrow).save_to_disk(str(tmp))
        _remove(out)
        os.replace(tmp, out)
    finally:
        _remove(tmp)


def ordered_arrow(arrow: pa.Table, order: Sequence[int], extra: Mapping[str, Sequence[Any]]) -> pa.Table:
    """The rows ``order`` of ``arrow`` with the ``extra`` columns (replacing any of that name)."""
    arrow = arrow.take(pa.array(order, type=pa.int64()))
    for name, values in extra.items():
        if name in arrow.column_names:
            arrow = arrow.drop_columns([name])
        arrow = arrow.append_column(name, pa.array(values))
    return arrow


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
