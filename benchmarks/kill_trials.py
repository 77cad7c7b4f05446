"""Crash safety, measured: SIGKILL the whole process tree of a submit at random moments, then
check the store's two promises.

    python benchmarks/kill_trials.py [--trials 20] [--out benchmarks/results/kill_trials.json]

1. A task killed at any point is not complete: after every kill, every completion marker's
   outputs must exist with the sha256 the marker records (``hpcgen verify``'s check).
2. Re-submitting gives the same results: after the kills, one more submit runs to the end, and
   its science outputs must equal those of an uninterrupted run: records, embeddings, distance
   blocks (with aggregates and top-k), arrangement orders and rounds, the training loss curve and
   the final weights, the evaluation losses.

The experiment is small but complete (the NIV2 sample, two arrangements, the demo model with
resumable checkpoints every 4 steps, so kills also land in a resume). Under the local executor.
Odd-numbered trials kill twice (the second kill lands in the re-submit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = f"""name: kill
output_dir: out
cluster: {{executor: local}}
data:
  sources: [{{format: niv2, path: {ROOT / "examples" / "data" / "niv2-sample"}}}]
  max_per_train_task: 4
  max_per_test_task: 3
embed: {{shards: 2, batch_size: 64, max_seq_length: 128, resources: {{cpus: 1}}}}
similarity: {{tasks: 2, topk: 8}}
train:
  preset: demo
  save_every: 5
  resume_every: 4
  resources: {{cpus: 1}}
eval: {{tasks: 2, resources: {{cpus: 1}}}}
matrix:
  arrange.strategy: [random, tma]
"""


def submit(folder: Path) -> subprocess.Popen:
    log = open(folder / "submit.log", "a")
    return subprocess.Popen([sys.executable, "-m", "hpcgen", "submit", str(folder / "exp.yaml")], cwd=folder,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> int:
    """Stop every process of the tree first (so none can fork or finish a rename in between),
    then SIGKILL them all: what a node crash or an OOM kill of the job's cgroup does."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in tree:
        try:
            p.send_signal(signal.SIGSTOP)
        except psutil.NoSuchProcess:
            pass
    tree = [root, *root.children(recursive=True)] if root.is_running() else tree
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
    return len(tree)


def running_tasks(store: Path) -> list[str]:
    out = []
    for rec in store.glob("*/*/attempts/*.json"):
        try:
            if json.loads(rec.read_text()).get("state") == "running":
                out.append(f"{rec.parts[-4]}/{rec.parts[-3][:8]}/{rec.stem}")
        except (OSError, json.JSONDecodeError):
            out.append(f"{rec} (torn attempt record)")
    return sorted(out)


def check_markers(folder: Path) -> list[str]:
    """What ``hpcgen verify`` finds: outputs of complete tasks that do not match their marker."""
    from hpcgen.config import load_experiment
    from hpcgen.pipeline.graph import build_graph
    from hpcgen.pipeline.store import Store
    from hpcgen.pipeline.verify import verify
    from hpcgen.stages import default_pipeline

    pipeline = default_pipeline()
    exp = load_experiment(folder / "exp.yaml", pipeline, check_output=False)
    return [str(m) for m in verify(build_graph(exp, pipeline), Store(exp.store)).mismatches]


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def science(store: Path) -> dict[str, object]:
    """The science outputs of a store, by stage/key/file."""
    from safetensors.numpy import load_file

    out: dict[str, object] = {}
    for node in sorted(p for p in store.glob("*/*") if (p / "completions").is_dir()):
        name = f"{node.parent.name}/{node.name}"
        for f in sorted(node.glob("*.h5")):
            if f.name in ("distances.h5", "embeddings.h5"):  # virtual views of the blocks
                continue
            for ds, arr in h5_arrays(f).items():
                out[f"{name}/{f.name}/{ds}"] = arr
        for f in sorted(node.glob("*.parquet")):
            out[f"{name}/{f.name}"] = pq.read_table(f).to_pydict()
        if (node / "metrics.jsonl").exists():
            steps = [json.loads(line) for line in (node / "metrics.jsonl").read_text().splitlines() if line]
            out[f"{name}/loss_curve"] = np.asarray([[s["step"], s["loss"], s["lr"], s["grad_norm"]] for s in steps])
        if (node / "snapshots.json").exists():
            snaps = json.loads((node / "snapshots.json").read_text())
            out[f"{name}/snapshot_steps"] = [s["step"] for s in snaps]
            last = node / snaps[-1]["path"]
            for w in sorted(last.glob("*.safetensors")):
                for t, arr in load_file(str(w)).items():
                    out[f"{name}/final_weights/{t}"] = arr
    return out


