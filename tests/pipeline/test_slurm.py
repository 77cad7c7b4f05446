"""Submissions to the real test Slurm cluster (tests/cluster/slurm-up.sh), through submitit."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter

import pytest

from hpcgen.config import load_experiment
from hpcgen.pipeline.graph import build_graph
from hpcgen.pipeline.status import task_states
from hpcgen.pipeline.store import Store, read_json
from tests.conftest import wait_for
from tests.pipeline.chain import chain
from tests.pipeline.test_executors import upstream_map

pytestmark = pytest.mark.slurm

FINAL = {"done", "failed", "cancelled"}


def states(path):
    p = chain()
    exp = load_experiment(path, p)
    graph = build_graph(exp, p)
    return {s.id: s for s in task_states(graph, Store(exp.store))}


def wait_final(path, timeout=240):
    def settled():
        now = states(path)
        return now if all(s.state in FINAL or s.state == "missing" and not s.job_id for s in now.values()) \
            and any(s.state in FINAL for s in now.values()) else None
    return wait_for(settled, timeout=timeout, interval=1.0, what="the jobs to finish")


def submissions(path, stage):
    p = chain()
    exp = load_experiment(path, p)
    store = Store(exp.store)
    out = []
    for d in sorted((store.root / stage).glob("*/submissions/*.json")):
        out.append(read_json(d)["job_id"])
    return out


def test_graph_runs_on_slurm_as_arrays_with_throttle_and_afterok(slurm_cluster, cli, write_exp, events, tmp_path):
    path = write_exp("""
name: slurmchain
output_dir: out
cluster: {executor: slurm}
embed:
  tasks: 3
  sleep: 2
  resources: {array_parallelism: 1}
eval: {tasks: 2}
matrix:
  arrange.strategy: [random, tma]
""")
    code, out, err = cli("submit", path)
    assert code == 0, out + err
    assert "queued embed: 3 task(s)" in out
    # one array per stage: the three shards share one array job, throttled to one at a time
    embed_ids = submissions(path, "embed")
    assert len({j.split("_")[0] for j in embed_ids}) == 1 and len(embed_ids) == 3
    array = embed_ids[0].split("_")[0]
    shown = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True).stdout
    assert "ArrayTaskThrottle=1" in shown
    # submit returned at once: nothing has finished yet, dependents wait on afterok
    first = states(path)
    assert all(s.state in ("pending", "running") for s in first.values()), first
    final = wait_final(path)
    assert {s.state for s in final.values()} == {"done"}, final
    # afterok held: every task started after all of its upstream tasks ended
    starts = {e["task"]: e["t"] for e in events("start")}
    ends = {e["task"]: e["t"] for e in events("end")}
    _, ups = upstream_map(path, chain())
    assert set(starts) == set(ups)
    for task, deps in ups.items():
        assert all(ends[d] <= starts[task] for d in deps), task
    # throttle: the shards never overlapped
    shards = sorted((starts[t], ends[t]) for t in starts if t.startswith("embed/"))
    assert all(a[1] <= b[0] for a, b in zip(shards, shards[1:])), shards
    # the status command agrees, with one batched query
    code, out, _ = cli("status", path, "--json")
    assert json.loads(out)["stages"]["aggregate"] == {"done": 1}
    # re-submit: everything complete, nothing queued
    code, out, _ = cli("submit", path)
    assert code == 0 and "14 complete" in out and "0 to run" in out
    assert len(submissions(path, "embed")) == 3
    assert Counter(e["task"] for e in events("start")).most_common(1)[0][1] == 1


def test_failed_upstream_cancels_dependents(slurm_cluster, cli, write_exp, events):
    path = write_exp("""
name: slurmfail
output_dir: out
cluster: {executor: slurm}
train: {fail: true}
""")
    assert cli("submit", path)[0] == 0
    final = wait_final(path)
    by_stage = {}
    for s in final.values():
        by_stage.setdefault(s.id.split("/")[0], set()).add(s.state)
    assert by_stage["prepare"] == {"done"} and by_stage["arrange"] == {"done"}
    assert by_stage["train"] == {"failed"}
    # kill-on-invalid-dep: the dependents were cancelled by Slurm, not left pending
    assert by_stage["evaluate"] == {"cancelled"} and by_stage["aggregate"] == {"cancelled"}
    assert not [e for e in events("start") if e["stage"] in ("evaluate", "aggregate")]
    code, out, _ = cli("status", path)
    assert "failed train/" in out and "cancelled evaluate/" in out


def test_cancel_and_resubmit_of_queued_work(slurm_cluster, cli, write_exp, events):
    path = write_exp("""
