"""Training examples in the arranged order: tokenization, answer-only labels, batches per rank.

The order is the experiment: global step s consumes exactly ``order[s*B:(s+1)*B]`` where
B = micro batch x gradient accumulation x data-parallel size. Rank r takes the r-th contiguous
slice of the step's items, and splits it into micro batches in order. Nothing shuffles.

Labels: -100 on prompt and padding tokens, so the loss covers the answer only. A record is the
template's text before ``{answer}`` (with the prompt filled in), tokenized, followed by the
answer plus the template's text after ``{answer}``, tokenized. Too long a record loses prompt
tokens from the left; the answer is never cut, and a record whose answer alone exceeds the
maximum length is left out and reported. Batches are padded to their own longest record.

Loss reduction: the model's cross-entropy is the mean over the answer tokens of one micro batch;
DeepSpeed averages it over gradient-accumulation micro batches and over ranks (each micro batch
weighs the same, whatever its number of answer tokens).

Length grouping (``train.length_grouping``): a rank's items of one step are sorted by length
before they are cut into micro batches, so each micro batch pads to a similar length (about half
of a mixed batch of NIV2 records is padding). Each micro batch's loss is then weighted by its
share of the step's answer tokens over all ranks (``token_weights``), which makes the step's
gradient exactly that of the mean over all its answer tokens, as one batch of them in one process
would give, whatever the number of ranks. What a step trains on, and so the arrangement, is
unchanged: only the grouping inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hpcgen.errors import ConfigError

IGNORE = -100


@dataclass
class Encoded:
    ids: list[list[int] | None]  # per training row (in records order), None where left out
    n_prompt: list[int]
    too_long: list[int]  # training rows whose answer alone exceeds max_length
    truncated: int = 0  # records that lost prompt tokens from the left to fit max_length

    def row(self, i: int) -> list[int]:
        """The token ids of training row ``i``, which is not one of those left out."""
        ids = self.ids[i]
        assert ids is not None, f"row {i} is left out (its answer alone exceeds max_length)"
        return ids


def split_template(template: str) -> tuple[str, str]:
    if "{answer}" not in template:
        raise ConfigError("the training template has no {answer}", key="data.template",
                          fix="the loss needs to know where the answer starts")
    head, tail = template.split("{answer}", 1)
    return head, tail


def encode(tokenizer, prompts: list[str], answers: list[str], template: str, max_length: int) -> Encoded:
    """Token ids of every record and where its answer starts."""
    head, tail = split_template(template)
    heads = tokenizer([head.format(prompt=p) for p in prompts], add_special_tokens=False)["input_ids"]
    tails = tokenizer([a + tail.format(prompt=p) for p, a in zip(prompts, answers)],
                      add_special_tokens=False)["input_ids"]
    ids: list[list[int] | None] = []
    n_prompt: list[int] = []
    too_long: list[int] = []
    truncated = 0
    for i, (h, t) in enumerate(zip(heads, tails)):
        if len(t) > max_length:
            too_long.append(i)
            ids.append(None)
            n_prompt.append(0)
            continue
        keep = max_length - len(t)
        if len(h) > keep:  # drop prompt tokens from the left
            h = h[len(h) - keep:]
            truncated += 1
        ids.append(list(h) + list(t))
        n_prompt.append(len(h))
    return Encoded(ids=ids, n_prompt=n_prompt, too_long=too_long, truncated=truncated)


def collate(rows: list[int], enc: Encoded, pad_id: int) -> dict[str, torch.Tensor]:
    """A batch padded to its longest record (right padding), labels -100 on prompt and padding."""
    width = max(len(enc.row(r)) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        seq = enc.row(r)
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention[b, : len(seq)] = 1
        labels[b, enc.n_prompt[r]: len(seq)] = torch.tensor(seq[enc.n_prompt[r]:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


@dataclass(frozen=True)
class Feed:
    """Which training rows each rank's micro batches hold at each global step."""

    order: np.ndarray  # training rows, in training order (records too long already removed)
    micro_batch: int
    accumulation: int
    world_size: int
    epochs: int = 1

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return len(self.order) // self.global_batch  # a last partial batch is dropped (reported)

    @property
    def steps(self) -> int:
        if self.max_steps is not None and self.steps_per_epoch:
            return self.max_steps
        return self.steps_per_epoch * self.epochs

    def step_items(self, step: int) -> np.ndarray:
        s = step % self.steps_per_epoch
        return self.order[s * self.global_batch:(s + 1) * self.global_batch]

    lengths: np.ndarray | None = None  # tokens per record: group each rank's items by length
    max_steps: int | None = None  # exactly this many steps, cycling through the order (``train.steps``)

    def micro_batches(self, step: int, rank: int) -> list[np.ndarray]:
        items = self.step_items(step)
        per_rank = self.micro_batch * self.accumulation
        mine = items[rank * per_rank:(rank + 1) * per_rank]
        if self.lengths is not None:
            mine = mine[np.argsort(self.lengths[mine], kind="stable")]
        return [mine[k * self.micro_batch:(k + 1) * self.micro_batch] for k in range(self.accumulation)]


def answer_tokens(rows, enc: Encoded) -> int:
    """Tokens the loss covers in these records (the answer and the template's tail)."""
    return sum(len(enc.row(r)) - enc.n_prompt[r] for r in rows)


def token_weights(batches: list[np.ndarray], enc: Encoded, step_tokens: int | None = None,
                  world_size: int = 1) -> list[float]:
    """Per micro batch of this rank, the factor that turns its mean answer-token loss, averaged
    over the accumulation (DeepSpeed divides by it) and over the ranks (their gradients are
    averaged), into the mean over every answer token of the step: accumulation x ranks x (its
    answer tokens / the step's answer tokens over all ranks). ``step_tokens`` is that total
    (every rank knows the step's items); by default this rank's own."""
    counts = [answer_tokens(b, enc) for b in batches]
    total = step_tokens if step_tokens is not None else sum(counts)
    return [len(batches) * world_size * c / total if total else 1.0 for c in counts]


def batch_sizes(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation steps, or a ConfigError when the batch sizes do not divide."""
    if global_batch % (micro_batch * world_size):
        raise ConfigError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x "
                          f"{world_size} data-parallel ranks", key="train.global_batch",
                          fix="choose sizes where micro_batch x ranks divides global_batch")
    return global_batch // (micro_batch * world_size)
