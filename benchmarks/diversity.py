"""The instruction-diversity studies of examples/diversity/ at CPU size: per run its matrix
values, its final exact match on unseen and on seen instructions (from the report's
summary.json), and how long its training and its evaluation took (from the tasks' attempt
records), so that evaluation's share of training time is measured too. Results:
benchmarks/results/diversity.json (one entry per study, merged into what is there) and the
report's figures under benchmarks/results/diversity/<study>/.

    python benchmarks/diversity.py [--collect] [--out DIR] [STUDY ...]

STUDY is a file name of examples/diversity/ without .yaml (default: all five). Without
``--collect`` each study is submitted first (into its own output_dir, or DIR) and its wall time
recorded; with it, only what is on disk is read (a study submitted by hand).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from paper_figures import machine

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["transition", "heatmap", "power_law", "constraints", "encrypted"]
RESULTS = ROOT / "benchmarks" / "results"


def _seconds(attempt: Path) -> float | None:
    a = json.loads(attempt.read_text())
    if a.get("state") != "done" or not a.get("started") or not a.get("ended"):
        return None
    return (dt.datetime.fromisoformat(a["ended"]) - dt.datetime.fromisoformat(a["started"])).total_seconds()


def task_seconds(store: Path, node: str) -> float | None:
    """Wall time of a node's last completed attempt (summed over its array tasks)."""
    done = [s for s in (_seconds(p) for p in sorted((store / node / "attempts").glob("*.json"))) if s is not None]
    return round(sum(done), 1) if done else None


def collect(study: str, file: Path, out: Path | None) -> dict:
    cmd = [sys.executable, "-m", "hpcgen", "report", str(file)] + (["--set", f"output_dir={out}"] if out else [])
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    name = next(line.split(":", 1)[1].strip() for line in file.read_text().splitlines() if line.startswith("name:"))
    root = out or ROOT / "outputs"  # the studies' own output_dir
    plan = json.loads((root / "experiments" / name / "plan.json").read_text())
    store = Path(plan["output_dir"]) / "store"
    report = root / "experiments" / name / "report"
    summary = json.loads((report / "summary.json").read_text())
    by_id = {r["run_id"]: r for r in summary["runs"]}
    runs = []
    for run in plan["runs"]:
        row = by_id.get(run["id"], {})
        train_s, eval_s = task_seconds(store, run["nodes"]["train"]), task_seconds(store, run["nodes"]["evaluate"])
        runs.append({"run_id": run["id"], "label": run.get("label"), "values": run["values"],
                     "final_exact_match_unseen": row.get("final_exact_match_unseen"),
                     "final_exact_match_seen": row.get("final_exact_match_seen"),
                     "final_exact_match_by_source": row.get("final_exact_match_by_source"),
                     "train_s": train_s, "evaluate_s": eval_s,
                     "evaluate_over_train": round(eval_s / train_s, 3) if train_s and eval_s else None})
    figures = RESULTS / "diversity" / study
    shutil.rmtree(figures, ignore_errors=True)
    figures.mkdir(parents=True)
    for png in report.glob("*.png"):
        shutil.copyfile(png, figures / png.name)
    ratios = [r["evaluate_over_train"] for r in runs if r["evaluate_over_train"] is not None]
    return {"file": str(file.relative_to(ROOT)), "runs": runs, "settings": summary.get("settings"),
            "evaluate_over_train_max": max(ratios) if ratios else None,
            "figures": sorted(str(p.relative_to(ROOT)) for p in figures.glob("*.png"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="*", default=STUDIES)
    ap.add_argument("--collect", action="store_true", help="read what is on disk; submit nothing")
    ap.add_argument("--out", type=Path, help="output root (default: each file's own output_dir)")
    args = ap.parse_args()
    path = RESULTS / "diversity.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = machine()
    for study in args.studies:
        file = ROOT / "examples" / "diversity" / f"{study}.yaml"
        wall = None
        if not args.collect:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "hpcgen", "submit", str(file)]
            cmd += ["--set", f"output_dir={args.out}"] if args.out else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                return proc.returncode
            wall = round(time.perf_counter() - t0, 1)
        entry = collect(study, file, args.out)
        if wall is not None:
            entry["wall_s"] = wall
        elif study in results.get("studies", {}) and "wall_s" in results["studies"][study]:
            entry["wall_s"] = results["studies"][study]["wall_s"]  # measured when it was submitted
        results.setdefault("studies", {})[study] = entry
        print(f"{study}: " + "; ".join(
            f"{r['label'] or r['values']}: unseen {r['final_exact_match_unseen']}, seen {r['final_exact_match_seen']}"
            for r in entry["runs"]))
    path.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
