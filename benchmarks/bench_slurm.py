"""Scheduler calls on the test Slurm cluster: a 1,000-task stage, and a 100-run matrix.

    sudo bash tests/cluster/slurm-up.sh && python benchmarks/bench_slurm.py

Targets: the 1,000-task stage is ONE sbatch call (chunked only past MaxArraySize); `status` over
it makes ONE Slurm query. The 100-run matrix (100 seeds of one arrangement) measures what
per-run dependencies cost: one array per run for train and for evaluate, so that each run's
evaluation waits for its own training only. The jobs are submitted held (`sbatch --hold`), counted, then cancelled,
so nothing runs. Scheduler commands are counted by wrappers placed first on PATH that log each
call and hand it to the real command.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("sbatch", "sacct", "squeue", "scancel", "scontrol")

EXPERIMENT = """
name: bench1000
output_dir: out
cluster:
  executor: slurm
  sbatch: {hold: true}
data: {tasks: 1000}
"""

RUNS = """
name: bench100runs
output_dir: out
cluster:
  executor: slurm
  sbatch: {hold: true}
eval: {tasks: 4}
matrix:
  train.seed: [SEEDS]
""".replace("SEEDS", ", ".join(map(str, range(100))))


def wrap(bin_dir: Path, log: Path) -> None:
    for tool in TOOLS:
        real = shutil.which(tool)
        if real is None:
            sys.exit(f"{tool} not found: bring up the test cluster first (tests/cluster/slurm-up.sh)")
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexec "{real}" "$@"\n')
        script.chmod(0o755)


def hpcgen(*args: str, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "hpcgen", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"hpcgen {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return elapsed, res.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        log = tmp_path / "calls.log"
        wrap(bin_dir, log)
        exp = tmp_path / "bench.yaml"
        exp.write_text(EXPERIMENT)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
               "HPCGEN_PIPELINE": "tests.pipeline.chain:PIPELINE"}

        def calls() -> list[str]:
            lines = log.read_text().splitlines() if log.exists() else []
            log.write_text("")
            return lines

        submit_s, out = hpcgen("submit", str(exp), env=env)
        submit_calls = calls()
        status_s, status = hpcgen("status", str(exp), "--json", env=env)
        status_calls = calls()
        cancel_s, _ = hpcgen("cancel", str(exp), env=env)
        cancel_calls = calls()
        states = json.loads(status)["stages"]
        runs = tmp_path / "runs.yaml"
        runs.write_text(RUNS)
        runs_s, runs_out = hpcgen("submit", str(runs), env=env)
        runs_calls = [c for c in calls() if c.startswith("sbatch")]
        hpcgen("cancel", str(runs), env=env)
        calls()
    sbatch = [c for c in submit_calls if c.startswith("sbatch")]
    result = {
        "tasks_in_stage": 1000,
        "stages_in_graph": len(states),
        "submit": {"seconds": round(submit_s, 2), "sbatch_calls": len(sbatch),
                   "all_calls": [c.split()[0] for c in submit_calls]},
        "status": {"seconds": round(status_s, 2), "scheduler_calls": [c.split()[0] for c in status_calls],
                   "prepare": states.get("prepare")},
        "cancel": {"seconds": round(cancel_s, 2), "scheduler_calls": [c.split()[0] for c in cancel_calls]},
        "matrix_100_runs": {"submit_seconds": round(runs_s, 2), "sbatch_calls": len(runs_calls),
                            "arrays_per_stage": {st: runs_out.count(f"queued {st}:") for st in
                                                 ("prepare", "arrange", "train", "evaluate", "aggregate")},
                            "dependencies": "per run: each evaluation array waits on its own train task"},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"{subprocess.run(['sinfo', '--version'], capture_output=True, text=True).stdout.strip()}",
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
