"""Exact-Match of the instruction diversity study in the report: unseen instructions (no training
records) apart from held-out examples of seen ones, overall, per test source and per instruction,
at the last scored snapshot; the accuracy figures and their defaults.

The losses-*.h5 files below are written by hand in the evaluation stage's output format (see
hpcgen.stages.evaluate): /steps, /items_seen, /loss (k, n), /ids, /task, /generalist, /seen,
/source and /exact_match (k, n, 0/1 or NaN), a run's snapshots split over several files.
"""

from __future__ import annotations

import csv
import json
import math

import h5py
import numpy as np
import pytest
from pydantic import ValidationError

from hpcgen.report import plots
from hpcgen.report.curves import build_curve
from hpcgen.stages.aggregate import FigureSpec, ReportConfig, figure_specs, make_report
from tests.report.files import Store, losses_file

NAN = float("nan")
AXIS = "data.sources.0.instructions"

# the test records of every run: two unseen instructions (one per source) and two seen ones
TASKS = ["ab>c", "ab>c", "ba>d", "ba>d", "cc>a", "cc>a", "dd>b"]
SEEN = [False, False, False, False, True, True, True]
SOURCES = ["in-domain", "in-domain", "lower k", "lower k", "in-domain", "in-domain", "lower k"]

# Exact-Match at the last snapshot (step 30), per (instructions, seed); record 3 is never scored
FINAL = {
    (10, 1): [0, 0, 1, NAN, 1, 1, 1],  # unseen 1/3, seen 1
    (10, 2): [0, 0, 0, NAN, 1, 0, 1],  # unseen 0, seen 2/3
    (100, 1): [1, 0, 1, NAN, 1, 1, 1],  # unseen 2/3, seen 1
    (100, 2): [1, 1, 0, NAN, 1, 1, 0],  # unseen 2/3, seen 2/3
    (1000, 1): [1, 1, 1, NAN, 1, 1, 1],  # unseen 1, seen 1
    (1000, 2): [1, 1, 0, NAN, 1, 1, 1],  # unseen 2/3, seen 1
}
EARLY = [0, 0, 0, NAN, 1, 0, 0]  # step 10: unseen 0, seen 1/3
MIDDLE = [1, 0, 0, NAN, 1, 1, 0]  # step 20 (the second file): unseen 1/3, seen 2/3


