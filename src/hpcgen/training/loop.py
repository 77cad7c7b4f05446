"""The training loop, top to bottom: distributed setup, tokenizer, data in the arranged order,
model, DeepSpeed, then steps with metrics, evaluation snapshots and resumable checkpoints.

Files (in the task's work directory, which survives requeues):
    tokenizer/                  saved once by rank 0
    metrics.jsonl               one line per step: loss, lr, grad_norm, tokens/s, items
    encoded-<max_length>.pkl    the token ids of the training records, written once by rank 0
    consumed-rank<R>.jsonl      the training rows each rank consumed at each step
    snapshots/step-NNNNNN/      evaluation snapshots: safetensors weights + config + tokenizer
                                (a LoRA run: PEFT's adapter files + tokenizer), written under
                                a temporary name, renamed, snapshot.json last
    resume/                     DeepSpeed checkpoints (model, optimizer, scheduler) + RNG states,
                                the last ``keep_resumable`` kept (a LoRA run's without the
                                frozen base, which a resumed job loads from train.model again)
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcgen.errors import ConfigError
from hpcgen.training.data import Feed, answer_tokens, batch_sizes, collate, encode, token_weights
from hpcgen.training.dsconfig import load_deepspeed


def setup_distributed(rank: int, world: int, timeout_min: float = 60.0) -> str:
    """torch.distributed through DeepSpeed; 'cpu' or 'cuda'. Several processes meet through
    torch's env:// variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK), which the
    task's runner exported from the scheduler's allocation (hpcgen.pipeline.runner).

    On GPUs every rank of a node sees all of the node's GPUs and binds to its own,
    ``cuda:LOCAL_RANK``, before the process group exists: DeepSpeed then passes that same device
    id to the NCCL group. (Narrowing ``CUDA_VISIBLE_DEVICES`` to one GPU per rank would leave
    ``cuda:LOCAL_RANK`` out of range for every rank but the first once CUDA has counted the
    devices.) ``timeout_min`` is the collective timeout: ranks wait at barriers while rank 0
    writes a snapshot or all load a 7B model from shared storage, which DeepSpeed's default of 10
    minutes does not cover."""
    import datetime

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_method = None
    if world == 1:
        # one process (possibly the caller's own, under the debug executor): no MASTER_PORT in the
        # environment, or jobs started from this process later would inherit it and collide
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            init_method = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    if device == "cuda":
        torch.cuda.set_device(local_device(int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()))
    import deepspeed
    import deepspeed.ops

    if device == "cpu":  # skip building DeepSpeed's shared-memory comm op: gloo does the job
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    backend = "nccl" if device == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_min)
    if init_method is None:
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    else:
        deepspeed.init_distributed(dist_backend=backend, init_method=init_method, rank=0, world_size=1,
                                   auto_mpi_discovery=False, timeout=timeout)
    return device


def local_device(local_rank: int, visible: int) -> int:
    """The GPU index of a rank among the GPUs its process sees; an error that says why when the
    node has fewer GPUs than ranks (tasks_per_node larger than gpus, say)."""
    if not 0 <= local_rank < visible:
        raise ConfigError(f"local rank {local_rank} has no GPU: this process sees {visible} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                          key="train.resources", fix="give every node as many GPUs as tasks_per_node")
    return local_rank


def agreed_by_rank0(value: bool, rank: int, world: int) -> bool:
    """Rank 0's answer, on every rank: a decision that leads into collectives must be the same
    everywhere, and nodes can briefly disagree about files on shared storage."""
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def any_rank(flag: bool, device, world: int) -> bool:
    """True on every rank when ``flag`` is true on any."""
    import torch
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def step_stats(loss, tokens: int, device, world: int):
    """(mean loss over ranks, tokens over ranks) of one step, reduced on the engine's device: a
    NCCL group has no CPU backend, so a CPU tensor here fails the run at its first step."""
    import torch
    import torch.distributed as dist

    stats = torch.stack([loss.detach().to(device=device, dtype=torch.float64),
                         torch.tensor(float(tokens), dtype=torch.float64, device=device)])
    if dist.is_initialized() and world > 1:
        dist.all_reduce(stats)
        stats[0] /= world
    return stats


def lr_lambda(cfg, total_steps: int):
    """Linear warmup, then cosine (or constant) down to min_lr_ratio of the peak."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def deepspeed_config(cfg, micro: int, accumulation: int, world: int, device: str) -> dict:
    ds = load_deepspeed(cfg.deepspeed, cfg.deepspeed_overrides)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device == "cuda")
    ds.update(train_batch_size=micro * accumulation * world, train_micro_batch_size_per_gpu=micro,
              gradient_accumulation_steps=accumulation, gradient_clipping=cfg.grad_clip, bf16={"enabled": bf16})
    return ds


