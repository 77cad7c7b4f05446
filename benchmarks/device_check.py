"""The GPU device check (run through benchmarks/device_check.sh): one JSON of what only a GPU shows.

Every section runs in its own try block and records its figures or its error, so one failing
part does not hide the others. Sizes are chosen to finish in about 6 minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: dense bf16 tensor-core peaks (FLOP/s, SXM parts) for the MFU
PEAKS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAKS.items() if k in name), None)


def section(results: dict, name: str):
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            results[name] = {"status": "ok", **fn()}
        except Exception as exc:  # recorded, and the next section runs
            results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-3000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(json.dumps({name: {k: v for k, v in results[name].items() if k != "traceback"}}), flush=True)
        return fn
    return wrap


def similarity() -> dict:
    """CuPy against NumPy on the same rows (<= 1e-4), and the stage's block pass against the bare
    cuBLAS GEMM of the same shapes (200,000 x 1,121 x 384, as the CPU benchmark)."""
    import cupy as cp

    from hpcgen.similarity.kernels import HeldOut, TopK, block_distances, distance_pass, nearest

    rng = np.random.default_rng(0)
    n, m, d, chunk, k = 200_000, 1_121, 384, 32_768, 32
    train = rng.standard_normal((n, d), dtype=np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    test = rng.standard_normal((m, d), dtype=np.float32)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    g_train = cp.asarray(train)
    held = HeldOut.build(cp, test)
    buf = cp.empty((chunk, m), dtype=cp.float32)

    def stage_pass():  # the similarity stage's own loop: the fused pass, then top-K on its candidates
        top = TopK(cp, k, m)
        for lo in range(0, n, chunk):
            dist, agg, flat = distance_pass(cp, g_train[lo:lo + chunk], held, "cosine", True,
                                            out=buf[:min(chunk, n - lo)], threshold=top.threshold())
            top.update(dist, lo, flat)
        index, dist = top.result()
        cp.cuda.Device().synchronize()
        return index, dist

    def topk_pass():
        out = nearest(cp, g_train, held, k, chunk_rows=chunk)
        cp.cuda.Device().synchronize()
        return out

    def gemm_pass():
        for lo in range(0, n, chunk):
            cp.matmul(g_train[lo:lo + chunk], held.neg_unit_t, out=buf[:min(chunk, n - lo)])
        cp.cuda.Device().synchronize()

    stage_pass(), gemm_pass(), topk_pass()  # warm-up: kernels compiled, memory pool filled
    t0 = time.perf_counter()
    index, dist = stage_pass()
    t_stage = time.perf_counter() - t0
    t0 = time.perf_counter()
    topk_pass()
    t_topk = time.perf_counter() - t0
    t0 = time.perf_counter()
    gemm_pass()
    t_gemm = time.perf_counter() - t0
    # the same rows on NumPy
    rows = 20_000
    np_held = HeldOut.build(np, test)
    d_np, agg_np = block_distances(np, train[:rows], np_held, "cosine", True)
    d_cp, agg_cp = block_distances(cp, g_train[:rows], held, "cosine", True)
    top_np, top_cp = TopK(np, k, m), TopK(cp, k, m)
    top_np.update(d_np, 0)
    top_cp.update(d_cp, 0)
    (_, dn), (_, dc) = top_np.result(), top_cp.result()
    return {"rows": n, "test": m, "dim": d, "stage_s": round(t_stage, 4), "gemm_s": round(t_gemm, 4),
            "stage_vs_gemm": round(t_gemm / t_stage, 3), "topk_s": round(t_topk, 4),
            "topk_vs_gemm": round(t_gemm / t_topk, 3), "stage_rows_per_s": round(n / t_stage),
            "gemm_tflops": round(2 * n * m * d / t_gemm / 1e12, 1),
            "max_abs_diff_vs_numpy": float(np.abs(cp.asnumpy(d_cp) - d_np).max()),
            "max_abs_diff_aggregates": max(float(np.abs(cp.asnumpy(agg_cp[a]) - agg_np[a]).max()) for a in agg_np),
            "max_abs_diff_topk_distances": float(np.abs(cp.asnumpy(dc) - dn).max()),
            "within_1e-4": bool(np.abs(cp.asnumpy(d_cp) - d_np).max() <= 1e-4)}


def tma() -> dict:
    """Full TMA on 1,000,000 x 1,121 x 384 (bench_tma.py's clustered embeddings) with its refill
    passes on CuPy (GEMM and candidate test on the GPU, the rounds on the CPU) against the same
    run on NumPy, and the rounds of both compared (the distances differ in the last bits between
    cuBLAS and OpenBLAS, so a near-tie may fall the other way: the share that agrees is recorded)."""
    import cupy as cp

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_tma import embeddings

    from hpcgen.arrangements.tma import TMAStats, tma_rounds
    from hpcgen.similarity.kernels import HeldOut
    from hpcgen.stages.arrange import EmbeddingDistances

    n, m, dim = 1_000_000, 1_121, 384
    train, test = embeddings(n, m, dim)
    out: dict = {"rows": n, "test": m, "dim": dim}
    g_train = cp.asarray(train)
    g_held = HeldOut.build(cp, test)
    # GEMM pass over the full product on the GPU, the same blocks (warm-up first)
    buf = cp.empty((4096, m), dtype=cp.float32)
    for _ in range(2):
        t0 = time.perf_counter()
        for lo in range(0, n, 4096):
            cp.matmul(g_train[lo:lo + 4096], g_held.neg_unit_t, out=buf[:min(4096, n - lo)])
        cp.cuda.Device().synchronize()
        out["gpu_gemm_pass_s"] = round(time.perf_counter() - t0, 3)
    rounds = {}
    for name, source in (("cupy", EmbeddingDistances(g_train, g_held, "cosine", True, cp)),
                         ("numpy", EmbeddingDistances(train, HeldOut.build(np, test), "cosine", True))):
        stats = TMAStats()
        t0 = time.perf_counter()
        rounds[name] = tma_rounds(source, stats=stats)
        out[f"{name}_s"] = round(time.perf_counter() - t0, 2)
        out[f"{name}_pass_s"] = round(stats.pass_seconds, 2)
        out[f"{name}_rounds"] = stats.rounds
    out["gpu_speedup"] = round(out["numpy_s"] / out["cupy_s"], 2)
    out["rounds_agree"] = round(float((rounds["cupy"] == rounds["numpy"]).mean()), 6)
    return out


def embedding() -> dict:
    """all-MiniLM-L6-v2 in fp16 on the GPU over NIV2 texts (sentence-transformers' own batching)."""
    from hpcgen.stages.embed import EmbedConfig, encode

    texts = []
    for path in sorted(glob.glob(str(ROOT / "examples" / "data" / "niv2-sample" / "tasks" / "*.json"))):
        task = json.loads(Path(path).read_text())
        texts += [f"{task['Definition'][0]} {i['input']} {i['output'][0]}" for i in task["Instances"]]
    texts = (texts * (20_000 // max(1, len(texts)) + 1))[:20_000]
    cfg = EmbedConfig(device="cuda", batch_size=256, max_seq_length=256)
    encode(texts[:512], cfg)  # warm-up
    t0 = time.perf_counter()
    emb, attrs = encode(texts, cfg)
    seconds = time.perf_counter() - t0
    return {"texts": len(texts), "texts_per_s": round(len(texts) / seconds, 1), "dtype": "float16",
            "max_seq_length": 256, "batch_size": 256, "dim": int(emb.shape[1])}


def training(work: Path) -> dict:
    """A ~1B-parameter LLaMA from random init, DeepSpeed ZeRO-3 in bf16 on one rank through
    hpcgen's own setup, optimizer and snapshot code; then its snapshot, resumable save and
    evaluation throughput."""
    import deepspeed
    import torch

    from hpcgen.stages.evaluate import per_sample_loss
    from hpcgen.stages.train import TrainConfig
    from hpcgen.training.data import Encoded
    from hpcgen.training.loop import (
        SnapshotWriter,
        deepspeed_config,
        make_optimizer,
        save_resumable,
        save_snapshot,
        setup_distributed,
    )
    from hpcgen.training.model import build_model
    from hpcgen.training.tokenizer import char_tokenizer

    seq, micro = 2048, 8
    cfg = TrainConfig(architecture="llama", hidden=2048, layers=16, heads=16, intermediate=5632, vocab_size=32000,
                      max_length=seq, micro_batch=micro, global_batch=micro, deepspeed="zero3", precision="bf16",
                      lr=1e-4, warmup_steps=0)
    device = setup_distributed(0, 1)
    ds_config = deepspeed_config(cfg, micro, 1, 1, device)
    model = build_model(cfg, 32000, 0, 1, 2, ds_config)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    optimizer = make_optimizer(model, cfg, ds_config, device)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    batch = torch.randint(3, 32000, (micro, seq), device=engine.device)

    def step():
        out = engine(input_ids=batch, labels=batch)
        engine.backward(out.loss)
        engine.step()
        return out.loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    steps = 10
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens_per_s = steps * micro * seq / seconds
    flops_per_token = 6 * n_params + 12 * cfg.layers * cfg.hidden * seq  # weights plus attention (PaLM, B.1)
    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    out = {"parameters": n_params, "seq": seq, "micro_batch": micro, "zero_stage": 3, "bf16": True,
           "optimizer": type(optimizer).__name__, "tokens_per_s": round(tokens_per_s, 1),
           "mfu": round(tokens_per_s * flops_per_token / peak, 4) if peak else None, "peak_flops": peak,
           "loss_last": float(loss), "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1),
           "anchors": "llm-foundry on 8x H100: 1B 41.8 % MFU, 7B 46.4 %"}
    tok = char_tokenizer(["abcdefghij"])
    writer = SnapshotWriter()
    t0 = time.perf_counter()
    save_snapshot(engine, tok, work / "snapshots" / "step-000013", 13, {"items_seen": 0, "loss": 0.0}, 0, writer)
    out["snapshot_gather_s"] = round(time.perf_counter() - t0, 2)  # what the GPUs wait for
    writer.close()
    out["snapshot_total_s"] = round(time.perf_counter() - t0, 2)
    out["snapshot_bytes"] = sum(p.stat().st_size for p in (work / "snapshots" / "step-000013").rglob("*"))
    t0 = time.perf_counter()
    save_resumable(engine, work / "resume", 13, 1, 0)
    out["resume_save_s"] = round(time.perf_counter() - t0, 2)
    out["resume_bytes"] = sum(p.stat().st_size for p in (work / "resume").rglob("*") if p.is_file())
    engine = optimizer = model = None  # free the GPU for the evaluation below
    torch.cuda.empty_cache()
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    snap = AutoModelForCausalLM.from_pretrained(work / "snapshots" / "step-000013", torch_dtype=torch.bfloat16)
    snap = snap.to("cuda")
    out["eval_load_s"] = round(time.perf_counter() - t0, 2)
    rng = np.random.default_rng(0)
    records = 512
    enc = Encoded(ids=[rng.integers(3, 32000, 512).tolist() for _ in range(records)], n_prompt=[384] * records,
                  too_long=[])
    per_sample_loss(snap, Encoded(enc.ids[:32], enc.n_prompt[:32], []), 0, 32, "cuda")  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    per_sample_loss(snap, enc, 0, 32, "cuda")
    torch.cuda.synchronize()
    out["eval_records_per_s"] = round(records / (time.perf_counter() - t0), 1)
    out["eval_record_tokens"] = 512
    return out


TWO_RANKS = r"""
import json, os, sys, torch
rank = int(sys.argv[1])
os.environ.update({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank),
                   "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
                   "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": sys.argv[2]})
from hpcgen.training.loop import Preemption, setup_distributed, step_stats
import torch.distributed as dist
device = setup_distributed(rank, 2)
dev = torch.device("cuda", torch.cuda.current_device())
stats = step_stats(torch.tensor(float(rank + 1), device=dev), 10 * (rank + 1), dev, 2).tolist()
agreed = Preemption().agreed(2, dev)
dist.barrier()
print(json.dumps({"rank": rank, "device": str(dev), "stats": stats, "agreed": agreed}))
"""


def two_ranks() -> dict:
    """The collectives of the training loop (step statistics, the preemption vote, barriers) on
    NCCL with two processes, one GPU each, through setup_distributed: needs two GPUs (NCCL does
    not run two ranks on one GPU)."""
    import socket
    import subprocess
    import sys

    import torch

    if torch.cuda.device_count() < 2:
        return {"status_detail": f"skipped: {torch.cuda.device_count()} GPU visible, NCCL needs one per rank"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, "-c", TWO_RANKS, str(r), port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=180) for p in procs]
    ranks = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs if o.strip()]
    ok = len(ranks) == 2 and all(r["stats"] == [1.5, 30.0] and r["device"] == f"cuda:{r['rank']}" for r in ranks)
    return {"ranks": ranks, "correct": ok, "stderr_tail": [e[-500:] for _, e in outs] if not ok else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "device_check.json")
    args = ap.parse_args()
    import torch

    results: dict = {"device": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(),
                     "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        section(results, "similarity")(similarity)
        section(results, "tma")(tma)
        section(results, "embedding")(embedding)
        section(results, "training")(lambda: training(Path(tmp)))
        section(results, "two_ranks")(two_ranks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"device check: written to {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
