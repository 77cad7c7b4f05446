"""records: the prepare stage's output, which every later stage reads.

``records.parquet``, one row per record, Parquet schema ``SCHEMA`` (``hpcgen.data.records``):
    id          string  unique record id (``LABEL/ID`` in a mixture of sources)
    task        string  the record's task (instruction); null for a source without tasks
    split       string  "train" or "test"
    prompt      string  the prompt/answer boundary is kept: the loss covers the answer only
    answer      string
    text        string  the training string: ``data.template`` filled in
    embed_text  string  the string to embed: ``data.embed_template`` filled in
    source      string  the label of the record's source (a mixture has several)
    generalist  bool    in the generalist test subset (``data.generalist_size`` random test records)
Training records come first, in source and file order (the arrange stage decides the training
order), then the test records. Row i of the training records is training row i everywhere later
(embedding rows, similarity rows, arrangement orders).

``summary.json``: records, splits {train, test}, tasks {train, test}, generalist, sources
{label: {train, test}}, contaminated_test_items, train_items_removed_as_contaminated, skipped,
template, embed_template (the templates the texts were made with; training and evaluation
tokenize with ``template``).

``contamination.json``: normalization, compared, allowed, test_items_matched,
train_items_removed, matches (the decontamination report).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hpcgen.contracts import Node, require, upstream_error
from hpcgen.data.records import SCHEMA

RECORDS = "records.parquet"
SUMMARY = "summary.json"
CONTAMINATION = "contamination.json"

#: the defaults of ``data.template`` and ``data.embed_template``
DEFAULT_TEMPLATE = "<s>User: {prompt} Assistant: {answer}</s>"
DEFAULT_EMBED_TEMPLATE = "{prompt} {answer}"

COLUMNS = tuple(SCHEMA.names)


@dataclass(frozen=True)
class Record:
    """One row of records.parquet (the fields in ``SCHEMA``'s order)."""

    id: str
    task: str | None
    split: str
    prompt: str
    answer: str
    text: str
    embed_text: str
    source: str
    generalist: bool


assert tuple(Record.__dataclass_fields__) == COLUMNS, "Record and SCHEMA name the same columns"


def write_records(path: Path, records: Sequence[Record]) -> None:
    """records.parquet at ``path``: ``records`` in their order (training records first)."""
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for record in records:
        for name, value in zip(COLUMNS, astuple(record)):
            columns[name].append(value)
    pq.write_table(pa.table(columns, schema=SCHEMA), path)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=1) + "\n")


def write_contamination(path: Path, report: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n")


class Records:
    """records.parquet of one prepare node, read back (the columns asked for, or all).

    ``column(name)`` is a column as a list, in record order; ``split`` the splits as an array;
    ``train_rows`` / ``test_rows`` the record indices of either split (training row i is record
    ``train_rows[i]``); ``train(name)`` / ``test(name)`` a column over one split."""

    def __init__(self, table: pa.Table, node: Node) -> None:
        self._table, self._node = table, node
        self._cache: dict[str, list] = {}
        self.split = np.asarray(self.column("split"), dtype=object)
        self.train_rows = np.flatnonzero(self.split == "train")
        self.test_rows = np.flatnonzero(self.split == "test")

    def __len__(self) -> int:
        return self._table.num_rows

    def column(self, name: str) -> list:
        if name not in self._cache:
            if name not in self._table.column_names:
                raise KeyError(f"column {name!r} was not read from {RECORDS}")
            self._cache[name] = self._table.column(name).to_pylist()
        return self._cache[name]

    def rows(self, name: str, rows: Sequence[int] | np.ndarray) -> list:
        column = self.column(name)
        return [column[int(i)] for i in rows]

    def train(self, name: str) -> list:
        return self.rows(name, self.train_rows)

    def test(self, name: str) -> list:
        return self.rows(name, self.test_rows)

    def test_records(self) -> list[dict[str, Any]]:
        """The test records as dicts of the columns read."""
        names = self._table.column_names
        return [dict(zip(names, values)) for values in zip(*(self.test(n) for n in names))]


def read_records(node: Node, columns: Sequence[str] | None = None) -> Records:
    """records.parquet of the prepare node ``node``: the columns asked for (all by default)."""
    path = require(node, RECORDS)
    wanted = list(dict.fromkeys(["split", *(columns or COLUMNS)]))
    try:
        present = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as exc:
        raise upstream_error(node, RECORDS, f"is not a Parquet file ({exc})") from None
    absent = [c for c in wanted if c not in present]
    if absent:
        raise upstream_error(node, RECORDS, f"has no column {absent[0]!r} (an older or other format: "
                                            f"columns {', '.join(present)})")
    return Records(pq.read_table(path, columns=wanted), node)


@dataclass(frozen=True)
class Summary:
    """summary.json of a prepare node: the templates the later stages need, and all of it."""

    template: str
    embed_template: str
    data: dict[str, Any]


def read_summary(node: Node) -> Summary:
    path = require(node, SUMMARY)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise upstream_error(node, SUMMARY, f"cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise upstream_error(node, SUMMARY, "is not a JSON object")
    return Summary(template=data.get("template", DEFAULT_TEMPLATE), embed_template=data.get("embed_template", ""),
                   data=data)
