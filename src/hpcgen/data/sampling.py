"""Splits, per-task caps, mixtures, the generalist subset and the contamination check.

Every random choice draws from its own generator seeded by (seed, purpose, source), so changing
one knob does not reshuffle unrelated choices, and a seed gives the same records everywhere.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace

from hpcgen.data.records import Example, normalize
from hpcgen.data.sourcebase import Source
from hpcgen.errors import ConfigError


def rng(seed: int, *purpose: str) -> random.Random:
    return random.Random(":".join([str(seed), *purpose]))


def assign_splits(examples: list[Example], source: Source, *, test_size: int, seed: int, key: str) -> list[Example]:
    """Give every example a split and a task, by the source's kind:

    - the loader decided (NIV2 split lists, P3 task lists, a split field): kept;
    - tasks but no split (Flan-mini, JSONL with a task field): a seeded random split of tasks,
      ``test_tasks`` held out and at most ``train_tasks`` kept for training;
    - no tasks (ShareGPT, NoRobots): K random test items, the rest for training; the task of
      every item is the source's name.
    """
    if all(e.split is not None for e in examples):
        return examples
    label = source.label()
    if all(e.task is not None for e in examples):
        tasks = list(dict.fromkeys(e.task for e in examples))
        n_test = getattr(source, "test_tasks", 1)
        n_train = getattr(source, "train_tasks", None)
        if n_test >= len(tasks):
            raise ConfigError(f"source {label!r} has {len(tasks)} tasks, so test_tasks={n_test} leaves none "
                              "for training", key=f"{key}.test_tasks", fix="hold out fewer tasks")
        order = tasks[:]
        rng(seed, "task-split", label).shuffle(order)
        test = set(order[:n_test])
        train = set(order[n_test:] if n_train is None else order[n_test:n_test + n_train])
        return [replace(e, split="test" if e.task in test else "train")
                for e in examples if e.task in test or e.task in train]
    k = source.test_size or test_size
    if k >= len(examples):
        raise ConfigError(f"source {label!r} has {len(examples)} items, so a test set of {k} leaves none "
                          "for training", key=f"{key}.test_size", fix="lower test_size")
    picked = set(rng(seed, "test-items", label).sample(range(len(examples)), k))
    return [replace(e, task=e.task or label, split="test" if i in picked else "train")
            for i, e in enumerate(examples)]


def cap_per_task(examples: list[Example], *, train_cap: int, test_cap: int, seed: int) -> list[Example]:
    """At most N items per train task and M per test task: a seeded subset, kept in file order."""
    groups: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[(e.split, e.task)].append(i)
    keep: set[int] = set()
    for (split, task), idx in groups.items():
        cap = train_cap if split == "train" else test_cap
        if len(idx) > cap:
            # assign_splits gave every example a split; sources with tasks name every one (taskless ones are not capped)
            assert split is not None and task is not None, (split, task)
            idx = rng(seed, "cap", split, task).sample(idx, cap)
        keep.update(idx)
    return [e for i, e in enumerate(examples) if i in keep]


@dataclass
class Contamination:
    matches: list[dict] = field(default_factory=list)  # {test_id, train_ids}
    removed: int = 0


def decontaminate(train: list[Example], test: list[Example], *, allow: bool) -> tuple[list[Example], Contamination]:
    """Test items whose prompt and answer also appear in training (after normalization).

    They are listed; unless ``allow``, the matching training items are removed."""
    by_text: dict[str, list[str]] = defaultdict(list)
    for e in test:
        by_text[normalize(f"{e.prompt} {e.answer}")].append(e.id)
    hits: dict[str, list[str]] = defaultdict(list)
    dirty: set[int] = set()
    for i, e in enumerate(train):
        text = normalize(f"{e.prompt} {e.answer}")
        if text in by_text:
            dirty.add(i)
            for test_id in by_text[text]:
                hits[test_id].append(e.id)
    report = Contamination(matches=[{"test_id": t, "train_ids": ids} for t, ids in hits.items()])
    if allow or not dirty:
        return train, report
    report.removed = len(dirty)
    return [e for i, e in enumerate(train) if i not in dirty], report


def mix(train_by_source: list[tuple[Source, list[Example]]], *, train_size: int | None, seed: int) -> list[Example]:
    """The training set of a mixture, in three steps:

    1. each source keeps ``fraction`` of its training items (a seeded subset);
    2. without weights, every source contributes all it kept; ``train_size`` then takes that many
       items, each source in proportion to its size (a uniform subset of the whole);
    3. with a ``weight`` on every source (a weight on some only is refused at plan), sources
       contribute in proportion to their weights: ``train_size`` items in all, or else the most the
       proportions allow (the source with the fewest items per unit of weight is used whole).

    A source asked for more than it has is refused in one line.
    """
    kept: list[tuple[Source, list[Example]]] = []
    for source, items in train_by_source:
        if source.fraction < 1:
            n = max(1, round(len(items) * source.fraction))
            picked = set(rng(seed, "fraction", source.label()).sample(range(len(items)), n))
            items = [e for i, e in enumerate(items) if i in picked]
        kept.append((source, items))
    weighted = any(s.weight is not None for s, _ in kept)
    if train_size is None and not weighted:
        return [e for _, items in kept for e in items]
    weights = [(s.weight or 1.0) if weighted else float(len(items)) for s, items in kept]
    total_w = sum(weights) or 1.0
    shares = [w / total_w for w in weights]
    if train_size is None:
        train_size = int(min(len(items) / share for (_, items), share in zip(kept, shares) if share > 0))
    counts = [int(train_size * share) for share in shares]
    by_remainder = sorted(range(len(counts)), key=lambda i: -(train_size * shares[i] - counts[i]))
    for i in by_remainder[: train_size - sum(counts)]:
        counts[i] += 1
    out: list[Example] = []
    for (source, items), n in zip(kept, counts):
        if n > len(items):
            asks = "its weight asks" if weighted else f"train_size {train_size} asks"
            raise ConfigError(f"source {source.label()!r} has {len(items)} training items but {asks} for {n}",
                              key="data.train_size", fix="lower train_size or that source's weight")
        picked = set(rng(seed, "mix", source.label()).sample(range(len(items)), n))
        out += [e for i, e in enumerate(items) if i in picked]
    return out


def generalist(test: list[Example], size: int, seed: int) -> set[str]:
    """G random test items for the "generalist" evaluation (all of them if fewer)."""
    if size >= len(test):
        return {e.id for e in test}
    return {e.id for e in rng(seed, "generalist").sample(test, size)}
