"""``hpcgen arrange`` and ``hpcgen.arrange``: real tables, the real MiniLM, the pipeline's stages.

The tables are 69 training and 12 test instances of the bundled NIV2 sample. The arranged order
is checked against TMA computed here from scratch (sentence-transformers' own encode, cosine
distances, and the paper's rounds: every test item picks its nearest remaining training item).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpcgen.cli import main
from hpcgen.standalone import POSITION, ROUND, sidecar_path

ROOT = Path(__file__).resolve().parents[1]
NIV2 = ROOT / "examples" / "data" / "niv2-sample"


def niv2_rows() -> tuple[list[dict], list[dict]]:
    files = sorted((NIV2 / "tasks").glob("*.json"))[:12]
    train, test = [], []
    for k, f in enumerate(files):
        data = json.loads(f.read_text())
        for inst in data["Instances"][: 4 if k < 3 else 8]:
            row = {"task": f.stem[:7], "input": inst["input"], "output": inst["output"][0], "n": len(inst["input"])}
            (test if k < 3 else train).append(row)
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_rounds(train: list[dict], test: list[dict]) -> tuple[np.ndarray, float]:
    """TMA rounds of each training row from scratch, and the smallest gap between a test item's
    nearest and second-nearest remaining row over all picks (ties would make the check moot)."""
    from sentence_transformers import SentenceTransformer

    from hpcgen.similarity.model import DEFAULT_MODEL, resolve_model

    model = SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu")
    enc = [model.encode([f"{r['input'].strip()} {r['output'].strip()}" for r in rows], normalize_embeddings=True)
           for rows in (train, test)]
    dist = 1.0 - enc[0].astype(np.float64) @ enc[1].astype(np.float64).T  # (train, test) cosine distances
    round_of = np.full(len(train), -1)
    gap, r = np.inf, 0
    while (round_of < 0).any():
        left = np.nonzero(round_of < 0)[0]
        d = dist[left]
        picks = left[d.argmin(axis=0)]
        if len(left) > 1:
            part = np.partition(d, 1, axis=0)
            gap = min(gap, float((part[1] - part[0]).min()))
        round_of[picks] = r
        r += 1
    return round_of, gap


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    base = tmp_path_factory.mktemp("arrange")
    train, test = niv2_rows()
    return base, train, test, write_jsonl(base / "train.jsonl", train), write_jsonl(base / "test.jsonl", test)


@pytest.fixture(scope="module")
def arranged(tables):
    """The first call: the local executor, a fresh store."""
    base, train, test, train_file, test_file = tables
    out = base / "out.jsonl"
    code = main(["arrange", str(train_file), str(test_file), "-o", str(out), "--prompt-field", "input",
                 "--answer-field", "output", "--store", str(base / "store")])
    assert code == 0
    return out


def arrange_cli(tables, out: Path | str, *extra: str, train: Path | None = None, test: Path | None = None) -> int:
    base, _, _, train_file, test_file = tables
    return main(["arrange", str(train or train_file), str(test or test_file), "-o", str(out), "--prompt-field",
                 "input", "--answer-field", "output", "--store", str(base / "store"), "--executor", "debug", *extra])


def test_the_output_is_every_training_row_in_tma_order(tables, arranged):
    _, train, test, _, _ = tables
    rows = read_jsonl(arranged)
    assert sorted(json.dumps({k: v for k, v in r.items() if k not in (POSITION, ROUND)}, sort_keys=True)
                  for r in rows) == sorted(json.dumps(r, sort_keys=True) for r in train)
    assert [r[POSITION] for r in rows] == list(range(len(train)))
    position = {r["input"]: i for i, r in enumerate(train)}
    rounds, gap = reference_rounds(train, test)
    assert gap > 1e-5, "the data has near-ties: the check below would depend on float rounding"
    got = [(r[ROUND], position[r["input"]]) for r in rows]
    assert got == sorted(got), "rounds in order, and inside a round the rows in file order (within_round: index)"
    assert {i: rd for rd, i in got} == dict(enumerate(rounds.tolist()))
    assert rounds.max() + 1 > 2  # several rounds: a non-trivial order


def test_the_sidecar_names_strategy_model_and_inputs(tables, arranged):
    from hpcgen.similarity.model import DEFAULT_MODEL, resolve_model, weights_sha256

    _, train, test, train_file, test_file = tables
    side = json.loads(sidecar_path(arranged).read_text())
    assert side["strategy"] == "tma" and side["params"]["strategy"] == "tma"
    assert side["params"]["direction"] == "nearest"
    assert side["model"]["weights_sha256"] == weights_sha256(resolve_model(DEFAULT_MODEL))
    for name, path, rows in (("train", train_file, train), ("test", test_file, test)):
        assert side["inputs"][name]["checksum"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        assert side["inputs"][name]["rows"] == len(rows)
    assert side["rows_out"] == len(train) and side["rounds"] == 1 + max(r[ROUND] for r in read_jsonl(arranged))
    assert Path(side["experiment_file"]).is_file() and side["output"] == {"path": str(arranged), "format": "jsonl"}


def test_a_second_call_reuses_every_stage(tables, arranged, capsys):
    base = tables[0]
    markers = {p: p.stat().st_mtime_ns for p in (base / "store").rglob("completions/*.json")}
    capsys.readouterr()
    assert arrange_cli(tables, base / "again.jsonl") == 0
    err = capsys.readouterr().err
    assert "4 complete" in err and "0 to run" in err
    assert {p: p.stat().st_mtime_ns for p in (base / "store").rglob("completions/*.json")} == markers
    assert read_jsonl(base / "again.jsonl") == read_jsonl(arranged)


def test_parquet_and_datasets_inputs_give_the_same_order_in_their_format(tables, arranged):
    import datasets

    base, train, test, _, _ = tables
    want = [r["input"] for r in read_jsonl(arranged)]
    pq.write_table(pa.Table.from_pylist(train), base / "train.parquet")
    pq.write_table(pa.Table.from_pylist(test), base / "test.parquet")
    assert arrange_cli(tables, base / "out.parquet", train=base / "train.parquet", test=base / "test.parquet") == 0
    table = pq.read_table(base / "out.parquet")
    assert table.column("input").to_pylist() == want and table.column_names[-2:] == [POSITION, ROUND]
    datasets.Dataset.from_list(train).save_to_disk(str(base / "train_ds"))
    assert arrange_cli(tables, base / "out_ds", train=base / "train_ds", test=base / "test.parquet") == 0
    assert datasets.load_from_disk(str(base / "out_ds"))["input"] == want
    # OUT's extension chooses another format
    assert arrange_cli(tables, base / "from_ds.jsonl", train=base / "train_ds", test=base / "test.parquet") == 0
    assert [r["input"] for r in read_jsonl(base / "from_ds.jsonl")] == want
    assert arrange_cli(tables, f"{base / 'as_dir'}/") == 0  # a trailing / asks for a datasets directory
    assert datasets.load_from_disk(str(base / "as_dir"))["input"] == want


def test_a_folder_of_other_files_is_never_replaced(tables, capsys):
    base = tables[0]
    folder = base / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert arrange_cli(tables, f"{folder}/") == 2
    err = capsys.readouterr().err
    assert "not a datasets directory" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_strategy_options_reach_the_arrange_stage(tables, arranged):
    base = tables[0]
    nearest = read_jsonl(arranged)
    assert arrange_cli(tables, base / "reverse.jsonl", "--set", "arrange.direction=reverse") == 0
    reverse = read_jsonl(base / "reverse.jsonl")
    assert [r["input"] for r in reverse] == [r["input"] for r in nearest][::-1]
    assert json.loads(sidecar_path(base / "reverse.jsonl").read_text())["params"]["direction"] == "reverse"
    assert arrange_cli(tables, base / "random.jsonl", "--strategy", "random") == 0
    shuffled = read_jsonl(base / "random.jsonl")
    assert {r[ROUND] for r in shuffled} == {-1}
    assert sorted(r["input"] for r in shuffled) == sorted(r["input"] for r in nearest)
    assert [r["input"] for r in shuffled] != [r["input"] for r in nearest]


def test_task_strategies_use_the_task_field(tables, arranged):
    base, train, _, _, _ = tables
    assert arrange_cli(tables, base / "rr.jsonl", "--strategy", "round_robin", "--task-field", "task") == 0
    rows = read_jsonl(base / "rr.jsonl")
    tasks = list(dict.fromkeys(r["task"] for r in train))
    assert [r["task"] for r in rows[:len(tasks)]] == tasks  # one row of every task, in turn
    assert sorted(r["input"] for r in rows) == sorted(r["input"] for r in train)


def test_the_python_api_returns_the_input_type_in_the_same_order(tables, arranged):
    import datasets
    import pandas as pd

    import hpcgen

    base, train, test, _, _ = tables
    want = [r["input"] for r in read_jsonl(arranged)]
    store = base / "store"
    rows, order = hpcgen.arrange(train, test, prompt_field="input", answer_field="output", store=store,
                                 executor="debug")
    assert isinstance(rows, list) and [r["input"] for r in rows] == want
    assert [train[i]["input"] for i in order] == want and rows[0][POSITION] == 0
    assert train[0].keys() == {"task", "input", "output", "n"}  # the caller's dicts are not changed
    inputs = len(list((store / "inputs").iterdir()))
    for make, column in ((pd.DataFrame, lambda d: d["input"].tolist()),
                         (pa.Table.from_pylist, lambda d: d.column("input").to_pylist()),
                         (datasets.Dataset.from_list, lambda d: d["input"])):
        out, again = hpcgen.arrange(make(train), make(test), prompt_field="input", answer_field="output",
                                    store=store, executor="debug")
        assert type(out) is type(make(train)) and column(out) == want and (again == order).all()
    assert len(list((store / "inputs").iterdir())) == inputs, "the same rows in any container are one input"
    plain, _ = hpcgen.arrange(pd.DataFrame(train), pd.DataFrame(test), prompt_field="input", answer_field="output",
                              store=store, executor="debug", columns=False)
    assert list(plain.columns) == ["task", "input", "output", "n"]
    # a shuffled Dataset (an index mapping over its table) is read in its shuffled order: the same
    # rounds, each in that order
    shuffled = datasets.Dataset.from_list(train).shuffle(seed=1)
    out, order2 = hpcgen.arrange(shuffled, test, prompt_field="input", answer_field="output", store=store,
                                 executor="debug")
    assert out["input"] == [shuffled[int(i)]["input"] for i in order2]
    assert set(zip(out[ROUND], out["input"])) == {(r[ROUND], r["input"]) for r in rows}


@pytest.mark.parametrize(("change", "expect"), [
    ("missing_field", "row 0 has no field 'answer'"),
    ("empty_test", "has no rows: the test set is empty"),
    ("blank_row", "row 2 has no text"),
    ("strategy", "--strategy: unknown strategy 'tmaa'; did you mean 'tma'"),
    ("tasks", "--strategy: strategy 'round_robin' orders by task, and the rows have none; name the task column"),
    ("set", "--set: arrange.directoin"),
    ("hub", "cannot load 'no-such-user/no-such-dataset' from the hub"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tables, tmp_path, capsys, monkeypatch, change, expect):
    base, train, test, train_file, test_file = tables
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = ["--prompt-field", "input", "--answer-field", "output"]
    if change == "missing_field":
        args = ["--prompt-field", "input"]
    elif change == "empty_test":
        test_file = tmp_path / "empty.jsonl"
        test_file.write_text("")
    elif change == "blank_row":
        rows = [dict(r) for r in train]
        rows[2].update(input="  ", output="")
        train_file = write_jsonl(tmp_path / "blank.jsonl", rows)
    elif change == "strategy":
        args += ["--strategy", "tmaa"]
    elif change == "tasks":
        args += ["--strategy", "round_robin"]
    elif change == "set":
        args += ["--set", "arrange.directoin=reverse"]
    else:
        train_file = "hf://no-such-user/no-such-dataset"  # type: ignore[assignment]
    out = tmp_path / "out.jsonl"
    capsys.readouterr()
    code = main(["arrange", str(train_file), str(test_file), "-o", str(out), "--store", str(tmp_path / "store"),
                 "--executor", "debug", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expect in err, err
    assert not out.exists() and not sidecar_path(out).exists()
    assert not (tmp_path / "store" / "store").exists(), "no stage ran"


def test_the_device_decides_what_embed_and_similarity_ask_for(tmp_path, monkeypatch):
    # No GPU here: the driver's GPU list is faked by a folder (what /proc/driver/nvidia/gpus holds)
    import importlib.util

    from hpcgen.errors import ConfigError
    from hpcgen.standalone import device_overrides, visible_gpus

    driver = tmp_path / "gpus"
    assert visible_gpus(driver) == 0
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (driver / bus).mkdir(parents=True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus(driver) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpus(driver) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus(driver) == 0
    assert device_overrides("auto", 0) == []
    assert device_overrides("cpu", 2) == ["embed.device=cpu", "similarity.backend=numpy"]
    on_gpu = device_overrides("auto", 1)
    assert on_gpu[:2] == ["embed.device=cuda", "embed.resources.gpus=1"]
    assert ("similarity.backend=cupy" in on_gpu) == (importlib.util.find_spec("cupy") is not None)
    with pytest.raises(ConfigError, match="no GPU is visible"):
        device_overrides("cuda", 0)


def test_on_a_gpu_node_the_plan_asks_for_a_gpu_for_embed(tables, monkeypatch):
    # the planned experiment of a GPU node (faked: visible_gpus says 1): embed gets a GPU and CUDA;
    # --set comes after the device's settings and wins
    import hpcgen.standalone as standalone
    from hpcgen.data.tables import read_table

    base, _, _, train_file, test_file = tables
    monkeypatch.setattr(standalone, "visible_gpus", lambda: 1)
    train, test = read_table(str(train_file), "TRAIN"), read_table(str(test_file), "TEST")
    fields = standalone.Fields("input", "output")
    graph = standalone.plan_arrangement(train, test, fields, store=base / "store").graph
    embed = next(n for n in graph.nodes.values() if n.stage.name == "embed")
    assert embed.resources.gpus == 1 and embed.config.embed.device == "cuda"
    graph = standalone.plan_arrangement(train, test, fields, store=base / "store",
                                        overrides=["embed.resources.gpus=0", "embed.device=cpu"]).graph
    embed = next(n for n in graph.nodes.values() if n.stage.name == "embed")
    assert embed.resources.gpus == 0 and embed.config.embed.device == "cpu"
