"""Similarity stage on CPU: compute rate against the machine's own GEMM, top-K against FAISS,
HDF5 write against the disk.

    python benchmarks/bench_similarity.py                 # 200,000 x 1,121 x 384 (targets: >= 70 % of
                                                          # GEMM without the matrix, top-K at least
                                                          # FAISS's knn, HDF5 write >= 50 % of disk)
    python benchmarks/bench_similarity.py --rows 1000000  # peak memory stays bounded by the block

Embeddings are random unit vectors written as an embed shard, so the stage's own reader is used.
Each measurement runs in a fresh process; peak memory is that process's max RSS. Rates are
compared in one process, the runs interleaved (GEMM, stage, stage, GEMM, ...) with a pause
before each and the best of each kept, so a busy neighbour on a shared machine slows both sides
alike.

FAISS (``pip install faiss-cpu``, the ``bench`` extra) runs ``faiss.knn`` with the same threads
and k on the same unit vectors (inner product, the negated cosine distance). Its wheel bundles
its own OpenBLAS, which picks its kernels from the CPU it sees; it runs once as installed and
once with ``OPENBLAS_CORETYPE`` naming the machine's best kernel, and its faster run counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from hpcgen.similarity.h5 import EmbeddingSet, shard_name
from hpcgen.similarity.xp import array_module
from hpcgen.stages.similarity import SimilarityConfig, compute_block


def make_embeddings(folder: Path, n_train: int, n_test: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    n = n_train + n_test
    with h5py.File(folder / shard_name(0), "w") as f:
        dset = f.create_dataset("embeddings", shape=(n, dim), dtype="float32", chunks=(4096, dim))
        for lo in range(0, n, 100_000):
            hi = min(n, lo + 100_000)
            x = rng.normal(size=(hi - lo, dim)).astype(np.float32)
            dset[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
        f.create_dataset("split", data=["train"] * n_train + ["test"] * n_test, dtype=h5py.string_dtype())
        f.create_dataset("ids", data=[str(i) for i in range(n)], dtype=h5py.string_dtype())
        f.attrs.update({"dim": dim, "model": "random", "normalized": True, "row_start": 0, "row_end": n})


def fsync_dir_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_rate(path: Path, nbytes: int) -> float:
    """Sequential write of nbytes (64 MiB blocks, fsync at the end): bytes per second."""
    block = np.random.default_rng(1).integers(0, 255, 64 << 20, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        written = 0
        while written < nbytes:
            fh.write(block)
            written += len(block)
        fh.flush()
        os.fsync(fh.fileno())
    rate = written / (time.perf_counter() - t0)
    path.unlink()
    return rate


def hdf5_rate(path: Path, n: int, m: int, chunk: int) -> float:
    """The stage's own way of writing a distance matrix (row blocks, chunked, uncompressed)."""
    block = np.random.default_rng(2).random((chunk, m), dtype=np.float32)
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("cosine", shape=(n, m), dtype="float32", chunks=(min(chunk, 934), m))
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            dset[lo:hi] = block[: hi - lo]
    fsync_dir_file(path)
    rate = n * m * 4 / (time.perf_counter() - t0)
    path.unlink()
    return rate


