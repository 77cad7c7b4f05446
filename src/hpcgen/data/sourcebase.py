"""What every data source shares: mixture weights, split settings, local or hub records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from hpcgen.config.schema import InputPath, Model, SafeStr
from hpcgen.data.records import Example, iter_json_records
from hpcgen.data.splitfile import DESCRIPTION, apply_split, read_split_file, split_fingerprint
from hpcgen.errors import ConfigError

HUB_PREFIX = "hf://"


class Source(Model):
    """One source of a data section. Subclasses set ``format`` and implement ``load``."""

    format: str
    name: SafeStr | None = Field(None, description="label in records and reports (default: the format)")
    weight: float | None = Field(None, gt=0, description="share of the training set in a mixture")
    fraction: float = Field(1.0, gt=0, le=1, description="keep this share of the source's training items")
    test_size: int | None = Field(None, ge=1, description="K: random test items when the source has no tasks")

    #: generated sources come with exact counts: the per-task caps do not apply
    generated: ClassVar[bool] = False

    def label(self) -> str:
        return self.name or self.format

    def check(self, key: str) -> None:
        """Cheap checks at submit time (paths exist); ``load`` finds the rest."""

    def load(self, key: str, stats: Counter) -> Iterator[Example]:
        """The source's examples; counts of what was skipped go to ``stats``."""
        raise NotImplementedError

    def fingerprint(self) -> list[str]:
        """What the inputs are now (their content, never where they lie): part of the stage key."""
        return []

    def estimate_records(self, train_cap: int, test_cap: int) -> int | None:
        """An upper bound of the records this source yields, if it is cheap to know."""
        return None


class LocalSource(Source):
    """A source read from files (or, with ``hf://NAME``, from a dataset hub)."""

    path: InputPath

    def is_hub(self) -> bool:
        return self.path.startswith(HUB_PREFIX)

    def check(self, key: str) -> None:
        if not self.is_hub() and not Path(self.path).exists():
            raise ConfigError(f"{self.path!r} not found", key=f"{key}.path", fix="check the path")

    def fingerprint(self) -> list[str]:
        """``content:<sha256>`` of the file or directory (each file hashed once, then cached by
        path, size and mtime: ``hpcgen.pipeline.fingerprint``); a hub path as it is."""
        if self.is_hub():
            return [self.path]
        from hpcgen.pipeline.fingerprint import PREFIX, content_digest

        try:
            return [PREFIX + content_digest(self.path)]
        except OSError:  # missing: check() says so
            return []


class RecordSource(LocalSource):
    """Records from one JSON / JSON Lines file, or from a hub dataset."""

    hub_config: SafeStr | None = Field(None, description="dataset configuration, for hf:// paths")
    hub_split: SafeStr = Field("train", description="dataset split, for hf:// paths")

    def records(self, key: str) -> Iterator[tuple[int, Any]]:
        if self.is_hub():
            yield from enumerate(load_hub(self.path[len(HUB_PREFIX):], self.hub_config, self.hub_split, key))
            return
        path = Path(self.path)
        if path.is_dir():
            raise ConfigError(f"{self.path!r} is a directory; {self.format} reads one JSON or JSONL file",
                              key=f"{key}.path")
        yield from iter_json_records(path, f"{key}.path")


class TaskSplitSource(Source):
    """A mixin for sources whose records carry a task: ``split_file`` fixes the train/test tasks
    (``hpcgen.data.splitfile``); without it ``assign_splits`` draws the seeded random split that
    ``test_tasks`` and ``train_tasks`` size. Put it before the record base in the class list."""

    split_file: InputPath | None = Field(None, description=DESCRIPTION)

    @model_validator(mode="after")
    def _split_file_alone(self):
        if self.split_file is not None:
            sized = [k for k in ("test_tasks", "train_tasks") if k in self.model_fields_set]
            if sized:
                raise ValueError(f"{sized[0]} sizes the seeded random split, which split_file replaces: "
                                 f"remove {' and '.join(sized)} or split_file")
        return self

    def _split_key(self, key: str) -> str:
        return f"{key}.split_file"

    def check(self, key: str) -> None:
        super().check(key)
        if self.split_file is not None:
            read_split_file(self.split_file, self._split_key(key))

    def fingerprint(self) -> list[str]:
        return super().fingerprint() + split_fingerprint(self.split_file)

    def estimate_records(self, train_cap: int, test_cap: int) -> int | None:
        """With both lists in the split file: the listed tasks times the caps."""
        if self.split_file is None:
            return super().estimate_records(train_cap, test_cap)
        try:
            split = read_split_file(self.split_file, "split_file")
        except ConfigError:  # check() reports it where it can name the key
            return None
        if split.train is None:
            return None
        return train_cap * len(split.train) + test_cap * len(split.test)

    def split_by_file(self, examples: Iterator[Example], key: str, stats: Counter) -> Iterator[Example]:
        """``examples`` as they are, or with the split file's splits (tasks of neither list dropped)."""
        if self.split_file is None:
            return examples
        split = read_split_file(self.split_file, self._split_key(key))
        return apply_split(examples, split, label=self.label(), key=self._split_key(key), stats=stats)


def load_hub(name: str, config: str | None, split: str, key: str) -> Any:
    """A dataset from the Hugging Face hub (needs network, or a warm cache)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("hf:// paths need the `datasets` package", key=f"{key}.path",
                          fix="pip install datasets, or download the files and give a local path") from None
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, unknown name, missing config: all end the same way for a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load {name!r} from the hub ({first})", key=f"{key}.path",
                          fix="without network, download the dataset elsewhere and point path at its files") from None
