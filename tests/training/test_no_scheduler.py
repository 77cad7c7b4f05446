"""Training knows no scheduler: the runner owns the signal, the distributed environment and the
thread count; the loop gets a stop request and the task's resources."""

from __future__ import annotations

import ast
import os
import signal
import threading
from pathlib import Path

import pytest

import hpcgen.training
from hpcgen.pipeline import runner

TRAINING = Path(hpcgen.training.__file__).parent
MODULES = sorted(TRAINING.glob("*.py"))


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def strings(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_training_module_imports_submitit_or_reads_slurm_or_thread_variables():
    assert len(MODULES) >= 6, MODULES
    for path in MODULES:
        assert not {n for n in imported(path) if n.split(".")[0] == "submitit"}, path
        assert not {n for n in imported(path) if n == "hpcgen.pipeline.executors" or
                    n.startswith("hpcgen.pipeline.executors.")}, path
        read = [s for s in strings(path) if s.startswith("SLURM_") or s.startswith("SUBMITIT_")
                or s in runner.THREAD_VARIABLES or s in ("HPCGEN_CPUS",)]
        assert not read, (path, read)
        assert "set_num_threads" not in path.read_text(), path  # the runner's use_threads alone


def test_the_stop_request_holds_the_signal_only_while_watched():
    """Inside watch() SIGUSR2 sets the request and reaches no other handler; outside it, and
    after, the handler that was there (submitit's, in a job) gets it."""
    seen = []
    before = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        stop = runner.StopRequest()
        with stop.watch():
            assert not stop.requested()
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested() and seen == []
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == [signal.SIGUSR2]
        fresh = runner.StopRequest()
        os.kill(os.getpid(), signal.SIGUSR2)  # nobody watches: not requested, handed on
        assert not fresh.requested() and len(seen) == 2
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_a_stop_request_outside_the_main_thread_installs_nothing():
    stop, errors = runner.StopRequest(), []
    before = signal.getsignal(signal.SIGUSR2)

    def body():
        try:
            with stop.watch():
                assert signal.getsignal(signal.SIGUSR2) is before
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert not errors and not stop.requested()


def test_hand_over_calls_the_schedulers_handler_on_rank_0_only():
    calls = []
    before = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        with pytest.raises(SystemExit) as other:
            runner.hand_over(3)
        assert other.value.code == 0 and calls == []
        with pytest.raises(SystemExit) as first:
            runner.hand_over(0)
        assert first.value.code == 1 and calls == [signal.SIGUSR2]  # submitit's own exits first
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)  # no scheduler: rank 0 stops with status 1
        with pytest.raises(SystemExit) as alone:
            runner.hand_over(0)
        assert alone.value.code == 1
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_threads_are_decided_once_from_the_tasks_cpus(monkeypatch):
    import torch

    spec = type("Spec", (), {"gpus": 2})()
    monkeypatch.delenv("HPCGEN_CPUS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert runner.task_resources(spec) == runner.TaskResources(cpus=None, gpus=2)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert runner.task_resources(spec).cpus == 6
    monkeypatch.setenv("HPCGEN_CPUS", "3")  # the executor's own export first
    res = runner.task_resources(spec)
    assert res == runner.TaskResources(cpus=3, gpus=2) and runner.task_threads(res) == res.threads == 3
    before = torch.get_num_threads()
    for name in runner.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    try:
        runner.use_threads(res)
        assert torch.get_num_threads() == 3
        assert all(os.environ[name] == "3" for name in runner.THREAD_VARIABLES)
        runner.use_threads(runner.TaskResources())  # unknown: left as it is
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
