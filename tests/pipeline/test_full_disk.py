"""A full disk (ENOSPC) under the output root: a small tmpfs, mounted by the test (needs root).

What must hold: the task that hits the full disk fails with the system's own words, leaves no
marker and no staged file behind (so the space it took is free again), the tasks that finished
stay complete and verified, and once there is space a re-submit finishes the rest; a disk that is
already full is refused at submit, before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import CHAIN, ROOT


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs here ({done.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def hpcgen(*args, cwd):
    env = {**os.environ, "HPCGEN_PIPELINE": CHAIN, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hpcgen", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_full_disk_fails_the_task_cleanly_and_a_resubmit_finishes(small_disk, tmp_path):
    exp = tmp_path / "exp.yaml"
    # three 1.5 MB shards on a 4 MiB disk: the third cannot be written. Each shard asks for more
    # CPUs than any machine has, so they run one after another on any core count
    exp.write_text("name: full\noutput_dir: disk/out\n"
                   "embed: {tasks: 3, pad_bytes: 1500000, resources: {cpus: 4096}}\narrange: {strategy: tma}\n")
    run = hpcgen("submit", exp, "--executor", "local", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "No space left on device" in run.stdout + run.stderr
    [node] = list((small_disk / "out" / "store" / "embed").iterdir())
    markers = sorted(p.name for p in (node / "completions").iterdir())
    assert len(markers) == 2 and not [p for p in os.listdir(node) if p.startswith(".tmp.")]
    assert markers == ["00000.json", "00001.json"] and not (node / "pad-00002.bin").exists()
    verified = hpcgen("verify", exp, cwd=tmp_path)
    assert verified.returncode == 0 and "every output matches its marker" in verified.stdout
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    run = hpcgen("submit", exp, "--executor", "local", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 complete" in run.stdout and "all 6 task(s) done" in run.stdout  # prepare and two shards kept
    assert hpcgen("verify", exp, cwd=tmp_path).returncode == 0


def test_a_disk_already_full_is_refused_before_anything_is_written(small_disk, tmp_path):
    with open(small_disk / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: full\noutput_dir: disk/out\n")
    run = hpcgen("submit", exp, "--executor", "local", cwd=tmp_path)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: exp.yaml:2: output_dir: output root") and "No space left on device" in line
    assert sorted(os.listdir(small_disk)) == ["filler"]
