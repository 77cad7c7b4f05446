"""Matrix labels and experiment-wide presets."""

from __future__ import annotations

import json

import pytest

from hpcgen.cli import main
from hpcgen.config import load_experiment
from hpcgen.stages import default_pipeline
from tests.conftest import FIXTURES


@pytest.fixture
def pipeline():
    return default_pipeline()


def load(name, pipeline, overrides=()):
    return load_experiment(FIXTURES / name, pipeline, overrides, check_output=False)


def test_label_column_names_runs_without_changing_them(pipeline):
    exp = load("config_with_labels.yaml", pipeline)
    assert [r.label for r in exp.runs] == ["RT", "RT", "NFT", "TMA-FFT"]
    assert [r.config.arrange.seed for r in exp.runs] == [0, 1, 0, 0]
    assert "label" not in exp.runs[0].values  # not a config key
    meta = exp.meta()
    assert [v["label"] for v in meta["runs"].values()] == ["RT", "RT", "NFT", "TMA-FFT"]
    prov = meta["provenance"]
    assert prov["hpcgen_version"] and "label" in prov["matrix"] and prov["runs"] == 4

def test_a_label_does_not_change_run_ids(pipeline, tmp_path):
    text = (FIXTURES / "config_with_labels.yaml").read_text()
    plain = tmp_path / "plain.yaml"
    plain.write_text(text.replace("    - label:            [RT,     RT,     NFT, TMA-FFT]\n      arrange.strategy:",
                                  "    - arrange.strategy:"))
    unlabelled = load_experiment(plain, pipeline, check_output=False)
    assert [r.label for r in unlabelled.runs] == [None] * 4
    assert [r.id for r in unlabelled.runs] == [r.id for r in load("config_with_labels.yaml", pipeline).runs]


def test_pinning_a_zipped_axis_keeps_its_labels(pipeline):
    exp = load("config_with_labels.yaml", pipeline, ["arrange.strategy=random"])
    assert [(r.label, r.config.arrange.seed) for r in exp.runs] == [("RT", 0), ("RT", 1)]


def test_plan_lists_labels(capsys):
    assert main(["plan", str(FIXTURES / "config_with_labels.yaml"), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["label"] for r in runs] == ["RT", "RT", "NFT", "TMA-FFT"]


def test_paper_preset_sits_between_the_file_and_section_presets(pipeline):
    cfg = load("config_with_preset.yaml", pipeline).runs[0].config
    t, d = cfg.train, cfg.data
    assert (t.warmup_steps, t.min_lr_ratio, t.adam_eps) == (0, 0.1, 1e-5)  # the paper's, over demo's
    assert t.max_length == 512  # the file's own key wins
    assert t.layers == 2 and t.lr == 2e-3  # the demo preset's where the paper sets nothing
    assert d.allow_contamination is True and "\nAssistant: " in d.template
    default = load("config_minimal.yaml", pipeline).runs[0].config
    assert default.data.allow_contamination is False and default.train.adam_eps == 1e-8
