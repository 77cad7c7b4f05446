"""The stage outputs' contracts (hpcgen.contracts, hpcgen.similarity.h5): what a writer writes its
reader reads back, and a missing or foreign upstream file is an UpstreamError naming the node, the
file and the fix; the typed task boundary (SectionView, TaskMeta) and the stages' signatures."""

from __future__ import annotations

import inspect
import json
import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcgen.contracts import arrangement, losses, records, snapshots
from hpcgen.errors import ConfigError, DataError, HpcgenError, UpstreamError
from hpcgen.pipeline.stage import RunInfo, SectionView, Stage, Task, TaskMeta, Upstream
from hpcgen.similarity import h5
from hpcgen.stages import default_pipeline


def node(tmp_path: Path, stage: str, size: int = 1) -> Upstream:
    folder = tmp_path / "store" / stage / "k123"
    folder.mkdir(parents=True, exist_ok=True)
    return Upstream(stage=stage, key="k123", dir=folder, size=size)


def some_records() -> list[records.Record]:
    rows = [("a", "t1", "train"), ("b", "t2", "train"), ("c", "t1", "test"), ("d", None, "test")]
    return [records.Record(id=i, task=t, split=s, prompt=f"p{i}", answer=f"a{i}", text=f"T{i}", embed_text=f"E{i}",
                           source="src", generalist=i == "d") for i, t, s in rows]


def test_records_round_trip_and_split_views(tmp_path):
    prep = node(tmp_path, "prepare")
    records.write_records(prep.dir / records.RECORDS, some_records())
    records.write_summary(prep.dir / records.SUMMARY, {"template": "{prompt}|{answer}", "embed_template": "{prompt}"})
    got = records.read_records(prep, ["id", "task"])
    assert len(got) == 4 and got.column("id") == ["a", "b", "c", "d"]
    assert got.train_rows.tolist() == [0, 1] and got.test_rows.tolist() == [2, 3]
    assert got.train("task") == ["t1", "t2"] and got.test("id") == ["c", "d"]
    assert got.test_records() == [{"split": "test", "id": "c", "task": "t1"},
                                  {"split": "test", "id": "d", "task": None}]
    everything = records.read_records(prep)
    assert everything.test_records()[1]["generalist"] is True
    summary = records.read_summary(prep)
    assert (summary.template, summary.embed_template) == ("{prompt}|{answer}", "{prompt}")
    (prep.dir / records.SUMMARY).write_text("{}")
    assert records.read_summary(prep).template == records.DEFAULT_TEMPLATE


def test_a_missing_or_foreign_upstream_file_names_node_file_and_fix(tmp_path):
    prep = node(tmp_path, "prepare")
    with pytest.raises(UpstreamError) as err:
        records.read_records(prep)
    message = str(err.value)
    assert message.startswith("upstream prepare/k123: ") and str(prep.dir / "records.parquet") in message
    assert "is missing" in message and "hpcgen verify FILE --repair" in message and "hpcgen submit FILE" in message
    assert err.value.exit_code == 1 and not isinstance(err.value, ConfigError)
    assert str(pickle.loads(pickle.dumps(err.value))) == message  # it travels back from a job intact
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["x"], "split": ["train"]}), prep.dir / records.RECORDS)  # an older format
    with pytest.raises(UpstreamError, match="has no column 'embed_text'"):
        records.read_records(prep, ["id", "embed_text"])
    (prep.dir / records.RECORDS).write_text("not parquet")
    with pytest.raises(UpstreamError, match="is not a Parquet file"):
        records.read_records(prep)
    with pytest.raises(UpstreamError, match=r"arrange/k123: .*arrangement.h5: is missing"):
        arrangement.read_order(node(tmp_path, "arrange"))
    with pytest.raises(UpstreamError, match=r"similarity-00000.h5: is missing"):
        h5.SimilarityNode(node(tmp_path, "similarity", 2))
    train = node(tmp_path, "train")
    (train.dir / snapshots.SNAPSHOTS).write_text(json.dumps([{"step": 1}]))
    with pytest.raises(UpstreamError, match="is not a list of snapshots"):
        snapshots.read_snapshots(train)


