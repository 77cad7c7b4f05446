"""hpcgen.sampler: ArrangedSampler against the train stage's Feed, and real Hugging Face Trainer
runs (one process in-process, two under torchrun with gloo) that must consume a TMA order exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcgen.arrangements.tma import DenseDistances, order_from_rounds, tma_rounds
from hpcgen.pipeline.executors.local import free_port
from hpcgen.sampler import ArrangedSampler, in_order
from hpcgen.training.data import Feed

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("trainer_order_worker.py")
N_ROWS = 48
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RUN_ID")


def tma_rounds_of(n: int = N_ROWS, n_test: int = 5, dim: int = 8, seed: int = 7) -> np.ndarray:
    """TMA rounds (nearest picks) of random unit vectors: n training items against n_test test items."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n, dim))
    test = rng.normal(size=(n_test, dim))
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    return tma_rounds(DenseDistances((1.0 - train @ test.T).astype(np.float32)))


def tma_order() -> list[int]:
    """A real arrangement: TMA rounds in order, inside a round by row."""
    return order_from_rounds(tma_rounds_of()).tolist()


ORDER = tma_order()


def test_the_order_is_a_real_arrangement():
    assert sorted(ORDER) == list(range(N_ROWS))
    assert ORDER != list(range(N_ROWS)) and ORDER != list(range(N_ROWS))[::-1]
    rounds = tma_rounds_of()[ORDER]
    assert (np.diff(rounds) >= 0).all() and rounds[-1] > 1


# ---------------------------------------------------------------- ArrangedSampler