def eval_file(path, steps, em, tasks=TASKS, seen=SEEN, sources=SOURCES, loss=None):
    """One evaluation array task's losses-IIIII.h5: ``em`` (k, n) Exact-Match per snapshot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    em = np.asarray(em, dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("steps", data=np.asarray(steps, dtype=np.int64))
        f.create_dataset("items_seen", data=np.asarray(steps, dtype=np.int64) * 8)
        f.create_dataset("loss", data=np.full(em.shape, 1.5, dtype=np.float32) if loss is None else loss)
        f.create_dataset("ids", data=[f"r{i}" for i in range(len(tasks))], dtype=h5py.string_dtype())
        f.create_dataset("task", data=tasks, dtype=h5py.string_dtype())
        f.create_dataset("generalist", data=np.ones(len(tasks), dtype=bool))
        f.create_dataset("seen", data=np.asarray(seen, dtype=bool))
        f.create_dataset("source", data=sources, dtype=h5py.string_dtype())
        f.create_dataset("exact_match", data=em)  # without rouge1/rougeL: scored without generating
    return path


def diversity_run(store, run_id, values, label=None, steps=((10, 30), (20,)), ems=None):
    """A run whose snapshots are split over two files as two evaluation array tasks write them."""
    store.meta["runs"][run_id] = {"name": ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items()),
                                  "values": values, "label": label}
    folder = store.node("evaluate", run_id)
    for i, (s, em) in enumerate(zip(steps, ems)):
        eval_file(folder / f"losses-{i:05d}.h5", s, em)


def report(store, folder, **cfg):
    return make_report(store.meta, store.inputs, folder, ReportConfig(**cfg))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """3 instruction counts x 2 seeds (data and train seeds zipped), no labels; reported once."""
    root = tmp_path_factory.mktemp("diversity")
    s = Store(root / "store")
    for (n, seed), final in FINAL.items():
        values = {AXIS: n, "data.sources.0.seed": seed, "train.seed": seed}
        diversity_run(s, f"i{n}s{seed}", values, ems=([EARLY, final], [MIDDLE]))
    folder = root / "report"
    result = report(s, folder)
    return result, folder


def test_final_exact_match_of_every_run_unseen_and_seen(study):
    result, folder = study
    summary = json.loads((folder / "summary.json").read_text())
    rows = {r["run_id"]: r for r in summary["runs"]}
    expected = {"i10s1": (1 / 3, 1.0), "i10s2": (0.0, 2 / 3), "i100s1": (2 / 3, 1.0), "i100s2": (2 / 3, 2 / 3),
                "i1000s1": (1.0, 1.0), "i1000s2": (2 / 3, 1.0)}
    for rid, (unseen, seen) in expected.items():
        assert rows[rid]["final_exact_match_unseen"] == pytest.approx(unseen), rid  # record 3 (NaN) left out
        assert rows[rid]["final_exact_match_seen"] == pytest.approx(seen), rid
        assert rows[rid]["final_exact_match_step"] == 30  # in the first file, though the second is read last
    assert rows["i100s2"]["values"] == {AXIS: 100, "data.sources.0.seed": 2, "train.seed": 2}
    assert rows["i100s2"]["label"] is None and rows["i100s2"]["setting"] == "instructions=100"
    assert rows["i10s1"]["unseen_test_instructions"] == 2 and rows["i10s1"]["seen_test_instructions"] == 2
    # the test records are the same at every snapshot: the mean of all seven stays as it was
    assert rows["i10s1"]["final_exact_match"] == pytest.approx(4 / 6)


def test_a_snapshot_in_the_second_file_takes_its_place_by_step(tmp_path):
    folder = tmp_path / "ev"
    files = [eval_file(folder / "losses-00000.h5", [10, 30], [EARLY, FINAL[(10, 1)]]),
             eval_file(folder / "losses-00001.h5", [20], [MIDDLE])]
    c = build_curve("x", {"name": "x", "values": {AXIS: 10}}, files, None)
    assert c.steps.tolist() == [10, 20, 30] and c.items_seen.tolist() == [80, 160, 240]
    assert c.em_unseen == pytest.approx([0.0, 1 / 3, 1 / 3])
    assert c.em_seen == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert c.em_by_source["lower k"]["unseen"] == pytest.approx([0.0, 0.0, 1.0])  # one scored record each
    assert c.em_by_source["lower k"]["seen"] == pytest.approx([0.0, 0.0, 1.0])


def test_per_source_values_in_the_summary(study):
    result, folder = study
    summary = json.loads((folder / "summary.json").read_text())
    rows = {r["run_id"]: r for r in summary["runs"]}
    assert rows["i10s1"]["final_exact_match_by_source"] == {
        "in-domain": {"unseen": 0.0, "seen": 1.0}, "lower k": {"unseen": 1.0, "seen": 1.0}}
    assert rows["i100s2"]["final_exact_match_by_source"] == {
        "in-domain": {"unseen": 1.0, "seen": 1.0}, "lower k": {"unseen": 0.0, "seen": 0.0}}


def test_settings_are_the_mean_and_range_over_seeds(study):
    result, folder = study
    summary = json.loads((folder / "summary.json").read_text())
    settings = {s["setting"]: s for s in summary["settings"]}
    assert list(settings) == ["instructions=10", "instructions=100", "instructions=1000"]
    ten = settings["instructions=10"]
    assert ten["seeds"] == 2 and ten["values"] == {AXIS: 10}
    unseen, seen = ten["final_exact_match_unseen"], ten["final_exact_match_seen"]
    assert [unseen[k] for k in ("mean", "min", "max")] == pytest.approx([1 / 6, 0.0, 1 / 3])
    assert unseen["seeds"] == pytest.approx([1 / 3, 0.0])
    assert [seen[k] for k in ("mean", "min", "max")] == pytest.approx([5 / 6, 2 / 3, 1.0])
    assert seen["seeds"] == pytest.approx([1.0, 2 / 3])
    assert settings["instructions=1000"]["final_exact_match_unseen"]["mean"] == pytest.approx(5 / 6)
    by_source = settings["instructions=100"]["final_exact_match_by_source"]
    lower = by_source["lower k"]["unseen"]
    assert (lower["mean"], lower["min"], lower["max"], lower["seeds"]) == (0.5, 0.0, 1.0, [1.0, 0.0])
    assert by_source["in-domain"]["seen"]["mean"] == pytest.approx(1.0)


def test_the_per_instruction_csv(study):
    result, folder = study
    rows = list(csv.DictReader(open(folder / "exact_match_per_instruction.csv")))
    assert list(rows[0])[:7] == ["run", "label", "source", "instruction", "seen", "records", "final_exact_match"]
    assert len(rows) == 6 * 4
    mine = {(r["source"], r["instruction"]): r for r in rows if r["run_id"] == "i10s2"}
    assert set(mine) == {("in-domain", "ab>c"), ("lower k", "ba>d"), ("in-domain", "cc>a"), ("lower k", "dd>b")}
    half = mine[("lower k", "ba>d")]  # one of its two records never scored
    assert half["seen"] == "False" and half["records"] == "2" and half["nan_records"] == "1"
    assert float(half["final_exact_match"]) == 0
    assert mine[("in-domain", "cc>a")]["seen"] == "True"
    assert float(mine[("in-domain", "cc>a")]["final_exact_match"]) == pytest.approx(0.5)
    assert mine[("in-domain", "cc>a")]["run"] == "instructions=10,seed=2,seed=2"
    assert {r["step"] for r in rows} == {"30"}


def test_the_new_figures_and_the_exact_match_table(study):
    result, folder = study
    for stem in ("accuracy", "accuracy_curves", "accuracy_by_source"):
        assert stem in result["figures"], stem
        for ext in ("png", "svg"):
            assert (folder / f"{stem}.{ext}").stat().st_size > 1000, stem
    assert "heatmap" not in result["figures"]  # one axis varies: no grid
    assert "against the matrix axis data.sources.0.instructions" in result["figures"]["accuracy"]["caption"]
    svg = (folder / "accuracy_by_source.svg").read_text()
    assert "in-domain" in svg and "lower k" in svg and "instructions=10 (2 seeds)" in svg
    assert "seen instructions (held-out examples)" in (folder / "accuracy.svg").read_text()
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    assert "## Exact-Match on unseen and seen instructions" in md
    for text in ("Exact-Match on unseen and seen instructions", "unseen EM, seed range", "0.1667",
                 "0.0000 – 0.3333", "gap (seen − unseen)", "0.6667", "lower k"):
        assert text in md and text in page, text
    assert any("held-out examples of seen instructions" in n for n in result["notes"])


def test_items_seen_and_the_unseen_line_in_curves_files(study):
    result, folder = study
    rows = [r for r in csv.DictReader(open(folder / "curves.csv")) if r["run_id"] == "i10s1"]
    assert [float(r["exact_match_unseen"]) for r in rows] == pytest.approx([0.0, 1 / 3, 1 / 3])
    assert [float(r["exact_match_seen"]) for r in rows] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_every_instruction_at_every_snapshot_in_curves_h5(study):
    """i10s1: EARLY, MIDDLE, FINAL at steps 10, 20, 30; instruction ba>d (lower k) has one scored
    record of two, so its value is that record's."""
    _, folder = study
    with h5py.File(folder / "curves.h5") as f:
        g = f["i10s1/em_per_instruction"]
        names = [(s.decode(), t.decode()) for s, t in zip(g["source"][:], g["instruction"][:])]
        seen, em = g["seen"][:].tolist(), g["exact_match"][:]
    assert names == [("in-domain", "ab>c"), ("lower k", "ba>d"), ("in-domain", "cc>a"), ("lower k", "dd>b")]
    assert seen == [False, False, True, True]
    assert em.tolist() == [[0, 0, 0.5, 0], [0.5, 0, 1, 0], [0, 1, 1, 1]]


