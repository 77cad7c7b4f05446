"""``split_file``: fixed train/test task lists (the authors' Flan-mini split, FIDELITY.md row 7)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import ValidationError

from hpcgen.data.conversations import FlanMiniSource
from hpcgen.data.jsonl import JSONLSource
from hpcgen.data.sampling import assign_splits
from hpcgen.errors import ConfigError
from tests.conftest import FIXTURES

DATA = FIXTURES / "data"
FLAN = str(DATA / "flan_mini.json")
KEY = "data.sources[0]"
ALL_TASKS = {"cot_gsm8k", "flan2021_ag_news_subset", "flan2021_anli_r1", "niv2_task1146_country_capital",
             "t0_wiki_qa", "dialog_wow"}


def load(source, stats=None):
    return list(source.load(KEY, stats if stats is not None else Counter()))


def tasks_by_split(examples):
    out: dict[str, set[str]] = {}
    for e in examples:
        out.setdefault(e.split, set()).add(e.task)
    return out


def test_authors_json_keys_give_exactly_the_listed_tasks_and_count_the_rest():
    stats = Counter()
    source = FlanMiniSource(path=FLAN, split_file=str(DATA / "flan_split.json"))
    examples = load(source, stats)
    assert tasks_by_split(examples) == {
        "train": {"cot_gsm8k", "flan2021_anli_r1", "niv2_task1146_country_capital"},
        "test": {"t0_wiki_qa", "dialog_wow"}}
    assert Counter(e.split for e in examples) == {"train": 9, "test": 6}
    assert stats == {"flan_mini: records without a user/assistant exchange": 1,
                     "flan_mini: train tasks of split_file not in the data": 1,  # flan2021_not_in_fixture
                     "flan_mini: tasks in neither list of split_file (dropped)": 1,  # ag_news
                     "flan_mini: items of tasks in neither list of split_file (dropped)": 3}
    # the sampling step keeps the file's splits, whatever the seed
    for seed in (0, 1, 7):
        kept = assign_splits(examples, source, test_size=200, seed=seed, key=KEY)
        assert [(e.id, e.split) for e in kept] == [(e.id, e.split) for e in examples]
    assert source.estimate_records(20, 5) == 20 * 4 + 5 * 2


def test_text_file_lists_test_tasks_and_every_other_task_trains():
    examples = load(FlanMiniSource(path=FLAN, split_file=str(DATA / "flan_test_tasks.txt")))
    splits = tasks_by_split(examples)
    assert splits["test"] == {"t0_wiki_qa", "flan2021_ag_news_subset"}
    assert splits["train"] == ALL_TASKS - splits["test"]


@pytest.mark.parametrize("content", [
    {"train": ["cot_gsm8k", "dialog_wow"], "test": ["t0_wiki_qa"]},
    {"train_tasks": ["cot_gsm8k", "dialog_wow"], "eval": ["t0_wiki_qa"]},
    {"train_keys": ["cot_gsm8k", "dialog_wow"], "eval_keys": ["t0_wiki_qa"]},
    {"train_key_list": [" cot_gsm8k ", "dialog_wow", "dialog_wow"], "test_tasks": ["t0_wiki_qa"]},
])
def test_json_key_aliases(tmp_path, content):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(content))
    assert tasks_by_split(load(FlanMiniSource(path=FLAN, split_file=str(path)))) == {
        "train": {"cot_gsm8k", "dialog_wow"}, "test": {"t0_wiki_qa"}}


def test_json_list_and_directory_forms(tmp_path):
    listed = tmp_path / "tests.json"
    listed.write_text('["dialog_wow"]')
    splits = tasks_by_split(load(FlanMiniSource(path=FLAN, split_file=str(listed))))
    assert splits == {"test": {"dialog_wow"}, "train": ALL_TASKS - {"dialog_wow"}}
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "test_tasks.txt").write_text("dialog_wow\n")
    (folder / "train_tasks.txt").write_text("cot_gsm8k\nt0_wiki_qa\n")
    assert tasks_by_split(load(FlanMiniSource(path=FLAN, split_file=str(folder)))) == {
        "train": {"cot_gsm8k", "t0_wiki_qa"}, "test": {"dialog_wow"}}
    (folder / "train_tasks.txt").unlink()  # train list optional
    assert tasks_by_split(load(FlanMiniSource(path=FLAN, split_file=str(folder))))["train"] == ALL_TASKS - {
        "dialog_wow"}


def test_jsonl_task_field_with_split_file(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("fam1\n")
    examples = load(JSONLSource(path=str(DATA / "generic.jsonl"), id_field="uid", prompt_field="question",
                                answer_field="response", task_field="family", split_file=str(path)))
    assert {e.task for e in examples if e.split == "test"} == {"fam1"}
    assert "fam1" not in {e.task for e in examples if e.split == "train"} and len(examples) == 12


@pytest.mark.parametrize("content, message", [
    ('{"train": ["a"], "test": [}', "is not valid JSON: Expecting value at line 1 column 27"),
    ('{"train": ["cot_gsm8k"], "tests": ["t0_wiki_qa"]}', "has the unknown key 'tests'"),
    ('{"train": ["cot_gsm8k"]}', "has no test list"),
    ('{"test": ["a"], "eval": ["b"]}', "has both 'test' and 'eval'"),
    ('{"train": ["cot_gsm8k", "t0_wiki_qa"], "test": ["t0_wiki_qa"]}',
     "lists 't0_wiki_qa' as both a train and a test task"),
    ('{"train": "cot_gsm8k", "test": ["t0_wiki_qa"]}', "'train' must be a list of task names"),
    ('{"test": []}', "lists no test task"),
    ('"t0_wiki_qa"', "holds a str, not an object or a list"),
    ('\n\n', "is not valid JSON: Expecting value at line 3 column 1"),
])
def test_bad_split_file_is_one_line_naming_file_and_key(tmp_path, content, message):
    path = tmp_path / "my_split.json"
    path.write_text(content)
    source = FlanMiniSource(path=FLAN, split_file=str(path))
    for call in (lambda: source.check(KEY), lambda: load(source)):
        with pytest.raises(ConfigError, match=message) as err:
            call()
        text = str(err.value)
        assert "\n" not in text and str(path) in text and err.value.key == "data.sources[0].split_file"
        assert err.value.fix


def test_missing_and_binary_split_files(tmp_path):
    with pytest.raises(ConfigError, match=r"split file '.*nowhere.txt' not found") as err:
        FlanMiniSource(path=FLAN, split_file=str(tmp_path / "nowhere.txt")).check(KEY)
    assert err.value.key == "data.sources[0].split_file" and "relative to the experiment file" in err.value.fix
    binary = tmp_path / "split.txt"
    binary.write_bytes(b"\xff\xfe\x00task")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        FlanMiniSource(path=FLAN, split_file=str(binary)).check(KEY)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match="lists no test task"):
        FlanMiniSource(path=FLAN, split_file=str(empty)).check(KEY)
    folder = tmp_path / "empty_dir"
    folder.mkdir()
    with pytest.raises(ConfigError, match="has no test_tasks.txt"):
        FlanMiniSource(path=FLAN, split_file=str(folder)).check(KEY)


def test_names_the_data_lacks(tmp_path):
    path = tmp_path / "split.json"
    path.write_text('{"train": ["nope_1", "nope_2"], "test": ["nope_3"]}')
    with pytest.raises(ConfigError, match=r"none of the 1 test tasks listed in '.*split.json' occurs in the data") \
            as err:
        load(FlanMiniSource(path=FLAN, split_file=str(path)))
    assert err.value.key == "data.sources[0].split_file" and "\n" not in str(err.value)
    path.write_text('{"train": ["nope_1", "nope_2"], "test": ["t0_wiki_qa"]}')  # no train task present
    with pytest.raises(ConfigError, match="none of the 2 train tasks"):
        load(FlanMiniSource(path=FLAN, split_file=str(path)))
    path.write_text('{"train": ["cot_gsm8k", "nope_2"], "test": ["t0_wiki_qa", "nope_3", "nope_4"]}')
    stats = Counter()
    examples = load(FlanMiniSource(path=FLAN, split_file=str(path)), stats)
    assert tasks_by_split(examples) == {"train": {"cot_gsm8k"}, "test": {"t0_wiki_qa"}}
    assert stats["flan_mini: test tasks of split_file not in the data"] == 2
    assert stats["flan_mini: train tasks of split_file not in the data"] == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"test_tasks": 2}, "test_tasks sizes the seeded random split"),
    ({"train_tasks": None}, "train_tasks sizes the seeded random split"),
])
def test_split_file_excludes_the_random_split_sizes(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        FlanMiniSource(path=FLAN, split_file="x.json", **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"task_field": "family", "split_field": "part"}, "split_file and split_field both decide"),
    ({}, "set task_field"),
])
def test_jsonl_split_file_needs_tasks_and_no_split_field(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        JSONLSource(path="x.jsonl", split_file="s.txt", **kwargs)


def test_without_split_file_the_seeded_random_split_is_unchanged():
    source = FlanMiniSource(path=FLAN, test_tasks=2, train_tasks=3)
    examples = load(source)
    assert {e.split for e in examples} == {None}
    out = assign_splits(examples, source, test_size=200, seed=0, key=KEY)
    splits = tasks_by_split(out)
    assert len(splits["test"]) == 2 and len(splits["train"]) == 3
    assert source.fingerprint() == FlanMiniSource(path=FLAN).fingerprint()


def test_split_file_is_part_of_the_fingerprint(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("t0_wiki_qa\n")
    source = FlanMiniSource(path=FLAN, split_file=str(path))
    before = source.fingerprint()
    assert len(before) == len(FlanMiniSource(path=FLAN).fingerprint()) + 1
    path.write_text("t0_wiki_qa\ndialog_wow\n")
    assert source.fingerprint() != before
