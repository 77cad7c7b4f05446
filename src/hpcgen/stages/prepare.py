"""prepare: a data section to canonical records (Parquet) that every later stage reads.

Writes ``records.parquet`` (one row per record, training records first), ``summary.json``
(counts and templates) and ``contamination.json``, through hpcgen.contracts.records, which
documents their columns and keys and has the reader every later stage uses.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, TypedDict

from pydantic import Field, model_validator

from hpcgen.config.schema import Resources, StageConfig
from hpcgen.contracts import records as contract
from hpcgen.data.conversations import FlanMiniSource, NoRobotsSource, ShareGPTSource
from hpcgen.data.jsonl import JSONLSource
from hpcgen.data.niv2 import NIV2Source
from hpcgen.data.p3 import P3Source
from hpcgen.data.records import Example, render
from hpcgen.data.rewriting import RewritingSource
from hpcgen.data.sampling import assign_splits, cap_per_task, decontaminate, generalist, mix
from hpcgen.data.sourcebase import Source
from hpcgen.data.table import TableSource
from hpcgen.errors import ConfigError
from hpcgen.pipeline.stage import Estimate, SectionView, Stage, Task

AnySource = Annotated[
    NIV2Source | FlanMiniSource | P3Source | ShareGPTSource | NoRobotsSource | JSONLSource | RewritingSource
    | TableSource,
    Field(discriminator="format"),
]


def _default_sources() -> list[AnySource]:
    return [NIV2Source()]


class DataConfig(StageConfig):
    sources: list[AnySource] = Field(default_factory=_default_sources, min_length=1)
    template: str = contract.DEFAULT_TEMPLATE
    embed_template: str = contract.DEFAULT_EMBED_TEMPLATE
    max_per_train_task: int = Field(20, ge=1, description="N: items per training task")
    max_per_test_task: int = Field(5, ge=1, description="M: items per test task")
    test_size: int = Field(200, ge=1, description="K: test items of a source without tasks")
    generalist_size: int = Field(120, ge=0, description="G: random test items of the generalist subset")
    train_size: int | None = Field(None, ge=1, description="training items of a mixture (default: every source "
                                   "whole; with weights: the most the weights allow)")
    allow_contamination: bool = Field(False, description="keep training items that equal a test item")
    seed: int = 0

    @model_validator(mode="after")
    def _distinct_names(self) -> DataConfig:
        labels = [s.label() for s in self.sources]
        dupes = sorted({n for n in labels if labels.count(n) > 1})
        if dupes:
            raise ValueError(f"two sources are labelled {dupes[0]!r}: give each a distinct name")
        for key in ("template", "embed_template"):
            render(getattr(self, key), "p", "a", f"data.{key}")
        weighted = [i for i, s in enumerate(self.sources) if s.weight is not None]
        if weighted and len(weighted) < len(self.sources):
            missing = next(i for i in range(len(self.sources)) if i not in weighted)
            raise ValueError(f"sources[{weighted[0]}] has a weight but sources[{missing}] has none: a weighted "
                             "mixture needs a weight on every source (or none on any, to use every source whole)")
        return self


class ContaminationReport(TypedDict):
    """contamination.json (hpcgen.contracts.records)."""

    normalization: str
    compared: str
    allowed: bool
    test_items_matched: int
    train_items_removed: int
    matches: list[dict[str, Any]]  # {test_id, train_ids}


class PrepareReport(TypedDict):
    """What ``prepare_examples`` reports besides the records."""

    contamination: ContaminationReport
    skipped: dict[str, int]  # what the sources skipped, by reason


def prepare_examples(cfg: DataConfig) -> tuple[list[Example], list[Example], PrepareReport]:
    """Load, split, cap, decontaminate and mix: (train, test, report)."""
    stats: Counter[str] = Counter()
    train_by_source: list[tuple[Source, list[Example]]] = []
    test: list[Example] = []
    for i, source in enumerate(cfg.sources):
        key = f"data.sources[{i}]"
        examples = list(source.load(key, stats))
        if not examples:
            raise ConfigError(f"source {source.label()!r} yielded no examples", key=key, fix="check its path")
        taskless = all(e.task is None for e in examples)  # caps are per task: not for these
        examples = assign_splits(examples, source, test_size=cfg.test_size, seed=cfg.seed, key=key)
        if not source.generated and not taskless:
            examples = cap_per_task(examples, train_cap=cfg.max_per_train_task, test_cap=cfg.max_per_test_task,
                                    seed=cfg.seed)
        seen: set[str] = set()
        for e in examples:
            if e.id in seen:
                raise ConfigError(f"source {source.label()!r} has the record id {e.id!r} twice", key=key,
                                  fix="ids must be unique within a source")
            seen.add(e.id)
        if len(cfg.sources) > 1:  # ids stay unique across a mixture
            examples = [Example(f"{source.label()}/{e.id}", e.task, e.split, e.prompt, e.answer, e.source)
                        for e in examples]
        train_by_source.append((source, [e for e in examples if e.split == "train"]))
        test += [e for e in examples if e.split == "test"]
    all_train = [e for _, items in train_by_source for e in items]
    _, contamination = decontaminate(all_train, test, allow=cfg.allow_contamination)
    if contamination.removed:
        dirty = {t for m in contamination.matches for t in m["train_ids"]}
        train_by_source = [(s, [e for e in items if e.id not in dirty]) for s, items in train_by_source]
    train = mix(train_by_source, train_size=cfg.train_size, seed=cfg.seed)
    if not train:
        raise ConfigError("the training split is empty after filtering", key="data",
                          fix="check the split lists, caps and mixture settings")
    if not test:
        raise ConfigError("the test split is empty after filtering", key="data",
                          fix="check the split lists and test settings")
    report: PrepareReport = {
        "contamination": {"normalization": "NFKC, lower case, punctuation removed, spaces collapsed",
                          "compared": "prompt + ' ' + answer", "allowed": cfg.allow_contamination,
                          "test_items_matched": len(contamination.matches),
                          "train_items_removed": contamination.removed, "matches": contamination.matches},
        "skipped": dict(stats),
    }
    return train, test, report


class Prepare(Stage):
    name = "prepare"
    section = "data"
    Config = DataConfig
    defaults = Resources(nodes=1, tasks_per_node=1, cpus=1, gpus=0, mem=8192, time=60)

    def check(self, cfg: SectionView) -> None:
        for i, source in enumerate(cfg.data.sources):
            source.check(f"data.sources[{i}]")

    def estimate(self, cfg: SectionView, size: int, upstream: dict[str, list[Any]] | None = None) -> Estimate:
        """An upper bound of the records, where it is cheap to know (split lists times caps,
        generated counts); later stages size their arrays from it."""
        total = 0
        for source in cfg.data.sources:
            n = source.estimate_records(cfg.data.max_per_train_task, cfg.data.max_per_test_task)
            if n is None:
                return Estimate()
            total += n
        return Estimate(records=total)

    def fingerprint(self, cfg: SectionView) -> list[str]:
        """Each source's inputs by content (``content:<sha256>``), never by path or time: a copied
        checkout finds its records, a changed file makes new ones."""
        return [line for source in cfg.data.sources for line in source.fingerprint()]

    def run(self, task: Task) -> None:
        cfg: DataConfig = task.config.data
        train, test, report = prepare_examples(cfg)
        chosen = generalist(test, cfg.generalist_size, cfg.seed)
        contract.write_records(task.output(contract.RECORDS), [
            contract.Record(id=e.id, task=e.task, split=e.split or "", prompt=e.prompt, answer=e.answer,
                            text=cfg.template.format(prompt=e.prompt, answer=e.answer),
                            embed_text=cfg.embed_template.format(prompt=e.prompt, answer=e.answer),
                            source=e.source, generalist=e.id in chosen)
            for e in train + test])
        summary = {
            "records": len(train) + len(test),
            "splits": {"train": len(train), "test": len(test)},
            "tasks": {"train": len({e.task for e in train}), "test": len({e.task for e in test})},
            "generalist": len(chosen),
            "sources": {s.label(): {"train": sum(e.source == s.label() for e in train),
                                    "test": sum(e.source == s.label() for e in test)} for s in cfg.sources},
            "contaminated_test_items": report["contamination"]["test_items_matched"],
            "train_items_removed_as_contaminated": report["contamination"]["train_items_removed"],
            "skipped": report["skipped"],
            "template": cfg.template, "embed_template": cfg.embed_template,
        }
        contract.write_summary(task.output(contract.SUMMARY), summary)
        contract.write_contamination(task.output(contract.CONTAMINATION), report["contamination"])
        task.log.info("prepared %d train and %d test records from %d source(s)", len(train), len(test),
                      len(cfg.sources))
