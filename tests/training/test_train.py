"""Real DeepSpeed training on CPU (gloo): the arranged order, two ranks, exact resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.numpy import load_file

from hpcgen.cli import main
from tests.conftest import ROOT, wait_for

BASE = f"""
name: tr
output_dir: out
data:
  sources: [{{format: niv2, path: {ROOT / "examples" / "data" / "niv2-sample"}}}]
  max_per_train_task: 2
  max_per_test_task: 1
arrange: {{strategy: random, seed: 7}}
train: {{preset: demo, layers: 1, hidden: 32, heads: 2, vocab_size: 512, max_length: 96, lr: 5.0e-3,
        save_every: 4, resume_every: 3, global_batch: 16}}
"""


def run_dir(root: Path) -> Path:
    [d] = list((root / "out" / "store" / "train").iterdir())
    return d


def fed_order(node: Path) -> np.ndarray:
    """The arranged order without the records reported as too long (their answer alone exceeds
    max_length): what training must consume, in this order."""
    order = h5py.File(next((node.parent.parent / "arrange").glob("*/arrangement.h5")))["order"][:]
    too_long = set(json.loads((node / "summary.json").read_text())["too_long"])
    assert too_long, "the test data should exercise the too-long path"
    return np.asarray([r for r in order if r not in too_long])


def curve(node: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (node / "metrics.jsonl").read_text().splitlines()]


def submit(tmp: Path, text: str, *extra: str) -> int:
    (tmp / "exp.yaml").write_text(text)
    return main(["submit", str(tmp / "exp.yaml"), *extra])


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, micro batch 8 x 2 accumulation steps (global batch 16)."""
    tmp = tmp_path_factory.mktemp("single")
    assert submit(tmp, BASE.replace("global_batch: 16}", "global_batch: 16, micro_batch: 8}"), "--executor",
                  "debug") == 0
    return run_dir(tmp)


def test_order_and_snapshots(single):
    node = single
    order = fed_order(node)
    consumed = [json.loads(ln) for ln in (node / "work-00000" / "consumed-rank0.jsonl").read_text().splitlines()]
    assert len(consumed) == len(order) // 16
    for row in consumed:
        s = row["step"]
        assert row["rows"] == order[s * 16:(s + 1) * 16].tolist()
    snaps = json.loads((node / "snapshots.json").read_text())
    assert [s["step"] for s in snaps] == [4, 8, 11]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = node / snaps[-1]["path"]
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 1 and len(tok) <= 512 and (path / "model.safetensors").is_file()


