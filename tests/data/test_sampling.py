"""Splits, caps, seeds, mixtures, contamination, generalist subset."""

from __future__ import annotations

from collections import Counter

import pytest

from hpcgen.data.conversations import FlanMiniSource, ShareGPTSource
from hpcgen.data.records import Example, normalize
from hpcgen.data.sampling import assign_splits, cap_per_task, decontaminate, generalist, mix
from hpcgen.errors import ConfigError
from hpcgen.stages.prepare import DataConfig, prepare_examples
from tests.conftest import FIXTURES, ROOT

DATA = FIXTURES / "data"
SAMPLE = str(ROOT / "examples" / "data" / "niv2-sample")


def ex(i, task=None, split=None, prompt=None, answer="a", source="s"):
    return Example(id=str(i), task=task, split=split, prompt=prompt or f"p{i}", answer=answer, source=source)


def test_task_split_is_seeded_and_by_task():
    source = FlanMiniSource(path=str(DATA / "flan_mini.json"), test_tasks=2, train_tasks=3)
    examples = [ex(i, task=f"t{i % 6}") for i in range(60)]
    a = assign_splits(examples, source, test_size=200, seed=0, key="k")
    b = assign_splits(examples, source, test_size=200, seed=0, key="k")
    c = assign_splits(examples, source, test_size=200, seed=1, key="k")
    assert a == b and a != c
    tasks = {s: {e.task for e in a if e.split == s} for s in ("train", "test")}
    assert len(tasks["test"]) == 2 and len(tasks["train"]) == 3 and not tasks["test"] & tasks["train"]
    assert len(a) == 50  # the sixth task is in neither


def test_taskless_source_gets_k_random_test_items():
    source = ShareGPTSource(path="x.json", name="chat")
    examples = [ex(i) for i in range(50)]
    out = assign_splits(examples, source, test_size=7, seed=3, key="k")
    assert Counter(e.split for e in out) == {"train": 43, "test": 7}
    assert {e.task for e in out} == {"chat"}
    with pytest.raises(ConfigError, match="a test set of 50 leaves none"):
        assign_splits(examples, source, test_size=50, seed=3, key="k")


def test_caps_per_task():
    examples = [ex(i, task=f"t{i % 3}", split="train") for i in range(90)] + [
        ex(100 + i, task="u", split="test") for i in range(9)]
    out = cap_per_task(examples, train_cap=4, test_cap=2, seed=0)
    assert Counter((e.task, e.split) for e in out) == {("t0", "train"): 4, ("t1", "train"): 4,
                                                       ("t2", "train"): 4, ("u", "test"): 2}
    assert [e.id for e in out] == sorted((e.id for e in out), key=lambda s: [e.id for e in examples].index(s))
    assert cap_per_task(examples, train_cap=4, test_cap=2, seed=0) == out


def test_contamination_is_found_after_normalization_and_removed():
    train = [ex(1, prompt="What is the Capital of France?", answer="Paris."), ex(2, prompt="other")]
    test = [ex(3, prompt="what is the capital   of france", answer="paris", split="test")]
    assert normalize("What is the Capital of France? Paris.") == "what is the capital of france paris"
    kept, report = decontaminate(train, test, allow=False)
    assert [e.id for e in kept] == ["2"] and report.removed == 1
    assert report.matches == [{"test_id": "3", "train_ids": ["1"]}]
    kept, report = decontaminate(train, test, allow=True)
    assert len(kept) == 2 and report.removed == 0 and len(report.matches) == 1


def test_mixture_weights_and_fraction():
    a = ShareGPTSource(path="a", name="a", weight=3)
    b = ShareGPTSource(path="b", name="b", weight=1)
    items_a = [ex(f"a{i}", source="a") for i in range(100)]
    items_b = [ex(f"b{i}", source="b") for i in range(100)]
    out = mix([(a, items_a), (b, items_b)], train_size=80, seed=0)
    assert Counter(e.source for e in out) == {"a": 60, "b": 20}
    # without train_size, the most that the proportions allow: a is the limit (100 = 3/4 of 133)
    out = mix([(a, items_a), (b, items_b)], train_size=None, seed=0)
    assert Counter(e.source for e in out) == {"a": 100, "b": 33}
    half = ShareGPTSource(path="c", name="c", fraction=0.5)
    assert len(mix([(half, items_a)], train_size=None, seed=0)) == 50
    with pytest.raises(ConfigError, match="has 100 training items but its weight asks for 300"):
        mix([(a, items_a), (b, items_b)], train_size=400, seed=0)


