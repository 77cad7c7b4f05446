"""A training table and a test table as they are (JSONL, Parquet, a ``datasets`` directory, hf://).

Unlike the other sources, this one does not split: every row of ``path`` is a training record
and every row of ``test_path`` a test record, in file order, with ids ``train-I`` / ``test-I``
(I: the row's position), so an arrangement maps back to the rows of the file. It is what
``hpcgen arrange`` runs on; an experiment can use it as well. The record's prompt and answer
are two fields, or with ``text_template`` the prompt is the template filled from any fields
(``{instruction} {input}``) and the answer is empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, field_validator

from hpcgen.config.schema import InputPath
from hpcgen.data.records import Example
from hpcgen.data.sourcebase import LocalSource
from hpcgen.data.tables import HUB, Table, read_table, template_fields
from hpcgen.errors import ConfigError


class TableSource(LocalSource):
    format: Literal["table"] = "table"
    test_path: InputPath = Field(description="the test rows (same formats as path)")
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    text_template: str | None = Field(None, description="the prompt from any fields, as '{instruction} {input}' "
                                      "(the answer is then empty)")
    task_field: str | None = Field(None, description="a column naming each row's task (optional)")

    @field_validator("text_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                template_fields(value, "text_template")
            except ConfigError as exc:
                raise ValueError(exc.reason) from None
        return value

    def check(self, key: str) -> None:
        super().check(key)
        if not self.test_path.startswith(HUB):
            from pathlib import Path

            if not Path(self.test_path).exists():
                raise ConfigError(f"{self.test_path!r} not found", key=f"{key}.test_path", fix="check the path")

    def fingerprint(self) -> list[str]:
        lines = super().fingerprint()
        if self.test_path.startswith(HUB):
            return lines + [self.test_path]
        from hpcgen.pipeline.fingerprint import PREFIX, content_digest

        try:
            return lines + [PREFIX + content_digest(self.test_path)]
        except OSError:  # missing: check() says so
            return lines

    def fields(self) -> list[str]:
        """The columns every row must have."""
        wanted = template_fields(self.text_template, "text_template") if self.text_template else \
            [self.prompt_field, self.answer_field]
        return wanted + ([self.task_field] if self.task_field else [])

    def load(self, key: str, stats: Counter) -> Iterator[Example]:
        yield from self.examples(read_table(self.path, f"{key}.path"), "train", f"{key}.path")
        yield from self.examples(read_table(self.test_path, f"{key}.test_path"), "test", f"{key}.test_path")

    def examples(self, table: Table, split: Literal["train", "test"], key: str | None) -> Iterator[Example]:
        """The rows of ``table`` as records; a row without a field or without text is an error
        naming the file, the row and the field."""
        fields = self.fields()
        for i, rec in table.records(fields):
            if not isinstance(rec, dict):
                raise ConfigError(f"{table.label} row {i} is a {type(rec).__name__}, not an object", key=key,
                                  fix="each row must be an object with named fields")
            missing = [f for f in fields if rec.get(f) is None]
            if missing:
                raise ConfigError(f"{table.label} row {i} has no field {missing[0]!r}", key=key,
                                  fix=f"name the right field (columns: {_columns(table.columns())})")
            if self.text_template:
                prompt, answer = self.text_template.format(**{f: _text(rec[f]) for f in fields}).strip(), ""
            else:
                prompt, answer = _text(rec[self.prompt_field]).strip(), _text(rec[self.answer_field]).strip()
            if not prompt and not answer:
                raise ConfigError(f"{table.label} row {i} has no text (its {' and '.join(map(repr, fields))} "
                                  "are empty)", key=key, fix="drop the row or choose other fields")
            yield Example(id=f"{split}-{i}", task=_text(rec[self.task_field]) if self.task_field else None,
                          split=split, prompt=prompt, answer=answer, source=self.label())


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _columns(names: list[str]) -> str:
    return ", ".join(names[:12] + (["..."] if len(names) > 12 else [])) or "none"