name: slurmcancel
output_dir: out
cluster: {executor: slurm}
data: {sleep: 120}
""")
    assert cli("submit", path)[0] == 0
    wait_for(lambda: events("start"), timeout=120, what="prepare to start")
    # a second submit while the first's jobs are queued or running submits nothing new
    code, out, _ = cli("submit", path)
    assert code == 0 and "5 already queued, 0 to run" in out
    code, out, _ = cli("cancel", path)
    assert code == 0 and "cancelled 5 task(s)" in out
    final = wait_final(path)
    assert {s.state for s in final.values()} == {"cancelled"}
    assert not events("end")


def test_arrays_larger_than_the_limit_are_split(slurm_cluster, cli, write_exp, events):
    path = write_exp("""
name: slurmsplit
output_dir: out
cluster: {executor: slurm, max_array_size: 2}
data: {tasks: 5}
train: {}
""".replace("train: {}\n", ""))
    code, out, _ = cli("submit", path)
    assert code == 0
    ids = submissions(path, "prepare")
    assert len(ids) == 5 and len({j.split("_")[0] for j in ids}) == 3  # 2 + 2 + 1
    final = wait_final(path)
    assert {s.state for s in final.values()} == {"done"}
    assert len(events("end")) == 5 + 1 + 1 + 1 + 1


def test_every_job_runs_inside_the_container_multi_node_included(slurm_cluster, cli, write_exp, events, apptainer):
    """The container path end to end on the real cluster, with the stand-in apptainer (the real
    binary cannot run on these machines): sbatch -> srun -> `apptainer exec ... IMAGE python3` ->
    submitit -> hpcgen, one container per rank on both emulated nodes."""
    path = write_exp("""
name: slurmbox
output_dir: out
cluster:
  executor: slurm
  container:
    image: images/hpcgen.sif
    bind: [/tmp]
    env: {HPCGEN_TEST_IN_IMAGE: "yes"}
train:
  resources: {nodes: 2, tasks_per_node: 1, partition: multi}
eval: {tasks: 2}
""")
    code, out, err = cli("submit", path)
    assert code == 0, out + err
    final = wait_final(path)
    assert {s.state for s in final.values()} == {"done"}, final
    # Rank 0 writes the marker when its own part is done; rank 1 of the same job may still be
    # starting (its container, its imports) at that moment: wait for what is checked, both ranks.
    wait_for(lambda: len([e for e in events("start") if e["stage"] == "train"]) >= 2, timeout=120,
             what="both training ranks to report their start")
    started = events("start")
    assert {e["task"] for e in started} == set(final)
    assert all(e["container"] == str(apptainer.image) and e["in_image"] == "yes" for e in started)
    train = [e for e in started if e["stage"] == "train"]
    assert sorted((e["rank"], e["node"]) for e in train) == [(0, "n1"), (1, "n2")]
    calls = apptainer.calls()
    assert len(calls) == len(final) + 1  # the training task has two ranks, each in its own container
    train_job = submissions(path, "train")[0].split("_")[0]
    ranks = [c for c in calls if c["job"] == train_job]
    assert sorted((c["procid"], c["node"]) for c in ranks) == [("0", "n1"), ("1", "n2")]
    assert all(c["bind"] == ["/tmp"] and c["command"][0] == "python3" for c in calls)
    digest = hashlib.sha256(apptainer.image.read_bytes()).hexdigest()
    p = chain()
    exp = load_experiment(path, p)
    store = Store(exp.store)
    for task in final:
        stage, key, index = task.split("/")
        box = read_json(store.marker(stage, key, int(index)))["provenance"]["container"]
        assert (box["sha256"], box["running_in"], box["labels"]) == (digest, str(apptainer.image), apptainer.labels)


def test_a_failed_run_cancels_only_its_own_dependents(slurm_cluster, cli, write_exp, events):
    """Per-run dependencies: each run's evaluation waits for its own training (its array elements),
    so one failed run leaves the other run's evaluation to run; the experiment-wide aggregate,
    which needs every run, is cancelled."""
    path = write_exp("""
name: slurmruns
output_dir: out
cluster: {executor: slurm}
eval: {tasks: 2}
matrix:
  train.fail: [false, true]
""")
    code, out, _ = cli("submit", path)
    assert code == 0
    # both trainings wait on the one arrangement: one array; each evaluation on its own training
    assert out.count("queued train:") == 1 and out.count("queued evaluate:") == 2
    final = wait_final(path)
    train = {t: s.state for t, s in final.items() if t.startswith("train/")}
    evaluate = {t: s.state for t, s in final.items() if t.startswith("evaluate/")}
    assert sorted(train.values()) == ["done", "failed"]
    assert sorted(evaluate.values()) == ["cancelled", "cancelled", "done", "done"]
    assert {s.state for t, s in final.items() if t.startswith("aggregate/")} == {"cancelled"}
    assert len([e for e in events("end") if e["stage"] == "evaluate"]) == 2
