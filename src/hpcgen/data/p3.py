"""P3 (Public Pool of Prompts): one subset per dataset and prompt template.

Local layout: ``DIR/<subset>/<split>.jsonl`` (or ``.json``), e.g. ``super_glue_copa_best_option/
validation.jsonl``; records carry ``inputs_pretokenized`` and ``targets_pretokenized``. A subset
belongs to the dataset whose name is its longest prefix among ``train_tasks`` and ``test_tasks``
(the T0 dataset lists, given in the config); subsets of neither are skipped. The task of a record
is its subset (a dataset with one prompt template). ``hf://bigscience/P3`` reads the listed
``subsets`` from the hub instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from hpcgen.config.schema import SafeStr
from hpcgen.data.records import Example, field, iter_json_records, safe_id
from hpcgen.data.sourcebase import HUB_PREFIX, LocalSource, load_hub
from hpcgen.errors import ConfigError


class P3Source(LocalSource):
    format: Literal["p3"] = "p3"
    train_tasks: list[SafeStr] = Field(description="datasets for training (the T0 training list)")
    test_tasks: list[SafeStr] = Field(description="held-out datasets (the T0 evaluation list)")
    train_split: SafeStr = "train"
    test_split: SafeStr = "validation"
    subsets: list[SafeStr] | None = Field(None, description="subsets to read (required for hf:// paths)")

    def dataset_of(self, subset: str) -> tuple[str, str] | None:
        best = None
        for which, names in (("train", self.train_tasks), ("test", self.test_tasks)):
            for name in names:
                if (subset == name or subset.startswith(name + "_")) and (best is None or len(name) > len(best[1])):
                    best = (which, name)
        return best

    def _subsets(self, key: str) -> list[str]:
        if self.subsets is not None:
            return list(self.subsets)
        if self.is_hub():
            raise ConfigError("hf:// P3 needs the list of subsets to read", key=f"{key}.subsets",
                              fix="list them, e.g. subsets: [super_glue_copa_best_option]")
        root = Path(self.path)
        return sorted(p.name for p in root.iterdir() if p.is_dir())

    def check(self, key: str) -> None:
        super().check(key)
        overlap = set(self.train_tasks) & set(self.test_tasks)
        if overlap:
            raise ConfigError(f"{sorted(overlap)[0]!r} is both a train and a test task", key=f"{key}.test_tasks")

    def load(self, key: str, stats: Counter) -> Iterator[Example]:
        self.check(key)
        for subset in self._subsets(key):
            owner = self.dataset_of(subset)
            if owner is None:
                stats[f"{self.label()}: subsets of no listed dataset"] += 1
                continue
            which = owner[0]
            where: str | Path
            records: Iterator[tuple[int, Any]]
            split_name = self.train_split if which == "train" else self.test_split
            if self.is_hub():
                where = f"{self.path}/{subset}"
                records = enumerate(load_hub(self.path[len(HUB_PREFIX):], subset, split_name, key))
            else:
                base = Path(self.path) / subset
                files = [base / f"{split_name}.jsonl", base / f"{split_name}.json"]
                found = next((f for f in files if f.is_file()), None)
                if found is None:
                    raise ConfigError(f"P3 subset {subset!r} has no {split_name}.jsonl", key=f"{key}.path",
                                      fix=f"add {files[0]} or change {which}_split")
                where = found
                records = iter_json_records(found, f"{key}.path")
            for i, rec in records:
                prompt = field(rec, "inputs_pretokenized", where, i, f"{key}.path").strip()
                answer = field(rec, "targets_pretokenized", where, i, f"{key}.path").strip()
                yield Example(id=safe_id(f"{subset}:{split_name}:{i}"), task=subset, split=which,
                              prompt=prompt, answer=answer, source=self.label())
