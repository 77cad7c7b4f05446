"""Executors by name: the one registry that ``cluster.executor``, ``--executor`` and the
``executor`` field of submission records are looked up in.

Built-in executors are imported when first asked for (``hpcgen --version`` imports none);
:func:`register` adds another. ``auto`` asks each executor in registry order whether it is
:meth:`~hpcgen.pipeline.executors.base.Executor.available` here: Slurm first, then local.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from hpcgen.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from hpcgen.config import Experiment
    from hpcgen.pipeline.executors.base import Executor
    from hpcgen.pipeline.store import Store

#: name -> the executor class, or "module:Class" until it is first asked for; the order is auto's
_REGISTRY: dict[str, type[Executor] | str] = {
    "slurm": "hpcgen.pipeline.executors.slurm:SlurmExecutor",
    "local": "hpcgen.pipeline.executors.local:LocalExecutor",
    "debug": "hpcgen.pipeline.executors.debug:DebugExecutor",
}


def register(cls: type[Executor]) -> type[Executor]:
    """Add an executor under ``cls.name`` (usable as a class decorator)."""
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """The registered executors' names, in the order ``auto`` tries them."""
    return list(_REGISTRY)


def choices() -> list[str]:
    """What ``--executor`` accepts: ``auto`` and every registered name."""
    return ["auto", *_REGISTRY]


def _unknown(name: str) -> ConfigError:
    *most, last = choices()
    return ConfigError(f"unknown executor {name!r}", key="cluster.executor",
                       fix=f"use {', '.join(most)} or {last}")


def executor_class(name: str) -> type[Executor]:
    """The executor class registered under ``name`` (ConfigError where there is none)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise _unknown(name)
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _REGISTRY[name] = getattr(import_module(module), attr)
    return entry


def resolve(name: str) -> str:
    """The executor ``name`` means: itself, or for ``auto`` the first registered executor that is
    available here (Slurm where a controller answers, else local). An executor that is half there
    (``sbatch`` on PATH but no controller) refuses with a ConfigError rather than be skipped."""
    if name != "auto":
        executor_class(name)
        return name
    for candidate in _REGISTRY:
        if executor_class(candidate).available():
            return candidate
    raise ConfigError("executor auto: no executor can run here", key="cluster.executor",
                      fix=f"choose one of: {', '.join(_REGISTRY)}")


def make_executor(name: str, exp: Experiment, store: Store, console: Console | None = None) -> Executor:
    """The executor ``name`` (or ``auto``) means, ready for this experiment and store."""
    return executor_class(resolve(name))(exp, store, console)
