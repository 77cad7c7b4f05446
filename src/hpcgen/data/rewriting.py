"""Synthetic string-rewriting tasks, for instruction-diversity experiments: the tasks of the
diversity paper, Zhang, Wang and Charton, *From Symbolic Tasks to Code Generation: Diversification
Yields Better Task Performers*, arXiv:2402.10891 ("the paper" below).

An instruction is a rule ``x -> y``. An example applies it to a string ``z``: the LEFTMOST
occurrence of ``x`` in ``z`` is replaced by ``y``, once; if ``x`` does not occur, the output is
``z`` (a no-op). With ``encrypted``, the rewritten string then goes through a substitution cipher
whose key is part of the instruction. The task id of an example is its instruction, so later
stages treat these tasks like real ones.

Knobs (all in the config): the alphabet; the lengths of x, y and z (a number or [min, max]); the
number of distinct training instructions (0: a source of test instructions only, to test on another
family than the training one); examples per instruction, or a total budget spread over
instructions with a power-law shape alpha (count of the r-th instruction proportional to
(r+1)^-alpha; alpha = 0 is uniform); the fraction of no-op examples; how many copies of x are
planted in z; a constraint family on x (``repeated``: each character k times; ``periodic``: a
block repeated k times; ``mirror``: k blocks followed by the same blocks in reverse order; a list
of families mixes them); a set of test instructions never seen in training; and held-out test
examples of some training instructions (``seen_test_instructions``), for the gap between seen and
unseen instructions. Whether a test record's instruction is seen is decided downstream from the
training records (an instruction of a test-only source that another source trains on counts as
seen). Deterministic for a seed.

The generator draws all filler characters with one vectorised call and slices them per example,
so a million examples take a few seconds on one core (benchmarks/bench_rewriting.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from hpcgen.data.records import Example
from hpcgen.data.sourcebase import Source
from hpcgen.errors import ConfigError

SEPARATORS = (">", "#", "|")
Constraint = Literal["none", "repeated", "periodic", "mirror"]


def _range(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return tuple(value)
    raise ValueError("must be a length or [min, max]")


def _ordered(value: tuple[int, int]) -> tuple[int, int]:
    lo, hi = value
    if lo < 0 or hi < lo:
        raise ValueError("must satisfy 0 <= min <= max")
    return value


LengthRange = Annotated[tuple[int, int], BeforeValidator(_range), AfterValidator(_ordered)]


class RewritingSource(Source):
    format: Literal["rewriting"] = "rewriting"
    alphabet: str = Field("abcdefghijklmnopqrstuvwxyz", min_length=2)
    x_len: LengthRange = Field((2, 4), description="length of x, or [min, max]")
    y_len: LengthRange = Field((1, 4), description="length of y (0 deletes)")
    z_len: LengthRange = Field((12, 24), description="length of the input z")
    instructions: int = Field(100, ge=0, description="distinct training instructions (0: a source of test "
                              "instructions only)")
    examples_per_instruction: int | None = Field(10, ge=1)
    budget: int | None = Field(None, ge=1, description="total training examples (instead of per instruction)")
    alpha: float = Field(0.0, ge=0, description="power-law shape of examples per instruction")
    noop_fraction: float = Field(0.1, ge=0, le=1, description="share of examples where x does not occur")
    occurrences: int = Field(1, ge=1, description="copies of x planted in z")
    constraint: Constraint | list[Constraint] = Field(
        "none", description="family of x; a list mixes families (instruction i takes the i-th, cyclically)")
    k: int = Field(2, ge=1, description="parameter of the constraint family")
    encrypted: bool = False
    test_instructions: int = Field(50, ge=0, description="instructions never seen in training")
    test_examples_per_instruction: int = Field(5, ge=1)
    seen_test_instructions: int = Field(0, ge=0, description="up to this many training instructions (all when "
                                        "there are fewer) also get held-out test examples "
                                        "(test_examples_per_instruction each): the seen side of the gap")
    prompt_template: str = Field("{instruction}|{z}", description="fields: instruction, x, y, key, z")
    seed: int = 0

    generated = True

    @model_validator(mode="after")
    def _consistent(self):
        bad = [s for s in SEPARATORS if s in self.alphabet]
        if bad:
            raise ValueError(f"alphabet must not contain {bad[0]!r}: it separates parts of an instruction")
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError("alphabet has a repeated character")
        if self.x_len[0] < 1:
            raise ValueError("x must be at least 1 character long")
        if self.instructions == 0 and self.test_instructions == 0:
            raise ValueError("instructions and test_instructions are both 0: the source would yield nothing")
        return self

    def families(self) -> list[str]:
        return list(self.constraint) if isinstance(self.constraint, list) else [self.constraint]

    def estimate_records(self, train_cap: int, test_cap: int) -> int | None:
        train = sum(counts_per_instruction(self))
        seen = min(self.seen_test_instructions, self.instructions)
        return train + (self.test_instructions + seen) * self.test_examples_per_instruction

    def load(self, key: str, stats: Counter) -> Iterator[Example]:
        return generate(self, key=key)


# --------------------------------------------------------------------------------------------
# Instructions


def rewrite(x: str, y: str, z: str) -> str:
    """The rule: replace the leftmost occurrence of x in z by y, once; no occurrence: z."""
    return z.replace(x, y, 1)


def make_x(rng: np.random.Generator, alphabet: str, length: int, constraint: str, k: int) -> str:
    a = len(alphabet)

    def chars(n: int) -> str:
        return "".join(alphabet[i] for i in rng.integers(0, a, n))

    if constraint == "none":
        return chars(length)
    if constraint == "repeated":  # each character k times: aabbcc
        return "".join(c * k for c in chars(max(1, length // k)))
    if constraint == "periodic":  # a block repeated k times: abcabc
        return chars(max(1, length // k)) * k
    # mirror: k blocks, then the same blocks in reverse order: ab cd | cd ab
    size = max(1, length // (2 * k))
    blocks = [chars(size) for _ in range(k)]
    return "".join(blocks + blocks[::-1])


def make_instructions(cfg: RewritingSource, key: str) -> list[tuple[str, str, str]]:
    """Distinct (x, y, key) triples: the training ones first, then the unseen test ones.

    The test instructions are drawn first, from a stream of their own, so that for a seed they
    are the same whatever the number of training instructions: every point of a diversity grid
    is tested on the same unseen instructions (and a training instruction never equals one)."""
    out: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    letters = np.array(list(cfg.alphabet))
    families = cfg.families()
    wanted = cfg.instructions + cfg.test_instructions
    for stream, count in ((0x7E57, cfg.test_instructions), (0x7A1, cfg.instructions)):
        rng = np.random.default_rng([cfg.seed, stream])
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            if attempts > 50 * wanted + 1000:
                raise ConfigError(f"cannot make {wanted} distinct instructions from this alphabet and these lengths",
                                  key=f"{key}.instructions", fix="widen the alphabet or the lengths of x and y, "
                                  "or ask for fewer instructions")
            x = make_x(rng, cfg.alphabet, int(rng.integers(cfg.x_len[0], cfg.x_len[1] + 1)),
                       families[made % len(families)], cfg.k)
            y = "".join(cfg.alphabet[i] for i in rng.integers(0, len(cfg.alphabet),
                                                              int(rng.integers(cfg.y_len[0], cfg.y_len[1] + 1))))
            cipher = "".join(letters[rng.permutation(len(letters))]) if cfg.encrypted else ""
            item = (x, y, cipher)
            if x == y or item in seen:
                continue
            seen.add(item)
            out.append(item)
            made += 1
    return out[cfg.test_instructions:] + out[:cfg.test_instructions]


def counts_per_instruction(cfg: RewritingSource) -> list[int]:
    """Training examples of each instruction: uniform, or a power law over a total budget."""
    n = cfg.instructions
    if n == 0:
        return []
    total = cfg.budget if cfg.budget is not None else n * (cfg.examples_per_instruction or 1)
    weights = np.array([(r + 1) ** -cfg.alpha for r in range(n)], dtype=np.float64)
    weights /= weights.sum()
    raw = weights * total
    counts = np.floor(raw).astype(np.int64)
    short = int(total - counts.sum())
    if short:  # hand out the remainder by largest fractional part (ties: lower rank first)
        order = np.lexsort((np.arange(n), -(raw - counts)))
        counts[order[:short]] += 1
    return counts.tolist()


# --------------------------------------------------------------------------------------------
# Examples


class _Filler:
    """Random characters drawn in one vectorised call and handed out as slices."""

    def __init__(self, rng: np.random.Generator, alphabet: str, n: int) -> None:
        codes = np.array([ord(c) for c in alphabet], dtype="<u4")
        self.text = codes[rng.integers(0, len(alphabet), n)].tobytes().decode("utf-32-le")
        self.pos = 0

    def take(self, n: int) -> str:
        s = self.text[self.pos:self.pos + n]
        self.pos += n
        return s


def generate(cfg: RewritingSource, key: str = "data.sources[0]") -> Iterator[Example]:
    """The training examples, then the unseen instructions' test examples, then the held-out
    examples of seen instructions; each part from a random stream of its own, so that the unseen
    test set of a seed does not change with the number of training instructions or examples."""
    instructions = make_instructions(cfg, key)
    train, test = instructions[: cfg.instructions], instructions[cfg.instructions:]
    yield from _examples(cfg, "train", 0, list(zip(train, counts_per_instruction(cfg))), 0x7A1)
    per = cfg.test_examples_per_instruction
    yield from _examples(cfg, "test", 0, [(inst, per) for inst in test], 0x7E57)
    n_seen = min(cfg.seen_test_instructions, cfg.instructions)
    if n_seen:
        picks = np.sort(np.random.default_rng([cfg.seed, 0x5EE2]).choice(cfg.instructions, n_seen, replace=False))
        yield from _examples(cfg, "test", len(test) * per, [(train[int(i)], per) for i in picks], 0x5EE2)


def _examples(cfg: RewritingSource, split: str, first: int, plan: list, stream: int) -> Iterator[Example]:
    """Examples of (instruction, count) pairs, numbered from ``first`` within their split."""
    rng = np.random.default_rng([cfg.seed, stream, 1])
    n_total = sum(c for _, c in plan)
    if not n_total:
        return
    z_lo, z_hi = cfg.z_len
    lengths = rng.integers(z_lo, z_hi + 1, n_total)
    noop_draw = rng.random(n_total)
    filler = _Filler(rng, cfg.alphabet, int(lengths.sum()) + 16)
    cut_draw = rng.random((n_total, cfg.occurrences))
    repair = rng.integers(0, len(cfg.alphabet), n_total)
    alphabet = cfg.alphabet
    template = cfg.prompt_template
    label = cfg.label()
    j = 0
    for (x, y, cipher), count in plan:
        instruction = f"{x}>{y}" + (f"#{cipher}" if cipher else "")
        table = str.maketrans(alphabet, cipher) if cipher else None
        n_noop = int(round(count * cfg.noop_fraction))
        # exactly n_noop of this instruction's examples are no-ops: the ones with the lowest draws
        noop_rank = np.argsort(noop_draw[j:j + count], kind="stable")
        is_noop = np.zeros(count, dtype=bool)
        is_noop[noop_rank[:n_noop]] = True
        lx = len(x)
        for i in range(count):
            length = int(lengths[j])
            if is_noop[i]:
                z = filler.take(length)
                tries = 0
                while (at := z.find(x)) >= 0:  # change one character of each occurrence
                    shift = 1 + int(repair[j]) % (len(alphabet) - 1)
                    c = alphabet[(alphabet.index(z[at]) + shift) % len(alphabet)]
                    z = z[:at] + c + z[at + 1:]
                    tries += 1
                    if tries > 4 * length:  # a change can create a new occurrence: end it for good
                        z = z.replace(x[0], alphabet[(alphabet.index(x[0]) + 1) % len(alphabet)])
            else:
                length = max(length, cfg.occurrences * lx)
                free = length - cfg.occurrences * lx
                cuts = sorted(int(c * (free + 1)) for c in cut_draw[j])  # stars and bars
                parts, prev = [], 0
                for cut in cuts:
                    parts.append(filler.take(cut - prev))
                    parts.append(x)
                    prev = cut
                parts.append(filler.take(free - prev))
                z = "".join(parts)
            out = z.replace(x, y, 1)
            if table is not None:
                out = out.translate(table)
            prompt = template.format(instruction=instruction, x=x, y=y, key=cipher, z=z)
            yield Example(id=f"{label}-{split}-{first + j:08d}", task=instruction, split=split, prompt=prompt,
                          answer=out, source=label)
            j += 1