def optimizer_kind(ds_config: dict, device: str) -> str:
    """Which AdamW implementation the step uses (the same update rule in each):
    ``cpu_adam`` when ZeRO keeps the optimizer state off the GPU (the *-offload presets: DeepSpeed
    requires its vectorised CPU Adam there), ``fused_adam`` on a GPU (DeepSpeed's fused CUDA
    kernel, pre-built in the image), ``torch`` on a CPU."""
    offload = (ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none")
    if offload in ("cpu", "nvme"):
        return "cpu_adam"
    return "fused_adam" if device == "cuda" else "torch"


def make_optimizer(model, cfg, ds_config: dict, device: str = "cpu"):
    """AdamW, as ``optimizer_kind`` chooses, over the parameters that train: all of them in full
    fine-tuning, the adapters alone with LoRA (frozen weights would otherwise get AdamW state,
    two fp32 copies of a 7B base model, and weight decay would move them)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=getattr(cfg, "adam_eps", 1e-8),
                  weight_decay=cfg.weight_decay)
    kind = optimizer_kind(ds_config, device)
    if kind == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    if kind == "fused_adam":
        try:  # pre-built in the GPU image; elsewhere compiled at first use, which needs nvcc
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(params, adam_w_mode=True, **kwargs)
        except Exception as exc:  # no pre-built op and no compiler: torch's own fused AdamW
            import logging

            logging.getLogger("hpcgen.training").warning("DeepSpeed's FusedAdam is unavailable (%s); using "
                                                         "torch.optim.AdamW(fused=True)", str(exc).splitlines()[0])
            return torch.optim.AdamW(params, fused=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


#: parameters gathered at once when consolidating a ZeRO-3 snapshot (elements; 512 MB in bf16):
#: the GPUs hold one group of full parameters at a time, never the whole model
GATHER_ELEMENTS = int(os.environ.get("HPCGEN_GATHER_ELEMENTS", 1 << 28))


def gather_weights(engine, rank: int, group_elements: int | None = None,
                   trainable_only: bool = False) -> tuple[dict, int]:
    """The full weights on rank 0's host (pinned memory on a GPU node), parameters gathered group
    by group under ZeRO-3 (and the number of groups); an empty dict on the other ranks, which take
    part in each gather. ``trainable_only``: the parameters that train and no buffers (a LoRA
    run's adapters: the frozen base is never gathered, its copy on disk is the base model)."""
    import deepspeed
    import torch

    group_elements = group_elements or GATHER_ELEMENTS
    model = engine.module
    zero3 = engine.zero_optimization_stage() == 3
    pin = torch.cuda.is_available()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    groups: list[list[tuple[str, torch.nn.Parameter]]] = []
    group: list[tuple[str, torch.nn.Parameter]] = []
    size = 0
    for name, p in named:
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        if group and size + n > group_elements:
            groups.append(group)
            group, size = [], 0
        group.append((name, p))
        size += n
    if group:
        groups.append(group)
    out = {}
    for group in groups:
        ctx = deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=None) if zero3 else _Null()
        with ctx:
            if rank == 0:
                for name, p in group:
                    host = torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin)
                    host.copy_(p.data, non_blocking=pin)
                    out[name] = host
    if pin and rank == 0:
        torch.cuda.synchronize()
    if rank == 0 and not trainable_only:  # persistent buffers are part of the weights too (rotary caches are not)
        saved = set(model.state_dict())
        for name, buf in model.named_buffers():
            if name in saved and name not in out:
                out[name] = buf.detach().to("cpu", copy=True)
    return out, len(groups)


