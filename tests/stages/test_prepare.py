"""prepare end to end through the CLI: records on disk, and every bad input as one line, exit 2."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from hpcgen.cli import main
from tests.conftest import ROOT

SAMPLE = ROOT / "examples" / "data" / "niv2-sample"


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def records_of(out_dir):
    [path] = list((out_dir / "store" / "prepare").glob("*/records.parquet"))
    return path, pq.read_table(path).to_pylist()


def test_default_experiment_prepares_records(tmp_path, capsys):
    out = tmp_path / "outputs"
    code, _, err = run(["submit", ROOT / "experiments.yaml", "--executor", "debug", "--set", f"output_dir={out}",
                        "--until", "prepare"], capsys)
    assert code == 0, err
    path, rows = records_of(out)
    assert pq.read_schema(path).names == ["id", "task", "split", "prompt", "answer", "text", "embed_text",
                                          "source", "generalist"]
    assert sum(r["split"] == "train" for r in rows) == 1800 and sum(r["split"] == "test" for r in rows) == 100
    assert [r["split"] for r in rows] == ["train"] * 1800 + ["test"] * 100
    assert len({r["id"] for r in rows}) == 1900
    r = rows[0]
    assert r["text"] == f"<s>User: {r['prompt']} Assistant: {r['answer']}</s>"
    assert r["embed_text"] == f"{r['prompt']} {r['answer']}"
    assert sum(r["generalist"] for r in rows) == 100 and not any(r["generalist"] for r in rows[:1800])
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["tasks"] == {"train": 90, "test": 20} and summary["contaminated_test_items"] == 0
    assert json.loads((path.parent / "contamination.json").read_text())["matches"] == []


def test_rewriting_study_records(tmp_path, capsys):
    exp = tmp_path / "rw.yaml"
    exp.write_text("""
name: rw
output_dir: out
data:
  sources:
    - {format: rewriting, instructions: 50, examples_per_instruction: 4, test_instructions: 10,
       test_examples_per_instruction: 3}
  template: "{prompt}={answer}"
""")
    code, _, err = run(["submit", exp, "--executor", "debug", "--until", "prepare"], capsys)
    assert code == 0, err
    _, rows = records_of(tmp_path / "out")
    assert len(rows) == 230 and len({r["task"] for r in rows}) == 60
    x, y = rows[0]["task"].split(">")
    assert rows[0]["prompt"].startswith(f"{x}>{y}|") and rows[0]["text"] == f"{rows[0]['prompt']}={rows[0]['answer']}"


def test_changed_input_files_change_the_key(tmp_path, capsys):
    data = tmp_path / "niv2"
    shutil.copytree(SAMPLE, data)
    exp = tmp_path / "e.yaml"
    exp.write_text("name: fp\noutput_dir: out\ndata:\n  sources: [{format: niv2, path: niv2}]\n")
    key = lambda: json.loads(run(["plan", exp, "--json"], capsys)[1])["nodes"][0]["key"]  # noqa: E731
    before = key()
    task = data / "tasks" / "task1146_country_capital.json"
    task.write_text(task.read_text().replace("Paris", "Lyon"))
    assert key() != before


def bad(tmp_path, sources: str, extra: str = "") -> object:
    exp = tmp_path / "bad.yaml"
    exp.write_text(f"name: bad\noutput_dir: out\ndata:\n  sources:\n{sources}{extra}")
    return exp


def make_niv2(tmp_path, task_json: str | None = None, split: bool = True):
    root = tmp_path / "niv2"
    shutil.copytree(SAMPLE, root)
    if task_json is not None:
        (root / "tasks" / "task1146_country_capital.json").write_text(task_json)
    if not split:
        (root / "splits" / "default" / "test_tasks.txt").unlink()
    return root


# Config errors are caught before any executor runs; errors in the data files are found by the
# prepare task, so those run under both the in-process and the subprocess executor.
BEFORE_RUN = ["missing_dir", "missing_split", "n_not_positive", "unknown_format", "k_not_positive"]
IN_TASK = ["bad_json", "missing_field", "empty_test"]


@pytest.mark.parametrize("case, executor", [(c, "debug") for c in BEFORE_RUN + IN_TASK]
                         + [(c, "local") for c in IN_TASK])
def test_bad_data_input_is_one_line_exit_2_no_records(case, executor, tmp_path, capsys):
    expected, line = {
        "missing_dir": ("data.sources[0].path: '", 5),
        "missing_split": ("test_tasks.txt' not found", 5),
        "bad_json": ("task1146_country_capital.json' is not valid JSON: Expecting ',' delimiter at line 3", None),
        "missing_field": ("task1146_country_capital.json' record 2 has no field 'output'", None),
        "empty_test": ("the test split is empty after filtering", None),
        "n_not_positive": ("data.max_per_train_task: Input should be greater than or equal to 1", 6),
        "unknown_format": ("data.sources.0: Input tag 'alpaca' found using 'format' does not match", 5),
        "k_not_positive": ("data.test_size: Input should be greater than or equal to 1", 6),
    }[case]
    niv2 = "    - {format: niv2, path: niv2}\n"
    if case == "missing_dir":
        exp = bad(tmp_path, "    - {format: niv2, path: nowhere}\n")
    elif case == "missing_split":
        make_niv2(tmp_path, split=False)
        exp = bad(tmp_path, niv2)
    elif case == "bad_json":
        make_niv2(tmp_path, '{\n "Definition": ["x"]\n "Instances": []}')
        exp = bad(tmp_path, niv2)
    elif case == "missing_field":
        task = json.loads((SAMPLE / "tasks" / "task1146_country_capital.json").read_text())
        del task["Instances"][2]["output"]
        make_niv2(tmp_path, json.dumps(task))
        exp = bad(tmp_path, niv2)
    elif case == "empty_test":
        path = tmp_path / "only_train.jsonl"
        path.write_text('{"prompt": "q", "answer": "a", "split": "train"}\n')
        exp = bad(tmp_path, f"    - {{format: jsonl, path: {path}, split_field: split}}\n")
    elif case == "n_not_positive":
        exp = bad(tmp_path, niv2, "  max_per_train_task: 0\n")
    elif case == "unknown_format":
        exp = bad(tmp_path, "    - {format: alpaca, path: x.json}\n")
    else:
        exp = bad(tmp_path, niv2, "  test_size: -1\n")
    code, out, err = run(["submit", exp, "--executor", executor], capsys)
    assert code == 2, out + err
    message = err.strip()
    assert message.count("\n") == 0 and message.startswith("error: ") and expected in message, message
    if line is not None:
        assert f"bad.yaml:{line}: " in message
    assert not list((tmp_path / "out").glob("store/prepare/*/records.parquet"))


FLAN = ROOT / "tests" / "fixtures" / "data"


def test_flan_mini_split_file_relative_to_the_experiment_and_all_turns(tmp_path, capsys):
    shutil.copy(FLAN / "flan_mini.json", tmp_path / "flan_mini.json")
    (tmp_path / "lists").mkdir()
    shutil.copy(FLAN / "flan_split.json", tmp_path / "lists" / "train_eval_key_list.json")
    shutil.copy(FLAN / "multiturn.json", tmp_path / "chat.json")
    exp = tmp_path / "flan.yaml"
    exp.write_text("""
