"""The string-rewriting generator: semantics, constraints, power law, unseen tests, determinism."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from hpcgen.data.rewriting import RewritingSource, counts_per_instruction, generate, rewrite


def parse(example):
    """(x, y, key, z) back from the default prompt '{x}>{y}[#{key}]|{z}'."""
    instruction, z = example.prompt.split("|", 1)
    rule, _, key = instruction.partition("#")
    x, y = rule.split(">")
    return x, y, key, z


def test_rule_is_leftmost_once_and_noop():
    assert rewrite("ab", "X", "cabdab") == "cXdab"
    assert rewrite("aa", "b", "aaaa") == "baa"
    assert rewrite("q", "zz", "abc") == "abc"
    assert rewrite("ab", "", "abab") == "ab"


def test_every_example_follows_the_rule():
    cfg = RewritingSource(instructions=40, examples_per_instruction=25, test_instructions=10, noop_fraction=0.2,
                          occurrences=2, seed=7)
    examples = list(generate(cfg))
    assert Counter(e.split for e in examples) == {"train": 1000, "test": 50}
    noops = 0
    for e in examples:
        x, y, key, z = parse(e)
        assert e.task == f"{x}>{y}" and key == ""
        assert e.answer == rewrite(x, y, z)
        assert cfg.z_len[0] <= len(z) or len(z) >= 2 * len(x)
        if x not in z:
            noops += 1
            assert e.answer == z
        else:
            assert z.count(x) >= 2  # two copies planted, only the leftmost rewritten
    assert noops == sum(round(c * 0.2) for c in [25] * 40 + [5] * 10)


def test_unseen_test_instructions_and_determinism():
    cfg = RewritingSource(instructions=30, test_instructions=12, seed=1)
    a, b = list(generate(cfg)), list(generate(cfg))
    assert a == b
    c = list(generate(cfg.model_copy(update={"seed": 2})))
    assert [e.prompt for e in a] != [e.prompt for e in c]
    train = {e.task for e in a if e.split == "train"}
    test = {e.task for e in a if e.split == "test"}
    assert len(train) == 30 and len(test) == 12 and not train & test


@pytest.mark.parametrize("constraint, k, check", [
    ("repeated", 3, lambda x: all(x[i:i + 3] == x[i] * 3 for i in range(0, len(x), 3))),
    ("periodic", 2, lambda x: x[: len(x) // 2] * 2 == x),
    ("mirror", 2, lambda x: (lambda b: x == b[0] + b[1] + b[1] + b[0])(
        [x[i: i + len(x) // 4] for i in range(0, len(x) // 2, len(x) // 4)])),
])
def test_constraint_families(constraint, k, check):
    cfg = RewritingSource(instructions=20, test_instructions=5, constraint=constraint, k=k, x_len=(4, 8),
                          examples_per_instruction=2, seed=3)
    xs = {parse(e)[0] for e in generate(cfg)}
    assert len(xs) > 5 and all(check(x) for x in xs), xs


def test_encrypted_variant_applies_the_key_after_rewriting():
    cfg = RewritingSource(instructions=10, test_instructions=3, encrypted=True, seed=4, alphabet="abcdefgh")
    for e in generate(cfg):
        x, y, key, z = parse(e)
        assert sorted(key) == sorted("abcdefgh") and e.task == f"{x}>{y}#{key}"
        assert e.answer == rewrite(x, y, z).translate(str.maketrans("abcdefgh", key))


def test_power_law_budget():
    uniform = counts_per_instruction(RewritingSource(instructions=10, budget=1000))
    assert uniform == [100] * 10
    skewed = counts_per_instruction(RewritingSource(instructions=10, budget=1000, alpha=1.0))
    assert sum(skewed) == 1000 and skewed == sorted(skewed, reverse=True) and skewed[0] > 3 * skewed[-1]
    expected0 = 1000 / sum(1 / (r + 1) for r in range(10))
    assert abs(skewed[0] - expected0) < 1
    cfg = RewritingSource(instructions=10, budget=1000, alpha=1.0, test_instructions=2)
    per_task = Counter(e.task for e in generate(cfg) if e.split == "train")
    assert sorted(per_task.values(), reverse=True) == skewed


def test_bad_generator_settings():
    with pytest.raises(ValidationError, match="must not contain '|'"):
        RewritingSource(alphabet="ab|c")
    with pytest.raises(ValidationError, match="0 <= min <= max"):
        RewritingSource(z_len=[10, 5])
    from hpcgen.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot make 30 distinct instructions"):
        list(generate(RewritingSource(alphabet="ab", x_len=1, y_len=1, instructions=20, test_instructions=10)))


def test_held_out_examples_of_seen_instructions():
    cfg = RewritingSource(instructions=40, budget=400, test_instructions=6, seen_test_instructions=8,
                          test_examples_per_instruction=3, seed=5)
    examples = list(generate(cfg))
    train = [e for e in examples if e.split == "train"]
    test = [e for e in examples if e.split == "test"]
    train_tasks = {e.task for e in train}
    seen = [e for e in test if e.task in train_tasks]
    unseen = [e for e in test if e.task not in train_tasks]
    assert len(train) == 400 and len(unseen) == 6 * 3 and len(seen) == 8 * 3
    assert len({e.task for e in seen}) == 8
    assert not {e.prompt for e in seen} & {e.prompt for e in train}  # held out: other inputs z
    for e in seen:
        x, y, _, z = parse(e)
        assert e.answer == rewrite(x, y, z)
    # the unseen side does not depend on how many seen instructions are held out
    fewer = list(generate(cfg.model_copy(update={"seen_test_instructions": 0})))
    assert [e for e in fewer if e.split == "test"] == unseen
    # nor on the number of training instructions or the budget: one unseen test set per seed
    more = list(generate(cfg.model_copy(update={"instructions": 90, "budget": 900})))
    assert [e for e in more if e.split == "test" and e.task not in {t.task for t in more if t.split == "train"}] \
        == unseen
    assert cfg.estimate_records(0, 0) == len(examples)
    # more held-out instructions than training ones: all of them
    small = list(generate(cfg.model_copy(update={"instructions": 4, "budget": 40})))
    assert len({e.task for e in small if e.split == "test"} & {e.task for e in small if e.split == "train"}) == 4


def test_mixed_families_and_test_only_sources():
    cfg = RewritingSource(instructions=30, test_instructions=6, constraint=["repeated", "periodic", "mirror"], k=2,
                          x_len=(4, 4), examples_per_instruction=1, seed=6)
    xs = [parse(e)[0] for e in generate(cfg)]
    repeated = [x for x in xs if x[0] == x[1] and x[2] == x[3]]
    periodic = [x for x in xs if x[:2] == x[2:]]
    mirror = [x for x in xs if x == x[::-1]]
    assert repeated and periodic and mirror
    assert all(x in repeated or x in periodic or x in mirror for x in xs)
    only_test = list(generate(RewritingSource(instructions=0, test_instructions=4, seed=7)))
    assert {e.split for e in only_test} == {"test"} and len(only_test) == 4 * 5
    with pytest.raises(ValidationError, match="both 0"):
        RewritingSource(instructions=0, test_instructions=0)
