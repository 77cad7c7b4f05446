"""Full TMA (all rounds) for 1,000,000 training x 1,121 test items, 384-d. Targets: at most 1.5
times one GEMM pass over the full product (1,000,000 x 384 by 384 x 1,121, the same blocks,
measured in the same process before and after TMA, the faster counted), and <= 2 GiB peak memory,
on a 2-core CPU.

    python benchmarks/bench_tma.py [--rows N] [--out benchmarks/results/tma_1m.json]

Embeddings: unit vectors around 1,000 random task centres (training) and test items near some of
them, so test items compete for the same nearest training items as they do on real data. The
distances are recomputed from the embeddings inside TMA (the similarity stage's kernel), so the
time includes all distance computation. Runs in a child process; peak memory is its max RSS,
embeddings included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def embeddings(n: int, m: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    train = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 20_000):  # float32 and small chunks: the generator's temporaries stay small
        hi = min(n, lo + 20_000)
        noise = rng.standard_normal(size=(hi - lo, dim), dtype=np.float32)
        noise *= 0.8
        noise += centres[rng.integers(0, 1000, hi - lo)]
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        train[lo:hi] = noise
    test = centres[rng.integers(0, 1000, m)] + 0.8 * rng.normal(size=(m, dim)).astype(np.float32)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    return train, test.astype(np.float32)


def gemm_pass(train: np.ndarray, neg_unit_t: np.ndarray, block_rows: int) -> float:
    """One GEMM pass over the full product, in TMA's blocks, NumPy's BLAS on all its threads."""
    out = np.empty((block_rows, neg_unit_t.shape[1]), dtype=np.float32)
    t0 = time.perf_counter()
    for lo in range(0, len(train), block_rows):
        rows = train[lo:lo + block_rows]
        np.matmul(rows, neg_unit_t, out=out[: len(rows)])
    return time.perf_counter() - t0


def child(n: int, m: int, dim: int) -> None:
    from hpcgen.arrangements.tma import TMAStats, order_from_rounds, tma_rounds
    from hpcgen.similarity.kernels import HeldOut
    from hpcgen.stages.arrange import EmbeddingDistances

    train, test = embeddings(n, m, dim)
    held = HeldOut.build(np, test)
    gemm = [gemm_pass(train, held.neg_unit_t, 4096)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    stats = TMAStats()
    source = EmbeddingDistances(train, held, "cosine", True)
    round_of = tma_rounds(source, stats=stats)
    order = order_from_rounds(round_of)
    elapsed = time.perf_counter() - t0
    assert np.array_equal(np.sort(order), np.arange(n))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gemm.append(gemm_pass(train, held.neg_unit_t, 4096))
    print(json.dumps({"seconds": round(elapsed, 2), "gemm_pass_s": round(min(gemm), 2),
                      "gemm_pass_runs_s": [round(g, 2) for g in gemm],
                      "seconds_vs_gemm_pass": round(elapsed / min(gemm), 3),
                      "rounds": stats.rounds, "passes": stats.passes,
                      "rows_scanned": stats.rows_scanned, "dense_from_round": stats.dense_from_round,
                      "max_list": stats.max_list, "pass_s": round(stats.pass_seconds, 2),
                      "dense_tail_s": round(stats.dense_seconds, 2),
                      "rounds_loop_s": round(stats.seconds - stats.pass_seconds - stats.dense_seconds, 2),
                      "embeddings_MB": round(train.nbytes / 1e6), "rss_before_tma_MB": round(rss_before),
                      "peak_rss_MB": round(peak)}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--test", type=int, default=1121)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--out", type=Path, help="write the JSON here too")
    p.add_argument("--child", action="store_true")
    args = p.parse_args()
    if args.child:
        return child(args.rows, args.test, args.dim)
    out = subprocess.run([sys.executable, __file__, "--child", "--rows", str(args.rows), "--test", str(args.test),
                          "--dim", str(args.dim)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(shape=[args.rows, args.test, args.dim],
                  machine=f"{platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
                          f"Python {platform.python_version()}")
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
