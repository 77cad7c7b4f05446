"""The executor contract itself: the registry, the one record format, local states and cancel,
and that nothing outside an executor knows a scheduler."""

from __future__ import annotations

import ast
import json
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from hpcgen.config import load_experiment
from hpcgen.errors import ConfigError
from hpcgen.pipeline import executors
from hpcgen.pipeline.executors.base import (
    PENDING,
    RUNNING,
    UNKNOWN,
    Executor,
    JobState,
    Submission,
    read_submission,
)
from hpcgen.pipeline.executors.local import LocalExecutor
from hpcgen.pipeline.graph import build_graph
from hpcgen.pipeline.store import Store, now, read_json, write_json
from tests.conftest import ROOT
from tests.pipeline.chain import chain

SRC = ROOT / "src" / "hpcgen"


def test_the_registry_finds_executors_by_name():
    assert executors.names()[:3] == ["slurm", "local", "debug"]
    assert executors.choices()[:4] == ["auto", "slurm", "local", "debug"]
    for name in ("slurm", "local", "debug"):
        cls = executors.executor_class(name)
        assert issubclass(cls, Executor) and cls.name == name
    with pytest.raises(ConfigError) as err:
        executors.executor_class("pbs")
    assert str(err.value) == "cluster.executor: unknown executor 'pbs'; use auto, slurm, local or debug"
    assert executors.executor_class("slurm").detached and not executors.executor_class("local").detached
    assert not executors.executor_class("debug").own_processes


def test_a_registered_executor_is_found_by_records_and_choices(write_exp, monkeypatch):
    class Pretend(Executor):
        name = "pretend"

        def submit(self, batches):
            return 0

        def states(self, records, attempts=None):
            return {t: JobState(RUNNING, "asked") for t in records}

    monkeypatch.setattr(executors, "_REGISTRY", dict(executors._REGISTRY))
    executors.register(Pretend)
    assert executors.executor_class("pretend") is Pretend and "pretend" in executors.choices()
    from hpcgen.pipeline.status import task_states

    exp = load_experiment(write_exp("name: pre\noutput_dir: out\n"), chain())
    graph, store = build_graph(exp, chain()), Store(exp.store)
    node = next(iter(graph.nodes.values()))
    write_json(store.submission(node.stage.name, node.key, 0), asdict(Submission("pretend", "p1", submitted=now())))
    states = {s.id: s for s in task_states(graph, store)}
    assert (states[f"{node.id}/00000"].state, states[f"{node.id}/00000"].detail) == ("running", "asked")


def test_auto_picks_local_without_sbatch(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert executors.resolve("auto") == "local"
    assert executors.resolve("debug") == "debug"


def test_one_record_format_written_by_the_executor_and_read_back(write_exp):
    exp = load_experiment(write_exp("name: rec\noutput_dir: out\n"), chain())
    store = Store(exp.store)
    graph = build_graph(exp, chain())
    from hpcgen.pipeline.submit import task_specs

    node = next(iter(graph.nodes.values()))
    spec = task_specs(graph, store, node)[0]
    rec = LocalExecutor(exp, store).record(spec, 1234, stdout=Path("/x/o"), stderr="/x/e")
    on_disk = read_json(store.submission(node.stage.name, node.key, 0))
    assert set(on_disk) == {f.name for f in fields(Submission)}
    assert on_disk == asdict(rec) and on_disk["job_id"] == "1234" and on_disk["host"] == socket.gethostname()
    assert read_submission(store, node.stage.name, node.key, 0) == rec
    # a record of an older hpcgen (no host, an extra field) still reads
    old = {"executor": "slurm", "job_id": "12_3", "submitted": "2024-01-01T00:00:00+00:00", "stdout": "/o",
           "stderr": "/e", "experiment": "rec", "something": 1}
    write_json(store.submission(node.stage.name, node.key, 0), old)
    back = read_submission(store, node.stage.name, node.key, 0)
    assert (back.executor, back.job_id, back.host, back.stdout) == ("slurm", "12_3", "", "/o")
    assert read_submission(store, node.stage.name, node.key, 1) is None


def test_local_states_and_cancel_of_a_live_submit(write_exp):
    exp = load_experiment(write_exp("name: loc\noutput_dir: out\n"), chain())
    executor = LocalExecutor(exp, Store(exp.store))
    records = {"a/00000": Submission("local", "1"), "b/00000": Submission("local", "2"),
               "c/00000": Submission("local", "3")}
    attempts = {"b/00000": {"state": "failed", "error": "boom"}}
    assert executor.states(records, attempts)["a/00000"] == JobState(UNKNOWN)
    assert executor.cancel(records, attempts) == (0, "")
    submit = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_json(executor.marker, {"host": socket.gethostname(), "pid": submit.pid, "started": now()})
        states = executor.states(records, attempts)
        assert states["a/00000"] == JobState(PENDING) and states["b/00000"].detail == "boom"
        assert executor.cancel(records, attempts) == (2, f"stopped the local submit (pid {submit.pid})")
        assert submit.wait(timeout=30) == -signal.SIGTERM
    finally:
        submit.kill()


def test_status_and_cancel_know_no_scheduler():
    """status.py and submit.py only ask the executors: no scheduler command, state, file or
    executor name of their own."""
    for path in (SRC / "pipeline" / "status.py", SRC / "pipeline" / "submit.py"):
        text = path.read_text()
        for word in ("squeue", "sacct", "scancel", "sbatch", "os.kill", "local.json", '"slurm"', '"local"',
                     "subprocess", "PENDING\"", "executors.slurm", "executors.local"):
            assert word not in text, f"{path.name} mentions {word}"


def _private_submitit_uses() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("submitit"):
                names = [a.name for a in node.names if a.name.startswith("_")]
                if any(part.startswith("_") for part in node.module.split(".")):
                    names.append(node.module)
                found += [f"{path.relative_to(SRC)}:{node.lineno}:{n}" for n in names]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                chain_ = node
                while isinstance(chain_, ast.Attribute):
                    chain_ = chain_.value
                if isinstance(chain_, ast.Name) and chain_.id == "submitit":
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}:{node.attr}")
    return found


def test_the_one_private_use_of_submitit():
    """Only ``plan --sbatch``'s rendering reaches into submitit (see render_script's docstring):
    a second one must be deliberate."""
    uses = _private_submitit_uses()
    assert len(uses) == 1 and uses[0].startswith("pipeline/executors/slurm.py:") and \
        uses[0].endswith(":_make_sbatch_string"), uses


def test_status_json_fields_are_unchanged(cli, write_exp):
    path = write_exp("name: js\noutput_dir: out\n")
    code, out, _ = cli("status", path, "--json")
    assert code == 0
    tasks = json.loads(out)["tasks"]
    assert tasks and all(list(t) == ["id", "state", "job_id", "detail"] for t in tasks)
    assert {t["state"] for t in tasks} == {"missing"}
