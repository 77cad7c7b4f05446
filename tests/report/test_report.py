"""The report in the paper's language: settings by label with a seed spread, the early-loss
headline against the baseline, the paper's figures (loss, windows, measures, metrics) with their
captions and findings, provenance, and figures without data skipped with a note."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from pydantic import ValidationError

from hpcgen.report.curves import build_curve, group_settings, measure_at_snapshots, measure_correlations
from hpcgen.stages.aggregate import Aggregate, FigureSpec, ReportConfig, make_report
from tests.report.files import Store, losses_file

STEPS = list(range(10, 101, 10))


def line(start: float, slope: float = -0.1) -> list[float]:
    return [start + slope * k for k in range(len(STEPS))]


@pytest.fixture
def study(tmp_path):
    """RT over three seeds, NFT over two, FFT once: hand-computable early means (steps <= 30)."""
    s = Store(tmp_path / "store")
    for seed, d in enumerate([0.0, 0.1, 0.2], start=1):
        s.run(f"rt{seed}", f"strategy=random,seed={seed}", {"arrange.strategy": "random", "train.seed": seed}, "RT",
              STEPS, line(3.0 + d), train={"steps": 100, "records_truncated": 3 * seed, "records_too_long": seed})
    for seed, d in enumerate([0.0, 0.2], start=1):
        s.run(f"nft{seed}", f"strategy=nft,seed={seed}", {"arrange.strategy": "nft", "train.seed": seed}, "NFT",
              STEPS, line(2.5 + d), sd=np.linspace(-0.9, -0.3, 10))
    s.run("fft1", "strategy=fft,seed=1", {"arrange.strategy": "fft", "train.seed": 1}, "FFT", STEPS, line(3.4),
          train={"steps": 100, "too_long": [4, 9]})  # an older train summary: rows, not a count
    return s


def report(store, tmp_path, **cfg):
    folder = tmp_path / "report"
    result = make_report(store.meta, store.inputs, folder, ReportConfig(**cfg))
    return result, folder


def test_seed_groups_give_the_headline_against_the_baseline(study, tmp_path):
    result, folder = report(study, tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["early"]["until_step"] == 30  # 30 % of 100 steps
    base = summary["baseline"]
    assert base["label"] == "RT" and base["seeds"] == 3
    assert base["early_means"] == pytest.approx([2.9, 3.0, 3.1], abs=1e-6)
    assert base["std"] == pytest.approx(0.1, abs=1e-6) and base["spread"] == pytest.approx(0.2, abs=1e-6)
    vs = summary["early_vs_baseline"]
    assert set(vs) == {"RT", "NFT", "FFT"}
    assert vs["NFT"]["early_mean"] == pytest.approx(2.5, abs=1e-6) and vs["NFT"]["seeds"] == 2
    assert vs["NFT"]["delta"] == pytest.approx(-0.5, abs=1e-6)
    assert vs["NFT"]["std"] == pytest.approx(np.std([2.4, 2.6], ddof=1), abs=1e-6)
    assert vs["FFT"]["delta"] == pytest.approx(0.3, abs=1e-6) and vs["FFT"]["seeds"] == 1
    assert vs["RT"]["delta"] == pytest.approx(0.0, abs=1e-9)
    assert vs["NFT"]["against_baseline_seeds"] == "lower than every seed"
    assert vs["FFT"]["against_baseline_seeds"] == "higher than every seed"
    rows = {r["run_id"]: r for r in summary["runs"]}
    assert rows["nft2"]["delta_early"] == pytest.approx(2.6 - 3.0, abs=1e-6)
    assert rows["rt2"]["records_truncated"] == 6 and rows["rt2"]["records_too_long"] == 2
    assert rows["fft1"]["records_too_long"] == 2 and rows["nft1"]["records_truncated"] is None
    assert [s["legend"] for s in summary["settings"]] == ["RT (3 seeds)", "NFT (2 seeds)", "FFT"]


def test_labels_replace_raw_names_in_legends_and_tables(study, tmp_path):
    result, folder = report(study, tmp_path)
    svg = (folder / "loss_curves.svg").read_text()
    assert "RT (3 seeds) (baseline)" in svg and "NFT (2 seeds)" in svg
    assert "strategy=random" not in svg and "seed=1" not in svg
    page = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    for text in ("RT (3 seeds)", "Δ vs RT (first 30 %)", "mean loss, first 30 % of steps", "loss at step 100",
                 "records truncated", "records too long", "RT (seed=2)", "strategy=random,seed=2"):
        assert text in page and text in md, text
    rows = list(csv.DictReader(open(folder / "curves.csv")))
    assert {r["setting"] for r in rows} == {"RT", "NFT", "FFT"} and {r["label"] for r in rows} == {"RT", "NFT", "FFT"}
    assert {r["run"] for r in rows if r["setting"] == "RT"} == {f"strategy=random,seed={i}" for i in (1, 2, 3)}
    # numbers are right-aligned cells
    assert "<td class='num'>2.5000</td>" in page


def test_without_a_baseline_the_headline_is_a_note(tmp_path):
    s = Store(tmp_path / "store")
    s.run("a", "strategy=nft", {"arrange.strategy": "nft"}, "NFT", STEPS, line(2.5))
    s.run("b", "strategy=fft", {"arrange.strategy": "fft"}, None, STEPS, line(3.0))
    result, folder = report(s, tmp_path)
    assert "baseline" not in result and "early_vs_baseline" not in result
    assert any("No setting is labelled 'RT'" in n for n in result["notes"])
    page = (folder / "report.html").read_text()
    assert "No setting is labelled" in page and "Δ vs" not in page
    # a run without a label is named by its axes, as before labels existed
    assert [x["setting"] for x in result["settings"]] == ["NFT", "strategy=fft"]
    result, _ = report(s, tmp_path, baseline=None)
    assert "baseline" not in result and any("No baseline is set" in n for n in result["notes"])
    # another label as the baseline
    result, _ = report(s, tmp_path, baseline="NFT")
    assert result["early_vs_baseline"]["strategy=fft"]["delta"] == pytest.approx(0.5, abs=1e-6)


def test_measures_figure_and_correlation_table(tmp_path):
    s = Store(tmp_path / "store")
    k = np.arange(10, dtype=float)
    loss = 3.0 - 0.2 * k + 0.01 * k ** 2  # falls, flattening
    t1, t2 = loss + 0.1, loss - 0.1
    per_task_loss = [[a, a, b] for a, b in zip(t1, t2)]  # records: t1, t1, t2
    falling = -0.3 - 0.05 * k
    s.run("rt", "strategy=random", {"arrange.strategy": "random"}, "RT", STEPS, per_task_loss,
          tasks=("t1", "t1", "t2"), n=1600, measure_interval=160,
          measures={"cosine_min": falling, "cosine_max": -falling, "bigram_kl": np.ones(10)},
          per_task={"cosine_min": np.stack([falling, falling * 2], axis=1),
                    "cosine_avg": np.stack([-falling, -falling], axis=1)},
          measure_tasks=("t1", "t2"))
    result, folder = report(s, tmp_path)
    assert "measures" in result["figures"]
    assert (folder / "measures.png").stat().st_size > 1000
    corr = result["measure_correlations"]["rt"]["measures"]
    assert corr["cosine_min"]["pearson"] > 0.9 and corr["cosine_min"]["spearman"] == pytest.approx(1.0)
    assert corr["cosine_max"]["pearson"] < -0.9 and corr["cosine_max"]["spearman"] == pytest.approx(-1.0)
    assert np.isnan(corr["bigram_kl"]["pearson"])  # a constant measure has no correlation
    assert corr["cosine_min"]["per_task_pearson"] > 0.9 and corr["cosine_min"]["tasks"] == 2
    assert corr["cosine_avg"]["per_task_pearson"] < -0.9 and np.isnan(corr["cosine_avg"]["pearson"])
    page = (folder / "report.html").read_text()
    assert "Similarity measures against loss" in page and "Cosine-Min" in page and "Cosine-Max" in page
    svg = (folder / "measures.svg").read_text()
    assert "Cosine-Min" in svg and "bigram KL" in svg and "Euclidean-Min" not in svg
    # the caption carries the kind's own finding (Appendix B.4)
    assert "Paper: drops in the minimum distances coincide" in page


def test_measure_of_a_snapshot_is_the_first_checkpoint_covering_its_items(tmp_path):
    from tests.report.files import arrangement_file

    f = losses_file(tmp_path / "l.h5", [1, 2, 3], [[1.0], [1.0], [1.0]], ["t"], items_per_step=24)
    a = arrangement_file(tmp_path / "a.h5", n=60, measures={"cosine_min": [-1.0, -2.0, -3.0, -4.0]},
                         per_task={"cosine_min": [[1.0], [2.0], [3.0], [4.0]]}, tasks=("t",))
    c = build_curve("x", {"name": "x"}, [f], a)
    assert c.measure_items.tolist() == [16, 32, 48, 60]
    # items seen 24, 48, 72 -> checkpoints of 32, 48, and the last (60)
    assert measure_at_snapshots(c, "cosine_min").tolist() == [-2.0, -3.0, -4.0]
    assert measure_at_snapshots(c, "cosine_min", "t").tolist() == [2.0, 3.0, 4.0]
    assert measure_at_snapshots(c, "cosine_avg") is None and measure_correlations(c)["cosine_min"]["tasks"] == 0


def test_windows_figure_is_labelled_by_round_window(tmp_path):
    s = Store(tmp_path / "store")
    s.run("rt", "strategy=random", {"arrange.strategy": "random"}, "RT", STEPS, line(3.0), strategy="random")
    for i, (lo, hi) in enumerate([(0, 5), (5, 10), (10, 15)]):
        s.run(f"w{i}", f"strategy=tma,window=[{lo}, {hi}]", {"arrange.strategy": "tma", "arrange.window": [lo, hi]},
              None, STEPS, line(2.5 + 0.2 * i), window=(lo, hi))
    result, folder = report(s, tmp_path)
    assert "windows" in result["figures"]
    svg = (folder / "windows.svg").read_text()
    for label in ("[0, 5)", "[5, 10)", "[10, 15)", "minimum loss", "final loss"):
        assert label in svg, label
    page = (folder / "report.html").read_text()
    assert "Averaged test loss by TMA round window" in page and "Paper: from rounds [0, 5) to [25, 30)" in page


def test_provenance_and_findings_in_the_page(study, tmp_path):
    study.meta["provenance"] = {
        "hpcgen_version": "9.8.7", "commit": "abcdef123456+dirty", "experiment_file": "/exp/arrangement.yaml",
        "overrides": ["train.lr=0.1"], "data": ["niv2 niv2-sample (examples/data)"], "model": "llama-2-7b",
        "embedding_model": "all-MiniLM-L6-v2", "matrix": "zip:\n- label: [RT, NFT, FFT]", "runs": 7}
    figures = [{"kind": "loss", "finding": "NFT falls fastest and lowest; FFT is worst"},
               {"kind": "per_task", "task": "t2", "title": "Loss on t2"}, "sd_vs_loss"]
    result, folder = report(study, tmp_path, figures=figures, title="Arrangement study")
    page = (folder / "report.html").read_text()
    for text in ("Arrangement study", "9.8.7", "abcdef123456+dirty", "/exp/arrangement.yaml", "train.lr=0.1",
                 "niv2 niv2-sample", "llama-2-7b", "all-MiniLM-L6-v2", "zip:\n- label: [RT, NFT, FFT]",
                 "6 with evaluated snapshots of 7"):
        assert text in page, text
    assert page.index("9.8.7") < page.index("Headline") < page.index("<figure>")
    assert "Paper: NFT falls fastest and lowest; FFT is worst" in page
    assert "Paper:" not in result["figures"]["per_task_t2"]["caption"]  # per_task has no finding of its own
    assert list(result["figures"]) == ["loss_curves", "per_task_t2", "sd_vs_loss"]
    assert result["figures"]["per_task_t2"]["title"] == "Loss on t2"
    assert "min–max" in result["figures"]["loss_curves"]["caption"]
    assert "```yaml\nzip:" in (folder / "report.md").read_text()


def test_a_figure_without_data_is_skipped_with_a_note(study, tmp_path):
    figures = ["loss", "measures", "windows", "metrics", "final_vs_axis", {"kind": "per_task", "task": "nope"}]
    result, folder = report(study, tmp_path, figures=figures)
    assert list(result["figures"]) == ["loss_curves"]
    assert {s["kind"] for s in result["skipped_figures"]} == {"measures", "windows", "metrics", "final_vs_axis",
                                                              "per_task"}
    page = (folder / "report.html").read_text()
    assert page.count("is not drawn") == 5 and "no generation metrics were scored" in page
    assert not (folder / "measures.png").exists() and page.count("data:image/png;base64,") == 1
    # the default set leaves out the kinds that need data it lacks, without a note
    result, _ = report(study, tmp_path)
    assert set(result["figures"]) == {"loss_curves", "per_task", "sd_vs_loss"}
    assert not any("not drawn" in n for n in result["notes"])


def test_metrics_figure_of_loss_and_generation_scores(tmp_path):
    s = Store(tmp_path / "store")
    for name, label in (("a", "RT"), ("b", "NFT")):
        s.meta["runs"][name] = {"name": name, "values": {}, "label": label}
        em = np.linspace(0, 1, 10)[:, None] * np.ones((10, 2))
        losses_file(s.node("evaluate", name) / "losses-00000.h5", STEPS, [[v, v] for v in line(3.0)], ["t", "t"],
                    metrics={"exact_match": em, "rouge1": em, "rougeL": em})
    result, folder = report(s, tmp_path, figures=[{"kind": "metrics", "finding": None}])
    svg = (folder / "generation_metrics.svg").read_text()
    for text in ("Exact-Match", "ROUGE-1", "ROUGE-L", "loss"):
        assert text in svg
    assert "Paper:" not in result["figures"]["generation_metrics"]["caption"]  # an explicit null: no finding
    assert result["runs"][0]["final_exact_match"] == pytest.approx(1.0)


def test_a_label_split_by_another_axis_is_two_settings():
    from tests.stages.test_aggregate import RunCurve

    def curve(i, label, values):
        return RunCurve(f"id{i}", f"n{i}", values, np.array([1]), np.array([16]), np.array([1.0]), np.array([1.0]),
                        np.array([0]), label=label)

    curves = [curve(0, "RT", {"arrange.strategy": "random", "data.source": "a", "train.seed": 1}),
              curve(1, "RT", {"arrange.strategy": "random", "data.source": "a", "train.seed": 2}),
              curve(2, "RT", {"arrange.strategy": "random", "data.source": "b", "train.seed": 1}),
              curve(3, "NFT", {"arrange.strategy": "nft", "data.source": "a", "train.seed": 1})]
    settings = group_settings(curves)
    assert [(s.name, s.seeds) for s in settings] == [("RT, source=a", 2), ("RT, source=b", 1), ("NFT, source=a", 1)]
    assert settings[0].run_name(curves[1]) == "RT, source=a (seed=2)"


def test_report_config_is_validated_by_pydantic():
    cfg = ReportConfig(figures=["loss", {"kind": "measures", "task": "t1"}])
    assert [f.kind for f in cfg.figures] == ["loss", "measures"] and cfg.figures[1].task == "t1"
    assert "finding" not in cfg.figures[0].model_fields_set
    assert ReportConfig().baseline == "RT" and ReportConfig().early_fraction == 0.3 and ReportConfig().figures is None
    for bad in ({"figures": 5}, {"figures": "loss"}, {"figures": [{"kind": "pie"}]}, {"figures": [[1, 2]]},
                {"figures": [{"nested": [1, 2]}]}, {"figures": [None]}, {"figures": [{"kind": "loss", "x": 1}]},
                {"figures": [{"kind": "loss", "finding": "two\nlines"}]}, {"early_fraction": 0},
                {"early_fraction": 1.5}, {"early_fraction": "abc"}, {"baseline": ["RT"]}, {"baseline": "R\nT"}):
        with pytest.raises(ValidationError):
            ReportConfig(**bad)
    with pytest.raises(ValidationError):
        FigureSpec(kind=None)


def test_the_stage_reads_train_outputs():
    assert Aggregate.upstream == ("evaluate", "arrange", "train")
