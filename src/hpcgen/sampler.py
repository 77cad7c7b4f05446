"""Training in the arranged order outside hpcgen's own train stage: a rank-aware sampler, and a
Hugging Face ``Trainer`` that uses it.

The contract is the train stage's (``hpcgen.training.data.Feed``): the order is the experiment,
and nothing shuffles. Global step s takes the next ``global_batch`` items of the order,
``order[s*G:(s+1)*G]``; rank r of W takes the r-th contiguous slice of them, ``G // W`` items.
:class:`ArrangedSampler` yields exactly rank r's items, step after step, so a plain
``DataLoader(dataset, batch_size=G // W, sampler=ArrangedSampler(order, global_batch=G))`` on each
rank feeds what ``Feed(order, micro_batch=G // W, accumulation=1, world_size=W)`` would. The
order is the same every epoch.

``order`` holds dataset positions: the ``order`` of an arrangement (``hpcgen.arrangements``), or
``range(len(ds))`` for a dataset already stored in training order. Positions are distinct
non-negative ints (an arrangement is a permutation of a subset of the rows), below
``dataset_size`` when that is given.

Hugging Face ``Trainer`` (:func:`in_order`). ``Trainer._get_dataloader`` (transformers/trainer.py)
builds ``DataLoader(dataset, batch_size=per_device_train_batch_size, sampler=...)`` with the sampler
from ``Trainer._get_train_sampler`` (``RandomSampler`` by default), then ``accelerator.prepare``
(accelerate/data_loader.py, ``prepare_data_loader``) wraps the loader's batch sampler in a
``BatchSamplerShard`` when there are W > 1 processes: without ``split_batches`` it hands process r
the loader batches r, r + W, r + 2W, ... (``BatchSamplerShard._iter_with_no_split``). Every
process runs the same sampler, so the sampler must yield the whole order, not a rank's part: a
loader batch of P items is then the next P items of the order, and W consecutive loader batches
are one global batch of W x P items whose r-th contiguous slice goes to process r, as in ``Feed``.
That is why :func:`in_order` builds its sampler with ``world_size=1``.

With gradient accumulation A, the Trainer's optimizer step takes A consecutive batches of each
process (``Trainer.get_batch_samples``), so optimizer step k trains on exactly the items
``order[k*A*W*P:(k+1)*A*W*P]``, the same set as the train stage's global step k. Which process
gets which micro batch differs: here process r's micro batch j of step k is the r-th slice of the
step's j-th group of W x P items, where the train stage gives rank r a contiguous A x P slice of the
whole step.

The end of the order: by default (``dataloader_drop_last=False``) the last loader batch may be
short, and with W > 1 accelerate completes the last global batch with items from the start of the
order (``BatchSamplerShard`` with ``even_batches``); set ``dataloader_drop_last=True`` to drop a
trailing partial group of W x P items. With A > 1 that is not all of ``Feed``'s rule: fewer than A
batches left at the end of an epoch still make a (smaller) optimizer step, where ``Feed`` drops
the partial A x W x P step; use an order whose length is a multiple of A x W x P, or ``max_steps``
within the first epoch. Each epoch (and ``max_steps`` beyond the first epoch) goes through the
same order again.

The data collator runs one batch ahead of training: accelerate's ``DataLoaderShard`` fetches the
next batch before it hands out the current one, so a collator that logs what it sees logs one
batch after the last optimizer step too.

transformers >= 5.2 has ``TrainingArguments.train_sampling_strategy``: for a dataset already in
training order (``ds.select(order)``), ``train_sampling_strategy="sequential"`` is all it takes
(its ``SequentialSampler`` yields the whole dataset in order, and the sharding above does the
rest). :func:`in_order` is for a dataset in its own order plus a separate ``order``, and for
older transformers. Both work the same for subclasses of ``Trainer`` such as TRL's ``SFTTrainer``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ArrangedSampler", "in_order"]

T = TypeVar("T")
Order = Sequence[int] | np.ndarray


def _dist_default(name: str, fallback: int) -> int:
    """This process's rank (``name="RANK"``) or world size (``"WORLD_SIZE"``): torch.distributed's
    when it is initialized, else the environment variable, else ``fallback``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() if name == "RANK" else torch.distributed.get_world_size()
    value = os.environ.get(name)
    if value is None or not value.strip():
        return fallback
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _positions(order: Order, dataset_size: int | None) -> np.ndarray:
    """``order`` as a 1-D int64 array of distinct positions in [0, dataset_size), or a ValueError."""
    arr = np.asarray(order)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"order must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"order must hold int dataset positions, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    low = int(arr.min())
    if low < 0:
        raise ValueError(f"order holds a negative position {low} (at index {int(np.argmin(arr))})")
    if dataset_size is not None:
        high = int(arr.max())
        if high >= dataset_size:
            raise ValueError(f"order holds position {high} (at index {int(np.argmax(arr))}), outside a dataset "
                             f"of {dataset_size} items")
    values, first, counts = np.unique(arr, return_index=True, return_counts=True)
    if values.size != arr.size:
        dup = int(np.argmax(counts > 1))
        again = int(np.flatnonzero(arr == values[dup])[1])
        raise ValueError(f"order holds position {int(values[dup])} more than once (at indices {int(first[dup])} and "
                         f"{again}): an arrangement is a permutation of a subset of the dataset")
    return arr


