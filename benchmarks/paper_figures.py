"""The default experiment and every figure file of examples/paper/, at CPU size, with their
headline numbers: for each setting, the mean test loss over the first 30 % of steps minus RT's,
with RT's seed spread. Results: benchmarks/results/paper_figures.json.

    python benchmarks/paper_figures.py [--out DIR] [FILE ...]

Files run in order into one output root (default: a new temporary directory), so runs that two
files share (the RT seeds, the embeddings) are computed once: the wall time of each file is what
it added after the files before it; the first file's is from nothing.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["experiments.yaml", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples" / "paper").glob("*.yaml"))]


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def run(file: str, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpcgen", "submit", str(ROOT / file), "--set", f"output_dir={out}"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    row: dict = {"file": file, "wall_s": round(wall, 1), "rc": proc.returncode}
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return row
    plan = json.loads(subprocess.run([sys.executable, "-m", "hpcgen", "plan", str(ROOT / file), "--json", "--set",
                                      f"output_dir={out}"], capture_output=True, text=True, check=True).stdout)
    key = next(n["key"] for n in plan["nodes"] if n["stage"] == "aggregate")
    summary = json.loads((out / "store" / "aggregate" / key / "report" / "summary.json").read_text())
    row["experiment"] = plan["experiment"]
    row["report"] = str(out / "store" / "aggregate" / key / "report" / "report.html")
    row["early"] = summary.get("early")
    base = summary.get("baseline")
    if base:
        row["baseline"] = {k: base.get(k) for k in ("label", "seeds", "early_means", "early_mean", "std", "spread")}
    row["early_vs_baseline"] = {
        setting: {k: v.get(k) for k in ("label", "early_mean", "delta", "seeds", "against_baseline_seeds")}
        for setting, v in (summary.get("early_vs_baseline") or {}).items()}
    row["settings"] = [{k: s.get(k) for k in ("setting", "seeds", "early_mean", "std")}
                       for s in summary.get("settings", [])]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*", default=FILES)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "paper_figures.json")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="hpcgen-figures-"))
    rows = []
    for file in args.files:
        row = run(file, out.resolve())
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "output_root": str(out),
              "note": "files run in order into one output root: shared runs train once, so each wall time is "
                      "what that file added after the ones before it", "files": rows}
    args.results.write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