def test_log_axis_from_a_tenfold_span():
    assert plots._log_x([10, 30, 100, 300, 1000, 3000]) and plots._log_x([1, 10])
    assert not plots._log_x([1, 2, 5]) and not plots._log_x([0, 100]) and not plots._log_x(["a", "b"])


def test_a_heat_map_on_a_two_by_two_grid(tmp_path):
    """Instructions x examples per instruction: mean over seeds of the final unseen Exact-Match."""
    s = Store(tmp_path / "store")
    tasks, seen, sources = ["u1", "u1", "u2", "u2"], [False] * 4, ["all"] * 4
    cells = {(10, 5): [[0, 0, 0, 1], [0, 0, 0, 0]], (100, 5): [[1, 0, 0, 0], [1, 1, 0, 0]],
             (10, 50): [[1, 1, 0, 0], [1, 1, 1, 1]], (100, 50): [[1, 1, 1, 1], [1, 1, 1, NAN]]}
    for (n, ex), per_seed in cells.items():
        for seed, final in enumerate(per_seed, start=1):
            rid = f"i{n}e{ex}s{seed}"
            s.meta["runs"][rid] = {"name": rid, "label": None,
                                   "values": {AXIS: n, "data.sources.0.examples": ex, "train.seed": seed}}
            eval_file(s.node("evaluate", rid) / "losses-00000.h5", [10, 20], [[0, 0, 0, 0], final], tasks=tasks,
                      seen=seen, sources=sources)
    result = report(s, tmp_path / "report", figures=["heatmap", "accuracy"])
    assert "heatmap" in result["figures"]
    caption = result["figures"]["heatmap"]["caption"]
    assert "data.sources.0.instructions (x) and data.sources.0.examples (y)" in caption  # matrix order
    svg = (tmp_path / "report" / "heatmap.svg").read_text()
    # (10, 5): 1/8; (100, 5): 3/8; (10, 50): 6/8; (100, 50): (1 + 1) / 2, the NaN record left out
    for text in ("0.12", "0.38", "0.75", "1.00"):
        assert text in svg, text
    # two numeric axes vary: accuracy needs to be told which one
    skipped = {x["kind"]: x["reason"] for x in result["skipped_figures"]}
    assert "several numeric axes vary" in skipped["accuracy"] and "set the figure's axis" in skipped["accuracy"]
    # told the axis, the other one is a line each; y_axis given alone finds the other axis
    result = report(s, tmp_path / "report2", figures=[{"kind": "accuracy", "axis": "data.sources.0.examples"},
                                                      {"kind": "heatmap", "y_axis": AXIS}])
    assert set(result["figures"]) == {"accuracy", "heatmap"}
    assert "data.sources.0.examples (x) and data.sources.0.instructions (y)" in result["figures"]["heatmap"]["caption"]
    svg = (tmp_path / "report2" / "accuracy.svg").read_text()
    assert "instructions=10" in svg and "instructions=100" in svg


