"""Local and debug executors on the test pipeline: order, parallelism, skip, force, failure, locks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from hpcgen.config import load_experiment
from hpcgen.pipeline.graph import build_graph
from tests.conftest import CHAIN, ROOT

SMALL = """
name: small
output_dir: out
embed: {tasks: 2, sleep: 1.0}
eval: {tasks: 2}
matrix:
  arrange.strategy: [random, tma]
"""


def upstream_map(path, pipeline):
    exp = load_experiment(path, pipeline)
    graph = build_graph(exp, pipeline)
    ups = {}
    for node in graph.nodes.values():
        for i in range(node.size):
            ups[f"{node.id}/{i:05d}"] = [f"{u}/{j:05d}" for u in node.upstream for j in range(graph.nodes[u].size)]
    return graph, ups


def final_total(exp_dir_root):
    outs = list((exp_dir_root / "out" / "store" / "aggregate").glob("*/out-00000.json"))
    assert len(outs) == 1
    return json.loads(outs[0].read_text())["total"]


def expected_total() -> int:
    # each task adds 1 plus everything upstream; computed by hand for SMALL:
    prepare = 1
    embed = 1 + prepare  # each of 2 shards
    similarity = 1 + 2 * embed
    arrange_random = 1 + prepare
    arrange_tma = 1 + prepare + similarity
    train = {s: 1 + a for s, a in (("random", arrange_random), ("tma", arrange_tma))}
    evaluate = {s: 1 + t for s, t in train.items()}  # each of 2 checkpoints
    return 1 + sum(2 * e for e in evaluate.values())


def test_local_executor_runs_the_graph_in_order_and_in_parallel(cli, write_exp, events, pipeline, tmp_path):
    path = write_exp(SMALL.replace("sleep: 1.0", "rendezvous: 2"))  # the shards wait for each other
    code, out, err = cli("submit", path, "--executor", "local")
    assert code == 0, out + err
    graph, ups = upstream_map(path, pipeline)
    starts = {e["task"]: e["t"] for e in events("start")}
    ends = {e["task"]: e["t"] for e in events("end")}
    assert set(starts) == set(ups), "every task ran"
    assert Counter(e["task"] for e in events("start")).most_common(1)[0][1] == 1, "each task ran once"
    for task, deps in ups.items():
        for dep in deps:
            assert ends[dep] <= starts[task], f"{task} started before {dep} ended"
    shards = sorted(t for t in starts if t.startswith("embed/"))
    assert len(shards) == 2
    assert starts[shards[1]] < ends[shards[0]] and starts[shards[0]] < ends[shards[1]], "shards overlap"
    assert final_total(tmp_path) == expected_total()
    # logs of a task are reachable by stage name
    code, out, _ = cli("logs", "prepare", "-f", path)
    assert code == 0 and "prepare/" in out and "done in" in out


def test_a_local_task_of_several_processes_gets_a_port_that_was_free(cli, write_exp, events, monkeypatch):
    # submitit's own choice is random in 20000-60000 (seeded by the job id), where this machine's
    # outgoing connections take their ports too: a port in use made rank 0 fail and rank 1 wait
    import hpcgen.pipeline.executors.local as local

    port = local.free_port()
    monkeypatch.setattr(local, "free_port", lambda: port)
    path = write_exp("name: ranks\noutput_dir: out\ntrain: {resources: {tasks_per_node: 2, cpus: 1}}\n")
    code, out, err = cli("submit", path, "--executor", "local", "--until", "train")
    assert code == 0, out + err
    train = [e for e in events("start") if e["stage"] == "train"]
    assert sorted(e["rank"] for e in train) == [0, 1]
    assert {e["master_port"] for e in train} == {str(port)}


def test_resubmit_skips_complete_and_force_recomputes_downstream(cli, write_exp, events, tmp_path):
    path = write_exp(SMALL.replace("sleep: 1.0", "sleep: 0"))
    assert cli("submit", path, "--executor", "debug")[0] == 0
    first = len(events("start"))
    code, out, _ = cli("submit", path, "--executor", "debug")
    assert code == 0 and "0 to run" in out.replace("\n", " ")
    assert len(events("start")) == first
    code, out, _ = cli("submit", path, "--executor", "debug", "--force", "train", "--dry-run")
    assert code == 0 and "6 complete, 0 already queued, 7 would run" in out.replace("\n", " ")
    assert len(events("start")) == first  # counted, nothing run or reset
    assert all(p.is_file() for p in (tmp_path / "out" / "store" / "train").glob("*/completions/*.json"))
    code, out, _ = cli("submit", path, "--executor", "debug", "--force", "train")
    assert code == 0
    rerun = events("start")[first:]
    assert Counter(e["stage"] for e in rerun) == {"train": 2, "evaluate": 4, "aggregate": 1}
    # a forced task starts from nothing: its old work directory (resumable state) is gone
    assert {e["earlier_attempts"] for e in rerun} == {0}
    assert not list((tmp_path / "out" / "store" / "train").glob("*/.tmp.*"))
    assert final_total(tmp_path) == expected_total()


def test_a_failed_task_resumes_from_its_work_directory_unless_forced(cli, write_exp, events, monkeypatch):
    path = write_exp("name: resume\noutput_dir: out\n")
    monkeypatch.setenv("HPCGEN_TEST_FAIL_STAGE", "train")
    assert cli("submit", path, "--executor", "local")[0] == 1
    monkeypatch.delenv("HPCGEN_TEST_FAIL_STAGE")
    assert cli("submit", path, "--executor", "local")[0] == 0
    train = [e["earlier_attempts"] for e in events("start") if e["stage"] == "train"]
    assert train == [0, 1]  # the second attempt found the first one's state
    assert cli("submit", path, "--executor", "local", "--force", "train")[0] == 0
    train = [e["earlier_attempts"] for e in events("start") if e["stage"] == "train"]
    assert train == [0, 1, 0]


def test_force_leaves_a_running_task_alone(cli, write_exp, tmp_path):
    from hpcgen.pipeline.store import Store, file_lock

    path = write_exp("name: busy\noutput_dir: out\n")
    assert cli("submit", path, "--executor", "debug")[0] == 0
    store = Store(tmp_path / "out" / "store")
    [train_dir] = list((store.root / "train").iterdir())
    work = store.work_dir("train", train_dir.name, 0)
    assert work.is_dir()
    with file_lock(store.lock("train", train_dir.name, 0)):  # as a running task holds it
        assert store.reset("train", train_dir.name, 0) is False
        assert work.is_dir() and store.is_complete("train", train_dir.name, 0)
    assert store.reset("train", train_dir.name, 0) is True
    assert not work.exists() and not store.is_complete("train", train_dir.name, 0)


def test_dry_run_writes_nothing(cli, write_exp, events, tmp_path):
    path = write_exp(SMALL)
    code, out, _ = cli("submit", path, "--dry-run", "--executor", "local")
    assert code == 0 and "would run" in out
    assert not (tmp_path / "out").exists() and not events()


def test_failure_stops_dependents_only(cli, write_exp, events, tmp_path):
    path = write_exp("""
