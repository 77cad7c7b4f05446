"""Stage and run names on the command line: both spellings of a stage (``eval`` / ``evaluate``)
everywhere, and ``STAGE@RUN`` by a run's name, label, id or a prefix."""

from __future__ import annotations

import re
import shlex

import pytest

from hpcgen.cli import build_parser
from hpcgen.pipeline.graph import build_graph
from hpcgen.pipeline.status import find_task
from hpcgen.pipeline.store import Store
from tests.pipeline.chain import Aggregate, chain

TWO = """
name: two
output_dir: out
matrix:
  zip:
    - label: [base, hot]
      train.lr: [0.001, 0.01]
"""

LABELS = """
name: labelled
output_dir: out
matrix:
  zip:
    - label: [RT, RT, NFT]
      arrange.strategy: [random, random, nft]
      train.seed: [0, 1, 0]
"""


def task_line(out: str) -> str:
    """The ``# task STAGE/KEY/INDEX: state`` header of ``hpcgen logs``."""
    return re.search(r"^# task (\S+):", out, re.M).group(1)


def test_force_takes_the_section_name_as_the_stage_name(cli, write_exp):
    path = write_exp("name: f\noutput_dir: out\n")
    assert cli("submit", path, "--executor", "debug")[0] == 0
    by_section = cli("submit", path, "--executor", "debug", "--dry-run", "--force", "eval")
    by_stage = cli("submit", path, "--executor", "debug", "--dry-run", "--force", "evaluate")
    assert by_section[0] == by_stage[0] == 0
    assert by_section[1] == by_stage[1]
    assert "2 would run" in by_section[1] and "forced: evaluate" in by_section[1]
    code, out, _ = cli("submit", path, "--executor", "debug", "--dry-run", "--force", "data", "--force", "prepare")
    assert code == 0 and "forced: prepare" in out and "5 would run" in out


def test_until_and_sbatch_take_either_spelling(cli, write_exp):
    path = write_exp("name: u\noutput_dir: out\n")
    code, out, _ = cli("submit", path, "--executor", "debug", "--dry-run", "--until", "data")
    assert code == 0 and "1 stage node," in out
    code, out, _ = cli("plan", path, "--sbatch", "eval")
    assert code == 0 and out.startswith("#!/bin/bash")
    assert "u.evaluate" in out and "logs/evaluate" in out  # named after the stage, as submit names it
    assert out == cli("plan", path, "--sbatch", "evaluate")[1]


@pytest.mark.parametrize("option", [("submit", "--executor", "debug", "--force"),
                                    ("submit", "--executor", "debug", "--until"),
                                    ("plan", "--sbatch")])
def test_an_unknown_stage_lists_both_spellings(cli, write_exp, option):
    path = write_exp("name: bad\noutput_dir: out\n")
    code, _, err = cli(option[0], path, *option[1:], "evals")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no stage 'evals'" in err and "evaluate (eval)" in err and "prepare (data)" in err


def test_logs_takes_the_section_name(cli, write_exp):
    path = write_exp("name: l\noutput_dir: out\n")
    code, out, _ = cli("logs", "eval", "-f", path)
    assert code == 0 and task_line(out).startswith("evaluate/")
    assert task_line(cli("logs", "evaluate", "-f", path)[1]) == task_line(out)
    code, out, _ = cli("logs", "data/0", "-f", path)
    assert code == 0 and task_line(out).startswith("prepare/")


