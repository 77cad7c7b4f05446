"""The bundled default experiment, at test size, end to end: local executor and the Slurm cluster."""

from __future__ import annotations

import json
import math

import pytest
from matplotlib.image import imread

from hpcgen.cli import main
from tests.conftest import ROOT, wait_for

SMALL = ["data.max_per_train_task=2", "data.max_per_test_task=1", "embed.max_seq_length=64", "train.layers=1",
         "train.hidden=32", "train.heads=2", "train.vocab_size=512", "train.max_length=96", "train.save_every=4",
         "arrange.sd_interval=16"]


def overrides(out) -> list[str]:
    return [x for s in SMALL + [f"output_dir={out}"] for x in ("--set", s)]


def check_report(out) -> None:
    [report] = list((out / "store" / "aggregate").glob("*/report"))
    summary = json.loads((report / "summary.json").read_text())
    assert sorted(r["label"] for r in summary["runs"]) == ["FFT", "NFT", "RT", "RT", "RT", "TMA-FFT", "TMA-NFT"]
    assert summary["baseline"]["label"] == "RT" and summary["baseline"]["seeds"] == 3
    assert set(summary["early_vs_baseline"]) == {"RT", "NFT", "FFT", "TMA-NFT", "TMA-FFT"}
    page = (report / "report.html").read_text()
    assert all(label in page for label in ("TMA-NFT", "TMA-FFT", "RT (3 seeds)")) and "Provenance" in page
    assert page.count("data:image/png;base64,") >= 4
    for fig in ("loss_curves", "per_task", "sd_vs_loss", "measures"):
        height, width, _ = imread(report / f"{fig}.png").shape  # a decodable image of a figure's size
        assert height > 200 and width > 200, fig
    assert all(r["snapshots"] == 3 for r in summary["runs"])  # 180 training items // 16 = 11 steps: 4, 8, 11
    # SD_k for every order, random included: a correlation with the loss, not NaN
    assert all(math.isfinite(r["pearson_sd_loss"]) and -1 <= r["pearson_sd_loss"] <= 1 for r in summary["runs"])


def test_default_experiment_end_to_end_locally(tmp_path, capsys):
    out = tmp_path / "outputs"
    assert main(["submit", str(ROOT / "experiments.yaml"), "--executor", "local", *overrides(out)]) == 0
    check_report(out)
    # everything is complete: a second submit does nothing; the report command rebuilds the report
    assert main(["submit", str(ROOT / "experiments.yaml"), "--executor", "local", *overrides(out)]) == 0
    assert "0 to run" in capsys.readouterr().out
    assert main(["report", str(ROOT / "experiments.yaml"), *overrides(out)]) == 0
    assert (out / "experiments" / "default" / "report" / "report.html").is_file()


@pytest.mark.slurm
def test_default_experiment_end_to_end_on_slurm(slurm_cluster, tmp_path):
    out = tmp_path / "outputs"
    assert main(["submit", str(ROOT / "experiments.yaml"), "--executor", "slurm", *overrides(out)]) == 0
    wait_for(lambda: list((out / "store" / "aggregate").glob("*/completions/00000.json")), timeout=900, interval=3,
             what="the aggregate task")
    check_report(out)
