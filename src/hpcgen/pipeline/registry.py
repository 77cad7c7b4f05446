"""A pipeline: the stages an experiment can run, checked once for a consistent graph."""

from __future__ import annotations

from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter

from hpcgen.config.schema import RESERVED, StageConfig
from hpcgen.pipeline.stage import Stage


class Pipeline:
    def __init__(self, stages: list[Stage]) -> None:
        self.stages: dict[str, Stage] = {}
        for stage in stages:
            if stage.name in self.stages:
                raise ValueError(f"two stages are named {stage.name!r}")
            if stage.section in RESERVED:
                raise ValueError(f"stage {stage.name!r} cannot own the reserved section {stage.section!r}")
            self.stages[stage.name] = stage
        owners = {s.section for s in stages if s.section}
        for stage in stages:
            for up in stage.upstream:
                if up not in self.stages:
                    raise ValueError(f"stage {stage.name!r} names unknown upstream {up!r}")
            for up in stage.upstream:
                if self.stages[up].scope == "experiment":
                    raise ValueError(f"stage {stage.name!r} depends on {up!r}, which spans the whole "
                                     "experiment; only the last stages may")
            for section in stage.reads:
                if section not in owners:
                    raise ValueError(f"stage {stage.name!r} reads {section!r}, which no stage owns")
        try:
            order = list(TopologicalSorter({s.name: s.upstream for s in stages}).static_order())
        except CycleError as exc:
            raise ValueError(f"stage graph has a cycle: {exc.args[1]}") from None
        self.order = order

    def __getitem__(self, name: str) -> Stage:
        return self.stages[self.canonical(name)]

    def canonical(self, name: str) -> str:
        """The stage a name means: a stage's own name (``evaluate``) or the name of the config
        section it owns (``eval``); one thing, two names, accepted everywhere. Unknown names are
        returned unchanged (the caller reports them with its own context)."""
        if name in self.stages:
            return name
        for stage in self.stages.values():
            if stage.section == name:
                return stage.name
        return name

    def names(self) -> list[str]:
        """Every name a stage answers to: stage names, then section names that differ."""
        out = list(self.order)
        out += [s.section for s in self if s.section and s.section not in out]
        return out

    def __iter__(self) -> Iterator[Stage]:
        return (self.stages[n] for n in self.order)

    def sections(self) -> dict[str, type[StageConfig]]:
        out: dict[str, type[StageConfig]] = {}
        for stage in self:
            if stage.section:
                out[stage.section] = stage.Config
        return out

    def sinks(self) -> list[Stage]:
        """Stages nothing depends on: the graph of a run is what they need."""
        needed = {up for s in self.stages.values() for up in s.upstream}
        return [s for s in self if s.name not in needed]

    def downstream(self, name: str) -> set[str]:
        """``name`` and every stage that depends on it, directly or not."""
        out = {name}
        for stage in self:  # topological order: upstreams come first
            if any(up in out for up in stage.upstream):
                out.add(stage.name)
        return out
