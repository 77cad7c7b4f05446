"""The Slurm executor's side of the executor contract, against stand-in Slurm commands.

No cluster: ``squeue``, ``sacct``, ``scancel``, ``sbatch`` and ``srun`` are small scripts first on
PATH that log each call and print what the test put there. What is pinned: the ONE state table
(every state of squeue(1) and sacct(1), unknown ones included), that ``in_flight``, ``status`` and
``cancel`` agree on it, the number of scheduler calls (one ``squeue``; one ``sacct`` only when
needed; one ``scancel``), and that ``plan --sbatch`` renders byte for byte the script that
submitit hands to ``sbatch``. tests/pipeline/test_slurm.py checks the same on a real cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import pytest
import submitit

from hpcgen.config import load_experiment
from hpcgen.config.schema import Resources
from hpcgen.pipeline.executors.base import ACTIVE, CANCELLED, DONE, FAILED, PENDING, RUNNING, Submission
from hpcgen.pipeline.executors.slurm import (
    SLURM_STATES,
    SlurmExecutor,
    expand_job_id,
    render_script,
    sbatch_parameters,
    slurm_state,
)
from hpcgen.pipeline.graph import build_graph
from hpcgen.pipeline.status import task_states
from hpcgen.pipeline.store import Store, now, write_json
from tests.pipeline.chain import chain

#: every job state of Slurm 22.05's squeue(1) and sacct(1) man pages ("JOB STATE CODES")
MAN_PAGE_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING", "RESV_DEL_HOLD", "REQUEUE_FED", "REQUEUE_HOLD",
    "REQUEUED", "RESIZING", "REVOKED", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED",
    "TIMEOUT",
}

TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_SLURM/calls.log"
name=$(basename "$0")
if [ "$name" = sbatch ]; then cp "$1" "$FAKE_SLURM/submitted.sbatch"; fi
[ -f "$FAKE_SLURM/$name.out" ] && cat "$FAKE_SLURM/$name.out"
exit $(cat "$FAKE_SLURM/$name.rc" 2>/dev/null || echo 0)
"""


class FakeSlurm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.history: list[list[str]] = []  # every call so far, as words

    def say(self, tool: str, text: str, rc: int = 0) -> None:
        (self.root / f"{tool}.out").write_text(text)
        (self.root / f"{tool}.rc").write_text(str(rc))

    def calls(self) -> list[str]:
        """The tools called since the last look."""
        log = self.root / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        log.write_text("")
        self.history += [line.split() for line in lines]
        return [line.split()[0] for line in lines]

    def last(self, tool: str) -> list[str]:
        """The arguments of the last call of ``tool``."""
        self.calls()
        return [words for words in self.history if words[0] == tool][-1][1:]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    root = tmp_path / "fake-slurm"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("squeue", "sacct", "scancel", "sbatch", "srun", "scontrol"):
        (bin_dir / tool).write_text(TOOL)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM", str(root))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return FakeSlurm(root)


# --- the state table ---------------------------------------------------------------------


def test_every_state_of_the_man_pages_is_in_the_one_table():
    assert MAN_PAGE_STATES <= set(SLURM_STATES), sorted(MAN_PAGE_STATES - set(SLURM_STATES))
    assert set(SLURM_STATES.values()) <= {PENDING, RUNNING, DONE, FAILED, CANCELLED}
    for raw in ("PREEMPTED", "REQUEUED", "PREEMPTED_REQUEUE", "REQUEUE_HOLD", "PENDING"):
        assert slurm_state(raw, live=True) == PENDING
    assert slurm_state("CANCELLED by 1000", live=False) == CANCELLED
    assert slurm_state("COMPLETED", live=False) == DONE
    assert slurm_state("TIMEOUT", live=False) == slurm_state("OUT_OF_MEMORY", live=True) == FAILED


def test_an_unknown_state_has_a_documented_default_never_a_key_error():
    for raw in ("SOME_FUTURE_STATE", "UNKNOWN", "", "   "):
        assert slurm_state(raw, live=True) == RUNNING  # the controller still holds it: in flight
        assert slurm_state(raw, live=False) == FAILED  # it left the queue without completing


def test_expand_job_id_uses_submitits_parser():
    assert expand_job_id("12_[1-3,7%2]") == ["12_1", "12_2", "12_3", "12_7"]
    assert expand_job_id("12_[0-999%256]")[-1] == "12_999"
    assert expand_job_id("12_[4]") == ["12_4"]
    assert expand_job_id("12_5") == ["12_5"]
    assert expand_job_id("12") == ["12"]
    assert expand_job_id("12_weird") == ["12_weird"]


# --- in_flight, states, cancel: one table, few calls -------------------------------------------


def _executor(write_exp):
    path = write_exp("name: fake\noutput_dir: out\n")
    exp = load_experiment(path, chain())
    return path, exp, SlurmExecutor(exp, Store(exp.store))


def _records(ids: list[str]) -> dict[str, Submission]:
    return {f"task/{i:05d}": Submission("slurm", jid, submitted=now()) for i, jid in enumerate(ids)}


def test_in_flight_and_states_agree_on_every_state(fake_slurm, write_exp):
    _, _, executor = _executor(write_exp)
    raws = sorted(SLURM_STATES) + ["SOME_FUTURE_STATE"]
    records = _records([f"7_{i}" for i in range(len(raws))])
    fake_slurm.say("squeue", "".join(f"7_{i}|{raw}\n" for i, raw in enumerate(raws)))
    flying = executor.in_flight(records)
    assert fake_slurm.calls() == ["squeue"]
    states = executor.states(records)
    assert fake_slurm.calls() == ["squeue"], "every job is still listed: no sacct"
    for task, raw in zip(records, raws):
        assert (task in flying) == (states[task].state in ACTIVE), raw
        assert states[task].detail == raw
    for raw in ("PREEMPTED_REQUEUE", "SPECIAL_EXIT", "SOME_FUTURE_STATE"):  # ACTIVE_STATES lacked these
        assert f"task/{raws.index(raw):05d}" in flying, raw


