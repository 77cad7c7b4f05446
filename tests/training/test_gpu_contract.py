"""What a GPU node needs of the training setup, tested on a CPU machine against the libraries'
own behaviour. No GPU exists here: ``torch.cuda`` is replaced by a stand-in that reports 8 GPUs
(the one thing faked; submitit and DeepSpeed's signatures are the real ones)."""

from __future__ import annotations

import datetime
import inspect

import pytest
import torch
import torch.distributed as dist

from hpcgen.errors import ConfigError
from hpcgen.training import loop

SLURM_RANK_9_OF_16 = {  # what Slurm sets for the 10th task of a 2 x 8 job: node 1, local rank 1
    "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]",
    "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS_PER_NODE": "8", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
    "SUBMITIT_EXECUTOR": "slurm",  # what submitit's sbatch script exports
}


@pytest.fixture
def eight_gpus(monkeypatch):
    # DeepSpeed picks its accelerator once, at first use, from torch.cuda.is_available(): settle
    # it (CPU, the truth here) before the stand-in reports GPUs, or later tests inherit CUDA's
    from deepspeed.accelerator import get_accelerator

    get_accelerator()
    bound, inits = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: bound.append(i))
    import deepspeed

    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: inits.append(kw))
    import os

    saved = dict(os.environ)  # submitit's export() writes os.environ directly: restore it all after
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        os.environ.pop(k, None)
    os.environ.update(SLURM_RANK_9_OF_16)
    yield bound, inits
    os.environ.clear()
    os.environ.update(saved)


def test_each_rank_binds_its_own_gpu_and_sees_all_of_them(eight_gpus, monkeypatch):
    """The runner exports torch's variables from Slurm's (through submitit); the loop reads those."""
    import os

    from hpcgen.pipeline.runner import export_distributed_env

    bound, inits = eight_gpus
    export_distributed_env()
    assert loop.setup_distributed(9, 16, timeout_min=90) == "cuda"
    # CUDA_VISIBLE_DEVICES untouched: DeepSpeed's device_id=cuda:LOCAL_RANK must exist
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert bound == [1] and os.environ["LOCAL_RANK"] == "1" and os.environ["RANK"] == "9"
    assert os.environ["WORLD_SIZE"] == "16" and os.environ["MASTER_ADDR"] == "gpu01"
    [kw] = inits
    assert kw["dist_backend"] == "nccl" and kw["timeout"] == datetime.timedelta(minutes=90)


def test_a_rank_without_a_gpu_is_one_clear_error(eight_gpus, monkeypatch):
    from hpcgen.pipeline.runner import export_distributed_env

    monkeypatch.setenv("SLURM_LOCALID", "8")
    export_distributed_env()
    with pytest.raises(ConfigError, match=r"local rank 8 has no GPU: this process sees 8 GPU\(s\)"):
        loop.setup_distributed(9, 16)


def test_deepspeed_takes_the_timeout_it_is_given():
    import deepspeed

    params = inspect.signature(deepspeed.init_distributed).parameters
    # its default is shorter than a 7B load from shared storage: hpcgen passes train.dist_timeout_min
    assert "timeout" in params and params["timeout"].default < datetime.timedelta(minutes=60)


class Recorded(Exception):
    pass


def test_every_collective_of_the_loop_is_on_the_engines_device(monkeypatch):
    """A NCCL group has no CPU backend: tensors reduced at step ends must be on the engine's
    device. Recorded here with the meta device standing in for a GPU."""
    seen = []

    def record(tensor, op=None, **kw):
        seen.append(tensor.device.type)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", record)
    meta = torch.device("meta")
    stats = loop.step_stats(torch.tensor(2.5), 640, meta, world=16)
    assert stats.device.type == "meta"

    def record_then_stop(tensor, op=None, **kw):
        record(tensor)
        raise Recorded

    monkeypatch.setattr(dist, "all_reduce", record_then_stop)
    with pytest.raises(Recorded):  # the vote on a stop request at a step boundary
        loop.any_rank(False, meta, 16)
    assert seen == ["meta", "meta"]


