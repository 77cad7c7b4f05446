"""Training-data arrangements: named strategies that turn prepared records (and, for some, the
similarity outputs) into a training order. Each is a small function registered by name, with
the paper's definition in its docstring (the data-arrangement paper: He et al., arXiv:2406.11721);
``arrange.strategy`` selects one."""

from hpcgen.arrangements.strategies import STRATEGIES, Arrangement, Context, register

__all__ = ["STRATEGIES", "Arrangement", "Context", "register"]
