"""A running task's progress (``Task.progress``) reaches the local executor's console."""

from __future__ import annotations

import io
import json
import threading

from rich.console import Console

from hpcgen.config import load_experiment
from hpcgen.pipeline.executors.local import LocalExecutor
from hpcgen.pipeline.graph import build_graph
from hpcgen.pipeline.stage import SectionView, Task
from hpcgen.pipeline.store import progress_text, read_progress
from hpcgen.pipeline.submit import submit
from tests.conftest import wait_for


def make_task(tmp_path, rank=0) -> Task:
    import logging

    return Task(stage="embed", key="k", index=3, size=4, dir=tmp_path, config=SectionView("embed", {}), inputs={},
                runs=(), log=logging.getLogger("t"), attempt="a1", rank=rank)


def test_progress_is_written_at_most_every_interval_and_always_at_the_end(tmp_path, monkeypatch):
    import hpcgen.pipeline.stage as stage

    monkeypatch.setattr(stage, "PROGRESS_EVERY_S", 3600.0)
    task = make_task(tmp_path)
    task.progress(10, 100, "texts")
    assert read_progress(tmp_path, 3)["done"] == 10
    task.progress(20, 100, "texts")  # within the interval: not written
    assert read_progress(tmp_path, 3)["done"] == 10
    task.progress(100, 100, "texts")  # the end always is
    data = read_progress(tmp_path, 3)
    assert data["done"] == 100 and data["unit"] == "texts" and data["attempt"] == "a1"
    monkeypatch.setattr(stage, "PROGRESS_EVERY_S", 0.0)
    task.progress(50, 100)
    assert read_progress(tmp_path, 3)["done"] == 50
    make_task(tmp_path / "other", rank=1).progress(1, 2)  # only rank 0 writes
    assert read_progress(tmp_path / "other", 3) is None


def test_progress_text():
    assert progress_text({"done": 12800, "total": 101000, "unit": "texts", "rate_per_s": 160.0}) == \
        "12,800/101,000 texts, 160/s, 9 min left"
    assert progress_text({"done": 5, "total": 10, "unit": "steps", "rate_per_s": 1.0}) == "5/10 steps, 1/s, 5 s left"
    assert progress_text({"done": 3, "total": 3, "rate_per_s": None}) == "3/3 items"


def test_the_local_executor_prints_what_a_running_task_says(write_exp, pipeline, tmp_path, monkeypatch):
    go = tmp_path / "go"
    monkeypatch.setenv("HPCGEN_TEST_PROGRESS_STAGE", "embed")
    monkeypatch.setenv("HPCGEN_TEST_PROGRESS_GO", str(go))
    monkeypatch.setattr(LocalExecutor, "progress_print_s", 0.0)
    path = write_exp("name: p\noutput_dir: out\ncluster: {executor: local}\narrange: {strategy: tma}\n")
    exp = load_experiment(path, pipeline)
    graph = build_graph(exp, pipeline).until("embed")
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    seen = threading.Event()

    def watch():  # the submit runs in this (main) thread: it handles signals; the task waits for the go file
        try:
            wait_for(lambda: "1/2 steps" in buffer.getvalue(), timeout=180, what="the embed task's progress line")
            seen.set()
        finally:
            go.touch()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = submit(exp, pipeline, graph, console=console)
    watcher.join(timeout=60)
    assert seen.is_set(), buffer.getvalue()
    assert code == 0
    line = next(x for x in buffer.getvalue().splitlines() if "1/2 steps" in x)
    assert line.strip().startswith("embed/")
    node = next(n for n in graph.nodes.values() if n.stage.name == "embed")
    done = json.loads((exp.store / "embed" / node.key / "progress" / "00000.json").read_text())
    assert done["done"] == done["total"] == 2