name: failing
output_dir: out
matrix:
  train.fail: [false, true]
""")
    code, out, err = cli("submit", path, "--executor", "local")
    assert code == 1
    assert "planned failure" in out + err
    stages = Counter(e["stage"] for e in events("end"))
    assert stages["train"] == 1 and stages["evaluate"] == 1 and "aggregate" not in stages
    code, out, _ = cli("status", path, "--json")
    status = json.loads(out)
    assert status["stages"]["train"] == {"done": 1, "failed": 1}
    assert status["stages"]["evaluate"] == {"done": 1, "missing": 1}
    assert status["stages"]["aggregate"] == {"missing": 1}
    failed = [t for t in status["tasks"] if t["state"] == "failed"]
    assert len(failed) == 1 and "planned failure" in failed[0]["detail"]
    # the failed task's log names the error
    train_key = failed[0]["id"].split("/")[1]
    code, out, _ = cli("logs", f"train/{train_key[:6]}", "-f", path)
    assert "RuntimeError: planned failure" in out


def test_concurrent_submits_do_the_work_once(write_exp, events, tmp_path):
    path = write_exp(SMALL.replace("sleep: 1.0", "sleep: 0.5"))
    env = {**os.environ, "HPCGEN_PIPELINE": CHAIN}
    cmd = [sys.executable, "-m", "hpcgen", "submit", str(path), "--executor", "local"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    counts = Counter(e["task"] for e in events("start"))
    assert counts and max(counts.values()) == 1, counts
    assert len(counts) == 13
    assert final_total(tmp_path) == expected_total()


def test_auto_refuses_when_sbatch_is_there_but_no_controller_answers(cli, write_exp, tmp_path, monkeypatch):
    """The real Slurm client commands, pointed at a controller address where nothing listens (as
    on a login node whose controller is down): ``auto`` must not quietly run the study locally."""
    if not shutil.which("sbatch"):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but the Slurm client is not installed (tests/setup.sh installs it)")
        pytest.skip("the Slurm client is not installed")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=6899\nAuthType=auth/munge\n"
                    "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=debug Nodes=localhost Default=YES\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    path = write_exp("name: login\noutput_dir: out\ncluster: {executor: auto}\n")
    for args in (("--dry-run",), ()):
        code, out, err = cli("submit", path, *args)
        assert code == 2, out + err
        [line] = err.strip().splitlines()
        assert "cluster.executor: executor auto: sbatch is on PATH but no Slurm controller answers" in line
        assert "pass --executor local to run on this machine" in line
    assert not (tmp_path / "out").exists()
    code, out, _ = cli("submit", path, "--dry-run", "--executor", "local")
    assert code == 0 and "(local executor)" in out


def test_auto_runs_locally_where_there_is_no_slurm(cli, write_exp, tmp_path, monkeypatch):
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    path = write_exp("name: laptop\noutput_dir: out\ncluster: {executor: auto}\n")
    code, out, _ = cli("submit", path, "--dry-run")
    assert code == 0 and "(local executor)" in out