class SnapshotWriter:
    """Writes evaluation snapshots in the background on rank 0 while training goes on: the GPUs
    wait only for the gather, not for 13.5 GB to reach shared storage. One write at a time (the
    next snapshot waits for the previous one); ``close`` waits for the last."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def write(self, model, tokenizer, weights: dict, folder: Path, record: dict) -> None:
        self.wait()

        def run() -> None:
            try:
                tmp = folder.parent / f".tmp-{folder.name}"
                shutil.rmtree(tmp, ignore_errors=True)
                model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
                (tmp / "snapshot.json").write_text(json.dumps(record) + "\n")
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
            except BaseException as exc:  # raised in the training thread by the next wait()
                self.error = exc

        self.thread = threading.Thread(target=run, name=f"snapshot-{folder.name}", daemon=True)
        self.thread.start()

    def drain(self, engine, rank: int) -> None:
        """On every rank: wait until rank 0's write is on disk; if it failed, every rank raises
        (the others would otherwise wait at their next collective until the timeout)."""
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_initialized() else 1
        failed = None
        if rank == 0:
            try:
                self.wait()
            except BaseException as exc:
                failed = exc
        if any_rank(failed is not None, engine.device, world):
            raise failed if failed is not None else RuntimeError("rank 0 could not write a snapshot")

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    close = wait


def save_snapshot(engine, tokenizer, folder: Path, step: int, info: dict, rank: int,
                  writer: SnapshotWriter | None = None) -> None:
    """Consolidated weights (gathered group by group under ZeRO-3) as safetensors, loadable with
    from_pretrained; written by ``writer`` in the background (or here, without one). The previous
    write is finished first (one host copy of the weights at a time), and if it failed every rank
    stops here, not only rank 0 (the others would wait at their next collective).

    A LoRA run (a PEFT model) gathers and writes its adapter alone, in PEFT's format (see
    hpcgen.training.snapshot): megabytes per snapshot instead of the 13.5 GB base model again.
    hpcgen.training.snapshot.load_snapshot reads either kind."""
    from hpcgen.training.snapshot import AdapterFiles, is_peft_model

    if writer is not None:
        writer.drain(engine, rank)
    adapter = is_peft_model(engine.module)
    t0 = time.perf_counter()
    weights, groups = gather_weights(engine, rank, trainable_only=adapter)
    if rank != 0:
        return
    record = {"step": step, **info, "gather_s": round(time.perf_counter() - t0, 3), "gather_groups": groups}
    saver = engine.module
    if adapter:  # PEFT's keys and a frozen copy of the adapter config, taken here, not in the writer's thread
        saver = AdapterFiles(engine.module)
        weights = saver.state_dict(weights)
    own = writer is None
    writer = writer or SnapshotWriter()
    writer.write(saver, tokenizer, weights, folder, record)
    if own:
        writer.close()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _NoStop:
    """The stop request of a run that nothing can stop early (``train`` called without one)."""

    def requested(self) -> bool:
        return False

    def watch(self):
        import contextlib

        return contextlib.nullcontext()


@dataclass(frozen=True)
class Stopped:
    """What ``train`` returns when it stopped early on a stop request: the resumable checkpoint
    of ``step`` is saved (and every snapshot before it written); the task's next run resumes
    there, and writes first a snapshot due at ``step``."""

    step: int


def test_loss(engine, enc, pad_id: int, batch: int, rank: int = 0, world: int = 1) -> float:
    """Mean over test records of each record's mean answer-token cross-entropy (the evaluation
    stage's loss: ``hpcgen.metrics.loss.masked_cross_entropy``, through ``record_losses``). The
    records are split over the ranks (rank r takes every world-th one) and the sums reduced on the
    engine's device; every rank runs the same number of forwards (a short rank repeats a record it
    then ignores), which ZeRO-3 needs: all ranks take part in each forward's parameter gathers."""
    import math as _math

    import torch
    import torch.distributed as dist

    from hpcgen.metrics.loss import IGNORE, record_losses

    model = engine.module
    was_training = model.training
    model.eval()
    rows = [i for i in range(len(enc.ids)) if enc.ids[i] is not None]
    mine = sorted(rows[rank::world], key=lambda i: len(enc.ids[i]))  # batches of similar lengths pad less
    n_batches = _math.ceil(_math.ceil(len(rows) / world) / batch)
    total = torch.zeros(2, dtype=torch.float64, device=engine.device)  # sum of record means, records
    with torch.no_grad():
        for k in range(n_batches):
            chunk = mine[k * batch:(k + 1) * batch]
            real = len(chunk)
            if not chunk:
                chunk = rows[:1]  # a forward all ranks must take part in; its loss is not counted
            b = {key: v.to(engine.device) for key, v in collate(chunk, enc, pad_id).items()}
            # the model's own full forward: ZeRO-3's hooks expect the whole module to run
            means = record_losses(model, b, answer_only=False, per="record")[:real]
            answered = (b["labels"][:real, 1:] != IGNORE).any(1)  # a record without answer tokens has no mean
            total[0] += means[answered].sum()
            total[1] += answered.sum()
    if dist.is_initialized() and world > 1:
        dist.all_reduce(total)
    if was_training:
        model.train()
    return float(total[0] / total[1]) if float(total[1]) else float("nan")