def test_data_error_is_bad_input_and_still_importable_from_embed():
    from hpcgen.stages.embed import DataError as FromEmbed

    assert FromEmbed is DataError and issubclass(DataError, ConfigError) and DataError("x").exit_code == 2
    assert issubclass(UpstreamError, HpcgenError) and UpstreamError("x").exit_code == 1


def test_arrangement_round_trip(tmp_path):
    ar = node(tmp_path, "arrange")
    measures = arrangement.Measures(np.array([2, 4]), ["t1", "t2"], {"cosine_min": np.array([0.1, 0.2])},
                                    {"cosine_min": np.array([[0.1, 0.3], [0.2, 0.4]]), "bad": np.zeros((3, 2))})
    arrangement.write_arrangement(arrangement.arrangement_path(ar), arrangement.Arrangement(
        order=np.array([2, 0, 1]), ids=["c", "a", "b"], rounds=np.array([0, 0, 1], dtype=np.int32),
        sd_curve=np.array([0.5, 0.4]), measures=measures,
        attrs={"strategy": "tma", "params": json.dumps({"window": [1, 3]}), "sd_interval": 2}))
    assert arrangement.read_order(ar).tolist() == [2, 0, 1]
    back = arrangement.read_arrangement(arrangement.arrangement_path(ar))
    assert back.ids == ["c", "a", "b"] and back.rounds.tolist() == [0, 0, 1] and back.sd_curve.tolist() == [0.5, 0.4]
    assert (back.strategy, back.sd_interval, back.window) == ("tma", 2, (1, 3)) and "hpcgen_version" in back.attrs
    assert back.measures.tasks == ["t1", "t2"] and back.measures.items_seen.tolist() == [2, 4]
    assert set(back.measures.per_task) == {"cosine_min"}  # a measure of the wrong shape is left out
    with h5py.File(arrangement.arrangement_path(ar), "r") as f:  # the documented layout, read with plain h5py
        assert f["order"].dtype == np.int64 and f["measures/overall/cosine_min"].shape == (2,)


def test_losses_round_trip_and_work_files(tmp_path):
    ev = node(tmp_path, "evaluate")
    for i, steps in enumerate(([20, 40], [30])):
        k = len(steps)
        losses.write_losses(ev.dir / losses.losses_name(i), steps, [s * 16 for s in steps],
                            {"loss": np.full((k, 2), float(i), dtype=np.float32),
                             "exact_match": np.ones((k, 2), dtype=np.float32)},
                            ids=["x", "y"], tasks=["t1", "t2"], generalist=[True, False], seen=[False, True],
                            source=["s", ""], block=i, blocks=2)
    files = losses.loss_files(ev)
    assert [f.name for f in files] == ["losses-00000.h5", "losses-00001.h5"]
    got = losses.load_losses(files)
    assert got.steps.tolist() == [20, 30, 40] and got.loss[:, 0].tolist() == [0.0, 1.0, 0.0]
    assert got.seen.tolist() == [False, True] and got.source.tolist() == ["s", losses.DEFAULT_SOURCE]
    assert set(got.metrics) == {"exact_match"}
    with h5py.File(files[0]) as f:
        assert dict(f.attrs) == {"snapshots": 2, "block": 0, "blocks": 2}
    done = losses.step_file(tmp_path, 40)
    losses.write_step(done, {"loss": np.arange(3, dtype=np.float32)})
    assert done.name == "step-000040.h5" and not list(tmp_path.glob(".tmp-*"))
    assert losses.read_step(done, ["loss"])["loss"].tolist() == [0, 1, 2]


def test_snapshots_round_trip(tmp_path):
    train = node(tmp_path, "train")
    folder = train.dir / "work-00000" / "snapshots" / "step-000010"
    folder.mkdir(parents=True)
    (folder / snapshots.SNAPSHOT_INFO).write_text(json.dumps({"step": 10, "items_seen": 160, "loss": 2.5}))
    entries = snapshots.collect_snapshots([folder], train.dir)
    snapshots.write_snapshots(train.dir / snapshots.SNAPSHOTS, entries)
    [back] = snapshots.read_snapshots(train)
    assert back["path"] == "work-00000/snapshots/step-000010" and back["bytes"] > 0 and back["items_seen"] == 160
    assert snapshots.snapshot_dir(train, back) == folder
    assert snapshots.read_summary(snapshots.summary_path(train)) == {}  # the report makes do without
    snapshots.write_summary(train.dir / snapshots.SUMMARY, {"steps": 3})
    assert snapshots.read_summary(snapshots.summary_path(train)) == {"steps": 3}


