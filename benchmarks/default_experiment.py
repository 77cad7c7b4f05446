"""The bundled default experiment from nothing: wall time, time per stage and run, and its result.

    python benchmarks/default_experiment.py [--out DIR] [--note TEXT]

Runs ``python -m hpcgen submit experiments.yaml`` into an empty output root (``DIR``, default a
fresh temporary folder; the default run's own ``outputs/`` is not touched), then reads the
completion markers (each task's duration) and the report's ``summary.json`` (each setting's early
loss against RT), and writes ``benchmarks/results/default_experiment.json`` with the run ids of
the experiment as planned now. ``tests/test_readme.py`` checks that the README's figures are this
file's and that its run ids are still those of ``experiments.yaml``: change the default experiment
and the test asks for this benchmark to be run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "default_experiment.json"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem), "python": platform.python_version()}


def planned_runs() -> dict[str, str]:
    """Run id -> label (or name) of experiments.yaml as the code plans it now."""
    from hpcgen.config import load_experiment
    from hpcgen.stages import default_pipeline

    exp = load_experiment(ROOT / "experiments.yaml", default_pipeline(), check_output=False)
    return {r.id: r.label or r.name for r in exp.runs}


def durations(store: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for marker in sorted(store.glob("*/*/completions/*.json")):
        data = json.loads(marker.read_text())
        out.setdefault(data["stage"], []).append(round(float(data["duration_s"]), 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="an empty output root (default: a new temporary folder)")
    ap.add_argument("--note", default="nothing else running", help="what else ran on the machine")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="hpcgen-default-"))
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out}: not empty; the benchmark measures a run from nothing")
    cmd = [sys.executable, "-m", "hpcgen", "submit", str(ROOT / "experiments.yaml"), "--set", f"output_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"submit failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summaries = sorted((out / "store" / "aggregate").glob("*/report/summary.json"))
    summary = json.loads(summaries[-1].read_text())
    vs = summary.get("early_vs_baseline") or {}
    base = summary.get("baseline") or {}
    per_stage = durations(out / "store")
    result = {
        "what": "python -m hpcgen submit experiments.yaml from an empty output root, local executor",
        "script": "benchmarks/default_experiment.py",
        "machine": machine(),
        "date": date.today().isoformat(),
        "note": args.note,
        "runs": len(planned_runs()),
        "run_ids": planned_runs(),
        "wall_s": round(wall, 1),
        "stage_task_s": {stage: round(sum(v), 1) for stage, v in per_stage.items()},
        "per_run_s": {stage: per_stage[stage] for stage in ("train", "evaluate") if stage in per_stage},
        "embed_shard_s": per_stage.get("embed", []),
        "early_fraction": (summary.get("early") or {}).get("fraction"),
        "early_delta_vs_baseline": {v.get("label") or k: round(v["delta"], 3) for k, v in vs.items()
                                    if v.get("label") != base.get("label")},
        "baseline": {"label": base.get("label"), "seeds": base.get("seeds"),
                     "std": round(base["std"], 4) if base.get("std") is not None else None,
                     "spread": round(base["spread"], 4) if base.get("spread") is not None else None},
    }
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