def differences(ref: dict, got: dict) -> list[str]:
    diffs = [f"missing {k}" for k in ref if k not in got] + [f"extra {k}" for k in got if k not in ref]
    for k in ref.keys() & got.keys():
        a, b = ref[k], got[k]
        if isinstance(a, np.ndarray):
            same = a.shape == b.shape and (np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
                                           if a.dtype.kind in "fc" else np.array_equal(a, b))
            if not same:
                gap = float(np.nanmax(np.abs(a.astype(float) - b.astype(float)))) if a.shape == b.shape \
                    and a.dtype.kind in "fiu" else None
                diffs.append(f"{k} differs (max abs {gap})")
        elif a != b:
            diffs.append(f"{k} differs")
    return sorted(diffs)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hpcgen-kill-trials"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kill_trials.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)

    ref_dir = args.work / "reference"
    if not (ref_dir / "done").exists():
        ref_dir.mkdir(exist_ok=True)
        (ref_dir / "exp.yaml").write_text(EXPERIMENT)
        t0 = time.monotonic()
        assert submit(ref_dir).wait() == 0, (ref_dir / "submit.log").read_text()[-2000:]
        (ref_dir / "done").write_text(f"{time.monotonic() - t0:.1f}")
    duration = float((ref_dir / "done").read_text())
    reference = science(ref_dir / "out" / "store")
    print(f"reference run: {duration:.0f} s, {len(reference)} science arrays", flush=True)

    trials = []
    for n in range(args.trials):
        folder = args.work / f"trial-{n:02d}"
        if folder.exists():
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        folder.mkdir()
        (folder / "exp.yaml").write_text(EXPERIMENT)
        kills = []
        for k in range(1 + n % 2):
            at = rng.uniform(0.03, 0.9) * duration * (1.0 if k == 0 else 0.5)
            proc = submit(folder)
            t0 = time.monotonic()
            while time.monotonic() - t0 < at and proc.poll() is None:
                time.sleep(0.05)
            finished = proc.poll() is not None
            killed = kill_tree(proc) if not finished else 0
            store = folder / "out" / "store"
            bad = check_markers(folder)
            kills.append({"after_s": round(time.monotonic() - t0, 2), "finished_before_kill": finished,
                          "processes_killed": killed, "running_at_kill": running_tasks(store),
                          "complete_tasks": len(list(store.glob("*/*/completions/*.json"))),
                          "partial_marked_complete": bad})
        t0 = time.monotonic()
        code = submit(folder).wait()
        resume_s = time.monotonic() - t0
        diffs = differences(reference, science(folder / "out" / "store")) if code == 0 else ["resubmit failed"]
        bad_after = check_markers(folder)
        trial = {"trial": n, "kills": kills, "resubmit_exit": code, "resubmit_s": round(resume_s, 1),
                 "identical": code == 0 and not diffs, "differences": diffs[:20],
                 "partial_marked_complete": sum(len(k["partial_marked_complete"]) for k in kills) + len(bad_after)}
        trials.append(trial)
        print(json.dumps({k: trial[k] for k in ("trial", "identical", "partial_marked_complete", "resubmit_s")}
                         | {"killed_at": [k["after_s"] for k in kills],
                            "running": [k["running_at_kill"] for k in kills]}), flush=True)
        if trial["identical"] and trial["partial_marked_complete"] == 0:
            subprocess.run(["rm", "-rf", str(folder / "out")], check=False)
        result = {
            "benchmark": "kill_trials", "machine": {"cpu": cpu_model(),
                                                    "cores": os.cpu_count(), "python": platform.python_version()},
            "experiment": EXPERIMENT, "reference_s": round(duration, 1), "science_arrays": len(reference),
            "trials": len(trials), "identical": sum(t["identical"] for t in trials),
            "partial_marked_complete": sum(t["partial_marked_complete"] for t in trials),
            "kills": sum(len(t["kills"]) for t in trials), "per_trial": trials,
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['identical']}/{result['trials']} identical, {result['partial_marked_complete']} partial outputs "
          f"marked complete, {result['kills']} kills")


if __name__ == "__main__":
    main()