name: flan
output_dir: out
data:
  sources:
    - {format: flan_mini, path: flan_mini.json, split_file: lists/train_eval_key_list.json, turns: all}
    - {format: sharegpt, path: chat.json, turns: all, test_size: 1}
  max_per_train_task: 2
  generalist_size: 2
""")
    code, _, err = run(["submit", exp, "--executor", "debug", "--until", "prepare"], capsys)
    assert code == 0, err
    path, rows = records_of(tmp_path / "out")
    flan = [r for r in rows if r["source"] == "flan_mini"]
    assert {r["task"] for r in flan if r["split"] == "train"} == {"cot_gsm8k", "flan2021_anli_r1",
                                                                   "niv2_task1146_country_capital"}
    assert {r["task"] for r in flan if r["split"] == "test"} == {"t0_wiki_qa", "dialog_wow"}
    assert sum(r["split"] == "train" for r in flan) == 6  # 3 tasks capped at 2
    mt1 = next(r for r in rows if r["id"] == "sharegpt/MT1")
    assert mt1["answer"] == "(3*4)/6 = 12/6 = 2." and mt1["prompt"].endswith("\nUser: So what is (3*4)/6?")
    assert mt1["embed_text"] == f"{mt1['prompt']} {mt1['answer']}"
    assert mt1["text"] == f"<s>User: {mt1['prompt']} Assistant: {mt1['answer']}</s>"
    skipped = json.loads((path.parent / "summary.json").read_text())["skipped"]
    assert skipped["flan_mini: tasks in neither list of split_file (dropped)"] == 1
    assert skipped["flan_mini: train tasks of split_file not in the data"] == 1


@pytest.mark.parametrize("case", ["missing", "bad_json", "overlap", "none_in_data", "with_test_tasks"])
def test_bad_split_file_is_one_line_exit_2(case, tmp_path, capsys):
    shutil.copy(FLAN / "flan_mini.json", tmp_path / "flan_mini.json")
    split = tmp_path / "split.json"
    split.write_text({"bad_json": '{"train": ["cot_gsm8k"],, "test": []}',
                      "overlap": '{"train": ["dialog_wow"], "test": ["dialog_wow"]}',
                      "none_in_data": '{"train": ["cot_gsm8k"], "test": ["nope"]}'}.get(
        case, '{"train": ["cot_gsm8k"], "test": ["dialog_wow"]}'))
    name = "nowhere.json" if case == "missing" else "split.json"
    extra = ", test_tasks: 1" if case == "with_test_tasks" else ""
    exp = bad(tmp_path, f"    - {{format: flan_mini, path: flan_mini.json, split_file: {name}{extra}}}\n")
    code, out, err = run(["submit", exp, "--executor", "debug"], capsys)
    assert code == 2, out + err
    message = err.strip()
    assert message.count("\n") == 0 and message.startswith("error: "), message
    if case == "with_test_tasks":
        assert "bad.yaml:5: data.sources.0: test_tasks sizes the seeded random split" in message
    else:
        assert "data.sources[0].split_file: " in message and str(tmp_path / name) in message, message
        if case != "none_in_data":  # found at submit time, with the line
            assert "bad.yaml:5: " in message
    assert {"missing": "not found", "bad_json": "is not valid JSON", "overlap": "as both a train and a test task",
            "none_in_data": "none of the 1 test tasks", "with_test_tasks": "remove test_tasks"}[case] in message
    assert not list((tmp_path / "out").glob("store/prepare/*/records.parquet"))
