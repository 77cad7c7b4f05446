"""A fixed train/test list of task names (``split_file``), for sources whose records carry a task.

The data-arrangement paper splits Flan-mini's tasks at random (sec. 2: "we randomly partition the
training and test tasks"); the authors then ship the partition they used, 1,600 train and 225 test
tasks, as ``data/train_eval_key_list.json`` with the keys ``train_key_list`` and ``eval_key_list``
(FIDELITY.md row 7). ``split_file`` lets a source use such a list instead of the seeded random split.

Accepted forms (a path relative to the experiment file, like every input path):

- a JSON object with one test key and at most one train key (each a list of task names):
  test: ``test``, ``eval``, ``test_tasks``, ``eval_tasks``, ``test_keys``, ``eval_keys``,
  ``test_key_list``, ``eval_key_list``; train: ``train``, ``train_tasks``, ``train_keys``,
  ``train_key_list``. Any other key is an error (a misspelt key would otherwise be ignored);
- a JSON list of task names: the test tasks;
- a text file, one test task name a line (blank lines ignored). A file is read as JSON when its
  name ends in ``.json`` or its first non-blank character is ``[`` or ``{``;
- a directory with ``test_tasks.txt`` and, optionally, ``train_tasks.txt`` (NIV2's layout).

With a train list, tasks in neither list are dropped (and counted); without one, every task not
in the test list trains. Listed names that the data lacks are counted; none of the test names (or
none of the train names) being in the data is an error, since then the file cannot belong to the
data. A name in both lists is an error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpcgen.data.records import Example
from hpcgen.errors import ConfigError

TEST_KEYS = ("test", "eval", "test_tasks", "eval_tasks", "test_keys", "eval_keys", "test_key_list",
             "eval_key_list")
TRAIN_KEYS = ("train", "train_tasks", "train_keys", "train_key_list")

FIX = ('give {"train": [...], "test": [...]}, a JSON list of test tasks, a text file with one test task '
       "a line, or a directory with test_tasks.txt (and train_tasks.txt); relative paths are relative to "
       "the experiment file")

DESCRIPTION = ("fixed train/test task lists instead of the seeded random split: a JSON file "
               '{"train": [...], "test": [...]} (also train_key_list/eval_key_list, as in the authors\' '
               "train_eval_key_list.json, and other aliases), a JSON list or a text file (one name a line) "
               "of test tasks, or a directory with test_tasks.txt and train_tasks.txt; "
               "relative to the experiment file")


@dataclass(frozen=True)
class TaskSplit:
    """The lists of one split file. ``train`` None: every task not in ``test`` trains."""

    path: str
    test: tuple[str, ...]
    train: tuple[str, ...] | None


def read_split_file(path: str, key: str) -> TaskSplit:
    """Parse ``path``; every problem is a one-line ConfigError at ``key`` naming the file."""
    where = Path(path)
    if where.is_dir():
        test_file, train_file = where / "test_tasks.txt", where / "train_tasks.txt"
        if not test_file.is_file():
            raise ConfigError(f"split directory {path!r} has no test_tasks.txt", key=key, fix=FIX)
        test = _lines(_read(test_file, key))
        train = _lines(_read(train_file, key)) if train_file.is_file() else None
        return _checked(path, test, train, key)
    text = _read(where, key)
    if where.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"split file {path!r} is not valid JSON: {exc.msg} at line {exc.lineno} "
                              f"column {exc.colno}", key=key, fix=FIX) from None
        test, train = _from_json(data, path, key)
        return _checked(path, test, train, key)
    return _checked(path, _lines(text), None, key)


def _read(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"split file {str(path)!r} not found", key=key, fix=FIX) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"split file {str(path)!r} is not UTF-8 text (byte {exc.start})", key=key,
                          fix=FIX) from None
    except OSError as exc:
        raise ConfigError(f"split file {str(path)!r} cannot be read ({exc.strerror or exc})", key=key,
                          fix=FIX) from None


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _names(value: Any, path: str, what: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"split file {path!r}: {what} must be a list of task names", key=key, fix=FIX)
    return [v.strip() for v in value]


def _from_json(data: Any, path: str, key: str) -> tuple[list[str], list[str] | None]:
    if isinstance(data, list):
        return _names(data, path, "the list", key), None
    if not isinstance(data, dict):
        raise ConfigError(f"split file {path!r} holds a {type(data).__name__}, not an object or a list",
                          key=key, fix=FIX)
    unknown = [k for k in data if k not in TEST_KEYS + TRAIN_KEYS]
    if unknown:
        raise ConfigError(f"split file {path!r} has the unknown key {unknown[0]!r}", key=key,
                          fix=f"use one of {', '.join(TEST_KEYS)} for the test tasks and one of "
                              f"{', '.join(TRAIN_KEYS)} for the train tasks")
    test_keys = [k for k in data if k in TEST_KEYS]
    train_keys = [k for k in data if k in TRAIN_KEYS]
    for found in (test_keys, train_keys):
        if len(found) > 1:
            raise ConfigError(f"split file {path!r} has both {found[0]!r} and {found[1]!r}", key=key,
                              fix="keep one list for each split")
    if not test_keys:
        raise ConfigError(f"split file {path!r} has no test list", key=key,
                          fix=f"add one of the keys {', '.join(TEST_KEYS)}")
    test = _names(data[test_keys[0]], path, repr(test_keys[0]), key)
    train = _names(data[train_keys[0]], path, repr(train_keys[0]), key) if train_keys else None
    return test, train


def _checked(path: str, test: list[str], train: list[str] | None, key: str) -> TaskSplit:
    if not test:
        raise ConfigError(f"split file {path!r} lists no test task", key=key, fix=FIX)
    if train is not None and not train:
        raise ConfigError(f"split file {path!r} has an empty train list", key=key,
                          fix="list the train tasks, or leave the list out to train on every other task")
    both = sorted(set(test) & set(train or ()))
    if both:
        raise ConfigError(f"split file {path!r} lists {both[0]!r} as both a train and a test task"
                          + (f" ({len(both)} such tasks)" if len(both) > 1 else ""), key=key,
                          fix="each task belongs to one split")
    return TaskSplit(path=path, test=tuple(dict.fromkeys(test)),
                     train=None if train is None else tuple(dict.fromkeys(train)))


def apply_split(examples: Iterable[Example], split: TaskSplit, *, label: str, key: str,
                stats: Counter) -> Iterator[Example]:
    """``examples`` with their split set from ``split``; tasks of neither list are dropped.

    At the end, the counts go to ``stats``: tasks dropped, listed tasks the data lacks."""
    test = set(split.test)
    train = None if split.train is None else set(split.train)
    seen: set[str | None] = set()
    dropped: Counter[str | None] = Counter()
    for e in examples:
        seen.add(e.task)
        if e.task in test:
            yield replace(e, split="test")
        elif train is None or e.task in train:
            yield replace(e, split="train")
        else:
            dropped[e.task] += 1
    for which, names in (("test", split.test), ("train", split.train)):
        if names is None:
            continue
        missing = [n for n in names if n not in seen]
        if len(missing) == len(names):
            raise ConfigError(f"none of the {len(names)} {which} tasks listed in {split.path!r} occurs in the "
                              f"data (e.g. {names[0]!r})", key=key,
                              fix="the names must equal the records' task names (Flan-mini: the 'source' "
                                  "field); check that the file belongs to this data, or remove split_file")
        if missing:
            stats[f"{label}: {which} tasks of split_file not in the data"] += len(missing)
    if dropped:
        stats[f"{label}: tasks in neither list of split_file (dropped)"] += len(dropped)
        stats[f"{label}: items of tasks in neither list of split_file (dropped)"] += sum(dropped.values())


def split_fingerprint(path: str | None) -> list[str]:
    """The content (sha256) of the split file(s): part of the stage key, like the data's own files."""
    if path is None:
        return []
    from hpcgen.pipeline.fingerprint import file_digest

    root = Path(path)
    if root.is_dir():  # the names say which list is which
        return [f"split_file:{n}:content:{file_digest(root / n)}" for n in ("test_tasks.txt", "train_tasks.txt")
                if (root / n).is_file()]
    return [f"split_file:content:{file_digest(root)}"] if root.is_file() else []