def test_older_files_without_seen_or_source_report_every_record_as_unseen(tmp_path):
    s = Store(tmp_path / "store")
    for n, hits in ((10, [[0, 0], [0, 1]]), (100, [[0, 1], [1, 1]])):
        rid = f"i{n}"
        s.meta["runs"][rid] = {"name": rid, "values": {AXIS: n}, "label": None}
        losses_file(s.node("evaluate", rid) / "losses-00000.h5", [10, 20], [[2.0, 2.0], [1.0, 1.0]], ["t1", "t2"],
                    metrics={"exact_match": hits})
    result = report(s, tmp_path / "report")
    rows = {r["run_id"]: r for r in result["runs"]}
    assert rows["i10"]["final_exact_match_unseen"] == pytest.approx(0.5)
    assert rows["i10"]["final_exact_match_seen"] is None
    assert rows["i100"]["final_exact_match_by_source"] == {"all": {"unseen": 1.0, "seen": None}}
    assert rows["i100"]["seen_test_instructions"] == 0
    assert {"accuracy", "accuracy_curves"} <= set(result["figures"])
    assert "accuracy_by_source" not in result["figures"]  # one source: not in the default set, without a note
    assert not any("accuracy" in n for n in result["notes"])
    assert {x["kind"]: x["reason"] for x in result["skipped_figures"]}["accuracy_by_source"] == (
        "1 test source(s) with unseen records")
    assert not any("held-out examples" in n for n in result["notes"])
    rows = list(csv.DictReader(open(tmp_path / "report" / "exact_match_per_instruction.csv")))
    assert {(r["run"], r["source"], r["instruction"], r["seen"]) for r in rows} == {
        (run, "all", t, "False") for run in ("i10", "i100") for t in ("t1", "t2")}
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["settings"][0]["final_exact_match_seen"] == {"mean": None, "min": None, "max": None,
                                                                "seeds": [None]}
    # listed, it is drawn from the one source
    result = report(s, tmp_path / "report2", figures=["accuracy_by_source"])
    assert list(result["figures"]) == ["accuracy_by_source"]