def gemm_seconds(n: int, m: int, d: int, chunk: int, repeats: int = 2) -> float:
    """numpy float32 matmul of the same shapes, in the same row chunks (best of ``repeats``)."""
    rng = np.random.default_rng(3)
    a = rng.random((chunk, d), dtype=np.float32)
    b_t = np.ascontiguousarray(rng.random((m, d), dtype=np.float32).T)
    out = np.empty((chunk, m), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for lo in range(0, n, chunk):
            rows = min(chunk, n - lo)
            np.matmul(a[:rows], b_t, out=out[:rows])
        best = min(best, time.perf_counter() - t0)
    return best


def similarity_seconds(folder: Path, n_train: int, store: bool, chunk: int) -> tuple[float, int]:
    emb = EmbeddingSet(folder, 1)
    cfg = SimilarityConfig(store_matrix=store, chunk_rows=chunk, topk=32)
    out = folder / "block.h5"
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f:
        compute_block(emb, f, 0, n_train, cfg, array_module("numpy"))
    fsync_dir_file(out)
    elapsed = time.perf_counter() - t0
    size = out.stat().st_size
    out.unlink()
    return elapsed, size


def interleaved(fns: dict, repeats: int, pause: float = 0.2) -> dict[str, list[float]]:
    """Seconds of every function, run in turn ``repeats`` times, the order reversed every other
    round and a pause before each run: idle thread pools (OpenMP's, OpenBLAS's) spin for a
    while after a call, and neither side should start while the other's threads still spin."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            time.sleep(pause)
            times[name].append(fns[name]())
    return times


def unit_vectors(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    emb = EmbeddingSet(folder, 1)
    return emb.train(0, emb.n_train), emb.test()


def topk_child(folder: Path, k: int, threads: int, repeats: int) -> dict:
    """hpcgen's top-K (``kernels.nearest``) and FAISS's ``knn`` in one process, interleaved."""
    import faiss

    from hpcgen.similarity.kernels import HeldOut, nearest

    train, test = unit_vectors(folder)
    faiss.omp_set_num_threads(threads)
    held = HeldOut.build(np, test)
    got: dict = {}

    def ours() -> float:
        t0 = time.perf_counter()
        got["ours"] = nearest(np, train, held, k)
        return time.perf_counter() - t0

    def theirs() -> float:
        t0 = time.perf_counter()
        got["faiss"] = faiss.knn(test, train, k, faiss.METRIC_INNER_PRODUCT)
        return time.perf_counter() - t0

    times = interleaved({"hpcgen": ours, "faiss": theirs}, repeats)
    (_, dist), (ip, _) = got["ours"], got["faiss"]
    # FAISS's inner products are the negated cosine distances; ties may order ids differently,
    # so the distances are compared, to float32 rounding of a 384-term dot product
    agree = float(np.abs(dist + ip.T).max())
    import threadpoolctl

    blas = [f"{i['internal_api']} {i['version']} {i.get('architecture')}" for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and "faiss" in i["filepath"]]
    return {**times, "max_abs_distance_difference": agree, "faiss_blas": blas}


def compute_child(args, folder: Path) -> dict:
    """The in-run GEMM rate and the stage without the matrix, interleaved."""
    def gemm() -> float:
        return gemm_seconds(args.rows, args.test, args.dim, args.chunk, repeats=1)

    def stage() -> float:
        return similarity_seconds(folder, args.rows, False, args.chunk)[0]

    times = interleaved({"gemm": gemm, "stage": stage}, args.repeats)
    return {**times, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child(args) -> None:
    folder = Path(args.folder)
    if args.what == "compute":
        print(json.dumps(compute_child(args, folder)))
    elif args.what == "topk":
        print(json.dumps(topk_child(folder, 32, args.threads, args.repeats)))
    else:
        seconds, size = similarity_seconds(folder, args.rows, args.what == "similarity", args.chunk)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"seconds": seconds, "bytes_written": size, "peak_rss_bytes": peak}))


def run_child(what: str, args, folder: Path, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--folder", str(folder), "--rows", str(args.rows),
           "--test", str(args.test), "--dim", str(args.dim), "--chunk", str(args.chunk),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_kernel() -> str:
    """OpenBLAS's name for this CPU's best kernel set (for FAISS's bundled OpenBLAS)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if " avx512f" in flags:
        return "SkylakeX"
    return "Haswell" if " avx2" in flags else "Prescott"


def faiss_runs(args, folder: Path) -> dict | None:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None
    runs = {"as installed": run_child("topk", args, folder),
            f"OPENBLAS_CORETYPE={best_kernel()}": run_child("topk", args, folder,
                                                            {"OPENBLAS_CORETYPE": best_kernel()})}
    best = min(runs, key=lambda name: min(runs[name]["faiss"]))
    return {"runs": runs, "faiss_best": best}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--test", type=int, default=1121)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=15, help="interleaved runs of each side; the best counts")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS's OpenMP threads")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    p.add_argument("--child")
    p.add_argument("--folder")
    args = p.parse_args()
    if args.child:
        args.what = args.child
        return child(args)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        folder = Path(tmp)
        make_embeddings(folder, args.rows, args.test, args.dim)
        flops = 2.0 * args.rows * args.test * args.dim
        matrix_bytes = args.rows * args.test * 4
        compute = run_child("compute", args, folder)
        topk = faiss_runs(args, folder)
        full = run_child("similarity", args, folder)
        disk = disk_rate(folder / "disk.bin", matrix_bytes)
        h5 = hdf5_rate(folder / "h5.h5", args.rows, args.test, args.chunk)
    gemm, no_store = min(compute["gemm"]), min(compute["stage"])
    result = {
        "shape": [args.rows, args.test, args.dim], "chunk_rows": args.chunk, "repeats": args.repeats,
        "gemm_s": round(gemm, 3), "gemm_gflops": round(flops / gemm / 1e9, 1),
        "similarity_without_matrix_s": round(no_store, 3),
        "similarity_without_matrix_gflops": round(flops / no_store / 1e9, 1),
        "similarity_without_matrix_vs_gemm": round(gemm / no_store, 3),
        # the same ratio run by run (GEMM and stage back to back): how much the machine's noise moves it
        "similarity_without_matrix_vs_gemm_per_run": [round(g / t, 3) for g, t in zip(compute["gemm"],
                                                                                     compute["stage"])],
        "similarity_without_matrix_vs_gemm_per_run_median": round(statistics.median(
            g / t for g, t in zip(compute["gemm"], compute["stage"])), 3),
        "similarity_with_matrix_s": round(full["seconds"], 2),
        "similarity_with_matrix_vs_gemm": round(gemm / full["seconds"], 3),
        "disk_seq_write_MBps": round(disk / 1e6), "hdf5_write_MBps": round(h5 / 1e6),
        "hdf5_vs_disk": round(h5 / disk, 3),
        # the stage's own write rate: the matrix bytes over the time that storing them added
        "stage_write_MBps": round(matrix_bytes / max(full["seconds"] - no_store, 1e-9) / 1e6),
        "stage_write_vs_disk": round(matrix_bytes / max(full["seconds"] - no_store, 1e-9) / disk, 3),
        "matrix_MB": round(matrix_bytes / 1e6),
        "peak_rss_MB": {"without_matrix": round(compute["peak_rss_bytes"] / 1e6),
                        "with_matrix": round(full["peak_rss_bytes"] / 1e6)},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, Python "
                   f"{platform.python_version()}",
    }
    if topk is not None:
        best = topk["runs"][topk["faiss_best"]]
        result.update({
            "topk_k": 32, "topk_threads": args.threads,
            "topk_hpcgen_s": round(min(best["hpcgen"]), 3), "topk_faiss_s": round(min(best["faiss"]), 3),
            "topk_vs_faiss": round(min(best["faiss"]) / min(best["hpcgen"]), 3),
            "topk_faiss_runs": {name: {"faiss_s": round(min(r["faiss"]), 3), "hpcgen_s": round(min(r["hpcgen"]), 3),
                                       "faiss_blas": r["faiss_blas"],
                                       "max_abs_distance_difference": r["max_abs_distance_difference"]}
                                for name, r in topk["runs"].items()},
            "topk_faiss_best": topk["faiss_best"],
        })
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