def test_step_stats_reduce_over_a_real_gloo_group():
    """The same helper on a real one-process gloo group: values survive the reduction."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mine = not dist.is_initialized()  # an in-process training run may have left its group
    if mine:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        loss, tokens = loop.step_stats(torch.tensor(1.5), 96, torch.device("cpu"), world=1).tolist()
        assert (loss, tokens) == (1.5, 96.0)
    finally:
        if mine:
            dist.destroy_process_group()


def test_a_task_given_gpus_refuses_to_run_without_them(cli, write_exp, events, tmp_path):
    """No silent CPU: a stage with gpus > 0 stops at its start, in one line, where CUDA is not
    usable (this machine has no GPU), and its stage code never runs."""
    import torch as _torch

    if _torch.cuda.is_available():
        pytest.skip("this machine has a usable GPU")
    path = write_exp("name: gpu\noutput_dir: out\ntrain: {resources: {gpus: 1}}\n")
    code, out, err = cli("submit", path, "--executor", "local")
    assert code == 1
    assert "train/" in out and "asked for 1 GPU(s) but torch" in out and "sees no usable GPU" in out
    assert "resources.gpus: 0" in out
    assert not [e for e in events("start") if e["stage"] == "train"]  # stopped before the stage ran
    assert [e["stage"] for e in events("end")] == ["prepare", "arrange"]


def test_nv_follows_the_jobs_gpus_unless_the_container_says_otherwise():
    from hpcgen.config.schema import Container
    from hpcgen.pipeline.container import python_command

    auto = Container(image="/images/x.sif")
    assert "--nv" in python_command(auto, gpus=8) and "--nv" not in python_command(auto, gpus=0)
    assert "--nv" in python_command(Container(image="/images/x.sif", gpu=True), gpus=0)
    assert "--nv" not in python_command(Container(image="/images/x.sif", gpu=False), gpus=8)


def test_similarity_on_a_gpu_needs_cupy_unless_told_numpy():
    from hpcgen.stages.similarity import Similarity, SimilarityConfig

    class Cfg:
        def __init__(self, backend):
            self.similarity = SimilarityConfig(backend=backend)

    assert Similarity().gpu_libraries(Cfg("auto")) == ("cupy",)
    assert Similarity().gpu_libraries(Cfg("numpy")) == ()


def test_the_optimizer_is_fused_adam_on_a_gpu_cpu_adam_under_offload_torch_on_cpu():
    from deepspeed.ops.adam import FusedAdam

    from hpcgen.training.loop import optimizer_kind

    offload = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    assert optimizer_kind({}, "cuda") == "fused_adam" and optimizer_kind(offload, "cuda") == "cpu_adam"
    assert optimizer_kind({}, "cpu") == "torch" and optimizer_kind(offload, "cpu") == "cpu_adam"
    assert "adam_w_mode" in inspect.signature(FusedAdam).parameters  # how make_optimizer asks for AdamW


ZERO3_LOAD = r"""
import json, os, sys
from types import SimpleNamespace
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from hpcgen.training.loop import setup_distributed
from hpcgen.training.model import build_model
setup_distributed(0, 1)
ds = {"zero_optimization": {"stage": 3}, "train_batch_size": 1, "train_micro_batch_size_per_gpu": 1,
      "gradient_accumulation_steps": 1, "bf16": {"enabled": False}}
out = {}
for name, model in (("pretrained", sys.argv[1]), ("fresh", None)):
    cfg = SimpleNamespace(seed=0, model=model, architecture="llama", hidden=32, layers=1, heads=2,
                          intermediate=None, max_length=64, gradient_checkpointing=False, partitioned_init=True)
    m = build_model(cfg, 128, 0, 1, 2, ds)
    params = list(m.parameters())
    out[name] = {"partitioned": all(hasattr(p, "ds_id") for p in params),
                 "local_elements": sum(p.numel() for p in params),
                 "full_elements": sum(p.ds_numel for p in params if hasattr(p, "ds_numel"))}
print(json.dumps(out))
"""


def test_zero3_creates_models_partitioned(tmp_path):
    """Under ZeRO-3 a pretrained model is read through HfDeepSpeedConfig (and a fresh one, with
    partitioned_init, built inside zero.Init): every parameter arrives partitioned (DeepSpeed's
    ds_id), no rank ever holds the whole model. Real DeepSpeed on its CPU accelerator, one process."""
    import json
    import os
    import subprocess
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "tiny")
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-c", ZERO3_LOAD, str(tmp_path / "tiny")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("pretrained", "fresh"):
        assert out[name]["partitioned"], out
        assert out[name]["full_elements"] > 0 and out[name]["local_elements"] == 0, out  # held as shards


def test_without_a_built_fused_adam_training_falls_back_to_torchs_fused_adamw(monkeypatch):
    """On a GPU node whose DeepSpeed has no pre-built FusedAdam and no compiler, the step uses
    torch's fused AdamW (the same rule) instead of failing before the first step. The failed
    build is the one thing faked (constructing FusedAdam is where DeepSpeed compiles it)."""
    from types import SimpleNamespace

    import deepspeed.ops.adam

    from hpcgen.training.loop import make_optimizer

    def no_compiler(self, *args, **kwargs):
        raise RuntimeError("Error building extension 'fused_adam': nvcc not found")

    monkeypatch.setattr(deepspeed.ops.adam.FusedAdam, "__init__", no_compiler)
    model = torch.nn.Linear(4, 4)
    cfg = SimpleNamespace(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.0)
    opt = make_optimizer(model, cfg, {}, "cuda")
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.95)
