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
    bound, inits = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: bound.append(i))
    import deepspeed

    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: inits.append(kw))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in SLURM_RANK_9_OF_16.items():
        monkeypatch.setenv(k, v)
    return bound, inits


def test_each_rank_binds_its_own_gpu_and_sees_all_of_them(eight_gpus, monkeypatch):
    import os

    bound, inits = eight_gpus
    assert loop.setup_distributed(9, 16, timeout_min=90) == "cuda"
    # CUDA_VISIBLE_DEVICES untouched: DeepSpeed's device_id=cuda:LOCAL_RANK must exist
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert bound == [1] and os.environ["LOCAL_RANK"] == "1" and os.environ["RANK"] == "9"
    assert os.environ["WORLD_SIZE"] == "16" and os.environ["MASTER_ADDR"] == "gpu01"
    [kw] = inits
    assert kw["dist_backend"] == "nccl" and kw["timeout"] == datetime.timedelta(minutes=90)


def test_a_rank_without_a_gpu_is_one_clear_error(eight_gpus, monkeypatch):
    monkeypatch.setenv("SLURM_LOCALID", "8")
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
    preempt = loop.Preemption()
    try:
        def record_then_stop(tensor, op=None, **kw):
            record(tensor)
            raise Recorded

        monkeypatch.setattr(dist, "all_reduce", record_then_stop)
        with pytest.raises(Recorded):
            preempt.agreed(16, meta)
    finally:
        preempt.restore()
    assert seen == ["meta", "meta"]


def test_step_stats_reduce_over_a_real_gloo_group():
    """The same helper on a real one-process gloo group: values survive the reduction."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        loss, tokens = loop.step_stats(torch.tensor(1.5), 96, torch.device("cpu"), world=1).tolist()
        assert (loss, tokens) == (1.5, 96.0)
    finally:
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