def test_sacct_only_for_tasks_that_left_the_queue_unexplained(fake_slurm, write_exp):
    _, _, executor = _executor(write_exp)
    records = _records(["9_0", "9_1", "9_2", "9_3"])
    attempts = {"task/00001": {"state": "failed", "error": "ValueError: bad"}}
    fake_slurm.say("squeue", "9_0|RUNNING\n")
    # the task that failed says so itself: sacct is not needed for it, nor at all here
    states = executor.states({t: records[t] for t in ("task/00000", "task/00001")}, attempts)
    assert fake_slurm.calls() == ["squeue"]
    assert (states["task/00001"].state, states["task/00001"].detail) == (FAILED, "ValueError: bad")
    # tasks gone from the queue with no word of their own: ONE sacct call for all of them
    stamp = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    fake_slurm.say("sacct", f"9_2|CANCELLED by 0|{stamp}\n9_[3-4]|TIMEOUT|{stamp}\n")
    states = executor.states(records, attempts)
    assert fake_slurm.calls() == ["squeue", "sacct"]
    assert {t: (s.state, s.detail) for t, s in states.items()} == {
        "task/00000": (RUNNING, "RUNNING"), "task/00001": (FAILED, "ValueError: bad"),
        "task/00002": (CANCELLED, "CANCELLED"), "task/00003": (FAILED, "TIMEOUT")}
    assert fake_slurm.last("squeue")[-1] == "9" and fake_slurm.last("sacct")[-1] == "9"


def test_cancel_is_one_squeue_and_one_scancel(fake_slurm, write_exp):
    _, _, executor = _executor(write_exp)
    records = _records(["5_0", "5_1", "6_0"])
    fake_slurm.say("squeue", "5_0|PENDING\n5_1|COMPLETED\n6_0|PREEMPTED_REQUEUE\n")
    assert executor.cancel(records) == (2, "scancel")
    assert fake_slurm.calls() == ["squeue", "scancel"]
    assert fake_slurm.last("scancel") == ["5_0", "6_0"]
    fake_slurm.say("squeue", "", rc=1)  # none of the ids is known any more
    assert executor.cancel(records) == (0, "")
    assert fake_slurm.calls() == ["squeue"]


def test_status_and_cancel_commands_ask_slurm_once(fake_slurm, write_exp, cli):
    path, exp, _ = _executor(write_exp)
    graph = build_graph(exp, chain())
    store = Store(exp.store)
    tasks = [(n, i) for n in graph.nodes.values() for i in range(n.size)]
    for k, (node, i) in enumerate(tasks):
        write_json(store.submission(node.stage.name, node.key, i),
                   asdict(Submission("slurm", f"40_{k}", experiment=exp.name, submitted=now())))
    fake_slurm.say("squeue", f"40_[0-{len(tasks) - 1}%256]|PENDING\n")
    code, out, _ = cli("status", path, "--json")
    assert code == 0 and fake_slurm.calls() == ["squeue"]
    assert {s for c in json.loads(out)["stages"].values() for s in c} == {"pending"}
    fake_slurm.say("squeue", "40_0|RUNNING\n")
    code, out, _ = cli("status", path)
    assert code == 0 and fake_slurm.calls() == ["squeue", "sacct"]
    node, i = tasks[1]
    assert f"failed {node.id}/{i:05d} 40_1 left the queue without finishing" in out
    code, out, _ = cli("cancel", path)
    assert code == 0 and out.strip() == "cancelled 1 task(s): scancel"
    assert fake_slurm.calls() == ["squeue", "scancel"]
    fake_slurm.say("scancel", "", rc=1)
    code, _, err = cli("cancel", path)
    assert code == 1 and err.startswith("error: scancel failed")
    # no Slurm record, no Slurm call
    for node, i in tasks:
        store.submission(node.stage.name, node.key, i).unlink()
    fake_slurm.calls()
    assert {s.state for s in task_states(graph, store)} == {"missing"}
    code, out, _ = cli("cancel", path)
    assert out.strip() == "cancelled 0 task(s): nothing to cancel" and fake_slurm.calls() == []


# --- what reaches sbatch --------------------------------------------------------------------


@pytest.mark.parametrize("python", [None, "apptainer exec --nv img.sif python3"])
@pytest.mark.parametrize("n_tasks", [1, 3])
def test_plan_renders_exactly_the_script_submitit_submits(fake_slurm, tmp_path, python, n_tasks):
    """render_script (``plan --sbatch``) is the one private use of submitit: pinned against what
    submitit's public ``submit``/``submit_array`` hand to sbatch."""
    resources = Resources(cpus=2, gpus=1, mem=4096, time=30, partition="gpu", array_parallelism=2,
                          sbatch={"constraint": "a100"})
    params = sbatch_parameters(resources, job_name="exp.train", dependency=["11", "12_3"], signal_delay_s=60)
    folder = tmp_path / "logs" / "train"
    fake_slurm.say("sbatch", "Submitted batch job 4242\n")
    ex = submitit.SlurmExecutor(folder=folder, python=python)
    ex.update_parameters(**params)
    if n_tasks == 1:
        ex.submit(print, "x")
    else:
        ex.submit_array([submitit.helpers.DelayedSubmission(print, i) for i in range(n_tasks)])
    submitted = (fake_slurm.root / "submitted.sbatch").read_text()
    assert render_script(params, folder, n_tasks, python) == submitted
    assert (f"{python or shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}") in submitted
