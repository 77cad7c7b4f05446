"""``hpcgen arrange`` end to end on 100,000 training x 1,000 test records of text.

    python benchmarks/bench_arrange.py [--train 100000] [--test 1000] [--reference 10000] [--note TEXT]

The records are made from real text: the sentences of the bundled NIV2 sample
(``examples/data/niv2-sample``), training records from its 90 training tasks and test records
from its 20 test tasks, each record one to three sentences drawn with a fixed seed (about the
length of an NIV2 instance). The benchmark runs ``python -m hpcgen arrange TRAIN TEST -o OUT``
with a fresh store (what a user's first call costs), reads each task's duration from the
store's completion markers, runs the same command again (a second call with the same inputs),
and times sentence-transformers' own ``encode`` on a random sample of the same texts with the
same model, batch size, sequence length and threads, for the embedding's texts/s against it.
Writes ``benchmarks/results/arrange_100k.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "arrange_100k.json"
NIV2 = ROOT / "examples" / "data" / "niv2-sample"
sys.path.insert(0, str(ROOT / "benchmarks"))
from default_experiment import durations, machine  # noqa: E402


def sentences(tasks: list[str]) -> list[str]:
    out = []
    for name in tasks:
        data = json.loads((NIV2 / "tasks" / f"{name}.json").read_text())
        for inst in data["Instances"]:
            for text in (inst["input"], *inst["output"]):
                out += [s.strip() for s in re.split(r"(?<=[.?!])\s+|\n+", text) if len(s.strip()) > 3]
    return list(dict.fromkeys(out))


def make_records(pool: list[str], n: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.choice((1, 2, 2, 3))
        prompt = " ".join(rng.choice(pool) for _ in range(k))[:400]
        rows.append({"id": f"{prefix}{i}", "prompt": prompt, "answer": rng.choice(pool)[:120]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def reference_rate(texts: list[str], threads: int, batch_size: int, max_seq_length: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from hpcgen.similarity.model import DEFAULT_MODEL, resolve_model

    torch.set_num_threads(threads)
    model = SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu")
    model.max_seq_length = max_seq_length
    model.encode(texts[:256], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch_size)
    dt = time.perf_counter() - t0
    return {"texts": len(texts), "seconds": round(dt, 1), "texts_per_s": round(len(texts) / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--test", type=int, default=1_000)
    ap.add_argument("--reference", type=int, default=10_000, help="texts in sentence-transformers' own timing")
    ap.add_argument("--strategy", default="tma")
    ap.add_argument("--note", default="nothing else running", help="what else ran on the machine")
    ap.add_argument("--out", type=Path, help="result file (default benchmarks/results/arrange_100k.json)")
    args = ap.parse_args()
    from hpcgen.stages.embed import EmbedConfig

    splits = (NIV2 / "splits" / "default")
    train_tasks = (splits / "train_tasks.txt").read_text().split()
    test_tasks = (splits / "test_tasks.txt").read_text().split()
    work = Path(tempfile.mkdtemp(prefix="hpcgen-arrange-bench-"))
    train = make_records(sentences(train_tasks), args.train, 1, "t")
    test = make_records(sentences(test_tasks), args.test, 2, "e")
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "test.jsonl", test)
    store, out = work / "store", work / "arranged.jsonl"
    cmd = [sys.executable, "-m", "hpcgen", "arrange", str(work / "train.jsonl"), str(work / "test.jsonl"),
           "-o", str(out), "--strategy", args.strategy, "--store", str(store)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    first = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"hpcgen arrange failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    t0 = time.perf_counter()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    second = time.perf_counter() - t0
    assert again.returncode == 0, again.stderr[-2000:]
    per_stage = {k: round(sum(v), 1) for k, v in durations(store / "store").items()}
    sidecar = json.loads((work / "arranged.jsonl.hpcgen.json").read_text())
    cfg = EmbedConfig()
    threads = os.cpu_count() or 1
    sample = random.Random(3).sample([f"{r['prompt']} {r['answer']}" for r in train + test], args.reference)
    ref = reference_rate(sample, threads, cfg.batch_size, sidecar["model"].get("max_seq_length", 256))
    texts = args.train + args.test
    embed_rate = texts / per_stage["embed"]
    outside = first - sum(per_stage.values())
    result = {
        "what": f"python -m hpcgen arrange TRAIN TEST -o OUT --strategy {args.strategy}, fresh store, "
                "local executor, defaults otherwise",
        "script": "benchmarks/bench_arrange.py",
        "machine": machine(),
        "date": date.today().isoformat(),
        "note": args.note,
        "load_average_before": [round(x, 2) for x in load_before],
        "records": {"train": args.train, "test": args.test,
                    "mean_chars": round(sum(len(r["prompt"]) + len(r["answer"]) + 1 for r in train) / len(train), 1)},
        "model": sidecar["model"].get("model"),
        "max_seq_length": sidecar["model"].get("max_seq_length"),
        "batch_size": cfg.batch_size,
        "wall_s": round(first, 1),
        "stage_task_s": per_stage,
        "outside_tasks_s": round(outside, 1),
        "shares": {k: round(v / first, 3) for k, v in per_stage.items()},
        "arrangement_share": round((per_stage.get("similarity", 0) + per_stage.get("arrange", 0)) / first, 3),
        "embed_texts_per_s": round(embed_rate, 1),
        "sentence_transformers_reference": {**ref, "threads": threads},
        "embed_vs_reference": round(embed_rate / ref["texts_per_s"], 3),
        "rounds": sidecar.get("rounds"),
        "second_call_s": round(second, 2),
    }
    path = args.out or RESULT
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
