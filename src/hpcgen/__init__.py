"""hpcgen: experiment matrices for instruction-tuning generalization studies, run as Slurm job graphs.

``hpcgen.arrange(train, test, strategy="tma")`` orders a training set by a test set without an
experiment file (``hpcgen.standalone``); it is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcgen.version import __version__

__all__ = ["__version__", "arrange"]

if TYPE_CHECKING:
    from hpcgen.standalone import arrange


def __getattr__(name: str) -> Any:
    if name == "arrange":  # lazily: ``hpcgen --version`` and the stages need none of it
        from hpcgen.standalone import arrange

        return arrange
    raise AttributeError(f"module 'hpcgen' has no attribute {name!r}")
