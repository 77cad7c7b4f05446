"""The command line on the bundled default experiment and on the test pipeline."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys

import pytest

from hpcgen.cli import main as cli_main
from tests.conftest import CHAIN, FIXTURES, ROOT


def test_plan_prints_runs_nodes_resources_and_totals(cli):
    code, out, _ = cli("plan", FIXTURES / "config_with_shared_stages.yaml")
    assert code == 0
    for text in ("6 run(s)", "19 stage node(s), 32 task(s)", "strategy=tma,seed=2", "GPU-h", "total: 32 task(s)"):
        assert text in out, text


def test_plan_json_is_the_graph(cli):
    code, out, _ = cli("plan", FIXTURES / "config_with_shared_stages.yaml", "--json")
    data = json.loads(out)
    assert data["totals"]["tasks"] == 32 and len(data["runs"]) == 6
    assert {n["stage"] for n in data["nodes"]} == {"prepare", "embed", "similarity", "arrange", "train",
                                                  "evaluate", "aggregate"}


def test_plan_writes_nothing(cli, tmp_path):
    (tmp_path / "exp.yaml").write_text("name: p\noutput_dir: out\n")
    assert cli("plan", tmp_path / "exp.yaml")[0] == 0
    assert cli("status", tmp_path / "exp.yaml")[0] == 0
    assert not (tmp_path / "out").exists()


def test_module_entry_point_and_version():
    env = {**os.environ, "HPCGEN_PIPELINE": CHAIN}
    res = subprocess.run([sys.executable, "-m", "hpcgen", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.startswith("hpcgen ")
    res = subprocess.run([sys.executable, "-m", "hpcgen", "plan", "tests/fixtures/bad_unknown_key.yaml"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: tests/fixtures/bad_unknown_key.yaml:6: train.warmpu: unknown key; "
                                  "did you mean 'warmup'?")


def test_logs_into_a_pipe_closed_early_exits_quietly(cli, write_exp, tmp_path):
    """``hpcgen logs TASK | head -1``: no BrokenPipeError traceback, the status ``git log | head`` leaves."""
    path = write_exp("name: piped\noutput_dir: out\n")
    assert cli("submit", path, "--executor", "local", "--until", "prepare")[0] == 0
    [log] = (tmp_path / "out" / "experiments" / "piped" / "logs" / "prepare").glob("*_log.out")
    with open(log, "a") as fh:  # far more than a pipe holds, so writes go on after the reader has gone
        fh.writelines(f"line {i} of a long log\n" for i in range(100_000))
    env = {**os.environ, "HPCGEN_PIPELINE": CHAIN}
    proc = subprocess.Popen([sys.executable, "-m", "hpcgen", "logs", "prepare", "-f", str(path)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert first.startswith(b"# task prepare/")
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert code == 141


def test_doctor_json_prints_only_json():
    """Libraries' own lines (DeepSpeed's accelerator warning) go to stderr and under "warnings"."""
    res = subprocess.run([sys.executable, "-m", "hpcgen", "doctor", "--json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    data = json.loads(res.stdout)
    assert data["hpcgen"] and "problems" in data and isinstance(data["warnings"], list)
    for line in data["warnings"]:
        assert line in res.stderr


@pytest.mark.parametrize("args", [("plan",), ("plan", "--json"), ("status",)])
def test_rich_and_plain_output_into_a_closed_pipe_exit_141(use_chain, write_exp, monkeypatch, args):
    """Rich's console would exit with status 1 on a closed stdout; every command leaves 141."""

    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    path = write_exp("name: closed\noutput_dir: out\n")
    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli_main([args[0], str(path), *args[1:]]) == 141
