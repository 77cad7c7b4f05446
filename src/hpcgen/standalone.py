"""``hpcgen arrange`` and ``hpcgen.arrange``: order a training set by a test set, no experiment file.

Both run hpcgen's own stages (prepare, embed, similarity, arrange) on a ``table`` source
(``hpcgen.data.table``) through the ordinary graph, store and executor: the experiment file they
plan is written to ``STORE/arrange/NAME.yaml`` and kept, so a second call with the same inputs
(by content) and options finds every node complete and costs only reading the tables. The
result is the training rows in training order with two added columns, ``hpcgen_position``
(0-based position in the order) and ``hpcgen_round`` (the round of round-based strategies such
as TMA, else -1), and a sidecar ``OUT.hpcgen.json`` (strategy, parameters, model, input
checksums, the store's nodes). Strategies with a budget keep a subset: the output has only the
rows they chose.

Bad input (a missing field, an empty test set, a row without text, an unknown strategy) is
found before anything runs: one line, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from rich.console import Console

from hpcgen.data.tables import HUB, Kind, Table, kind_of_output, ordered_arrow, read_table, write_table
from hpcgen.errors import ConfigError, HpcgenError

POSITION, ROUND = "hpcgen_position", "hpcgen_round"
SIDECAR_SUFFIX = ".hpcgen.json"
UNCAPPED = 10**12  # per-task caps off: every row of the table is kept


def default_store() -> Path:
    """``$HPCGEN_ARRANGE_STORE``, else ``$XDG_CACHE_HOME/hpcgen/arrange`` (``~/.cache/...``)."""
    from hpcgen.pipeline.fingerprint import cache_dir

    env = os.environ.get("HPCGEN_ARRANGE_STORE")
    return Path(env).expanduser() if env else cache_dir() / "arrange"


def sidecar_path(out: Path) -> Path:
    return Path(str(out).rstrip("/" + os.sep) + SIDECAR_SUFFIX)


@dataclass
class Fields:
    """Which columns make a row's text."""

    prompt_field: str = "prompt"
    answer_field: str = "answer"
    text_template: str | None = None
    task_field: str | None = None


@dataclass
class Result:
    """What one arrangement gave: positions into the training table, their rounds, and the
    sidecar's content."""

    order: np.ndarray
    rounds: np.ndarray
    sidecar: dict[str, Any]


def _source(train: str, test: str, fields: Fields) -> dict[str, Any]:
    src: dict[str, Any] = {"format": "table", "path": train, "test_path": test,
                           "prompt_field": fields.prompt_field, "answer_field": fields.answer_field}
    if fields.text_template is not None:
        src["text_template"] = fields.text_template
    if fields.task_field is not None:
        src["task_field"] = fields.task_field
    return src


def check_tables(train: Table, test: Table, fields: Fields) -> None:
    """Every row has the fields and some text; neither table is empty (ConfigError otherwise,
    keyed TRAIN or TEST for files; in-memory tables name themselves)."""
    from hpcgen.data.table import TableSource

    keys = {id(t): None if t.name else name for t, name in ((train, "TRAIN"), (test, "TEST"))}
    for table, what in ((train, "training"), (test, "test")):
        if not len(table):
            raise ConfigError(f"{table.label} has no rows: the {what} set is empty", key=keys[id(table)],
                              fix="give a table with at least one row")
    source = TableSource.model_validate(_source(train.path, test.path, fields))
    for _ in source.examples(train, "train", keys[id(train)]):
        pass
    for _ in source.examples(test, "test", keys[id(test)]):
        pass


def check_strategy(strategy: str) -> None:
    import difflib

    from hpcgen.arrangements.strategies import STRATEGIES

    if strategy not in STRATEGIES:
        close = difflib.get_close_matches(strategy, list(STRATEGIES), n=1, cutoff=0.6)
        raise ConfigError(f"unknown strategy {strategy!r}", key="--strategy",
                          fix=f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(STRATEGIES)}")


def visible_gpus(driver: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """GPUs this process may use, without importing torch: the NVIDIA driver's GPUs, cut to
    ``CUDA_VISIBLE_DEVICES`` where it is set (an empty value hides them all)."""
    try:
        present = sum(1 for _ in driver.iterdir())
    except OSError:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    return min(present, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))


