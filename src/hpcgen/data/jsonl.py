"""Generic JSON Lines (or a JSON array) with configurable field names.

Splits: a ``split_field`` whose values are ``train``/``test``; else, with a ``task_field``, the
fixed task lists of ``split_file`` (``hpcgen.data.splitfile``) or a seeded random split of tasks
(``test_tasks``); else a seeded random test set of K items.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Literal

from pydantic import Field, model_validator

from hpcgen.data.records import Example, field, safe_id
from hpcgen.data.sourcebase import RecordSource, TaskSplitSource
from hpcgen.errors import ConfigError


class JSONLSource(TaskSplitSource, RecordSource):
    format: Literal["jsonl"] = "jsonl"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    id_field: str | None = Field(None, description="None: the record's position")
    task_field: str | None = None
    split_field: str | None = Field(None, description="values must be 'train' or 'test'")
    test_tasks: int = Field(1, ge=1, description="tasks held out when splitting by task")
    train_tasks: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _split_file_needs_tasks(self):
        if self.split_file is not None:
            if self.split_field is not None:
                raise ValueError("split_file and split_field both decide the splits: keep one")
            if self.task_field is None:
                raise ValueError("split_file lists tasks: set task_field to the records' task field")
        return self

    def load(self, key: str, stats: Counter) -> Iterator[Example]:
        return self.split_by_file(self._examples(key), key, stats)

    def _examples(self, key: str) -> Iterator[Example]:
        where = f"{key}.path"
        for i, rec in self.records(key):
            split = None
            if self.split_field:
                split = field(rec, self.split_field, self.path, i, where)
                if split not in ("train", "test"):
                    raise ConfigError(f"{self.path!r} record {i} field {self.split_field!r} is {split!r}, "
                                      "expected 'train' or 'test'", key=f"{key}.split_field")
            rid = field(rec, self.id_field, self.path, i, where) if self.id_field else f"{self.label()}-{i}"
            yield Example(
                id=safe_id(rid),
                task=field(rec, self.task_field, self.path, i, where) if self.task_field else None,
                split=split,
                prompt=field(rec, self.prompt_field, self.path, i, where).strip(),
                answer=field(rec, self.answer_field, self.path, i, where).strip(),
                source=self.label(),
            )