class ArrangedSampler(Sampler[int]):
    """This rank's dataset positions, in training order: of every global batch of ``global_batch``
    consecutive items of ``order``, the ``rank``-th contiguous slice of ``global_batch // world_size``.

    ``rank`` and ``world_size`` default to torch.distributed's when it is initialized, else to the
    environment's RANK and WORLD_SIZE, else to 0 and 1. With ``world_size > 1``, ``global_batch``
    is required and must be a multiple of ``world_size``; with one process and no
    ``global_batch`` the sampler yields the whole order.

    ``drop_last=True`` (as ``Feed``) drops a trailing partial global batch; ``drop_last=False``
    cuts it into ``world_size`` contiguous pieces as even as possible (the first ones one item
    longer), so ranks may then get unequal counts. ``dataset_size``, when given, bounds the
    positions. ``set_epoch`` does nothing: the order is the same every epoch.

    This is the sampler for a loop that gives each rank its own ``DataLoader``. A Hugging Face
    ``Trainer`` shards the loader itself: give it the whole order (``world_size=1``, as
    :func:`in_order` does), never a rank's part, or each rank trains on a slice of its slice.
    """

    def __init__(self, order: Order, *, global_batch: int | None = None, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = True, dataset_size: int | None = None) -> None:
        super().__init__()
        self.world_size = world_size if world_size is not None else _dist_default("WORLD_SIZE", 1)
        self.rank = rank if rank is not None else _dist_default("RANK", 0)
        if self.world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, {self.world_size}) for world_size {self.world_size}")
        if global_batch is None and self.world_size > 1:
            raise ValueError(f"with world_size {self.world_size}, global_batch is required: pass the number of items "
                             "one training step takes over all ranks (per-rank batch x world_size)")
        if global_batch is not None:
            if global_batch < 1:
                raise ValueError(f"global_batch must be at least 1, got {global_batch}")
            if global_batch % self.world_size:
                raise ValueError(f"global_batch {global_batch} is not a multiple of world_size {self.world_size}: "
                                 f"choose a global_batch divisible by {self.world_size} (e.g. "
                                 f"{-(-global_batch // self.world_size) * self.world_size})")
        if dataset_size is not None and dataset_size < 0:
            raise ValueError(f"dataset_size must be non-negative, got {dataset_size}")
        self.order = _positions(order, dataset_size)
        self.global_batch = global_batch
        self.drop_last = drop_last
        self.indices = self._mine()

    def _mine(self) -> np.ndarray:
        n = self.order.size
        g = self.global_batch if self.global_batch is not None else max(n, 1)
        full = n // g
        per_rank = g // self.world_size
        head = self.order[:full * g].reshape(full, self.world_size, per_rank)[:, self.rank, :].reshape(-1)
        tail = self.order[full * g:]
        if self.drop_last or not tail.size:
            return head.copy()
        return np.concatenate([head, np.array_split(tail, self.world_size)[self.rank]])

    @property
    def steps(self) -> int:
        """Global batches the order makes (a trailing partial one counts unless dropped)."""
        n = self.order.size
        g = self.global_batch if self.global_batch is not None else max(n, 1)
        return n // g if self.drop_last else -(-n // g)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def set_epoch(self, epoch: int) -> None:
        """Kept for training loops that call it; the order does not change between epochs."""

    def __repr__(self) -> str:
        return (f"ArrangedSampler({self.order.size} items, global_batch={self.global_batch}, rank={self.rank}, "
                f"world_size={self.world_size}, drop_last={self.drop_last})")


def in_order(trainer_cls: type[T], order: Order | None = None) -> type[T]:
    """A subclass of ``trainer_cls`` (``transformers.Trainer`` or a subclass of it, e.g. TRL's
    ``SFTTrainer``) that trains on its train dataset in ``order`` (dataset positions; default: the
    dataset's own order), every epoch.

    Its ``_get_train_sampler`` returns ``ArrangedSampler(order, world_size=1, rank=0)``: the
    Trainer's accelerate ``prepare`` already gives process r the r-th slice of each global batch
    (see the module docstring). A train dataset without ``__len__`` (an iterable dataset) is left
    to the base class, which reads it in its own order.

    Positions index the dataset the trainer ends up with: a trainer that prepares its dataset
    (``SFTTrainer`` tokenizes, truncates and drops rows left with no loss tokens) may renumber
    rows, and ``order`` must then refer to the prepared dataset. A dataset stored in training order
    with ``train_sampling_strategy="sequential"`` does not have that problem (dropping rows keeps
    the order of the others).
    """
    base: Any = trainer_cls
    fixed = None if order is None else _positions(order, None)

    class _InOrder(base):
        def _get_train_sampler(self, train_dataset: Any = None) -> Sampler[int] | None:
            dataset: Any = train_dataset if train_dataset is not None else getattr(self, "train_dataset", None)
            try:
                size = len(dataset)
            except TypeError:
                if train_dataset is None:  # older transformers: no dataset argument
                    return cast(Sampler[int] | None, super()._get_train_sampler())
                return cast(Sampler[int] | None, super()._get_train_sampler(train_dataset))
            chosen = fixed if fixed is not None else range(size)
            return ArrangedSampler(chosen, world_size=1, rank=0, dataset_size=size)

    _InOrder.__name__ = f"InOrder{trainer_cls.__name__}"
    _InOrder.__qualname__ = _InOrder.__name__
    return cast(type[T], _InOrder)
