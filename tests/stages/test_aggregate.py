"""Aggregation with missing and NaN points, every plot, the report listing every run."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest

from hpcgen.report.curves import RunCurve, build_curve, correlation, summary
from hpcgen.report.document import write_report


def losses_file(path, steps, loss, tasks):
    with h5py.File(path, "w") as f:
        f.create_dataset("steps", data=np.asarray(steps))
        f.create_dataset("items_seen", data=np.asarray(steps) * 16)
        f.create_dataset("loss", data=np.asarray(loss, dtype=np.float32))
        f.create_dataset("ids", data=[f"r{i}" for i in range(len(tasks))], dtype=h5py.string_dtype())
        f.create_dataset("task", data=tasks, dtype=h5py.string_dtype())
        f.create_dataset("generalist", data=np.asarray([True, False, True]))
    return path


def test_nan_points_are_counted_never_zero(tmp_path):
    f = losses_file(tmp_path / "a.h5", [10, 20, 30], [[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan], [0.5, 0.5, 0.5]],
                    ["t1", "t1", "t2"])
    c = build_curve("id1", {"name": "nft", "values": {"arrange.strategy": "nft"}}, [f], None)
    assert c.loss[0] == 2.0 and np.isnan(c.loss[1]) and c.loss[2] == 0.5
    assert c.n_nan.tolist() == [1, 3, 0] and c.generalist[0] == 2.0
    assert c.per_task["t1"][0] == 1.0 and np.isnan(c.per_task["t1"][1])
    row = summary(c, [15, 25, 30])
    assert row["nan_points"] == 1 and row["nan_records"] == 4
    assert row["loss@15"] == 2.0 and row["loss@25"] == 2.0 and row["loss@30"] == 0.5  # the NaN step is skipped
    assert row["min_loss"] == 0.5 and row["min_step"] == 30 and abs(row["auc"] - 1.25) < 1e-9


def test_correlations():
    x = np.arange(10.0)
    p, s = correlation(x, x ** 3)
    assert abs(s - 1.0) < 1e-12 and 0.9 < p < 1.0
    assert np.isnan(correlation(np.array([1.0, np.nan]), np.array([1.0, 2.0]))[0])


def test_report_with_a_run_missing_points_and_every_plot(tmp_path):
    runs = []
    for i, name in enumerate(["random", "nft", "tma", "tma-seed2"]):
        steps = [10, 20, 30] if name != "tma" else [10, 30]  # a missing snapshot
        loss = [[3 - 0.1 * k - 0.05 * i] * 3 for k in range(len(steps))]
        f = losses_file(tmp_path / f"{name}.h5", steps, loss, ["t1", "t2", "t2"])
        values = {"arrange.strategy": name.split("-")[0], "train.seed": 2 if "seed2" in name else 1}
        c = build_curve(f"id{i}", {"name": name, "values": values}, [f], None)
        if name == "nft":
            c.sd, c.sd_interval = np.linspace(-0.9, -0.3, 40), 16
        runs.append(c)
    out = tmp_path / "report"
    out.mkdir()
    result = write_report(runs, out, "test report")
    for name in ("loss_curves", "per_task", "sd_vs_loss"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000, name
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for c in runs:
        assert c.run_id in md and c.name in page
    assert page.count("data:image/png;base64,") == 3 and "<img" in page
    rows = list(csv.DictReader(open(out / "curves.csv")))
    assert len(rows) == 3 + 3 + 2 + 3 and {r["run"] for r in rows} == {c.name for c in runs}
    assert json.loads((out / "summary.json").read_text())["runs"][0]["run"] == result["runs"][0]["run"]
    with h5py.File(out / "curves.h5") as f:
        assert set(f) == {c.run_id for c in runs} and "sd_curve" in f["id1"]


def test_single_run_curve_type():
    c = RunCurve("x", "x", {}, np.array([1]), np.array([16]), np.array([2.0]), np.array([2.0]), np.array([0]))
    assert summary(c, [1])["auc"] == 2.0


def test_generation_metrics_and_the_axis_plot(tmp_path):
    runs = []
    for i, n in enumerate([10, 100, 1000]):
        f = losses_file(tmp_path / f"r{n}.h5", [10, 20], [[2.0 - i * 0.3] * 3, [1.5 - i * 0.3] * 3],
                        [f"x{i}", f"x{i}", "u"])  # each run has its own test tasks, as rewriting runs do
        with h5py.File(f, "a") as h:
            h.create_dataset("exact_match", data=np.asarray([[0, 0, 1], [0, 1, 1]], dtype=np.float32) * (i + 1) / 3)
            h.create_dataset("rouge1", data=np.full((2, 3), 0.5, dtype=np.float32))
            h.create_dataset("rougeL", data=np.full((2, 3), 0.4, dtype=np.float32))
        runs.append(build_curve(f"id{n}", {"name": f"instructions={n}",
                                           "values": {"data.sources.0.instructions": n}}, [f], None))
    assert runs[2].metrics["exact_match"].tolist() == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    out = tmp_path / "rep"
    out.mkdir()
    result = write_report(runs, out, "diversity")
    assert set(result["figures"]) >= {"generation_metrics", "final_vs_axis"}
    assert (out / "final_vs_axis.png").stat().st_size > 1000
    assert result["runs"][2]["final_exact_match"] == pytest.approx(2 / 3)


def test_the_stage_reports_labels_train_counts_and_provenance(tmp_path):
    """Aggregate.run on a task's meta and inputs, as a job sees them (through make_report, which
    ``hpcgen report`` calls too)."""
    import logging
    from types import SimpleNamespace

    from hpcgen.stages.aggregate import Aggregate, ReportConfig
    from tests.report.files import Store

    store = Store(tmp_path / "store")
    for seed, d in ((0, 0.0), (1, 0.2)):
        store.run(f"rt{seed}", f"strategy=random,seed={seed}", {"arrange.strategy": "random", "arrange.seed": seed},
                  "RT", [10, 20, 30, 40], [3.0 + d, 2.8 + d, 2.6 + d, 2.5 + d],
                  train={"steps": 40, "records_truncated": 5, "records_too_long": 2})
    store.run("tma", "strategy=tma", {"arrange.strategy": "tma"}, "TMA-NFT", [10, 20, 30, 40], [2.5, 2.2, 2.0, 1.9],
              sd=np.linspace(-0.8, -0.5, 10), sd_interval=16)
    store.meta["provenance"] = {"hpcgen_version": "1.2.3", "commit": None, "runs": 3}
    out = tmp_path / "out"
    task = SimpleNamespace(meta=store.meta, inputs=store.inputs, log=logging.getLogger("test"),
                           config=SimpleNamespace(report=ReportConfig(early_fraction=0.5)),
                           output_dir=lambda name: out / name)
    Aggregate().run(task)
    summary = json.loads((out / "report" / "summary.json").read_text())
    # steps <= 20 are the first half: RT seeds 2.9 and 3.1, TMA-NFT 2.35
    assert summary["baseline"]["early_means"] == pytest.approx([2.9, 3.1], abs=1e-6)
    assert summary["early_vs_baseline"]["TMA-NFT"]["delta"] == pytest.approx(2.35 - 3.0, abs=1e-6)
    rows = {r["run_id"]: r for r in summary["runs"]}
    assert rows["rt1"]["records_truncated"] == 5 and rows["rt1"]["records_too_long"] == 2
    assert rows["rt1"]["setting"] == "RT" and rows["rt1"]["run"] == "strategy=random,seed=1"
    page = (out / "report" / "report.html").read_text()
    assert "1.2.3 (commit unknown)" in page and "3 with evaluated snapshots of 3" in page
    assert "RT (2 seeds)" in page and "TMA-NFT" in page and "Δ vs RT (first 50 %)" in page