def test_accuracy_without_a_numeric_axis_is_skipped_with_a_note(tmp_path):
    s = Store(tmp_path / "store")
    for i, (enc, label) in enumerate(((True, "encrypted"), (False, "plain"))):
        rid = f"r{i}"
        s.meta["runs"][rid] = {"name": rid, "values": {"data.sources.0.encrypt": enc}, "label": label}
        eval_file(s.node("evaluate", rid) / "losses-00000.h5", [10], [FINAL[(10, 1 + i)]])
    result = report(s, tmp_path / "report", figures=["accuracy", "accuracy_curves", "heatmap"])
    assert list(result["figures"]) == ["accuracy_curves"]
    assert {x["kind"] for x in result["skipped_figures"]} == {"accuracy", "heatmap"}
    assert any("(accuracy) is not drawn: no numeric matrix axis other than seeds varies" in n for n in result["notes"])
    assert not (tmp_path / "report" / "accuracy.png").exists()
    # named, a non-numeric axis is drawn by category
    result = report(s, tmp_path / "report2", figures=[{"kind": "accuracy", "axis": "data.sources.0.encrypt"}])
    assert "accuracy" in result["figures"] and "data.sources.0.encrypt" in result["figures"]["accuracy"]["caption"]
    # an axis no run has is a note too
    result = report(s, tmp_path / "report3", figures=[{"kind": "accuracy", "axis": "train.nope"}])
    assert "no run has the matrix axis 'train.nope'" in result["skipped_figures"][0]["reason"]


def test_the_final_snapshot_is_the_last_one_scored(tmp_path):
    """A last snapshot evaluated without generation (all NaN) is not the run's result."""
    f = eval_file(tmp_path / "losses-00000.h5", [10, 20], [FINAL[(100, 1)], [NAN] * 7])
    c = build_curve("x", {"name": "x"}, [f], None)
    assert c.em_final_step == 10 and c.final_em("unseen") == pytest.approx(2 / 3)
    assert math.isnan(c.final_em("unseen", "nowhere"))
    g = eval_file(tmp_path / "none.h5", [10], [[NAN] * 7])
    c = build_curve("y", {"name": "y"}, [g], None)
    assert c.em_final is None and c.em_per_task == [] and math.isnan(c.final_em("seen"))


def test_without_exact_match_no_accuracy_outputs(tmp_path):
    s = Store(tmp_path / "store")
    s.run("a", "instructions=10", {AXIS: 10}, None, [10, 20], [2.0, 1.5])
    s.run("b", "instructions=100", {AXIS: 100}, None, [10, 20], [2.0, 1.2])
    result = report(s, tmp_path / "report", figures=["loss", "accuracy", "accuracy_curves", "accuracy_by_source"])
    assert list(result["figures"]) == ["loss_curves"]
    assert all("no Exact-Match was scored" in x["reason"] for x in result["skipped_figures"])
    row = result["runs"][0]
    assert row["final_exact_match_unseen"] is None and row["final_exact_match_by_source"] == {}
    assert not (tmp_path / "report" / "exact_match_per_instruction.csv").exists()
    assert "unseen EM, seed range" not in (tmp_path / "report" / "report.md").read_text()


def test_axis_options_are_validated_per_kind():
    cfg = ReportConfig(figures=[{"kind": "accuracy", "axis": AXIS},
                                {"kind": "heatmap", "axis": AXIS, "y_axis": "data.sources.0.examples"}])
    assert figure_specs(cfg)[1]["y_axis"] == "data.sources.0.examples" and figure_specs(cfg)[0]["axis"] == AXIS
    for bad in ({"kind": "loss", "axis": AXIS}, {"kind": "accuracy", "y_axis": AXIS},
                {"kind": "heatmap", "axis": AXIS, "y_axis": AXIS}, {"kind": "accuracy", "axis": "a\nb"}):
        with pytest.raises(ValidationError):
            FigureSpec(**bad)