def test_similarity_node_reads_block_attributes_and_joins(tmp_path):
    sim = node(tmp_path, "similarity")
    with h5py.File(sim.dir / h5.block_name(0), "w") as f:
        h5.create_matrix(f, "cosine", 2, 3, "float32", 2)[:] = np.arange(6).reshape(2, 3)
        h5.write_block_results(f, "cosine", {"min": np.array([0.0, 3.0], dtype=np.float32)},
                               np.array([[0, 0, 0]]), np.array([[0.0, 1.0, 2.0]], dtype=np.float32))
        h5.write_block_rows(f, 0, 2)
        h5.write_block_attrs(f, h5.BlockInfo(metrics=["cosine"], row_start=0, row_end=2, n_train=2, n_test=3, dim=4,
                                             dtype="float32", backend="numpy", block=0, blocks=1, k=1, model="m"))
    got = h5.SimilarityNode(sim)
    assert got.info.metrics == ["cosine"] and (got.info.n_train, got.info.n_test) == (2, 3)
    assert got.aggregate("cosine", "min").tolist() == [0.0, 3.0]
    assert got.topk("cosine")[0].tolist() == [[0, 0, 0]]
    assert got.matrix("cosine") is None  # no distances.h5: recomputed from the embeddings instead
    h5.write_virtual_distances(sim.dir / h5.DISTANCES, [h5.block_name(0)], [(0, 2)], 2, 3, ["cosine"],
                               np.dtype("float32"))
    assert got.matrix("cosine").tolist() == [[0, 1, 2], [3, 4, 5]] and got.matrix("euclidean") is None
    with pytest.raises(UpstreamError, match=r"similarity/k123: .*embeddings.h5: is missing"):
        got.embeddings()


def test_task_meta_has_named_fields():
    extra = {"experiment": "exp", "runs": {"r1": {"name": "one", "values": {"a": 1}, "label": "RT"},
                                           "r2": {"name": "two"}}, "provenance": {"commit": None}}
    task = Task(stage="s", key="k", index=0, size=1, dir=Path("."), config=SectionView("s", {}), inputs={}, runs=(),
                log=logging.getLogger("t"), attempt="a", meta=extra)
    meta = task.meta
    assert isinstance(meta, TaskMeta) and meta.experiment == "exp" and meta.provenance == {"commit": None}
    assert meta.runs == {"r1": RunInfo("one", {"a": 1}, "RT"), "r2": RunInfo("two", {}, None)}
    assert meta.runs["r1"].as_dict() == {"name": "one", "values": {"a": 1}, "label": "RT"}
    assert meta.stop is None and meta.resources is None
    assert TaskMeta.from_dict(meta) is meta
    with pytest.raises(TypeError, match="task metadata has no field 'colour'"):
        TaskMeta.from_dict({"colour": "red"})


def test_section_view_typed_lookup():
    from hpcgen.stages.prepare import DataConfig

    view = SectionView("prepare", {"data": DataConfig()})
    assert view.section("data", DataConfig) is view.data is view["data"]
    with pytest.raises(TypeError, match="section 'data' of stage 'prepare' is a DataConfig, not a int"):
        view.section("data", int)
    with pytest.raises(KeyError, match="reads section 'train' without declaring it"):
        view.train  # noqa: B018


def test_stage_methods_keep_the_base_signatures():
    for stage in default_pipeline():
        for name, base in vars(Stage).items():
            if not inspect.isfunction(base) or name.startswith("_"):
                continue
            own = getattr(type(stage), name)
            assert list(inspect.signature(own).parameters) == list(inspect.signature(base).parameters), (
                f"{type(stage).__name__}.{name}")