def save_resumable(engine, folder: Path, step: int, keep: int, rank: int, frozen: bool = True) -> None:
    """DeepSpeed's checkpoint and every rank's RNG states. ``frozen=False`` leaves out the
    parameters that do not train (a LoRA run's base model: the job loads it again from
    train.model on resume, so the checkpoint holds only adapters and their optimizer state)."""
    import torch
    import torch.distributed as dist

    tag = f"step-{step:06d}"
    # the RNG states first, each committed by a rename: DeepSpeed's ``latest`` (written at the end of
    # save_checkpoint) then never names a checkpoint whose RNG file a kill left half-written
    (folder / tag).mkdir(parents=True, exist_ok=True)
    rng = folder / tag / f"rng-rank{rank}.pt"
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               rng.with_name(f".tmp-{rng.name}"))
    os.replace(rng.with_name(f".tmp-{rng.name}"), rng)
    if dist.is_initialized():
        dist.barrier()
    engine.save_checkpoint(str(folder), tag=tag, client_state={"step": step}, exclude_frozen_parameters=not frozen)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        tags = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-"))
        for old in tags[:-keep]:
            shutil.rmtree(folder / old, ignore_errors=True)


def train(task, cfg, records, order_rows: np.ndarray, template: str, stop=None, resources=None) -> dict | Stopped:
    """Run (or resume) the training of one task; returns a summary for the stage's outputs, or
    ``Stopped`` when ``stop`` asked it to stop before its last step.

    ``stop``: the task's stop request (hpcgen.pipeline.runner.StopRequest, or anything with
    ``requested() -> bool`` and a ``watch()`` context manager): while the steps run, a request
    waits for the next step boundary, where all ranks agree on it, save their resumable state
    together and return. ``resources``: what the task was given (``cpus``, ``gpus``, ``threads``);
    the runner has already set the thread count from it."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from hpcgen.training.model import build_model, parameter_counts
    from hpcgen.training.tokenizer import build_tokenizer

    rank, world = task.rank, task.world_size
    stop = stop if stop is not None else _NoStop()
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # no progress bars in job logs
    transformers.utils.logging.disable_progress_bar()
    device = setup_distributed(rank, world, cfg.dist_timeout_min)
    if resources is not None and rank == 0:
        task.log.info("%d rank(s) on %s; per rank %s CPU thread(s), %d GPU(s) per node", world, device,
                      torch.get_num_threads(), resources.gpus)
    work = task.work_dir
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    # tokenizer: built once by rank 0 (or loaded on resume), then read by every rank
    tok_dir = work / "tokenizer"
    if rank == 0 and not (tok_dir / "tokenizer.json").is_file():
        texts = [records["text"][i] for i in order_rows] if cfg.tokenizer in ("bpe", "char") else []
        tokenizer = build_tokenizer(cfg.tokenizer if not cfg.model else cfg.model, texts, cfg.vocab_size)
        tmp = work / ".tmp-tokenizer"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, tok_dir)
    if dist.is_initialized():
        dist.barrier()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)

    # data in the arranged order, tokenized once by rank 0 and read by the others (16 ranks
    # tokenizing the same 30k records would only compete for the node's CPUs); records whose
    # answer alone is too long are left out
    enc_file = work / f"encoded-{cfg.max_length}.pkl"
    if rank == 0 and not enc_file.is_file():
        enc = encode(tokenizer, [records["prompt"][i] for i in order_rows],
                     [records["answer"][i] for i in order_rows], template, cfg.max_length)
        tmp = enc_file.with_name(f".tmp-{enc_file.name}")
        with open(tmp, "wb") as pkl_out:
            pickle.dump(enc, pkl_out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, enc_file)
    if dist.is_initialized():
        dist.barrier()
    with open(enc_file, "rb") as pkl_in:
        enc = pickle.load(pkl_in)
    if len(enc.ids) != len(order_rows):
        raise RuntimeError(f"{enc_file} holds {len(enc.ids)} records, the arrangement {len(order_rows)}")
    if len(enc.too_long) == len(order_rows):
        raise ConfigError(f"max_length {cfg.max_length} is shorter than every answer", key="train.max_length",
                          fix="raise max_length")
    keep = np.asarray([i for i in range(len(order_rows)) if enc.ids[i] is not None], dtype=np.int64)
    accumulation = batch_sizes(cfg.global_batch, cfg.micro_batch, world)
    lengths = (np.asarray([len(x) if x is not None else 0 for x in enc.ids], dtype=np.int64)
               if cfg.length_grouping else None)
    feed = Feed(order=keep, micro_batch=cfg.micro_batch, accumulation=accumulation, world_size=world,
                epochs=cfg.epochs, lengths=lengths, max_steps=getattr(cfg, "steps", None))
    if feed.steps == 0:
        raise ConfigError(f"{len(keep)} training items make no full global batch of {cfg.global_batch}",
                          key="train.global_batch", fix="lower the global batch")

    # model, optimizer, schedule, DeepSpeed
    ds_config = deepspeed_config(cfg, cfg.micro_batch, accumulation, world, device)
    model = build_model(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
                        ds_config)
    trainable, total = parameter_counts(model)
    lora = getattr(cfg, "lora", None) is not None
    task.log.info("parameters: %d trainable of %d (%.4f%%)%s", trainable, total, 100 * trainable / max(1, total),
                  " (LoRA adapters)" if lora else "")
    optimizer = make_optimizer(model, cfg, ds_config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, feed.steps))
    try:
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
    except (ValueError, AssertionError, KeyError) as exc:
        raise ConfigError(f"DeepSpeed rejected the config ({exc})", key="train.deepspeed",
                          fix=f"check train.deepspeed={cfg.deepspeed!r} and train.deepspeed_overrides") from None

    # resume where the last resumable checkpoint left off
    start = 0
    resume_dir = work / "resume"
    resume_dir.mkdir(exist_ok=True)
    if (resume_dir / "latest").is_file():
        # a LoRA checkpoint holds no frozen weights: those stay as build_model loaded them
        _, client = engine.load_checkpoint(str(resume_dir), load_module_strict=not lora)
        start = int(client["step"])
        rng_file = resume_dir / f"step-{start:06d}" / f"rng-rank{rank}.pt"
        if rng_file.is_file():
            state = torch.load(rng_file, weights_only=False)
            torch.set_rng_state(state["torch"])
            np.random.set_state(state["numpy"])
            random.setstate(state["python"])
        task.log.info("resumed at step %d", start)

    metrics_path = work / "metrics.jsonl"
    consumed_path = work / f"consumed-rank{rank}.jsonl"
    if start == 0:
        for path in (metrics_path, consumed_path, work / "test_loss.jsonl"):
            path.unlink(missing_ok=True)
    else:  # drop lines past the checkpoint (written before an interruption)
        # metrics count completed steps (1, 2, ...); consumed rows are by step index (0, 1, ...)
        for path, last_step in ((metrics_path, start), (consumed_path, start - 1), (work / "test_loss.jsonl", start)):
            if path.is_file():
                lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= last_step]
                path.write_text("".join(ln + "\n" for ln in lines))
    snap_dir = work / "snapshots"
    snap_dir.mkdir(exist_ok=True)
    test_enc = None
    if records.get("test"):
        prompts, answers = zip(*records["test"])
        test_enc = encode(tokenizer, list(prompts), list(answers), template, cfg.max_length)
    def snapshot(done: int, loss: float) -> None:
        info = {"items_seen": done * feed.global_batch, "loss": loss}
        if test_enc is not None:
            info["test_loss"] = test_loss(engine, test_enc, tokenizer.pad_token_id, cfg.micro_batch, rank, world)
            if rank == 0:
                with open(work / "test_loss.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": done, "test_loss": info["test_loss"]}) + "\n")
        save_snapshot(engine, tokenizer, snap_dir / f"step-{done:06d}", done, info, rank, writer)

    writer = SnapshotWriter()
    if start and start % cfg.save_every == 0 and agreed_by_rank0(
            not (snap_dir / f"step-{start:06d}" / "snapshot.json").is_file(), rank, world):
        # stopped at a snapshot step, before the snapshot: the weights are those of that step now
        last = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln] if metrics_path.is_file() else []
        snapshot(start, float(last[-1]["loss"]) if last else float("nan"))
    board = None
    if rank == 0:
        try:  # TensorBoard when it is installed
            from torch.utils.tensorboard import SummaryWriter

            board = SummaryWriter(str(work / "tensorboard"))
        except ImportError:
            board = None
    engine.train()
    stopped = None
    with stop.watch():  # a stop request now waits for the next step boundary
        for step in range(start, feed.steps):
            t0 = time.perf_counter()
            losses, tokens, rows_seen = [], 0, []
            micro = feed.micro_batches(step, rank)
            weights = (token_weights(micro, enc, answer_tokens(feed.step_items(step), enc), world)
                       if cfg.length_grouping else [1.0] * len(micro))
            for rows, weight in zip(micro, weights):
                batch = {k: v.to(engine.device) for k, v in collate(list(rows), enc, tokenizer.pad_token_id).items()}
                out = engine(**batch)
                engine.backward(out.loss * weight if weight != 1.0 else out.loss)
                engine.step()
                losses.append(out.loss.detach().float() * weight)
                tokens += int(batch["attention_mask"].sum())
                rows_seen += [int(order_rows[r]) for r in rows]
            stats = step_stats(torch.stack(losses).mean(), tokens, engine.device, world).tolist()
            elapsed = time.perf_counter() - t0
            with open(consumed_path, "a") as fh:
                fh.write(json.dumps({"step": step, "rows": rows_seen}) + "\n")
            if rank == 0:
                grad_norm = engine.get_global_grad_norm()
                row = {"step": step + 1, "loss": float(stats[0]), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": None if grad_norm is None else float(grad_norm),
                       "tokens_per_s": float(stats[1]) / elapsed, "items": feed.global_batch, "seconds": elapsed}
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if board is not None:
                    for name in ("loss", "lr", "grad_norm", "tokens_per_s"):
                        if row[name] is not None:
                            board.add_scalar(f"train/{name}", row[name], step + 1)
            done = step + 1
            if done < feed.steps and any_rank(stop.requested(), engine.device, world):
                # every rank agrees at this step boundary: the time left goes to the resumable save; a
                # snapshot due now is written first thing when the task runs again (above)
                writer.drain(engine, rank)  # snapshots up to here are on disk before the resumable state says so
                save_resumable(engine, resume_dir, done, cfg.keep_resumable, rank, frozen=not lora)
                task.log.warning("stop requested after step %d: resumable checkpoint saved", done)
                stopped = Stopped(done)
                break
            if done % cfg.save_every == 0 or done == feed.steps:
                snapshot(done, float(stats[0]))
            if done % cfg.resume_every == 0 and done < feed.steps:
                writer.drain(engine, rank)  # a resume from here must not miss a snapshot still being written
                save_resumable(engine, resume_dir, done, cfg.keep_resumable, rank, frozen=not lora)
        writer.drain(engine, rank)
    if board is not None:
        board.close()
    if stopped is not None:
        return stopped
    return {"steps": feed.steps, "global_batch": feed.global_batch, "accumulation": accumulation,
            "world_size": world, "too_long": [int(order_rows[i]) for i in enc.too_long],
            "records_too_long": len(enc.too_long), "records_truncated": int(getattr(enc, "truncated", 0)),
            "dropped_partial_batch": int(len(keep) - feed.steps_per_epoch * feed.global_batch), "device": device,
            "parameters": total, "trainable_parameters": trainable}