def device_overrides(device: str, gpus: int) -> list[str]:
    """Settings that put embed and similarity (where CuPy is installed) on one GPU (``cuda``, or
    ``auto`` where a GPU is visible) or keep them on the CPU (``cpu``). The local executor hides
    GPUs from tasks that ask for none (submitit sets CUDA_VISIBLE_DEVICES to the GPUs asked
    for), so a GPU is asked for."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}", key="--device", fix="use auto, cpu or cuda")
    if device == "cuda" and gpus == 0:
        raise ConfigError("no GPU is visible here (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)",
                          key="--device", fix="run on a GPU node, or use --device cpu")
    if device == "cpu" or (device == "auto" and gpus == 0):
        return ["embed.device=cpu", "similarity.backend=numpy"] if device == "cpu" else []
    import importlib.util

    on_gpu = ["embed.device=cuda", "embed.resources.gpus=1"]
    if importlib.util.find_spec("cupy") is not None:  # else the similarity stays on NumPy, on the CPU
        on_gpu += ["similarity.backend=cupy", "similarity.resources.gpus=1"]
    return on_gpu


def _absolute(path: str) -> str:
    return path if path.startswith(HUB) else str(Path(path).expanduser().resolve())


def experiment_document(train: str, test: str, fields: Fields, strategy: str, model: str | None,
                        store: Path, executor: str) -> dict[str, Any]:
    """The experiment file ``hpcgen arrange`` plans (before ``--set``)."""
    data: dict[str, Any] = {"sources": [_source(train, test, fields)], "allow_contamination": True,
                            "generalist_size": 0, "max_per_train_task": UNCAPPED, "max_per_test_task": UNCAPPED}
    if fields.text_template is not None:
        data["embed_template"] = "{prompt}"
    doc: dict[str, Any] = {"output_dir": str(store), "cluster": {"executor": executor}, "data": data,
                           "arrange": {"strategy": strategy}}
    if model is not None:
        doc["embed"] = {"model": model}
    return doc


@dataclass
class Plan:
    """The experiment ``hpcgen arrange`` planned: its pipeline, its graph up to ``arrange``, its file."""

    exp: Any
    pipeline: Any
    graph: Any
    file: Path


def plan_arrangement(train: Table, test: Table, fields: Fields, *, strategy: str = "tma", model: str | None = None,
                     overrides: Sequence[str] = (), store: Path | None = None, executor: str = "local",
                     device: str = "auto") -> Plan:
    """Check the inputs and plan the experiment (writing only its file into the store)."""
    from hpcgen.config import load_experiment
    from hpcgen.config.identity import short_hash
    from hpcgen.pipeline import executors
    from hpcgen.pipeline.graph import build_graph
    from hpcgen.stages import default_pipeline

    check_strategy(strategy)
    from hpcgen.arrangements.strategies import NEEDS_TASKS

    if strategy in NEEDS_TASKS and fields.task_field is None:
        raise ConfigError(f"strategy {strategy!r} orders by task, and the rows have none", key="--strategy",
                          fix="name the task column with --task-field")
    overrides = device_overrides(device, visible_gpus()) + list(overrides)
    check_tables(train, test, fields)
    store = (store or default_store()).expanduser().resolve()
    doc = experiment_document(_absolute(train.path), _absolute(test.path), fields, strategy, model, store, executor)
    name = "arrange-" + short_hash(yaml.safe_dump(doc, sort_keys=False) + "\n".join(overrides), "run")
    file = store / "arrange" / f"{name}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    tmp.write_text("# planned by hpcgen arrange\n" + yaml.safe_dump({"name": name, **doc}, sort_keys=False))
    os.replace(tmp, file)
    pipeline = default_pipeline()  # its stages, whatever $HPCGEN_PIPELINE says
    exp = load_experiment(file, pipeline, list(overrides))
    if len(exp.runs) != 1:
        raise ConfigError(f"--set makes {len(exp.runs)} runs; hpcgen arrange makes one arrangement", key="--set",
                          fix="set one value per key")
    if executors.executor_class(executors.resolve(exp.cluster.executor)).detached:
        raise ConfigError(f"executor {exp.cluster.executor!r} queues the work and returns; hpcgen arrange waits "
                          "for its result", key="cluster.executor", fix="use local or debug (or run the stages "
                          "with hpcgen submit --until arrange)")
    return Plan(exp, pipeline, build_graph(exp, pipeline).until("arrange"), file)


def run_arrangement(train: Table, test: Table, fields: Fields, *, strategy: str = "tma", model: str | None = None,
                    overrides: Sequence[str] = (), store: Path | None = None, executor: str = "local",
                    device: str = "auto", console: Console | None = None) -> Result:
    """Arrange the rows of ``train`` by ``test`` with the pipeline's stages; the order and rounds
    index the rows of ``train``. ``device``: auto (a GPU where one is visible), cpu or cuda; the
    ``overrides`` (``--set``) come after it and win."""
    from hpcgen.contracts.arrangement import ARRANGEMENT, read_arrangement
    from hpcgen.pipeline.fingerprint import content_digest
    from hpcgen.pipeline.store import Store
    from hpcgen.pipeline.submit import submit

    plan = plan_arrangement(train, test, fields, strategy=strategy, model=model, overrides=overrides, store=store,
                            executor=executor, device=device)
    exp, graph, file = plan.exp, plan.graph, plan.file
    console = console or Console(stderr=True)
    started = time.perf_counter()
    code = submit(exp, plan.pipeline, graph, console=console)
    if code != 0:  # the executor has printed which task failed and the hpcgen logs command for it
        raise HpcgenError(f"the arrangement's tasks failed (exit {code}): see the failed task's logs above")
    node = next(n for n in graph.nodes.values() if n.stage.name == "arrange")
    st = Store(exp.store)
    arrangement = read_arrangement(st.node_dir("arrange", node.key) / ARRANGEMENT)
    assert arrangement.ids is not None, "the arrange stage writes the ids"
    order = np.fromiter((int(i.rsplit("-", 1)[1]) for i in arrangement.ids), dtype=np.int64,
                        count=len(arrangement.ids))
    rounds = arrangement.rounds.astype(np.int64) if arrangement.rounds is not None else np.full(len(order), -1)
    embed = [n for n in graph.nodes.values() if n.stage.name == "embed"]
    model_attrs = _model_attrs(st.node_dir("embed", embed[0].key)) if embed else {}

    def checksum(path: str) -> str:
        return path if path.startswith(HUB) else "sha256:" + content_digest(path)

    from hpcgen.version import __version__

    sidecar = {
        "hpcgen_version": __version__, "strategy": strategy,
        "params": arrangement.params, "model": model_attrs,
        "inputs": {"train": {"path": train.path, "checksum": checksum(train.path), "rows": len(train)},
                   "test": {"path": test.path, "checksum": checksum(test.path), "rows": len(test)}},
        "fields": {k: v for k, v in vars(fields).items() if v is not None},
        "overrides": list(overrides), "rows_out": int(len(order)),
        "rounds": int(rounds.max()) + 1 if len(rounds) and rounds.max() >= 0 else None,
        "arrangement_attrs": {k: _plain(v) for k, v in arrangement.attrs.items() if k != "params"},
        "experiment_file": str(file),
        "nodes": {n.stage.name: str(st.node_dir(n.stage.name, n.key)) for n in graph.nodes.values()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Result(order, rounds, sidecar)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _model_attrs(embed_dir: Path) -> dict[str, Any]:
    import h5py

    shards = sorted(embed_dir.glob("embeddings-*.h5"))
    if not shards:
        return {}
    with h5py.File(shards[0], "r") as f:
        keep = ("model", "model_source", "weights_sha256", "revision", "dim", "max_seq_length", "device", "dtype")
        return {k: _plain(f.attrs[k]) for k in keep if k in f.attrs}


def arrange_files(train_path: str, test_path: str, out: str | Path, fields: Fields, *, strategy: str = "tma",
                  model: str | None = None, overrides: Sequence[str] = (), store: Path | None = None,
                  executor: str = "local", device: str = "auto", out_format: Kind | None = None,
                  console: Console | None = None) -> Result:
    """``hpcgen arrange``: read the tables, arrange, write OUT and its sidecar."""
    check_strategy(strategy)
    train = read_table(train_path, "TRAIN")
    test = read_table(test_path, "TEST")
    kind = out_format or kind_of_output(out, train.kind)  # as written: a trailing / means a directory
    out = Path(out)
    if out.exists() and out.is_dir() != (kind == "dataset"):
        raise ConfigError(f"{str(out)!r} exists and is a {'directory' if out.is_dir() else 'file'}", key="-o",
                          fix="choose another output path, or remove it")
    if out.is_dir() and any(out.iterdir()) and not any((out / n).is_file() for n in ("state.json",
                                                                                      "dataset_info.json")):
        raise ConfigError(f"{str(out)!r} is a folder that holds other files, not a datasets directory: it would "
                          "be replaced", key="-o", fix="name a new folder for the arranged dataset")
    if not out.parent.exists():
        raise ConfigError(f"the folder of {str(out)!r} does not exist", key="-o", fix="create it first")
    result = run_arrangement(train, test, fields, strategy=strategy, model=model, overrides=overrides,
                             store=store, executor=executor, device=device, console=console)
    side = sidecar_path(out)
    side.unlink(missing_ok=True)  # a stale sidecar never describes the new output
    write_table(train, result.order.tolist(),
                {POSITION: list(range(len(result.order))), ROUND: result.rounds.tolist()}, out, kind)
    result.sidecar.update(output={"path": str(out), "format": kind})
    tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result.sidecar, indent=1) + "\n")
    os.replace(tmp, side)
    return result


class Arranged(NamedTuple):
    """``hpcgen.arrange``'s result: the ordered rows (the input's type) and their positions in
    the input (``dataset[j]`` is ``train[order[j]]``)."""

    dataset: Any
    order: np.ndarray


def _memory_table(data: Any, name: str, inputs: Path) -> tuple[Table, str]:
    """``data`` as a Table backed by a file of the store named by its content, and its type:
    ``records`` (a list of dicts), ``pandas``, ``arrow``, ``dataset`` or ``path``."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(data, (str, Path)):
        return read_table(str(data), name), "path"
    kind: str
    if isinstance(data, list):
        kind = "records"
    elif isinstance(data, pa.Table):
        kind = "arrow"
    elif type(data).__module__.startswith("pandas"):
        kind = "pandas"
    elif type(data).__module__.startswith("datasets"):
        kind = "dataset"
    else:
        raise ConfigError(f"{name} is a {type(data).__name__}", key=name,
                          fix="give a list of dicts, a pandas DataFrame, a pyarrow Table, a datasets.Dataset or a path")
    inputs.mkdir(parents=True, exist_ok=True)
    tmp = inputs / f".{name}.tmp-{os.getpid()}"
    arrow: pa.Table | None
    if kind == "records":
        bad = next((i for i, rec in enumerate(data) if not isinstance(rec, dict)), None)
        if bad is not None:
            raise ConfigError(f"{name} row {bad} is a {type(data[bad]).__name__}, not a dict", key=name,
                              fix="give one dict per row")
        try:
            arrow = pa.Table.from_pylist(data)
        except (pa.ArrowException, TypeError, ValueError):  # rows Arrow cannot type alike: as JSON Lines
            arrow = None
    elif kind == "pandas":
        arrow = pa.Table.from_pandas(data, preserve_index=False)
    elif kind == "dataset":
        # a selected or shuffled Dataset keeps an index mapping over its table: apply it
        arrow = (data.flatten_indices() if getattr(data, "_indices", None) is not None else data).data.table
    else:
        arrow = data
    if arrow is not None:
        # the same rows as a list, a DataFrame, a Table or a Dataset make the same file (their
        # libraries' schema metadata dropped), so they share one computation in the store
        arrow = _plain_types(pa.Table.from_batches(arrow.to_batches(), schema=arrow.schema.remove_metadata()))
        pq.write_table(arrow, tmp)
    else:
        try:
            tmp.write_text("".join(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n" for rec in data))
        except TypeError as exc:
            raise ConfigError(f"{name} holds a value neither Arrow nor JSON can store ({exc})", key=name,
                              fix="give plain values") from None
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:20]
    file = inputs / f"{digest}.{'jsonl' if arrow is None else 'parquet'}"
    os.replace(tmp, file)
    table = Table(str(file), "jsonl", rows=list(data), name=name) if arrow is None else \
        Table(str(file), "parquet", arrow=arrow, name=name)
    return table, kind


def _plain_types(arrow: Any) -> Any:
    """``arrow`` with 64-bit-offset columns as their plain kinds (pandas makes ``large_string``
    where the other containers make ``string``), so the same rows give the same file."""
    import pyarrow as pa

    plain = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
    fields = []
    for f in arrow.schema:
        kind = plain.get(f.type, f.type)
        if pa.types.is_large_list(f.type):
            kind = pa.list_(plain.get(f.type.value_type, f.type.value_type))
        fields.append(f.with_type(kind))
    schema = pa.schema(fields)
    return arrow if schema == arrow.schema else arrow.cast(schema)


def _ordered(data: Any, kind: str, table: Table, order: np.ndarray, extra: dict[str, list[Any]]) -> Any:
    """The rows ``order`` of ``data``, as the same type, with the ``extra`` columns."""
    if kind == "records" or (kind == "path" and table.rows is not None):
        rows = data if kind == "records" else table.rows
        assert rows is not None
        return [{**rows[i], **{k: v[j] for k, v in extra.items()}} for j, i in enumerate(order.tolist())]
    if kind == "pandas":
        out = data.iloc[order].reset_index(drop=True)
        return out.assign(**extra)
    if kind == "dataset":
        ds = data.select(order.tolist())
        for k, v in extra.items():
            if k in ds.column_names:
                ds = ds.remove_columns(k)
            ds = ds.add_column(k, v)
        return ds
    arrow = ordered_arrow(data if kind == "arrow" else table.arrow, order.tolist(), extra)
    if kind == "path" and table.kind == "dataset":
        import datasets

        return datasets.Dataset(arrow)
    return arrow


def arrange(train: Any, test: Any, strategy: str = "tma", *, prompt_field: str = "prompt",
            answer_field: str = "answer", text_template: str | None = None, task_field: str | None = None,
            model: str | None = None, set: Sequence[str] = (), store: str | Path | None = None,
            executor: str = "local", device: str = "auto", columns: bool = True, quiet: bool = True) -> Arranged:
    """Order ``train`` by ``test`` (TMA by default: Algorithm 1 of arXiv 2406.11721, as the
    ``arrange`` stage computes it; any registered strategy by name, options as ``set``, e.g.
    ``set=["arrange.direction=reverse"]``).

    ``train`` and ``test`` are lists of dicts, pandas DataFrames, pyarrow Tables,
    ``datasets.Dataset`` objects or paths (as ``hpcgen arrange`` reads them). Returns
    ``Arranged(dataset, order)``: the training rows in training order, of ``train``'s type (a
    path gives what reading it gives: a list of dicts for JSON Lines, a pyarrow Table for
    Parquet, a Dataset for a ``datasets`` directory), with the columns ``hpcgen_position`` and
    ``hpcgen_round`` unless ``columns=False``; and ``order``, the positions in ``train`` of those
    rows. ``device``: ``auto`` (embed and similarity on a GPU where one is visible), ``cpu`` or
    ``cuda``. The stages' outputs are kept in ``store`` (default ``~/.cache/hpcgen/arrange``), so
    the same call again returns at once. Raises ``hpcgen.errors.ConfigError`` on bad input.
    """
    root = (Path(store) if store is not None else default_store()).expanduser()
    train_table, train_kind = _memory_table(train, "train", root / "inputs")
    test_table, _ = _memory_table(test, "test", root / "inputs")
    console = Console(stderr=True, quiet=quiet)
    result = run_arrangement(train_table, test_table, Fields(prompt_field, answer_field, text_template, task_field),
                             strategy=strategy, model=model, overrides=list(set), store=root, executor=executor,
                             device=device, console=console)
    extra = {POSITION: list(range(len(result.order))), ROUND: result.rounds.tolist()} if columns else {}
    return Arranged(_ordered(train, train_kind, train_table, result.order, extra), result.order)