def test_two_ranks_consume_their_slices_and_match_one_process(single, tmp_path):
    text = BASE.replace("global_batch: 16}", "global_batch: 16, micro_batch: 8, resources: {tasks_per_node: 2, "
                                             "cpus: 1}}")
    assert submit(tmp_path, text, "--executor", "local") == 0
    node = run_dir(tmp_path)
    order = fed_order(node)
    ranks = [[json.loads(ln) for ln in (node / "work-00000" / f"consumed-rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    for s in range(11):
        step_items = order[s * 16:(s + 1) * 16].tolist()
        assert ranks[0][s]["rows"] == step_items[:8] and ranks[1][s]["rows"] == step_items[8:]
    assert json.loads((node / "summary.json").read_text())["world_size"] == 2
    assert np.allclose(curve(node), curve(single), atol=1e-5, rtol=0)


def test_interrupted_run_resumes_to_the_same_curve_and_weights(tmp_path):
    """SIGKILL the whole local job after a resumable checkpoint; the re-submitted run resumes
    there and ends with the loss curve and weights of an uninterrupted run, bit for bit."""
    text = BASE.replace("max_per_train_task: 2", "max_per_train_task: 6").replace(
        "global_batch: 16}", "global_batch: 16, micro_batch: 8}")
    (tmp_path / "ref").mkdir()
    assert submit(tmp_path / "ref", text, "--executor", "debug") == 0
    reference = run_dir(tmp_path / "ref")
    run = tmp_path / "run"
    run.mkdir()
    (run / "exp.yaml").write_text(text)
    cmd = [sys.executable, "-m", "hpcgen", "submit", str(run / "exp.yaml"), "--executor", "local"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    work = run / "out" / "store" / "train"
    wait_for(lambda: list(work.glob("*/work-00000/resume/step-000006/rng-rank0.pt")), timeout=300, interval=0.05,
             what="the second resumable checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)  # the submit and its job, mid-run
    proc.wait()
    node = run_dir(run)
    steps_total = len(curve(reference))
    done_before = len((node / "work-00000" / "metrics.jsonl").read_text().splitlines())
    assert not (node / "completions" / "00000.json").exists() and done_before < steps_total
    assert submit(run, text, "--executor", "local") == 0
    log = (node / "work-00000" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in log] == list(range(1, steps_total + 1))
    assert np.allclose(curve(node), curve(reference), atol=1e-6, rtol=0)
    # every snapshot is there: one still being written in the background when the job was killed
    # was not yet covered by a resumable checkpoint, so the resumed run wrote it again
    snaps = lambda d: [s["step"] for s in json.loads((d / "snapshots.json").read_text())]  # noqa: E731
    assert snaps(node) == snaps(reference)
    last = f"step-{steps_total:06d}"
    a = load_file(node / "work-00000" / "snapshots" / last / "model.safetensors")
    b = load_file(reference / "work-00000" / "snapshots" / last / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, expected, line", [
    ("architecture: bert", "train.architecture: Input should be 'llama' or 'gpt2'", 10),
    ("model: ./no-such-model", "/no-such-model' does not exist", 10),  # named in full, from the file's folder
    ("micro_batch: 5", "micro_batch 5 does not divide global_batch 16", 9),
    ("max_length: 1", "train.max_length: max_length 1 is shorter than every answer", None),
    # caught at plan, before anything runs
    ("deepspeed_overrides: {zero_optimization: {stage: 7}}",
     "train.deepspeed_overrides: ZeRO stage 7 does not exist", 10),
    # only DeepSpeed itself knows its other settings: refused when the engine starts
    ("deepspeed_overrides: {zero_optimization: {stage: 2, overlap_comm: maybe}}",
     "train.deepspeed: DeepSpeed rejected the config", None),
])
def test_bad_training_input_is_one_line_exit_2(change, expected, line, tmp_path, capsys):
    key = change.split(":")[0]
    text = (re.sub(rf"{key}: [^,}}]+", change, BASE) if f" {key}:" in BASE
            else BASE.replace("global_batch: 16}", f"global_batch: 16, {change}}}"))
    code = submit(tmp_path, text, "--executor", "debug")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and expected in err, err
    if line:
        assert f"exp.yaml:{line}: " in err
    assert not list((tmp_path / "out").glob("store/train/*/completions/*.json"))


@pytest.mark.parametrize("preset, atol", [("zero3", 1e-5), ("zero2-offload", 1e-4)])
def test_zero_presets_match_one_process(single, tmp_path, preset, atol):
    """zero3: the snapshot is consolidated from the shards. zero2-offload: DeepSpeed refuses a torch
    optimizer under optimizer offload, so its CPU Adam steps (compiled on first use here, about a
    minute once per machine); both must give the curve and weights of torch's AdamW in one process."""
    text = BASE.replace("global_batch: 16}", f"global_batch: 16, micro_batch: 8, deepspeed: {preset}}}")
    assert submit(tmp_path, text, "--executor", "debug") == 0
    node = run_dir(tmp_path)
    assert np.allclose(curve(node), curve(single), atol=atol, rtol=0)
    a = load_file(node / "work-00000" / "snapshots" / "step-000011" / "model.safetensors")
    b = load_file(single / "work-00000" / "snapshots" / "step-000011" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.allclose(a[k], b[k], atol=atol) for k in a)


def test_in_loop_test_loss(tmp_path):
    text = BASE.replace("global_batch: 16}", "global_batch: 16, eval_in_loop: true}")
    assert submit(tmp_path, text, "--executor", "debug") == 0
    node = run_dir(tmp_path)
    rows = [json.loads(ln) for ln in (node / "work-00000" / "test_loss.jsonl").read_text().splitlines()]
    snaps = json.loads((node / "snapshots.json").read_text())
    assert [r["step"] for r in rows] == [s["step"] for s in snaps] == [4, 8, 11]
    losses = [r["test_loss"] for r in rows]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]  # it learns something about unseen tasks


def test_a_requeue_signal_at_a_snapshot_step_saves_first_and_snapshots_after(single, tmp_path):
    """SIGUSR2 (Slurm's requeue signal) spends the time left on the resumable save: a snapshot
    due at that step is skipped then and written first thing after the requeue, so the snapshots
    stay dense and the run ends where an uninterrupted one does. Every step is a snapshot step
    here, so the signal lands on one whenever it arrives."""
    import threading

    text = BASE.replace("global_batch: 16}", "global_batch: 16, micro_batch: 8}").replace(
        "save_every: 4, resume_every: 3", "save_every: 1, resume_every: 1000")
    (tmp_path / "exp.yaml").write_text(text)
    metrics = tmp_path / "out" / "store" / "train"

    def signal_after_two_steps():
        wait_for(lambda: [p for p in metrics.glob("*/work-00000/metrics.jsonl")
                          if len(p.read_text().splitlines()) >= 2], timeout=300, interval=0.02,
                 what="two training steps")
        os.kill(os.getpid(), signal.SIGUSR2)

    watcher = threading.Thread(target=signal_after_two_steps, daemon=True)
    watcher.start()
    with pytest.raises(SystemExit):  # no scheduler to requeue under the debug executor: it stops
        main(["submit", str(tmp_path / "exp.yaml"), "--executor", "debug"])
    watcher.join()
    node = run_dir(tmp_path)
    work = node / "work-00000"
    saved = sorted(int(p.name.split("-")[1]) for p in (work / "resume").glob("step-*"))
    [stopped] = saved
    assert not (work / "snapshots" / f"step-{stopped:06d}").exists()  # skipped for the save
    assert main(["submit", str(tmp_path / "exp.yaml"), "--executor", "debug"]) == 0
    snaps = [s["step"] for s in json.loads((node / "snapshots.json").read_text())]
    assert snaps == list(range(1, 12))  # dense again: the skipped one was written on resume
    assert np.allclose(curve(node), curve(single), atol=1e-6, rtol=0)
    last = "step-000011"
    a = load_file(work / "snapshots" / last / "model.safetensors")
    b = load_file(single / "work-00000" / "snapshots" / last / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    if stopped in (4, 8):  # steps at which the uninterrupted run has snapshots too
        ref = load_file(single / "work-00000" / "snapshots" / f"step-{stopped:06d}" / "model.safetensors")
        mine = load_file(work / "snapshots" / f"step-{stopped:06d}" / "model.safetensors")
        assert all(np.array_equal(ref[k], mine[k]) for k in ref)


def test_gradient_checkpointing_trains_the_same_model(single, tmp_path):
    """Recomputing activations in the backward pass changes memory, not the result."""
    text = BASE.replace("global_batch: 16}", "global_batch: 16, micro_batch: 8, gradient_checkpointing: true}")
    assert submit(tmp_path, text, "--executor", "debug") == 0
    node = run_dir(tmp_path)
    assert np.allclose(curve(node), curve(single), atol=1e-5, rtol=0)
    import json as _json

    from transformers import AutoConfig

    snap = node / _json.loads((node / "snapshots.json").read_text())[-1]["path"]
    assert AutoConfig.from_pretrained(snap).use_cache is False


def test_two_zero3_ranks_split_the_in_loop_evaluation_and_gather_snapshots_by_group(tmp_path, monkeypatch):
    """ZeRO-3 on two ranks: the in-loop test loss, with the test records split over the ranks and
    reduced, equals one process's; snapshots gathered a few parameters at a time (a tiny group
    budget forces many groups) hold the weights one process trains."""
    one = BASE.replace("global_batch: 16}", "global_batch: 16, micro_batch: 8, eval_in_loop: true}")
    (tmp_path / "one").mkdir()
    assert submit(tmp_path / "one", one, "--executor", "debug") == 0
    two = BASE.replace("global_batch: 16}", "global_batch: 16, micro_batch: 8, eval_in_loop: true, deepspeed: zero3, "
                                            "resources: {tasks_per_node: 2, cpus: 1}}")
    monkeypatch.setenv("HPCGEN_GATHER_ELEMENTS", "5000")  # read by the jobs, which start their own Python
    (tmp_path / "two").mkdir()
    assert submit(tmp_path / "two", two, "--executor", "local") == 0
    a, b = run_dir(tmp_path / "one"), run_dir(tmp_path / "two")

    def losses(node):
        lines = (node / "work-00000" / "test_loss.jsonl").read_text().splitlines()
        return [json.loads(ln)["test_loss"] for ln in lines]

    assert np.allclose(losses(a), losses(b), atol=1e-5, rtol=0)
    last = "step-000011"
    wa = load_file(a / "work-00000" / "snapshots" / last / "model.safetensors")
    wb = load_file(b / "work-00000" / "snapshots" / last / "model.safetensors")
    assert wa.keys() == wb.keys() and all(np.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    record = json.loads((b / "work-00000" / "snapshots" / last / "snapshot.json").read_text())
    assert record["gather_groups"] > 3  # gathered in groups, not all at once
