from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcgen.cli import main as cli_main
from tests.pipeline.chain import chain

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
CHAIN = "tests.pipeline.chain:PIPELINE"


@pytest.fixture
def pipeline():
    return chain()


@pytest.fixture
def use_chain(monkeypatch):
    """Make the CLI use the test pipeline."""
    monkeypatch.setenv("HPCGEN_PIPELINE", CHAIN)


@pytest.fixture
def events(tmp_path, monkeypatch):
    """Tasks of the test pipeline append their start/end events here; returns a reader."""
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("HPCGEN_TEST_EVENTS", str(path))

    def read(kind: str | None = None) -> list[dict]:
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["event"] == kind]

    return read


@pytest.fixture
def write_exp(tmp_path):
    """Write an experiment file in tmp_path; outputs go to tmp_path/out."""

    def write(text: str, name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def cli(use_chain, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = cli_main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """The real test Slurm cluster (tests/cluster/slurm-up.sh). Under CI=true it must come up."""
    ci = os.environ.get("CI", "").lower() == "true"
    problem = None
    if os.geteuid() != 0:
        problem = "the test Slurm cluster needs root"
    elif not shutil.which("slurmctld"):
        problem = "Slurm is not installed (tests/setup.sh installs it)"
    if problem:
        if ci:
            pytest.fail(f"CI=true but {problem}")
        pytest.skip(problem)
    res = subprocess.run(["bash", str(ROOT / "tests" / "cluster" / "slurm-up.sh")], capture_output=True,
                         text=True, timeout=300)
    if res.returncode != 0:
        pytest.fail(f"test Slurm cluster did not come up:\n{res.stdout}\n{res.stderr}")
    return {"partition": "debug", "multi": "multi"}


@pytest.fixture
def apptainer(tmp_path, monkeypatch):
    """The stand-in ``apptainer`` (tests/cluster/apptainer) first on PATH, and an image file for it.

    The real Apptainer cannot run on these machines (no Debian package of it for this release):
    the stand-in records each call and runs the command natively, so
    everything on hpcgen's side of the container path is real. Slurm jobs inherit this PATH."""
    bin_dir = tmp_path / "standin-bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").symlink_to(ROOT / "tests" / "cluster" / "apptainer")
    # python3 "inside the image" is this interpreter, which has hpcgen and the tests installed
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    log = tmp_path / "apptainer-calls.jsonl"
    monkeypatch.setenv("APPTAINER_STANDIN_LOG", str(log))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = tmp_path / "images" / "hpcgen.sif"
    image.parent.mkdir()
    image.write_bytes(os.urandom(1 << 20))
    labels = {"org.opencontainers.image.title": "hpcgen", "org.hpcgen.version": "0.1.0",
              "org.hpcgen.git-commit": "0123456789abcdef"}
    (image.parent / "hpcgen.sif.labels.json").write_text(json.dumps(labels))

    def calls() -> list[dict]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    return SimpleNamespace(image=image, labels=labels, calls=calls)