def test_logs_of_a_stage_with_several_nodes_lists_the_runs_to_pick(cli, write_exp):
    path = write_exp(TWO)
    code, _, err = cli("logs", "train", "-f", path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "matches 2 nodes" in err and "train@lr=0.001" in err and "train@lr=0.01" in err
    # what it lists works as it stands
    for ref in re.findall(r"(train@\S+) \(", err):
        assert cli("logs", ref, "-f", path)[0] == 0


def test_a_run_by_label_name_prefix_or_id(cli, write_exp, pipeline):
    from hpcgen.config import load_experiment

    path = write_exp(TWO)
    exp = load_experiment(path, pipeline, check_output=False)
    graph = build_graph(exp, pipeline)
    hot = next(r for r in exp.runs if r.label == "hot")
    node = graph.nodes[graph.run_nodes[hot.id]["train"]]
    for ref in ("train@hot", "train@lr=0.01", f"train@{hot.id[:5]}", f"train@{hot.id}", "train@hot/0"):
        assert find_task(graph, ref, pipeline) == ("train", node.key, 0), ref
        assert task_line(cli("logs", ref, "-f", path)[1]) == f"train/{node.key}/00000"
    # eval@ is the evaluate task of that run
    assert find_task(graph, "eval@hot", pipeline)[0] == "evaluate"
    # a prefix that two runs share: one line that lists them
    code, _, err = cli("logs", "train@lr=0.0", "-f", path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "matches 2 runs" in err and "train@lr=0.001" in err and "train@lr=0.01" in err
    # ... unless both share the node: prepare is one node for every run
    assert cli("logs", "prepare@lr=0.0", "-f", path)[0] == 0
    code, _, err = cli("logs", "train@cold", "-f", path)
    assert code == 2 and "no run matches 'cold'" in err and "train@lr=0.001" in err


def test_a_label_that_several_runs_share_is_ambiguous(cli, write_exp):
    path = write_exp(LABELS)
    code, _, err = cli("logs", "train@RT", "-f", path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "matches 2 runs" in err
    assert cli("logs", "train@NFT", "-f", path)[0] == 0
    assert cli("logs", "arrange@RT", "-f", path)[0] == 0  # both RT runs share their arrange node


class ReportingAggregate(Aggregate):
    """The test pipeline's aggregate, writing a report as hpcgen's own does."""

    def run(self, task):
        super().run(task)
        (task.output_dir("report") / "report.html").write_text("<html>report</html>")


def reporting() -> object:
    stages = [s for s in chain() if s.name != "aggregate"]
    from hpcgen.pipeline.registry import Pipeline

    return Pipeline([*stages, ReportingAggregate()])


def test_submit_ends_with_where_the_report_is(cli, write_exp, tmp_path, monkeypatch):
    monkeypatch.setenv("HPCGEN_PIPELINE", "tests.pipeline.test_cli_names:reporting")
    path = write_exp("name: r\noutput_dir: out\n")
    code, out, _ = cli("submit", path, "--executor", "debug")
    assert code == 0
    [html] = (tmp_path / "out" / "store" / "aggregate").glob("*/report/report.html")
    assert out.strip().splitlines()[-1] == f"report: {html}"
    # a submit that finds it all done says it too; one that leaves out the aggregate does not
    assert cli("submit", path, "--executor", "debug")[1].strip().splitlines()[-1] == f"report: {html}"
    assert "report" not in cli("submit", path, "--executor", "debug", "--until", "train")[1]


def test_a_queued_report_is_announced_as_when_done(write_exp, pipeline, capsys):
    from rich.console import Console

    from hpcgen.config import load_experiment
    from hpcgen.pipeline.submit import _say_report, report_paths

    exp = load_experiment(write_exp("name: q\noutput_dir: out\n"), pipeline, check_output=False)
    graph = build_graph(exp, pipeline)
    store = Store(exp.store)
    [(node, path)] = report_paths(graph, store)
    assert path == store.node_dir("aggregate", node.key) / "report" / "report.html"
    console = Console(soft_wrap=True)
    _say_report(console, graph, store, {f"{node.id}/00000"})
    _say_report(console, graph, store, set())  # not queued, not done: nothing
    assert capsys.readouterr().out == f"report (when done): {path}\n"


def test_the_hint_of_a_failed_local_submit_is_a_logs_command_that_works(cli, write_exp):
    path = write_exp("name: m9\noutput_dir: out\nmatrix:\n  train.fail: [false, true]\n", name="m 9.yaml")
    code, out, err = cli("submit", path, "--executor", "local", "--set", "train.value=3")
    assert code == 1
    [hint] = [line.split("logs: ", 1)[1] for line in out.splitlines() if line.strip().startswith("logs: ")]
    failed = re.search(r"e\.g\. (train/\S+):", out).group(1)
    words = shlex.split(hint)
    assert words[0] == "hpcgen"
    args = build_parser().parse_args(words[1:])
    assert (args.command, args.task, args.file, args.set) == ("logs", failed, str(path), ["train.value=3"])
    code, out, _ = cli(*words[1:])
    assert code == 0 and task_line(out) == failed
    assert "RuntimeError: planned failure in train[0]" in out