SUBSET = np.random.default_rng(3).permutation(70)[:50]  # a permutation of a subset of 70 rows


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_slices_equal_feed(world):
    g = 6
    feed = Feed(SUBSET, micro_batch=g // world, accumulation=1, world_size=world)
    assert feed.steps == 8
    for rank in range(world):
        s = ArrangedSampler(SUBSET, global_batch=g, rank=rank, world_size=world, dataset_size=70)
        want = np.concatenate([np.concatenate(feed.micro_batches(k, rank)) for k in range(feed.steps)])
        assert list(s) == want.tolist()
        assert len(s) == want.size == 8 * (g // world)
        assert s.steps == 8
        loader = torch.utils.data.DataLoader(range(70), batch_size=g // world, sampler=s)
        assert [b.tolist() for b in loader] == [feed.micro_batches(k, rank)[0].tolist() for k in range(8)]


def test_one_process_without_global_batch_yields_the_whole_order():
    s = ArrangedSampler(SUBSET, world_size=1, rank=0)
    assert list(s) == SUBSET.tolist() and len(s) == 50 and s.steps == 1
    assert all(type(i) is int for i in s)
    assert list(ArrangedSampler(range(5), world_size=1)) == [0, 1, 2, 3, 4]
    assert list(ArrangedSampler([], world_size=1)) == [] and len(ArrangedSampler([], world_size=1)) == 0


def test_drop_last_true_drops_the_trailing_partial_batch():
    assert list(ArrangedSampler(SUBSET, global_batch=8, world_size=1, rank=0)) == SUBSET[:48].tolist()
    parts = [list(ArrangedSampler(SUBSET, global_batch=6, rank=r, world_size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [16, 16, 16]
    assert sorted(sum(parts, [])) == sorted(SUBSET[:48].tolist())


def test_drop_last_false_splits_the_trailing_batch_into_contiguous_pieces():
    samplers = [ArrangedSampler(SUBSET, global_batch=6, rank=r, world_size=3, drop_last=False) for r in range(3)]
    parts = [list(s) for s in samplers]
    assert [len(p) for p in parts] == [17, 17, 16]  # 50 = 8 x 6 + 2: ranks get unequal counts
    assert parts[0][16:] + parts[1][16:] + parts[2][16:] == SUBSET[48:].tolist()
    assert sorted(sum(parts, [])) == sorted(SUBSET.tolist())
    assert samplers[0].steps == 9
    tail = [list(ArrangedSampler(range(11), global_batch=8, rank=r, world_size=2, drop_last=False))[4:]
            for r in range(2)]
    assert tail == [[8, 9], [10]]
    assert list(ArrangedSampler(range(11), global_batch=8, world_size=1, drop_last=False)) == list(range(11))


def test_set_epoch_keeps_the_order():
    s = ArrangedSampler(SUBSET, global_batch=4, rank=1, world_size=2)
    first = list(s)
    s.set_epoch(3)
    assert list(s) == first == list(s)


@pytest.mark.parametrize("kwargs, words", [
    (dict(order=range(8), world_size=2, rank=0), ["world_size 2", "global_batch is required"]),
    (dict(order=range(8), global_batch=5, world_size=2, rank=0), ["global_batch 5", "world_size 2", "divisible"]),
    (dict(order=range(8), global_batch=0, world_size=1, rank=0), ["global_batch must be at least 1"]),
    (dict(order=[3, 1, 3], world_size=1), ["position 3 more than once", "indices 0 and 2", "permutation"]),
    (dict(order=[0, 7, 2], world_size=1, dataset_size=5), ["position 7", "dataset of 5"]),
    (dict(order=[0, -1], world_size=1), ["negative position -1"]),
    (dict(order=[0.0, 1.0], world_size=1), ["int dataset positions", "float64"]),
    (dict(order=[True, False], world_size=1), ["int dataset positions", "bool"]),
    (dict(order=[[0, 1], [2, 3]], world_size=1), ["one-dimensional"]),
    (dict(order=range(4), global_batch=2, world_size=2, rank=2), ["rank 2", "[0, 2)"]),
    (dict(order=range(4), world_size=0, rank=0), ["world_size must be at least 1"]),
])
def test_errors(kwargs, words):
    with pytest.raises(ValueError) as err:
        ArrangedSampler(kwargs.pop("order"), **kwargs)
    for w in words:
        assert w in str(err.value)


def test_rank_and_world_size_default_to_the_environment(monkeypatch):
    # a process group another test left in this process would take precedence over the environment
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    s = ArrangedSampler(range(10), global_batch=4)
    assert (s.rank, s.world_size) == (0, 1) and list(s) == [0, 1, 2, 3, 4, 5, 6, 7]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    s = ArrangedSampler(range(10), global_batch=4)
    assert (s.rank, s.world_size) == (1, 2) and list(s) == [2, 3, 6, 7]
    assert ArrangedSampler(range(10), global_batch=4, rank=0).rank == 0  # explicit wins
    with pytest.raises(ValueError, match="global_batch is required"):
        ArrangedSampler(range(10))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        ArrangedSampler(range(10), global_batch=4)


class FakeTrainer:
    """What in_order relies on: ``train_dataset`` and ``_get_train_sampler(train_dataset=None)``."""

    def __init__(self, train_dataset):
        self.train_dataset = train_dataset

    def _get_train_sampler(self, train_dataset=None):
        return "base sampler"


def test_in_order_subclass(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # ignored: the Trainer's accelerate prepare shards by process
    cls = in_order(FakeTrainer, np.array([2, 0, 1]))
    assert issubclass(cls, FakeTrainer) and cls.__name__ == "InOrderFakeTrainer"
    s = cls(list("abc"))._get_train_sampler()
    assert isinstance(s, ArrangedSampler) and (s.rank, s.world_size) == (0, 1) and list(s) == [2, 0, 1]
    assert list(cls(list("xyz"))._get_train_sampler(list("abcd"))) == [2, 0, 1]
    assert list(in_order(FakeTrainer)(list("abcd"))._get_train_sampler()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="outside a dataset of 2"):
        cls(list("ab"))._get_train_sampler()
    with pytest.raises(ValueError, match="more than once"):
        in_order(FakeTrainer, [1, 1])
    assert cls(iter("abc"))._get_train_sampler() == "base sampler"  # no __len__: the base class decides


# ---------------------------------------------------------------- real Trainer runs


def case(name, sampling, per_device, accumulation, max_steps=None, trainer="trainer", **more):
    c = dict(name=name, trainer=trainer, sampling=sampling, order=ORDER, per_device=per_device,
             accumulation=accumulation, **more)
    if max_steps is not None:
        c["max_steps"] = max_steps
    return c


def read(where: Path, c: dict, world: int) -> tuple[list[list[dict]], list[list[list[int]]]]:
    lines = [[json.loads(x) for x in (where / c["name"] / f"{kind}.rank{r}.jsonl").read_text().splitlines()]
             for kind in ("trained", "collated") for r in range(world)]
    return lines[:world], lines[world:]


def check_order(where: Path, c: dict, world: int, stream: list[int] | None = None, steps: int | None = None) -> None:
    """The run trained on exactly the order: optimizer step k on the next A x W x P items (micro
    batch j of rank r = the (j x W + r)-th P items of the step), Feed's step k (a last partial
    global batch dropped, the order again every epoch), and with A = 1 rank r on the r-th slice of
    each global batch, as Feed. ``stream`` and ``steps``: the items and optimizer steps expected
    instead of Feed's."""
    p, a = c["per_device"], c["accumulation"]
    g = a * world * p
    order = c["order"]
    feed = Feed(np.asarray(order), micro_batch=p, accumulation=a, world_size=world)
    steps = steps or c.get("max_steps") or c["epochs"] * feed.steps_per_epoch
    stream_is_feeds = stream is None
    if stream is None:
        stream = [int(i) for k in range(steps) for i in feed.step_items(k)]
    trained, collated = read(where, c, world)
    for r in range(world):
        assert [t["step"] for t in trained[r]] == [k for k in range(steps) for _ in range(a)], f"rank {r}"
        rows = [t["rows"] for t in trained[r]]
        assert all(len(b) == p for b in rows)
        # the collator built these batches in this order, plus at most one prefetched after the last step
        assert collated[r][:len(rows)] == rows and len(collated[r]) - len(rows) in (0, 1), f"rank {r}"
    seen: list[int] = []
    for k in range(steps):
        items = [i for j in range(a) for r in range(world) for i in trained[r][k * a + j]["rows"]]
        assert items == stream[k * g:(k + 1) * g], f"optimizer step {k}"
        if a == 1:
            for r in range(world):
                assert trained[r][k]["rows"] == stream[k * g + r * p:k * g + (r + 1) * p]
                if stream_is_feeds:
                    assert trained[r][k]["rows"] == feed.micro_batches(k, r)[0].tolist()
        seen += items
    assert seen == stream[:steps * g]
    if steps * g <= len(order):
        assert seen == order[:steps * g]


@pytest.fixture
def in_process(monkeypatch, tmp_path):
    """Run worker cases in this process, as a single (non-distributed) process."""
    from tests.trainer_order_worker import run

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)

    def go(*cases: dict) -> Path:
        run({"out": str(tmp_path), "rows": N_ROWS, "cases": list(cases)})
        return tmp_path

    return go


ONE = [case("sequential", "sequential", 4, 1, 3), case("in_order", "in_order", 4, 1, 3),
       case("in_order_accum2", "in_order", 3, 2, 3)]


@pytest.mark.parametrize("c", ONE, ids=[c["name"] for c in ONE])
def test_one_process_trainer_follows_the_order(in_process, c):
    check_order(in_process(c), c, world=1)


def test_one_process_default_sampler_does_not_follow_the_order(in_process):
    c = case("random", "random", 4, 1, 3)
    where = in_process(c)
    with pytest.raises(AssertionError):
        check_order(where, c, world=1)
    trained, _ = read(where, c, 1)
    seen = [i for t in trained[0] for i in t["rows"]]
    assert len(set(seen)) == len(seen) == 12
    assert seen != ORDER[:12] and seen != list(range(12))


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("sampling, accumulation", [("sequential", 1), ("in_order", 2)])
def test_one_process_sft_trainer_follows_the_order(in_process, sampling, accumulation):
    pytest.importorskip("trl", reason="TRL is not installed (pip install trl)")
    c = case(f"sft_{sampling}", sampling, 3, accumulation, 3, trainer="sft")
    check_order(in_process(c), c, world=1)


TWO = [case("sequential", "sequential", 3, 1, 4), case("sequential_accum2", "sequential", 2, 2, 3),
       case("in_order", "in_order", 3, 1, 4), case("in_order_accum2", "in_order", 2, 2, 3),
       # 48 items, global batch 10: 4 steps an epoch, the last 8 items dropped, the same order again
       case("in_order_2_epochs_drop_last", "in_order", 5, 1, epochs=2, drop_last=True),
       # without dataloader_drop_last, accelerate fills the last global batch from the start of the order
       case("in_order_no_drop_last", "in_order", 5, 1, epochs=1)]
CHECKED = TWO[:5]


def launch(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own session until it exits; past ``timeout``, kill its whole group (torchrun
    and its workers) and fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not exit within {timeout:.0f} s:\n{output[-6000:]}")
    return proc.returncode, output


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """All TWO cases, one after another, in one torchrun launch of two gloo processes."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    where = tmp_path_factory.mktemp("two_processes")
    spec = where / "spec.json"
    spec.write_text(json.dumps({"out": str(where), "rows": N_ROWS, "cases": TWO}))
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])]))
    for _attempt in range(2):  # a second try only if the port was taken between finding and binding it
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), str(spec)]
        code, output = launch(cmd, where, env, timeout=300)
        if code == 0 or "address already in use" not in output.lower():
            break
    if code != 0:
        pytest.fail(f"torchrun exited with {code}:\n{output[-6000:]}")
    missing = [f"{c['name']}/{kind}.rank{r}.jsonl" for c in TWO for kind in ("trained", "collated") for r in range(2)
               if not (where / c["name"] / f"{kind}.rank{r}.jsonl").is_file()]
    assert not missing, f"torchrun exited 0 but left no {missing}:\n{output[-6000:]}"
    return where


@pytest.mark.parametrize("c", CHECKED, ids=[c["name"] for c in CHECKED])
def test_two_process_trainer_follows_the_order(two_processes, c):
    check_order(two_processes, c, world=2)


def test_two_processes_with_accumulation_split_steps_unlike_feed(two_processes):
    """Same items per optimizer step as the train stage, but not the same per rank: rank r's
    micro batch j is the r-th slice of the step's j-th W x P items, not part of a contiguous A x P slice."""
    c = TWO[3]
    p, a = c["per_device"], c["accumulation"]
    trained, _ = read(two_processes, c, 2)
    feed = Feed(np.asarray(ORDER), micro_batch=p, accumulation=a, world_size=2)
    step0 = [trained[r][0]["rows"] + trained[r][1]["rows"] for r in range(2)]
    assert step0 == [ORDER[0:2] + ORDER[4:6], ORDER[2:4] + ORDER[6:8]]
    assert step0[0] != np.concatenate(feed.micro_batches(0, 0)).tolist() == ORDER[0:4]


def test_two_processes_without_drop_last_wrap_to_the_start(two_processes):
    c = TWO[5]
    check_order(two_processes, c, world=2, stream=ORDER + ORDER[:2], steps=5)  # 48 items + 2 from the start
    with pytest.raises(AssertionError):
        check_order(two_processes, c, world=2)  # Feed drops the partial last global batch instead