def test_generalist_subset():
    test = [ex(i, split="test") for i in range(300)]
    chosen = generalist(test, 120, seed=0)
    assert len(chosen) == 120 and chosen == generalist(test, 120, seed=0) != generalist(test, 120, seed=1)
    assert generalist(test[:50], 120, seed=0) == {e.id for e in test[:50]}


def test_prepare_niv2_with_mixture_and_counts():
    cfg = DataConfig.model_validate({
        "sources": [{"format": "niv2", "path": SAMPLE},
                    {"format": "sharegpt", "path": str(DATA / "sharegpt.json"), "test_size": 2}],
        "max_per_train_task": 4, "max_per_test_task": 2, "generalist_size": 10})
    train, test, report = prepare_examples(cfg)
    assert Counter(e.source for e in train) == {"niv2": 90 * 4, "sharegpt": 8}
    assert Counter(e.source for e in test) == {"niv2": 20 * 2, "sharegpt": 2}
    assert all(e.id.startswith(f"{e.source}/") for e in train + test)
    assert report["contamination"]["test_items_matched"] == 0


def test_prepare_removes_contaminated_training_items(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"q{i}", "answer": f"a{i}", "split": "train"} for i in range(5)]
    rows += [{"prompt": "Q1", "answer": "A1!", "split": "test"}, {"prompt": "new", "answer": "x", "split": "test"}]
    path.write_text("\n".join(__import__("json").dumps(r) for r in rows))
    cfg = DataConfig.model_validate({"sources": [{"format": "jsonl", "path": str(path), "split_field": "split"}]})
    train, test, report = prepare_examples(cfg)
    assert len(train) == 4 and "jsonl-1" not in {e.id for e in train}
    assert report["contamination"]["matches"] == [{"test_id": "jsonl-5", "train_ids": ["jsonl-1"]}]
    allowed = DataConfig.model_validate({"sources": [{"format": "jsonl", "path": str(path),
                                                      "split_field": "split"}], "allow_contamination": True})
    assert len(prepare_examples(allowed)[0]) == 5


def test_empty_split_after_filtering_is_an_error(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "q", "answer": "a", "split": "train"}\n')
    cfg = DataConfig.model_validate({"sources": [{"format": "jsonl", "path": str(path), "split_field": "split"}]})
    with pytest.raises(ConfigError, match="the test split is empty after filtering"):
        prepare_examples(cfg)


def test_mixture_without_weights_uses_every_source_whole_or_a_uniform_share():
    a, b = ShareGPTSource(path="a", name="a"), ShareGPTSource(path="b", name="b")
    items_a = [ex(f"a{i}", source="a") for i in range(20)]
    items_b = [ex(f"b{i}", source="b") for i in range(1780)]
    assert Counter(e.source for e in mix([(a, items_a), (b, items_b)], train_size=None, seed=0)) == {
        "a": 20, "b": 1780}
    # train_size without weights: each source in proportion to its size, not cut to the smallest
    out = mix([(a, items_a), (b, items_b)], train_size=900, seed=0)
    assert Counter(e.source for e in out) == {"a": 10, "b": 890}
    with pytest.raises(ConfigError, match="train_size 3600 asks for"):
        mix([(a, items_a), (b, items_b)], train_size=3600, seed=0)


def test_a_weight_on_some_sources_only_is_refused_at_plan(write_exp):
    from hpcgen.config import load_experiment
    from hpcgen.stages import default_pipeline

    path = write_exp("""
name: mixture
output_dir: out
data:
  sources:
    - {format: niv2, path: %s}
    - {format: rewriting, instructions: 20, examples_per_instruction: 5, weight: 2}
""" % (ROOT / "examples" / "data" / "niv2-sample"))
    with pytest.raises(ConfigError, match=r"sources\[1\] has a weight but sources\[0\] has none") as info:
        load_experiment(path, default_pipeline(), check_output=False)
    assert "\n" not in str(info.value)
